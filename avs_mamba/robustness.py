"""Audio-reliance protocol: does a model segment the *sounding* object, or whatever is salient whatever it hears?

AVSBench-Robust (Li, Zhao, Huang, Guo, Tian, "Do Audio-Visual Segmentation Models Truly Segment Sounding Objects?",
arXiv:2502.00358; code jiali-home/AVSBench-Robust@67c0f2e) evaluates a trained model with the clip's frames and
*negative* audio, for which the correct mask is empty: silence, noise and an off-screen sound. This module builds
those inputs for any run and any AVSBench-layout dataset, and combines the scores.

Conditions (each changes only the clip's audio; frames and masks are the split's own):

* ``original``: the clip's audio, as the dataset reads it.
* ``silence``: a zero waveform as long as the clip's real frames (one second each), through the project's VGGish
  log-mel front-end (:func:`avs_mamba.data.audio.waveform_to_examples`: every bin is ``log(0 + 0.01)``) and the
  task's padding (:func:`~avs_mamba.data.audio.fit_examples`). The official generator writes one silent 5-s WAV
  (``dataset_generation/audio_processing.py``, ``AudioSegment.silent``).
* ``noise``: white noise, uniform on [-a, a], with RMS ``level_dbfs`` (20·log10 RMS, full scale 1.0):
  a = √3 · 10^(level/20); the default −4.77 dBFS is a = 1, the official ``np.random.uniform(-1, 1)`` of
  ``generate_noise_audio``. Drawn per clip from ``SeedSequence([seed, clip index])``, so it does not depend on the
  loader's order, then through the same front-end.
* ``swapped``: the audio of another clip of the split (AVSBench-Robust's off-screen / "misaligned" sound, drawn by
  ``random.choice`` among clips of other categories in ``process_s4_split``), read by the dataset itself (cached
  log-mel or WAV, whichever the run uses). The partner's sounding classes must differ from every class *visible* in
  the clip: the clip's category (S4 metadata), and on synthetic data also its silent distractors
  (``synth_clips.csv``), so that the correct answer really is empty. A split too small for that falls back to a
  partner of another sounding class, and where the layout names no class (MS3, AVSS) any other clip is taken; the
  constraint used is recorded per pair. The pairing is seeded and written next to the results.

Silence and noise are built from a waveform even when the run reads cached ``.pkl`` log-mels: the features of a zero
or noise waveform do not depend on the clip, only on its length, so nothing of the clip's own audio is needed; the
front-end is the VGGish one that AVSBench's ``.pkl`` files were made with. (The official generator instead re-extracts
its negative ``.pkl`` files with a librosa front-end, 22.05 kHz and per-example standardisation; features that the
trained models never saw for positive audio. Here the front-end is the same for every condition.)

Scores, per condition and protocol: M_J and M_F against the clip's *original* ground truth (how much of the sounding
object survives the changed audio), and for the negative conditions the FPR against their correct answer, the empty
mask (:class:`avs_mamba.metrics.FalsePositiveRate`, the official ``calculate_FPR``). Combined scores: G-FPR is the mean
FPR over the negative conditions evaluated, and

    G-mIoU = 2 · M_J · (1 − G-FPR) / (M_J + (1 − G-FPR)),    G-F = 2 · M_F · (1 − G-FPR) / (M_F + (1 − G-FPR)),

with M_J, M_F of the original audio, plus the same per negative condition with its own FPR. The official repository
states that G-mIoU, G-F and G-FPR were "manually aggregated ... using Excel" and ships no code for them; this is the
harmonic-mean reading of the paper's combination of accuracy on positive audio with 1 − FPR on negative audio (a
model must do both to score high). The ×100 convention of the tables applies to all of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Subset

from avs_mamba.data.audio import SAMPLE_RATE, fit_examples, waveform_to_examples

__all__ = [
    "CONDITIONS",
    "NEGATIVE_CONDITIONS",
    "DEFAULT_NOISE_DBFS",
    "condition_list",
    "silence_waveform",
    "noise_waveform",
    "waveform_audio",
    "swap_pairing",
    "ConditionedAudio",
    "harmonic_mean",
    "robustness_summary",
]

CONDITIONS = ("original", "silence", "noise", "swapped")
NEGATIVE_CONDITIONS = ("silence", "noise", "swapped")
DEFAULT_NOISE_DBFS = 20.0 * math.log10(1.0 / math.sqrt(3.0))  # uniform on [-1, 1]: -4.77 dBFS RMS
SYNTH_CLIPS_CSV = "synth_clips.csv"


def condition_list(conditions: Sequence[str]) -> list[str]:
    """Unique conditions in the given order, ``original`` first (G-mIoU / G-F need its M_J and M_F)."""
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown audio condition(s) {unknown}; expected some of {list(CONDITIONS)}")
    return ["original", *[c for c in dict.fromkeys(conditions) if c != "original"]]


def silence_waveform(num_samples: int) -> np.ndarray:
    """A zero waveform, float32 ``[num_samples]``."""
    return np.zeros(num_samples, dtype=np.float32)


def noise_waveform(num_samples: int, level_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """Uniform white noise with RMS ``10^(level_dbfs / 20)`` (full scale 1.0), float32 ``[num_samples]``."""
    if not math.isfinite(level_dbfs) or level_dbfs > DEFAULT_NOISE_DBFS + 1e-9:
        raise ValueError(
            f"noise level must be a finite dBFS value <= {DEFAULT_NOISE_DBFS:.2f} (uniform noise of RMS above "
            f"1/sqrt(3) would clip), got {level_dbfs}"
        )
    amplitude = math.sqrt(3.0) * 10.0 ** (level_dbfs / 20.0)
    return (rng.uniform(-1.0, 1.0, num_samples) * amplitude).astype(np.float32)


def waveform_audio(waveform: np.ndarray, num_frames: int, pad: str) -> torch.Tensor:
    """A 16 kHz waveform through the VGGish front-end, brought to ``[num_frames, 1, 96, 64]`` like the datasets."""
    return fit_examples(waveform_to_examples(waveform, SAMPLE_RATE), num_frames, pad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# Datasets


def _unwrap(dataset: Dataset) -> tuple[Any, list[int]]:
    """The AVSBench dataset under ``build_split``'s wrappers and the base index of each position."""
    positions: list[int] | None = None
    node: Any = dataset
    while not hasattr(node, "clip_spec"):
        if isinstance(node, Subset):
            inner = list(node.indices)
            positions = inner if positions is None else [inner[i] for i in positions]
        if not hasattr(node, "dataset"):
            raise TypeError(f"{type(dataset).__name__} does not wrap an AVSBench dataset (no clip_spec found)")
        node = node.dataset
    return node, positions if positions is not None else list(range(len(node)))


