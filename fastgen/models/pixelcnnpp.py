"""PixelCNN++ (Salimans et al. 2017): openai/pixel-cnn's two shifted streams, DMOL output, in two forms.

``architecture="lite"`` (the default): one resolution.

    x_pad = concat(x, ones)                                     [B, C + 1, H, W] (ones tell image from padding)
    u  = down_shift(down_shifted 2x3 (x_pad))                   [B, F, H, W]  u(y, x): rows < y
    ul = down_shift(down_shifted 1x3 (x_pad)) + right_shift(down_right_shifted 2x1 (x_pad))
                                                                ul(y, x): rows < y, and row y left of x
    n_layers times:  u  = gated_resnet(u, conv=down_shifted 2x3)
                     ul = gated_resnet(ul, a=u, conv=down_right_shifted 2x2)
    out = 1x1(elu(ul))                                          [B, n_params, H, W]

``architecture="full"``: openai/pixel-cnn's ``model_spec``, three resolutions (H, W divisible by 4).

    up pass:    u_list = [u], ul_list = [ul] (the input streams above); for each resolution H, H/2, H/4:
                  (below H: u_list += strided down_shifted 2x3 (u_list[-1]), ul_list += strided
                  down_right_shifted 2x2 (ul_list[-1]), stride 2)
                  n_layers times: u_list += gated_resnet(u_list[-1])
                                  ul_list += gated_resnet(ul_list[-1], a=u_list[-1])
    down pass:  u, ul = u_list.pop(), ul_list.pop(); for each resolution H/4, H/2, H (n_layers, n_layers + 1,
                n_layers + 1 blocks):
                  (above H/4: u = down_shifted 2x3 transposed (u), ul = down_right_shifted 2x2 transposed (ul),
                  stride 2)
                  u = gated_resnet(u, a=u_list.pop());  ul = gated_resnet(ul, a=concat(u, ul_list.pop()))
    out = 1x1(elu(ul))

    gated_resnet(x, a): c = conv(concat_elu(x)) [+ 1x1(concat_elu(a))]; c = conv'(dropout(concat_elu(c)))
                        [+ class embedding]; a, b = c.chunk(2); return x + a * sigmoid(b)

The strided and transposed convolutions are :mod:`fastgen.nn.shifted_resample`'s (stride-1 tap-set kernels
between pixel (un)shuffles). The output at pixel p depends on the pixels before p only (every channel of p is
left out: the DMOL couples the channels of p through its coefficients). Its channels are the DMOL parameters in
openai/pixel-cnn's order, with K = n_mixtures:

* RGB (10K): [K mixture logits | for c in R, G, B: K means, K log-scales, K coefficients] (the coefficients
  of channel c: c=0 -> (G on R), c=1 -> (B on R), c=2 -> (B on G), used through tanh);
* grey (3K): [K mixture logits | K means | K log-scales].

Weight normalization (``weight_norm``, default on for "full", off for "lite"): every convolution, 1x1 ones
included, is ``torch.nn.utils.parametrizations.weight_norm``-ed per output channel as openai's ``conv2d`` /
``deconv2d`` / ``nin`` (dim 0; dim 1 for the transposed convolutions, whose weight is [C_in, C_out, kh, kw]),
so the ``state_dict`` holds ``parametrizations.weight.original0`` (g) and ``original1`` (v).
:meth:`PixelCNNpp.data_dependent_init` is openai's ``init=True`` pass. Plain init otherwise (the second
convolution of each block starts at 0.1 scale, as openai's ``init_scale=0.1``). Left out of the paper's model:
Polyak averaging. Dropout is there (``dropout``, default 0, openai's 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.base import (IncrementalSampler, Linear1x1, PixelModel, bias_of, check_positive_int, conv1x1,
                                 embedding_of, fusable_tap_conv, masked_weight)
from fastgen.nn import (DownRightShiftedConv2d, DownRightShiftedConvTranspose2d, DownShiftedConv2d,
                        DownShiftedConvTranspose2d, StridedDownRightShiftedConv2d, StridedDownShiftedConv2d)
from fastgen.nn.shifted_resample import ShiftedConvTranspose2d, StridedShiftedConv2d
from fastgen.nn.tap_conv import TapConv2d
from fastgen.ops import pixel_step
from fastgen.ops.tap_conv import tap_conv2d_gated_residual
from fastgen.reference.tap_conv import gated_residual
from fastgen.validation import check_choice

ARCHITECTURES = ("lite", "full")
RESOLUTIONS = 3  # the full model's: H, H/2, H/4


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """elu(concat(x, -x)) over the channels: [B, C, H, W] -> [B, 2C, H, W]."""
    return F.elu(torch.cat([x, -x], 1))


def conv_concat_elu(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(concat_elu(x))``; fused when ``conv`` is a :class:`fastgen.nn.TapConv2d` without channel groups
    (``input_activation="concat_elu"``: the kernels read x and apply elu(+-x) to their tiles, so the
    [B, 2C, H, W] concat_elu(x) is neither written nor kept for the backward), else as written."""
    if _fusable(conv):
        return conv(x, input_activation="concat_elu")
    return conv(concat_elu(x))


