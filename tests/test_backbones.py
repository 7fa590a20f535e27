"""Backbones and audio encoders: official key names/shapes, parameter counts, feature maps, checkpoint loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from avs_mamba.backbones import (
    CheckpointMismatchError,
    create_audio_encoder,
    create_backbone,
    list_backbones,
    pretrained_spec,
)
from avs_mamba.backbones._layers import drop_path_rates, stage_indices
from avs_mamba.backbones.pvt_v2 import Attention

KEYS_DIR = Path(__file__).parent / "data" / "backbone_keys"


def read_key_list(name: str) -> list[tuple[str, list[int]]]:
    """Parse ``tests/data/backbone_keys/<name>.txt`` (lines ``key [d0,d1,...]``; ``#`` starts a comment)."""
    entries = []
    for line in (KEYS_DIR / f"{name}.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split()
        dims = shape.strip("[]")
        entries.append((key, [int(d) for d in dims.split(",")] if dims else []))
    return entries


def build_meta(name: str, **kwargs):
    """Build a backbone/encoder on the meta device: real structure and shapes, no memory or init cost."""
    with torch.device("meta"):
        if name == "vggish":
            return create_audio_encoder("vggish")
        return create_backbone(name, **kwargs)


def state_shapes(model) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


class TestOfficialKeys:
    """State dicts match the key/shape lists derived from the official model definitions."""

    @pytest.mark.parametrize(
        "name, kwargs",
        [
            ("pvt_v2_b0", dict(num_classes=1000)),
            ("pvt_v2_b5", dict(num_classes=1000)),
            ("resnet50", dict(num_classes=1000)),
            ("vggish", {}),
        ],
    )
    def test_keys_and_shapes_in_order(self, name, kwargs):
        """Every key, shape and the key order equal the official list."""
        expected = read_key_list(name)
        got = state_shapes(build_meta(name, **kwargs))
        assert len(got) == len(expected), f"{name}: {len(got)} keys, official list has {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert g == e, f"{name}: entry {i} is {g}, official list has {e}"

    def test_key_lists_pin_the_published_configs(self):
        """The lists themselves encode b5's depths [3,6,40,3], mlp ratio 4, and b0's widths."""
        b5 = dict(read_key_list("pvt_v2_b5"))
        for stage, depth in enumerate([3, 6, 40, 3], start=1):
            assert f"block{stage}.{depth - 1}.norm1.weight" in b5 and f"block{stage}.{depth}.norm1.weight" not in b5
        assert b5["block3.0.mlp.fc1.weight"] == [1280, 320]  # mlp_ratio 4 at width 320
        assert b5["block1.0.attn.sr.weight"] == [64, 64, 8, 8] and "block4.0.attn.sr.weight" not in b5
        b0 = dict(read_key_list("pvt_v2_b0"))
        assert b0["head.weight"] == [1000, 256] and b0["block1.0.mlp.fc1.weight"] == [256, 32]

    def test_without_head_only_classifier_keys_go(self):
        """num_classes=0 removes exactly the classifier keys, nothing else."""
        for name, head in [("pvt_v2_b0", "head"), ("resnet50", "fc")]:
            full = [k for k, _ in read_key_list(name)]
            got = list(build_meta(name).state_dict())
            assert got == [k for k in full if not k.startswith(f"{head}.")]


class TestParameterCounts:
    """Parameter counts equal the published numbers (and the counts of the official key lists)."""

    @pytest.mark.parametrize(
        "name, kwargs, exact, published_m",
        [
            # PVT README / timm: b0 3.7 M with the head (the README's 3.4 M is the count without it), b5 82.0 M.
            ("pvt_v2_b0", dict(num_classes=1000), 3_666_760, 3.7),
            ("pvt_v2_b0", dict(num_classes=0), 3_409_760, 3.4),
            ("pvt_v2_b5", dict(num_classes=1000), 81_956_008, 82.0),
            # torchvision's documented ResNet-50 size.
            ("resnet50", dict(num_classes=1000), 25_557_032, 25.557032),
            # VGGish: conv stack + 12288-4096-4096-128 embeddings.
            ("vggish", {}, 72_141_184, 72.1),
        ],
    )
    def test_count(self, name, kwargs, exact, published_m):
        """Exact count, and the published figure at its printed precision."""
        n = param_count(build_meta(name, **kwargs))
        assert n == exact, f"{name}: {n} parameters, expected {exact}"
        decimals = len(str(published_m).split(".")[1])
        assert round(n / 1e6, decimals) == published_m

    @pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b5", "resnet50", "vggish"])
    def test_key_list_count_matches(self, name):
        """The official key lists hold the same number of parameters (buffers excluded)."""
        buffers = ("running_mean", "running_var", "num_batches_tracked")
        from_list = sum(math.prod(s) for k, s in read_key_list(name) if not k.endswith(buffers))
        kwargs = {} if name == "vggish" else dict(num_classes=1000)
        assert from_list == param_count(build_meta(name, **kwargs))


class TestFeatures:
    """forward_intermediates gives four maps at strides 4/8/16/32 with feature_info's channels."""

    @pytest.mark.parametrize("name", list_backbones())
    def test_shapes_and_strides(self, name):
        """Every registered backbone, traced on the meta device at a non-square size."""
        model = build_meta(name)
        H, W = 64, 96
        feats = model.forward_intermediates(torch.empty(2, 3, H, W, device="meta"))
        assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
        assert len(feats) == 4
        for f, info in zip(feats, model.feature_info, strict=True):
            r = info["reduction"]
            assert tuple(f.shape) == (2, info["num_chs"], H // r, W // r), f"{name}: {tuple(f.shape)} at stride {r}"

    @pytest.mark.parametrize(
        "name, chans",
        [("pvt_v2_b0", [32, 64, 160, 256]), ("pvt_v2_b5", [64, 128, 320, 512]), ("resnet50", [256, 512, 1024, 2048])],
    )
    def test_published_channels(self, name, chans):
        assert [f["num_chs"] for f in build_meta(name).feature_info] == chans

    @pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_tiny", "resnet_tiny"])
    def test_real_forward(self, name):
        """A real forward: finite maps, forward_features = last map, odd sizes round up."""
        torch.manual_seed(0)
        model = create_backbone(name).eval()
        x = torch.randn(2, 3, 33, 47)
        feats = model.forward_intermediates(x)
        assert [tuple(f.shape[-2:]) for f in feats] == [(9, 12), (5, 6), (3, 3), (2, 2)]
        assert all(torch.isfinite(f).all() for f in feats)
        torch.testing.assert_close(model.forward_features(x), feats[-1])

    @pytest.mark.parametrize("name", ["pvt_v2_tiny", "resnet_tiny"])
    def test_gradients_reach_every_parameter(self, name):
        """Without the head, every parameter takes part in the four feature maps.

        64 x 64 input: every attention then sees at least 2 x 2 keys (with a single key, softmax is constant and q
        gets no gradient).
        """
        torch.manual_seed(0)
        model = create_backbone(name)
        sum(f.square().mean() for f in model.forward_intermediates(torch.randn(2, 3, 64, 64))).backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not no_grad, f"no gradient for {no_grad}"

    def test_indices(self):
        model = create_backbone("pvt_v2_tiny").eval()
        x = torch.randn(1, 3, 32, 32)
        full = model.forward_intermediates(x)
        last2 = model.forward_intermediates(x, indices=2)
        picked = model.forward_intermediates(x, indices=[0, 2])
        torch.testing.assert_close(last2, full[2:])
        torch.testing.assert_close(picked, [full[0], full[2]])
        assert stage_indices(None, 4) == [0, 1, 2, 3]
        for bad in (0, 5, [4], []):
            with pytest.raises(ValueError, match="indices"):
                stage_indices(bad, 4)

    def test_classifier_forward(self):
        model = create_backbone("pvt_v2_tiny", num_classes=10).eval()
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert create_backbone("resnet_tiny", num_classes=7)(torch.randn(2, 3, 32, 32)).shape == (2, 7)

    def test_bad_input(self):
        with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
            create_backbone("resnet_tiny").forward_intermediates(torch.randn(2, 1, 32, 32))


class TestPVTAttention:
    """Spatial-reduction attention equals an independent formulation with F.scaled_dot_product_attention."""

    @pytest.mark.parametrize("sr_ratio", [1, 2])
    def test_against_sdpa(self, sr_ratio):
        torch.manual_seed(0)
        dim, heads, H, W = 16, 2, 4, 6
        attn = Attention(dim, heads, sr_ratio=sr_ratio).eval()
        x = torch.randn(3, H * W, dim)
        kv_in = x
        if sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(3, dim, H, W)
            kv_in = attn.norm(F.conv2d(grid, attn.sr.weight, attn.sr.bias, stride=sr_ratio).flatten(2).transpose(1, 2))
        q = F.linear(x, attn.q.weight, attn.q.bias)
        k, v = F.linear(kv_in, attn.kv.weight, attn.kv.bias).chunk(2, dim=-1)

        def split(t):
            return t.reshape(3, t.shape[1], heads, dim // heads).transpose(1, 2)

        ref = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(3, H * W, dim)
        ref = F.linear(ref, attn.proj.weight, attn.proj.bias)
        torch.testing.assert_close(attn(x, H, W), ref, rtol=1e-5, atol=1e-5)

    def test_drop_path_rates(self):
        """The official linear rule: 0 .. rate over all blocks, split by stage."""
        rates = drop_path_rates(0.1, [2, 1, 2])
        assert [len(r) for r in rates] == [2, 1, 2]
        flat = [r for stage in rates for r in stage]
        assert flat == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
        model = create_backbone("pvt_v2_tiny", drop_path_rate=0.3)
        assert model.block4[0].drop_path.drop_prob == pytest.approx(0.3)

    def test_b5_official_stochastic_depth(self):
        """The official pvt_v2_b5 builder: rate 0.1 linear over the 3 + 6 + 40 + 3 = 52 blocks (block n of 0..51
        drops with 0.1 * n / 51; block 0 has none)."""
        model = build_meta("pvt_v2_b5")
        rates = [
            blk.drop_path.drop_prob if hasattr(blk.drop_path, "drop_prob") else 0.0
            for i in range(1, 5)
            for blk in getattr(model, f"block{i}")
        ]
        assert len(rates) == 52
        assert rates == pytest.approx([0.1 * n / 51 for n in range(52)])
        assert isinstance(model.block1[0].drop_path, torch.nn.Identity)
        assert model.block3[39].drop_path.drop_prob == pytest.approx(0.1 * 48 / 51)
        no_sd = build_meta("pvt_v2_b5", drop_path_rate=0.0)
        assert all(isinstance(b.drop_path, torch.nn.Identity) for i in range(1, 5) for b in getattr(no_sd, f"block{i}"))

    def test_b5_layernorm_eps(self):
        """Official eps: 1e-5 (plain nn.LayerNorm) in the 4 patch embeddings and the attention reductions of the
        stages with sr_ratio > 1 (3 + 6 + 40 = 49 blocks), so 53 norms; 1e-6 in the 2 x 52 block norms and the 4
        stage norms, 108."""
        model = build_meta("pvt_v2_b5")
        eps = {}
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.LayerNorm):
                eps.setdefault(m.eps, []).append(name)
        assert sorted(eps) == [1e-6, 1e-5]
        assert len(eps[1e-5]) == 53 and len(eps[1e-6]) == 108
        assert all(n.endswith((".attn.norm", ".norm")) and "block4" not in n for n in eps[1e-5])
        assert {f"patch_embed{i}.norm" for i in range(1, 5)} <= set(eps[1e-5])


@pytest.fixture(scope="module")
def vggish():
    """One randomly initialised VGGish for the module (72 M parameters take a second to build)."""
    torch.manual_seed(0)
    return create_audio_encoder("vggish")


class TestAudioEncoders:
    def test_vggish_shape_and_frozen(self, vggish):
        out = vggish(torch.randn(3, 1, 96, 64))
        assert out.shape == (3, 128) and vggish.out_dim == 128
        assert (out >= 0).all(), "VGGish ends with a ReLU"
        assert not any(p.requires_grad for p in vggish.parameters()), "VGGish is frozen by default"
        with torch.device("meta"):
            assert all(p.requires_grad for p in create_audio_encoder("vggish", freeze=False).parameters())

    def test_vggish_flatten_order_matches_official(self, vggish):
        """The embedding input is the conv output flattened channels-last, as torchvggish's two transposes give."""
        x = torch.randn(2, 1, 96, 64)
        conv = vggish.features(x)
        official = torch.transpose(torch.transpose(conv, 1, 3), 1, 2).contiguous().view(2, -1)
        torch.testing.assert_close(vggish(x), vggish.embeddings(official))
        wrong = vggish.embeddings(conv.flatten(1))
        assert not torch.allclose(vggish(x), wrong)

    def test_vggish_rejects_other_sizes(self, vggish):
        with pytest.raises(ValueError, match=r"\[N, 1, 96, 64\]"):
            vggish(torch.randn(2, 1, 64, 96))
        with pytest.raises(ValueError, match="128-d"):
            create_audio_encoder("vggish", out_dim=256)

    def test_logmel_cnn_trains(self):
        torch.manual_seed(0)
        enc = create_audio_encoder("logmel_cnn", out_dim=32)
        out = enc(torch.randn(4, 1, 96, 64))
        assert out.shape == (4, 32) and enc.out_dim == 32
        out.square().mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
        with pytest.raises(ValueError, match="no official pretrained checkpoint"):
            create_audio_encoder("logmel_cnn", pretrained="auto")

    def test_logmel_cnn_keeps_frequency_drops_time(self):
        """A sound is identified by where its energy sits on the mel axis, not by when it starts: moving a tone
        by 16 frames (a whole pooling cell, far from the borders) leaves the embedding unchanged, moving it by 16
        mel bands does not."""
        torch.manual_seed(0)
        enc = create_audio_encoder("logmel_cnn", out_dim=32).eval()

        def tone(frame: int, band: int) -> torch.Tensor:
            x = torch.zeros(1, 1, 96, 64)
            x[..., frame : frame + 8, band : band + 4] = 3.0
            return x

        with torch.no_grad():
            ref, later, higher = enc(tone(40, 16)), enc(tone(56, 16)), enc(tone(40, 32))
        torch.testing.assert_close(later, ref, rtol=1e-5, atol=1e-6)
        assert (higher - ref).norm() > 0.2 * ref.norm()
        with pytest.raises(ValueError, match=r"\[N, 1, F, 64\]"):
            enc(torch.randn(2, 1, 96, 48))


def save(sd: dict, path: Path) -> Path:
    torch.save(sd, path)
    return path


class TestCheckpointLoading:
    """Local loading: round trip, explicit drops, and one clear message per failure."""

    def test_round_trip(self, tmp_path):
        torch.manual_seed(0)
        src = create_backbone("pvt_v2_tiny")
        path = save(src.state_dict(), tmp_path / "tiny.pth")
        torch.manual_seed(1)
        dst = create_backbone("pvt_v2_tiny", pretrained=path)
        for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, msg=k)
        report = dst.pretrained_report
        assert report.loaded == list(src.state_dict()) and report.dropped == [] and report.kept_from_model == []
        assert create_backbone("pvt_v2_tiny").pretrained_report is None

    def test_auto_official_file_and_head_drop(self, tmp_path):
        """'auto' reads pretrained_dir/pvt_v2_b0.pth; without a head only head.weight/head.bias are dropped."""
        torch.manual_seed(0)
        official = create_backbone("pvt_v2_b0", num_classes=1000).state_dict()
        save(official, tmp_path / "pvt_v2_b0.pth")
        feat = create_backbone("pvt_v2_b0", pretrained="auto", pretrained_dir=tmp_path)
        assert feat.pretrained_report.dropped == ["head.weight", "head.bias"]
        torch.testing.assert_close(feat.block4[1].mlp.fc2.weight, official["block4.1.mlp.fc2.weight"])
        cls = create_backbone("pvt_v2_b0", pretrained="auto", pretrained_dir=tmp_path, num_classes=1000)
        assert cls.pretrained_report.dropped == []
        torch.testing.assert_close(cls.head.weight, official["head.weight"])

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError) as err:
            create_backbone("pvt_v2_b5", pretrained="auto", pretrained_dir=tmp_path)
        msg = str(err.value)
        assert str(tmp_path / "pvt_v2_b5.pth") in msg
        assert "pvt_v2_b5.pth from the PVT-v2 release" in msg and "github.com/whai362/PVT" in msg
        assert "pretrained='none'" in msg
        with pytest.raises(FileNotFoundError, match="vggish-10086976.pth.*harritaylor/torchvggish"):
            create_audio_encoder("vggish", pretrained="auto", pretrained_dir=tmp_path)
        with pytest.raises(FileNotFoundError, match=r"resnet50-19c8e357\.pth.*download\.pytorch\.org"):
            create_backbone("resnet50", pretrained=tmp_path / "nowhere.pth")

    def test_renamed_key(self, tmp_path):
        """A renamed key shows up once as missing and once as unexpected, on separate lines."""
        sd = create_backbone("pvt_v2_b0", num_classes=1000).state_dict()
        sd["block1.0.attn.query.weight"] = sd.pop("block1.0.attn.q.weight")
        path = save(sd, tmp_path / "pvt_v2_b0.pth")
        with pytest.raises(CheckpointMismatchError) as err:
            create_backbone("pvt_v2_b0", pretrained=path, num_classes=1000)
        lines = str(err.value).splitlines()
        assert str(path) in lines[0]
        missing = [ln for ln in lines if ln.strip().startswith("missing keys")]
        unexpected = [ln for ln in lines if ln.strip().startswith("unexpected keys")]
        assert len(missing) == 1 and "(1): block1.0.attn.q.weight" in missing[0]
        assert len(unexpected) == 1 and "(1): block1.0.attn.query.weight" in unexpected[0]
        assert not any("shape" in ln for ln in lines)
        assert "pvt_v2_b0.pth from the PVT-v2 release" in lines[-1]

    def test_wrong_shape(self, tmp_path):
        sd = create_backbone("pvt_v2_b0").state_dict()
        sd["norm4.weight"] = torch.ones(255)
        path = save(sd, tmp_path / "bad.pth")
        with pytest.raises(CheckpointMismatchError) as err:
            create_backbone("pvt_v2_b0", pretrained=path)
        msg = str(err.value)
        assert "shape mismatches (1): norm4.weight (checkpoint [255], model [256])" in msg
        assert "missing keys" not in msg and "unexpected keys" not in msg

    def test_long_listing_is_truncated(self, tmp_path):
        sd = {f"extra.{i}": torch.zeros(1) for i in range(20)}
        path = save({**create_backbone("pvt_v2_tiny").state_dict(), **sd}, tmp_path / "x.pth")
        with pytest.raises(CheckpointMismatchError, match=r"unexpected keys .*\(20\): extra\.0, .*\(12 more\)"):
            create_backbone("pvt_v2_tiny", pretrained=path)

    def test_old_batchnorm_checkpoint(self, tmp_path):
        """Checkpoints without num_batches_tracked (like resnet50-19c8e357.pth) load; the counters stay as built."""
        torch.manual_seed(0)
        src = create_backbone("resnet_tiny", num_classes=1000)
        sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
        sd["bn1.running_mean"] = torch.full_like(sd["bn1.running_mean"], 0.5)
        # The pre-1.6 (non-zip) serialization format of the 2017 torchvision files.
        path = tmp_path / "old.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=False)
        dst = create_backbone("resnet_tiny", pretrained=path, num_classes=1000)
        # 3 BNs in each of the 4 blocks, the stem BN, 4 downsample BNs.
        assert len(dst.pretrained_report.kept_from_model) == 4 * 3 + 1 + 4
        assert all(k.endswith("num_batches_tracked") for k in dst.pretrained_report.kept_from_model)
        torch.testing.assert_close(dst.bn1.running_mean, sd["bn1.running_mean"])

    def test_wrapped_and_foreign_files(self, tmp_path):
        sd = create_backbone("resnet_tiny").state_dict()
        wrapped = create_backbone("resnet_tiny", pretrained=save({"model": sd, "epoch": 3}, tmp_path / "w.pth"))
        assert wrapped.pretrained_report.unwrapped_from == "model"
        with pytest.raises(RuntimeError, match="does not hold a state dict"):
            create_backbone("resnet_tiny", pretrained=save({"epoch": 3}, tmp_path / "f.pth"))
        (tmp_path / "junk.pth").write_text("not a checkpoint")
        with pytest.raises(RuntimeError, match="Cannot read checkpoint"):
            create_backbone("resnet_tiny", pretrained=tmp_path / "junk.pth")

    def test_vggish_pca_keys_dropped_by_name(self, tmp_path):
        """A state dict of a whole torchvggish VGGish carries its PCA post-processor; exactly those keys go."""
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in create_audio_encoder("vggish").state_dict().items()}
        # Stride-0 views keep the file tiny: torch.save stores one element per tensor.
        sd = {k: torch.full((), float(i)).expand(shape) for i, (k, shape) in enumerate(shapes.items())}
        sd["pproc.pca_matrix"], sd["pproc.pca_means"] = torch.eye(128), torch.zeros(128, 1)
        save(sd, tmp_path / "vggish-10086976.pth")
        enc = create_audio_encoder("vggish", pretrained="auto", pretrained_dir=tmp_path)
        assert enc.pretrained_report.dropped == ["pproc.pca_matrix", "pproc.pca_means"]
        assert not any(p.requires_grad for p in enc.parameters())
        assert (enc.embeddings[4].weight == list(shapes).index("embeddings.4.weight")).all()

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="Did you mean 'pvt_v2_b5'"):
            create_backbone("pvt_v2_b6")
        with pytest.raises(ValueError, match="'none', 'auto' or a checkpoint path"):
            create_backbone("pvt_v2_tiny", pretrained=True)
        with pytest.raises(ValueError, match="'pvt_v2_tiny' has no official pretrained checkpoint"):
            create_backbone("pvt_v2_tiny", pretrained="auto")
        with pytest.raises(ValueError, match="Unknown model name 'vgg'"):
            create_audio_encoder("vgg")

    def test_specs(self):
        """Each official checkpoint has its file name and source."""
        expected = {
            "pvt_v2_b0": "pvt_v2_b0.pth",
            "pvt_v2_b5": "pvt_v2_b5.pth",
            "resnet50": "resnet50-19c8e357.pth",
            "vggish": "vggish-10086976.pth",
        }
        for name, filename in expected.items():
            assert pretrained_spec(name).filename == filename
        assert pretrained_spec("pvt_v2_tiny") is None and pretrained_spec("logmel_cnn") is None
