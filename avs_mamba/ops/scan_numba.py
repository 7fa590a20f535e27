"""Fused CPU selective scan (numba), forward and backward, vectorised across channels.

Every (batch, channel) row is an independent recurrence over time; rows of one group share B_t and C_t. The kernels
put ``LANES`` channels of one (batch, group) in the SIMD lanes: the state of a block is a (n, LANES) local array,
and each step runs, for each of the n state entries, one vector exp(delta_t A) and two FMAs across the lanes, B_t
and C_t broadcast. Time is walked in tiles of ``CHUNK`` steps whose (CHUNK, LANES) inputs are transposed into local
buffers first, so every hot loop is unit-stride over the lanes whatever the input layout (strided inputs are read
in place). Everything of the call is folded in: delta_bias, softplus, the D skip, the SiLU(z) gate and their
gradients, and the sums of dB/dC over the channels of a group; a call allocates its outputs and nothing else of
input size.

* Forward: per (batch, block) task, one pass over time.
* Backward: per (batch, group, part) task over its blocks, pass 1 walks time forwards and stores the block's
  state entering each chunk (and dt); pass 2 walks the chunks from the end: for every block it recomputes the
  chunk's states and decays into (CHUNK, n, LANES) buffers, runs the reverse-time adjoint recursion
  g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} alone, then the gradients forwards over the chunk in short lane
  loops; the chunk's dB/dC lanes of all blocks are summed in a (CHUNK, n, LANES) buffer and reduced across lanes
  once per chunk. At CHUNK = 32, n = 16 the five buffers are about 165 KiB: L2-resident.

LLVM fully unrolls a lane loop whose trip count is the constant ``LANES`` and then leaves short bodies scalar (the
arrays may alias, and the unrolled code gets no runtime alias check); loops without an exp therefore run over a
lane count read from an array's shape, which the loop vectoriser takes, with one alias check per loop.

``exp`` dominates the cost (one per (t, n) and channel). :func:`exp_scaled_into` and the kernels use one branch-free
exp (Cody-Waite range reduction, Taylor polynomial, exponent bits through an LLVM bitcast) that LLVM vectorises
(numba calls scalar libm ``exp``/``log1p`` otherwise); its error is ~1 ulp in float32 and ~1e-15 relative in
float64. softplus and sigmoid are built on it (log1p through an atanh series with Goldberg's correction).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from torch import Tensor

from avs_mamba.ops.scan_reference import check_scan_inputs, compute_dtype

__all__ = [
    "CHUNK",
    "LANES",
    "SelectiveScanNumbaFn",
    "exp_scaled_into",
    "int_view",
    "scan_numba_bwd",
    "scan_numba_fwd",
]

CHUNK = 32  # steps per time tile; also the backward's checkpoint spacing
LANES = 16  # channels per SIMD block: one zmm (AVX-512) or two ymm (AVX2) of float32
_FASTMATH = {"contract", "reassoc"}  # fma + reordered sums (to vectorise); never nnan/ninf/afn


# ---- vectorisable elementwise math ----------------------------------------------------------------------------


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float whose bit pattern is ``bits`` (int32 -> float32, int64 -> float64): one LLVM bitcast."""
    if bits == types.int32:
        ret, llty = types.float32, ir.FloatType()
    elif bits == types.int64:
        ret, llty = types.float64, ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llty)

    return ret(bits), codegen


def _vexp(x: float) -> float:
    """exp(x); inside numba code the branch-free overload below runs (the meaning is this body)."""
    return math.exp(x)


_LN2 = {  # ln2 = hi + lo with k * hi exact for the k in range (fdlibm's split)
    types.float32: (6.93145751953125e-1, 1.42860682030941723212e-6),
    types.float64: (6.93147180369123816490e-01, 1.90821492927058770002e-10),
}
# Clamp so that 2**k stays a normal number: below, the result flushes to 0; above, it overflows to inf.
_RANGE = {types.float32: (-87.33, 88.72), types.float64: (-708.39, 709.78)}


