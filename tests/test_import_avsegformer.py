"""Official AVSegFormer checkpoints (vvvb-github/AVSegFormer@7083cb6) read into the project's ``avsegformer``.

Fixtures (``tests/data/official_checkpoints/``), produced once from the official code outside this repository:

* ``avsegformer_{pvt_v2_b5,resnet50}_s4.txt``, ``avsegformer_pvt_v2_b5_avss.txt``: keys and shapes of the official
  ``AVSegFormer`` built from ``config/s4/AVSegFormer_{pvt2,res50}_s4.py`` (MS3's configs give the same lists) and
  ``config/avss/AVSegFormer_pvt2_avss.py`` (71 classes), VGGish included.
* ``avsegformer_small_pvt.pth.xz``: the S4 PVT config shrunk by its own arguments (embed_dim 32, 8 queries, 2
  encoder/decoder/generator layers, FFN 64, generator FFN 64, 2 deformable points, 8 heads, sine num_feats 16), the
  hard-coded parts rebuilt from the same classes at small widths (the backbone: the official
  ``PyramidVisionTransformerV2`` with this project's ``pvt_v2_tiny`` settings; ``MLP(8, 32, 32, 3)`` for the
  2048-wide one; ``SimpleFPN(channel=32)``; ``fc``/``attn_fc`` 32 -> 16 -> 8 -> 1) and VGGish replaced by a stand-in
  giving the fixture's embeddings (so the file has no ``vggish.*`` keys). Random weights;
  ``avsegformer_small_pvt_io.pt``: 1 clip x 3 frames of 64x64, the 3 audio embeddings, and the official model's
  logits and mix map (channel mean of its ``mask_feature``) (float64 run, stored as float32).
* ``avsegformer_small_resnet.pth.xz`` / ``_io.pt``: the same with the S4 ResNet config's backbone, ``B2_ResNet``, its
  stages rebuilt by its own ``_make_layer`` at this project's ``resnet_tiny`` widths (base 16, one bottleneck per
  stage); its unused second branch (``layer3_2``/``layer4_2``) is zeros.
"""

from __future__ import annotations

import re

import pytest
import torch
from _import_helpers import meta_state, read_key_list, run_small

from avs_mamba import registry
from avs_mamba.importers import get_format
from avs_mamba.importers.avsegformer_official import FORMAT

KEY_LISTS = {
    # file: (task, backbone, classes, number of keys)
    "avsegformer_pvt_v2_b5_s4": ("s4", "pvt_v2_b5", 1, 1413),
    "avsegformer_resnet50_s4": ("s4", "resnet50", 1, 853),
    "avsegformer_pvt_v2_b5_avss": ("avss", "pvt_v2_b5", 71, 1413),
}
# The official configs' model settings (config/s4/AVSegFormer_pvt2_s4.py and the module defaults it relies on).
OFFICIAL = dict(
    d_model=256,
    num_queries=300,
    num_heads=8,
    num_encoder_layers=6,
    num_decoder_layers=6,
    num_generator_layers=6,
    num_points=4,
    ffn_dim=2048,
    generator_ffn_dim=1024,
    head_hidden=2048,
    head_chans=[128, 32],
    mixer=True,
)
PACKED = (".in_proj_weight", ".in_proj_bias", "fusion_block.kv_proj.weight")  # one official key, 3 or 2 project keys


def _dead(key: str) -> bool:
    """Official parameters the official forward never uses (worked out from the model files by hand)."""
    return key.startswith(("head.fpn.", "head.attn_fc.", "backbone.layer3_2.", "backbone.layer4_2."))


def _project_keys_per_official(key: str) -> int:
    if key.endswith(PACKED[:2]):
        return 3
    return 2 if key.endswith(PACKED[2]) else 1


class TestKeyLists:
    """Every official key at paper size maps to project keys of the right shapes, or is dead and dropped."""

    @pytest.mark.parametrize("name", sorted(KEY_LISTS))
    def test_every_key_mapped_or_dropped(self, name: str) -> None:
        task, backbone, classes, n_keys = KEY_LISTS[name]
        keys = read_key_list(name)
        assert len(keys) == n_keys, f"{name}: the pinned list has {len(keys)} keys, its header says {n_keys}"
        state = meta_state(keys)
        arch = FORMAT.architecture(state, task)
        assert (arch["backbone"], arch["num_classes"]) == (backbone, classes)
        assert {k: arch[k] for k in OFFICIAL} == OFFICIAL

        mapped = FORMAT.map_state(state)
        assert mapped.unknown == []
        assert sorted(mapped.dropped) == sorted(k for k in keys if _dead(k))
        with torch.device("meta"):  # paper size, random init, no files
            model = registry.create_model(FORMAT.model, **arch)
        expected = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert FORMAT.external_prefixes == ()
        assert sorted(mapped.state) == sorted(expected), "missing or unexpected project keys"
        mismatched = [k for k, v in mapped.state.items() if list(v.shape) != expected[k]]
        assert mismatched == []
        live = [k for k in keys if not _dead(k)]
        assert len(mapped.state) == sum(_project_keys_per_official(k) for k in live)

    def test_packed_projections_split_in_order(self) -> None:
        """nn.MultiheadAttention packs q, k, v row blocks in that order; the mixer's kv_proj packs k, v."""
        C = 4
        packed = torch.arange(3 * C * C, dtype=torch.float32).view(3 * C, C)
        kv = torch.arange(2 * C * C, dtype=torch.float32).view(2 * C, C)
        mapped = FORMAT.map_state(
            {
                "head.transformer.decoder.layers.3.cross_attn.in_proj_weight": packed,
                "head.query_generator.layers.0.self_attn.in_proj_weight": packed,
                "head.fusion_block.kv_proj.weight": kv,
            }
        ).state
        for prefix in ("decoder.3.cross_attn", "query_generator.layers.0.self_attn"):
            for i, p in enumerate("qkv"):
                assert torch.equal(mapped[f"{prefix}.{p}_proj.weight"], packed[i * C : (i + 1) * C])
        assert torch.equal(mapped["mixer.attn.k_proj.weight"], kv[:C])
        assert torch.equal(mapped["mixer.attn.v_proj.weight"], kv[C:])


