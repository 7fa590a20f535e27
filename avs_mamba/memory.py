"""Peak memory of a phase of work (training steps, evaluation passes): one method for runs and for the profiler.

:class:`PeakMemory` measures named phases (``with tracker.phase("train", held=...)``) and keeps the maximum of each
name over its repeats (every epoch's training, every validation and the test pass). Figures are MiB (2**20 bytes),
keyed ``peak_mem_<phase>_mb`` as in :mod:`avs_mamba.profiling`, so a run's ``metrics.json`` cost block, its MLflow
metrics (``cost/peak_mem_train_mb``) and a profile JSON share names and units.

* **CUDA**: the caching allocator's own counters. At a phase's start: device sync,
  ``torch.cuda.empty_cache`` (so the reserved peak is the phase's own, not the previous phase's cache) and
  ``reset_peak_memory_stats``; at its end, after a sync, ``max_memory_allocated`` is the figure (every live tensor:
  weights, gradients, optimizer state, activations) and ``max_memory_reserved`` what the allocator held from the
  driver (``peak_mem_<phase>_reserved_mb``).
* **CPU**: the process's resident set. At a phase's start glibc's ``malloc_trim(0)`` hands freed memory back
  (otherwise a phase reusing an earlier phase's heap pages would show no growth), the RSS is read and the kernel's
  high-water mark ``VmHWM`` is reset to it (``5`` into ``/proc/self/clear_refs``, Linux >= 4.0): the kernel tracks
  the exact peak, with no thread and no sampling. At its end the figure is ``VmHWM - RSS at start``
  plus the bytes of the tensors held at the start (parameters, gradients, buffers, optimizer state, given inputs),
  so it means what the CUDA figure means. Where the kernel refuses the reset, a daemon thread samples the RSS every
  ``SAMPLE_INTERVAL_S`` (``/proc/self/statm``, or psutil where /proc is absent) and ``method`` says so; a spike
  shorter than the interval can be missed. The figure is the whole process's: it also counts what a phase allocates
  outside tensors (batches being decoded, metric buffers, one-time lazy initialisation) and heap fragmentation,
  and not DataLoader worker processes. ``ru_maxrss`` is not used: it is the process-lifetime peak, so a phase
  below an earlier peak (inference after training) would read as no growth at all.

No ``gc.collect`` at a phase's start: tensors are freed by reference counting, and a full collection costs ~0.3 s
in a process that has imported MLflow and pandas, several per epoch.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MB", "SAMPLE_INTERVAL_S", "PHASES", "PeakMemory", "model_tensors", "tensor_bytes", "memory_keys"]

MB = 2**20
SAMPLE_INTERVAL_S = 0.005  # the sampler's period; one read of /proc/self/statm costs ~10 µs
PHASES = ("train", "infer")
_PROC = Path("/proc/self")

CUDA_METHOD = (
    "cuda: torch.cuda.max_memory_allocated (and max_memory_reserved) after empty_cache + reset_peak_memory_stats "
    "at the phase's start"
)
_CPU_CORE = "bytes of the tensors held at its start (parameters, gradients, buffers, optimizer state, inputs)"
HWM_METHOD = f"cpu: peak RSS growth over the phase (VmHWM reset via /proc/self/clear_refs, minus VmRSS) + {_CPU_CORE}"
SAMPLED_METHOD = (
    f"cpu: peak RSS growth over the phase (RSS sampled every {SAMPLE_INTERVAL_S * 1e3:g} ms by a thread) + {_CPU_CORE}"
)


def memory_keys(phase: str) -> tuple[str, str]:
    """``(peak_mem_<phase>_mb, peak_mem_<phase>_reserved_mb)``: the record keys of one phase."""
    return f"peak_mem_{phase}_mb", f"peak_mem_{phase}_reserved_mb"


def tensor_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared weights count once)."""
    storages: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def model_tensors(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None, inputs: Iterable[Tensor] = ()
) -> Iterator[Tensor]:
    """The tensors a phase starts with: parameters and their gradients, buffers, optimizer state, ``inputs``."""
    for p in model.parameters():
        yield p
        if p.grad is not None:
            yield p.grad
    yield from model.buffers()
    yield from inputs
    if optimizer is not None:
        for state in optimizer.state.values():
            yield from (v for v in state.values() if isinstance(v, Tensor))


# ----------------------------------------------------------------------------------------------------------------
# Reading the process's memory


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", (_PROC / "status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line")
    return int(match.group(1))


def _rss_reader() -> Callable[[], int]:
    """A function returning the current RSS in bytes: ``/proc/self/statm``, else psutil.

    Raises:
        RuntimeError: Neither is available (the CPU figures cannot be measured on this system).
    """
    statm = _PROC / "statm"
    if statm.is_file():
        page = os.sysconf("SC_PAGE_SIZE")
        return lambda: int(statm.read_text().split()[1]) * page
    try:
        import psutil
    except ImportError:
        raise RuntimeError(
            "cannot read this process's resident memory: no /proc/self/statm and psutil is not installed "
            "(pip install psutil)"
        ) from None
    process = psutil.Process()
    return lambda: int(process.memory_info().rss)


