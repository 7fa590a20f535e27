"""Training and evaluation engine shared by AVS-Mamba, its ablations and every baseline.

One call, :func:`train`, runs a whole job from a resolved :class:`~avs_mamba.config.ExperimentConfig`:

* AdamW over *all* parameters, built once (the official code does the same; frozen parameters simply get no
  gradient), the recipe's epochs / max_steps, visual backbone frozen for ``train.backbone_freeze_epochs`` epochs via
  the model's ``set_backbone_trainable``, Dice/BCE/CE from :mod:`avs_mamba.losses` averaged over the frames in
  ``label_flags`` (S4 train: frame 1 only; AVSS: the labelled, unpadded frames), bf16 autocast on CUDA when
  ``train.amp``, optional gradient clipping. A model may define ``loss(output, masks, label_flags, *, weights,
  aux_weight) -> LossOutput`` for terms the shared loss lacks (TPAVI's AVM).
* Validation on the 0-based epochs ``eval_from_epoch + k * eval_every`` (the official ``epoch >= start and
  epoch % interval == 0`` with an even start) and always after the last; the best checkpoint is chosen on
  ``eval.selection`` (**val** by default; ``test`` is what the official AVS-Mamba scripts do) by M_J (official
  protocol when evaluated, else the first listed) and only it is evaluated on test, under every protocol
  in ``eval.protocols``. Logits are resized (bilinear) to the ground-truth size before the metrics.
* A checkpoint per epoch, written atomically, with model, optimizer, epoch, step, RNG states, best-so-far, history
  and resolved config. Re-running the same command resumes from it and ends with the same metrics as an uninterrupted
  run: the RNG states captured after each epoch are restored at the start of the next in both cases, the train order
  depends only on (seed, epoch), and augmentation only on (seed, epoch, clip). A finished run only reports.
* Cost (``metrics.json`` ``cost``, MLflow ``cost/*``): params, FLOPs and latency at one clip of the run's input
  shape from :mod:`avs_mamba.profiling`, and the peak memory of the run's own training steps and evaluation passes
  (``peak_mem_train_mb``, ``peak_mem_infer_mb``) by :class:`avs_mamba.memory.PeakMemory`, the profiler's method:
  the CUDA allocator's peaks, or on CPU the process's peak RSS growth plus the tensors held at each phase's start.
* Under ``torchrun`` the same code runs DDP (DistributedSampler for train and eval; metric states of all ranks are
  gathered with their dataset indices, so the merged result equals a single-process evaluation); rank 0 alone writes
  files and MLflow records.

Outputs in the run directory: ``metrics.json`` (see :func:`train`), ``config.yaml``, ``checkpoints/{last,best}.pt``,
``overlays/{id}.png``; the MLflow run ``{dataset}/{name}/seed{n}`` in the profile's experiment.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from avs_mamba.checkpointing import (
    CheckpointMismatchError,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from avs_mamba.config import ExperimentConfig
from avs_mamba.data.provenance import data_provenance
from avs_mamba.distributed import DistContext, all_true, barrier, init_distributed, shutdown
from avs_mamba.evaluation import (
    CONFIG_FILE,
    METRICS_FILE,
    build_split,
    dataset_root,
    evaluate_model,
    evaluate_model_subsets,
    evaluate_run,
    forward_batch,
    make_loader,
    metric_scalars,
    probe_subsets,
    scan_backend_name,
    scan_splits,
    seed_everything,
    to_device,
)
from avs_mamba.losses import LOSS_NAMES, LossOutput, segmentation_loss
from avs_mamba.lr_schedule import lr_at
from avs_mamba.memory import PeakMemory, model_tensors
from avs_mamba.modules.output import AVSOutput
from avs_mamba.overlays import save_overlay
from avs_mamba.recipe import recipe_card

__all__ = [
    "METRICS_FILE",
    "COST_MEASURES",
    "TrainingDivergedError",
    "compute_loss",
    "record_run",
    "train",
    "evaluate_run",
]

# What metrics.json's "cost" measures: params, FLOPs and latency at the run's input shape (one clip, by
# avs_mamba.profiling), and memory as the peaks of the run's own training steps and evaluation passes.
COST_MEASURES = ("params", "flops", "memory", "latency")
# The scope of a run's memory figures, after the method of avs_mamba.memory (a profile names its own).
MEMORY_SCOPE = (
    "run: train = its training steps (batch train.batch_size: loading, forward, loss, backward, AdamW), infer = its "
    "validation and test passes (batch eval.batch_size), each the maximum over the run's repeats"
)
_CKPT_VERSION = 1


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


# ----------------------------------------------------------------------------------------------------------------
# Loss


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def compute_loss(model: nn.Module, output: AVSOutput, batch: Mapping[str, Any], config: ExperimentConfig) -> LossOutput:
    """The recipe loss: the model's own ``loss`` method when it has one, else :func:`segmentation_loss`."""
    weights = {name: w for name, w in config.train.loss.items() if w > 0}
    module = _unwrap(model)
    custom = getattr(module, "loss", None)
    if callable(custom):
        return custom(
            output, batch["masks"], batch["label_flags"], weights=weights, aux_weight=config.train.aux_loss_weight
        )
    unknown = sorted(set(weights) - set(LOSS_NAMES))
    if unknown:
        raise ValueError(
            f"train.loss terms {unknown} are not computed by the shared loss (which has {list(LOSS_NAMES)}); "
            f"model {config.model.name!r} must define a loss(...) method for them"
        )
    return segmentation_loss(
        output,
        batch["masks"],
        batch["label_flags"],
        weights=weights,
        aux_weight=config.train.aux_loss_weight,
        avm_reduction=config.train.avm_reduction,
    )


