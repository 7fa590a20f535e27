"""AVS-Mamba blocks: shapes, gradients, and what each block may or may not mix (frames, scales, modalities)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avs_mamba.modules.cip import ContextIntegrationPyramid
from avs_mamba.modules.fusion import AudioToVision, VisionToAudio
from avs_mamba.modules.head import MaskHead
from avs_mamba.modules.mad import ModalityAggregationDecoder
from avs_mamba.modules.mte import (
    CrossScaleVSS,
    MixFFN,
    MTELayer,
    MultiScaleTemporalEncoder,
    TemporalMambaBlock,
    conv_kernel,
)

C = 16  # d_model at test size
SSM = dict(d_state=4, dt_rank=2, expand=2, backend="torch")  # no JIT: steady test times
B, T = 2, 3
SIZES = [(4, 4), (2, 2), (1, 1)]  # res3, res4, res5 of a 32 px frame


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def scales(sizes=SIZES, b=B, t=T):
    return [torch.randn(b, t, h, w, C) for h, w in sizes]


def assert_all_grads(module: nn.Module, allow_zero: tuple[str, ...] = ()) -> None:
    """Every parameter got a gradient and (outside ``allow_zero``) a non-zero one."""
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        if not any(name.startswith(a) for a in allow_zero):
            assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def perturb(x: torch.Tensor, index) -> torch.Tensor:
    """x with random noise added at ``index`` (random, not constant: a LayerNorm removes a constant shift)."""
    y = x.clone()
    y[index] += torch.randn_like(y[index])
    return y


class TestCrossScaleVSS:
    def test_shapes_grads_and_mixing(self):
        """Scales exchange information within a frame, never across frames."""
        vss = CrossScaleVSS(C, **SSM)
        xs = scales()
        ys = vss(xs)
        assert [y.shape for y in ys] == [x.shape for x in xs]
        sum(y.sum() for y in ys).backward()
        assert_all_grads(vss)
        with torch.no_grad():
            moved = vss([xs[0], xs[1], perturb(xs[2], (slice(None), 1))])  # res5 of frame 1 changes
            ys = vss(xs)
        assert not torch.allclose(moved[0][:, 1], ys[0][:, 1]), "res3 of frame 1 must see res5 of frame 1"
        assert torch.equal(moved[0][:, 0], ys[0][:, 0]), "the VSS must not mix frames"


class TestMixFFN:
    def test_shape_grad_and_locality(self):
        """Per frame, and a 3x3 depthwise conv: a far pixel does not move a pixel's output."""
        ffn = MixFFN(C, ffn_ratio=2)
        x = torch.randn(B, T, 6, 6, C)
        y = ffn(x)
        assert y.shape == x.shape
        y.sum().backward()
        assert_all_grads(ffn)
        with torch.no_grad():
            moved = ffn(perturb(x, (slice(None), 1, 5, 5)))
            y = ffn(x)
        assert torch.equal(moved[:, 1, 0, 0], y[:, 1, 0, 0])
        assert torch.equal(moved[:, 0], y[:, 0])
        assert not torch.allclose(moved[:, 1, 4, 4], y[:, 1, 4, 4])


class TestTMB:
    @pytest.mark.parametrize("k", [2, 4, 6, 8, 10, 12])
    def test_directions_shapes_grads(self, k):
        tmb = TemporalMambaBlock(C, k=k, **SSM)
        assert tmb.mixer.scan.k == k
        xs = scales()
        ys = tmb(xs)
        assert [y.shape for y in ys] == [x.shape for x in xs]
        sum(y.sum() for y in ys).backward()
        assert_all_grads(tmb)

    def test_mixes_frames_and_scales(self):
        """The 3-D scan (with reversed directions) carries a later frame and another scale into frame 0 of res3."""
        tmb = TemporalMambaBlock(C, k=4, **SSM)
        xs = scales()
        with torch.no_grad():
            ys = tmb(xs)
            later = tmb([perturb(xs[0], (slice(None), 2)), xs[1], xs[2]])
            coarse = tmb([xs[0], xs[1], perturb(xs[2], (slice(None), 0))])
        assert not torch.allclose(later[0][:, 0], ys[0][:, 0])
        assert not torch.allclose(coarse[0][:, 0], ys[0][:, 0])

    def test_single_scale_and_kernel(self):
        """One map in gives one map out; (1, 3, 3) is the per-frame 3x3 conv, (3, 3, 3) a true Conv3d."""
        assert conv_kernel((1, 3, 3)) == 3
        assert conv_kernel((3, 3, 3)) == (3, 3, 3)
        tmb = TemporalMambaBlock(C, k=2, kernel=(3, 3, 3), **SSM)
        assert tuple(tmb.mixer.conv.weight.shape[-3:]) == (3, 3, 3)
        x = torch.randn(B, T, 4, 4, C)
        assert tmb(x).shape == x.shape


