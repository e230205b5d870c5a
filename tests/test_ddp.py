"""examples/ddp_train.py under torchrun: 2 CPU processes with the gloo backend keep identical replicas."""

import os
import pathlib
import subprocess
import sys

import torch

from fastgen.training import load_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ddp_train.py"


def test_ddp_example_trains_two_ranks_in_sync(tmp_path):
    out, state = tmp_path / "runs", tmp_path / "state"
    # 1 OpenMP thread per process: two ranks on a 2-core machine; torchrun's --standalone picks a free port
    # CPU and gloo, also where a GPU exists (2 ranks would need 2 GPUs with nccl)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(EXAMPLE),
               "--epochs", "1", "--max-steps", "3", "--batch-size", "8", "--hidden-channels", "8", "--layers", "2",
               "--out", str(out), "--save-rank-state", str(state)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "2 ranks (gloo, cpu)" in result.stdout, log
    assert "epoch   1  train" in result.stdout, log
    for rank in (0, 1):
        assert f"rank {rank}/2: 3 steps on 24 images" in result.stdout, log

    ranks = [torch.load(state / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    # the ranks trained on different images, so only the all-reduce of the gradients keeps them identical
    seen = [set(r["indices"].tolist()) for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 24 and not seen[0] & seen[1]
    initial, final = ranks[0]["initial"], ranks[0]["final"]
    assert initial.keys() == final.keys() == ranks[1]["final"].keys()
    for name in initial:
        assert torch.equal(ranks[1]["initial"][name], initial[name]), name
        assert torch.equal(ranks[1]["final"][name], final[name]), f"{name}: the replicas diverged"
    weights = [name for name in final if name.endswith("weight")]
    assert weights and all(not torch.equal(final[name], initial[name]) for name in weights)

    model, meta = load_checkpoint(out / "gated-ddp.pt")
    assert meta["world_size"] == 2 and len(meta["history"]) == 1
    for name, value in model.state_dict().items():
        assert torch.equal(value, final[name]), name