@overload(_vexp, inline="always")
def _vexp_jit(x):
    if x not in (types.float32, types.float64):
        return None
    f32 = x == types.float32
    ftype = np.float32 if f32 else np.float64
    itype = np.int32 if f32 else np.int64
    lo, hi = (ftype(v) for v in _RANGE[x])
    ln2hi, ln2lo = (ftype(v) for v in _LN2[x])
    log2e, half = ftype(1.4426950408889634), ftype(0.5)
    bias, mant = (127, 23) if f32 else (1023, 52)
    # Taylor coefficients 1/j!; with |r| <= ln2/2 the truncation error is r^(m+1)/(m+1)!: m = 6 gives
    # < 1.2e-7 (float32), m = 12 gives < 2e-16 (float64). Horner written out: a loop over a tuple does not vectorise.
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12 = (ftype(1.0 / math.factorial(j)) for j in range(13))

    def poly32(r):
        return c0 + r * (c1 + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * c6)))))

    def poly64(r):
        inner = c7 + r * (c8 + r * (c9 + r * (c10 + r * (c11 + r * c12))))
        return c0 + r * (c1 + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * inner))))))

    poly = njit(inline="always")(poly32 if f32 else poly64)

    def impl(x):
        xc = min(max(x, lo), hi)
        kf = np.floor(xc * log2e + half)  # x = k ln2 + r, |r| <= ln2 / 2
        p = poly(xc - kf * ln2hi - kf * ln2lo)
        scale = _float_from_bits(itype((int(kf) + bias) << mant))  # the float 2**k
        return p * scale * ftype(x >= lo)  # flush below lo; NaN stays NaN (NaN * 0)

    return impl


def _softplus(x: float) -> float:
    """torch's softplus (beta 1, threshold 20): x above 20, else log(1 + exp(x))."""
    return x if x > 20 else math.log1p(math.exp(x))


@overload(_softplus, inline="always")
def _softplus_jit(x):
    if x not in (types.float32, types.float64):
        return None
    f32 = x == types.float32
    ftype = np.float32 if f32 else np.float64
    one, zero, half, two = ftype(1.0), ftype(0.0), ftype(0.5), ftype(2.0)
    sqrt2, ln2, thresh = ftype(math.sqrt(2.0)), ftype(math.log(2.0)), ftype(20.0)
    # log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716 for m in [1/sqrt2, sqrt2]: terms s^(2j+1)/(2j+1)
    # to j = 5 (float32) / 11 (float64) leave a relative error below 2e-9 / 2e-17.
    q = [ftype(1.0 / (2 * j + 1)) for j in range(12)]
    q0, q1, q2, q3, q4, q5, q6, q7, q8, q9, q10, q11 = q

    def series32(s2):
        return q0 + s2 * (q1 + s2 * (q2 + s2 * (q3 + s2 * (q4 + s2 * q5))))

    def series64(s2):
        inner = q6 + s2 * (q7 + s2 * (q8 + s2 * (q9 + s2 * (q10 + s2 * q11))))
        return q0 + s2 * (q1 + s2 * (q2 + s2 * (q3 + s2 * (q4 + s2 * (q5 + s2 * inner)))))

    series = njit(inline="always")(series32 if f32 else series64)

    def impl(x):
        e = _vexp(-abs(x))  # softplus(x) = max(x, 0) + log1p(exp(-|x|)), e in (0, 1]
        v = one + e
        big = ftype(v > sqrt2)  # flags as 0/1 floats: branch-free selects
        m = v * (one - half * big)
        s = (m - one) / (m + one)
        logv = two * s * series(s * s) + ln2 * big
        den = v - one
        exact = ftype(den == zero)  # v = fl(1 + e) = 1: log1p(e) = e
        l1p = logv * (e / (den + exact)) + e * exact  # Goldberg: log1p(e) = log(v) e / (v - 1)
        return max(x, zero) + l1p * ftype(x <= thresh)  # above the threshold: x

    return impl


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@overload(_sigmoid, inline="always")
def _sigmoid_jit(x):
    if x not in (types.float32, types.float64):
        return None
    one = np.float32(1.0) if x == types.float32 else np.float64(1.0)
    return lambda x: one / (one + _vexp(-x))


