"""Multi-direction scan and its mixer block: merge against independent per-direction scans, shapes, gradients, init.

The oracle here builds every direction's sequence from index lists (itertools.product over the order's axes), scans it
with its own sequential recurrence and scatters the result back: it shares no code with the library.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from avs_mamba.modules.layers import DropPath, DWConvTHW, drop_path
from avs_mamba.modules.multi_scan import MultiDirectionScan, MultiScanMixer
from avs_mamba.ops.scan_orders import directions_2d, directions_3d
from avs_mamba.ops.selective_scan import available_backends

# --- independent oracle -------------------------------------------------------------------------------------------


def positions(order: str, T: int, H: int, W: int) -> list[tuple[int, int, int]]:
    """(t, h, w) of each sequence element: the order's axes as nested loops, outermost first."""
    size = {"t": T, "h": H, "w": W}
    out = []
    for idx in itertools.product(*(range(size[a]) for a in order)):
        pos = dict(zip(order, idx, strict=True))
        out.append((pos["t"], pos["h"], pos["w"]))
    return out


def oracle_scan(u, delta, A, Bm, Cm, D, delta_bias):
    """Single-direction Mamba recurrence with softplus(delta + bias). u, delta (b, e, l); A (e, n); B, C (b, n, l)."""
    delta = F.softplus(delta + delta_bias[:, None])
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * Bm[:, None, :, t] * u[:, :, t, None]
        ys.append((h * Cm[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1) + D[:, None] * u


def oracle_multi_scan(scan: MultiDirectionScan, scales, tokens, tokens_at):
    """Run each direction alone on gathered sequences and sum the scattered outputs (float64)."""
    scales = [s.double() for s in scales]
    B, E, T = scales[0].shape[:3]
    R, N = scan.dt_rank, scan.d_state
    out_scales = [torch.zeros_like(s) for s in scales]
    out_tokens = None if tokens is None else torch.zeros_like(tokens, dtype=torch.float64)
    for k, d in enumerate(scan.directions):
        vis = [(i, p) for i, s in enumerate(scales) for p in positions(d.order, T, s.shape[3], s.shape[4])]
        if d.reverse:
            vis = vis[::-1]
        cols = [scales[i][:, :, t, h, w] for i, (t, h, w) in vis]
        tok_idx = [] if tokens is None else list(range(tokens.shape[2]))
        if d.reverse:
            tok_idx = tok_idx[::-1]
        tok_cols = [tokens[:, :, j].double() for j in tok_idx]
        entries = [("v", e) for e in vis]
        tok_entries = [("a", j) for j in tok_idx]
        if tokens_at == "start":
            cols, entries = tok_cols + cols, tok_entries + entries
        else:
            cols, entries = cols + tok_cols, entries + tok_entries
        u = torch.stack(cols, dim=-1)  # (B, E, L)
        w_x = scan.x_proj_weight[k].double()
        x_dbl = torch.einsum("ce,bel->bcl", w_x, u)
        dt, Bm, Cm = x_dbl[:, :R], x_dbl[:, R : R + N], x_dbl[:, R + N :]
        dt = torch.einsum("er,brl->bel", scan.dt_projs_weight[k].double(), dt)
        sl = slice(k * E, (k + 1) * E)
        A = -torch.exp(scan.A_logs[sl].double())
        y = oracle_scan(u, dt, A, Bm, Cm, scan.Ds[sl].double(), scan.dt_projs_bias[k].double())
        for l, (kind, where) in enumerate(entries):
            if kind == "v":
                i, (t, h, w) = where
                out_scales[i][:, :, t, h, w] += y[:, :, l]
            else:
                out_tokens[:, :, where] += y[:, :, l]
    return out_scales, out_tokens


def small_scan(directions, tokens_at="end", d_inner=4, seed=0) -> MultiDirectionScan:
    torch.manual_seed(seed)
    scan = MultiDirectionScan(d_inner, d_state=3, dt_rank=2, directions=directions, tokens_at=tokens_at)
    with torch.no_grad():  # make directions and channels differ so a misplaced output cannot pass
        scan.A_logs.add_(0.3 * torch.randn_like(scan.A_logs))
        scan.Ds.add_(torch.randn_like(scan.Ds))
        scan.dt_projs_bias.add_(torch.randn_like(scan.dt_projs_bias))
    return scan


# --- the primitive --------------------------------------------------------------------------------------------------


class TestMergeAgainstOracle:
    """Batched K-direction scan == sum of independently computed single-direction scans."""

    @pytest.mark.parametrize(
        ("directions", "shapes", "n_tokens", "tokens_at"),
        [
            (directions_2d(), [(1, 3, 2)], 0, "end"),
            (directions_3d(8), [(2, 2, 3), (2, 1, 2)], 0, "end"),
            (directions_3d(12), [(2, 2, 2)], 0, "end"),
            (directions_2d(), [(3, 2, 2)], 3, "end"),
            (directions_2d(), [(3, 2, 2)], 3, "start"),
            (["hwt_rev", "wth"], [(2, 2, 1), (2, 1, 1)], 2, "start"),
        ],
    )
    def test_matches_oracle(self, directions, shapes, n_tokens, tokens_at) -> None:
        scan = small_scan(directions, tokens_at)
        g = torch.Generator().manual_seed(1)
        scales = [torch.randn(2, 4, t, h, w, generator=g) for t, h, w in shapes]
        tokens = torch.randn(2, 4, n_tokens, generator=g) if n_tokens else None
        out = scan(scales, tokens)
        exp_scales, exp_tokens = oracle_multi_scan(scan, scales, tokens, tokens_at)
        for got, exp in zip(out.visual, exp_scales, strict=True):
            torch.testing.assert_close(got.double(), exp, rtol=1e-4, atol=1e-5)
        if tokens is None:
            assert out.tokens is None
        else:
            torch.testing.assert_close(out.tokens.double(), exp_tokens, rtol=1e-4, atol=1e-5)

    @pytest.mark.parametrize("backend", [b for b in available_backends() if b != "mamba_ssm"])
    def test_every_cpu_backend(self, backend: str) -> None:
        """The one batched call gives the oracle's result on every scan backend, gradients included."""
        scan = small_scan(directions_3d(4), "end")
        scan.backend = backend
        g = torch.Generator().manual_seed(2)
        x, tokens = torch.randn(1, 4, 2, 2, 3, generator=g), torch.randn(1, 4, 2, generator=g)
        out = scan(x, tokens)
        exp_scales, exp_tokens = oracle_multi_scan(scan, [x], tokens, "end")
        torch.testing.assert_close(out.visual.double(), exp_scales[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.tokens.double(), exp_tokens, rtol=1e-4, atol=1e-5)
        (out.visual.sum() + out.tokens.sum()).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in scan.parameters())

    def test_tokens_only_path_matches_full(self) -> None:
        scan = small_scan(directions_2d(), "end")
        x, tokens = torch.randn(1, 4, 2, 2, 3), torch.randn(1, 4, 2)
        full = scan(x, tokens)
        only = scan(x, tokens, need_visual=False)
        assert only.visual is None
        torch.testing.assert_close(only.tokens, full.tokens)


def test_k1_is_plain_mamba_scan_on_one_order() -> None:
    """One direction = flatten along the order, Mamba's x_proj/dt_proj/S6 recurrence, unflatten."""
    scan = small_scan(["hwt"])
    x = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    B, E, T, H, W = x.shape
    # hwt: sequence index = (h * W + w) * T + t, written directly.
    u = x.permute(0, 1, 3, 4, 2).reshape(B, E, H * W * T).double()
    x_dbl = torch.einsum("ce,bel->bcl", scan.x_proj_weight[0].double(), u)
    dt = torch.einsum("er,brl->bel", scan.dt_projs_weight[0].double(), x_dbl[:, :2])
    y = oracle_scan(
        u, dt, -torch.exp(scan.A_logs.double()), x_dbl[:, 2:5], x_dbl[:, 5:], scan.Ds.double(),
        scan.dt_projs_bias[0].double(),
    )  # fmt: skip
    expected = y.reshape(B, E, H, W, T).permute(0, 1, 4, 2, 3)
    torch.testing.assert_close(scan(x).visual.double(), expected, rtol=1e-4, atol=1e-5)


def test_skip_only_scan_sums_d_over_directions() -> None:
    """With B = C = 0 every direction returns D_k * u in place, so the merge must give (sum_k D_k) * x exactly."""
    scan = MultiDirectionScan(3, d_state=2, dt_rank=1, directions=directions_3d(8), tokens_at="start")
    with torch.no_grad():
        scan.x_proj_weight[:, 1:].zero_()  # rows R.. produce B and C
        scan.Ds.copy_(torch.arange(1, 8 * 3 + 1, dtype=torch.float32))  # D_k[e] = 3k + e + 1
    x, tokens = torch.randn(2, 3, 2, 3, 2), torch.randn(2, 3, 4)
    out = scan(x, tokens)
    d_sum = scan.Ds.view(8, 3).sum(0)  # (E,)
    torch.testing.assert_close(out.visual, d_sum.view(1, 3, 1, 1, 1) * x)
    torch.testing.assert_close(out.tokens, d_sum.view(1, 3, 1) * tokens)


class TestInit:
    """Mamba's initialisation and the optimizer tags."""

    def test_parameters(self) -> None:
        torch.manual_seed(0)
        scan = MultiDirectionScan(64, d_state=5, dt_rank=4, directions=directions_3d(8))
        K, E, N, R = 8, 64, 5, 4
        assert scan.x_proj_weight.shape == (K, R + 2 * N, E)
        assert scan.dt_projs_weight.shape == (K, E, R)
        assert scan.dt_projs_bias.shape == (K, E)
        assert scan.A_logs.shape == (K * E, N) and scan.Ds.shape == (K * E,)
        dt = F.softplus(scan.dt_projs_bias)
        assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
        assert scan.dt_projs_weight.abs().max() <= R**-0.5
        assert scan.dt_projs_weight.std() > 0.5 * R**-0.5 / math.sqrt(3)  # uniform, not constant or zero
        torch.testing.assert_close(-torch.exp(scan.A_logs[7]), -torch.arange(1.0, N + 1))
        torch.testing.assert_close(scan.Ds, torch.ones(K * E))
        assert scan.A_logs._no_weight_decay and scan.Ds._no_weight_decay
        assert not torch.equal(scan.dt_projs_bias[0], scan.dt_projs_bias[1]), "directions must be drawn independently"

    def test_dt_floor(self) -> None:
        scan = MultiDirectionScan(32, dt_rank=2, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-4)
        torch.testing.assert_close(F.softplus(scan.dt_projs_bias), torch.full((4, 32), 1e-4))

    def test_official_tmb_parameter_count(self) -> None:
        """d_model 256, E 512, N 16, R 16, K 8, 1x3x3 conv: 735,232 parameters (the official TMB's 0.735 M)."""
        tmb = MultiScanMixer(256, d_state=16, dt_rank=16, directions=directions_3d(8))
        hand = 256 * 1024 + (512 * 9 + 512) + 8 * 48 * 512 + 8 * 512 * 16 + 8 * 512 + 8 * 512 * 16 + 8 * 512
        hand += 2 * 512 + 512 * 256
        assert sum(p.numel() for p in tmb.parameters()) == hand == 735_232


class TestValidation:
    """Bad arguments raise ValueError naming them."""

    def test_channel_mismatch(self) -> None:
        with pytest.raises(ValueError, match="d_inner=4"):
            small_scan(directions_2d())(torch.zeros(1, 5, 1, 2, 2))

    def test_need_visual_false_without_tokens(self) -> None:
        with pytest.raises(ValueError, match="need_visual=False"):
            small_scan(directions_2d())(torch.zeros(1, 4, 1, 2, 2), need_visual=False)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [({"d_state": 0}, "d_state"), ({"dt_init": "zeros"}, "dt_init"), ({"tokens_at": "mid"}, "tokens_at")],
    )
    def test_constructor(self, kwargs, match) -> None:
        with pytest.raises(ValueError, match=match):
            MultiDirectionScan(4, **kwargs)

    def test_mixer_input_width(self) -> None:
        with pytest.raises(ValueError, match="C=8"):
            MultiScanMixer(8, d_state=2)(torch.zeros(1, 1, 2, 2, 6))


# --- the mixer block -------------------------------------------------------------------------------------------------


class TestMixer:
    """SS2D-v0 block: shapes for every use, gradients, and its composition."""

    @pytest.mark.parametrize(
        ("directions", "d_conv", "shapes"),
        [
            (directions_2d(), 3, [(3, 1, 4, 5)]),  # VSS, frames in the batch
            (directions_3d(8), 3, [(2, 3, 4, 4)]),  # TMB, 1x3x3
            (directions_3d(4), (3, 3, 3), [(1, 3, 2, 2)]),  # 3-D kernel
            (directions_3d(8), 3, [(2, 2, 4, 4), (2, 2, 2, 2), (2, 2, 1, 1)]),  # cross-scale TMB
        ],
    )
    def test_shapes(self, directions, d_conv, shapes) -> None:
        mixer = MultiScanMixer(8, d_state=4, d_conv=d_conv, directions=directions)
        xs = [torch.randn(b, t, h, w, 8) for b, t, h, w in shapes]
        out = mixer(xs[0]) if len(xs) == 1 else mixer(xs)
        outs = [out] if len(xs) == 1 else out
        assert [tuple(o.shape) for o in outs] == [tuple(x.shape) for x in xs]
        assert all(torch.isfinite(o).all() for o in outs)

    def test_tokens_prepended_condition_every_position(self) -> None:
        """A2V-style: changing the prepended tokens changes the visual output everywhere (they lead every sequence)."""
        torch.manual_seed(0)
        mixer = MultiScanMixer(8, d_state=4, directions=directions_2d(), tokens_at="start")
        x = torch.randn(1, 2, 3, 3, 8)
        a = torch.randn(1, 16, 2)
        y1, y2 = mixer(x, tokens=a), mixer(x, tokens=a + 1.0)
        assert y1.shape == x.shape
        assert ((y1 - y2).abs().amax(dim=-1) > 0).all()

    def test_tokens_appended_affect_no_visual_position(self) -> None:
        """V2A-style appended tokens come after every visual element in all 4 directions: the maps are unchanged."""
        torch.manual_seed(0)
        mixer = MultiScanMixer(8, d_state=4, directions=directions_2d(), tokens_at="end")
        x = torch.randn(1, 2, 3, 3, 8)
        torch.testing.assert_close(mixer(x, tokens=torch.randn(1, 16, 2)), mixer(x), rtol=0, atol=0)

    def test_every_parameter_gets_gradient(self) -> None:
        torch.manual_seed(0)
        mixer = MultiScanMixer(8, d_state=4, directions=directions_3d(8), tokens_at="start")
        xs = [torch.randn(2, 2, 3, 3, 8, requires_grad=True), torch.randn(2, 2, 1, 2, 8, requires_grad=True)]
        tokens = torch.randn(2, 16, 2, requires_grad=True)
        sum(o.square().sum() for o in mixer(xs, tokens=tokens)).backward()
        for name, p in mixer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
        assert all(x.grad.abs().sum() > 0 for x in xs) and tokens.grad.abs().sum() > 0

    def test_scan_token_gradients(self) -> None:
        """V2A reads only the token outputs: gradients reach the maps, the tokens and every scan parameter."""
        scan = small_scan(directions_2d(), "end")
        x = torch.randn(1, 4, 2, 2, 2, requires_grad=True)
        tokens = torch.randn(1, 4, 2, requires_grad=True)
        scan(x, tokens, need_visual=False).tokens.square().sum().backward()
        assert x.grad.abs().sum() > 0 and tokens.grad.abs().sum() > 0
        for name, p in scan.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"

    def test_composition(self) -> None:
        """Mixer == in_proj, conv + SiLU, scan, LayerNorm, x SiLU(z), out_proj, written out step by step."""
        torch.manual_seed(0)
        mixer = MultiScanMixer(8, d_state=4, directions=directions_3d(4))
        x = torch.randn(2, 2, 3, 3, 8)
        u, z = (x @ mixer.in_proj.weight.T).chunk(2, dim=-1)
        u = u.permute(0, 4, 1, 2, 3)  # (B, E, T, H, W)
        # per-frame 3x3 depthwise conv written as a Conv3d with a (1, 3, 3) kernel
        u = F.silu(F.conv3d(u, mixer.conv.weight.unsqueeze(2), mixer.conv.bias, padding=(0, 1, 1), groups=16))
        y = mixer.scan(u).visual.permute(0, 2, 3, 4, 1)
        expected = F.layer_norm(y, (16,), mixer.out_norm.weight, mixer.out_norm.bias) * F.silu(z)
        expected = expected @ mixer.out_proj.weight.T
        torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-6)