def _synthetic_classes(base: Any) -> dict[str, tuple[set[str], set[str]]]:
    """clip name -> (sounding classes, silent visible classes) from ``synth_clips.csv``, if the root has one."""
    path = Path(base.root) / SYNTH_CLIPS_CSV
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    split = lambda text: {c for c in text.split("_") if c}  # noqa: E731  (class names never hold "_")
    return {row["name"]: (split(row["sources"]), split(row["silent"])) for _, row in table.iterrows()}


def _clip_classes(base: Any, index: int, synth: Mapping[str, tuple[set[str], set[str]]]) -> tuple[set, set] | None:
    """(sounding, visible) classes of base clip ``index``; None where the layout names no class."""
    spec = base.clip_spec(index)
    if spec.clip_id in synth:
        sounding, silent = synth[spec.clip_id]
        return set(sounding), set(sounding) | set(silent)
    category = dict(spec.extra).get("category")
    return ({category}, {category}) if category else None


def swap_pairing(dataset: Dataset, seed: int) -> list[dict[str, Any]]:
    """For each position of ``dataset``: the position whose audio it gets under ``swapped`` (module docstring).

    The partner is drawn (seeded, in split order) among the clips that satisfy the strictest constraint any clip
    satisfies: ``not_visible`` (none of the partner's sounding classes is visible in the clip), else
    ``different_class`` (the partner sounds none of the clip's own sounding classes; small splits), else ``other_clip``
    where the layout names no class. The constraint used is recorded per pair.

    Returns one record per clip: ``clip``, ``partner`` (clip ids), ``index``, ``partner_index`` (positions),
    ``clip_classes``, ``partner_classes`` (sorted lists; None when unknown) and ``constraint``.

    Raises:
        ValueError: fewer than two clips, or a clip whose every other clip sounds one of its own classes.
    """
    base, positions = _unwrap(dataset)
    if len(positions) < 2:
        raise ValueError(f"the swapped condition needs at least two clips, the split has {len(positions)}")
    synth = _synthetic_classes(base)
    classes = [_clip_classes(base, i, synth) for i in positions]
    ids = [base.clip_spec(i).clip_id for i in positions]
    known = all(c is not None for c in classes)
    rng = np.random.default_rng(seed)
    pairs = []
    for k, own in enumerate(classes):
        others = [j for j in range(len(classes)) if j != k]
        if known:
            levels = [
                ("not_visible", [j for j in others if not (classes[j][0] & own[1])]),  # type: ignore[index]
                ("different_class", [j for j in others if not (classes[j][0] & own[0])]),  # type: ignore[index]
            ]
        else:
            levels = [("other_clip", others)]
        constraint, candidates = next(((name, c) for name, c in levels if c), (None, []))
        if not candidates:
            raise ValueError(
                f"swapped audio: every other clip of the split sounds a class of {ids[k]} "
                f"({sorted(own[0]) if own else 'unknown'}); the split needs clips of more classes"
            )
        j = int(candidates[int(rng.integers(len(candidates)))])
        pairs.append(
            {
                "index": k,
                "clip": ids[k],
                "partner_index": j,
                "partner": ids[j],
                "clip_classes": sorted(own[0]) if own else None,
                "partner_classes": sorted(classes[j][0]) if classes[j] else None,  # type: ignore[index]
                "constraint": constraint,
            }
        )
    return pairs