def _fusable(conv: nn.Module) -> bool:
    """Whether ``conv`` runs on fastgen's tap-set kernels with concat_elu fused: a TapConv2d without channel
    groups."""
    return isinstance(conv, TapConv2d) and conv.taps.groups == 1


def gated_residual_concat_elu(conv: nn.Module, c: torch.Tensor, x: torch.Tensor,
                              sample_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x + a * sigmoid(b)``, ``a, b = (conv(concat_elu(c)) + sample_bias[:, :, None, None]).chunk(2, 1)``
    (``sample_bias`` [B, 2F]: a class embedding, or None); with a fusable ``conv`` (see :func:`conv_concat_elu`)
    one launch: concat_elu on the loaded tiles, the class embedding, the gate and the residual add in the
    epilogue (:func:`fastgen.ops.tap_conv.tap_conv2d_gated_residual`), else as written. A ``conv`` with forward
    hooks is called as a module (the fused op would bypass them), e.g. by :class:`PixelCNNppFullSteps`."""
    if _fusable(conv) and fusable_tap_conv(conv):
        return tap_conv2d_gated_residual(c, conv.weight, conv.bias, conv.taps, x, input_activation="concat_elu",
                                         sample_bias=sample_bias)
    return gated_residual(conv(concat_elu(c)), x, sample_bias)


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Moves x [B, C, H, W] one row down (row 0 becomes zeros, the last row is dropped)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Moves x [B, C, H, W] one column right (column 0 becomes zeros, the last column is dropped)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def dmol_channels(n_mixtures: int, data_channels: int) -> int:
    """Channels of the DMOL parameters: 10K for RGB, 3K for grey."""
    return n_mixtures * (10 if data_channels == 3 else 3)


class GatedResnet(nn.Module):
    """openai/pixel-cnn's ``gated_resnet`` with the concat_elu nonlinearity: x [B, F, H, W], a (the skip input,
    [B, skip_channels, H, W]) -> [B, F, H, W]. ``conv`` is the stream's shifted convolution class."""

    def __init__(self, channels: int, conv: type, skip_channels: int = 0, dropout: float = 0.0,
                 n_classes: int | None = None):
        super().__init__()
        self.conv_input = conv(2 * channels, channels)
        self.skip = conv1x1(2 * skip_channels, channels) if skip_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv(2 * channels, 2 * channels)
        with torch.no_grad():
            self.conv_out.weight.mul_(0.1)
        self.class_embedding = nn.Embedding(n_classes, 2 * channels) if n_classes is not None else None

    def forward(self, x: torch.Tensor, a: torch.Tensor | None = None, y: torch.Tensor | None = None):
        c = conv_concat_elu(self.conv_input, x)
        if self.skip is not None:
            c = c + conv_concat_elu(self.skip, a)
        embedding = self.class_embedding(y) if self.class_embedding is not None else None
        if not (self.training and self.dropout.p > 0):  # conv_out, the class embedding, the gate, the residual
            return gated_residual_concat_elu(self.conv_out, c, x, embedding)
        # dropout between concat_elu and conv_out: not fused
        return gated_residual(self.conv_out(self.dropout(concat_elu(c))), x, embedding)