def exp_scaled_into(s: float, x: np.ndarray, out: np.ndarray, scale: np.ndarray, bits: np.ndarray) -> None:
    """out[k] = exp(s * x[k]) for 1-D float arrays (``scale``, ``bits``: scratch kept for the call signature).

    This Python body is the meaning; inside numba code the overload runs the kernels' exp. Results below the
    smallest normal number flush to 0, above the largest finite one give inf.
    """
    np.exp(s * x, out=out)


@overload(exp_scaled_into, inline="always")
def _exp_scaled_into_jit(s, x, out, scale, bits):
    def impl(s, x, out, scale, bits):
        for k in range(x.shape[0]):
            out[k] = _vexp(s * x[k])

    return impl


def int_view(x: np.ndarray) -> np.ndarray:
    """The same memory as x seen as integers of the same width."""
    return x.view(np.int32 if x.itemsize == 4 else np.int64)


@overload(int_view)
def _int_view_jit(x):
    itype = np.int32 if x.dtype == types.float32 else np.int64
    return lambda x: x.view(itype)


# ---- kernels ----------------------------------------------------------------------------------------------------
# Scalars stay in the data dtype: numba types float32 op float-literal as float64, so the kernels take ``one`` in
# the data dtype and derive every other constant from it. Absent D / delta_bias are passed as zeros, absent z as a
# (1, 1, 1) dummy with has_z False.


@njit(inline="always", error_model="numpy")
def _load_tile(
    bi, d0, wn, t0, tn, u, delta, bias, z, has_z, softplus, slope, ut, dtt, sgt, zt, one
):  # pragma: no cover - numba
    """Transpose (channels d0..d0+wn, steps t0..t0+tn) of u, dt = [softplus](delta + bias) into (CHUNK, LANES)
    tiles; with ``slope``, sgt gets d dt / d delta (only the backward's adjoint needs it); zt gets z. Padding lanes
    and steps: u = dt = 0. The transposing copies are plain moves; the elementwise math then runs over the
    contiguous tiles, vectorised."""
    zero = one - one
    for j in range(CHUNK):
        for w in range(LANES):
            ut[j, w] = zero
            dtt[j, w] = zero
    rows = np.zeros((2, LANES, CHUNK), u.dtype)  # contiguous row copies first, then an in-cache transpose
    for w in range(wn):
        ur, dr, bw = u[bi, d0 + w, t0 : t0 + tn], delta[bi, d0 + w, t0 : t0 + tn], bias[d0 + w]
        ru, rd = rows[0, w], rows[1, w]
        for j in range(tn):
            ru[j] = ur[j]
            rd[j] = dr[j] + bw
    for j in range(tn):
        for w in range(LANES):
            ut[j, w] = rows[0, w, j]
            dtt[j, w] = rows[1, w, j]
    if softplus and slope:
        for j in range(CHUNK):
            for w in range(LANES):
                raw = dtt[j, w]
                e = _vexp(-abs(raw))  # the same exp as softplus's (inlined: LLVM computes it once)
                sig = (e if raw < zero else one) / (one + e)  # sigmoid(raw) from exp(-|raw|): no second exp
                sgt[j, w] = one - (one - sig) * (raw <= 20)  # slope 1 above the threshold
                dtt[j, w] = _softplus(raw)
    elif softplus:
        for j in range(CHUNK):
            for w in range(LANES):
                dtt[j, w] = _softplus(dtt[j, w])
    elif slope:
        for j in range(CHUNK):
            for w in range(LANES):
                sgt[j, w] = one
    if has_z:
        for j in range(tn):
            for w in range(wn):
                zt[j, w] = z[bi, d0 + w, t0 + j]