# --- shared layers ----------------------------------------------------------------------------------------------------


class TestDropPath:
    """Stochastic depth: per-sample all-or-nothing, scaled by 1/keep."""

    def test_identity_in_eval_and_at_zero(self) -> None:
        x = torch.randn(4, 3, 2)
        dp = DropPath(0.5).eval()
        assert dp(x) is x
        assert drop_path(x, 0.0, training=True) is x

    def test_training_drops_whole_samples(self) -> None:
        torch.manual_seed(0)
        x = torch.randn(400, 3, 2)
        y = DropPath(0.25).train()(x)
        kept = (y != 0).flatten(1).any(1)
        torch.testing.assert_close(y[kept], x[kept] / 0.75)
        assert (y[~kept] == 0).all()
        assert 0.15 < (~kept).float().mean() < 0.35, "about a quarter of the samples should be dropped"

    def test_drop_all_and_bad_prob(self) -> None:
        assert (drop_path(torch.ones(5, 2), 1.0, training=True) == 0).all()
        with pytest.raises(ValueError, match="drop_prob"):
            DropPath(1.5)
        with pytest.raises(ValueError, match="per"):
            DropPath(0.1, per="pixel")

    @pytest.mark.parametrize("per", ["clip", "frame"])
    def test_per_clip_or_per_frame(self, per: str) -> None:
        """(B, T, ...) input: per clip, a clip's frames are dropped together; per frame, each frame on its own
        (with p = 1/2 and 5 frames, a clip comes out all-kept or all-dropped with probability 1/16)."""
        torch.manual_seed(0)
        x = torch.rand(200, 5, 3, 2) + 1.0  # no zeros of its own
        y = DropPath(0.5, per=per).train()(x)
        dropped = (y == 0).flatten(2).all(-1)  # [B, T]
        assert ((y == 0) | (y == 2 * x)).all(), "each element is dropped or scaled by 1/keep"
        assert (dropped == (y == 0).flatten(2).any(-1)).all(), "a frame is dropped as a whole"
        mixed = (dropped.any(1) & ~dropped.all(1)).float().mean()
        if per == "clip":
            assert mixed == 0
        else:
            assert 0.8 < mixed < 0.97  # expected 1 - 2 / 2**5 = 0.9375
        assert 0.4 < dropped.float().mean() < 0.6


