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
* :func:`evaluate_run`: re-evaluates a run directory's checkpoint and writes ``eval_{split}.json``.
"""

from __future__ import annotations

import csv
import os
import random
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
from avs_mamba.distributed import DistContext, all_gather_object, barrier, init_distributed, shutdown
from avs_mamba.metrics import BinarySegmentationMetrics, SemanticSegmentationMetrics
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
) -> dict[str, dict[str, Any]]:
    """Metrics of ``model`` over ``loader`` under each protocol, merged over all ranks (every rank gets them).

    Items must carry ``index`` (see :func:`build_split`): it keys each clip in the metric states, so the merged DDP
    result equals the single-process one and the DistributedSampler's padding duplicates are dropped.
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
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    """:func:`evaluate_model` plus the same metrics over each of ``subsets`` (name -> dataset indices, see
    :func:`probe_subsets`), computed from the one pass's per-frame state: (protocol -> metrics, name -> protocol ->
    metrics)."""
    ctx = ctx or DistContext()
    model.eval()
    metrics = {p: _new_metric(task, p, eval_batch_size) for p in protocols}
    for raw in loader:
        batch = to_device(raw, device, num_frames or raw["frames"].shape[1])
        masks = batch["masks"]
        logits = resize_logits(forward_batch(model, batch, device, amp).logits, tuple(masks.shape[-2:]))
        for metric in metrics.values():
            if isinstance(metric, BinarySegmentationMetrics):
                metric.update(logits, masks, valid=batch["label_flags"], video_index=batch["index"])
            else:
                metric.update(logits, masks, frame_flags=batch["frame_flags"], video_index=batch["index"])
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
    return results, by_subset


def metric_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric scalar entries of one protocol's result (lists and labels dropped), for curves and history."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _resolve_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint in ("best", "last"):
        return run_dir / "checkpoints" / f"{checkpoint}.pt"
    return Path(checkpoint)


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
) -> dict[str, Any]:
    """Re-evaluate a trained run's checkpoint on ``split``; writes ``eval_{split}.json`` (or ``out_file``).

    A run without ``metrics.json`` has not finished (stopped, or still training): its ``best.pt`` is only the best of
    the epochs so far, so it is refused unless ``allow_unfinished`` (the record then says ``"run_finished": false``).

    Args:
        run_dir: a directory written by :func:`train` (needs ``config.yaml`` and the checkpoint).
        checkpoint: ``best``, ``last`` or a checkpoint path.
        split: ``test`` or ``val``.
        protocols / eval_batch_size / data_root: override the run's ``eval.protocols``, ``eval.batch_size`` and
            ``data.root``.

    Raises:
        FileNotFoundError: missing run config, checkpoint or dataset.
        CheckpointMismatchError: the checkpoint does not fit the model of the run's config.
    """
    run_dir = Path(run_dir)
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; is {run_dir} a run directory written by `avs-bench train`?")
    config = ExperimentConfig.from_yaml(config_path)
    if protocols is not None:
        config.eval.protocols = list(protocols)  # type: ignore[assignment]  # validated on assignment
    if eval_batch_size is not None:
        config.eval.batch_size = eval_batch_size
    if data_root is not None:
        config.data.root = data_root
    ckpt_path = _resolve_checkpoint(run_dir, checkpoint)
    ckpt = load_checkpoint(ckpt_path)
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
        loader = make_loader(
            dataset,
            config.eval.batch_size,
            ctx=ctx,
            shuffle=False,
            seed=config.train.seed,
            num_workers=config.data.num_workers,
            generator=torch.Generator().manual_seed(config.train.seed),
        )
        subsets = probe_subsets(config, dataset)
        metrics, subset_metrics = evaluate_model_subsets(
            model,
            loader,
            subsets,
            task=config.data.task,
            protocols=list(config.eval.protocols),
            eval_batch_size=config.eval.batch_size,
            device=dev,
            ctx=ctx,
            num_frames=config.data.num_frames,
        )
        record = {
            "run": {
                "dir": str(run_dir),
                "name": config.name,
                "task": config.data.task,
                "seed": config.train.seed,
                "config_hash": config.config_hash(),
            },
            "checkpoint": str(ckpt_path),
            "checkpoint_epoch": ckpt.get("epoch"),
            "run_finished": finished,
            "split": split,
            "metrics": metrics,
            "subsets": subset_metrics,
            "subset_clips": {name: len(ids) for name, ids in subsets.items()},
            "eval": {"batch_size": config.eval.batch_size, "protocols": list(config.eval.protocols)},
            "device": str(dev),
            "world_size": ctx.world_size,
        }
        if ctx.is_main:
            atomic_write_json(Path(out_file) if out_file else run_dir / f"eval_{split}.json", record)
        barrier(ctx)
        return record
    finally:
        shutdown(ctx)