def _can_reset_hwm() -> bool:
    """Whether the kernel lets this process reset its RSS high-water mark (and reports it in /proc/self/status)."""
    try:
        (_PROC / "clear_refs").write_text("5")
        _status_kb("VmHWM")
    except (OSError, RuntimeError):
        return False
    return True


def _malloc_trim() -> Callable[[], Any] | None:
    """glibc's ``malloc_trim(0)``, or None on other C libraries."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    return None if trim is None else lambda: trim(0)


class _Sampler(threading.Thread):
    """Polls ``read()`` every ``interval`` seconds until stopped, keeping the maximum."""

    def __init__(self, read: Callable[[], int], interval: float) -> None:
        super().__init__(name="avs-bench-rss-sampler", daemon=True)
        self.read, self.interval = read, interval
        self.start_rss = self.peak = read()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, self.read())

    def stop(self) -> int:
        self._done.set()
        self.join()
        self.peak = max(self.peak, self.read())
        return self.peak


# ----------------------------------------------------------------------------------------------------------------
# Phases


class PeakMemory:
    """Per-phase peak memory on one device; see the module docstring for the method.

    Args:
        device: Where the phases' tensors live; ``cuda`` reads the allocator, ``cpu`` the process RSS.
        sampler: CPU only: force the sampling thread (True) instead of the kernel high-water mark; default: the
            high-water mark where the kernel allows its reset.

    Raises:
        ValueError: A device type other than cpu or cuda.
        RuntimeError: On CPU, nothing can read the process's RSS.
    """

    def __init__(self, device: str | torch.device, *, sampler: bool | None = None) -> None:
        self.device = torch.device(device)
        self.peaks: dict[str, float] = {}
        self.reserved: dict[str, float] = {}
        self.sampler: _Sampler | None = None  # the running sampler thread, during a sampled phase
        if self.device.type == "cuda":
            self.method = CUDA_METHOD
            return
        if self.device.type != "cpu":
            raise ValueError(f"peak memory is measured on cpu or cuda devices, not {self.device.type!r}")
        self._read_rss = _rss_reader()
        self._trim = _malloc_trim()
        self._hwm = (not sampler) and _can_reset_hwm()
        self.method = HWM_METHOD if self._hwm else SAMPLED_METHOD
        if self._trim is not None:
            self.method += "; glibc malloc_trim(0) at its start"

    @contextlib.contextmanager
    def phase(self, name: str, held: Callable[[], Iterable[Tensor]] | None = None) -> Iterator[None]:
        """Measure the body as phase ``name``; ``held`` lists the tensors alive at its start (CPU figure only).

        A body that raises records nothing for this repeat."""
        if self.device.type == "cuda":
            self._cuda_start()
            yield
            torch.cuda.synchronize(self.device)
            self._keep(name, torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device))
            return
        if self._trim is not None:
            self._trim()
        held_bytes = tensor_bytes(held()) if held is not None else 0
        if self._hwm:
            before = _status_kb("VmRSS") * 1024
            (_PROC / "clear_refs").write_text("5")  # VmHWM := current RSS
            yield
            peak = _status_kb("VmHWM") * 1024
        else:
            self.sampler = _Sampler(self._read_rss, SAMPLE_INTERVAL_S)
            before = self.sampler.start_rss
            self.sampler.start()
            try:
                yield
            finally:
                peak, self.sampler = self.sampler.stop(), None
        self._keep(name, held_bytes + max(peak - before, 0), None)

    def _cuda_start(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)

    def _keep(self, name: str, peak_bytes: float, reserved_bytes: float | None) -> None:
        self.peaks[name] = max(self.peaks.get(name, 0.0), peak_bytes / MB)
        if reserved_bytes is not None:
            self.reserved[name] = max(self.reserved.get(name, 0.0), reserved_bytes / MB)

    def record(self, phases: Iterable[str] = PHASES) -> dict[str, float | None]:
        """``peak_mem_<phase>_mb`` and ``peak_mem_<phase>_reserved_mb`` (None where not measured) per phase."""
        out: dict[str, float | None] = {}
        for phase in phases:
            key, reserved = memory_keys(phase)
            out[key], out[reserved] = self.peaks.get(phase), self.reserved.get(phase)
        return out

    def merge(self, record: dict[str, Any] | None) -> None:
        """Fold in an earlier :meth:`record` (a resumed run's previous segments): the maximum of each figure."""
        record = record or {}
        for phase in PHASES:
            key, reserved = memory_keys(phase)
            for value, store in ((record.get(key), self.peaks), (record.get(reserved), self.reserved)):
                if isinstance(value, int | float):
                    store[phase] = max(store.get(phase, 0.0), float(value))
