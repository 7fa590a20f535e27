"""Cost profiling: parameters, FLOPs (fvcore and torch's flop counter), peak memory, latency, scaling sweeps.

Every profile is one flat, JSON-ready dict with the same keys (``PROFILE_KEYS``) for every model, explicit units
in the key names, and the conditions it was measured under. A measurement that fails (an out-of-memory error, a
model that cannot be traced) leaves its keys ``None`` and adds a line to ``error`` instead of raising, so a sweep
over models and shapes always completes.

Protocol (one per measurement, DESIGN §8):

* **params**: ``params_total`` (unique parameters), ``params_trainable`` (``requires_grad``), and
  ``params_by_component`` per top-level child module; a parameter shared by two children counts once, for the
  first, so the components sum to the total.
* **flops**: eval mode, one forward of the fixed-shape synthetic input. ``gflops_fvcore`` is fvcore's count, in
  which one fused multiply-add is one flop (MACs); it is the number tables use. ``gflops_flop_counter`` is
  ``torch.utils.flop_counter.FlopCounterMode``'s, which counts a multiply-add as 2 flops and skips norms and
  interpolation. In both, the selective scan is counted by the formula registered in ``avs_mamba.ops.flops``
  (9·b·l·d·n, + b·d·l for D, + b·d·l for z; the Mamba/VMamba convention), so ``gflops_scan`` must agree between
  the two counters (a mismatch is an error). ``unsupported_ops`` lists every traced op fvcore has no handle for and
  that is not in ``ZERO_COST_OPS``; it must be empty.
* **memory**: the peak during one inference forward (eval, ``inference_mode``) and during one training step
  (train mode, forward, a scalar surrogate loss ``sum(mean(output))`` over all outputs, backward, AdamW step), each
  after one unmeasured warm-up step, by :class:`avs_mamba.memory.PeakMemory`, the method a training run uses for its
  own phases (so ``peak_mem_{infer,train}_mb`` mean the same in a profile and in a run's ``metrics.json``). CUDA:
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (includes the model, its inputs and the
  optimizer state; ``max_memory_reserved`` beside it). CPU: in a fresh subprocess (the model travels pickled), the
  peak resident-set growth during the step (kernel high-water mark reset at its start) plus the bytes of the
  tensors held at its start (parameters, buffers, inputs, optimizer state); glibc is told to return freed blocks
  (``MALLOC_MMAP_THRESHOLD_``), so the RSS tracks live memory. ``memory_method`` records which method produced
  the numbers.
* **latency**: eval mode, ``torch.inference_mode``, ``warmup`` untimed forwards, then ``repeats`` timed forwards,
  each between two device syncs read with ``time.perf_counter``; median and inter-quartile range in ms, and
  ``fps = batch * frames / median_s`` (frames per second, not clips).

``scan_backend`` (the selective-scan backends that actually ran, ``"none"`` for a model without scans) is read
during the flops or the latency pass.

Inputs are AVS-shaped: frames ``[B, T, 3, S, S]`` and VGGish log-mel audio ``[B, T, 1, 96, 64]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fvcore.nn import FlopCountAnalysis
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from avs_mamba.memory import PeakMemory, model_tensors
from avs_mamba.modules.output import AVSOutput
from avs_mamba.ops.flops import add_fvcore_handles

__all__ = [
    "MEASUREMENTS",
    "PROFILE_KEYS",
    "ZERO_COST_OPS",
    "FLOPS_CONVENTION",
    "make_inputs",
    "count_parameters",
    "count_flops",
    "profile_model",
    "profile_config",
    "scaling_sweep",
    "loglog_slope",
]

MEASUREMENTS = ("params", "flops", "memory", "latency")

# The keys of every profile, in output order: what was measured, then the conditions it was measured under.
PROFILE_KEYS = (
    "params_total",
    "params_trainable",
    "params_by_component",
    "gflops_fvcore",
    "gflops_flop_counter",
    "gflops_scan",
    "flops_convention",
    "unsupported_ops",
    "peak_mem_infer_mb",
    "peak_mem_train_mb",
    "peak_mem_infer_reserved_mb",
    "peak_mem_train_reserved_mb",
    "memory_method",
    "latency_ms_median",
    "latency_ms_iqr",
    "fps",
    "cpu_ms_median",
    "load_average",
    "name",
    "model",
    "variant",
    "size",
    "device",
    "dtype",
    "batch",
    "frames",
    "image_size",
    "scan_backend",
    "threads",
    "warmup",
    "repeats",
    "measured",
    "torch_version",
    "error",
)

FLOPS_CONVENTION = (
    "gflops_fvcore: fvcore, 1 fused multiply-add = 1 flop (tables use this); gflops_flop_counter: "
    "torch.utils.flop_counter, 1 multiply-add = 2 flops, norms and interpolation not counted; the selective scan "
    "counts 9*b*l*d*n (+b*d*l for D, +b*d*l for z) in both; element-wise ops, data movement and pooling count 0"
)

# Traced ops that cost no multiply-adds under the MAC convention fvcore follows (its own ignore list already holds
# reshapes, views, cat, relu, clamp, ...): element-wise arithmetic and activations, data movement, and
# max-pooling/reductions (comparisons and additions). torch's FlopCounterMode counts them as 0 as well. Ops with
# real multiply-adds (matmuls, convolutions, attention, grid sampling, interpolation) never belong here; they need
# a handle in ``avs_mamba.ops.flops`` or they show up in ``unsupported_ops``.
ZERO_COST_OPS: tuple[str, ...] = (
    # element-wise arithmetic
    "aten::add",
    "aten::add_",
    "aten::sub",
    "aten::sub_",
    "aten::rsub",
    "aten::mul",
    "aten::mul_",
    "aten::div",
    "aten::div_",
    "aten::neg",
    "aten::exp",
    "aten::log",
    "aten::sqrt",
    "aten::rsqrt",
    "aten::pow",
    "aten::abs",
    "aten::reciprocal",
    "aten::where",
    "aten::sin",
    "aten::cos",
    # activations
    "aten::silu",
    "aten::silu_",
    "aten::gelu",
    "aten::sigmoid",
    "aten::sigmoid_",
    "aten::tanh",
    "aten::softplus",
    "aten::softmax",
    "aten::log_softmax",
    "aten::leaky_relu",
    "aten::hardtanh",
    # data movement
    "aten::flip",
    "aten::lift_fresh",  # a constant (e.g. a cached index map) entering the traced graph
    "aten::meshgrid",
    "aten::pad",
    "aten::repeat",
    "aten::expand_as",
    "aten::view_as",
    "aten::ones_like",
    "aten::clone",
    "aten::masked_fill_",
    "aten::fill_",
    "aten::zero_",
    # max-pooling and reductions
    "aten::max_pool2d",
    "aten::mean",
    "aten::sum",
    "aten::amax",
)

SCAN_OP = "avs::selective_scan"  # the registered op every selective scan goes through (avs_mamba.ops)
AUDIO_SHAPE = (1, 96, 64)  # one VGGish log-mel example per frame
MEMORY_TIMEOUT_S = 3600
# Where the profiler's peaks come from; a training run's own (avs_mamba.engine) names its phases instead.
PROFILE_SCOPE = "profile: one inference forward and one training step (surrogate loss, AdamW), each after a warm-up"
# glibc: serve blocks >= 128 KiB by mmap and give freed memory back, so the child's RSS follows live memory.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


# ----------------------------------------------------------------------------------------------------------------
# Inputs and outputs


def make_inputs(
    batch: int, frames: int, image_size: int, device: str | torch.device = "cpu", seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Fixed synthetic inputs: frames ``[B, T, 3, S, S]`` and log-mel audio ``[B, T, 1, 96, 64]`` (standard normal)."""
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, frames, 3, image_size, image_size, generator=gen)
    audio = torch.randn(batch, frames, *AUDIO_SHAPE, generator=gen)
    return video.to(device), audio.to(device)


