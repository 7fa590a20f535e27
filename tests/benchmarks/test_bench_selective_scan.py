"""Selective-scan speed and memory on CPU: reference, torch, cpu (numba) and mambapy's pscan.

Run with ``./run pytest tests/benchmarks --benchmark-only`` (skipped by default). Problem: b=2, d=256, n=16,
float32, l in {1024, 4096, 16384}, with D and softplus(delta + delta_bias).

Each timing's ``extra_info`` carries ``state_updates_per_s_per_core`` (b*d*l*n over the median time and the threads)
beside ``limit_updates_per_s_per_core``, the machine's limit for this op mix, estimated by measuring (once per
session, single-threaded, best of 5) a numba loop with exactly the forward's per-update work on L1-resident data: one
vectorised exp(delta A) (the kernels' own ``_vexp``) and two FMAs (state and output) per state entry, lanes over
channels. The forward kernel cannot beat it (it also reads inputs and writes outputs); the backward does about
three times the work per update. Groups ``fwd-l{l}`` and
``fwdbwd-l{l}`` put the four implementations side by side. mambapy is fed the same problem in its own
layout ((b, l, d) inputs; it scans the materialised (b, l, d, n) tensors exp(delta A) and delta B u).

Peak memory (group ``peak-memory-l16384``): forward+backward at l=16384 runs in a fresh subprocess that resets
its peak-RSS mark (``/proc/self/clear_refs``) just before the call and reads ``VmHWM`` after it; the figure is
that peak minus the RSS before, so it covers torch's and numba's allocations alike (outputs and gradients
included). It is stored in the benchmark's ``extra_info`` (``peak_rss_delta_mb``) beside the size of one
(b, d, l, n) float32 tensor, which a materialising scan would need several of.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import njit

from avs_mamba.ops import selective_scan, selective_scan_ref
from avs_mamba.ops.scan_numba import _FASTMATH, LANES, _vexp

BATCH, DIM, DSTATE = 2, 256, 16
LENGTHS = (1024, 4096, 16384)
IMPLS = ("reference", "torch", "cpu", "mambapy")
ROOT = Path(__file__).resolve().parents[2]


@njit(fastmath=_FASTMATH, error_model="numpy")
def _op_mix(steps, dt, A, B, h, y):  # pragma: no cover - numba
    n = A.shape[0]
    for t in range(steps):
        for k in range(n):
            bk = B[t % B.shape[0], k]
            for w in range(LANES):
                hk = _vexp(dt[w] * A[k, w]) * h[k, w] + dt[w] * bk
                h[k, w] = hk
                y[w] += hk * bk


_LIMIT: dict[str, float] = {}


def limit_updates_per_s(n: int = DSTATE) -> float:
    """Measured peak of the forward's op mix (see the module docstring) for state size n, updates/s on one core."""
    if n not in _LIMIT:
        rng = np.random.default_rng(0)
        dt = (rng.random(LANES) * 0.1).astype(np.float32)
        A = -rng.random((n, LANES)).astype(np.float32)
        B = rng.standard_normal((64, n)).astype(np.float32)
        h, y = np.zeros((n, LANES), np.float32), np.zeros(LANES, np.float32)
        steps = 20000 * DSTATE // n
        _op_mix(10, dt, A, B, h, y)
        best = min(_cpu_seconds(lambda: _op_mix(steps, dt, A, B, h, y)) for _ in range(5))
        _LIMIT[n] = steps * n * LANES / best
    return _LIMIT[n]


def _cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def skip_materialising(impl: str, l: int) -> None:
    if impl in ("reference", "mambapy") and l > 4096:
        pytest.skip(f"{impl} materialises (b, d, l, n) tensors: compared up to l=4096")


def record_rate(benchmark, l: int, b: int = BATCH, d: int = DIM, n: int = DSTATE) -> None:
    """Achieved state updates per second per core beside the estimated limit, in the benchmark's extra_info."""
    threads = torch.get_num_threads()
    rate = b * d * l * n / benchmark.stats.stats.median / threads
    limit = limit_updates_per_s(n)
    benchmark.extra_info.update(
        state_updates_per_s_per_core=rate, limit_updates_per_s_per_core=limit, fraction_of_limit=rate / limit
    )


def make_problem(
    l: int, requires_grad: bool, seed: int = 0, b: int = BATCH, d: int = DIM, n: int = DSTATE
) -> dict[str, torch.Tensor]:
    """Inputs in mamba-ssm's layout: u, delta (b, d, l), A (d, n), B, C (b, n, l), D, delta_bias (d,)."""
    gen = torch.Generator().manual_seed(seed)
    x = {
        "u": torch.randn(b, d, l, generator=gen),
        "delta": torch.randn(b, d, l, generator=gen) * 0.5,
        "A": -torch.exp(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1)),  # S4D-real
        "B": torch.randn(b, n, l, generator=gen),
        "C": torch.randn(b, n, l, generator=gen),
        "D": torch.ones(d),
        "delta_bias": torch.rand(d, generator=gen) * -4.0,
    }
    return {k: v.requires_grad_(requires_grad) for k, v in x.items()}


def mambapy_scan(u, delta, A, B, C, D, delta_bias):
    """The same scan through mambapy's pscan; u, delta (b, l, d), B, C (b, l, n) as mambapy's Mamba uses them."""
    from mambapy.pscan import pscan

    dt = F.softplus(delta + delta_bias)
    decay = torch.exp(dt.unsqueeze(-1) * A)  # (b, l, d, n)
    drive = (dt * u).unsqueeze(-1) * B.unsqueeze(2)  # (b, l, d, n)
    hs = pscan(decay, drive)
    return (hs @ C.unsqueeze(-1)).squeeze(-1) + D * u  # (b, l, d)


