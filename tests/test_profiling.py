"""Cost profiling: exact FLOPs of the scan through both counters, params, memory, latency, errors, sweeps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from avs_mamba.ops import selective_scan
from avs_mamba.profiling import (
    MEASUREMENTS,
    PROFILE_KEYS,
    ZERO_COST_OPS,
    _interleaved_latency,
    count_flops,
    loglog_slope,
    make_inputs,
    profile_config,
    profile_model,
    scaling_sweep,
)

ABLATIONS = Path(__file__).resolve().parents[1] / "ablations"
BASELINES = sorted((Path(__file__).resolve().parents[1] / "baselines").glob("*.yaml"))
T, S = 2, 32  # smoke model at 2 frames of 32 px: the scans still cover every module, the traces stay short


class LinearScan(nn.Module):
    """x [b, l, c_in] -> Linear -> u [b, d, l] -> one selective scan (delta = u, optional D and z = u)."""

    def __init__(self, c_in: int, d: int, n: int, l: int, with_D: bool, with_z: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(c_in, d)
        self.A = nn.Parameter(-torch.rand(d, n) - 0.5)
        self.B = nn.Parameter(torch.randn(n, l))
        self.C = nn.Parameter(torch.randn(n, l))
        self.D = nn.Parameter(torch.ones(d)) if with_D else None
        self.with_z = with_z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.proj(x).transpose(1, 2)  # [b, d, l]
        b = u.shape[0]
        B, C = self.B.expand(b, -1, -1), self.C.expand(b, -1, -1)
        return selective_scan(u, u, self.A, B, C, self.D, z=u if self.with_z else None, delta_softplus=True)


class ScanShapes(TorchDispatchMode):
    """Test-side recorder: (b, d, l, n, has D, has z) of every avs::selective_scan call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int, int, int, bool, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.avs.selective_scan.default:
            u, A, D, z = args[0], args[2], args[5], args[6]
            self.calls.append((*u.shape, A.shape[1], D is not None, z is not None))
        return func(*args, **(kwargs or {}))


def expected_scan_flops(calls) -> int:
    """9 b l d n per scan, + b d l when D is used, + b d l when z is used (worked out here, not imported)."""
    return sum(9 * b * l * d * n + (b * d * l if D else 0) + (b * d * l if z else 0) for b, d, l, n, D, z in calls)


@pytest.fixture(scope="module")
def smoke_profile() -> dict:
    """Every measurement of the full AVS-Mamba smoke config at T=2, 32 px (the slow part, shared)."""
    return profile_config(ABLATIONS / "full.yaml", size="smoke", frames=T, image_size=S, warmup=1, repeats=2)


# ---- the scan through both counters ----------------------------------------------------------------------------


@pytest.mark.parametrize(("with_D", "with_z"), [(True, True), (True, False), (False, False)])
def test_linear_plus_scan_counts_exactly(with_D: bool, with_z: bool) -> None:
    """fvcore = Linear MACs + 9bldn (+bdl D, +bdl z); FlopCounterMode = 2 x Linear MACs + the same scan formula."""
    b, l, c_in, d, n = 2, 10, 6, 8, 4
    model = LinearScan(c_in, d, n, l, with_D, with_z)
    linear_macs = b * l * c_in * d
    scan = 9 * b * l * d * n + (b * d * l if with_D else 0) + (b * d * l if with_z else 0)
    result = count_flops(model, (torch.randn(b, l, c_in),))
    assert round(result["gflops_fvcore"] * 1e9) == linear_macs + scan
    assert round(result["gflops_flop_counter"] * 1e9) == 2 * linear_macs + scan
    assert round(result["gflops_scan"] * 1e9) == scan
    assert result["unsupported_ops"] == {}
    assert result["scan_backend"] == "cpu"


def test_unknown_op_is_reported_not_dropped() -> None:
    """An op with no handle and not declared zero-cost (here cumsum) is listed with its count."""

    class CumSum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x).cumsum(1).cumsum(1)

    assert "aten::cumsum" not in ZERO_COST_OPS
    result = count_flops(CumSum(), (torch.randn(2, 3, 4),))
    assert result["unsupported_ops"] == {"aten::cumsum": 2}
    assert round(result["gflops_fvcore"] * 1e9) == 2 * 3 * 4 * 4
    assert result["scan_backend"] == "none"


