"""torch.distributed as ``torchrun`` and ``accelerate launch`` set it up: the world size, a barrier, a gather.

The trainer (through accelerate) initialises the process group; before it does, the launcher's
environment (``WORLD_SIZE``, ``RANK``) tells the same. Without a launcher everything is one process.
"""

from __future__ import annotations

import os


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of training processes (1 without a launcher)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def barrier() -> None:
    """Wait until every process gets here (nothing without a process group)."""
    if _initialized() and world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    if not (_initialized() and world_size() > 1):
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