def _as_tuple(out: Any) -> tuple[Tensor, ...]:
    """A model output as a flat tuple of tensors (``AVSOutput`` -> logits, then aux), for tracing and losses."""
    if isinstance(out, AVSOutput):
        return (out.logits, *out.aux)
    if isinstance(out, Tensor):
        return (out,)
    if isinstance(out, (tuple, list)):
        return tuple(t for item in out for t in _as_tuple(item))
    if isinstance(out, dict):
        return tuple(t for item in out.values() for t in _as_tuple(item))
    raise TypeError(f"model output of type {type(out).__name__} is not an AVSOutput, tensor, tuple or dict")


class _TupleOutput(nn.Module):
    """Wraps a model so its forward returns a tuple of tensors (fvcore's TorchScript trace rejects dataclasses)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return _as_tuple(self.model(*inputs))


def _surrogate_loss(out: Any) -> Tensor:
    """Scalar loss on every output (its memory is O(output), negligible next to the activations)."""
    return sum(t.float().mean() for t in _as_tuple(out) if t.is_floating_point())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------------
# Parameters


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """``params_total``, ``params_trainable`` and ``params_by_component`` (top-level children, shared ones once)."""
    seen: set[int] = set()
    by_component: dict[str, int] = {}

    def take(params: Iterable[nn.Parameter]) -> int:
        count = 0
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                count += p.numel()
        return count

    for name, child in model.named_children():
        by_component[name] = take(child.parameters())
    own = take(model.parameters(recurse=False))
    if own:
        by_component["_self"] = own  # parameters registered on the model itself
    return {
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params_by_component": by_component,
    }


# ----------------------------------------------------------------------------------------------------------------
# FLOPs


class _ScanRecorder(TorchDispatchMode):
    """Records the backend of every selective-scan call that reaches dispatch."""

    def __init__(self) -> None:
        super().__init__()
        self.backends: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.avs.selective_scan.default:
            self.backends.append(kwargs.get("backend", args[9] if len(args) > 9 else "?"))
        return func(*args, **kwargs)

    def summary(self) -> str:
        """``"cpu"``, ``"cpu+torch"`` when mixed, ``"none"`` for a model without scans."""
        return "+".join(sorted(set(self.backends))) or "none"


def count_flops(model: nn.Module, inputs: Sequence[Tensor]) -> dict[str, Any]:
    """FLOPs of one eval-mode forward of ``model(*inputs)`` with fvcore and with torch's ``FlopCounterMode``.

    Returns:
        ``gflops_fvcore`` (1 multiply-add = 1 flop), ``gflops_flop_counter`` (1 multiply-add = 2 flops),
        ``gflops_scan`` (the selective scans' share, equal in both), ``unsupported_ops`` ({op: occurrences},
        empty when every op is counted or declared zero-cost) and ``scan_backend`` (backends the scans ran on).

    Raises:
        RuntimeError: The two counters disagree on the scan FLOPs (a formula registered with only one of them).
    """
    inputs = tuple(inputs)
    was_training = model.training
    model.eval()
    try:
        analysis = add_fvcore_handles(FlopCountAnalysis(_TupleOutput(model), inputs))
        analysis.set_op_handle(**dict.fromkeys(ZERO_COST_OPS))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        with torch.no_grad():
            fv_total = analysis.total()
            fv_scan = analysis.by_operator().get(SCAN_OP.split("::")[-1], 0)
            unsupported = dict(sorted(analysis.unsupported_ops().items()))
        recorder = _ScanRecorder()
        # FlopCounterMode's module tracker puts backward hooks on module inputs that require grad (learned queries
        # passed to a layer), which fails without autograd; parameters are frozen for this pass and restored.
        flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            model.requires_grad_(False)
            with torch.inference_mode(), FlopCounterMode(display=False) as counter, recorder:
                model(*inputs)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
        fc_counts = counter.get_flop_counts()["Global"]
        fc_scan = fc_counts.get(torch.ops.avs.selective_scan, 0)
    finally:
        model.train(was_training)
    if int(fv_scan) != int(fc_scan):
        raise RuntimeError(
            f"the selective-scan FLOPs differ between fvcore ({int(fv_scan)}) and FlopCounterMode ({int(fc_scan)}); "
            "the formula must be registered with both in avs_mamba.ops.flops"
        )
    return {
        "gflops_fvcore": float(fv_total) / 1e9,
        "gflops_flop_counter": float(counter.get_total_flops()) / 1e9,
        "gflops_scan": float(fv_scan) / 1e9,
        "unsupported_ops": unsupported,
        "scan_backend": recorder.summary(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Memory


def _infer_step(model: nn.Module, inputs: Sequence[Tensor]) -> None:
    with torch.inference_mode():
        model(*inputs)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: Sequence[Tensor]) -> None:
    _surrogate_loss(model(*inputs)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the model has no trainable parameters, so there is no training step to measure")
    return torch.optim.AdamW(params, lr=1e-6)


def _cpu_memory(
    model: nn.Module, inputs: Sequence[Tensor], report: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Inference and training-step peaks in this process (the subprocess side of ``_memory_cpu``); ``report``
    receives the result so far after the inference phase (a training step that does not fit may end the process)."""
    result: dict[str, Any] = {"infer_mb": None, "train_mb": None, "method": None, "errors": []}
    tracker = PeakMemory("cpu")
    result["method"] = tracker.method
    model.eval()
    try:
        _infer_step(model, inputs)  # warm-up: lazy initialisation, compiled kernels loaded
        with tracker.phase("infer", held=lambda: model_tensors(model, inputs=inputs)):
            _infer_step(model, inputs)
        result["infer_mb"] = tracker.peaks["infer"]
    except Exception as err:  # one failed measurement becomes an error string
        result["errors"].append(f"memory (inference): {type(err).__name__}: {err}")
    if report is not None:
        report(result)
    model.train()
    try:
        optimizer = _optimizer(model)
        _train_step(model, optimizer, inputs)  # warm-up: creates the optimizer state
        with tracker.phase("train", held=lambda: model_tensors(model, optimizer, inputs)):
            _train_step(model, optimizer, inputs)
        result["train_mb"] = tracker.peaks["train"]
    except Exception as err:
        result["errors"].append(f"memory (training step): {type(err).__name__}: {err}")
    return result