@njit(inline="always", error_model="numpy")
def _store_tile(tile, dst, bi, d0, wn, t0, tn):  # pragma: no cover - numba
    """dst[bi, d0 + w, t0 + j] = tile[j, w]: an in-cache transpose, then contiguous row writes."""
    rows = np.empty((LANES, CHUNK), tile.dtype)
    for j in range(tn):
        for w in range(LANES):
            rows[w, j] = tile[j, w]
    for w in range(wn):
        dr, r = dst[bi, d0 + w, t0 : t0 + tn], rows[w]
        for j in range(tn):
            dr[j] = r[j]


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _fwd_steps(tn, dtt, ut, At, Bt, Ct, Dv, h, dtu, y, yt):  # pragma: no cover - numba
    """tn steps of one block: h (n, LANES) advanced in place, pre-gate outputs into yt (CHUNK, LANES).

    A function of its own (called once per tile): compiled alone, LLVM vectorises its lane loops; inlined into
    the parallel kernel it does not."""
    n = h.shape[0]
    for j in range(tn):
        for w in range(LANES):
            dtu[w] = dtt[j, w] * ut[j, w]
            y[w] = Dv[w] * ut[j, w]
        for k in range(n):
            bk, ck = Bt[j, k], Ct[j, k]
            for w in range(LANES):
                hk = _vexp(dtt[j, w] * At[k, w]) * h[k, w] + dtu[w] * bk
                h[k, w] = hk
                y[w] += hk * ck
        for w in range(LANES):
            yt[j, w] = y[w]