class TestDWConvTHW:
    """Per-frame 2-D kernel vs true 3-D kernel."""

    def test_int_kernel_is_per_frame(self) -> None:
        torch.manual_seed(0)
        conv = DWConvTHW(4, 3)
        x = torch.randn(2, 4, 3, 5, 5)
        frame1 = F.conv2d(x[:, :, 1], conv.weight, conv.bias, padding=1, groups=4)
        torch.testing.assert_close(conv(x)[:, :, 1], frame1)

    def test_3d_kernel_mixes_frames(self) -> None:
        torch.manual_seed(0)
        conv = DWConvTHW(2, (3, 1, 1))
        x = torch.zeros(1, 2, 3, 2, 2)
        x[:, :, 0] = 1.0
        y = conv(x)
        assert conv.weight.shape == (2, 1, 3, 1, 1)
        # frame 1 sees frame 0 through the kernel's first temporal tap
        torch.testing.assert_close(y[0, :, 1, 0, 0], conv.weight[:, 0, 0, 0, 0] + conv.bias)

    @pytest.mark.parametrize("kernel", [2, (1, 2, 3), (3, 3), 0])
    def test_rejects_bad_kernel(self, kernel) -> None:
        with pytest.raises(ValueError, match="kernel_size"):
            DWConvTHW(4, kernel)


def test_training_after_an_evaluation_of_the_same_shape() -> None:
    """Index maps first built under inference mode (an evaluation) serve a later training step of that shape: its
    gathers save them for the backward, which fails for inference tensors."""
    scan = small_scan(directions_3d())
    x = torch.randn(1, 4, 2, 2, 3)
    with torch.inference_mode():
        scan(x)
    x.requires_grad_(True)
    scan(x).visual.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