def _memory_child(model_path: str, batch: str, frames: str, image_size: str) -> None:
    """Subprocess entry: load the pickled model, measure, print one JSON line."""
    model = torch.load(model_path, weights_only=False)
    inputs = make_inputs(int(batch), int(frames), int(image_size))

    def report(result: dict[str, Any]) -> None:
        print(json.dumps(result), flush=True)

    print(json.dumps(_cpu_memory(model, inputs, report)))


def _memory_cpu(model: nn.Module, batch: int, frames: int, image_size: int) -> dict[str, Any]:
    """Run ``_cpu_memory`` in a fresh interpreter on a pickled copy of ``model``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(model, path)
        code = "import sys; from avs_mamba.profiling import _memory_child; _memory_child(*sys.argv[1:])"
        args = [sys.executable, "-c", code, str(path), str(batch), str(frames), str(image_size)]
        env = {**os.environ, **_MALLOC_ENV}
        try:
            proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=MEMORY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the memory subprocess ran past {MEMORY_TIMEOUT_S} s") from None
    lines = proc.stdout.strip().splitlines()
    if not lines:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"the memory subprocess failed (exit {proc.returncode}): {' | '.join(tail)}")
    result = json.loads(lines[-1])
    if proc.returncode != 0:  # ended during the training step: the inference peak it reported stands
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        killed = " (killed: out of memory?)" if proc.returncode == -9 else ""
        detail = f": {tail}" if tail else ""
        ended = f"the subprocess ended with exit {proc.returncode}{killed}{detail}"
        result["errors"].append(f"memory (training step): {ended}")
    result["method"] = f"{result['method']}; {PROFILE_SCOPE}, in a fresh subprocess"
    return result


def _memory_cuda(model: nn.Module, inputs: Sequence[Tensor], device: torch.device) -> dict[str, Any]:
    """Inference and training-step peaks from the CUDA caching allocator; the weights are restored afterwards."""
    result: dict[str, Any] = {"infer_mb": None, "train_mb": None, "errors": []}
    tracker = PeakMemory(device)
    result["method"] = f"{tracker.method}; {PROFILE_SCOPE}"

    def peak(phase: str, step: Callable[[], None]) -> float:
        step()  # warm-up
        with tracker.phase(phase):
            step()
        result[f"{phase}_reserved_mb"] = tracker.reserved[phase]
        return tracker.peaks[phase]

    model.eval()
    try:
        result["infer_mb"] = peak("infer", lambda: _infer_step(model, inputs))
    except Exception as err:
        result["errors"].append(f"memory (inference): {type(err).__name__}: {err}")
    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    model.train()
    try:
        optimizer = _optimizer(model)
        result["train_mb"] = peak("train", lambda: _train_step(model, optimizer, inputs))
    except Exception as err:
        result["errors"].append(f"memory (training step): {type(err).__name__}: {err}")
    finally:
        optimizer = None
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)
        torch.cuda.empty_cache()
    return result


# ----------------------------------------------------------------------------------------------------------------
# Latency


def _timed_forward(model: nn.Module, inputs: Sequence[Tensor], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one eval forward."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    model(*inputs)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _latency_summary(walls: Sequence[float], cpus: Sequence[float], frames: int) -> dict[str, Any]:
    q1, median, q3 = np.percentile(walls, [25, 50, 75])
    return {
        "latency_ms_median": float(median) * 1e3,
        "latency_ms_iqr": float(q3 - q1) * 1e3,
        "fps": frames / float(median),
        "cpu_ms_median": float(np.median(cpus)) * 1e3,  # CPU time beside wall: robust to a loaded machine
        "load_average": os.getloadavg()[0],
    }


def _latency(model: nn.Module, inputs: Sequence[Tensor], warmup: int, repeats: int, device: torch.device) -> dict:
    """Median and IQR of ``repeats`` timed eval forwards after ``warmup`` untimed ones (wall and CPU time), and the
    scan backends."""
    model.eval()
    recorder = _ScanRecorder()
    walls, cpus = [], []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if i == 0:
                with recorder:  # the first pass also tells which scan backends run
                    wall, cpu = _timed_forward(model, inputs, device)
            else:
                wall, cpu = _timed_forward(model, inputs, device)
            if i >= warmup:
                walls.append(wall)
                cpus.append(cpu)
    return {
        **_latency_summary(walls, cpus, inputs[0].shape[0] * inputs[0].shape[1]),
        "scan_backend": recorder.summary(),
    }


def _interleaved_latency(
    model: nn.Module, points: Sequence[tuple[Tensor, Tensor]], warmup: int, repeats: int, device: torch.device
) -> list[dict[str, Any]]:
    """Latency of several input shapes measured in rounds (one forward of every point per round, the order rotated
    each round), so that a change in the machine's load hits all points alike; medians over the rounds."""
    model.eval()
    walls: list[list[float]] = [[] for _ in points]
    cpus: list[list[float]] = [[] for _ in points]
    with torch.inference_mode():
        for _ in range(warmup):
            for inputs in points:
                _timed_forward(model, inputs, device)
        for r in range(repeats):
            for i in [(r + k) % len(points) for k in range(len(points))]:
                wall, cpu = _timed_forward(model, points[i], device)
                walls[i].append(wall)
                cpus[i].append(cpu)
    return [_latency_summary(w, c, p[0].shape[0] * p[0].shape[1]) for w, c, p in zip(walls, cpus, points, strict=True)]