@njit(parallel=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
def _fwd_kernel(u, delta, A, B, C, D, z, bias, has_z, softplus, out, last, one):  # pragma: no cover - numba
    b, d, l = u.shape
    g, n = B.shape[1], A.shape[1]
    hpg = d // g
    nblk = (hpg + LANES - 1) // LANES
    zero = one - one
    for task in prange(b * g * nblk):
        bi, rest = task // (g * nblk), task % (g * nblk)
        gi, blk = rest // nblk, rest % nblk
        d0 = gi * hpg + blk * LANES
        wn = min(LANES, hpg - blk * LANES)
        At = np.zeros((n, LANES), u.dtype)
        Dv = np.zeros(LANES, u.dtype)
        for w in range(wn):
            Dv[w] = D[d0 + w]
            for k in range(n):
                At[k, w] = A[d0 + w, k]
        h = np.zeros((n, LANES), u.dtype)
        ut = np.empty((CHUNK, LANES), u.dtype)
        dtt = np.empty((CHUNK, LANES), u.dtype)
        sgt = np.empty((CHUNK, LANES), u.dtype)
        zt = np.zeros((CHUNK, LANES), u.dtype)
        yt = np.empty((CHUNK, LANES), u.dtype)
        Bt = np.empty((CHUNK, n), u.dtype)
        Ct = np.empty((CHUNK, n), u.dtype)
        dtu = np.empty(LANES, u.dtype)
        y = np.empty(LANES, u.dtype)
        for t0 in range(0, l, CHUNK):
            tn = min(CHUNK, l - t0)
            _load_tile(bi, d0, wn, t0, tn, u, delta, bias, z, has_z, softplus, False, ut, dtt, sgt, zt, one)
            for k in range(n):
                for j in range(tn):
                    Bt[j, k] = B[bi, gi, k, t0 + j]
                    Ct[j, k] = C[bi, gi, k, t0 + j]
            _fwd_steps(tn, dtt, ut, At, Bt, Ct, Dv, h, dtu, y, yt)
            if has_z:  # the SiLU(z) gate, over the tile
                for j in range(CHUNK):
                    for w in range(LANES):
                        zj = zt[j, w]
                        yt[j, w] *= zj * _sigmoid(zj)
            _store_tile(yt, out, bi, d0, wn, t0, tn)
        for w in range(wn):
            for k in range(n):
                last[bi, d0 + w, k] = h[k, w] + zero


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _state_steps(tn, dtt, ut, At, Bt, h, dtu):  # pragma: no cover - numba
    """tn steps of one block's state h (n, LANES), in place (the backward's first pass: no output)."""
    n = h.shape[0]
    for j in range(tn):
        for w in range(LANES):
            dtu[w] = dtt[j, w] * ut[j, w]
        for k in range(n):
            bk = Bt[j, k]
            for w in range(LANES):
                h[k, w] = _vexp(dtt[j, w] * At[k, w]) * h[k, w] + dtu[w] * bk


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _bwd_recompute(tn, dtt, ut, zt, has_z, At, Bt, Ct, Dv, hs, dec, dtu, y, dyt, dzt, one):  # pragma: no cover
    """A tile's decays dec[j] and states hs[j + 1] from hs[0]; with z, dyt becomes dout SiLU(z) and dzt the
    gradient of z (dout y sig(z) (1 + z (1 - sig(z))), y the pre-gate output)."""
    n = At.shape[0]
    for j in range(tn):
        for w in range(LANES):
            dtu[w] = dtt[j, w] * ut[j, w]
            y[w] = Dv[w] * ut[j, w]
        for k in range(n):
            bk, ck = Bt[j, k], Ct[j, k]
            for w in range(LANES):
                a = _vexp(dtt[j, w] * At[k, w])
                hk = a * hs[j, k, w] + dtu[w] * bk
                dec[j, k, w] = a
                hs[j + 1, k, w] = hk
                y[w] += hk * ck
        if has_z:
            for w in range(LANES):
                zj = zt[j, w]
                sz = _sigmoid(zj)
                go = dyt[j, w]
                dyt[j, w] = go * zj * sz
                dzt[j, w] = go * y[w] * sz * (one + zj * (one - sz))


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _bwd_adjoint(
    tn, dtt, ut, sgt, dyt, At, Bt, Ct, Dv, hs, dec, gs, dA, dD, db, dBb, dCb, dtu, gB, gda_a, ddt, dut
):  # pragma: no cover - numba
    """Reverse-time adjoint over a tile, then its gradients.

    ``dec`` (CHUNK + 1, n, LANES) holds the tile's decays and, in row tn, the adjoint carried in from the next
    tile; the recursion G_j = C_j dy_j + dec_{j+1} G_{j+1} overwrites row j with the carry dec_j G_j (row 0 is the
    carry out) and stores G_j in ``gs``. The gradients then run forwards over the tile in short loops, each writing
    at most two arrays: the lane loops vectorise only with few possible aliases to check. Lane-wise dB/dC partial
    sums go into dBb/dCb, du and d delta (through softplus: sgt) into dut/ddt; dA/dD/d delta_bias accumulate.
    """
    n = At.shape[0]
    lanes = dtt.shape[1]  # LANES, but not a constant: a constant 16 is unrolled and then not vectorised
    zero = dtt[0, 0] - dtt[0, 0]
    for j in range(tn - 1, -1, -1):
        for k in range(n):
            ck = Ct[j, k]
            for w in range(lanes):
                gg = dec[j + 1, k, w] + dyt[j, w] * ck  # the adjoint of h_t
                gs[j, k, w] = gg
                dec[j, k, w] *= gg
    for j in range(tn):
        for w in range(lanes):
            dtu[w] = dtt[j, w] * ut[j, w]
        for k in range(n):
            for w in range(lanes):
                dCb[j, k, w] += dyt[j, w] * hs[j + 1, k, w]
                dBb[j, k, w] += gs[j, k, w] * dtu[w]
        for w in range(lanes):
            gda_a[w] = zero
            gB[w] = zero
        for k in range(n):
            for w in range(lanes):
                gda = dec[j, k, w] * hs[j, k, w]  # through the decay exp(dt A_k): G_j dec_j h_{j-1}
                dA[k, w] += gda * dtt[j, w]
                gda_a[w] += gda * At[k, w]
        for k in range(n):
            bk = Bt[j, k]
            for w in range(lanes):
                gB[w] += gs[j, k, w] * bk
        for w in range(lanes):
            gdt = (gda_a[w] + gB[w] * ut[j, w]) * sgt[j, w]
            ddt[j, w] = gdt
            db[w] += gdt
        for w in range(lanes):
            dyw = dyt[j, w]
            dut[j, w] = dyw * Dv[w] + gB[w] * dtt[j, w]
            dD[w] += dyw * ut[j, w]


@njit(parallel=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
def _bwd_kernel(
    u, delta, A, B, C, D, z, bias, has_z, softplus, dout, dlast, parts, du, ddelta, dA, dBp, dCp, dD, dz, dbias, one
):  # pragma: no cover - numba
    b, d, l = u.shape
    g, n = B.shape[1], A.shape[1]
    hpg = d // g
    nblk = (hpg + LANES - 1) // LANES
    nck = (l + CHUNK - 1) // CHUNK
    zero = one - one
    for task in prange(b * g * parts):
        bi, rest = task // (g * parts), task % (g * parts)
        gi, part = rest // parts, rest % parts
        blk0, blk1 = (part * nblk) // parts, ((part + 1) * nblk) // parts
        nb = blk1 - blk0
        # Per block: lane constants, checkpoints, the adjoint carried between chunks, dA/dD/dbias accumulators.
        At = np.zeros((nb, n, LANES), u.dtype)
        Dv = np.zeros((nb, LANES), u.dtype)
        ck = np.empty((nb, nck, n, LANES), u.dtype)
        gk = np.zeros((nb, n, LANES), u.dtype)
        dAacc = np.zeros((nb, n, LANES), u.dtype)
        dDacc = np.zeros((nb, LANES), u.dtype)
        dbacc = np.zeros((nb, LANES), u.dtype)
        ut = np.empty((CHUNK, LANES), u.dtype)
        dtt = np.empty((CHUNK, LANES), u.dtype)
        sgt = np.empty((CHUNK, LANES), u.dtype)
        zt = np.zeros((CHUNK, LANES), u.dtype)
        dyt = np.empty((CHUNK, LANES), u.dtype)
        dut = np.empty((CHUNK, LANES), u.dtype)
        ddt = np.empty((CHUNK, LANES), u.dtype)
        Bt = np.empty((CHUNK, n), u.dtype)
        Ct = np.empty((CHUNK, n), u.dtype)
        hs = np.empty((CHUNK + 1, n, LANES), u.dtype)  # hs[j + 1] = state after step t0 + j; hs[0] = checkpoint
        dec = np.empty((CHUNK + 1, n, LANES), u.dtype)  # decays; row tn: the adjoint carried in
        gs = np.empty((CHUNK, n, LANES), u.dtype)
        dBb = np.empty((CHUNK, n, LANES), u.dtype)
        dCb = np.empty((CHUNK, n, LANES), u.dtype)
        h = np.empty((n, LANES), u.dtype)
        dtu = np.empty(LANES, u.dtype)
        y = np.empty(LANES, u.dtype)
        gB = np.empty(LANES, u.dtype)
        gda_a = np.empty(LANES, u.dtype)
        for ib in range(nb):
            d0 = gi * hpg + (blk0 + ib) * LANES
            wn = min(LANES, hpg - (blk0 + ib) * LANES)
            for w in range(wn):
                Dv[ib, w] = D[d0 + w]
                for k in range(n):
                    At[ib, k, w] = A[d0 + w, k]
                    gk[ib, k, w] = dlast[bi, d0 + w, k]
        # Pass 1: the state entering each chunk, per block.
        for ib in range(nb):
            d0 = gi * hpg + (blk0 + ib) * LANES
            wn = min(LANES, hpg - (blk0 + ib) * LANES)
            for k in range(n):
                for w in range(LANES):
                    h[k, w] = zero
            for c in range(nck):
                t0 = c * CHUNK
                tn = min(CHUNK, l - t0)
                ck[ib, c] = h
                _load_tile(bi, d0, wn, t0, tn, u, delta, bias, z, False, softplus, False, ut, dtt, sgt, zt, one)
                for k in range(n):
                    for j in range(tn):
                        Bt[j, k] = B[bi, gi, k, t0 + j]
                _state_steps(tn, dtt, ut, At[ib], Bt, h, dtu)
        # Pass 2: chunks from the end.
        for c in range(nck - 1, -1, -1):
            t0 = c * CHUNK
            tn = min(CHUNK, l - t0)
            for k in range(n):
                for j in range(tn):
                    Bt[j, k] = B[bi, gi, k, t0 + j]
                    Ct[j, k] = C[bi, gi, k, t0 + j]
            for j in range(tn):
                for k in range(n):
                    for w in range(LANES):
                        dBb[j, k, w] = zero
                        dCb[j, k, w] = zero
            for ib in range(nb):
                d0 = gi * hpg + (blk0 + ib) * LANES
                wn = min(LANES, hpg - (blk0 + ib) * LANES)
                _load_tile(bi, d0, wn, t0, tn, u, delta, bias, z, has_z, softplus, True, ut, dtt, sgt, zt, one)
                for j in range(CHUNK):
                    for w in range(LANES):
                        dyt[j, w] = zero
                for j in range(tn):
                    for w in range(wn):
                        dyt[j, w] = dout[bi, d0 + w, t0 + j]
                # Recompute the chunk's decays and states (and the pre-gate output for dz), then the adjoint.
                hs[0] = ck[ib, c]
                _bwd_recompute(tn, dtt, ut, zt, has_z, At[ib], Bt, Ct, Dv[ib], hs, dec, dtu, y, dyt, dut, one)
                if has_z:
                    _store_tile(dut, dz, bi, d0, wn, t0, tn)
                dec[tn] = gk[ib]
                _bwd_adjoint(
                    tn, dtt, ut, sgt, dyt, At[ib], Bt, Ct, Dv[ib], hs, dec, gs, dAacc[ib], dDacc[ib], dbacc[ib],
                    dBb, dCb, dtu, gB, gda_a, ddt, dut,
                )  # fmt: skip
                gk[ib] = dec[0]
                _store_tile(dut, du, bi, d0, wn, t0, tn)
                _store_tile(ddt, ddelta, bi, d0, wn, t0, tn)
            # The chunk's dB/dC of this task's channels, reduced across lanes.
            for k in range(n):
                for j in range(tn):
                    sb, sc = zero, zero
                    for w in range(LANES):
                        sb += dBb[j, k, w]
                        sc += dCb[j, k, w]
                    dBp[part, bi, gi, k, t0 + j] = sb
                    dCp[part, bi, gi, k, t0 + j] = sc
        for ib in range(nb):
            d0 = gi * hpg + (blk0 + ib) * LANES
            wn = min(LANES, hpg - (blk0 + ib) * LANES)
            for w in range(wn):
                dD[bi, d0 + w] = dDacc[ib, w]
                dbias[bi, d0 + w] = dbacc[ib, w]
                for k in range(n):
                    dA[bi, d0 + w, k] = dAacc[ib, k, w]


# ---- torch glue -------------------------------------------------------------------------------------------------


def _parts(b: int, g: int, blocks_per_group: int) -> int:
    """Split each (batch, group) into enough parts to keep every thread busy (at most one block each)."""
    threads = numba.get_num_threads()
    return max(1, min(blocks_per_group, -(-threads // (b * g))))


def _np(t: Tensor | None, cdt: torch.dtype) -> np.ndarray | None:
    """A numpy view of t in the compute dtype (a copy only for another dtype or a non-contiguous layout)."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype != cdt:
        t = t.to(cdt)
    return t.contiguous().numpy()


class _Inputs:
    """The kernels' arguments for one call: compute-dtype numpy views, zeros for absent D / delta_bias."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> None:
        b, d, l, n, g = check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
        if u.device.type != "cpu":
            raise ValueError(f"selective_scan backend 'cpu' needs CPU tensors, got u on {u.device}; use 'torch'")
        self.cdt = cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        self.dims = (b, d, l, n, g)
        npdt = np.float32 if cdt == torch.float32 else np.float64
        self.one = npdt(1.0)
        zeros = np.zeros(d, npdt)
        self.has_z = z is not None
        self.arrays = (
            _np(u, cdt),
            _np(delta, cdt),
            _np(A, cdt),
            _np(B, cdt).reshape(b, g, n, l),
            _np(C, cdt).reshape(b, g, n, l),
            _np(D, cdt) if D is not None else zeros,
            _np(z, cdt) if z is not None else np.zeros((1, 1, 1), npdt),
            _np(delta_bias, cdt) if delta_bias is not None else zeros,
            self.has_z,
            bool(delta_softplus),
        )


def _match_torch_threads() -> int:
    """Run numba's kernels on as many threads as torch is allowed, and return that count.

    numba's OpenMP layer starts with one thread per core and, on its first parallel launch, also resets the OpenMP
    thread count that torch reads: a job started with ``--threads 1`` would then run torch on every core too and
    oversubscribe a machine shared by parallel jobs. Pinning numba to torch's count before each launch keeps both.
    """
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    return threads


def scan_numba_fwd(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> tuple[Tensor, Tensor]:
    """Forward on CPU; returns out (b, d, l) in u's dtype and the last state (b, d, n) in the compute dtype."""
    x = _Inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    b, d, l, n, _ = x.dims
    out = torch.empty((b, d, l), dtype=x.cdt)
    last = torch.empty((b, d, n), dtype=x.cdt)
    threads = _match_torch_threads()
    _fwd_kernel(*x.arrays, out.numpy(), last.numpy(), x.one)
    torch.set_num_threads(threads)
    return out.to(u.dtype), last


def scan_numba_bwd(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    dout: Tensor,
    dlast: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each like its input (None for absent inputs).

    Args:
        dout: (b, d, l) gradient of out. dlast: (b, d, n) gradient of the last state, or None for zero.
    """
    x = _Inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    b, d, l, n, g = x.dims
    cdt = x.cdt
    glast = _np(dlast, cdt) if dlast is not None else np.zeros((b, d, n), x.one.dtype)
    parts = _parts(b, g, -(-(d // g) // LANES))
    du, ddelta, dz = (torch.empty((b, d, l), dtype=cdt) for _ in range(3))
    dA = torch.empty((b, d, n), dtype=cdt)
    dBp, dCp = (torch.empty((parts, b, g, n, l), dtype=cdt) for _ in range(2))
    dD, dbias = torch.empty((b, d), dtype=cdt), torch.empty((b, d), dtype=cdt)
    threads = _match_torch_threads()
    _bwd_kernel(
        *x.arrays, _np(dout, cdt), glast, parts,
        *(t.numpy() for t in (du, ddelta, dA, dBp, dCp, dD, dz, dbias)), x.one,
    )  # fmt: skip
    torch.set_num_threads(threads)

    def back(t: Tensor, like: Tensor) -> Tensor:
        return t.reshape(like.shape).to(like.dtype)

    # The sums over batch (dA, dD, ddelta_bias: weights shared by the batch) and over parts are (b, d)-sized.
    return (
        back(du, u),
        back(ddelta, delta),
        back(dA.sum(0), A),
        back(dBp[0] if parts == 1 else dBp.sum(0), B),
        back(dCp[0] if parts == 1 else dCp.sum(0), C),
        back(dD.sum(0), D) if D is not None else None,
        back(dz, z) if z is not None else None,
        back(dbias.sum(0), delta_bias) if delta_bias is not None else None,
    )


class SelectiveScanNumbaFn(torch.autograd.Function):
    """Autograd wrapper of the numba kernels (the registered op reuses the same fwd/bwd functions)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, last = scan_numba_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        return (*scan_numba_bwd(*ctx.saved_tensors, ctx.delta_softplus, dout, dlast), None)