class TestOutputEquivalence:
    """The small official checkpoint, loaded through the format, reproduces the official model's outputs."""

    @pytest.mark.parametrize("name", ["avsegformer_small_pvt", "avsegformer_small_resnet"])
    def test_small_logits_and_mix_map(self, name: str, tmp_path) -> None:
        out, io = run_small(FORMAT, name, "s4", tmp_path)
        ref = io["logits"].double()
        assert out.logits.shape == ref.shape == (1, 3, 1, 64, 64)
        diff = (out.logits - ref).abs().max().item()
        assert diff < 1e-5, f"max abs difference {diff:.3g} to the official output"
        mix = (out.extras["mix_map"] - io["mix_map"].double()).abs().max().item()
        assert mix < 1e-5, f"mix map: max abs difference {mix:.3g}"
        assert ref.std() > 0.1  # a non-degenerate output: the comparison can fail

    def test_swapped_key_value_change_the_output(self, tmp_path) -> None:
        """Control: the fixture tells the mixer's k and v apart (a table splitting kv_proj as v, k would be caught)."""

        def swap(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            k, v = state["head.fusion_block.kv_proj.weight"].chunk(2)
            return {**state, "head.fusion_block.kv_proj.weight": torch.cat([v, k])}

        out, io = run_small(FORMAT, "avsegformer_small_pvt", "s4", tmp_path, edit=swap)
        assert (out.logits - io["logits"].double()).abs().max() > 1e-3

    def test_unused_resnet_branch_changes_the_output(self, tmp_path) -> None:
        """Control: B2_ResNet's two branches have the same shapes; the fixture's unused one (zeros) gives another
        output, so a table reading layer3_2/layer4_2 would be caught."""

        def swap(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            other = {"_1.": "_2.", "_2.": "_1."}
            return {
                re.sub(r"(?<=^backbone\.layer[34])_[12]\.", lambda m: other[m.group(0)], k): v for k, v in state.items()
            }

        out, io = run_small(FORMAT, "avsegformer_small_resnet", "s4", tmp_path, edit=swap)
        assert (out.logits - io["logits"].double()).abs().max() > 1e-3


class TestBadInput:
    """Checkpoints that are not AVSegFormer's, or do not fit the task, give one clear ValueError."""

    def test_registered_under_its_name(self) -> None:
        assert get_format("avsegformer_official") is FORMAT
        assert FORMAT.model == "avsegformer" and FORMAT.source.startswith("vvvb-github/AVSegFormer@")

    def test_tpavi_checkpoint(self) -> None:
        state = meta_state(read_key_list("tpavi_pvt_v2_b5_s4"))
        with pytest.raises(ValueError, match=r"not an official AVSegFormer checkpoint.*tpavi_official"):
            FORMAT.architecture(state, "s4")

    def test_avs_mamba_checkpoint(self) -> None:
        with torch.device("meta"):
            state = registry.create_model("avs_mamba").state_dict()
        with pytest.raises(ValueError, match=r"not an official AVSegFormer checkpoint.*expected keys"):
            FORMAT.architecture(state, "s4")

    @pytest.mark.parametrize("name, task", [("avsegformer_pvt_v2_b5_s4", "avss"), ("avsegformer_pvt_v2_b5_avss", "s4")])
    def test_classes_do_not_fit_the_task(self, name: str, task: str) -> None:
        with pytest.raises(ValueError, match=r"this AVSegFormer checkpoint has \d+ output"):
            FORMAT.architecture(meta_state(read_key_list(name)), task)

    def test_unknown_backbone(self) -> None:
        keys = read_key_list("avsegformer_resnet50_s4")
        truncated = {k: v for k, v in keys.items() if not k.startswith("backbone.layer4_1.2.")}
        with pytest.raises(ValueError, match=r"matches none of this project's backbones"):
            FORMAT.architecture(meta_state(truncated), "s4")

    def test_extra_head_is_unknown(self) -> None:
        keys = read_key_list("avsegformer_pvt_v2_b5_s4")
        extra = {**keys, "head.aux_fc.0.weight": [128, 256, 3, 3], "vggish.pproc.pca_means": [128, 1]}
        mapped = FORMAT.map_state(meta_state(extra))
        assert mapped.unknown == ["head.aux_fc.0.weight", "vggish.pproc.pca_means"]
