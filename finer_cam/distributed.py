"""Runs across processes (``torchrun --nproc_per_node N generate_cam.py ...``, any number of nodes).

Each rank takes a disjoint, deterministic shard of the images (every ``world``-th image of the sorted list
that is not done yet, from position ``rank``), writes its maps and its own index file, and rank 0 merges
the index files into the single-run layout at the end, so the output is what one process would write.
A killed run leaves the shard index files behind; the next run merges them first (resume per shard).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import FinerCamError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` (``world == 1``: a plain single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of ``items``: positions ``rank, rank + world, ...``."""
        return items[self.rank:: self.world]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def share_error(self, error: FinerCamError | None) -> None:
        """Raise ``error`` (found on rank 0) on every rank, so that none waits for the others forever."""
        if self.world == 1:
            if error is not None:
                raise error
            return
        box = [str(error) if error is not None else None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise FinerCamError(box[0])

    def sum(self, counts: dict[str, int]) -> dict[str, int]:
        """``counts`` summed over the ranks (same keys on every rank)."""
        if self.world == 1:
            return counts
        keys = sorted(counts)
        t = torch.tensor([counts[k] for k in keys], dtype=torch.long)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def init_ranks(device_type: str) -> Ranks:
    """Join the process group that ``torchrun`` describes in the environment (nccl for CUDA, else gloo);
    a plain ``python script.py`` is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Ranks(rank, world, local_rank)


def shutdown(ranks: Ranks) -> None:
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