# ----------------------------------------------------------------------------------------------------------------
# Training


def _selection_protocol(protocols: list[str]) -> str:
    return "official" if "official" in protocols else protocols[0]


def _score(val: Mapping[str, Mapping[str, Any]], protocol: str) -> float:
    """Model-selection score: val M_J (mIoU for AVSS); NaN never wins."""
    value = float(val[protocol]["miou"])
    return -math.inf if math.isnan(value) else value


def _git_commit() -> str:
    from avs_mamba.tracking import git_commit

    return git_commit()


def _config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    from avs_mamba.config import HASH_EXCLUDE

    a, b = ExperimentConfig.model_validate(old).flatten(), ExperimentConfig.model_validate(new).flatten()
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not any(k.startswith(x) for x in HASH_EXCLUDE))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


class _Trainer:
    """State of one training job; :func:`train` is the public entry point."""

    def __init__(
        self,
        config: ExperimentConfig,
        out_dir: Path,
        ctx: DistContext,
        device: torch.device,
        *,
        tracking: bool,
        tracking_uri: str | None,
        progress: bool,
        cost: Sequence[str],
    ) -> None:
        self.config, self.out, self.ctx, self.device = config, out_dir, ctx, device
        self.tracking, self.tracking_uri, self.progress = tracking and ctx.is_main, tracking_uri, progress
        self.ckpt_dir = out_dir / "checkpoints"
        self.cost_measures = tuple(cost)
        self.config_hash = config.config_hash()
        self.protocol = _selection_protocol(list(config.eval.protocols))
        self.num_frames = int(config.data.num_frames or 0)
        self.memory: PeakMemory | None = None  # per-phase peaks (rank 0), when "memory" is among the cost measures
        self.memory_error: str | None = None
        self._held: Any = None  # the tensors a phase starts with: model, gradients, optimizer state

    def _phase(self, name: str) -> Any:
        """Context measuring the body as memory phase ``name`` ("train", "infer"); a no-op when not measured."""
        return contextlib.nullcontext() if self.memory is None else self.memory.phase(name, held=self._held)

    # -- bookkeeping -------------------------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.ctx.is_main:
            print(f"[avs-bench] {message}", file=sys.stderr, flush=True)

    def _run_info(self) -> dict[str, Any]:
        c = self.config
        return {
            "name": c.name,
            "variant": c.variant,
            "model": c.model.name,
            "task": c.data.task,
            "profile": c.profile,
            "seed": c.train.seed,
            "config_hash": self.config_hash,
        }

    def _finished_record(self) -> dict[str, Any] | None:
        path = self.out / METRICS_FILE
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            stored = record["run"]["config_hash"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path} exists but is not a metrics file of this suite ({err}); move it away") from None
        if stored != self.config_hash:
            raise CheckpointMismatchError(
                f"{self.out} holds a finished run of another config (config hash {stored}, this one "
                f"{self.config_hash}); use another --out or delete that directory"
            )
        return record

    def _resume_state(self) -> dict[str, Any] | None:
        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            return None
        ckpt = load_checkpoint(path)
        if ckpt.get("config_hash") != self.config_hash:
            diff = _config_diff(ckpt.get("config", {}), self.config.to_dict()) if "config" in ckpt else []
            detail = ("; changed: " + "; ".join(diff[:6])) if diff else ""
            raise CheckpointMismatchError(
                f"checkpoint {path} belongs to another config (hash {ckpt.get('config_hash')}, this one "
                f"{self.config_hash}){detail}. Use another --out, or delete {self.out} to start over"
            )
        return ckpt

    # -- the job -----------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        record = self._finished_record()
        if record is not None:
            test = record.get("test", {}).get(self.protocol, {})
            self._log(f"{self.out} is already finished (test {self.protocol} M_J {test.get('miou')}); nothing to do")
            if self.tracking:
                self._repair_tracking(record)
            return record
        cfg = self.config
        t_start = time.perf_counter()
        seed_everything(cfg.train.seed)
        model = cfg.build_model().to(self.device)
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=cfg.train.lr,
            betas=tuple(cfg.train.betas),
            weight_decay=cfg.train.weight_decay,
            # One fused kernel instead of a dozen small ops per parameter: a tenth of a smoke step on CPU.
            fused=self.device.type in ("cpu", "cuda"),
        )
        loader_gen = torch.Generator().manual_seed(cfg.train.seed)
        if "memory" in self.cost_measures and self.ctx.is_main:
            try:
                self.memory = PeakMemory(self.device)
            except RuntimeError as err:  # no way to read the RSS here: the cost block says so
                self.memory_error = f"memory: {err}"
            self._held = lambda: model_tensors(model, optimizer)
        ckpt = self._resume_state()
        start_epoch, step, elapsed = 0, 0, 0.0
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"epoch": None, "score": -math.inf, "val": None}
        rng: dict[str, Any] | None = None
        if ckpt is not None:
            load_model_state(model, ckpt["model"], self.ckpt_dir / "last.pt")
            optimizer.load_state_dict(ckpt["optimizer"])
            start_epoch, step, elapsed = ckpt["epoch"] + 1, ckpt["step"], float(ckpt["elapsed_s"])
            history, best, rng = list(ckpt["history"]), dict(ckpt["best"]), ckpt["rng"]
            if self.memory is not None:
                self.memory.merge(ckpt.get("memory"))  # the peaks of the earlier segments
            self._log(f"resuming {self.out} after epoch {ckpt['epoch']} (step {step})")
        scan_splits(cfg)  # every clip of train, val and test: a bad test file stops the run now, not at the end
        if self.ctx.is_main:
            ensure_writable_dir(self.out)  # a read-only or full --out fails before any work

        train_set = build_split(cfg, "train")
        val_set = build_split(cfg, cfg.eval.selection)  # the selection split (val unless eval.selection=test)
        self.data = self._data_provenance(ckpt)
        pin = self.device.type == "cuda"
        train_loader = make_loader(
            train_set,
            cfg.train.batch_size,
            ctx=self.ctx,
            shuffle=True,
            seed=cfg.train.seed,
            num_workers=cfg.data.num_workers,
            generator=loader_gen,
            pin_memory=pin,
        )
        steps_per_epoch = len(train_loader)
        num_epochs = cfg.train.epochs or math.ceil(cfg.train.max_steps / steps_per_epoch)  # type: ignore[operator]
        total_steps = num_epochs * steps_per_epoch  # the length of the lr schedule
        if cfg.train.max_steps is not None:
            total_steps = min(total_steps, cfg.train.max_steps)
        scan_backend = scan_backend_name(cfg, self.device)

        logger_cm: Any = contextlib.nullcontext(None)
        if self.tracking:
            from avs_mamba.tracking import RunLogger

            logger_cm = RunLogger(self.tracking_uri).start_config(
                cfg, scan_backend=scan_backend, device=str(self.device), data=self.data
            )
        with logger_cm as logger:
            if self.ctx.is_main:  # only a run that starts gets a config.yaml (evaluate takes it for a run directory)
                atomic_write_text(self.out / CONFIG_FILE, cfg.to_yaml())
            for point in history:  # a resumed run's MLflow record gets the earlier epochs too
                self._log_epoch(logger, point)
            wrapped, trainable = model, None
            for epoch in range(start_epoch, num_epochs):
                if cfg.train.max_steps is not None and step >= cfg.train.max_steps:
                    break
                if rng is not None:
                    set_rng_state(rng, loader_gen)
                now_trainable = epoch >= cfg.train.backbone_freeze_epochs
                if now_trainable != trainable:
                    set_trainable = getattr(model, "set_backbone_trainable", None)
                    if callable(set_trainable):
                        set_trainable(now_trainable)
                    del wrapped
                    wrapped = self._wrap(model)  # DDP registers only the parameters that require grad
                    trainable = now_trainable
                t0 = time.perf_counter()
                with self._phase("train"):
                    loss, steps = self._train_epoch(wrapped, optimizer, train_loader, epoch, step, total_steps)
                step += steps
                last = epoch == num_epochs - 1 or (cfg.train.max_steps is not None and step >= cfg.train.max_steps)
                val = None
                start = cfg.train.eval_from_epoch
                if last or (epoch >= start and (epoch - start) % cfg.train.eval_every == 0):
                    with self._phase("infer"):
                        val = self._evaluate(model, val_set)
                epoch_time = time.perf_counter() - t0
                point = {
                    "epoch": epoch + 1,  # 1-based, as in the log; checkpoints keep the 0-based loop index
                    "train_loss": loss,
                    "train_steps": steps,
                    "lr": optimizer.param_groups[0]["lr"],  # of the epoch's last step
                    "epoch_time_s": epoch_time,
                    "backbone_trainable": now_trainable,
                    "val": None if val is None else {p: metric_scalars(m) for p, m in val.items()},
                    "val_split": cfg.eval.selection,  # the split "val" was measured on (eval.selection)
                }
                history.append(point)
                if val is not None and _score(val, self.protocol) > best["score"]:
                    best = {"epoch": epoch, "score": _score(val, self.protocol), "val": point["val"]}
                    if self.ctx.is_main:
                        save_checkpoint(
                            self.ckpt_dir / "best.pt",
                            {
                                "model": model.state_dict(),
                                "epoch": epoch,
                                "val": point["val"],
                                "config": cfg.to_dict(),
                                "config_hash": self.config_hash,
                                "data": self.data,
                            },
                        )
                rng = rng_state(loader_gen)
                elapsed_now = elapsed + time.perf_counter() - t_start  # summed over resumed segments
                if self.ctx.is_main:
                    save_checkpoint(
                        self.ckpt_dir / "last.pt",
                        {
                            "format_version": _CKPT_VERSION,
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "epoch": epoch,
                            "step": step,
                            "rng": rng,
                            "best": best,
                            "history": history,
                            "elapsed_s": elapsed_now,
                            "memory": None if self.memory is None else self.memory.record(),
                            "config": cfg.to_dict(),
                            "config_hash": self.config_hash,
                            "data": self.data,
                        },
                    )
                barrier(self.ctx)
                self._log_epoch(logger, point)
                val_text = "" if val is None else f", {cfg.eval.selection} M_J {val[self.protocol]['miou']:.4f}"
                self._log(f"epoch {epoch + 1}/{num_epochs}: loss {loss:.4f}{val_text} ({epoch_time:.1f} s)")
            del wrapped

            record = self._finish(model, best, history, scan_backend)
            record["wall_time_s"] = elapsed + time.perf_counter() - t_start
            if self.ctx.is_main:
                atomic_write_json(self.out / METRICS_FILE, record)
                if logger is not None:
                    self._log_final(logger, record)
        barrier(self.ctx)
        return record

    def _data_provenance(self, ckpt: Mapping[str, Any] | None) -> dict[str, Any]:
        """Root and digest of the data this run trains on (:mod:`avs_mamba.data.provenance`); a resumed run must
        find the data it started on."""
        data = data_provenance(dataset_root(self.config), self.config.data.task)
        before = (ckpt or {}).get("data")
        if before is not None and before["digest"] != data["digest"]:
            raise ValueError(
                f"{self.out} was trained on the data under {before['root']} (digest {before['digest'][:12]}), but "
                f"{data['root']} holds other data (digest {data['digest'][:12]}); point data.root at the run's data "
                "or use another --out"
            )
        return data

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.ctx.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # find_unused_parameters: ablated variants and baselines may leave a branch without gradient
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def _train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: DataLoader,
        epoch: int,
        step: int,
        total_steps: int,
    ) -> tuple[float, int]:
        """One pass over the train split (stopping early at ``train.max_steps``); returns (mean loss, steps).

        ``step`` is the number of optimizer steps taken before this epoch; the learning rate of each step comes from
        ``train.lr_schedule`` over ``total_steps``."""
        cfg = self.config
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        dataset = loader.dataset
        while hasattr(dataset, "dataset"):
            dataset = dataset.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)  # augmentation draws depend on (seed, epoch, clip)
        model.train()
        total, steps, clips = 0.0, 0, 0
        bar = _progress(loader, enabled=self.progress and self.ctx.is_main, desc=f"epoch {epoch + 1}")
        t0 = time.perf_counter()
        for raw in bar:
            if cfg.train.max_steps is not None and step + steps >= cfg.train.max_steps:
                break
            batch = to_device(raw, self.device, self.num_frames)
            output = forward_batch(model, batch, self.device, cfg.train.amp)
            loss = compute_loss(model, output, batch, cfg)
            value = float(loss.total.detach())
            if not all_true(self.ctx, math.isfinite(value), self.device):
                last = self.ckpt_dir / "last.pt"
                kept = f"the last good checkpoint {last} is kept" if last.is_file() else "no checkpoint was written yet"
                raise TrainingDivergedError(
                    f"training loss is not finite ({value}) at epoch {epoch + 1}, step {step + steps + 1} "
                    f"(clips {list(raw['id'])}); run stopped, {kept}. Lower train.lr or set train.grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            if cfg.train.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            lr = lr_at(step + steps, total_steps, cfg.train.lr, cfg.train.lr_schedule, cfg.train.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            total, steps = total + value, steps + 1
            clips += raw["frames"].shape[0] * self.ctx.world_size
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / steps:.4f}", clips_s=f"{clips / (time.perf_counter() - t0):.2f}")
        if hasattr(bar, "close"):
            bar.close()
        if self.ctx.enabled:  # the epoch's loss is the mean over every rank's steps
            sums = torch.tensor([total, float(steps)], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(sums)
            return (sums[0] / sums[1]).item() if sums[1] > 0 else math.nan, steps
        return (total / steps if steps else math.nan), steps

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        cfg = self.config
        return make_loader(
            dataset,
            cfg.eval.batch_size,
            ctx=self.ctx,
            shuffle=False,
            seed=cfg.train.seed,
            num_workers=cfg.data.num_workers,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )

    def _evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, dict[str, Any]]:
        cfg = self.config
        return evaluate_model(
            model,
            self._eval_loader(dataset),
            task=cfg.data.task,
            protocols=list(cfg.eval.protocols),
            eval_batch_size=cfg.eval.batch_size,
            device=self.device,
            ctx=self.ctx,
            num_frames=self.num_frames,
            amp=cfg.train.amp,
        )

    def _finish(
        self, model: nn.Module, best: Mapping[str, Any], history: list[dict[str, Any]], scan_backend: str
    ) -> dict[str, Any]:
        """Test evaluation of the best-on-val checkpoint, overlays and cost; the metrics.json record."""
        cfg = self.config
        best_path = self.ckpt_dir / "best.pt"
        barrier(self.ctx)  # rank 0 wrote best.pt
        load_model_state(model, load_checkpoint(best_path)["model"], best_path)
        test_set = build_split(cfg, "test")
        subsets = probe_subsets(cfg, test_set)  # synthetic data only; {} on real AVSBench
        with self._phase("infer"):
            test, test_subsets = evaluate_model_subsets(
                model,
                self._eval_loader(test_set),
                subsets,
                task=cfg.data.task,
                protocols=list(cfg.eval.protocols),
                eval_batch_size=cfg.eval.batch_size,
                device=self.device,
                ctx=self.ctx,
                num_frames=self.num_frames,
                amp=cfg.train.amp,
            )
        cost: dict[str, Any] | None = None
        if self.ctx.is_main:
            self._overlays(model, test_set)
            cost = _cost(model, cfg, self.device, self.cost_measures) if self.cost_measures else None
            if cost is not None and "memory" in self.cost_measures:
                self._memory_cost(cost)
        return {
            "run": self._run_info(),
            "status": "finished",
            "test": test,
            "test_subsets": test_subsets,
            "subset_clips": {name: len(ids) for name, ids in subsets.items()},
            "test_clips": len(test_set),  # type: ignore[arg-type]
            "best_val": best["val"],
            "best_epoch": None if best["epoch"] is None else best["epoch"] + 1,  # 1-based, as in the log
            "selection": {"split": cfg.eval.selection, "protocol": self.protocol, "metric": "miou"},
            "eval": {"batch_size": cfg.eval.batch_size, "protocols": list(cfg.eval.protocols)},
            "recipe": recipe_card(cfg, strict=False),
            "data": self.data,
            "history": history,
            "cost": cost,
            "device": str(self.device),
            "world_size": self.ctx.world_size,
            "scan_backend": scan_backend,
            "git_commit": _git_commit(),
            "torch_version": torch.__version__,
            "config": cfg.to_dict(),
        }

    def _memory_cost(self, cost: dict[str, Any]) -> None:
        """Put the run's own peaks (and their method) into the cost block, "memory" into its ``measured``."""
        from avs_mamba.profiling import MEASUREMENTS

        if self.memory is not None:
            cost.update(self.memory.record(), memory_method=f"{self.memory.method}; {MEMORY_SCOPE}")
        errors = [e for e in (cost.get("error"), self.memory_error) if e]
        cost["error"] = "; ".join(errors) or None
        cost["measured"] = [m for m in MEASUREMENTS if m in {*cost["measured"], "memory"}]

    @torch.no_grad()
    def _overlays(self, model: nn.Module, test_set: Dataset) -> None:
        n = min(self.config.eval.num_overlays, len(test_set))  # type: ignore[arg-type]
        model.eval()
        for index in range(n):
            item = test_set[index]
            batch = {k: (v.unsqueeze(0) if isinstance(v, Tensor) else v) for k, v in item.items()}
            batch = to_device(batch, self.device, self.num_frames)
            logits = forward_batch(model, batch, self.device, self.config.train.amp).logits[0]
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(item["id"]))
            save_overlay(self.out / "overlays" / f"{name}.png", batch["frames"][0], batch["masks"][0], logits)

    # -- MLflow ------------------------------------------------------------------------------------------------

    def _repair_tracking(self, record: Mapping[str, Any]) -> None:
        """Log a finished run directory to MLflow again when the store has no complete record of it (the final
        logging failed after metrics.json was written, or the store is new): the directory is the source of truth."""
        from avs_mamba.tracking import RunLogger, default_tracking_uri, experiment_name, finished_run, run_name

        cfg, uri = self.config, self.tracking_uri or default_tracking_uri()
        key = run_name(cfg.data.task, cfg.name, cfg.train.seed)
        if finished_run(uri, experiment_name(cfg.profile), key, self.config_hash) is not None:
            return
        self._log(f"MLflow has no finished record of {key}; logging it from {self.out / METRICS_FILE}")
        logger = RunLogger(uri).start_config(
            cfg,
            scan_backend=str(record.get("scan_backend", "unknown")),
            device=str(record.get("device", self.device)),
            commit=record.get("git_commit"),
        )
        with logger:
            for point in record.get("history") or []:
                self._log_epoch(logger, point)
            self._log_final(logger, record)

    @staticmethod
    def _log_epoch(logger: Any, point: Mapping[str, Any]) -> None:
        if logger is None:
            return
        values: dict[str, float] = {
            "train/loss": point["train_loss"],
            "train/lr": point["lr"],
            "epoch_time_s": point["epoch_time_s"],
        }
        split = point.get("val_split", "val")
        split = split if split == "val" else f"{split}_select"  # epoch curves never mix with the final test/* metrics
        for protocol, metrics in (point["val"] or {}).items():
            values.update({f"{split}/{protocol}/{k}": v for k, v in metrics.items() if k in ("miou", "fscore")})
        logger.log_epoch(point["epoch"], {k: v for k, v in values.items() if math.isfinite(v)})

    def _log_final(self, logger: Any, record: Mapping[str, Any]) -> None:
        final: dict[str, float] = {"wall_time_s": record["wall_time_s"]}
        if record["best_epoch"] is not None:
            final["best_epoch"] = record["best_epoch"]
        for section in ("test", "best_val"):
            for protocol, metrics in (record[section] or {}).items():
                final.update({f"{section}/{protocol}/{k}": v for k, v in metric_scalars(metrics).items()})
        for subset, by_protocol in record.get("test_subsets", {}).items():
            for protocol, metrics in by_protocol.items():
                final.update(
                    {f"test_subset/{subset}/{protocol}/{k}": metrics[k] for k in ("miou", "fscore") if k in metrics}
                )
        for key, value in (record["cost"] or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                final[f"cost/{key}"] = float(value)
        logger.log_final({k: v for k, v in final.items() if math.isfinite(v)})
        overlays = self.out / "overlays"
        logger.log_artifacts([self.out / METRICS_FILE, *([overlays] if overlays.is_dir() else [])])


def _progress(loader: DataLoader, *, enabled: bool, desc: str) -> Any:
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (workflow logs get the per-epoch lines only)
    return tqdm(loader, desc=desc, unit="it", leave=False, dynamic_ncols=True, disable=None)


def _cost(model: nn.Module, config: ExperimentConfig, device: torch.device, measure: Sequence[str]) -> dict[str, Any]:
    """Params, FLOPs and latency at the run's input shape (one clip), from :mod:`avs_mamba.profiling`; memory is
    not measured there but in the run's own phases (``_Trainer._memory_cost``)."""
    from avs_mamba.profiling import profile_model

    return profile_model(
        model,
        batch=1,
        frames=int(config.data.num_frames or 0),
        image_size=config.data.image_size,
        device=str(device),
        measure=tuple(m for m in measure if m != "memory"),
        warmup=1,
        repeats=3,
        model_name=config.model.name,
        variant=config.variant,
        size=config.profile,
        name=config.name,
    )


def train(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    tracking: bool = True,
    tracking_uri: str | None = None,
    progress: bool = True,
    cost: Sequence[str] = COST_MEASURES,
) -> dict[str, Any]:
    """Train, select on ``eval.selection`` (val by default), test and record one run into ``out_dir`` (resuming it
    when it was interrupted).

    Returns the ``metrics.json`` record: ``run`` {name, variant, model, task, profile, seed, config_hash},
    ``test`` {protocol: metrics}, ``test_subsets`` {probe subset: {protocol: metrics}}, ``subset_clips``
    {probe subset: clips} (both synthetic data only, see :func:`~avs_mamba.evaluation.probe_subsets`),
    ``test_clips``, ``best_val`` {protocol: scalars on the selection split}, ``best_epoch`` (1-based), ``selection``
    {split, protocol, metric}, ``data`` (root and digest of the dataset,
    :func:`~avs_mamba.data.provenance.data_provenance`), ``history`` (per epoch, 1-based: train_loss, val (on the
    selection split, ``val_split``), epoch_time_s, ...), ``cost`` (the profile keys of :mod:`avs_mamba.profiling`,
    memory from this run's own phases), ``wall_time_s``, ``device``, ``scan_backend``, ``git_commit``,
    ``torch_version``, ``config`` (resolved), ``recipe`` (the recipe card, :func:`avs_mamba.recipe.recipe_card`).
    Under ``torchrun`` every rank returns it; rank 0 writes it.

    Raises:
        FileNotFoundError: the dataset is missing.
        CheckpointMismatchError: ``out_dir`` holds a run of another config.
        TrainingDivergedError: the loss became NaN/inf.
    """
    ctx, device = init_distributed(config.train.device)
    try:
        trainer = _Trainer(
            config,
            Path(out_dir),
            ctx,
            device,
            tracking=tracking,
            tracking_uri=tracking_uri,
            progress=progress,
            cost=cost,
        )
        return trainer.run()
    finally:
        shutdown(ctx)


def record_run(
    config: ExperimentConfig,
    out_dir: str | Path,
    model_state: Mapping[str, Tensor],
    *,
    extra: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    tracking: bool = True,
    tracking_uri: str | None = None,
    cost: Sequence[str] = COST_MEASURES,
) -> dict[str, Any]:
    """Make ``out_dir`` a finished run of ``config`` whose weights are ``model_state`` (no training): the same
    ``config.yaml``, ``checkpoints/best.pt``, test evaluation, overlays, cost, ``metrics.json`` and MLflow run as
    :func:`train` writes, with an empty history. ``extra`` is added to the record (e.g. where the weights came
    from) and to ``best.pt``; ``tags`` go to the MLflow run. Used by the importers of official checkpoints.

    Raises:
        FileNotFoundError: the dataset is missing.
        CheckpointMismatchError: ``model_state`` does not fit the model of ``config``.
    """
    ctx, device = init_distributed(config.train.device)
    try:
        out = Path(out_dir)
        trainer = _Trainer(
            config, out, ctx, device, tracking=tracking, tracking_uri=tracking_uri, progress=False, cost=cost
        )
        t_start = time.perf_counter()
        seed_everything(config.train.seed)
        model = config.build_model().to(device)
        load_model_state(model, model_state, "the imported weights")
        ensure_writable_dir(out)
        trainer.data = data_provenance(dataset_root(config), config.data.task)
        atomic_write_text(out / CONFIG_FILE, config.to_yaml())
        save_checkpoint(
            trainer.ckpt_dir / "best.pt",
            {
                "model": model.state_dict(),
                "epoch": None,
                "val": None,
                "config": config.to_dict(),
                "config_hash": trainer.config_hash,
                "data": trainer.data,
                **extra,
            },
        )
        scan_backend = scan_backend_name(config, device)
        logger_cm: Any = contextlib.nullcontext(None)
        if trainer.tracking:
            from avs_mamba.tracking import RunLogger

            logger_cm = RunLogger(tracking_uri).start_config(
                config, scan_backend=scan_backend, device=str(device), data=trainer.data
            )
        with logger_cm as logger:
            best = {"epoch": None, "score": -math.inf, "val": None}
            record = trainer._finish(model, best, [], scan_backend)
            record.update(extra)
            record["wall_time_s"] = time.perf_counter() - t_start
            atomic_write_json(out / METRICS_FILE, record)
            if logger is not None:
                if tags:
                    logger.set_tags(dict(tags))
                trainer._log_final(logger, record)
        return record
    finally:
        shutdown(ctx)
