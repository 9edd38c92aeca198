"""Sharding over processes started by an existing launcher (torchrun, accelerate launch).

Both launchers export RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); a plain
`python` run is rank 0 of 1. Rank r takes the images r, r+n, r+2n... of the question file (in
order of first appearance) with all their questions, so the shares are disjoint and cover the file
whatever the order of completion, and each image's questions run back to back on one rank. The only collectives are
a barrier and a gather of per-rank counts before rank 0 merges the shards, done with a gloo process group (works with and
without GPUs).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: Sequence[T]) -> list[T]:
        return list(items[self.rank :: self.world_size])

    def take_groups(self, items: Sequence[T], key: Callable[[T], Any]) -> list[T]:
        """This rank's share of whole groups (round robin over groups in order of first appearance),
        each group's items together: questions about one image land on one rank, one after another,
        so the engine's feature cache serves the follow-ups."""
        groups: dict[Any, list[T]] = {}
        for item in items:
            groups.setdefault(key(item), []).append(item)
        mine = list(groups.values())[self.rank :: self.world_size]
        return [item for group in mine for item in group]


def shard_from_env(environ=None) -> Shard:
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    local = int(env.get("LOCAL_RANK", "0") or 0)
    rank = int(env.get("RANK", env.get("LOCAL_RANK", "0")) or 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} outside WORLD_SIZE {world}")
    return Shard(rank, world, local)


def default_device(shard: Shard, requested: str | None = None) -> str:
    """One GPU per rank (cuda:LOCAL_RANK) when there are GPUs, else CPU; a bare "cuda" request
    is pinned to the rank's GPU too."""
    import torch

    if requested and requested != "cuda":
        return requested
    if torch.cuda.is_available():
        return f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    if requested == "cuda":
        return "cuda"  # let the engine report the missing GPU
    return "cpu"


class ProcessGroup:
    """A gloo group for the final barrier; a no-op for a single process."""

    def __init__(self, shard: Shard, timeout_hours: float = 72.0):
        self.shard = shard
        self._owned = False
        if shard.world_size > 1 and "MASTER_ADDR" in os.environ:
            import torch.distributed as dist

            if not dist.is_initialized():
                # ranks finish their shares at different times: a long timeout for the barrier
                dist.init_process_group(
                    "gloo",
                    rank=shard.rank,
                    world_size=shard.world_size,
                    timeout=datetime.timedelta(hours=timeout_hours),
                )
                self._owned = True

    def barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def gather(self, obj):
        """Every rank's `obj`, in rank order (a list of one without a process group)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            out = [None] * self.shard.world_size
            dist.all_gather_object(out, obj)
            return out
        return [obj]

    def close(self) -> None:
        if self._owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owned = False
