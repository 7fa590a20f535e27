"""AVSBench evaluation metrics: the official protocol, quirks included, and a clean protocol beside it.

Both are streaming accumulators: the engine calls ``update`` once per evaluation batch and ``compute`` once at the
end; ``state_dict``/``merge`` combine the states of several processes (DDP) into exactly the single-process result.
Every result dict carries ``protocol`` so a number can never be separated from the rules that produced it.

**S4 / MS3 (binary), official protocol** — AVSBench ``mask_iou``, ``Eval_Fmeasure``, ``_eval_pr``
(``avs_scripts/avs_s4/utils/utility.py``), copied unchanged into AVSegFormer, CATR and COMBO:

1. M_J binarises ``sigmoid(logit) > 0.5`` (strict) and computes one IoU per frame.
2. Empty-GT rule: a frame whose ground truth is empty scores TN / (H·W), the fraction of pixels predicted background
   — 1 for an empty prediction, but *not 0* for a wrong non-empty one. Denominators carry +1e-7.
3. M_J is the mean over evaluation batches of each batch's frame mean; it equals the frame mean only when all
   batches hold the same number of frames.
4. M_F uses β² = 0.3 and 255 thresholds ``torch.linspace(0, 1 - 1e-10, 255)``; in float32 the last one rounds to
   exactly 1.0. A pixel is positive at threshold t when ``prob >= t``; precision and recall carry +1e-20 in their
   denominators and a NaN F becomes 0.
5. Frames with an empty ground truth are skipped by M_F (AVSBench issue #22); a batch in which every frame is
   skipped contributes F = 0 to the mean.
6. The best threshold is chosen *per evaluation batch*: the per-frame F curves of a batch are averaged, the batch
   scores the curve's maximum, and M_F is the mean of those maxima. M_F therefore depends on the evaluation batch
   size (4 videos in AVSBench, 2 in AVSegFormer, 1 in COMBO/CATR), which is why ``eval_batch_size`` is a required
   parameter and is returned with the result.

Official batches are defined by video identity, never by how frames reached ``update``: official batch k holds the
videos at positions [k·b, (k+1)·b) of the sorted video ids (b = ``eval_batch_size``), which is what a single-process
``DataLoader(shuffle=False, batch_size=b)`` over the split yields. Video ids are the dataset indices passed as
``video_index``; without it videos are numbered in arrival order. Under DDP pass ``video_index`` (the indices the
``DistributedSampler`` handed out): the merged state is then sorted by id, duplicates added by the sampler's
padding are dropped, and each rank's own batching does not matter. Without ``video_index``, ``merge`` appends the
other accumulator's videos after its own, which is exact only when each rank evaluated a contiguous block and the
states are merged in rank order. Per-frame statistics (hard-mask counts and the 255-point F curve) are kept so each
official batch's result is computed exactly from its own frames.

Distributed use (every rank, then one compute on the merged state)::

    metric = BinarySegmentationMetrics("official", eval_batch_size=4)
    for frames, audio, masks, index in loader:  # index: the DistributedSampler's dataset indices
        metric.update(model(frames, audio).logits, masks, video_index=index)
    states = [None] * world_size
    torch.distributed.all_gather_object(states, metric.state_dict())
    total = BinarySegmentationMetrics("official", eval_batch_size=4)
    for state in states:
        total.merge(state)
    result = total.compute()  # identical to a single-process evaluation

**Clean binary protocol.** M_J is the plain per-frame Jaccard index |P∩G| / |P∪G| averaged over all frames, with
the DAVIS convention for an empty union: empty GT and empty prediction → 1, empty GT and any predicted pixel → 0.
M_F uses the same per-frame curves (β² = 0.3, same thresholds) averaged over *all* non-empty-GT frames of the
dataset, with one dataset-level best threshold (returned as ``best_threshold``): no batch dependence. M_F is NaN
when no frame has a non-empty ground truth (it is undefined there).

**AVSS (semantic), official protocol** — AVSBench ``calc_color_miou_fscore`` (``avs_scripts/avss/utils/
compute_color_metrics.py``) and ``avss/test.py``, identical in AVSegFormer and COMBO:

1. The prediction is ``argmax(softmax(logits))`` over the K = 71 classes (0 = background).
2. Per frame and class: IoU = I / U and F = 1.3·p·r / (0.3·p + r) (NaN → 0); the class is *counted* in the frame
   when U > 0, i.e. it appears in the prediction or the ground truth. A class predicted where the ground truth lacks
   it therefore adds a counted 0 to both IoU and F.
3. Per class: the sum over frames divided by the count; mIoU and F are the mean over *all* K classes, a class never
   counted contributing 0. Pure sums, so the batch size does not matter.
4. Padded frames (clips shorter than 10 frames, ``frame_flags`` False) are counted: the official model multiplies
   their logits by the zero flag (argmax → class 0) and the loader fills their labels with 0, so each adds a perfect
   background frame. Their actual content is ignored.
5. ``ignore_index`` pixels: the official code shifts labels by +1 and histograms over [1, K], so an ignored pixel
   leaves the ground-truth area but the prediction on it still counts in the predicted area (a false positive).
6. The scripts' ``miou_noBg``/``F_score_noBg`` drop the last class, a leftover of a background-last convention
   (AVSBench issue #23); they are not reproduced.

**Clean AVSS protocol.** Same per-frame per-class IoU/F, but padded frames are excluded, ignored pixels are left out
of both areas, and the class mean runs over the classes counted at least once (absent classes are excluded, not 0).

**False-positive rate under negative audio** (:class:`FalsePositiveRate`) — AVSBench-Robust ``calculate_FPR``
(jiali-home/AVSBench-Robust@67c0f2e7:training_evaluation/code/AVSegFormer/scripts/s4/test.py): when the audio names
no visible object (silence, noise, an off-screen sound) the correct mask is empty, so every predicted foreground
pixel is a false positive; FPR of a frame is the fraction of its pixels predicted foreground (``sigmoid > 0.5``;
AVSS: argmax not background) and FPR is the mean over frames. The official script averages per-batch means, which
equals the frame mean when all batches are full; here it is the exact frame mean, independent of batching.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "BETA2",
    "NUM_THRESHOLDS",
    "PROTOCOLS",
    "BinarySegmentationMetrics",
    "FalsePositiveRate",
    "SemanticSegmentationMetrics",
    "official_thresholds",
]

Protocol = Literal["official", "clean"]
PROTOCOLS: tuple[str, ...] = ("official", "clean")
BETA2 = 0.3  # F-measure weight, as in AVSBench (precision weighted more than recall)
NUM_THRESHOLDS = 255
_IOU_EPS = 1e-7  # official mask_iou denominator guard
_PR_EPS = 1e-20  # official _eval_pr denominator guard


def official_thresholds() -> Tensor:
    """The official 255-point threshold grid, float32 like the original (its last value rounds to exactly 1.0)."""
    return torch.linspace(0.0, 1.0 - 1e-10, NUM_THRESHOLDS, dtype=torch.float32)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown metric protocol {protocol!r}; expected one of {PROTOCOLS}")


class _FrameStore:
    """Per-frame statistics keyed by (video id, frame index), mergeable across processes.

    Keying by video makes every result independent of how frames were chunked into ``update`` calls and of which
    process saw them; ``frames()`` returns the rows sorted by key with exact duplicates removed.
    """

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.keys = ("video", "frame", *columns)
        self.reset()

    def reset(self) -> None:
        self._chunks: dict[str, list[Tensor]] = {key: [] for key in self.keys}
        self._indexed: bool | None = None  # None until the first update: ids given (True) or arrival order (False)
        self._next_video = 0

    def video_ids(self, video_index: Tensor | Sequence[int] | None, num_videos: int) -> Tensor:
        """Ids of the next ``num_videos`` clips: the given dataset indices, or arrival numbers."""
        indexed = video_index is not None
        if self._indexed is not None and self._indexed != indexed:
            raise ValueError(
                "video_index must be given on every update or on none: this accumulator was "
                f"{'given' if self._indexed else 'not given'} video_index before"
            )
        self._indexed = indexed
        if video_index is None:
            ids = torch.arange(self._next_video, self._next_video + num_videos, dtype=torch.int64)
            self._next_video += num_videos
            return ids
        ids = torch.as_tensor(video_index).detach().cpu()
        if ids.shape != (num_videos,) or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(
                f"video_index must hold {num_videos} integers (one per clip), got dtype {ids.dtype} shape "
                f"{tuple(ids.shape)}"
            )
        return ids.to(torch.int64)

    def add(self, video_ids: Tensor, num_frames: int, stats: Mapping[str, Tensor]) -> None:
        """Append one row per frame; ``stats`` values are [B·T, ...] in clip-major order."""
        self._chunks["video"].append(video_ids.repeat_interleave(num_frames))
        self._chunks["frame"].append(torch.arange(num_frames, dtype=torch.int64).repeat(len(video_ids)))
        for key, value in stats.items():
            self._chunks[key].append(value.detach().cpu())

    def state_dict(self) -> dict[str, Tensor]:
        """All rows as tensors plus the bookkeeping (``indexed``: -1 unknown, 0 arrival order, 1 dataset ids)."""
        state = {key: torch.cat(chunks) for key, chunks in self._chunks.items() if chunks}  # empty store: no rows
        flag = -1 if self._indexed is None else int(self._indexed)
        state["indexed"] = torch.tensor(flag, dtype=torch.int64)
        state["next_video"] = torch.tensor(self._next_video, dtype=torch.int64)
        return state

    def merge(self, state: Mapping[str, Tensor]) -> None:
        """Add another store's rows: by id when both used ``video_index``, else appended after this store's."""
        meta = {"indexed", "next_video"}
        missing = sorted(meta - state.keys())
        unexpected = sorted(state.keys() - meta - set(self.keys))
        if missing or unexpected:
            raise ValueError(f"bad metric state: missing keys {missing}, unexpected keys {unexpected}")
        flag = int(state["indexed"])
        if flag == -1:  # the other accumulator saw no data
            return
        other_indexed = bool(flag)
        if self._indexed is not None and self._indexed != other_indexed:
            raise ValueError("cannot merge an accumulator given video_index with one that was not")
        rows = [key for key in self.keys if key in state]
        if len(rows) != len(self.keys) or len({len(state[key]) for key in rows}) != 1:
            raise ValueError(f"bad metric state: expected equal-length columns {self.keys}, got {rows}")
        video = state["video"].cpu().to(torch.int64)
        if not other_indexed:
            video = video + self._next_video
            self._next_video += int(state["next_video"])
        self._indexed = other_indexed
        self._chunks["video"].append(video)
        for key in self.keys[1:]:
            self._chunks[key].append(state[key].cpu())

    def frames(self) -> dict[str, Tensor]:
        """All rows sorted by (video, frame); a row recorded twice (DDP sampler padding) is kept once."""
        if not self._chunks["video"]:
            return {}
        rows = {key: torch.cat(chunks) for key, chunks in self._chunks.items()}
        order = torch.argsort(rows["frame"], stable=True)
        order = order[torch.argsort(rows["video"][order], stable=True)]
        rows = {key: value[order] for key, value in rows.items()}
        video, frame = rows["video"], rows["frame"]
        repeat = torch.zeros(len(video), dtype=torch.bool)
        repeat[1:] = (video[1:] == video[:-1]) & (frame[1:] == frame[:-1])
        if repeat.any():
            for key, value in rows.items():
                same = value[1:] == value[:-1]
                differs = repeat[1:] & ~same.reshape(len(same), -1).all(1)
                if differs.any():
                    i = int(differs.nonzero()[0]) + 1
                    raise ValueError(
                        f"video {int(video[i])} frame {int(frame[i])} was recorded twice with different "
                        f"'{key}' statistics; each video must be evaluated once"
                    )
            rows = {key: value[~repeat] for key, value in rows.items()}
        return rows


def _clip_tensor(x: Tensor, name: str) -> Tensor:
    """Accept [B, T, H, W] or [B, T, 1, H, W] (the model's K = 1 output) and return [B, T, H, W]."""
    if x.ndim == 5 and x.shape[2] == 1:
        x = x.squeeze(2)
    if x.ndim != 4:
        raise ValueError(f"{name} must be [B, T, H, W] or [B, T, 1, H, W], got shape {tuple(x.shape)}")
    return x


def _frame_flags(flags: Tensor | None, batch: int, frames: int, name: str) -> Tensor:
    if flags is None:
        return torch.ones(batch * frames, dtype=torch.bool)
    flags = torch.as_tensor(flags).detach().cpu()
    if flags.shape != (batch, frames) or flags.dtype != torch.bool:
        raise ValueError(
            f"{name} must be a bool tensor of shape {(batch, frames)}, got {flags.dtype} {tuple(flags.shape)}"
        )
    return flags.reshape(-1)


def _fmeasure_curves(probs: Tensor, gt: Tensor) -> Tensor:
    """Official per-frame F-measure curve over the 255 thresholds.

    Args:
        probs: [F, P] float32 foreground probabilities.
        gt: [F, P] bool ground truth.
    Returns:
        [F, 255] float32; entry j is F_β at threshold j (pixel positive when prob >= threshold), NaN -> 0.
    """
    num_frames = probs.shape[0]
    bins = NUM_THRESHOLDS + 1
    # level = number of thresholds <= prob, so a pixel is positive at threshold j exactly when level > j
    level = torch.searchsorted(official_thresholds().to(probs.device), probs.contiguous(), right=True)
    level = level + torch.arange(num_frames, device=probs.device).unsqueeze(1) * bins
    hist_all = torch.bincount(level.reshape(-1), minlength=num_frames * bins).view(num_frames, bins)
    hist_pos = torch.bincount(level[gt], minlength=num_frames * bins).view(num_frames, bins)
    # suffix sums from bin j + 1 = pixels positive at threshold j
    npred = hist_all.flip(1).cumsum(1).flip(1)[:, 1:].to(torch.float32)
    tp = hist_pos.flip(1).cumsum(1).flip(1)[:, 1:].to(torch.float32)
    gt_area = gt.sum(1, keepdim=True).to(torch.float32)
    prec, rec = tp / (npred + _PR_EPS), tp / (gt_area + _PR_EPS)
    f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
    return torch.where(torch.isnan(f), torch.zeros_like(f), f)


class BinarySegmentationMetrics:
    """M_J (Jaccard) and M_F (F-measure) for S4 / MS3 under the official or clean protocol (module docstring).

    Args:
        protocol: ``"official"`` (AVSBench code, per-batch best threshold) or ``"clean"`` (batch independent).
        eval_batch_size: videos per official evaluation batch (AVSBench 4, AVSegFormer 2, COMBO/CATR 1); recorded
            in the result for both protocols, used only by ``"official"``.
        from_logits: ``update`` receives logits (sigmoid applied, as the official code does) when True, foreground
            probabilities in [0, 1] when False.
    """

    _COLUMNS = ("valid", "num_pixels", "inter", "union", "true_neg", "gt_area", "fcurve")

    def __init__(self, protocol: Protocol, eval_batch_size: int, *, from_logits: bool = True) -> None:
        _check_protocol(protocol)
        if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be a positive int (videos per batch), got {eval_batch_size!r}")
        self.protocol = protocol
        self.eval_batch_size = eval_batch_size
        self.from_logits = from_logits
        self._store = _FrameStore(self._COLUMNS)

    def reset(self) -> None:
        self._store.reset()

    @torch.no_grad()
    def update(
        self,
        pred: Tensor,
        target: Tensor,
        valid: Tensor | None = None,
        video_index: Tensor | Sequence[int] | None = None,
    ) -> None:
        """Add one evaluation batch of clips.

        Args:
            pred: [B, T, H, W] or [B, T, 1, H, W] logits (or probabilities, see ``from_logits``).
            target: same shape, values in {0, 1} (bool, integer or float).
            valid: [B, T] bool, False for frames without ground truth (skipped by both protocols); None = all.
            video_index: [B] dataset index of each clip (needed under DDP, see module docstring); None = arrival order.
        """
        pred, target = _clip_tensor(pred, "pred"), _clip_tensor(target, "target")
        if target.shape != pred.shape:
            raise ValueError(f"target shape {tuple(target.shape)} does not match pred shape {tuple(pred.shape)}")
        B, T, H, W = pred.shape
        target = target.detach().to(pred.device)
        if not ((target == 0) | (target == 1)).all():
            bad = torch.unique(target[(target != 0) & (target != 1)])[:5].tolist()
            raise ValueError(f"binary target must hold only 0 and 1 (binarise masks with > 0), found values {bad}")
        pred = pred.detach().to(torch.float32)
        if torch.isnan(pred).any():
            raise ValueError("pred contains NaN")
        if self.from_logits:
            probs = torch.sigmoid(pred)
        else:
            if pred.min() < 0 or pred.max() > 1:
                raise ValueError(
                    f"with from_logits=False pred must be probabilities in [0, 1], got range "
                    f"[{pred.min().item():.4g}, {pred.max().item():.4g}]"
                )
            probs = pred
        valid_flat = _frame_flags(valid, B, T, "valid")
        probs, gt = probs.reshape(B * T, H * W), target.reshape(B * T, H * W).bool()
        hard = probs > 0.5  # official M_J binarisation, strict
        stats = {
            "valid": valid_flat,
            "num_pixels": torch.full((B * T,), H * W, dtype=torch.int64),
            "inter": (hard & gt).sum(1),
            "union": (hard | gt).sum(1),
            "true_neg": (~hard & ~gt).sum(1),
            "gt_area": gt.sum(1),
            "fcurve": _fmeasure_curves(probs, gt),
        }
        self._store.add(self._store.video_ids(video_index, B), T, stats)

    def state_dict(self) -> dict[str, Tensor]:
        """Accumulated state as CPU tensors, for ``torch.distributed.all_gather_object`` and ``merge``."""
        return self._store.state_dict()

    def merge(self, other: BinarySegmentationMetrics | Mapping[str, Tensor]) -> None:
        """Fold in another accumulator (same settings) or its ``state_dict()``."""
        if isinstance(other, BinarySegmentationMetrics):
            if (other.protocol, other.eval_batch_size, other.from_logits) != (
                self.protocol,
                self.eval_batch_size,
                self.from_logits,
            ):
                raise ValueError("cannot merge BinarySegmentationMetrics with different protocol/eval_batch_size")
            other = other.state_dict()
        self._store.merge(other)

    def compute(self) -> dict[str, float | int | str]:
        """Final M_J (``miou``) and M_F (``fscore``) with the protocol, batch size and frame counts."""
        rows = self._store.frames()
        if not rows or not rows["valid"].any():
            raise RuntimeError("BinarySegmentationMetrics.compute() called before any valid frame was added")
        valid = rows["valid"]
        scored = valid & (rows["gt_area"] > 0)  # frames that enter M_F
        result: dict[str, float | int | str] = {
            "protocol": self.protocol,
            "eval_batch_size": self.eval_batch_size,
            "num_frames": int(valid.sum()),
            "num_videos": len(torch.unique(rows["video"][valid])),
            "num_fscore_frames": int(scored.sum()),
        }
        if self.protocol == "official":
            result.update(self._official(rows, valid, scored))
        else:
            result.update(self._clean(rows, valid, scored))
        return result

    def _official(self, rows: dict[str, Tensor], valid: Tensor, scored: Tensor) -> dict[str, float | int]:
        # per-frame IoU in float32 with the +1e-7 guard, empty GT scored as the true-negative fraction
        empty = rows["gt_area"] == 0
        inter = torch.where(empty, rows["true_neg"], rows["inter"]).to(torch.float32)
        union = torch.where(empty, rows["num_pixels"], rows["union"]).to(torch.float32)
        iou = (inter / (union + _IOU_EPS)).to(torch.float64)
        # official batch of each frame: position of its video among all sorted video ids, in blocks of b
        videos = torch.unique(rows["video"])
        batch = torch.searchsorted(videos, rows["video"]) // self.eval_batch_size
        num_batches = int(batch.max()) + 1
        frames_per_batch = torch.bincount(batch[valid], minlength=num_batches)
        iou_sum = torch.zeros(num_batches, dtype=torch.float64).index_add_(0, batch[valid], iou[valid])
        scored_per_batch = torch.bincount(batch[scored], minlength=num_batches)
        curve_sum = torch.zeros(num_batches, NUM_THRESHOLDS, dtype=torch.float64)
        curve_sum.index_add_(0, batch[scored], rows["fcurve"][scored].to(torch.float64))
        best = (curve_sum / scored_per_batch.clamp(min=1).unsqueeze(1)).max(1).values  # all-empty batch -> 0
        kept = frames_per_batch > 0  # a batch with no valid frame would not exist in the official loader
        return {
            "miou": (iou_sum[kept] / frames_per_batch[kept]).mean().item(),
            "fscore": best[kept].mean().item(),
            "num_batches": int(kept.sum()),
        }

    def _clean(self, rows: dict[str, Tensor], valid: Tensor, scored: Tensor) -> dict[str, float]:
        union = rows["union"][valid].to(torch.float64)
        inter = rows["inter"][valid].to(torch.float64)
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # 0/0 := 1 (DAVIS)
        if scored.any():
            curve = rows["fcurve"][scored].to(torch.float64).mean(0)
            j = int(curve.argmax())
            fscore, threshold = curve[j].item(), official_thresholds()[j].item()
        else:
            fscore = threshold = math.nan  # F is undefined without a single non-empty ground truth
        return {"miou": iou.mean().item(), "fscore": fscore, "best_threshold": threshold}


class SemanticSegmentationMetrics:
    """AVSS per-frame, per-class mIoU and F (β² = 0.3) under the official or clean protocol (module docstring).

    Args:
        protocol: ``"official"`` (AVSBench ``calc_color_miou_fscore``) or ``"clean"``.
        num_classes: K, including background = 0 (71 for AVSBench-semantic).
        ignore_index: target value that marks unlabelled pixels, or None when every pixel is labelled.
    """

    _COLUMNS = ("real", "num_pixels", "inter", "pred_area", "gt_area", "pred_on_ignored")

    def __init__(self, protocol: Protocol, num_classes: int = 71, ignore_index: int | None = 255) -> None:
        _check_protocol(protocol)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background plus objects), got {num_classes}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id in [0, {num_classes})")
        self.protocol = protocol
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._store = _FrameStore(self._COLUMNS)

    def reset(self) -> None:
        self._store.reset()

    @torch.no_grad()
    def update(
        self,
        pred: Tensor,
        target: Tensor,
        frame_flags: Tensor | None = None,
        video_index: Tensor | Sequence[int] | None = None,
    ) -> None:
        """Add one evaluation batch of clips.

        Args:
            pred: [B, T, K, H, W] float logits (softmax + argmax, as official) or [B, T, H, W] integer labels.
            target: [B, T, H, W] integer class ids in [0, K) or ``ignore_index``.
            frame_flags: [B, T] bool, False for padded frames (clips shorter than T); None = all real.
            video_index: [B] dataset index of each clip (needed under DDP, see module docstring); None = arrival order.
        """
        K = self.num_classes
        pred = pred.detach()
        target = torch.as_tensor(target).detach().to(pred.device)
        if pred.is_floating_point():
            if pred.ndim != 5 or pred.shape[2] != K:
                raise ValueError(f"logits must be [B, T, {K}, H, W], got shape {tuple(pred.shape)}")
            labels = torch.softmax(pred.to(torch.float32), dim=2).argmax(2)
        else:
            labels = pred.to(torch.int64)
            if labels.ndim != 4 or labels.min() < 0 or labels.max() >= K:
                raise ValueError(
                    f"label predictions must be [B, T, H, W] with ids in [0, {K}), got shape {tuple(labels.shape)} "
                    f"range [{labels.min().item()}, {labels.max().item()}]"
                )
        if target.shape != labels.shape or target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(
                f"target must be an integer tensor of shape {tuple(labels.shape)}, got {target.dtype} "
                f"{tuple(target.shape)}"
            )
        target = target.to(torch.int64)
        ignored = target == self.ignore_index if self.ignore_index is not None else torch.zeros_like(target, dtype=bool)
        bad = ~ignored & ((target < 0) | (target >= K))
        if bad.any():
            raise ValueError(
                f"target ids must be in [0, {K}) or ignore_index={self.ignore_index}, found "
                f"{torch.unique(target[bad])[:5].tolist()}"
            )
        B, T, H, W = labels.shape
        flags = _frame_flags(frame_flags, B, T, "frame_flags")
        labels, target, ignored = labels.reshape(B * T, -1), target.reshape(B * T, -1), ignored.reshape(B * T, -1)
        # shift each frame's class ids into its own block of K bins: all per-frame histograms in one bincount
        offset = torch.arange(B * T, device=labels.device).unsqueeze(1) * K

        def hist(cls: Tensor, mask: Tensor) -> Tensor:
            return torch.bincount((cls + offset)[mask], minlength=B * T * K).view(B * T, K)

        counted = ~ignored
        stats = {
            "real": flags,
            "num_pixels": torch.full((B * T,), H * W, dtype=torch.int64),
            "inter": hist(target, counted & (labels == target)),
            "pred_area": hist(labels, counted),
            "gt_area": hist(target, counted),
            "pred_on_ignored": hist(labels, ignored),
        }
        self._store.add(self._store.video_ids(video_index, B), T, stats)

    def state_dict(self) -> dict[str, Tensor]:
        """Accumulated state as CPU tensors, for ``torch.distributed.all_gather_object`` and ``merge``."""
        return self._store.state_dict()

    def merge(self, other: SemanticSegmentationMetrics | Mapping[str, Tensor]) -> None:
        """Fold in another accumulator (same settings) or its ``state_dict()``."""
        if isinstance(other, SemanticSegmentationMetrics):
            if (other.protocol, other.num_classes, other.ignore_index) != (
                self.protocol,
                self.num_classes,
                self.ignore_index,
            ):
                raise ValueError("cannot merge SemanticSegmentationMetrics with different protocol/classes/ignore")
            other = other.state_dict()
        self._store.merge(other)

    def compute(self) -> dict[str, float | int | str | list[float]]:
        """Final ``miou`` and ``fscore`` (class means), per-class values, and what was counted."""
        rows = self._store.frames()
        if not rows:
            raise RuntimeError("SemanticSegmentationMetrics.compute() called before any frame was added")
        real = rows["real"]
        inter, gt_area = rows["inter"], rows["gt_area"]
        if self.protocol == "official":
            pred_area = rows["pred_area"] + rows["pred_on_ignored"]  # prediction on ignored pixels still counts
            padded = ~real
            # padded frame = all-background prediction and label over the whole frame
            background = torch.zeros_like(inter)
            background[:, 0] = rows["num_pixels"]
            inter, pred_area, gt_area = (
                torch.where(padded.unsqueeze(1), background, x) for x in (inter, pred_area, gt_area)
            )
        else:
            if not real.any():
                raise RuntimeError("SemanticSegmentationMetrics.compute(): every frame added was a padded frame")
            inter, pred_area, gt_area = inter[real], rows["pred_area"][real], gt_area[real]
        inter, pred_area, gt_area = (x.to(torch.float64) for x in (inter, pred_area, gt_area))
        union = pred_area + gt_area - inter
        present = union > 0  # the class occurs in the prediction or the ground truth of this frame
        iou = torch.where(present, inter / union.clamp(min=1), torch.zeros_like(union))
        prec, rec = inter / pred_area.clamp(min=1), inter / gt_area.clamp(min=1)
        f = torch.where(inter > 0, (1 + BETA2) * prec * rec / (BETA2 * prec + rec).clamp(min=1e-300), 0.0)
        count = present.sum(0)
        seen = count > 0
        iou_pc = torch.where(seen, iou.sum(0) / count.clamp(min=1), torch.zeros(()))
        f_pc = torch.where(seen, f.sum(0) / count.clamp(min=1), torch.zeros(()))
        if self.protocol == "official":
            miou, fscore = iou_pc.mean().item(), f_pc.mean().item()  # all K classes, unseen ones as 0
        else:
            iou_pc, f_pc = (torch.where(seen, x, math.nan) for x in (iou_pc, f_pc))
            miou, fscore = iou_pc[seen].mean().item(), f_pc[seen].mean().item()
        return {
            "protocol": self.protocol,
            "miou": miou,
            "fscore": fscore,
            "num_classes": self.num_classes,
            "num_classes_present": int(seen.sum()),
            "num_frames": int(len(real)) if self.protocol == "official" else int(real.sum()),
            "num_padded_frames": int((~real).sum()),
            "iou_per_class": iou_pc.tolist(),
            "fscore_per_class": f_pc.tolist(),
        }


