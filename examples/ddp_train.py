"""Training a fastgen PixelCNN on digits with DistributedDataParallel (one process per GPU, or per CPU core).

fastgen's ops are ordinary ``torch.autograd.Function``s, so a model built from them goes into
``torch.nn.parallel.DistributedDataParallel`` unchanged: each rank trains on its own shard of every epoch
(``DistributedSampler``), DDP averages the gradients over the ranks in the backward, and every rank takes the
same Adam step, so the replicas stay identical.

One node with N GPUs (backend "nccl", rank r on GPU ``LOCAL_RANK``, the model on fastgen's Triton kernels):

    torchrun --standalone --nproc_per_node=N examples/ddp_train.py --epochs 5

Without a GPU the same command runs N CPU processes (backend "gloo") on fastgen's plain-PyTorch reference
layers (``model.use_reference(True)``, as ``fastgen train`` does on CPU):

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --epochs 1

``--batch-size`` is per rank (the global batch is N times larger). Rank 0 prints the train and test bits/dim of
each epoch (averaged over all ranks) and writes ``OUT/<model>-ddp.pt`` with :func:`fastgen.training.save_checkpoint`
(``fastgen sample OUT/gated-ddp.pt`` samples from it). Several nodes: torchrun's ``--nnodes`` and
``--rdzv-endpoint`` instead of ``--standalone``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fastgen.data import load_dataset
from fastgen.ops.pixel_losses import bits_per_dim
from fastgen.training import MODELS, evaluate, loss_of, save_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["pixelcnn", "gated", "pixelcnnpp"], default="gated")
    parser.add_argument("--hidden-channels", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank (default 32)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs", help="folder of the checkpoint (default runs)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps")
    parser.add_argument("--save-rank-state", default=None, metavar="DIR",
                        help="(for the tests) every rank writes DIR/rank<r>.pt: its initial and final parameters "
                             "and the training indices it saw")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process it starts
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    try:
        return train(args, device, rank, world_size)
    finally:
        dist.destroy_process_group()


def say(line: str) -> None:
    """Prints one line in a single write. torchrun's workers write unbuffered, so ``print`` sends the text and its
    newline in two writes, and another rank's line could land between them ("...ptrank 1/2: ...")."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _all_sum(*values: float, device) -> list[float]:
    """Sums of Python numbers over the ranks (float64)."""
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def train(args, device: torch.device, rank: int, world_size: int) -> int:
    data = load_dataset("digits")
    train_set, test_set = data.split(test_fraction=0.1, seed=args.seed)
    # the same seed on every rank; DDP also broadcasts rank 0's parameters and buffers when it wraps the model
    torch.manual_seed(args.seed)
    kwargs = dict(data_channels=1, levels=data.levels, hidden_channels=args.hidden_channels, n_layers=args.layers)
    if args.model == "pixelcnnpp":
        kwargs["n_mixtures"] = 5
    model = MODELS[args.model](**kwargs).to(device).use_reference(device.type == "cpu")
    ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(ddp_model.parameters(), lr=args.lr)

    # each rank draws its own len/world_size indices of the training set per epoch (the sampler pads the last
    # shard with repeats so that every rank runs the same number of steps, as DDP's collectives need)
    indices = TensorDataset(torch.arange(len(train_set.pixels)))
    sampler = DistributedSampler(indices, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(indices, batch_size=args.batch_size, sampler=sampler)
    if rank == 0:
        say(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters, {world_size} ranks "
              f"({dist.get_backend()}, {device.type}), {len(train_set.pixels)} train / {len(test_set.pixels)} test "
              f"digits, batch {args.batch_size} per rank")
    history, seen, steps = [], [], 0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        sampler.set_epoch(epoch)  # a new shuffle every epoch, the same on every rank
        ddp_model.train()
        nats, count = 0.0, 0
        for step, (index,) in enumerate(loader):
            if args.max_steps is not None and step >= args.max_steps:
                break
            x = train_set.pixels[index].to(device)
            loss = loss_of(model, ddp_model(x), x)  # the forward through the DDP wrapper: its backward all-reduces
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            nats, count, steps = nats + loss.item() * len(x), count + len(x), steps + 1
            seen.append(index)
        # test bits/dim: each rank evaluates every world_size-th test image; the sums are added over the ranks
        shard = test_set.pixels[rank::world_size]
        test_bits = evaluate(model, shard, device=device) * len(shard)
        nats, count, test_bits, test_count = _all_sum(nats, count, test_bits, len(shard), device=device)
        record = dict(epoch=epoch, train_bpd=bits_per_dim(nats / count), test_bpd=test_bits / test_count,
                      seconds=time.perf_counter() - start)
        history.append(record)
        if rank == 0:
            say(f"epoch {epoch:3d}  train {record['train_bpd']:.3f} bits/dim  test {record['test_bpd']:.3f} "
                  f"bits/dim  ({record['seconds']:.1f} s)")
    say(f"rank {rank}/{world_size}: {steps} steps on {sum(len(i) for i in seen)} images")
    if args.save_rank_state:
        os.makedirs(args.save_rank_state, exist_ok=True)
        final = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch.save(dict(initial=initial, final=final, indices=torch.cat(seen) if seen else torch.zeros(0)),
                   os.path.join(args.save_rank_state, f"rank{rank}.pt"))
    if rank == 0:
        path = os.path.join(args.out, f"{args.model}-ddp.pt")
        save_checkpoint(path, model, image_size=data.image_size, data="digits", classes=data.classes, history=history,
                        seed=args.seed, world_size=world_size)
        say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