class TestMTE:
    @pytest.mark.parametrize(("spatial", "tmb"), [(True, True), (True, False), (False, True)])
    def test_layer_switches(self, spatial, tmb):
        mte = MultiScaleTemporalEncoder(2, d_model=C, ffn_ratio=2, k=4, spatial=spatial, tmb=tmb, **SSM)
        assert (mte.layers[0].vss is not None) == spatial and (mte.layers[0].tmb is not None) == tmb
        xs = scales()
        ys = mte(xs)
        assert [y.shape for y in ys] == [x.shape for x in xs]
        sum(y.sum() for y in ys).backward()
        assert_all_grads(mte)

    def test_spatial_only_does_not_mix_frames(self):
        mte = MultiScaleTemporalEncoder(1, d_model=C, ffn_ratio=2, spatial=True, tmb=False, **SSM)
        xs = scales()
        with torch.no_grad():
            ys = mte(xs)
            moved = mte([perturb(xs[0], (slice(None), 2)), xs[1], xs[2]])
        assert torch.equal(moved[0][:, 0], ys[0][:, 0])

    def test_empty_layer_raises(self):
        with pytest.raises(ValueError, match="spatial branch"):
            MTELayer(C, spatial=False, tmb=False, **SSM)


class TestV2A:
    @pytest.mark.parametrize("level", ["frame", "temporal"])
    def test_shapes_grads(self, level):
        v2a = VisionToAudio(C, level, **SSM)
        vis, q = torch.randn(B, T, 4, 4, C), torch.randn(B, T, C)
        out = v2a(vis, q)
        assert out.shape == q.shape
        out.sum().backward()
        # Frame-level: each causal conv runs over a single token, so only its last tap is used (as officially).
        assert_all_grads(v2a, allow_zero=())
        if level == "frame":
            assert v2a.conv_audio.weight.grad[:, :-1].abs().sum() == 0

    def test_frame_level_stays_in_its_frame(self):
        v2a = VisionToAudio(C, "frame", **SSM)
        vis, q = torch.randn(B, T, 4, 4, C), torch.randn(B, T, C)
        with torch.no_grad():
            out = v2a(vis, q)
            moved_vis = v2a(perturb(vis, (slice(None), 2)), q)
            moved_q = v2a(vis, perturb(q, (slice(None), 2)))
        assert torch.equal(moved_vis[:, :2], out[:, :2]) and not torch.allclose(moved_vis[:, 2], out[:, 2])
        assert torch.equal(moved_q[:, :2], out[:, :2])

    def test_temporal_level_sees_the_clip(self):
        """Frame 0's query sees a later frame's pixels and, through the reversed token block, a later audio token."""
        v2a = VisionToAudio(C, "temporal", **SSM)
        vis, q = torch.randn(B, T, 4, 4, C), torch.randn(B, T, C)
        with torch.no_grad():
            out = v2a(vis, q)
            moved_vis = v2a(perturb(vis, (slice(None), 2)), q)
            moved_q = v2a(vis, perturb(q, (slice(None), 2)))
        assert not torch.allclose(moved_vis[:, 0], out[:, 0])
        assert not torch.allclose(moved_q[:, 0], out[:, 0])

    def test_bad_level(self):
        with pytest.raises(ValueError, match="frame"):
            VisionToAudio(C, "clip", **SSM)


