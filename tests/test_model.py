"""AVS-Mamba end to end: every ablation switch, AVSS flags, audio control, engine hooks, sizes and ablation YAMLs."""

import itertools
from pathlib import Path

import pytest
import torch

from avs_mamba.config import load_config
from avs_mamba.losses import segmentation_loss
from avs_mamba.model import AVSMamba, AVSMambaConfig
from avs_mamba.modules.output import AVSOutput
from avs_mamba.registry import create_model, list_models

ABLATIONS = Path(__file__).resolve().parents[1] / "ablations"
# Test size: smaller than the smoke preset (tiny PVT-v2, d_state 4) to keep the file fast.
TINY = dict(
    d_model=32,
    d_state=4,
    dt_rank=2,
    backbone="pvt_v2_tiny",
    audio_encoder="logmel_cnn",
    head_hidden=16,
    head_chans=(8, 4),
    drop_path_rate=0.0,
    mte={"num_layers": 1, "ffn_ratio": 2},
    mad={"num_layers": 2},
    # The pure-PyTorch scan: no JIT compilation, so every test costs the same (the backends have their own tests).
    scan={"backend": "torch"},
)
B, T, S = 2, 2, 64  # 64 px: res5 is 2x2, so its GroupNorm (one channel per group at C = 32) is not degenerate


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def build(**overrides) -> AVSMamba:
    """The test-size model with ``overrides``; nested sections (mte, mad, scan) merge key by key."""
    options = {**TINY, **overrides}
    for section in ("mte", "mad", "scan"):
        options[section] = {**TINY[section], **overrides.get(section, {})}
    return create_model("avs_mamba", **options)


def inputs(b=B, t=T, size=S):
    return torch.randn(b, t, 3, size, size), torch.randn(b, t, 1, 96, 64)


def assert_all_grads(model: torch.nn.Module) -> None:
    """Every trainable parameter got a gradient, and outside the backbone a non-zero one.

    (At test sizes the first PVT stage's spatial-reduction attention has a single key, so its query weights get an
    exact zero gradient: a property of the tiny input, not of the model.)
    """
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            if not name.startswith("backbone."):
                assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_registered():
    assert "avs_mamba" in list_models()
    assert isinstance(build(), AVSMamba)


# no_tmb x frame_only_v2a x no_cip: all 2^3 combinations of the three named ablations.
@pytest.mark.parametrize(("no_tmb", "frame_only", "no_cip"), list(itertools.product([False, True], repeat=3)))
def test_named_ablation_combinations(no_tmb, frame_only, no_cip):
    model = build(
        mte={"tmb": not no_tmb},
        cip={"tmb": not no_tmb, "enabled": not no_cip},
        mad={"temporal_v2a": not frame_only},
    )
    assert (model.mte.layers[0].tmb is None) == no_tmb
    assert (model.mad.temporal_v2a is None) == frame_only
    assert (model.cip.tmbs is None) == (no_tmb or no_cip) and (model.cip.a2vs is None) == no_cip
    frames, audio = inputs(b=1)
    out = model(frames, audio)
    assert isinstance(out, AVSOutput)
    assert out.logits.shape == (1, T, 1, S, S) and len(out.aux) == 1 and out.aux[0].shape == out.logits.shape
    assert torch.isfinite(out.logits).all()
    (out.logits.mean() + out.aux[0].mean()).backward()
    assert_all_grads(model)


@pytest.mark.parametrize(
    "overrides",
    [
        {"mte": {"enabled": False}},
        {"mte": {"spatial": False}},
        {"mad": {"frame_v2a": False}},
        {"cip": {"a2v": False}},
        {"cip": {"res2_shares_res3_tmb": False, "upsample": "bilinear"}},
        {"tmb_kernel": (3, 3, 3)},
        {"input_proj_init": "xavier"},
    ],
    ids=["no_mte", "mte_tmb_only", "temporal_only_v2a", "cip_tmb_only", "untied_bilinear_cip", "tmb_conv3d", "xavier"],
)
def test_other_switches(overrides):
    model = build(**overrides)
    out = model(*inputs(b=1))
    assert out.logits.shape == (1, T, 1, S, S)
    out.logits.mean().backward()
    assert_all_grads(model)


