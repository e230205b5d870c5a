"""Image data for the PixelCNN models: scikit-learn's digits, the user's own ``.npy`` arrays or image folders.

Every loader returns integer pixels [N, C, H, W] (int64, values 0..levels-1, C = 1 or 3) in the convention of
:mod:`fastgen.models`, and :func:`load_dataset` wraps them with their labels (or None) and ``levels``:

>>> data = fastgen.data.load_dataset("digits")         # 1797 x [1, 8, 8], values 0..16, labels 0..9
>>> train, test = data.split(test_fraction=0.1, seed=0)
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

#: values per pixel of scikit-learn's digits (0..16)
DIGITS_LEVELS = 17
#: file endings :func:`load_image_folder` reads
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DATA_CHANNELS = (1, 3)


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits (no download).

    Returns:
        pixels [1797, 1, 8, 8] int64 in 0..16 (``DIGITS_LEVELS`` = 17 values) and labels [1797] int64 in 0..9.
    """
    try:
        from sklearn import datasets
    except ImportError as error:
        raise ImportError("the digits data set comes with scikit-learn: pip install scikit-learn") from error
    digits = datasets.load_digits()
    pixels = torch.from_numpy(digits.images.astype(np.int64)).unsqueeze(1)
    return pixels, torch.from_numpy(digits.target.astype(np.int64))


def _check_levels(name: str, values: np.ndarray, levels: int | None, default: int) -> int:
    """``levels`` (or ``default``) after checking that every value of ``values`` is in 0..levels-1."""
    levels = default if levels is None else levels
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    if values.size:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= levels:
            raise ValueError(f"{name}: pixel values must be in 0..{levels - 1} (levels={levels}), got values "
                             f"from {low} to {high}")
    return int(levels)


def as_nchw(array: np.ndarray, name: str = "array", layout: str | None = None) -> np.ndarray:
    """[N, H, W], [N, H, W, C] or [N, C, H, W] (C = 1 or 3) -> [N, C, H, W].

    A 4-D array whose second and last dims could both be channels (e.g. [N, 3, 8, 3]) needs
    ``layout="NHWC"`` or ``"NCHW"``.
    """
    if layout not in (None, "NHWC", "NCHW"):
        raise ValueError(f"layout must be None, 'NHWC' or 'NCHW', got {layout!r}")
    if array.ndim == 3:
        return array[:, None]
    if array.ndim != 4:
        raise ValueError(f"{name} must have shape [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3, got "
                         f"{tuple(array.shape)}")
    if layout is None:
        last, second = array.shape[3] in DATA_CHANNELS, array.shape[1] in DATA_CHANNELS
        if last and second:
            raise ValueError(f"{name} of shape {tuple(array.shape)} is ambiguous: pass layout='NHWC' or 'NCHW'")
        layout = "NHWC" if last else "NCHW" if second else None
        if layout is None:
            raise ValueError(f"{name} must have C = 1 or 3 channels first ([N, C, H, W]) or last ([N, H, W, C]), "
                             f"got shape {tuple(array.shape)}")
    if layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1] not in DATA_CHANNELS:
        raise ValueError(f"{name} must have 1 or 3 channels in layout {layout}, got shape {tuple(array.shape)}")
    return array


def pixels_from_array(array, name: str = "array", levels: int | None = None,
                      layout: str | None = None) -> tuple[torch.Tensor, int]:
    """An integer array of images -> (pixels [N, C, H, W] int64, levels).

    Args:
        array: [N, H, W], [N, H, W, C] or [N, C, H, W] (C = 1 or 3) of integers (uint8 or any int dtype).
        name: what to call it in errors (the argument or file it came from).
        levels: values per sub-pixel; default 256 for uint8, else max + 1 (at least 2).
        layout: "NHWC" or "NCHW" where the shape leaves it open (see :func:`as_nchw`).
    """
    array = np.asarray(array)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integer pixel values (uint8 or 0..levels-1), got dtype {array.dtype}")
    array = as_nchw(array, name, layout)
    if 0 in array.shape:
        raise ValueError(f"{name} holds no pixels: shape {tuple(array.shape)} (as [N, C, H, W])")
    default = 256 if array.dtype == np.uint8 else max(2, int(array.max()) + 1)
    levels = _check_levels(name, array, levels, default)
    return torch.from_numpy(np.ascontiguousarray(array).astype(np.int64)), levels


def load_npy(path, levels: int | None = None, layout: str | None = None) -> tuple[torch.Tensor, int]:
    """A ``.npy`` file of images -> (pixels [N, C, H, W] int64, levels), see :func:`pixels_from_array`."""
    path = os.fspath(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"path {path!r} is not a readable .npy array: {error}") from error
    return pixels_from_array(array, f"path {path!r}", levels, layout)