class PixelCNNpp(PixelModel):
    """PixelCNN++ with a discretized logistic mixture output, "lite" (one resolution) or "full" (three).

    Args:
        data_channels: 1 or 3.
        levels: number of pixel values (the DMOL's bins; integer inputs are scaled with it).
        hidden_channels: F, the channels of both streams (openai's nr_filters, 160).
        n_layers: gated resnet blocks per stream ("full": per resolution of the up pass; openai's nr_resnet, 5).
        n_mixtures: K, logistic mixture components (openai's nr_logistic_mix, 10).
        dropout: dropout inside the blocks (openai: 0.5).
        n_classes: class-conditional: every block adds a learnt embedding of the label before its gate.
        architecture: "lite" (one resolution, n_layers blocks per stream) or "full" (openai's three resolutions,
            up and down pass with skip connections; H and W divisible by 4).
        weight_norm: weight-normalize every convolution as openai does (default: on for "full", off for
            "lite").

    ``forward(x, y=None)``: x [B, C, H, W] (integer pixels or floats in [-1, 1]), y [B] -> DMOL parameters
    [B, 10K, H, W] (RGB) or [B, 3K, H, W] (grey) in openai/pixel-cnn's channel order (see the module doc).
    """

    output_kind = "dmol"

    def __init__(self, data_channels: int = 3, levels: int = 256, hidden_channels: int = 160, n_layers: int = 5,
                 n_mixtures: int = 10, dropout: float = 0.0, n_classes: int | None = None,
                 architecture: str = "lite", weight_norm: bool | None = None):
        super().__init__(data_channels, levels, n_classes)
        f = check_positive_int("hidden_channels", hidden_channels)
        n_layers = check_positive_int("n_layers", n_layers, 0)
        self.n_mixtures = check_positive_int("n_mixtures", n_mixtures)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_choice("architecture", architecture, ARCHITECTURES)
        if weight_norm is None:
            weight_norm = architecture == "full"
        if not isinstance(weight_norm, bool):
            raise TypeError(f"weight_norm must be a bool or None, got {type(weight_norm).__name__}")
        self.architecture = architecture
        self.config = dict(data_channels=data_channels, levels=self.levels, hidden_channels=f, n_layers=n_layers,
                           n_mixtures=self.n_mixtures, dropout=dropout, n_classes=self.n_classes,
                           architecture=architecture, weight_norm=weight_norm)
        c_in = data_channels + 1
        self.u_input = DownShiftedConv2d(c_in, f, (2, 3))
        self.ul_input_up = DownShiftedConv2d(c_in, f, (1, 3))
        self.ul_input_left = DownRightShiftedConv2d(c_in, f, (2, 1))

        def blocks(count, u_skip, ul_skip):
            return (nn.ModuleList(GatedResnet(f, DownShiftedConv2d, u_skip, dropout, self.n_classes)
                                  for _ in range(count)),
                    nn.ModuleList(GatedResnet(f, DownRightShiftedConv2d, ul_skip, dropout, self.n_classes)
                                  for _ in range(count)))

        if architecture == "lite":
            self.u_blocks, self.ul_blocks = blocks(n_layers, 0, f)
        else:
            # up pass: per resolution n_layers blocks (ul's skip input: u); down pass: n_layers at the coarsest
            # resolution, n_layers + 1 at the others (u's skip input: the popped u, ul's: concat(u, popped ul))
            up = [blocks(n_layers, 0, f) for _ in range(RESOLUTIONS)]
            down = [blocks(n_layers + (r > 0), f, 2 * f) for r in range(RESOLUTIONS)]
            self.up_u_blocks = nn.ModuleList(u for u, _ in up)
            self.up_ul_blocks = nn.ModuleList(ul for _, ul in up)
            self.down_u_blocks = nn.ModuleList(u for u, _ in down)
            self.down_ul_blocks = nn.ModuleList(ul for _, ul in down)
            self.downsample_u = nn.ModuleList(StridedDownShiftedConv2d(f, f) for _ in range(RESOLUTIONS - 1))
            self.downsample_ul = nn.ModuleList(StridedDownRightShiftedConv2d(f, f) for _ in range(RESOLUTIONS - 1))
            self.upsample_u = nn.ModuleList(DownShiftedConvTranspose2d(f, f) for _ in range(RESOLUTIONS - 1))
            self.upsample_ul = nn.ModuleList(DownRightShiftedConvTranspose2d(f, f) for _ in range(RESOLUTIONS - 1))
        self.output_conv = conv1x1(f, dmol_channels(self.n_mixtures, data_channels))
        if weight_norm:
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.utils.parametrizations.weight_norm(module, dim=1 if isinstance(module, nn.ConvTranspose2d)
                                                          else 0)

    def _forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.architecture == "full":
            scale = 2 ** (RESOLUTIONS - 1)
            if x.shape[2] % scale or x.shape[3] % scale:
                raise ValueError(f"x: the full PixelCNN++ needs H and W divisible by {scale} (its skip connections "
                                 f"join {RESOLUTIONS} resolutions), got {tuple(x.shape[2:])}")
            return self._full_forward(x, y)
        x_pad = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        u = down_shift(self.u_input(x_pad))
        ul = down_shift(self.ul_input_up(x_pad)) + right_shift(self.ul_input_left(x_pad))
        for u_block, ul_block in zip(self.u_blocks, self.ul_blocks):
            u = u_block(u, y=y)
            ul = ul_block(ul, u, y)
        return self.output_conv(F.elu(ul))

    def _full_forward(self, x: torch.Tensor, y: torch.Tensor | None, shift_input: bool = True,
                      u_stream: tuple[list, list] | None = None) -> torch.Tensor:
        """The full model's forward (openai's ``model_spec``), as the up stream u (:meth:`_u_stream`, which never
        reads ul) and then the up-left stream ul (:meth:`_ul_stream`). ``shift_input=False`` leaves out the
        down_shift of the two input convolutions and ``u_stream`` gives u's outputs (:class:`PixelCNNppFullSteps`
        reads the input rows above itself and computes u once per row)."""
        if u_stream is None:
            u_stream = self._u_stream(x, y, shift_input)
        return self._ul_stream(x, y, shift_input, *u_stream)

    def _u_stream(self, x: torch.Tensor, y: torch.Tensor | None, shift_input: bool = True) -> tuple[list, list]:
        """The up stream: u_list (the up pass: the input, each strided convolution's and each block's output)
        and the outputs of the down pass's u blocks, in order."""
        shift = down_shift if shift_input else _same
        x_pad = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        u_list = [shift(self.u_input(x_pad))]
        for r in range(RESOLUTIONS):
            if r > 0:
                u_list.append(self.downsample_u[r - 1](u_list[-1]))
            for u_block in self.up_u_blocks[r]:
                u_list.append(u_block(u_list[-1], y=y))
        skips, down = list(u_list), []
        u = skips.pop()
        for r in range(RESOLUTIONS):
            if r > 0:
                u = self.upsample_u[r - 1](u)
            for u_block in self.down_u_blocks[r]:
                u = u_block(u, skips.pop(), y)
                down.append(u)
        assert not skips
        return u_list, down

    def _ul_stream(self, x: torch.Tensor, y: torch.Tensor | None, shift_input: bool, u_list: list,
                   u_down: list) -> torch.Tensor:
        """The up-left stream from u's outputs (:meth:`_u_stream`), in openai's order, and the output layer."""
        shift = down_shift if shift_input else _same
        x_pad = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        ul_list = [shift(self.ul_input_up(x_pad)) + right_shift(self.ul_input_left(x_pad))]
        for r in range(RESOLUTIONS):
            if r > 0:
                ul_list.append(self.downsample_ul[r - 1](ul_list[-1]))
            for ul_block in self.up_ul_blocks[r]:  # u_list and ul_list grow in step: the u of the same block
                ul_list.append(ul_block(ul_list[-1], u_list[len(ul_list)], y))
        ul, u_down = ul_list.pop(), iter(u_down)
        for r in range(RESOLUTIONS):
            if r > 0:
                ul = self.upsample_ul[r - 1](ul)
            for ul_block in self.down_ul_blocks[r]:
                ul = ul_block(ul, torch.cat([next(u_down), ul_list.pop()], 1), y)
        assert not ul_list
        return self.output_conv(F.elu(ul))

    @torch.no_grad()
    def data_dependent_init(self, x: torch.Tensor, y: torch.Tensor | None = None,
                            init_scale: float = 1.0) -> torch.Tensor:
        """openai/pixel-cnn's data-dependent initialization (its ``init=True`` pass) on a first batch ``x``.

        One forward in which every weight-normalized convolution, in the order the forward runs them, first
        computes its pre-activation with the direction v / ||v|| alone (g = 1, bias 0), then sets, per output
        channel, g = init_scale / sqrt(var + 1e-10) and bias = -mean * g (mean and biased variance over the
        batch and pixels), and passes on g * (pre-activation - mean): the layers after it see the normalized
        activations. The second convolution of every gated resnet uses init_scale 0.1, as openai's. Needs
        ``weight_norm``. Returns the forward's output.
        """
        if not self.config["weight_norm"]:
            raise ValueError("data_dependent_init needs a model built with weight_norm=True")
        scales = {block.conv_out: 0.1 for block in self.modules() if isinstance(block, GatedResnet)}
        handles = []

        def before(module, args):
            g = module.parametrizations.weight.original0
            g.fill_(1.0)
            if module.bias is not None:
                module.bias.zero_()

        def after(module, args, out):
            mean = out.mean((0, 2, 3))
            scale = scales.get(module, init_scale) / torch.sqrt(out.var((0, 2, 3), unbiased=False) + 1e-10)
            g = module.parametrizations.weight.original0
            g.copy_(scale.view(g.shape))  # [C_out, 1, 1, 1], or [1, C_out, 1, 1] for a transposed convolution
            if module.bias is not None:
                module.bias.copy_(-mean * scale)
            return (out - mean[:, None, None]) * scale[:, None, None]

        try:
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
            return self(x, y)
        finally:
            for handle in handles:
                handle.remove()

    def incremental_sampler(self, n: int, width: int, labels: torch.Tensor | None = None,
                            temperature: float = 1.0) -> IncrementalSampler:
        """The cached per-pixel evaluation (see :class:`PixelCNNppSteps`): one fused kernel per pixel where
        fastgen's kernels run (:class:`PixelCNNppKernelSteps`), else plain PyTorch. The full model: the row
        recomputation of :class:`PixelCNNppFullSteps`."""
        if self.architecture == "full":
            return PixelCNNppFullSteps(self, n, width, labels, temperature)
        fused = self._kernel_steps() and pixel_step.supports(next(self.parameters()).dtype, n_mixtures=self.n_mixtures)
        return (PixelCNNppKernelSteps if fused else PixelCNNppSteps)(self, n, width, labels, temperature)


