"""Segmentation losses of the AVS-Mamba recipe (official SitongGong/AVS-Mamba model/criterion_*.py, @91c4fc3a and
@45ad5bc), shared by every model.

Every loss is computed **per frame** and then averaged over the frames that carry a label, given by
``label_flags [B, T]``. That one rule covers the three AVSBench settings:

* S4 train: only frame 1 has a mask, so its flags are ``[1, 0, 0, 0, 0]`` (the official code picks indices
  0, 5, 10, ... of the flattened ``B*T`` predictions, which is the same selection for T = 5);
* MS3: all frames are flagged;
* AVSS: flags mark the supervised frames of zero-padded clips (v1s: frame 0 only, v1m: 5 of 10, v2: all).

Dice follows the official ``F5_Dice_loss``: ``1 - 2*sum(p*g) / (sum(p^2) + 0.001 + sum(g^2) + 0.001)`` with
``p = sigmoid(logits)``, summed over the pixels of a frame. The total is ``sum_name w_name * L_name(final)`` plus
``aux_weight * sum_name w_name * L_name(aux)`` for each auxiliary output (the intermediate mask, weight 1 in
the recipe). Predictions whose size differs from the target are resized bilinearly to it (official MS3 rule).

Two model-specific terms read tensors the model returns in ``AVSOutput.extras`` (final output only, never ``aux``):

* ``avm``: TPAVI's audio-visual matching loss (:func:`avm_loss_per_frame`), from ``avm_audio{i}`` / ``avm_visual{i}``,
  averaged over the labelled frames (``avm_reduction="mean"``, official AVSS) or summed (``"sum"``, official MS3);
* ``mix_dice``: AVSegFormer's mix loss (:func:`mix_dice_loss_per_frame`), from ``mix_map``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from avs_mamba.modules.output import AVSOutput

__all__ = [
    "LOSS_NAMES",
    "LossOutput",
    "avm_loss_per_frame",
    "bce_loss_per_frame",
    "ce_loss_per_frame",
    "dice_loss_per_frame",
    "frame_mean",
    "mix_dice_loss_per_frame",
    "segmentation_loss",
]

LOSS_NAMES = ("dice", "bce", "ce", "avm", "mix_dice")
MODEL_TERMS = ("avm", "mix_dice")  # computed from AVSOutput.extras on the final output
DICE_EPS = 1e-3  # added to each squared sum, as in the official code


def dice_loss_per_frame(logits: Tensor, target: Tensor) -> Tensor:
    """Official soft Dice loss of each frame.

    Args:
        logits: ``[N, 1, H, W]`` mask logits.
        target: ``[N, 1, H, W]`` binary (or soft) ground truth.

    Returns:
        ``[N]`` loss per frame.
    """
    p = logits.sigmoid().flatten(1)
    g = target.to(p.dtype).flatten(1)
    inter = (p * g).sum(-1)
    return 1.0 - 2.0 * inter / ((p * p).sum(-1) + DICE_EPS + (g * g).sum(-1) + DICE_EPS)


def bce_loss_per_frame(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits, averaged over the pixels of each frame.

    Args:
        logits: ``[N, 1, H, W]``.
        target: ``[N, 1, H, W]`` in [0, 1].

    Returns:
        ``[N]``.
    """
    loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return loss.flatten(1).mean(-1)