# ----------------------------------------------------------------------------------------------------------------
# Profiles


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        expected = "expected 'cpu', 'cuda', 'cuda:N' or 'auto'"
        raise ValueError(f"device {device!r} is not a torch device; {expected}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: only 'cpu', 'cuda', 'cuda:N' and 'auto' are supported")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested, but torch.cuda.is_available() is False on this machine")
    return resolved


def _check_options(measure: Sequence[str], **positive: int) -> tuple[str, ...]:
    if isinstance(measure, str):
        measure = (measure,)
    unknown = [m for m in measure if m not in MEASUREMENTS]
    if unknown:
        raise ValueError(f"unknown measurement(s) {unknown}; expected some of {MEASUREMENTS}")
    for key, value in positive.items():
        low = 0 if key == "warmup" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
    return tuple(m for m in MEASUREMENTS if m in measure)


def profile_model(
    model: nn.Module,
    *,
    batch: int = 1,
    frames: int = 5,
    image_size: int = 224,
    device: str | torch.device = "cpu",
    measure: Sequence[str] = MEASUREMENTS,
    warmup: int = 2,
    repeats: int = 5,
    model_name: str | None = None,
    variant: str | None = None,
    size: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Profile ``model(frames, audio)`` on synthetic inputs; one dict with the keys of ``PROFILE_KEYS``.

    Args:
        model: A segmentation model with the suite's forward interface; it is moved to ``device``.
        batch, frames, image_size: Input shape ``[batch, frames, 3, image_size, image_size]`` (+ matching audio).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        measure: Some of ``MEASUREMENTS``; the keys of the others stay None.
        warmup, repeats: Untimed and timed forwards of the latency measurement.
        model_name, variant, size, name: Conditions recorded as they are (model defaults to the class name).

    Raises:
        ValueError: An unknown measurement, device or a non-positive shape.
        RuntimeError: CUDA requested on a machine without it.
    """
    shape = dict(batch=batch, frames=frames, image_size=image_size)
    measured = _check_options(measure, **shape, warmup=warmup, repeats=repeats)
    dev = _resolve_device(device)
    model.to(dev)
    first = next(iter(model.parameters()), None)
    row: dict[str, Any] = dict.fromkeys(PROFILE_KEYS)
    row.update(
        flops_convention=FLOPS_CONVENTION,
        name=name,
        model=model_name or type(model).__name__,
        variant=variant,
        size=size,
        device=str(dev),
        dtype=str(first.dtype).removeprefix("torch.") if first is not None else None,
        batch=batch,
        frames=frames,
        image_size=image_size,
        threads=torch.get_num_threads(),
        warmup=warmup,
        repeats=repeats,
        measured=list(measured),
        torch_version=torch.__version__,
    )
    inputs = make_inputs(batch, frames, image_size, dev)
    errors: list[str] = []
    was_training = model.training

    def attempt(what: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            values = fn()
        except Exception as err:  # an OOM or failure in one measurement becomes an error string
            errors.append(f"{what}: {type(err).__name__}: {err}")
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            return
        errors.extend(values.pop("errors", []))
        row.update({k: v for k, v in values.items() if k != "scan_backend" or row["scan_backend"] is None})

    if "params" in measured:
        attempt("params", lambda: count_parameters(model))
    if "flops" in measured:
        attempt("flops", lambda: count_flops(model, inputs))
    if "memory" in measured:
        attempt("memory", lambda: _rename_memory(_memory_of(model, inputs, dev)))
    if "latency" in measured:
        attempt("latency", lambda: _latency(model, inputs, warmup, repeats, dev))
    model.train(was_training)
    row["error"] = "; ".join(errors) or None
    return row


def _memory_of(model: nn.Module, inputs: Sequence[Tensor], device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return _memory_cuda(model, inputs, device)
    batch, frames, _, image_size, _ = inputs[0].shape
    return _memory_cpu(model, batch, frames, image_size)


def _rename_memory(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "peak_mem_infer_mb": result["infer_mb"],
        "peak_mem_train_mb": result["train_mb"],
        "peak_mem_infer_reserved_mb": result.get("infer_reserved_mb"),
        "peak_mem_train_reserved_mb": result.get("train_reserved_mb"),
        "memory_method": result["method"],
        "errors": result["errors"],
    }


def _build(config_path: str | Path, size: str, overrides: Sequence[str]):
    """The resolved config and its model, built through the registry."""
    from avs_mamba.config import load_config

    config = load_config(config_path, overrides, size)
    try:
        model = config.build_model()
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err} (profiling does not need trained weights: add the override model.pretrained=none)"
        ) from None
    return config, model


def profile_config(
    config_path: str | Path,
    *,
    size: str = "smoke",
    overrides: Sequence[str] = (),
    batch: int = 1,
    frames: int | None = None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    measure: Sequence[str] = MEASUREMENTS,
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, Any]:
    """Profile the model of an experiment config (built through the config and the registry).

    ``frames`` and ``image_size`` default to the config's ``data.num_frames`` and ``data.image_size``; the other
    arguments are those of :func:`profile_model`. Errors of the config itself (a missing file, an unknown key, a
    missing checkpoint) raise; failures of a measurement become the ``error`` field.
    """
    config, model = _build(config_path, size, overrides)
    return profile_model(
        model,
        batch=batch,
        frames=frames or config.data.num_frames,
        image_size=image_size or config.data.image_size,
        device=device,
        measure=measure,
        warmup=warmup,
        repeats=repeats,
        model_name=config.model.name,
        variant=config.variant,
        size=config.profile,
        name=config.name,
    )


def scaling_sweep(
    config_path: str | Path,
    *,
    size: str = "smoke",
    overrides: Sequence[str] = (),
    frames: Sequence[int] = (5, 10, 20, 40),
    image_sizes: Sequence[int] = (64, 128, 224, 320),
    base_frames: int | None = None,
    base_image_size: int | None = None,
    batch: int = 1,
    device: str | torch.device = "cpu",
    measure: Sequence[str] = MEASUREMENTS,
    warmup: int = 1,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """Cost against clip length and against resolution: one profile row per point, with a ``sweep`` key.

    Rows with ``sweep == "frames"`` vary T over ``frames`` at ``base_image_size``; rows with
    ``sweep == "image_size"`` vary the side over ``image_sizes`` at ``base_frames`` (the bases default to the
    config's ``data.image_size`` and ``data.num_frames``). One model is built and reused for every point; latency
    (wall and CPU time) is measured over all points in interleaved rounds, medians reported, so that a shared
    machine's changing load does not bend the slopes. Fit the growth with :func:`loglog_slope`.
    """
    config, model = _build(config_path, size, overrides)
    base_frames = base_frames or config.data.num_frames
    base_image_size = base_image_size or config.data.image_size
    points = [("frames", t, base_image_size) for t in frames] + [("image_size", base_frames, s) for s in image_sizes]
    rows = []
    for axis, t, s in points:
        row = profile_model(
            model,
            batch=batch,
            frames=t,
            image_size=s,
            device=device,
            measure=[m for m in measure if m != "latency"],
            warmup=warmup,
            repeats=repeats,
            model_name=config.model.name,
            variant=config.variant,
            size=config.profile,
            name=config.name,
        )
        rows.append({"sweep": axis, **row})
    if "latency" in measure:  # all points in interleaved rounds
        dev = _resolve_device(device)
        inputs = [make_inputs(batch, t, s, dev) for _, t, s in points]
        try:
            for row, lat in zip(rows, _interleaved_latency(model, inputs, warmup, repeats, dev), strict=True):
                row.update(lat, measured=[*row["measured"], "latency"])
        except Exception as err:  # as profile_model: a failed measurement is recorded, not raised
            for row in rows:
                row["error"] = "; ".join(filter(None, [row["error"], f"latency: {type(err).__name__}: {err}"]))
    return rows


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): the exponent k of y ~ x^k.

    Raises:
        ValueError: Fewer than two points, lengths that differ, a non-positive value, or all xs equal.
    """
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"loglog_slope needs two equally long sequences of >= 2 values, got {len(xs)} and {len(ys)}")
    if not (np.all(x > 0) and np.all(y > 0)):
        raise ValueError(f"loglog_slope needs positive values, got xs={list(xs)} ys={list(ys)}")
    if np.ptp(x) == 0:
        raise ValueError(f"loglog_slope needs at least two different xs, got {list(xs)}")
    slope, _ = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope)