def runner(impl: str, x: dict[str, torch.Tensor]):
    """A zero-argument callable computing the scan's output with ``impl``."""
    if impl == "mambapy":
        y = {k: v.detach().transpose(1, 2).contiguous() if v.dim() == 3 else v.detach() for k, v in x.items()}
        y = {k: v.requires_grad_(x[k].requires_grad) for k, v in y.items()}
        return lambda: mambapy_scan(y["u"], y["delta"], y["A"], y["B"], y["C"], y["D"], y["delta_bias"])
    if impl == "reference":
        return lambda: selective_scan_ref(**x, delta_softplus=True)
    return lambda: selective_scan(**x, delta_softplus=True, backend=impl)


def test_mambapy_solves_the_same_problem():
    """Guard for the comparison: mambapy's pscan gives the reference's output on a short sequence."""
    x = make_problem(64, requires_grad=False)
    expected = selective_scan_ref(**x, delta_softplus=True)
    torch.testing.assert_close(runner("mambapy", x)().transpose(1, 2), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("l", LENGTHS)
@pytest.mark.parametrize("impl", IMPLS)
def test_forward(benchmark, impl, l):
    skip_materialising(impl, l)
    benchmark.group = f"fwd-l{l}"
    benchmark.extra_info.update(
        impl=impl, b=BATCH, d=DIM, n=DSTATE, l=l, dtype="float32", threads=torch.get_num_threads()
    )
    fn = runner(impl, make_problem(l, requires_grad=False))
    with torch.no_grad():
        benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    record_rate(benchmark, l)


@pytest.mark.parametrize("l", LENGTHS)
@pytest.mark.parametrize("impl", IMPLS)
def test_forward_backward(benchmark, impl, l):
    skip_materialising(impl, l)
    benchmark.group = f"fwdbwd-l{l}"
    benchmark.extra_info.update(
        impl=impl, b=BATCH, d=DIM, n=DSTATE, l=l, dtype="float32", threads=torch.get_num_threads()
    )
    fn = runner(impl, make_problem(l, requires_grad=True))
    benchmark.pedantic(lambda: fn().sum().backward(), rounds=5, iterations=1, warmup_rounds=1)
    record_rate(benchmark, l)


# (b, d, l, n) of scans as AVS-Mamba's smoke training step calls them (K directions stacked along d).
CALL_SHAPES = ((4, 512, 320, 8),)


@pytest.mark.parametrize("shape", CALL_SHAPES, ids=lambda s: "b{}-d{}-l{}-n{}".format(*s))
def test_forward_backward_call_shape(benchmark, shape):
    """The cpu op at a call shape of the model, forward+backward, with its rate beside the limit for its n."""
    b, d, l, n = shape
    benchmark.group = "fwdbwd-call-shapes"
    benchmark.extra_info.update(impl="cpu", b=b, d=d, n=n, l=l, dtype="float32", threads=torch.get_num_threads())
    fn = runner("cpu", make_problem(l, requires_grad=True, b=b, d=d, n=n))
    benchmark.pedantic(lambda: fn().sum().backward(), rounds=5, iterations=1, warmup_rounds=1)
    record_rate(benchmark, l, b, d, n)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_bench_selective_scan import make_problem, runner

    def status_kb(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

    fn = runner({impl!r}, make_problem(16, requires_grad=True))
    fn().sum().backward()  # load / compile on a tiny problem first
    x = make_problem({l}, requires_grad=True)
    fn = runner({impl!r}, x)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    before = status_kb("VmRSS")
    fn().sum().backward()
    print(json.dumps({{"before_kb": before, "peak_kb": status_kb("VmHWM")}}))
    """
)


def peak_rss_delta_mb(impl: str, l: int) -> float:
    """Peak RSS (MiB) of one forward+backward of ``impl`` at length l above the RSS just before it."""
    script = _MEMORY_SCRIPT.format(tests=str(Path(__file__).parent), impl=impl, l=l)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe for {impl} failed:\n{done.stderr[-2000:]}")
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    return (rss["peak_kb"] - rss["before_kb"]) / 1024


@pytest.mark.skipif(sys.platform != "linux", reason="reads and resets the peak RSS through /proc (Linux)")
@pytest.mark.parametrize("impl", ["torch", "cpu"])
def test_peak_memory_forward_backward(benchmark, impl):
    l = 16384
    benchmark.group = f"peak-memory-l{l}"
    result = {}
    benchmark.pedantic(lambda: result.update(mb=peak_rss_delta_mb(impl, l)), rounds=1, iterations=1)
    one_bdln_mb = BATCH * DIM * l * DSTATE * 4 / 2**20
    benchmark.extra_info.update(
        impl=impl, l=l, peak_rss_delta_mb=round(result["mb"], 1), one_bdln_tensor_mb=one_bdln_mb
    )
    # A materialising scan (the reference, mambapy) needs two (b, d, l, n) tensors for exp(delta A) and
    # delta B u alone; these backends keep only (b, d, l)-sized tensors and bounded work buffers.
    assert result["mb"] < 2 * one_bdln_mb, f"{impl} grew the peak RSS by {result['mb']:.0f} MiB"
