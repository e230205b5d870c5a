"""The benchmark runner end to end on one small case: rows, counts, CSV, markdown and PNG."""

import csv
import dataclasses
import json

import pytest
import torch

import fastgen
from fastgen.benchmarks import harness, runner


def test_runner_writes_table_csv_and_plot(tmp_path, device):
    rows = runner.run(device, only="mlp-vae", out_dir=str(tmp_path), progress=False)
    by = {(r["provider"], r["mode"]): r for r in rows}
    assert by[("fastgen", "forward")]["launches"] == 1  # one fused kernel
    assert by[("fastgen", "forward+backward")]["launches"] == 2
    assert by[("eager", "forward")]["launches"] > 5
    assert by[("fastgen", "forward")]["bytes_moved"] < by[("eager", "forward")]["bytes_moved"]
    assert by[("fastgen", "forward+backward")]["max_rel_err_vs_fp64"] < 1e-4
    assert by[("eager", "forward")]["p50_ms"] > 0
    if device == "cpu":
        assert by[("fastgen", "forward")]["p50_ms"] is None  # interpreted kernels are never timed
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "| reparameterize_kl mlp-vae" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_masked_conv2d_cases_split_into_channel_groups():
    """An RGB case whose channels do not split into 3 groups is refused when built (it used to fail on the GPU)."""
    from fastgen.benchmarks import bench_tap_conv

    with pytest.raises(ValueError, match="3 channel groups"):
        bench_tap_conv._case("rgb B=1 C=256 8x8 7x7 B bf16", 1, 256, 256, 8, 7, "B", data_channels=3)
    rgb = [c for c in bench_tap_conv.CASES if "rgb" in c.name.lower()]
    assert any("C=384" in c.name for c in rgb)
    for case in rgb:  # every RGB case builds, so its channels split into the 3 groups
        weight = case.make_inputs("meta")["weight"]
        assert weight.shape[0] % 3 == 0 and (weight.shape[1] % 3 == 0 or weight.shape[1] == 3), case.name


def test_launch_counter_ignores_views_and_allocations():
    import torch

    x = torch.randn(4, 4)
    launches, moved = harness.count_launches(lambda: (x.view(16), torch.empty(3), x.t(), x + 1))
    assert launches == 1 and moved == 2 * x.numel() * 4


# ------------------------------------------------------------------------- the training and sampling suites

from fastgen.benchmarks import bench_sampling, bench_training  # noqa: E402

TINY_SHAPE = bench_sampling.Shape("4x4 grey", 1, 4, 4, 17)


def test_sampling_rows_naive_and_cached_side_by_side(device):
    case = bench_sampling.SamplingCase("PixelCNNpp", TINY_SHAPE, 2, tiny=True)
    rows = bench_sampling.measure(case, device)
    by = {r["provider"]: r for r in rows}
    assert set(by) == {"naive", "cached"}
    assert all(set(r) <= set(bench_sampling.COLUMNS) for r in rows)
    assert by["naive"]["forwards"] == 16  # one forward per pixel (DMOL draws a pixel's channels together)
    assert by["cached"]["same_pixels"] == by["naive"]["same_pixels"] == 1.0
    assert by["cached"]["speedup_vs_naive"] == round(by["naive"]["seconds"] / by["cached"]["seconds"], 1)
    # pixels/s comes from the unrounded time; the row keeps the time to 4 decimals (+-5e-5 s)
    seconds = by["cached"]["seconds"]
    assert 2 * 16 / (seconds + 5e-5) - 0.05 <= by["cached"]["pixels_per_s"] <= 2 * 16 / max(seconds - 5e-5, 1e-9) + 0.05


def test_sampling_naive_beyond_the_cap_is_absent_not_estimated(tmp_path):
    case = bench_sampling.SamplingCase("GatedPixelCNN", TINY_SHAPE, 1, tiny=True)
    rows = bench_sampling.measure(case, "cpu", naive_cap_s=0.0)
    assert [r["provider"] for r in rows] == ["cached"]
    assert "speedup_vs_naive" not in rows[0] and "same_pixels" not in rows[0]
    assert "| GatedPixelCNN | 4x4 grey | 1 | - |" in bench_sampling.markdown(rows)


def test_sampling_cases_cpu_quick_is_small_and_all_has_the_50x_point():
    quick = bench_sampling.cases("cpu", quick=True)
    assert [c.label for c in quick] == ["PixelCNN 8x8 grey B=16"]
    assert {c.label for c in bench_sampling.cases("cpu", quick=False)} >= {
        f"{f} 28x28 grey B=16" for f in bench_sampling.FAMILIES}
    # families (3 PixelCNN, 2 PixelRNN) x sizes x batches
    assert len(bench_sampling.cases("cuda", quick=False)) == 5 * 3 * 4


