"""The audio-reliance protocol: conditions, FPR, combined scores, the evaluate hook, MLflow and the table.

The instrument is tested where the right answer is known: an audio-blind model (AVS-Mamba ``no_audio``) must give the
same masks under every condition, and a model that predicts nothing when it hears silence must score FPR 0 there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _engine_helpers import make_data, write_config
from PIL import Image
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from avs_mamba.checkpointing import save_checkpoint
from avs_mamba.config import ExperimentConfig, load_config
from avs_mamba.data.audio import LOG_OFFSET
from avs_mamba.evaluation import build_split, evaluate_run
from avs_mamba.metrics import FalsePositiveRate
from avs_mamba.modules.output import AVSOutput
from avs_mamba.registry import is_model, register_model
from avs_mamba.report import build_tables, load_runs, robustness_table
from avs_mamba.robustness import (
    ConditionedAudio,
    condition_list,
    harmonic_mean,
    noise_waveform,
    robustness_summary,
    swap_pairing,
)

REPO = Path(__file__).resolve().parents[1]
GATE = "audio_gate"


class AudioGateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_classes: int = 1


class AudioGate(nn.Module):
    """Predicts every pixel foreground when the frame's log-mel varies, and nothing when it is constant (silence)."""

    def __init__(self, config: AudioGateConfig) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, frames: Tensor, audio: Tensor, frame_flags: Tensor | None = None) -> AVSOutput:
        B, T, _, H, W = frames.shape
        heard = audio.flatten(2).std(2) > 1e-6  # [B, T]
        logits = torch.where(heard, 5.0, -5.0)[:, :, None, None, None].expand(B, T, 1, H, W) * self.scale
        return AVSOutput(logits=logits.contiguous(), aux=[])


if not is_model(GATE):

    @register_model(GATE, config_cls=AudioGateConfig)
    def audio_gate(config: AudioGateConfig) -> AudioGate:
        return AudioGate(config)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("robust_data"), "s4", counts=(2, 2, 4))


def _run_dir(root: Path, config: ExperimentConfig) -> Path:
    """A run directory (config.yaml + checkpoints/best.pt) holding the config's freshly initialised model."""
    torch.manual_seed(0)
    model = config.build_model()
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(config.to_yaml())
    save_checkpoint(root / "checkpoints" / "best.pt", {"model": model.state_dict(), "epoch": 0})
    return root


def _gate_run(tmp_path: Path, data_root: Path) -> Path:
    path = write_config(tmp_path / "gate.yaml", data_root, model={"name": GATE}, eval={"batch_size": 2})
    return _run_dir(tmp_path / "gate_run", load_config(path))


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


# ----------------------------------------------------------------------------------------------------------------
# Pieces


def test_false_positive_rate_is_the_mean_foreground_fraction_per_frame() -> None:
    logits = torch.full((1, 3, 1, 2, 4), -1.0)
    logits[0, 0, 0, :, :2] = 1.0  # frame 0: 4 of 8 pixels foreground
    logits[0, 1] = 1.0  # frame 1: all 8
    metric = FalsePositiveRate(1)
    metric.update(logits, valid=torch.tensor([[True, True, False]]))  # frame 2 (all background) not counted
    assert metric.compute()["fpr"] == pytest.approx((0.5 + 1.0) / 2)
    semantic = torch.zeros((1, 1, 3, 1, 4))
    semantic[0, 0, 2, 0, 0] = 1.0  # one pixel of class 2, the others background (class 0 ties win argmax)
    metric = FalsePositiveRate(3)
    metric.update(semantic)
    assert metric.compute()["fpr"] == pytest.approx(0.25)


def test_summary_is_the_harmonic_mean_of_accuracy_and_one_minus_fpr() -> None:
    conditions = {
        "original": {"official": {"miou": 0.6, "fscore": 0.8}},
        "silence": {"official": {"miou": 0.1, "fscore": 0.2}, "fpr": {"fpr": 0.2}},
        "noise": {"official": {"miou": 0.1, "fscore": 0.2}, "fpr": {"fpr": 0.4}},
    }
    summary = robustness_summary(conditions, ["official"])["official"]
    assert summary["g_fpr"] == pytest.approx(0.3)
    assert summary["g_miou"] == pytest.approx(2 * 0.6 * 0.7 / 1.3)
    assert summary["g_fscore"] == pytest.approx(2 * 0.8 * 0.7 / 1.5)
    assert summary["by_condition"]["silence"]["g_miou"] == pytest.approx(2 * 0.6 * 0.8 / 1.4)
    assert harmonic_mean(0.0, 0.0) == 0.0 and math.isnan(harmonic_mean(math.nan, 1.0))
    assert condition_list(["silence", "noise", "silence"]) == ["original", "silence", "noise"]
    with pytest.raises(ValueError, match="unknown audio condition"):
        condition_list(["quiet"])


