"""The benchmark runner end to end on one small case: rows, counts, CSV, markdown and PNG."""

import csv

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


def test_launch_counter_ignores_views_and_allocations():
    import torch

    x = torch.randn(4, 4)
    launches, moved = harness.count_launches(lambda: (x.view(16), torch.empty(3), x.t(), x + 1))
    assert launches == 1 and moved == 2 * x.numel() * 4