def test_training_rows_fastgen_checked_against_eager(device):
    """The fastgen row runs the kernels (compiled on CUDA, interpreted on CPU) and checks them against eager."""
    assert fastgen.backend_for(torch.zeros(1, device=device)) == "triton"
    case = bench_training.TrainingCase("PixelCNN", TINY_SHAPE, 2, tiny=True)
    fast = bench_training.measure(case, "fastgen", device, timed=False, batch=1)
    eager = bench_training.measure(case, "eager", device, timed=True)
    assert set(fast) | set(eager) <= set(bench_training.COLUMNS)
    assert fast["p50_ms"] is None and fast["launches"] > 0  # the correctness pass: counted, not timed
    assert fast["max_rel_err_vs_eager"] < 1e-4
    assert fast["max_rel_err_vs_fp64"] < 1e-4 and fast["eager_max_rel_err_vs_fp64"] < 1e-4  # float32 rounding
    assert eager["p50_ms"] > 0 and eager["images_per_s"] > 0
    assert all(eager[name] is None for name in bench_training.ERROR_COLUMNS)  # errors are fastgen's rows'


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"), reason="torch < 2.9: no per-operation precision")
def test_exact_float32_with_the_per_operation_precision_api():
    """exact_float32 turns TF32 off and restores each switch exactly, also after a user set cuDNN's convolution
    precision apart from the RNN's (the newer API), where the legacy ``cudnn.allow_tf32`` getter raises."""
    conv, rnn, matmul = torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul
    saved = [(switch, switch.fp32_precision) for switch in (conv, rnn, matmul)]
    try:
        conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
        rnn.fp32_precision = "ieee"
        with bench_training.exact_float32():
            assert conv.fp32_precision == matmul.fp32_precision == "ieee"
            assert not fastgen.ops.tap_conv.conv_uses_tf32()
        assert (conv.fp32_precision, rnn.fp32_precision, matmul.fp32_precision) == ("tf32", "ieee", "tf32")
    finally:
        for switch, precision in saved:
            switch.fp32_precision = precision


@pytest.mark.parametrize("family", ["VAE", "DCGAN"])
def test_training_rows_vae_and_dcgan(family, device):
    case = bench_training.TrainingCase(family, bench_sampling.SHAPES["8x8 grey"], 2, tiny=True)
    fast = bench_training.measure(case, "fastgen", device, timed=False, batch=2)
    eager = bench_training.measure(case, "eager", device, timed=True)
    assert fast["launches"] > 0 and fast["max_rel_err_vs_eager"] < 1e-4  # same seeded noise: same function
    assert fast["max_rel_err_vs_fp64"] < 1e-4  # the float64 copy draws the same noise
    assert eager["p50_ms"] > 0 and eager["model"] == family
    assert {c.family for c in bench_training.cases(quick=True)} == {"PixelCNN", "VAE", "DCGAN"}


RGB_256 = bench_sampling.Shape("4x4x3", 3, 4, 4, 256)  # 256 levels: bins narrow enough for bfloat16 to matter


def test_training_bfloat16_row_has_the_eager_floor(device):
    """A bfloat16 row reports fastgen's step against eager bfloat16, against an eager float64 step, and eager
    bfloat16's own error against float64 (the floor). Eager's PixelCNN++ loss runs in float32 on its bfloat16
    parameters, as fastgen's dmol_nll: evaluated in bfloat16 it put eager's step 0.74 (the loss 4%) from
    float64 here, so the row's 0.5-scale error measured eager, not fastgen. Measured on CPU (interpreted,
    Triton 3.6): eager 6.9e-3, fastgen 2.7e-2 (the interpreter truncates float32 -> bfloat16)."""
    case = bench_training.TrainingCase("PixelCNNpp", RGB_256, 1, tiny=True, precision="bfloat16")
    row = bench_training.measure(case, "fastgen", device, timed=False, batch=1)
    assert row["precision"] == "bfloat16" and row["launches"] > 0
    assert row["eager_max_rel_err_vs_fp64"] < 2e-2
    assert row["max_rel_err_vs_fp64"] < 1e-1 and row["max_rel_err_vs_eager"] < 1e-1
    model = bench_training.build_training_model(case.family, case.shape, tiny=True).to(device)
    x = case.images(device)
    eager = bench_training.eager_step_values(model, x, "bfloat16")
    exact = bench_training.eager_step_values(model, x, "float64")
    assert eager[0].dtype == torch.float32 and exact[0].dtype == torch.float64
    assert bench_training.max_relative_error(eager[:1], exact[:1]) < 1e-4  # the loss (was 3.8e-2)
    assert bench_training.max_relative_error(eager, exact) == row["eager_max_rel_err_vs_fp64"]
    md = bench_training.markdown([dict(row, status="interpreted")])
    assert "eager's vs float64" in md and f"{row['eager_max_rel_err_vs_fp64']:.1e}" in md