def test_cip_res2_runs_the_res3_tmb_by_default():
    """Official tying: the CIP builds three TMBs; the res3 one runs twice per forward, on the stride-8 map and then on
    the stride-4 (res2) map; untied, each of four TMBs runs once on its own level."""

    def calls(model):
        seen = {i: [] for i in range(len(model.cip.tmbs))}
        for i, tmb in enumerate(model.cip.tmbs):
            tmb.register_forward_hook(lambda m, args, out, i=i: seen[i].append(tuple(args[0].shape[2:4])))
        with torch.no_grad():
            model(*inputs(b=1))
        return seen

    assert calls(build()) == {0: [(S // 8, S // 8), (S // 4, S // 4)], 1: [(S // 16, S // 16)], 2: [(S // 32,) * 2]}
    untied = calls(build(cip={"res2_shares_res3_tmb": False}))
    assert untied == {0: [(S // 4,) * 2], 1: [(S // 8,) * 2], 2: [(S // 16,) * 2], 3: [(S // 32,) * 2]}


def test_input_proj_init():
    """Official: nn.Conv2d's default init (kaiming-uniform a = sqrt(5): weights and biases in +-1/sqrt(fan_in));
    "xavier": weights in +-sqrt(6 / (fan_in + fan_out)), zero bias. pvt_v2_tiny's res2 has 16 channels, d_model 32:
    bounds 0.25 and 0.354 (512 weights: the Xavier draw exceeds 0.25 somewhere with probability 1 - 0.71**512)."""
    conv = build().input_proj[0][0]
    assert conv.weight.shape == (32, 16, 1, 1)
    assert conv.weight.abs().max() <= 0.25 and conv.bias.abs().max() <= 0.25 and (conv.bias != 0).all()
    xavier = build(input_proj_init="xavier").input_proj[0][0]
    assert 0.25 < xavier.weight.abs().max() <= (6 / 48) ** 0.5 and (xavier.bias == 0).all()


def test_no_mad_repeats_the_audio_query():
    """With the MAD off both decoder outputs are the audio query, so the two predictions coincide."""
    model = build(mad={"enabled": False}).eval()
    assert model.mad is None
    with torch.no_grad():
        out = model(*inputs())
    assert torch.equal(out.logits, out.aux[0])


@pytest.mark.parametrize("k", [2, 4, 6, 10, 12])
def test_scan_k(k):
    """scan.k sets the directions of every TMB (MTE and CIP); V2A/A2V keep 4."""
    model = build(scan={"k": k})
    assert model.mte.layers[0].tmb.mixer.scan.k == k
    assert all(t.mixer.scan.k == k for t in model.cip.tmbs)
    assert model.cip.a2vs[0].mixer.scan.k == 4 and model.mad.frame_v2a[0].scan.k == 4
    with torch.no_grad():
        assert model.eval()(*inputs(b=1)).logits.shape == (1, T, 1, S, S)


@pytest.mark.parametrize("enabled", [False, True])
def test_audio_control(enabled):
    """audio.enabled=False: the output does not depend on the audio; True: it does."""
    model = build(audio={"enabled": enabled}).eval()
    frames, audio = inputs()
    with torch.no_grad():
        a = model(frames, audio).logits
        b = model(frames, torch.randn_like(audio)).logits
    assert torch.equal(a, b) != enabled


class TestAVSS:
    def test_k71_padded_frames(self):
        """K=71 with flags: padded frames give zero logits, ignore their pixel content and get no loss."""
        t = 4
        model = build(num_classes=71).eval()
        frames, audio = inputs(t=t)
        flags = torch.tensor([[True, True, False, False], [True, True, True, True]])
        frames[~flags] = 0.0
        out = model(frames, audio, flags)
        assert out.logits.shape == (B, t, 71, S, S)
        assert out.logits[~flags].abs().sum() == 0 and out.aux[0][~flags].abs().sum() == 0
        assert out.logits[flags].abs().sum() > 0
        with torch.no_grad():
            moved = frames.clone()
            moved[~flags] = torch.randn_like(moved[~flags])
            assert torch.equal(model(moved, audio, flags).logits, out.logits)
        target = torch.randint(0, 71, (B, t, S, S))
        loss = segmentation_loss(out, target, flags, weights={"ce": 1.0})
        target[~flags] = 0  # labels of padded frames are not read
        assert segmentation_loss(out, target, flags, weights={"ce": 1.0}).parts == loss.parts

    def test_training_grads_with_flags(self):
        model = build(num_classes=71)
        flags = torch.tensor([[True, False], [True, True]])
        out = model(*inputs(), flags)
        segmentation_loss(out, torch.randint(0, 71, (B, T, S, S)), flags, weights={"ce": 1.0}).total.backward()
        assert_all_grads(model)

    def test_bad_flags_shape(self):
        with pytest.raises(ValueError, match="frame_flags"):
            build()(*inputs(), torch.ones(B, T + 1, dtype=torch.bool))


def test_output_at_input_resolution_for_odd_sizes():
    frames, audio = inputs(b=1, size=72)
    with torch.no_grad():
        assert build().eval()(frames, audio).logits.shape == (1, T, 1, 72, 72)


def test_backbone_freezing_hooks():
    model = build()
    n_backbone = sum(p.numel() for p in model.backbone_parameters())
    assert n_backbone == sum(p.numel() for p in model.backbone.parameters()) > 0
    model.set_backbone_trainable(False)
    assert not any(p.requires_grad for p in model.backbone_parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.set_backbone_trainable(True)
    assert all(p.requires_grad for p in model.backbone_parameters())


@pytest.fixture(scope="module")
def paper():
    """The paper-size model (defaults) on the meta device: shapes only, no memory (PVT-v2-B5 + VGGish ~150 M)."""
    with torch.device("meta"):
        return AVSMamba(AVSMambaConfig())


class TestPaperSize:
    def test_vggish_always_frozen(self, paper):
        paper.set_backbone_trainable(True)
        assert not any(p.requires_grad for p in paper.audio_encoder.parameters())
        paper.train()
        assert not paper.audio_encoder.training and paper.head.training

    def test_non_backbone_parameter_counts(self, paper):
        """Per component against analytic counts of the official modules (SitongGong/AVS-Mamba@91c4fc3a), rounded to
        0.01 M; the official CIP count (8.96 M) includes the fourth TMB it builds but never runs, which the default
        (tied) model does not build: one single-scale TMB is 735,232 + 512 (its LayerNorm) parameters."""
        counts = paper.parameter_counts()
        tmb = 735_232 + 512
        reference = {"mte": 3.68e6, "mad": 8.42e6, "cip": 8.96e6, "input_proj": 0.27e6, "audio_proj": 0.03e6}
        reference["head"] = 5.06e6
        for name, expected in reference.items():
            assert counts[name] + (tmb if name == "cip" else 0) == pytest.approx(expected, abs=0.005e6), name
        # Exact values of this implementation (d_model 256, d_state 16, dt_rank 16, expand 2, K = 8).
        assert counts["mte"] == 2 * (567_296 + 512 + 535_808 + 512 + 735_232 + 512)
        assert counts["mad"] == 12 * 701_952
        total = sum(v for k, v in counts.items() if k not in ("backbone", "audio_encoder"))
        assert total + tmb == pytest.approx(26.4e6, rel=0.005)
        with torch.device("meta"):
            untied = AVSMamba(AVSMambaConfig(cip={"res2_shares_res3_tmb": False}))
        assert untied.parameter_counts()["cip"] == counts["cip"] + tmb

    def test_resnet50_and_shared_res2_tmb(self):
        """ResNet-50 input projections (256..2048 channels) give ~27.1 M in all; sharing drops one CIP TMB."""
        with torch.device("meta"):
            model = AVSMamba(AVSMambaConfig(backbone="resnet50", cip={"res2_shares_res3_tmb": True}))
        counts = model.parameter_counts()
        assert counts["input_proj"] == (256 + 512 + 1024 + 2048) * 256 + 4 * 256 + 4 * 2 * 256
        assert counts["cip"] == 8_962_304 - (735_232 + 512)
        total = sum(v for k, v in counts.items() if k not in ("backbone", "audio_encoder"))
        assert total + 735_232 + 512 == pytest.approx(27.1e6, abs=0.05e6)


class TestConfig:
    @pytest.mark.parametrize(
        ("options", "match"),
        [
            ({"cip": {"tmb": False, "a2v": False}}, "cip.tmb or cip.a2v"),
            ({"mad": {"frame_v2a": False, "temporal_v2a": False}}, "mad.frame_v2a"),
            ({"mte": {"spatial": False, "tmb": False}}, "mte.spatial"),
            ({"scan": {"k": 5}}, "scan.k"),
            ({"backbone": "pvt_v3"}, "unknown backbone"),
            ({"d_model": 48}, "multiple of 32"),
            ({"mte": {"tmbb": False}}, "tmbb"),
        ],
    )
    def test_invalid(self, options, match):
        with pytest.raises(ValueError, match=match):
            create_model("avs_mamba", **options)

    def test_backbone_drop_path_rate(self, paper):
        """Paper default: PVT-v2's official 0.1 (its last block drops with 0.1); smoke: none; ResNet-50 has none."""
        assert AVSMambaConfig().backbone_drop_path_rate == 0.1
        assert paper.backbone.block4[-1].drop_path.drop_prob == pytest.approx(0.1)
        for size, rate in (("paper", 0.1), ("smoke", 0.0)):
            assert load_config(ABLATIONS / "full.yaml", size=size).flatten()["model.backbone_drop_path_rate"] == rate
        assert AVSMambaConfig(backbone="resnet50").backbone_drop_path_rate == 0.0
        with pytest.raises(ValueError, match="has no stochastic depth"):
            AVSMambaConfig(backbone="resnet50", backbone_drop_path_rate=0.1)
        with torch.device("meta"):
            model = AVSMamba(AVSMambaConfig(backbone_drop_path_rate=0.3))
        assert model.backbone.block4[-1].drop_path.drop_prob == pytest.approx(0.3)


class TestAblationYamls:
    EXPECTED = {
        "full": {},
        "no_tmb": {"model.mte.tmb": False, "model.cip.tmb": False},
        "frame_only_v2a": {"model.mad.temporal_v2a": False},
        "temporal_only_v2a": {"model.mad.frame_v2a": False},
        "no_cip": {"model.cip.enabled": False},
        "no_mad": {"model.mad.enabled": False},
        "no_mte": {"model.mte.enabled": False},
        "no_audio": {"model.audio.enabled": False},
        "scan_k2": {"model.scan.k": 2},
        "scan_k4": {"model.scan.k": 4},
        "scan_k6": {"model.scan.k": 6},
    }

    def test_every_file_is_covered(self):
        assert sorted(p.stem for p in ABLATIONS.glob("*.yaml")) == sorted(self.EXPECTED)

    @pytest.mark.parametrize("variant", sorted(EXPECTED))
    def test_variant_is_a_delta_on_full(self, variant):
        """Each variant differs from full exactly in its switches (plus its name)."""
        full = load_config(ABLATIONS / "full.yaml", size="smoke").flatten()
        flat = load_config(ABLATIONS / f"{variant}.yaml", size="smoke").flatten()
        diff = {k: v for k, v in flat.items() if full.get(k) != v and k not in ("name", "variant")}
        assert diff == self.EXPECTED[variant]
        assert flat["variant"] == variant and flat["model.name"] == "avs_mamba"

    def test_recipe(self):
        """full.yaml holds the official recipe at paper size; the smoke size shortens it for CPUs."""
        paper = load_config(ABLATIONS / "full.yaml", size="paper").flatten()
        assert paper["train.lr"] == 2e-5 and paper["train.weight_decay"] == 0.01 and paper["train.epochs"] == 120
        assert paper["train.batch_size"] == 2 and paper["train.backbone_freeze_epochs"] == 20
        assert paper["train.loss.dice"] == 1.0 and paper["train.aux_loss_weight"] == 1.0
        assert paper["model.d_model"] == 256 and paper["model.backbone"] == "pvt_v2_b5"
        assert paper["model.audio_encoder"] == "vggish" and paper["model.head_hidden"] == 2048
        smoke = load_config(ABLATIONS / "full.yaml", size="smoke").flatten()
        assert smoke["model.d_model"] == 32 and smoke["model.backbone"] == "pvt_v2_b0"
        assert smoke["model.audio_encoder"] == "logmel_cnn" and smoke["train.backbone_freeze_epochs"] == 0
