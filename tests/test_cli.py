"""The `fastgen` command as a new user meets it: one-line errors (no traceback) for inputs that cannot work,
no silent overwrite of a trained checkpoint, where `fastgen sample` writes and in which format, `--version`,
the CPU thread default of `train`/`sample`, and whole output lines from the DDP example."""

import importlib.util
import os
import pathlib
from importlib import metadata

import numpy as np
import pytest
import torch
from PIL import Image

from fastgen import cli
from fastgen.training import load_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]


def one_line_error(capsys, command: str) -> str:
    """The error fastgen printed: exactly one line on stderr, ``fastgen <command>: error: ...``."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fastgen {command}: error: "), err
    return lines[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"fastgen {metadata.version('fastgen')} (torch {torch.__version__}, triton "), out


# ---------------------------------------------------------------------------------------------------------- bench
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_cuda_without_cuda(tmp_path, capsys):
    assert cli.main(["bench", "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    assert "--device cuda: no CUDA device is available" in one_line_error(capsys, "bench")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options", [[], ["--all", "--suite", "ops"]], ids=["quick", "all-ops"])
def test_bench_only_matching_nothing(options, tmp_path, capsys):
    assert cli.main(["bench", "--only", "no such case", "--out", str(tmp_path / "out"), *options]) == 2
    from fastgen.benchmarks import runner

    line = one_line_error(capsys, "bench")
    first_case = runner.all_cases()[0].label  # the examples are real case names
    assert "--only 'no such case' matches no" in line and f"names are like '{first_case}'" in line
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_bench_only_matching_a_case_runs(tmp_path, capsys, monkeypatch):
    """A filter that matches one suite's cases passes the check and reaches the runner unchanged."""
    from fastgen.benchmarks import runner

    calls = []

    def fake_run_suites(device, suites, quick, full, only, out_dir):
        calls.append((suites, quick, only))
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "results.md"), "w") as f:
            f.write("table\n")

    monkeypatch.setattr(runner, "run_suites", fake_run_suites)
    assert cli.main(["bench", "--only", "gumbel_softmax", "--out", str(tmp_path / "out")]) == 0
    assert calls == [(runner.SUITES, True, "gumbel_softmax")]
    assert "table" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------- verify
def test_verify_only_matching_nothing_fails(capsys):
    assert cli.main(["verify", "--only", "no_such_kernel"]) == 2
    assert "--only 'no_such_kernel' matches no kernel launch" in one_line_error(capsys, "verify")


def test_verify_list_only(capsys):
    assert cli.main(["verify", "--list", "--only", "gumbel_softmax"]) == 0
    labels = capsys.readouterr().out.split("\n")
    labels = [label for label in labels if label]
    assert labels and all("gumbel_softmax" in label for label in labels)


# ------------------------------------------------------------------------------------------------- train, sample
@pytest.fixture
def tiny_npy(tmp_path):
    path = tmp_path / "tiny.npy"
    np.save(path, np.random.default_rng(0).integers(0, 4, (24, 5, 5)).astype(np.uint8))
    return path


def train_tiny(data, out, *extra):
    return cli.main(["train", "gated", "--data", str(data), "--epochs", "1", "--layers", "1", "--hidden-channels",
                     "4", "--batch-size", "16", "--samples", "0", "--no-progress", "--out", str(out), *extra])


def test_train_does_not_overwrite_a_checkpoint(tmp_path, tiny_npy, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "gated.pt").write_bytes(b"an earlier run")
    assert train_tiny(tiny_npy, out) == 2
    line = one_line_error(capsys, "train")
    assert "gated.pt exists" in line and "--force" in line
    assert (out / "gated.pt").read_bytes() == b"an earlier run"
    assert train_tiny(tiny_npy, out, "--force") == 0
    model, meta = load_checkpoint(out / "gated.pt")
    assert len(meta["history"]) == 1


@pytest.fixture
def checkpoint(tmp_path, tiny_npy, capsys):
    out = tmp_path / "run"
    assert train_tiny(tiny_npy, out) == 0
    capsys.readouterr()
    return out / "gated.pt"


def test_sample_writes_beside_the_checkpoint_png_and_jpeg(checkpoint, tmp_path, capsys, monkeypatch):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert cli.main(["sample", str(checkpoint), "-n", "2", "--seed", "3", "--no-progress"]) == 0
    default = checkpoint.parent / "gated-sample-seed3.png"
    assert f"wrote {default}" in capsys.readouterr().out
    assert list(cwd.iterdir()) == []  # nothing in the working folder
    with Image.open(default) as image:
        assert image.format == "PNG"
    for name in ("grid.jpg", "grid.JPEG"):
        assert cli.main(["sample", str(checkpoint), "-n", "2", "-o", str(tmp_path / name), "--no-progress"]) == 0
        with Image.open(tmp_path / name) as image:
            assert image.format == "JPEG" and image.size == (2 * 36 + 1, 36 + 1)  # 2 images of 5x5 x7, 1 row
    capsys.readouterr()
    for name in ("grid.gif", "grid"):
        assert cli.main(["sample", str(checkpoint), "-n", "2", "-o", str(tmp_path / name), "--no-progress"]) == 2
        assert "writes PNG (.png) or JPEG (.jpg, .jpeg) files" in one_line_error(capsys, "sample")
        assert not (tmp_path / name).exists()