class TestA2V:
    def test_shapes_grads_and_audio_dependence(self):
        a2v = AudioToVision(C, **SSM)
        vis, audio = torch.randn(B, T, 4, 4, C), torch.randn(B, T, C)
        out = a2v(vis, audio)
        assert out.shape == vis.shape
        out.sum().backward()
        assert_all_grads(a2v)
        with torch.no_grad():
            moved = a2v(vis, perturb(audio, (slice(None), 2)))
            out = a2v(vis, audio)
        # Audio tokens are prepended: even frame 0's pixels see the last audio token.
        assert not torch.allclose(moved[:, 0], out[:, 0])


class TestMAD:
    @pytest.mark.parametrize(("frame", "temporal"), [(True, True), (True, False), (False, True)])
    def test_switches(self, frame, temporal):
        def factory(level):
            return lambda: VisionToAudio(C, level, **SSM)

        mad = ModalityAggregationDecoder(
            2, 3, factory("frame") if frame else None, factory("temporal") if temporal else None
        )
        n_blocks = sum(len(m) for m in (mad.frame_v2a, mad.temporal_v2a) if m is not None)
        assert n_blocks == 6 * (frame + temporal)
        q = torch.randn(B, T, C)
        outs = mad(scales(), q)
        assert len(outs) == 2 and all(o.shape == q.shape for o in outs)
        assert not torch.allclose(outs[0], outs[1])
        (outs[0].sum() + outs[1].sum()).backward()
        assert_all_grads(mad)

    def test_needs_a_level(self):
        with pytest.raises(ValueError, match="mad.enabled"):
            ModalityAggregationDecoder(2, 3, None, None)


FPN_SIZES = [(8, 8), (4, 4), (2, 2), (1, 1)]


def fpn_inputs():
    return [torch.randn(B * T, C, h, w) for h, w in FPN_SIZES]


class TestCIP:
    @pytest.mark.parametrize(("tmb", "a2v"), [(True, True), (True, False), (False, True)])
    def test_shapes_grads(self, tmb, a2v):
        cip = ContextIntegrationPyramid(
            C,
            tmb=(lambda: TemporalMambaBlock(C, k=2, **SSM)) if tmb else None,
            a2v=(lambda: AudioToVision(C, **SSM)) if a2v else None,
        )
        out = cip(fpn_inputs(), torch.randn(B, T, C), T)
        assert out.shape == (B * T, C, 8, 8)
        out.sum().backward()
        assert_all_grads(cip)

    def test_res2_shares_res3_tmb(self):
        """Sharing builds three TMBs, and res2 runs with the res3 one (so all three get gradients)."""
        shared = ContextIntegrationPyramid(C, tmb=lambda: TemporalMambaBlock(C, k=2, **SSM), res2_shares_res3_tmb=True)
        own = ContextIntegrationPyramid(C, tmb=lambda: TemporalMambaBlock(C, k=2, **SSM))
        assert len(shared.tmbs) == 3 and len(own.tmbs) == 4
        assert shared._tmb(0) is shared._tmb(1) is shared.tmbs[0]
        shared(fpn_inputs(), None, T).sum().backward()
        assert_all_grads(shared)

    def test_plain_fpn_matches_hand_written(self):
        """Without TMB/A2V the CIP is a plain FPN: checked against the functional composition of its own convs."""
        fpn = ContextIntegrationPyramid(C, upsample="nearest")
        assert fpn.tmbs is None and fpn.a2vs is None
        feats = fpn_inputs()
        y = None
        for level in (3, 2, 1, 0):
            cur = F.conv2d(feats[level], fpn.lateral_convs[level].weight)
            if y is not None:
                cur = cur + F.interpolate(y, size=cur.shape[-2:], mode="nearest")
            y = F.relu(F.conv2d(cur, fpn.output_convs[level].weight, padding=1))
        expected = F.conv2d(y, fpn.mask_features.weight, fpn.mask_features.bias, padding=1)
        with torch.no_grad():
            assert torch.allclose(fpn(feats, None, T), expected, atol=1e-5)
        fpn(feats, None, T).sum().backward()
        assert_all_grads(fpn)

    def test_upsample_modes_differ(self):
        nearest = ContextIntegrationPyramid(C, upsample="nearest")
        bilinear = ContextIntegrationPyramid(C, upsample="bilinear")
        bilinear.load_state_dict(nearest.state_dict())
        feats = fpn_inputs()
        with torch.no_grad():
            assert not torch.allclose(nearest(feats, None, T), bilinear(feats, None, T))
        with pytest.raises(ValueError, match="upsample"):
            ContextIntegrationPyramid(C, upsample="bicubic")


