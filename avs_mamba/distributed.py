"""Process-group plumbing for single-process and ``torchrun`` (DDP) runs.

One entry point serves both: ``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, and
:func:`init_distributed` joins the group (NCCL on CUDA, Gloo on CPU); without those variables it is a plain
single-process run. Only rank 0 writes files and talks to MLflow; :class:`DistContext` says which rank this is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DeviceUnavailableError",
    "DistContext",
    "resolve_device",
    "init_distributed",
    "all_gather_object",
    "barrier",
    "all_true",
    "shutdown",
]


class DeviceUnavailableError(RuntimeError):
    """The requested device does not exist on this machine (an environment problem, not a bug)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and MLflow records."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun)") from None


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a bare ``cuda`` under DDP means this process's ``local_rank`` GPU.

    Raises:
        DeviceUnavailableError: CUDA is asked for but not available.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise DeviceUnavailableError(
                f"device {device!r} requested but CUDA is not available ({why}; torch {torch.__version__}); "
                "use --device cpu (or auto)"
            )
        if device == "cuda":
            device = f"cuda:{local_rank}"
    elif device != "cpu":
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
    return torch.device(device)


def init_distributed(device: str = "auto") -> tuple[DistContext, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1) and pick this process's device."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    ctx = DistContext(rank=rank, world_size=world_size, local_rank=local_rank)
    dev = resolve_device(device, local_rank)
    if ctx.enabled and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return ctx, dev


def all_gather_object(ctx: DistContext, obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` in a single-process run."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_true(ctx: DistContext, flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank (one all-reduce), so all ranks take the same branch."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([0 if flag else 1], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item()) == 0


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op for single-process runs)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