class PixelCNNppSteps(IncrementalSampler):
    """PixelCNN++-lite: the up stream u depends on the rows above only (computed per row); the up-left stream
    ul per pixel. Caches: the image with its ones channel (x_pad), and each block's two concat_elu inputs."""

    def __init__(self, model: PixelCNNpp, n: int, width: int, labels, temperature: float = 1.0):
        super().__init__(model, n, width, temperature, image_channels=model.data_channels + 1)  # x_pad
        self.channels = model.data_channels
        self.u_input, self.ul_input_up = self.window(model.u_input), self.window(model.ul_input_up)
        self.ul_input_left = self.window(model.ul_input_left)
        f = model.u_input.out_channels

        def block(b, a, c):
            return dict(conv_input=self.window(b.conv_input), conv_out=self.window(b.conv_out),
                        skip=None if b.skip is None else Linear1x1(b.skip), embedding=embedding_of(b, labels),
                        a=a, c=c)

        self.u_blocks = [block(b, self.cache(2 * f), self.cache(2 * f)) for b in model.u_blocks]
        self.a_cache, a_caches = self.stacked_caches(len(model.ul_blocks), 2 * f)
        self.c_cache, c_caches = self.stacked_caches(len(model.ul_blocks), 2 * f)
        self.ul_blocks = [block(b, a, c) for b, a, c in zip(model.ul_blocks, a_caches, c_caches)]
        self.output_conv = Linear1x1(model.output_conv)

    def _gated_row(self, block, x_row: torch.Tensor) -> torch.Tensor:
        block["a"].put_row(concat_elu(x_row))
        c = block["conv_input"].row(block["a"])
        block["c"].put_row(concat_elu(c))
        c = block["conv_out"].row(block["c"])
        if block["embedding"] is not None:
            c = c + block["embedding"][:, :, None]
        value, gate = c.chunk(2, 1)
        return x_row + value * torch.sigmoid(gate)

    def start_row(self, first: bool) -> None:
        self.advance()
        pad = self.image.pad
        self.image.data[:, self.channels, -1, pad:pad + self.width] = 1.0  # x_pad's ones channel
        if first:  # down_shift: row 0 of u and of ul's up part is zeros
            u = self.image.data.new_zeros((self.n, self.u_input.bias.shape[0], self.width))
            self.ul_up = u.transpose(1, 2)
        else:
            u = self.u_input.row(self.image, rows_back=1)
            self.ul_up = self.ul_input_up.row(self.image, rows_back=1).transpose(1, 2).contiguous()
        self.skips = []
        for block, ul_block in zip(self.u_blocks, self.ul_blocks):
            u = self._gated_row(block, u)
            self.skips.append(ul_block["skip"].row(concat_elu(u)))  # [n, W, F]

    def output(self, x: int) -> torch.Tensor:
        ul = self.ul_up[:, x]
        if x > 0:  # right_shift of the down-right-shifted 2x1 input convolution
            ul = ul + self.ul_input_left.at(self.image, x - 1)
        for block, skip in zip(self.ul_blocks, self.skips):
            block["a"].put(x, concat_elu(ul))
            c = block["conv_input"].at(block["a"], x) + skip[:, x]
            block["c"].put(x, concat_elu(c))
            c = block["conv_out"].at(block["c"], x)
            if block["embedding"] is not None:
                c += block["embedding"]
            value, gate = c.chunk(2, 1)
            ul = ul + value * torch.sigmoid(gate)
        return self.output_conv(F.elu(ul))