def _dropped_frames(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the frames whose residual branch contributed nothing (out == x exactly)."""
    return ((out - x) == 0).flatten(2).all(-1)


class TestDropPathGranularity:
    """Stochastic depth as the official code draws it: per frame in VSS, MixFFN, V2A and A2V (whose official tensors
    are (B*T, ...)), per clip in the TMBs ((B, T, ...)). With p = 1/2, B = 16 and T = 4, per-frame drawing leaves a
    clip with both dropped and kept frames with probability 7/8 each, per-clip drawing never."""

    Bd, Td = 16, 4

    def _maps(self, sizes=((3, 3),)):
        return [torch.randn(self.Bd, self.Td, h, w, C) for h, w in sizes]

    def _check(self, dropped: torch.Tensor, per: str) -> None:
        mixed = dropped.any(1) & ~dropped.all(1)
        assert dropped.any() and not dropped.all()
        if per == "clip":
            assert not mixed.any(), "a clip's frames must be dropped together"
        else:
            assert mixed.sum() >= 8, "frames of a clip must be dropped independently"

    def test_vss_per_frame(self):
        vss = CrossScaleVSS(C, drop_path=0.5, **SSM).train()
        xs = self._maps(SIZES)
        for x, y in zip(xs, vss(xs), strict=True):
            self._check(_dropped_frames(y, x), "frame")

    def test_mixffn_per_frame(self):
        ffn = MixFFN(C, 2, drop_path=0.5).train()
        (x,) = self._maps()
        self._check(_dropped_frames(ffn(x), x), "frame")

    @pytest.mark.parametrize("level", ["frame", "temporal"])
    def test_v2a_per_frame(self, level):
        v2a = VisionToAudio(C, level, drop_path=0.5, **SSM).train()
        q = torch.randn(self.Bd, self.Td, C)
        self._check(_dropped_frames(v2a(self._maps()[0], q), q), "frame")

    def test_a2v_per_frame(self):
        a2v = AudioToVision(C, drop_path=0.5, **SSM).train()
        (x,) = self._maps()
        self._check(_dropped_frames(a2v(x, torch.randn(self.Bd, self.Td, C)), x), "frame")

    def test_tmb_per_clip(self):
        tmb = TemporalMambaBlock(C, k=2, drop_path=0.5, **SSM).train()
        xs = self._maps(SIZES)
        for x, y in zip(xs, tmb(xs), strict=True):
            self._check(_dropped_frames(y, x), "clip")


class TestHead:
    def test_shape_grad_and_query_dot_product(self):
        """x4 upsampling; the query enters only through its dot product with the mask features."""
        head = MaskHead(C, num_classes=3, hidden_dim=8, head_chans=(8, 4))
        feats, q = torch.randn(B * T, C, 5, 5), torch.randn(B * T, 1, C)
        out = head(feats, q)
        assert out.shape == (B * T, 3, 20, 20)
        out.sum().backward()
        assert_all_grads(head)
        # A query orthogonal to every pixel's feature gives the same output as the zero query.
        feats = torch.zeros(1, C, 2, 2)
        feats[:, 0] = torch.randn(2, 2)
        q_orth = torch.zeros(1, 1, C)
        q_orth[..., 1:] = torch.randn(C - 1)
        with torch.no_grad():
            assert torch.allclose(head(feats, q_orth), head(feats, torch.zeros(1, 1, C)))
            assert not torch.allclose(head(feats, q_orth + 1.0), head(feats, torch.zeros(1, 1, C)))
