"""Run under torchrun (2 gloo processes): gradients of one global batch split across ranks, BN frozen."""
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(__file__))
from ddp_common import global_batch, make_model  # noqa: E402


def main(out_path: str, arch: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model(arch)
    images, targets = global_batch()
    per = len(images) // world
    sl = slice(rank * per, (rank + 1) * per)
    ddp = DDP(model)
    losses = ddp(images[sl], targets[sl])
    sum(losses.values()).backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ssdlite")
