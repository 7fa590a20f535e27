"""Data loading and evaluation shared by training and by re-evaluating a finished run.

* Loaders: the task's dataset under ``data.root`` (or its AVSBench-named subfolder), capped at ``data.max_clips``,
  every item carrying its ``index`` in the split; a ``DistributedSampler`` in every case, so the order depends only
  on (seed, epoch) and a one-process run is the one-rank special case of DDP.
* :func:`evaluate_model`: streaming metric accumulators (:mod:`avs_mamba.metrics`) per protocol; logits are resized
  (bilinear) to the ground-truth size first; under DDP the accumulator states of all ranks are gathered and merged by
  dataset index, which reproduces the single-process numbers exactly (padding duplicates dropped).
* Probe subsets (:func:`probe_subsets`): on the synthetic data, ``synth_clips.csv`` says per clip whether it is
  temporal-hard, holds a silent distractor, or switches sources on and off; :func:`evaluate_model` scores each
  subset beside the whole split from the same per-frame metric state (no second forward pass). Under the official
  protocol a subset is batched as if it were evaluated alone (its clips in split order, ``eval_batch_size`` per batch).
  Real AVSBench has no such file and no subsets.
* :func:`evaluate_run`: re-evaluates a run directory's checkpoint and writes ``eval_{split}.json``, scoring the data
  the run was trained on (its absolute root and digest, recorded by training) unless told otherwise, and recording
  the root and digest of the data it scored; with
  ``audio_conditions`` it also runs the audio-reliance protocol (:mod:`avs_mamba.robustness`: each condition is the
  same evaluation with the clips' audio replaced) and adds its ``robustness`` block to the run's ``metrics.json``.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from avs_mamba.checkpointing import atomic_write_json, load_checkpoint, load_model_state
from avs_mamba.config import ExperimentConfig
from avs_mamba.data.avsbench import NUM_CLASSES, AVSSDataset, DatasetError, MS3Dataset, S4Dataset, build_dataset
from avs_mamba.data.provenance import data_provenance
from avs_mamba.distributed import DistContext, all_gather_object, barrier, init_distributed, shutdown
from avs_mamba.masks import hard_masks, mask_file_name, save_mask
from avs_mamba.metrics import BinarySegmentationMetrics, FalsePositiveRate, SemanticSegmentationMetrics
from avs_mamba.modules.output import AVSOutput

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "TASK_DIRS",
    "IndexedDataset",
    "seed_everything",
    "dataset_root",
    "build_split",
    "scan_splits",
    "make_loader",
    "to_device",
    "forward_batch",
    "resize_logits",
    "scan_backend_name",
    "evaluate_model",
    "evaluate_model_subsets",
    "PROBE_SUBSETS",
    "SYNTH_CLIPS_FILE",
    "clip_names",
    "subset_of_row",
    "probe_subsets",
    "metric_scalars",
    "load_run",
    "clip_folder_name",
    "run_data_root",
    "evaluate_run",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"  # written by the engine when a run has finished
# Folder of each task under a data root, as AVSBench ships them (and as `avs-bench synth` writes them).
TASK_DIRS = {"s4": "Single-source", "ms3": "Multi-sources", "avss": "AVSS"}
_CSV = {"s4": S4Dataset.csv_name, "ms3": MS3Dataset.csv_name, "avss": AVSSDataset.csv_name}
# Per-clip facts the synthetic generator writes beside each task root (avs_mamba.data.synthetic).
SYNTH_CLIPS_FILE = "synth_clips.csv"
# Probe subsets of the synthetic data: what each one holds, i.e. where a component should matter.
PROBE_SUBSETS = {
    "temporal_hard": "clips with a same-class silent twin of a source: only motion in step with the audio tells them "
    "apart (temporal modelling)",
    "distractor": "clips with a silent object of a class that sounds nowhere in the clip (audio needed)",
    "switching": "clips whose set of sounding sources changes from one second to the next (MS3 on/off)",
}


# ----------------------------------------------------------------------------------------------------------------
# Seeding and data


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also ask torch for deterministic kernels.

    ``warn_only`` keeps ops without a deterministic implementation usable (they warn instead of failing).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (CUDA >= 10.2)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive NumPy's and Python's seeds from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def dataset_root(config: ExperimentConfig) -> Path:
    """The task's dataset root: ``data.root`` itself when it holds the task's metadata CSV, else its AVSBench-named
    subfolder (``Single-source``, ``Multi-sources``, ``AVSS``).

    Raises:
        FileNotFoundError: neither exists; the message says how to create or obtain the data.
    """
    task, root = config.data.task, Path(config.data.root)
    if (root / _CSV[task]).is_file():
        return root
    sub = root / TASK_DIRS[task]
    if (sub / _CSV[task]).is_file():
        return sub
    if config.data.synthetic:
        # synth writes <out>/<task folder>: data.root naming the task folder itself means out is its parent
        out = root.parent if root.name == TASK_DIRS[task] else root
        how = f"create it with `avs-bench synth --task {task} --out {out}`"
    else:
        how = "download AVSBench (http://www.avlbench.opennlplab.cn) and unpack it there, or set data.root"
    raise FileNotFoundError(f"{task} dataset not found: expected {sub / _CSV[task]} (or {root / _CSV[task]}); {how}")


class IndexedDataset(Dataset):
    """Adds ``index`` (the position in the split) to each item: metric accumulators key frames by it under DDP."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "index": index}