class PixelCNNppKernelSteps(PixelCNNppSteps):
    """:class:`PixelCNNppSteps` with one launch per pixel: :func:`fastgen.ops.pixel_step.pixelcnnpp_step` runs
    the up-left stream's input and every gated resnet block, the output layer and the DMOL draw of the pixel;
    the up stream stays per row (``start_row``)."""

    def __init__(self, model: PixelCNNpp, n: int, width: int, labels, temperature: float = 1.0):
        super().__init__(model, n, width, labels, temperature)
        f, blocks, like = model.config["hidden_channels"], list(model.ul_blocks), self.like
        w_left, self.left_window = pixel_step.pack_window(masked_weight(model.ul_input_left),
                                                          model.ul_input_left.taps)
        ci = [pixel_step.pack_window(masked_weight(b.conv_input), b.conv_input.taps) for b in blocks]
        co = [pixel_step.pack_window(masked_weight(b.conv_out), b.conv_out.taps)[0] for b in blocks]
        self.block_window = ci[0][1] if ci else pixel_step.WindowGeometry(0, 1, 0, 0)
        embeddings = [b["embedding"] for b in self.ul_blocks if b["embedding"] is not None]
        self.weights = dict(
            w_left=w_left, b_left=bias_of(model.ul_input_left),
            w_ci=pixel_step.stack([w for w, _ in ci], like, (f, 2 * f)),
            b_ci=pixel_step.stack([bias_of(b.conv_input) for b in blocks], like, (f,)),
            w_co=pixel_step.stack(co, like, (2 * f, 2 * f)),
            b_co=pixel_step.stack([bias_of(b.conv_out) for b in blocks], like, (2 * f,)),
            emb=pixel_step.stack(embeddings, like, ()) if embeddings else None,
            w_out=masked_weight(model.output_conv)[:, :, 0, 0].contiguous(), b_out=bias_of(model.output_conv))
        self.ul = like.new_zeros((2, n, f))
        self.params = like.new_zeros((n, model.output_conv.out_channels))
        self.ul_up_row = like.new_zeros((n, width, f))
        self.skip_row = like.new_zeros((max(len(blocks), 1), n, width, f))
        self.no_draw = (like.new_zeros((n, model.n_mixtures + model.data_channels)),
                        torch.zeros((n, model.data_channels), dtype=torch.long, device=like.device))

    def start_row(self, first: bool) -> None:
        super().start_row(first)
        self.ul_up_row.copy_(self.ul_up)
        if self.skips:
            torch.stack(self.skips, out=self.skip_row)

    def _launch(self, x: int, draw: bool, u, out) -> None:
        model = self.model
        pixel_step.pixelcnnpp_step(
            self.image.data, self.a_cache, self.c_cache, self.ul, self.params, self.ul_up_row, self.skip_row,
            self.weights, u, out, x=x, draw=draw, left_window=self.left_window, window=self.block_window,
            pad=self.pad, n_layers=len(self.ul_blocks), n_mixtures=model.n_mixtures, levels=model.levels,
            temperature=self.temperature)

    def fill(self, x: int, pixels: torch.Tensor) -> None:
        self.image.put(x, self.scaled(pixels))
        self._launch(x, False, *self.no_draw)

    def sample(self, x: int, channel: int | None, u: torch.Tensor, out: torch.Tensor) -> None:
        self._launch(x, True, u, out)


