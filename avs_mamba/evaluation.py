"""Data loading and evaluation shared by training and by re-evaluating a finished run.

* Loaders: the task's dataset under ``data.root`` (or its AVSBench-named subfolder), capped at ``data.max_clips``,
  every item carrying its ``index`` in the split; a ``DistributedSampler`` in every case, so the order depends only
  on (seed, epoch) and a one-process run is the one-rank special case of DDP.
* :func:`evaluate_model`: streaming metric accumulators (:mod:`avs_mamba.metrics`) per protocol; logits are resized
  (bilinear) to the ground-truth size first; under DDP the accumulator states of all ranks are gathered and merged by
  dataset index, which reproduces the single-process numbers exactly (padding duplicates dropped).
* :func:`evaluate_run`: re-evaluates a run directory's checkpoint and writes ``eval_{split}.json``, scoring the data
  the run was trained on (its absolute root and digest, recorded by training) unless told otherwise, and recording
  the root and digest of the data it scored.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from avs_mamba.checkpointing import atomic_write_json, load_checkpoint, load_model_state
from avs_mamba.config import ExperimentConfig
from avs_mamba.data.avsbench import NUM_CLASSES, AVSSDataset, MS3Dataset, S4Dataset, build_dataset
from avs_mamba.data.provenance import data_provenance
from avs_mamba.distributed import DistContext, all_gather_object, barrier, init_distributed, shutdown
from avs_mamba.metrics import BinarySegmentationMetrics, SemanticSegmentationMetrics
from avs_mamba.modules.output import AVSOutput

__all__ = [
    "CONFIG_FILE",
    "TASK_DIRS",
    "IndexedDataset",
    "seed_everything",
    "dataset_root",
    "build_split",
    "make_loader",
    "to_device",
    "forward_batch",
    "resize_logits",
    "scan_backend_name",
    "evaluate_model",
    "metric_scalars",
    "run_data_root",
    "evaluate_run",
]

CONFIG_FILE = "config.yaml"
# Folder of each task under a data root, as AVSBench ships them (and as `avs-bench synth` writes them).
TASK_DIRS = {"s4": "Single-source", "ms3": "Multi-sources", "avss": "AVSS"}
_CSV = {"s4": S4Dataset.csv_name, "ms3": MS3Dataset.csv_name, "avss": AVSSDataset.csv_name}


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
        how = f"create it with `avs-bench synth --task {task} --out {root}`"
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
    """The ``split`` dataset of the run (capped at ``data.max_clips``), its items carrying their ``index``."""
    dataset = build_dataset(
        config.data.task,
        dataset_root(config),
        split,
        image_size=config.data.image_size,
        audio_source=config.data.audio_source,
        seed=config.train.seed,
    )
    if len(dataset) == 0:
        raise ValueError(f"the {split} split of {dataset.root} has no clips; check the metadata CSV's split column")
    if config.data.max_clips is not None and len(dataset) > config.data.max_clips:
        dataset = Subset(dataset, range(config.data.max_clips))
    return IndexedDataset(dataset)


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
    results = {}
    for protocol, metric in metrics.items():
        merged = _new_metric(task, protocol, eval_batch_size)
        for state in all_gather_object(ctx, metric.state_dict()):
            merged.merge(state)
        results[protocol] = merged.compute()
    return results


def metric_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric scalar entries of one protocol's result (lists and labels dropped), for curves and history."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _resolve_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint in ("best", "last"):
        return run_dir / "checkpoints" / f"{checkpoint}.pt"
    return Path(checkpoint)


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
) -> dict[str, Any]:
    """Re-evaluate a trained run's checkpoint on ``split``; writes ``eval_{split}.json`` (or ``out_file``).

    Args:
        run_dir: a directory written by :func:`train` (needs ``config.yaml`` and the checkpoint).
        checkpoint: ``best``, ``last`` or a checkpoint path.
        split: ``test`` or ``val``.
        protocols / eval_batch_size: override the run's ``eval.protocols`` and ``eval.batch_size``.
        data_root: the data to score; default: the run's own (:func:`run_data_root`). The record's ``data`` says
            which root and digest were scored and whether they match the training data (``matches_training``).

    Raises:
        FileNotFoundError: missing run config, checkpoint or dataset.
        ValueError: the run's data root is ambiguous, or its data changed since training (without ``data_root``).
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
    ckpt_path = _resolve_checkpoint(run_dir, checkpoint)
    ckpt = load_checkpoint(ckpt_path)
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
        metrics = evaluate_model(
            model,
            loader,
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
            "checkpoint_epoch": None if ckpt.get("epoch") is None else ckpt["epoch"] + 1,  # 1-based
            "split": split,
            "data": data,
            "metrics": metrics,
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