def test_sample_on_files_that_are_not_checkpoints(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, not weights and plain values
    torch.save({"kind": "gated", "config": {"hidden": 3}, "state_dict": {}}, tmp_path / "bad-config.pt")
    Image.new("L", (4, 4)).save(tmp_path / "image.png")
    cases = {"notes.txt": "not a file written by torch.save", "empty.pt": "not a file written by torch.save",
             "module.pt": "it holds Python objects", "bad-config.pt": "do not make a gated model",
             "image.png": "not a file written by torch.save", "missing.pt": "cannot read", ".": "cannot read"}
    for name, reason in cases.items():
        assert cli.main(["sample", str(tmp_path / name), "--no-progress"]) == 2, name
        line = one_line_error(capsys, "sample")
        assert line.startswith("fastgen sample: error: CHECKPOINT: ") and reason in line, line


@pytest.mark.parametrize("model,loop", [("gated", "train"), ("vae", "train_vae"), ("dcgan", "train_gan")])
def test_train_speed_flags_reach_the_training_loop(model, loop, tmp_path, monkeypatch, capsys):
    """--precision, --channels-last/--no-channels-last and --compile go to train/train_vae/train_gan as
    precision, channels_last ("auto" when neither flag is given) and compile; the first line says what they
    resolve to. The loop itself is replaced: this is about the command line."""
    import fastgen.training

    path = tmp_path / "tiny8.npy"
    np.save(path, np.random.default_rng(0).integers(0, 4, (24, 8, 8)).astype(np.uint8))  # square, 8x8: every model
    calls = []

    def fake_loop(*args, **kwargs):
        calls.append(kwargs)
        return []

    monkeypatch.setattr(fastgen.training, loop, fake_loop)
    command = ["train", model, "--data", str(path), "--epochs", "1", "--hidden-channels", "4", "--samples", "0",
               "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run"), "--force"]
    for flags, expected, described in (
            ([], ("auto", "auto", None), "(float32, fused Adam)"),
            (["--precision", "bfloat16", "--channels-last", "--compile", "default"], ("bfloat16", True, "default"),
             "(bfloat16 autocast, channels-last, fused Adam, torch.compile default)"),
            (["--precision", "float32", "--no-channels-last"], ("float32", False, None), "(float32, fused Adam)")):
        assert cli.main(command + flags) == 0
        assert (calls[-1]["precision"], calls[-1]["channels_last"], calls[-1]["compile"]) == expected, flags
        assert described in capsys.readouterr().out.splitlines()[0]


def test_train_cuda_graph_needs_cuda(tmp_path, capsys):
    """--cuda-graph is --compile reduce-overhead, refused on CPU before any data is read; --compile and
    --cuda-graph together are an argparse error."""
    for flags in (["--cuda-graph"], ["--compile", "reduce-overhead"]):
        assert cli.main(["train", "gated", "--device", "cpu", "--out", str(tmp_path / "run"), *flags]) == 2
        line = one_line_error(capsys, "train")
        assert "--compile reduce-overhead (--cuda-graph) replays CUDA graphs" in line and "device is cpu" in line
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        cli.main(["train", "gated", "--compile", "default", "--cuda-graph"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_cpu_thread_default(monkeypatch):
    """On CPU `train` and `sample` use CPU_THREADS PyTorch threads, unless --threads or OMP_NUM_THREADS says."""
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        assert cli._device("cpu") == "cpu" and torch.get_num_threads() == cli.CPU_THREADS == 1
        assert cli._device("cpu", threads=2) == "cpu" and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        cli._device("cpu")
        assert torch.get_num_threads() == 2  # the user's OMP_NUM_THREADS is left to PyTorch
        with pytest.raises(cli.UsageError, match="--threads must be >= 1"):
            cli._device("cpu", threads=0)
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------------- DDP
def test_ddp_example_writes_each_line_in_one_write(monkeypatch):
    """torchrun's workers write unbuffered: a line written in two pieces lets another rank's line in between."""
    spec = importlib.util.spec_from_file_location("ddp_train", REPO / "examples" / "ddp_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            self.writes.append("<flush>")

    recorder = Recorder()
    monkeypatch.setattr("sys.stdout", recorder)
    module.say("rank 0/2: 3 steps on 24 images")
    assert recorder.writes == ["rank 0/2: 3 steps on 24 images\n", "<flush>"]


def test_train_pixelrnn_kind(tmp_path, monkeypatch, capsys):
    """--kind diagonal trains a Diagonal BiLSTM PixelRNN (the loop replaced: this is about the command line);
    --kind with another model is refused on one line."""
    import fastgen.training

    path = tmp_path / "tiny8.npy"
    np.save(path, np.random.default_rng(0).integers(0, 4, (24, 8, 8)).astype(np.uint8))
    models = []
    monkeypatch.setattr(fastgen.training, "train", lambda model, *args, **kwargs: models.append(model) or [])
    command = ["train", "pixelrnn", "--data", str(path), "--epochs", "1", "--hidden-channels", "4", "--samples",
               "0", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run"), "--force"]
    assert cli.main(command + ["--kind", "diagonal"]) == 0
    assert models[-1].kind == "diagonal"
    assert cli.main(command) == 0
    assert models[-1].kind == "row"
    assert cli.main(["train", "gated", "--kind", "diagonal", "--device", "cpu", "--out", str(tmp_path / "r2")]) == 2
    assert "--kind: only pixelrnn has kinds" in one_line_error(capsys, "train")


def test_sample_a_diagonal_pixelrnn_checkpoint(tmp_path, capsys):
    """A Diagonal BiLSTM checkpoint samples with the naive sampler (it has no cached one yet), no flag needed."""
    from fastgen.models import PixelRNN
    from fastgen.training import save_checkpoint

    torch.manual_seed(0)
    model = PixelRNN("diagonal", data_channels=1, levels=4, hidden_channels=2, n_layers=1, kernel_size=3)
    save_checkpoint(tmp_path / "diag.pt", model, image_size=(3, 3))
    assert cli.main(["sample", str(tmp_path / "diag.pt"), "-n", "2", "--device", "cpu", "--no-progress"]) == 0
    assert (tmp_path / "diag-sample-seed0.png").exists()