class PixelCNNppFullSteps(IncrementalSampler):
    """The full (three-resolution) PixelCNN++, evaluated one image row at a time from row caches.

    What it caches: for every convolution with more than one row in its window (the shifted 2x3 / 2x2 / 2x1
    ones, the strided ones, and the two input convolutions whose output is down-shifted), the last 4 rows of its
    *input* at that convolution's resolution, in a ring indexed by a row counter held on the device (so no call
    after the first row depends on the row index, as a CUDA graph of one row needs; not run on a GPU yet).

    What it recomputes, with the model's own modules (its kernels, its weight normalization): at fine row y,
    row y of the full-resolution layers and rows y // 2 and y // 4 of the coarser ones, all columns; the up
    stream u (which depends on the rows above only) once per row in ``start_row``, the up-left stream ul and
    the output layer at every pixel. Each convolution runs on the window of rows it reads (the current row from
    the pass, the rows above from its ring) and keeps its last output row; a strided one runs on 4 fine rows
    and keeps its last coarse row; a transposed one on the coarse row, keeping fine row y's phase. When a row
    is complete, one more pass of both streams over it stores its final rows in the rings.

    So a pixel costs one row of every ul layer: W times the work of a truly per-pixel step (as
    PrajitR/fast-pixel-cnn's per-layer queues would do), and of the naive sampler's whole-image forward 1 / H of
    the full-resolution work, 2 / H of the half- and 4 / H of the quarter-resolution work. The output equals the
    model's forward at every pixel (tests/test_pixelcnnpp_full.py). CPU, reference layers, float32, 1 thread,
    F=32, n_layers=2, 4 images of 16x16: 8.3 s against sample_naive's 14.0 s (the same pixels); unmeasured on a
    GPU.

    The sampler does not see the image height: unlike the forward, it does not check that H is divisible by 4.
    """

    RING = 4  # rows of each ring: a strided convolution reads fine rows 2a-2 .. 2a+1 of its input

    def __init__(self, model: PixelCNNpp, n: int, width: int, labels, temperature: float = 1.0):
        super().__init__(model, n, width, temperature)
        scale = 2 ** (RESOLUTIONS - 1)
        if width % scale:
            raise ValueError(f"width: the full PixelCNN++ needs W divisible by {scale}, got {width}")
        self.labels = labels
        self.levels = {width >> level: level for level in range(RESOLUTIONS)}
        device = self.like.device
        self.row = torch.full((1,), -1, dtype=torch.long, device=device)
        self.offsets = torch.arange(self.RING, device=device)
        self.rings: dict[nn.Module, torch.Tensor] = {}
        # the convolutions whose output the forward down-shifts: their window ends one row above
        self.shifted_inputs = (model.u_input, model.ul_input_up)

    # -------------------------------------------------------------------------------------- the hooks
    def _level_row(self, level: int) -> torch.Tensor:
        return torch.bitwise_right_shift(self.row, level)

    def _window(self, ring: torch.Tensor, first_row: torch.Tensor, rows: int) -> torch.Tensor:
        return ring.index_select(2, (first_row + self.offsets[:rows]) % self.RING)

    def _before(self, module, args):
        x = args[0]  # this row of the module's input: [n, C, 1, W_level]
        level = self.levels[x.shape[3]]
        row = self._level_row(level)
        ring = self.rings.get(module)
        if ring is None:
            ring = self.rings[module] = x.new_zeros(x.shape[:2] + (self.RING, x.shape[3]))
        ring.index_copy_(2, row % self.RING, x)
        if isinstance(module, StridedShiftedConv2d):  # coarse row a reads fine rows 2a-2 .. 2a+1 (top pad 1)
            s = module.stride[0]
            top = module.shift_taps.padding[0]
            above = -(-top // s)
            start = self._level_row(level + 1) * s - s * above
            return (self._window(ring, start, s * (above + 1)),) + args[1:]
        kh = module.kernel_size[0]
        if module in self.shifted_inputs:  # down_shift(conv(x_pad)) at row y: the conv at row y - 1
            return (self._window(ring, row - kh, kh),) + args[1:]
        return (self._window(ring, row - kh + 1, kh),) + args[1:]

    def _after(self, module, args, out):
        if isinstance(module, ShiftedConvTranspose2d):  # 2 fine rows from the coarse row: keep this row's
            level = self.levels[out.shape[3]]
            return out.index_select(2, self._level_row(level) % module.stride[0])
        out = out[:, :, -1:]
        if module in self.shifted_inputs:  # down_shift's zero row 0
            out = out * (self.row > 0).to(out.dtype)
        return out

    def _hooked(self) -> list:
        handles = []
        for module in self.model.modules():
            cached = isinstance(module, StridedShiftedConv2d) or module in self.shifted_inputs or (
                isinstance(module, TapConv2d) and module.kernel_size[0] > 1)
            if cached:
                handles.append(module.register_forward_pre_hook(self._before))
            if cached or isinstance(module, ShiftedConvTranspose2d):
                handles.append(module.register_forward_hook(self._after))
        return handles

    def _row_pass(self, stream: str):
        """One row of the network on the image cache's current row: "u" -> u's outputs (:meth:`PixelCNNpp._u_stream`),
        "ul" -> the DMOL parameters [n, P, W] from ul with this row's u, "both" -> them from both streams."""
        model, pad = self.model, self.image.pad
        x_row = self.image.data[:, :, -1:, pad:pad + self.width]
        handles = self._hooked()
        try:
            with model._backend():
                if stream == "u":
                    return model._u_stream(x_row, self.labels, shift_input=False)
                u_stream = self.u_stream if stream == "ul" else None
                return model._full_forward(x_row, self.labels, False, u_stream)[:, :, 0]
        finally:
            for handle in handles:
                handle.remove()

    # ----------------------------------------------------------------------------------- the steps
    def start_row(self, first: bool) -> None:
        if not first:  # the finished row, every pixel drawn: its final values into the rings (the input
            self._row_pass("both")  # convolutions of u read it from the next row on)
        self.row += 1
        self.advance()
        self.u_stream = self._row_pass("u")

    def output(self, x: int) -> torch.Tensor:
        return self._row_pass("ul")[:, :, x]