class FalsePositiveRate:
    """FPR of predictions whose correct answer is the empty mask (module docstring; AVSBench-Robust's metric).

    Args:
        num_classes: 1 for binary logits (foreground = ``sigmoid > 0.5``), K > 1 for semantic logits (foreground =
            argmax not class 0).
    """

    _COLUMNS = ("valid", "positive", "num_pixels")

    def __init__(self, num_classes: int = 1) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self._store = _FrameStore(self._COLUMNS)

    @torch.no_grad()
    def update(
        self, logits: Tensor, valid: Tensor | None = None, video_index: Tensor | Sequence[int] | None = None
    ) -> None:
        """Add one batch: ``logits`` [B, T, K, H, W] (or [B, T, H, W] when K = 1); ``valid`` [B, T] bool frames."""
        logits = logits.detach().to(torch.float32)
        if self.num_classes == 1:
            logits = _clip_tensor(logits, "logits")
            foreground = torch.sigmoid(logits) > 0.5
        else:
            if logits.ndim != 5 or logits.shape[2] != self.num_classes:
                raise ValueError(f"logits must be [B, T, {self.num_classes}, H, W], got {tuple(logits.shape)}")
            foreground = logits.argmax(2) != 0
        B, T, H, W = foreground.shape
        stats = {
            "valid": _frame_flags(valid, B, T, "valid"),
            "positive": foreground.reshape(B * T, H * W).sum(1),
            "num_pixels": torch.full((B * T,), H * W, dtype=torch.int64),
        }
        self._store.add(self._store.video_ids(video_index, B), T, stats)

    def state_dict(self) -> dict[str, Tensor]:
        return self._store.state_dict()

    def merge(self, other: FalsePositiveRate | Mapping[str, Tensor]) -> None:
        self._store.merge(other.state_dict() if isinstance(other, FalsePositiveRate) else other)

    def compute(self) -> dict[str, float | int]:
        """``fpr`` (mean over valid frames of the foreground fraction) and the frame and video counts."""
        rows = self._store.frames()
        if not rows or not rows["valid"].any():
            raise RuntimeError("FalsePositiveRate.compute() called before any valid frame was added")
        valid = rows["valid"]
        rate = rows["positive"][valid].to(torch.float64) / rows["num_pixels"][valid].to(torch.float64)
        return {
            "fpr": rate.mean().item(),
            "num_frames": int(valid.sum()),
            "num_videos": len(torch.unique(rows["video"][valid])),
        }