def _image_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, f)))


def load_image_folder(path) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    """A folder of PNG/JPEG images, all the same size, as 8-bit pixels (levels = 256).

    Either the images lie in ``path`` itself (no labels), or in one sub-folder per class
    (``path/<class>/*.png``, labels 0.. in the sorted order of the class names). The images are read with
    Pillow; if every one is greyscale the result has C = 1, else all are converted to RGB (C = 3).

    Returns:
        pixels [N, C, H, W] int64 in 0..255, labels [N] int64 or None, class names or None.
    """
    from PIL import Image

    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise ValueError(f"path {folder!r} is not a folder")
    files, labels, classes = _image_files(folder), None, None
    if not files:
        classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
        per_class = [_image_files(os.path.join(folder, c)) for c in classes]
        classes = [c for c, f in zip(classes, per_class) if f]
        per_class = [f for f in per_class if f]
        files = [f for f_class in per_class for f in f_class]
        labels = torch.tensor([i for i, f_class in enumerate(per_class) for _ in f_class], dtype=torch.long)
    if not files:
        raise ValueError(f"path {folder!r} holds no {'/'.join(IMAGE_SUFFIXES)} images (directly or in one "
                         f"sub-folder per class)")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
                images.append(image.copy())
        except OSError as error:
            raise ValueError(f"path {folder!r}: cannot read image {file!r}: {error}") from error
    grey = all(image.mode in ("1", "L", "LA", "I", "I;16") for image in images)
    arrays = [np.asarray(image.convert("L" if grey else "RGB")) for image in images]
    for file, array in zip(files, arrays):
        if array.shape != arrays[0].shape:
            raise ValueError(f"path {folder!r}: every image must have the size of {files[0]!r} "
                             f"({arrays[0].shape[1]}x{arrays[0].shape[0]}), but {file!r} is "
                             f"{array.shape[1]}x{array.shape[0]}")
    pixels, _ = pixels_from_array(np.stack(arrays), f"path {folder!r}", 256, "NHWC" if not grey else None)
    return pixels, labels, classes


@dataclasses.dataclass
class Dataset:
    """Images with optional labels: pixels [N, C, H, W] int64 in 0..levels-1, labels [N] int64 or None."""

    pixels: torch.Tensor
    labels: torch.Tensor | None
    levels: int
    name: str
    classes: list[str] | None = None

    @property
    def n_classes(self) -> int | None:
        if self.labels is None:
            return None
        return len(self.classes) if self.classes is not None else int(self.labels.max()) + 1

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.pixels.shape[2:])

    def subset(self, index: torch.Tensor) -> "Dataset":
        labels = None if self.labels is None else self.labels[index]
        return dataclasses.replace(self, pixels=self.pixels[index], labels=labels)

    def split(self, test_fraction: float = 0.1, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """(train, test): see :func:`train_test_indices`."""
        train, test = train_test_indices(len(self.pixels), test_fraction, seed)
        return self.subset(train), self.subset(test)


def train_test_indices(n: int, test_fraction: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic split of n items: a permutation seeded with ``seed``; the last
    ``round(n * test_fraction)`` of it (at least 1 when ``0 < test_fraction`` and n >= 2) are the test set.

    Returns:
        (train indices, test indices), int64, each sorted.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = round(n * test_fraction)
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n - n_test].sort().values, order[n - n_test:].sort().values


def load_dataset(data: str = "digits", levels: int | None = None) -> Dataset:
    """``"digits"``, a ``.npy`` file (see :func:`load_npy`) or a folder of images (:func:`load_image_folder`)."""
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"data must be 'digits', a .npy path or a folder, got {type(data).__name__}")
    data = os.fspath(data)
    if data == "digits":
        pixels, labels = load_digits()
        return Dataset(pixels, labels, DIGITS_LEVELS, "digits", [str(d) for d in range(10)])
    if os.path.isdir(data):
        pixels, labels, classes = load_image_folder(data)
        return Dataset(pixels, labels, 256, os.path.basename(os.path.normpath(data)), classes)
    if data.endswith(".npy"):
        if not os.path.isfile(data):
            raise ValueError(f"data: no such file {data!r}")
        pixels, levels = load_npy(data, levels)
        return Dataset(pixels, None, levels, os.path.splitext(os.path.basename(data))[0])
    raise ValueError(f"data must be 'digits', a .npy file or a folder of images, got {data!r}")