class ConditionedAudio(Dataset):
    """``build_split``'s dataset with each item's ``audio`` replaced by that of one condition (module docstring).

    Args:
        dataset: the split as :func:`avs_mamba.evaluation.build_split` returns it.
        condition: one of :data:`CONDITIONS`.
        seed: seeds the noise (per clip) and the swap pairing.
        noise_dbfs: RMS level of the noise in dBFS.
        pairs: the swap pairing (default: :func:`swap_pairing` with ``seed``).
    """

    def __init__(
        self,
        dataset: Dataset,
        condition: str,
        *,
        seed: int = 0,
        noise_dbfs: float = DEFAULT_NOISE_DBFS,
        pairs: list[dict[str, Any]] | None = None,
    ) -> None:
        if condition not in CONDITIONS:
            raise ValueError(f"unknown audio condition {condition!r}; expected one of {list(CONDITIONS)}")
        self.dataset, self.condition, self.seed, self.noise_dbfs = dataset, condition, seed, noise_dbfs
        self.base, self.positions = _unwrap(dataset)
        if condition == "noise":
            noise_waveform(1, noise_dbfs, np.random.default_rng(0))  # validates the level up front
        self.pairs = pairs if pairs is not None or condition != "swapped" else swap_pairing(dataset, seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        if self.condition == "original":
            return item
        T = item["audio"].shape[0]
        seconds = int(item["frame_flags"].sum())  # real frames: one per second of audio
        pad = self.base.audio_pad
        if self.condition == "silence":
            item["audio"] = waveform_audio(silence_waveform(seconds * SAMPLE_RATE), T, pad)
        elif self.condition == "noise":
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.positions[index]]))
            item["audio"] = waveform_audio(noise_waveform(seconds * SAMPLE_RATE, self.noise_dbfs, rng), T, pad)
        else:
            partner = self.positions[self.pairs[index]["partner_index"]]  # type: ignore[index]
            item["audio"] = self.base._load_audio(self.base.clip_spec(partner))
        return item


# ----------------------------------------------------------------------------------------------------------------
# Combined scores


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b); 0 when both are 0, NaN when either is NaN."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.nan
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def robustness_summary(conditions: Mapping[str, Mapping[str, Any]], protocols: Sequence[str]) -> dict[str, Any]:
    """G-FPR, G-mIoU and G-F per protocol (module docstring) from per-condition results.

    Args:
        conditions: condition -> {protocol: {"miou", "fscore", ...}, "fpr": {"fpr", ...} (negative conditions)}.
    """
    if "original" not in conditions:
        raise ValueError("G-mIoU and G-F need the original condition's M_J and M_F")
    negative = [c for c in NEGATIVE_CONDITIONS if c in conditions]
    summary: dict[str, Any] = {}
    for protocol in protocols:
        miou = float(conditions["original"][protocol]["miou"])
        fscore = float(conditions["original"][protocol]["fscore"])
        by_condition = {}
        for c in negative:
            fpr = float(conditions[c]["fpr"]["fpr"])
            by_condition[c] = {
                "fpr": fpr,
                "g_miou": harmonic_mean(miou, 1.0 - fpr),
                "g_fscore": harmonic_mean(fscore, 1.0 - fpr),
            }
        g_fpr = float(np.mean([v["fpr"] for v in by_condition.values()])) if by_condition else math.nan
        summary[protocol] = {
            "miou": miou,
            "fscore": fscore,
            "g_fpr": g_fpr,
            "g_miou": harmonic_mean(miou, 1.0 - g_fpr),
            "g_fscore": harmonic_mean(fscore, 1.0 - g_fpr),
            "by_condition": by_condition,
        }
    return summary