def build_split(config: ExperimentConfig, split: str) -> Dataset:
    """The ``split`` dataset of the run (capped at ``data.max_clips``), its items carrying their ``index``.

    Only the train split gets ``data.augment`` and ``data.train_mask_resize``; val and test are never augmented."""
    options: dict[str, Any] = {"off_palette": config.data.off_palette} if config.data.task == "avss" else {}
    if split == "train":
        options.update(train_augment=config.data.augment.build(), train_mask_resize=config.data.train_mask_resize)
    dataset = build_dataset(
        config.data.task,
        dataset_root(config),
        split,
        image_size=config.data.image_size,
        audio_source=config.data.audio_source,
        seed=config.train.seed,
        **options,
    )
    if len(dataset) == 0:
        raise ValueError(f"the {split} split of {dataset.root} has no clips; check the metadata CSV's split column")
    if config.data.max_clips is not None and len(dataset) > config.data.max_clips:
        dataset = Subset(dataset, range(config.data.max_clips))
    return IndexedDataset(dataset)


def scan_splits(config: ExperimentConfig, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
    """Scan every clip the run will read (file counts, image headers and sizes, audio files) before the first step,
    so a bad val/test file stops the run now instead of after the whole schedule.

    Raises:
        DatasetError: the first problem, with how many there are and the ``data check`` command that lists them.
    """
    problems: list[Any] = []
    root = dataset_root(config)
    for split in splits:
        dataset = build_dataset(config.data.task, root, split, audio_source=config.data.audio_source)
        limit = len(dataset) if config.data.max_clips is None else min(len(dataset), config.data.max_clips)
        for index in range(limit):
            problems.extend(dataset.scan_problems(index))
    if problems:
        first = problems[0]
        raise DatasetError(
            f"{first.detail} ({len(problems)} problem(s) in the clips this run reads, found before training; "
            f"`avs-bench data check {root} --task {config.data.task}` lists them all)",
            kind=first.kind,
            path=first.path,
        )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    ctx: DistContext,
    shuffle: bool,
    seed: int,
    num_workers: int,
    generator: torch.Generator,
    pin_memory: bool = False,
) -> DataLoader:
    """DistributedSampler in every case: shuffling is seeded by (seed, epoch), identical with one or many ranks."""
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=_worker_init,
        generator=generator,
        pin_memory=pin_memory,
    )