def test_max_relative_error_is_per_tensor_relative_to_its_largest_reference_value():
    reference = [torch.tensor([2.0, -4.0]), torch.tensor([1e-3, 0.0]), torch.zeros(0)]
    values = [torch.tensor([2.0, -3.0]), torch.tensor([1e-3, 5e-4]), torch.zeros(0)]
    assert bench_training.max_relative_error(values, reference) == pytest.approx(0.5)  # 5e-4 / 1e-3, not / 4
    assert bench_training.max_relative_error(reference, reference) == 0.0
    with pytest.raises(ValueError):
        bench_training.max_relative_error(values[:2], reference)


def test_forward_only_case_dmol_sample(device):
    """An op without a backward (the DMOL sampler): forward rows only, its outputs checked against float64;
    the fastgen row is one kernel launch (compiled on CUDA, interpreted on CPU)."""
    from fastgen.benchmarks import bench_pixel_losses

    case = next(c for c in bench_pixel_losses.CASES if c.op == "dmol_sample" and c.quick)
    assert case.modes == ("forward",)
    assert harness.max_error(case, device, batch=1) < 1e-5
    wrong = dataclasses.replace(case, fastgen=lambda **inputs: case.reference(**inputs) + 1e-3)
    assert harness.max_error(wrong, device, batch=1) > 1e-4  # the check sees a wrong sample
    row = harness.measure(case, "fastgen", "forward", device, timed=False, batch=1)
    assert row["launches"] == 1 and row["bytes_moved"] > 0


def test_training_speedup_plot(tmp_path):
    rows = [dict(model="VAE", size="8x8 grey", batch=64, provider="eager", p50_ms=4.0),
            dict(model="VAE", size="8x8 grey", batch=64, provider="fastgen", p50_ms=2.0),
            dict(model="VAE", size="8x8 grey", batch=64, provider="torch.compile", p50_ms=None),
            dict(model="DCGAN", size="8x8 grey", batch=64, provider="fastgen", p50_ms=1.0)]  # no eager: no ratio
    assert bench_training.speedups(rows) == {"fastgen": [("VAE 8x8 grey B=64", 2.0)]}
    assert bench_training.plot(rows, str(tmp_path / "t.png"), "title")
    assert (tmp_path / "t.png").stat().st_size > 5_000
    assert not bench_training.plot(rows[:1], str(tmp_path / "none.png"), "title")  # CPU: only eager timed
    assert not (tmp_path / "none.png").exists()


def test_training_step_lowers_the_loss():
    case = bench_training.TrainingCase("GatedPixelCNN", TINY_SHAPE, 4, tiny=True)
    model = bench_sampling.build_model(case.family, case.shape, tiny=True).train()
    step = bench_training.training_step(model, case.images("cpu"), "eager")
    losses = [step().item() for _ in range(5)]
    assert losses[-1] < losses[0]


def test_run_suites_writes_sections_csvs_and_plot(tmp_path, monkeypatch):
    """The CPU runner (explicitly "cpu", on any machine): quick CPU runs time eager only."""
    monkeypatch.setattr(bench_sampling, "cases", lambda device, quick=True: [
        bench_sampling.SamplingCase("PixelCNN", TINY_SHAPE, b, tiny=True) for b in (1, 2)])
    monkeypatch.setattr(bench_training, "cases", lambda quick=True: [
        bench_training.TrainingCase("PixelCNNpp", TINY_SHAPE, 2, tiny=True)])
    results = runner.run_suites("cpu", ("train", "sample"), out_dir=str(tmp_path), progress=False)
    assert [r["provider"] for r in results["train"]] == ["eager"]  # quick CPU: no interpreted training step
    assert [(r["batch"], r["provider"]) for r in results["sample"]] == [(1, "naive"), (1, "cached"),
                                                                        (2, "naive"), (2, "cached")]
    md = (tmp_path / "results.md").read_text()
    assert "## Training step" in md and "## Sampling" in md and "## Ops" not in md
    with open(tmp_path / "sampling.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    with open(tmp_path / "training.csv") as f:
        assert list(csv.DictReader(f))[0]["model"] == "PixelCNNpp"
    assert (tmp_path / "sampling.png").stat().st_size > 10_000
    assert not (tmp_path / "results.csv").exists()
    jsonl = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["suite"] for r in jsonl] == ["train"] + ["sample"] * 4
    assert all(r["device"] and r["date"] and r["torch"] for r in jsonl)


def test_cli_bench_suite_option():
    from fastgen import cli

    with pytest.raises(SystemExit):
        cli.main(["bench", "--suite", "nothing"])