def test_silence_is_the_front_end_of_a_zero_waveform_and_noise_has_its_level(data_root: Path, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.yaml", data_root))
    split = build_split(config, "test")
    silent = ConditionedAudio(split, "silence")[1]["audio"]
    assert silent.shape == (5, 1, 96, 64)
    assert torch.equal(silent, torch.full_like(silent, np.float32(np.log(LOG_OFFSET))))  # log(0 + 0.01) per bin
    rng = np.random.default_rng(0)
    wave = noise_waveform(80000, -20.0, rng)
    assert np.sqrt(np.mean(wave.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=0.01)
    assert np.abs(wave).max() <= np.sqrt(3) * 0.1
    first, again = ConditionedAudio(split, "noise", seed=3)[0]["audio"], ConditionedAudio(split, "noise", seed=3)
    assert torch.equal(first, again[0]["audio"])  # seeded per clip
    assert not torch.equal(first, again[1]["audio"])
    with pytest.raises(ValueError, match="dBFS"):
        ConditionedAudio(split, "noise", noise_dbfs=0.0)


def test_swap_partners_sound_a_class_not_visible_in_the_clip(data_root: Path, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.yaml", data_root))
    split = build_split(config, "test")
    table = pd.read_csv(data_root / "Single-source" / "synth_clips.csv", dtype=str, keep_default_na=False)
    rows = {r["name"]: r for _, r in table.iterrows()}
    pairs = swap_pairing(split, seed=0)
    assert len(pairs) == 4 and pairs == swap_pairing(split, seed=0)
    for pair in pairs:
        clip, partner = rows[pair["clip"]], rows[pair["partner"]]
        visible = set(clip["sources"].split("_")) | set(filter(None, clip["silent"].split("_")))
        assert pair["partner"] != pair["clip"] and pair["constraint"] == "not_visible"
        assert not set(partner["sources"].split("_")) & visible
    swapped = ConditionedAudio(split, "swapped", pairs=pairs)
    assert torch.equal(swapped[0]["audio"], split[pairs[0]["partner_index"]]["audio"])


# ----------------------------------------------------------------------------------------------------------------
# The instrument


def test_the_empty_answer_under_silence_scores_fpr_zero(data_root: Path, tmp_path: Path) -> None:
    run = _gate_run(tmp_path, data_root)
    (run / "metrics.json").write_text(json.dumps({"run": {"name": "tiny"}, "kept": 1}))
    record = evaluate_run(run, device="cpu", audio_conditions=["silence", "noise", "swapped"], mask_dir=tmp_path / "m")
    block = record["robustness"]
    assert block["conditions"]["silence"]["fpr"]["fpr"] == 0.0  # silence heard: nothing predicted, as it should
    assert block["conditions"]["noise"]["fpr"]["fpr"] == 1.0  # noise heard: everything predicted
    summary = block["summary"]["official"]
    assert summary["g_fpr"] == pytest.approx(2 / 3)
    assert summary["g_miou"] == pytest.approx(harmonic_mean(summary["miou"], 1 / 3))
    silence_masks = _masks(tmp_path / "m" / "silence")
    assert len(silence_masks) == 4 * 5 and all((m == 0).all() for m in silence_masks.values())
    stored = json.loads((run / "metrics.json").read_text())
    assert stored["kept"] == 1 and stored["robustness"]["test"]["summary"] == json.loads(json.dumps(block["summary"]))
    pairs = json.loads((run / "robustness_test_pairs.json").read_text())["pairs"]
    assert [p["partner"] for p in pairs] == [
        p["partner"] for p in swap_pairing(build_split(ExperimentConfig.from_yaml(run / "config.yaml"), "test"), 0)
    ]
    assert json.loads((run / "eval_test.json").read_text())["robustness"]["seed"] == 0


@pytest.mark.slow
def test_no_audio_is_audio_blind_and_full_is_not(data_root: Path, tmp_path: Path) -> None:
    sets = [f"data.root={data_root}", "data.task=s4", "data.image_size=32", "eval.batch_size=2"]
    conditions = ["silence", "noise", "swapped"]
    masks = {}
    for variant in ("no_audio", "full"):
        run = _run_dir(tmp_path / variant, load_config(REPO / "ablations" / f"{variant}.yaml", sets, "smoke"))
        # random-init runs never trained: scored as unfinished runs (the instrument, not the model, is under test)
        record = evaluate_run(
            run,
            device="cpu",
            audio_conditions=conditions,
            mask_dir=tmp_path / f"{variant}_masks",
            allow_unfinished=True,
        )
        masks[variant] = {c: _masks(tmp_path / f"{variant}_masks" / c) for c in ["original", *conditions]}
        if variant == "no_audio":
            by = record["robustness"]["conditions"]
            for c in conditions:
                same = masks[variant][c].keys() == masks[variant]["original"].keys() and all(
                    np.array_equal(m, masks[variant]["original"][k]) for k, m in masks[variant][c].items()
                )
                assert same  # identical mask files for every frame of every clip
                assert by[c]["official"] == by["original"]["official"]
            assert by["silence"]["fpr"] == by["noise"]["fpr"] == by["swapped"]["fpr"]
    full = masks["full"]
    logits_differ = any(
        not np.array_equal(full["original"][k], full[c][k]) for c in conditions for k in full["original"]
    )
    assert len(full["original"]) == 20 and logits_differ  # the same instrument sees a model that listens


def test_robustness_metrics_join_the_training_run_in_mlflow(data_root: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from avs_mamba.tracking import RunLogger, log_to_finished_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(write_config(tmp_path / "c.yaml", data_root))
    with RunLogger(uri).start_config(config, scan_backend="none", device="cpu") as logger:
        logger.log_epoch(1, {"train/loss": 0.5})
        run_id = logger.run_id
    assert log_to_finished_run(uri, config, {"robustness/test/official/g_miou": 0.25}) == run_id
    history = MlflowClient(uri).get_metric_history(run_id, "robustness/test/official/g_miou")
    assert [(m.value, m.step) for m in history] == [(0.25, 1)]
    other = config.model_copy(update={"name": "someone_else"})
    assert log_to_finished_run(uri, other, {"x": 1.0}) is None


# ----------------------------------------------------------------------------------------------------------------
# Table


def _metrics_file(folder: Path, name: str, model: str, seed: int, miou: float, fprs: dict[str, float]) -> Path:
    conditions = {"original": {"official": {"miou": miou, "fscore": miou + 0.1}}}
    conditions |= {c: {"official": {"miou": miou / 2, "fscore": 0.0}, "fpr": {"fpr": f}} for c, f in fprs.items()}
    record = {
        "run": {"name": name, "variant": name, "model": model, "task": "s4", "profile": "smoke", "seed": seed},
        "test": {"official": {"miou": miou, "fscore": miou + 0.1}},
        "config": {},
        "robustness": {"test": {"conditions": conditions, "summary": robustness_summary(conditions, ["official"])}},
    }
    path = folder / name / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    return path


def test_robustness_table_one_row_per_model(tmp_path: Path) -> None:
    fprs = {"silence": 0.5, "noise": 0.3, "swapped": 0.1}
    files = [
        _metrics_file(tmp_path, "full", "avs_mamba", 0, 0.6, fprs),
        _metrics_file(tmp_path, "full", "avs_mamba", 1, 0.8, {"silence": 0.3, "noise": 0.1, "swapped": 0.1}),
        _metrics_file(tmp_path, "tpavi", "tpavi", 0, 0.5, fprs),
    ]
    table = robustness_table(load_runs(files))
    assert list(table.display["model"]) == ["AVS-Mamba (full)", "TPAVI"]
    row = table.data.iloc[0]
    assert row["M_J mean"] == pytest.approx(70.0) and row["FPR silence mean"] == pytest.approx(40.0)
    g0 = harmonic_mean(0.6, 1 - 0.3) * 100
    g1 = harmonic_mean(0.8, 1 - 0.5 / 3) * 100
    assert row["G-mIoU mean"] == pytest.approx((g0 + g1) / 2)
    assert row["M_J swapped mean"] == pytest.approx(35.0)
    assert table.display.iloc[1]["G-FPR"] == "30.0"  # one seed: the mean alone
    written = build_tables(files, tmp_path / "tables", figures_dir=None, only=["robustness"])
    assert [p.name for p in written] == ["robustness.md", "robustness.tex", "robustness.csv"]
    assert "TPAVI" in written[0].read_text()
    plain = json.loads(files[0].read_text())
    del plain["robustness"]
    files[0].write_text(json.dumps(plain))
    assert any("s4/full/seed0" in n for n in robustness_table(load_runs(files)).footnotes)