def to_device(batch: Mapping[str, Any], device: torch.device, num_frames: int) -> dict[str, Any]:
    """Tensors to ``device``, clips cut to the config's ``num_frames`` (fewer frames for scaling studies)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor):
            value = value.to(device, non_blocking=True)
            if key in ("frames", "audio", "masks", "frame_flags", "label_flags"):
                value = value[:, :num_frames]
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# Model helpers


def scan_backend_name(config: ExperimentConfig, device: torch.device) -> str:
    """The selective-scan backend the run uses (``auto`` resolved for ``device``); ``none`` for scan-free models."""
    scan = config.model.options.get("scan")
    if not isinstance(scan, Mapping):
        return "none"
    from avs_mamba.ops.selective_scan import resolve_backend

    return resolve_backend(str(scan.get("backend", "auto")), torch.empty(0, device=device))


def forward_batch(model: nn.Module, batch: Mapping[str, Any], device: torch.device, amp: bool) -> AVSOutput:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        out = model(batch["frames"], batch["audio"], frame_flags=batch["frame_flags"])
    # losses and metrics in float32 whatever the autocast dtype
    extras = {key: value.float() for key, value in out.extras.items()}
    return AVSOutput(logits=out.logits.float(), aux=[a.float() for a in out.aux], extras=extras)


def resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, T, K, H, W]`` -> ``[B, T, K, *size]`` (bilinear), when the model ran at another size than the masks."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    B, T = logits.shape[:2]
    resized = F.interpolate(logits.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
    return resized.view(B, T, *resized.shape[1:])


# ----------------------------------------------------------------------------------------------------------------
# Probe subsets


def clip_names(dataset: Dataset) -> list[str]:
    """Clip id of every item of a split built by :func:`build_split`, in index order (no file is read)."""
    base, indices = dataset, None
    while not hasattr(base, "clip_spec"):
        if isinstance(base, Subset):
            inner = list(base.indices)
            indices = inner if indices is None else [inner[i] for i in indices]
        if not hasattr(base, "dataset"):
            raise TypeError(f"{type(dataset).__name__} does not wrap an AVSBench dataset; cannot name its clips")
        base = base.dataset
    order = range(len(base)) if indices is None else indices  # type: ignore[arg-type]
    return [str(base.clip_spec(i).clip_id) for i in order]


def subset_of_row(row: Mapping[str, str]) -> set[str]:
    """The probe subsets (keys of :data:`PROBE_SUBSETS`) one ``synth_clips.csv`` row belongs to.

    ``silent`` lists every silent object by class name, the twin of a temporal-hard pair included, so a distractor
    is a silent object whose class is not among the sources; ``on`` holds one 0/1 string per source (``|``-joined),
    so the clip switches when two seconds differ in which sources are on.
    """
    subsets: set[str] = set()
    if str(row["temporal_hard"]).strip() == "1":
        subsets.add("temporal_hard")
    sources = set(filter(None, row["sources"].split("_")))
    if any(name and name not in sources for name in row["silent"].split("_")):
        subsets.add("distractor")
    patterns = [p for p in row["on"].split("|") if p]
    if patterns and len({tuple(p[k] for p in patterns) for k in range(len(patterns[0]))}) > 1:
        subsets.add("switching")
    return subsets


def probe_subsets(config: ExperimentConfig, dataset: Dataset) -> dict[str, list[int]]:
    """Dataset indices of each non-empty probe subset of ``dataset`` (one split of the run's task).

    Empty when the task root has no ``synth_clips.csv`` (real AVSBench). A synthetic root whose CSV lacks a clip of
    the split, or the expected columns, is an error: the subsets would silently be wrong.
    """
    path = dataset_root(config) / SYNTH_CLIPS_FILE
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    needed = {"name", "temporal_hard", "sources", "silent", "on"}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(f"{path}: expected the columns {sorted(needed)} written by `avs-bench synth`")
    by_name = {row["name"]: subset_of_row(row) for row in rows}
    names = clip_names(dataset)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f"{path} lists no row for {len(missing)} clip(s) of the split, e.g. {missing[:3]}; "
            "re-run `avs-bench synth` for this data root"
        )
    subsets: dict[str, list[int]] = {}
    for name in PROBE_SUBSETS:
        members = [i for i, clip in enumerate(names) if name in by_name[clip]]
        if members:
            subsets[name] = members
    return subsets


def _subset_state(state: Mapping[str, Tensor], videos: Sequence[int]) -> dict[str, Tensor]:
    """The rows of a metric ``state_dict`` that belong to the clips ``videos`` (dataset indices)."""
    keep = torch.isin(state["video"], torch.as_tensor(list(videos), dtype=torch.int64))
    return {k: (v if v.ndim == 0 else v[keep]) for k, v in state.items()}


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def _new_metric(
    task: str, protocol: str, eval_batch_size: int
) -> BinarySegmentationMetrics | SemanticSegmentationMetrics:
    if NUM_CLASSES[task] == 1:
        return BinarySegmentationMetrics(protocol, eval_batch_size)  # type: ignore[arg-type]
    return SemanticSegmentationMetrics(protocol, num_classes=NUM_CLASSES[task])  # type: ignore[arg-type]


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    *,
    task: str,
    protocols: list[str],
    eval_batch_size: int,
    device: torch.device,
    ctx: DistContext | None = None,
    num_frames: int | None = None,
    amp: bool = False,
    fpr: bool = False,
    mask_dir: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics of ``model`` over ``loader`` under each protocol, merged over all ranks (every rank gets them).

    Items must carry ``index`` (see :func:`build_split`): it keys each clip in the metric states, so the merged DDP
    result equals the single-process one and the DistributedSampler's padding duplicates are dropped.

    Args:
        fpr: also score the false-positive rate against the empty mask (:class:`~avs_mamba.metrics.FalsePositiveRate`,
            over the real frames), returned under the key ``"fpr"``: for inputs whose correct answer is empty.
        mask_dir: write each clip's hard masks (:mod:`avs_mamba.masks`, at the ground-truth size) to
            ``mask_dir/{clip}/{0001..}.png``, real frames only.
    """
    return evaluate_model_subsets(
        model,
        loader,
        {},
        task=task,
        protocols=protocols,
        eval_batch_size=eval_batch_size,
        device=device,
        ctx=ctx,
        num_frames=num_frames,
        amp=amp,
        fpr=fpr,
        mask_dir=mask_dir,
    )[0]


@torch.no_grad()
def evaluate_model_subsets(
    model: nn.Module,
    loader: DataLoader,
    subsets: Mapping[str, Sequence[int]],
    *,
    task: str,
    protocols: list[str],
    eval_batch_size: int,
    device: torch.device,
    ctx: DistContext | None = None,
    num_frames: int | None = None,
    amp: bool = False,
    fpr: bool = False,
    mask_dir: str | Path | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    """:func:`evaluate_model` plus the same metrics over each of ``subsets`` (name -> dataset indices, see
    :func:`probe_subsets`), computed from the one pass's per-frame state: (protocol -> metrics, name -> protocol ->
    metrics)."""
    ctx = ctx or DistContext()
    model.eval()
    metrics = {p: _new_metric(task, p, eval_batch_size) for p in protocols}
    false_positives = FalsePositiveRate(NUM_CLASSES[task]) if fpr else None
    for raw in loader:
        batch = to_device(raw, device, num_frames or raw["frames"].shape[1])
        masks = batch["masks"]
        logits = resize_logits(forward_batch(model, batch, device, amp).logits, tuple(masks.shape[-2:]))
        for metric in metrics.values():
            if isinstance(metric, BinarySegmentationMetrics):
                metric.update(logits, masks, valid=batch["label_flags"], video_index=batch["index"])
            else:
                metric.update(logits, masks, frame_flags=batch["frame_flags"], video_index=batch["index"])
        if false_positives is not None:
            false_positives.update(logits, valid=batch["frame_flags"], video_index=batch["index"])
        if mask_dir is not None:
            _save_batch_masks(Path(mask_dir), logits, batch, NUM_CLASSES[task])
    results: dict[str, dict[str, Any]] = {}
    by_subset: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in subsets}
    for protocol, metric in metrics.items():
        merged = _new_metric(task, protocol, eval_batch_size)
        for state in all_gather_object(ctx, metric.state_dict()):
            merged.merge(state)
        results[protocol] = merged.compute()
        full_state = merged.state_dict()
        for name, videos in subsets.items():
            part = _new_metric(task, protocol, eval_batch_size)
            part.merge(_subset_state(full_state, videos))
            by_subset[name][protocol] = part.compute()
    if false_positives is not None:
        merged_fpr = FalsePositiveRate(NUM_CLASSES[task])
        for state in all_gather_object(ctx, false_positives.state_dict()):
            merged_fpr.merge(state)
        results["fpr"] = merged_fpr.compute()
    return results, by_subset


def clip_folder_name(clip_id: str) -> str:
    """A clip id as a file-system-safe folder name (the overlays use the same rule)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(clip_id))


def _save_batch_masks(folder: Path, logits: Tensor, batch: Mapping[str, Any], num_classes: int) -> None:
    hard = hard_masks(logits).cpu()
    flags = batch["frame_flags"].cpu()
    for b, clip_id in enumerate(batch["id"]):
        for t in range(hard.shape[1]):
            if flags[b, t]:
                save_mask(folder / clip_folder_name(clip_id) / mask_file_name(t), hard[b, t], num_classes)


def metric_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric scalar entries of one protocol's result (lists and labels dropped), for curves and history."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _resolve_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint in ("best", "last"):
        return run_dir / "checkpoints" / f"{checkpoint}.pt"
    return Path(checkpoint)


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[ExperimentConfig, Path, dict[str, Any]]:
    """A run directory's resolved config, checkpoint path and loaded checkpoint (``best``, ``last`` or a path).

    Raises:
        FileNotFoundError: no ``config.yaml`` in ``run_dir``, or no such checkpoint.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; is {run_dir} a run directory written by `avs-bench train`?")
    config = ExperimentConfig.from_yaml(config_path)
    ckpt_path = _resolve_checkpoint(run_dir, checkpoint)
    return config, ckpt_path, load_checkpoint(ckpt_path)


def _robustness_record(
    split: str,
    results: Mapping[str, Mapping[str, Any]],
    protocols: Sequence[str],
    *,
    seed: int,
    noise_dbfs: float,
    pairs_file: str | None,
    pairs: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    from avs_mamba.robustness import robustness_summary

    conditions = {
        condition: {key: metric_scalars(value) for key, value in metrics.items()}
        for condition, metrics in results.items()
    }
    block: dict[str, Any] = {
        "split": split,
        "conditions": conditions,
        "summary": robustness_summary(conditions, protocols),
        "seed": seed,
        "definitions": "FPR: mean foreground fraction per frame under negative audio (AVSBench-Robust "
        "calculate_FPR); G-FPR: mean FPR over the negative conditions; G-mIoU / G-F: harmonic mean of the original "
        "audio's M_J / M_F and 1 - G-FPR (avs_mamba.robustness)",
    }
    if "noise" in results:
        block["noise"] = {"distribution": "uniform white", "level_dbfs_rms": noise_dbfs, "seed": seed}
    if pairs is not None:
        constraints = [p["constraint"] for p in pairs]
        block["swap"] = {
            "pairs_file": pairs_file,
            "seed": seed,
            "constraints": {c: constraints.count(c) for c in sorted(set(constraints))},
        }
    return block


def _add_to_metrics_file(run_dir: Path, split: str, block: Mapping[str, Any]) -> Path | None:
    """Put ``block`` under ``robustness.{split}`` of the run's ``metrics.json`` (other keys kept); None if absent.

    The file keeps its modification time: the block adds to the training record without changing any of it, so
    what was built from the training results (workflow tables) stays up to date.
    """
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    stamp = path.stat()
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); cannot add the robustness results to it") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(record).__name__}")
    robustness = record.get("robustness") if isinstance(record.get("robustness"), dict) else {}
    record["robustness"] = {**robustness, split: dict(block)}
    atomic_write_json(path, record)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    return path