# ---- AVS-Mamba at smoke size ------------------------------------------------------------------------------------


def test_smoke_model_scan_flops_equal_formula_over_every_call(smoke_profile: dict) -> None:
    """Total - (total with the scan op ignored) == the formula summed over the recorded scan calls."""
    from avs_mamba.config import load_config
    from avs_mamba.profiling import _TupleOutput

    assert smoke_profile["error"] is None, smoke_profile["error"]
    model = load_config(ABLATIONS / "full.yaml", size="smoke").build_model().eval()
    inputs = make_inputs(1, T, S)
    recorder = ScanShapes()
    with torch.inference_mode(), recorder:
        model(*inputs)
    expected = expected_scan_flops(recorder.calls)
    assert len(recorder.calls) > 10 and expected > 0

    # fvcore with no handle for the scan (ignored instead): the non-scan total, counted apart from the profile.
    no_scan = FlopCountAnalysis(_TupleOutput(model), inputs)
    no_scan.set_op_handle(**dict.fromkeys(ZERO_COST_OPS), **{"avs::selective_scan": None})
    no_scan.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad():
        non_scan_total = no_scan.total()

    assert round(smoke_profile["gflops_fvcore"] * 1e9) - non_scan_total == expected
    assert round(smoke_profile["gflops_scan"] * 1e9) == expected
    assert smoke_profile["unsupported_ops"] == {}
    # FlopCounterMode counts 2 per multiply-add, fvcore 1, and norms/interpolation only in fvcore: between 1x and 2x.
    fc_non_scan = smoke_profile["gflops_flop_counter"] - smoke_profile["gflops_scan"]
    fv_non_scan = non_scan_total / 1e9
    assert 1.5 * fv_non_scan < fc_non_scan <= 2 * fv_non_scan


def test_smoke_params_by_component(smoke_profile: dict) -> None:
    """Components sum to the total and match the model's own per-component counts."""
    from avs_mamba.config import load_config

    model = load_config(ABLATIONS / "full.yaml", size="smoke").build_model()
    by_component = smoke_profile["params_by_component"]
    assert sum(by_component.values()) == smoke_profile["params_total"]
    assert smoke_profile["params_total"] == sum(p.numel() for p in model.parameters())
    own = {k: v for k, v in model.parameter_counts().items() if v}
    assert by_component == own
    assert smoke_profile["params_trainable"] == smoke_profile["params_total"]  # log-mel CNN, nothing frozen


def test_smoke_memory_latency_and_conditions(smoke_profile: dict) -> None:
    """Memory and latency are positive; the train step holds at least params + grads-free AdamW state (3 x params)."""
    p = smoke_profile
    param_mb = p["params_total"] * 4 / 2**20
    assert p["peak_mem_infer_mb"] > param_mb
    assert p["peak_mem_train_mb"] > 3 * param_mb  # weights + AdamW's two moments, then activations and grads
    assert "subprocess" in p["memory_method"]
    assert p["latency_ms_median"] > 0 and p["latency_ms_iqr"] >= 0
    assert p["fps"] == pytest.approx(1 * T / (p["latency_ms_median"] / 1e3))
    assert (p["model"], p["variant"], p["size"], p["device"], p["dtype"]) == (
        "avs_mamba",
        "full",
        "smoke",
        "cpu",
        "float32",
    )
    assert (p["batch"], p["frames"], p["image_size"], p["scan_backend"]) == (1, T, S, "cpu")
    assert list(p) == list(PROFILE_KEYS)
    json.dumps(p)  # JSON-ready as it is


def test_same_keys_for_another_config(smoke_profile: dict) -> None:
    """no_tmb profiles with the same keys, and fewer parameters than the full model."""
    other = profile_config(ABLATIONS / "no_tmb.yaml", size="smoke", frames=T, image_size=S, measure=("params",))
    assert list(other) == list(smoke_profile)
    assert other["variant"] == "no_tmb" and other["error"] is None
    assert other["params_total"] < smoke_profile["params_total"]
    assert other["gflops_fvcore"] is None and other["measured"] == ["params"]