def ce_loss_per_frame(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Softmax cross-entropy averaged over the non-ignored pixels of each frame (official AVSS loss).

    Args:
        logits: ``[N, K, H, W]`` class logits.
        target: ``[N, H, W]`` class indices; ``ignore_index`` pixels do not count.

    Returns:
        ``[N]``; a frame whose pixels are all ignored contributes 0.
    """
    loss = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="none")  # [N, H, W]
    valid = (target != ignore_index).flatten(1).sum(-1).clamp_min(1)
    return loss.flatten(1).sum(-1) / valid


def avm_loss_per_frame(logits: Tensor, audio: Sequence[Tensor], visual: Sequence[Tensor]) -> Tensor:
    """TPAVI's audio-visual matching loss (L_AVM, KL form) of each frame, averaged over the TPAVI stages.

    Per stage (OpenNLPLab/AVSBench@f7414af:avs_scripts/{avs_ms3,avss}/loss.py, ``A_MaskedV_SimmLoss`` with
    ``kl_flag``): the
    predicted mask, average-pooled to the stage's size, weights the visual map; its spatial mean is a "masked visual"
    vector v, and the loss is ``KL(softmax(a) || softmax(v))`` summed over channels (a: the stage's projected audio).
    The mask is the sigmoid of the pooled logits for K = 1, and the pooled foreground (argmax != background 0) for
    K > 1. Features are not L2-normalised (the official scripts leave ``--norm_fea_flag`` off).

    Args:
        logits: ``[B, T, K, H, W]`` predicted logits.
        audio: per stage, ``[B, T, C]`` projected audio features.
        visual: per stage, ``[B, T, C, h, w]`` visual maps.

    Returns:
        ``[B, T]``.
    """
    B, T, K = logits.shape[:3]
    flat = logits.flatten(0, 1)  # [B*T, K, H, W]
    base = flat if K == 1 else (flat.argmax(1, keepdim=True) != 0).to(flat.dtype)
    per_stage = []
    for a, v in zip(audio, visual, strict=True):
        mask = F.adaptive_avg_pool2d(base, v.shape[-2:])
        if K == 1:
            mask = mask.sigmoid()  # pooled logits, then sigmoid (official order)
        masked = (v.flatten(0, 1) * mask).mean((-2, -1))  # [B*T, C]
        kl = F.kl_div(F.log_softmax(masked, -1), a.flatten(0, 1).softmax(-1), reduction="none").sum(-1)
        per_stage.append(kl)
    return torch.stack(per_stage).mean(0).view(B, T)


def mix_dice_loss_per_frame(mix_map: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """AVSegFormer's mix loss of each frame: the official soft Dice between the channel mean of the mask feature
    (bilinearly resized to the target) and the foreground ``target > 0`` (ignored pixels are background).

    Args:
        mix_map: ``[N, 1, h, w]`` channel mean of the mask feature (read as logits).
        target: ``[N, H, W]`` binary mask or class indices.

    Returns:
        ``[N]``.
    """
    resized = F.interpolate(mix_map, size=target.shape[-2:], mode="bilinear", align_corners=False)
    foreground = ((target > 0) & (target != ignore_index)).unsqueeze(1)
    return dice_loss_per_frame(resized, foreground)


def _model_term(name: str, output: AVSOutput, target: Tensor, ignore_index: int) -> Tensor:
    """The ``[B, T]`` values of a model-specific term, from ``output.extras``."""
    extras = output.extras
    B, T = output.logits.shape[:2]
    if name == "avm":
        stages = sorted(int(m.group(1)) for key in extras if (m := re.fullmatch(r"avm_audio(\d+)", key)))
        if not stages or any(f"avm_visual{i}" not in extras for i in stages):
            raise ValueError(
                f"loss term 'avm' needs AVSOutput.extras 'avm_audio{{i}}' and 'avm_visual{{i}}' for each TPAVI stage "
                f"(TPAVI returns them); this model's output has extras {sorted(extras)}"
            )
        audio = [extras[f"avm_audio{i}"] for i in stages]
        visual = [extras[f"avm_visual{i}"] for i in stages]
        return avm_loss_per_frame(output.logits, audio, visual)
    if "mix_map" not in extras:
        raise ValueError(
            f"loss term 'mix_dice' needs AVSOutput.extras 'mix_map' [B, T, 1, h, w] (AVSegFormer returns it); "
            f"this model's output has extras {sorted(extras)}"
        )
    mix_map = extras["mix_map"]
    return mix_dice_loss_per_frame(mix_map.flatten(0, 1), target.flatten(0, 1), ignore_index).view(B, T)


def frame_mean(per_frame: Tensor, label_flags: Tensor) -> Tensor:
    """Mean of ``per_frame [B, T]`` over the frames flagged in ``label_flags [B, T]``."""
    flags = label_flags.to(per_frame.dtype)
    count = flags.sum()
    if count.item() == 0:
        raise ValueError("label_flags select no frame: every frame of the batch is unlabelled; the loss is undefined")
    return (per_frame * flags).sum() / count


@dataclass
class LossOutput:
    """Total loss (for ``backward``) and its parts as floats (for logging)."""

    total: Tensor
    parts: dict[str, float]


def _check_weights(weights: Mapping[str, float], num_classes: int) -> None:
    unknown = sorted(set(weights) - set(LOSS_NAMES))
    if unknown:
        raise ValueError(f"unknown loss name(s) {unknown} in loss weights; valid names: {list(LOSS_NAMES)}")
    if not any(w != 0 for w in weights.values()):
        raise ValueError(f"loss weights {dict(weights)} are all zero; give at least one non-zero weight")
    binary = {"dice", "bce"} & {k for k, w in weights.items() if w != 0}
    if num_classes == 1 and weights.get("ce", 0) != 0:
        raise ValueError("loss 'ce' needs K > 1 classes, but the logits have K = 1; use 'dice' or 'bce' for S4/MS3")
    if num_classes > 1 and binary:
        raise ValueError(f"losses {sorted(binary)} need K = 1 (binary masks), but the logits have K = {num_classes}")


def _per_frame_losses(
    logits: Tensor, target: Tensor, weights: Mapping[str, float], ignore_index: int
) -> dict[str, Tensor]:
    """Each weighted loss of one prediction ``[B, T, K, H, W]`` as a ``[B, T]`` tensor."""
    B, T, K, H, W = logits.shape
    flat = logits.flatten(0, 1)  # [B*T, K, H, W]
    size = target.shape[-2:]
    if flat.shape[-2:] != size:
        flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    out: dict[str, Tensor] = {}
    for name, w in weights.items():
        if w == 0 or name in MODEL_TERMS:
            continue
        if name == "ce":
            loss = ce_loss_per_frame(flat, target.reshape(B * T, *size), ignore_index)
        else:
            binary = target.reshape(B * T, 1, *size)
            loss = dice_loss_per_frame(flat, binary) if name == "dice" else bce_loss_per_frame(flat, binary)
        out[name] = loss.view(B, T)
    return out


def segmentation_loss(
    output: AVSOutput,
    target: Tensor,
    label_flags: Tensor | None = None,
    weights: Mapping[str, float] | None = None,
    aux_weight: float = 1.0,
    ignore_index: int = 255,
    avm_reduction: str = "mean",
) -> LossOutput:
    """Recipe loss of a model output.

    Args:
        output: logits ``[B, T, K, H, W]`` and auxiliary logits of the same shape.
        target: binary masks ``[B, T, H', W']`` or ``[B, T, 1, H', W']`` (K = 1), or class indices
            ``[B, T, H', W']`` (K > 1). Unlabelled frames may hold anything; they are not read.
        label_flags: ``[B, T]`` bool, True where the frame carries a label; None means every frame.
        weights: loss name -> weight, names among ``LOSS_NAMES``; default ``{"dice": 1.0}`` (AVS-Mamba S4/MS3).
            ``avm`` and ``mix_dice`` apply to the final output only and read ``output.extras``.
        aux_weight: weight of each auxiliary output's loss (the recipe's ``interm`` weight, 1).
        ignore_index: target value ignored by ``ce``.
        avm_reduction: ``"mean"`` (over the labelled frames, official AVSS) or ``"sum"`` (official MS3, whose
            ``kl_div(..., reduction='sum')`` sums over the batch's frames) for the ``avm`` term.

    Returns:
        ``LossOutput`` whose parts are ``{name}`` for the final output, ``aux{i}_{name}`` for the auxiliary
        ones, and ``total``.
    """
    weights = {"dice": 1.0} if weights is None else dict(weights)
    if avm_reduction not in ("mean", "sum"):
        raise ValueError(f"avm_reduction must be 'mean' or 'sum', got {avm_reduction!r}")
    logits = output.logits
    if logits.dim() != 5:
        raise ValueError(f"output.logits must be [B, T, K, H, W], got shape {tuple(logits.shape)}")
    B, T, K = logits.shape[:3]
    _check_weights(weights, K)
    if target.dim() == 5:
        if target.shape[2] != 1:
            raise ValueError(f"a 5-D target must be [B, T, 1, H, W], got shape {tuple(target.shape)}")
        target = target[:, :, 0]
    if target.dim() != 4 or tuple(target.shape[:2]) != (B, T):
        raise ValueError(f"target must be [B={B}, T={T}, H, W], got shape {tuple(target.shape)}")
    if label_flags is None:
        label_flags = torch.ones(B, T, dtype=torch.bool, device=logits.device)
    elif tuple(label_flags.shape) != (B, T):
        raise ValueError(f"label_flags must be [B={B}, T={T}], got shape {tuple(label_flags.shape)}")

    parts: dict[str, Tensor] = {}
    total = logits.new_zeros(())
    for prefix, pred, scale in [("", logits, 1.0)] + [(f"aux{i}_", a, aux_weight) for i, a in enumerate(output.aux)]:
        if pred.shape != logits.shape:
            raise ValueError(
                f"auxiliary output {prefix[:-1]} has shape {tuple(pred.shape)}, expected {tuple(logits.shape)}"
            )
        for name, per_frame in _per_frame_losses(pred, target, weights, ignore_index).items():
            value = frame_mean(per_frame, label_flags)
            parts[prefix + name] = value
            total = total + scale * weights[name] * value
    for name in MODEL_TERMS:
        if weights.get(name, 0) != 0:
            per_frame = _model_term(name, output, target, ignore_index)
            if name == "avm" and avm_reduction == "sum":
                value = frame_mean(per_frame, label_flags) * label_flags.sum()  # the sum over the labelled frames
            else:
                value = frame_mean(per_frame, label_flags)
            parts[name] = value
            total = total + weights[name] * value
    parts["total"] = total
    return LossOutput(total=total, parts={k: float(v.detach()) for k, v in parts.items()})