def _robustness_metrics(split: str, block: Mapping[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics of a robustness block: ``robustness/{split}/{condition}/{protocol}/miou`` etc."""
    flat: dict[str, float] = {}
    for condition, values in block["conditions"].items():
        for key, metrics in values.items():
            names = ("fpr",) if key == "fpr" else ("miou", "fscore")
            flat.update({f"robustness/{split}/{condition}/{key}/{m}": float(metrics[m]) for m in names if m in metrics})
    for protocol, summary in block["summary"].items():
        flat.update({f"robustness/{split}/{protocol}/{k}": float(summary[k]) for k in ("g_fpr", "g_miou", "g_fscore")})
    return {k: v for k, v in flat.items() if v == v}  # NaN is not logged


def run_data_root(run_dir: Path, config: ExperimentConfig, recorded: Mapping[str, Any] | None) -> str:
    """Where a run's data is: the absolute root its training recorded, or the config's ``data.root`` when that is
    absolute. A relative root without a record would be read against the current directory, which may hold other
    data, so it is refused.

    Raises:
        FileNotFoundError: the recorded root is gone.
        ValueError: the root is relative and unrecorded.
    """
    if recorded is not None:
        root = Path(recorded["root"])
        if not root.is_dir():
            raise FileNotFoundError(
                f"{run_dir} was trained on the data under {root}, which is gone; pass --data-root to score it on a "
                "copy of that data"
            )
        return str(root)
    if Path(config.data.root).is_absolute():
        return config.data.root
    raise ValueError(
        f"{run_dir} names its data by the relative path {config.data.root!r} and does not record the directory "
        "training ran in, so it is ambiguous; pass --data-root with the data's location"
    )


def evaluate_run(
    run_dir: str | Path,
    *,
    checkpoint: str = "best",
    split: str = "test",
    protocols: list[str] | None = None,
    eval_batch_size: int | None = None,
    device: str = "auto",
    data_root: str | None = None,
    out_file: str | Path | None = None,
    allow_unfinished: bool = False,
    audio_conditions: Sequence[str] | None = None,
    noise_dbfs: float | None = None,
    condition_seed: int = 0,
    mask_dir: str | Path | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Re-evaluate a trained run's checkpoint on ``split``; writes ``eval_{split}.json`` (or ``out_file``).

    A run without ``metrics.json`` has not finished (stopped, or still training): its ``best.pt`` is only the best of
    the epochs so far, so it is refused unless ``allow_unfinished`` (the record then says ``"run_finished": false``).

    Args:
        run_dir: a directory written by :func:`train` (needs ``config.yaml`` and the checkpoint).
        checkpoint: ``best``, ``last`` or a checkpoint path.
        split: ``test`` or ``val``.
        protocols / eval_batch_size: override the run's ``eval.protocols`` and ``eval.batch_size``.
        data_root: the data to score; default: the run's own (:func:`run_data_root`). The record's ``data`` says
            which root and digest were scored and whether they match the training data (``matches_training``).
        audio_conditions: audio-reliance conditions (:data:`avs_mamba.robustness.CONDITIONS`); ``original`` is always
            evaluated with them. The record gets a ``robustness`` block, also written into the run's
            ``metrics.json`` under ``robustness.{split}`` (when the run has one), the swap pairing to
            ``robustness_{split}_pairs.json``, and the scores to the run's MLflow run when ``tracking_uri`` is given.
        noise_dbfs / condition_seed: RMS level of the ``noise`` condition and the seed of noise and pairing.
        mask_dir: write every clip's hard masks there (``{condition}/`` subfolders with ``audio_conditions``).

    Raises:
        FileNotFoundError: missing run config, checkpoint or dataset.
        ValueError: the run's data root is ambiguous, or its data changed since training (without ``data_root``).
        CheckpointMismatchError: the checkpoint does not fit the model of the run's config.
    """
    from avs_mamba.robustness import DEFAULT_NOISE_DBFS, ConditionedAudio, condition_list, swap_pairing

    run_dir = Path(run_dir)
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    conditions = condition_list(audio_conditions) if audio_conditions else None
    noise_dbfs = DEFAULT_NOISE_DBFS if noise_dbfs is None else float(noise_dbfs)
    config, ckpt_path, ckpt = load_run(run_dir, checkpoint)
    if protocols is not None:
        config.eval.protocols = list(protocols)  # type: ignore[assignment]  # validated on assignment
    if eval_batch_size is not None:
        config.eval.batch_size = eval_batch_size
    trained_on = ckpt.get("data")
    config.data.root = data_root if data_root is not None else run_data_root(run_dir, config, trained_on)
    data = data_provenance(dataset_root(config), config.data.task)
    data["matches_training"] = None if trained_on is None else data["digest"] == trained_on["digest"]
    if data["matches_training"] is False and data_root is None:
        raise ValueError(
            f"the data under {data['root']} changed since {run_dir} was trained on it (digest "
            f"{trained_on['digest'][:12]}, now {data['digest'][:12]}); pass --data-root {data['root']} to score the "
            "run on it anyway"
        )
    finished = (run_dir / METRICS_FILE).is_file()
    if not finished:
        epoch = ckpt.get("epoch")
        state = f"{ckpt_path.name} is from epoch {epoch + 1}" if isinstance(epoch, int) else f"{ckpt_path} is partial"
        detail = f"{run_dir} has not finished training (no {METRICS_FILE}: stopped or still running); {state}"
        if not allow_unfinished:
            raise ValueError(
                f"{detail}. Finish it by rerunning its `avs-bench train` command, or pass --allow-unfinished "
                "to score this checkpoint anyway"
            )
        print(f"[avs-bench] warning: {detail}; scoring it as asked (--allow-unfinished)", file=sys.stderr)

    ctx, dev = init_distributed(device)
    try:
        seed_everything(config.train.seed)
        model = config.build_model().to(dev)
        load_model_state(model, ckpt["model"], ckpt_path)
        dataset = build_split(config, split)
        pairs = swap_pairing(dataset, condition_seed) if conditions and "swapped" in conditions else None

        subsets = probe_subsets(config, dataset)  # synthetic data only; {} on real AVSBench

        def run(condition: str | None) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
            data = dataset
            if condition not in (None, "original"):
                data = ConditionedAudio(dataset, condition, seed=condition_seed, noise_dbfs=noise_dbfs, pairs=pairs)
            loader = make_loader(
                data,
                config.eval.batch_size,
                ctx=ctx,
                shuffle=False,
                seed=config.train.seed,
                num_workers=config.data.num_workers,
                generator=torch.Generator().manual_seed(config.train.seed),
            )
            masks = None if mask_dir is None else Path(mask_dir) / (condition or "")
            return evaluate_model_subsets(
                model,
                loader,
                subsets if condition in (None, "original") else {},
                task=config.data.task,
                protocols=list(config.eval.protocols),
                eval_batch_size=config.eval.batch_size,
                device=dev,
                ctx=ctx,
                num_frames=config.data.num_frames,
                fpr=condition not in (None, "original"),
                mask_dir=masks,
            )

        scored = {c: run(c) for c in conditions} if conditions else {}
        metrics, subset_metrics = scored["original"] if conditions else run(None)
        by_condition = {c: whole for c, (whole, _) in scored.items()}
        record = {
            "run": {
                "dir": str(run_dir),
                "name": config.name,
                "task": config.data.task,
                "seed": config.train.seed,
                "config_hash": config.config_hash(),
            },
            "checkpoint": str(ckpt_path),
            "checkpoint_epoch": None if ckpt.get("epoch") is None else ckpt["epoch"] + 1,  # 1-based
            "run_finished": finished,
            "split": split,
            "data": data,
            "metrics": metrics,
            "subsets": subset_metrics,
            "subset_clips": {name: len(ids) for name, ids in subsets.items()},
            "eval": {"batch_size": config.eval.batch_size, "protocols": list(config.eval.protocols)},
            "device": str(dev),
            "world_size": ctx.world_size,
        }
        if conditions:
            pairs_file = f"robustness_{split}_pairs.json" if pairs is not None else None
            block = _robustness_record(
                split,
                by_condition,
                list(config.eval.protocols),
                seed=condition_seed,
                noise_dbfs=noise_dbfs,
                pairs_file=pairs_file,
                pairs=pairs,
            )
            block["checkpoint"] = str(ckpt_path)
            record["robustness"] = block
        if ctx.is_main:
            if conditions:
                if pairs is not None:
                    atomic_write_json(run_dir / pairs_file, {"seed": condition_seed, "split": split, "pairs": pairs})
                if _add_to_metrics_file(run_dir, split, block) is None:
                    print(
                        f"[avs-bench] {run_dir} has no metrics.json; robustness results only in the eval file",
                        file=sys.stderr,
                    )
                if tracking_uri is not None:
                    from avs_mamba.tracking import log_to_finished_run

                    if log_to_finished_run(tracking_uri, config, _robustness_metrics(split, block)) is None:
                        print(
                            f"[avs-bench] no finished MLflow run of {config.name} seed {config.train.seed} in "
                            f"{tracking_uri}; robustness metrics not logged there",
                            file=sys.stderr,
                        )
            atomic_write_json(Path(out_file) if out_file else run_dir / f"eval_{split}.json", record)
        barrier(ctx)
        return record
    finally:
        shutdown(ctx)