@pytest.mark.parametrize("config_path", BASELINES, ids=lambda p: p.stem)
def test_baselines_count_every_op_with_the_same_keys(config_path: Path, smoke_profile: dict) -> None:
    """Every baseline YAML: all traced ops counted or declared zero-cost; the profile has the AVS-Mamba keys."""
    row = profile_config(config_path, size="smoke", frames=T, image_size=64, measure=("params", "flops"))
    assert row["error"] is None, row["error"]
    assert row["unsupported_ops"] == {}
    assert row["gflops_fvcore"] > 0 and row["params_total"] > 0
    assert list(row) == list(smoke_profile)


# ---- errors, options, sweeps ------------------------------------------------------------------------------------


class Exploding(nn.Module):
    """Has parameters, but every forward fails."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3)

    def forward(self, frames: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("injected failure")


def test_failure_becomes_error_field() -> None:
    row = profile_model(Exploding(), frames=2, image_size=8, measure=("params", "flops", "latency"), repeats=1)
    assert row["params_total"] == 3 * 3 + 3
    assert row["gflops_fvcore"] is None and row["latency_ms_median"] is None
    assert row["error"].count("injected failure") == 2
    assert row["error"].startswith("flops: RuntimeError") and "; latency: RuntimeError" in row["error"]
    assert list(row) == list(PROFILE_KEYS)


def test_invalid_options_raise() -> None:
    with pytest.raises(ValueError, match="unknown measurement"):
        profile_model(Exploding(), measure=("params", "speed"))
    with pytest.raises(ValueError, match="frames must be an integer >= 1"):
        profile_model(Exploding(), frames=0)
    with pytest.raises(ValueError, match="device 'tpu'"):
        profile_model(Exploding(), device="tpu")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        profile_config(ABLATIONS / "missing.yaml")
    assert MEASUREMENTS == ("params", "flops", "memory", "latency")


def test_loglog_slope() -> None:
    xs = [5, 10, 20, 40]
    assert loglog_slope(xs, [3.0 * x**1.5 for x in xs]) == pytest.approx(1.5)
    assert loglog_slope([1, 2], [7, 7]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([1, 2], [0, 1])
    with pytest.raises(ValueError, match=">= 2 values"):
        loglog_slope([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="different xs"):
        loglog_slope([2, 2], [1, 3])


def test_scaling_sweep_rows() -> None:
    """One row per point; T rows at the base size, size rows at the base T."""
    rows = scaling_sweep(
        ABLATIONS / "full.yaml",
        size="smoke",
        frames=(1, 2),
        image_sizes=(64, 96),
        base_frames=1,
        base_image_size=64,
        measure=("latency",),
        warmup=0,
        repeats=1,
    )
    assert [(r["sweep"], r["frames"], r["image_size"]) for r in rows] == [
        ("frames", 1, 64),
        ("frames", 2, 64),
        ("image_size", 1, 64),
        ("image_size", 1, 96),
    ]
    assert all(r["error"] is None and r["latency_ms_median"] > 0 for r in rows)
    assert all(r["cpu_ms_median"] > 0 and r["load_average"] >= 0 and "latency" in r["measured"] for r in rows)
    assert set(rows[0]) == {"sweep", *PROFILE_KEYS}


def test_interleaved_latency_times_every_point_each_round():
    """Rounds rotate over the points: with 3 rounds every point gets 3 timed forwards, in a different order."""
    calls = []

    class Recorder(nn.Module):
        def forward(self, video, audio):
            calls.append(video.shape[1])
            return video

    points = [make_inputs(1, t, 8) for t in (1, 2, 3)]
    rows = _interleaved_latency(Recorder(), points, warmup=1, repeats=3, device=torch.device("cpu"))
    assert calls == [1, 2, 3, 1, 2, 3, 2, 3, 1, 3, 1, 2]
    assert [r["fps"] * r["latency_ms_median"] / 1e3 for r in rows] == pytest.approx([1, 2, 3])


def test_training_step_killed_keeps_the_inference_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step that does not fit (the subprocess killed, as by the OOM killer) still reports the measured
    inference peak, with the training step's error saying how the subprocess ended."""
    from _memory_kill_model import KilledInTraining

    from avs_mamba.profiling import _memory_cpu

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    result = _memory_cpu(KilledInTraining(), batch=1, frames=2, image_size=16)
    assert result["infer_mb"] is not None and result["infer_mb"] >= 0 and result["train_mb"] is None
    assert result["errors"] == [result["errors"][0]] and "exit -9 (killed: out of memory?)" in result["errors"][0]
