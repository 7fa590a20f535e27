"""The ``avs-bench`` command line: synthesize data, check it, train, evaluate, profile, and open the MLflow UI.

Every subcommand is a thin wrapper over a library function (``avs_mamba.data.synthetic.generate``,
``avs_mamba.data.check_dataset``, ``avs_mamba.engine.train``, ``avs_mamba.evaluation.evaluate_run``,
``avs_mamba.profiling.profile_config``, ``avs_mamba.tracking``). Library errors (bad config keys, missing files,
mismatched checkpoints, a diverged run) are printed as one ``avs-bench: error: ...`` line with exit code 2;
``--debug`` shows the traceback instead. Heavy imports (torch, mlflow) happen inside the handlers, so ``--help``
stays fast.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

TASKS = ("s4", "ms3", "avss")
SIZES = ("smoke", "paper")
PROTOCOLS = ("official", "clean")
MEASUREMENTS = ("params", "flops", "memory", "latency")  # avs_mamba.profiling.MEASUREMENTS
COST_MEASURES = ("params", "flops", "memory", "latency")  # avs_mamba.engine.COST_MEASURES
SYNTH_KINDS = ("s4", "ms3", "avss_v1s", "avss_v1m", "avss_v2")
AUDIO_CONDITIONS = ("original", "silence", "noise", "swapped")  # avs_mamba.robustness.CONDITIONS
IMPORT_FORMATS = ("avs_mamba_official", "avsegformer_official", "tpavi_official")  # avs_mamba.importers
TABLES = ("comparison", "ablation", "efficiency", "scaling", "robustness")  # avs_mamba.report.ARTIFACTS


# ----------------------------------------------------------------------------------------------------------------
# Argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _split_counts(text: str) -> dict[str, int]:
    """``TRAIN,VAL,TEST`` -> ``{"train": .., "val": .., "test": ..}``."""
    parts = text.split(",")
    try:
        counts = [int(p) for p in parts]
    except ValueError:
        counts = []
    if len(counts) != 3 or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST clip counts (three integers >= 0), got {text!r}")
    return dict(zip(("train", "val", "test"), counts, strict=True))


def _kind_counts(text: str) -> tuple[str, dict[str, int]]:
    """``KIND=TRAIN,VAL,TEST`` for one clip kind."""
    kind, sep, counts = text.partition("=")
    if not sep or kind not in SYNTH_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected KIND=TRAIN,VAL,TEST with KIND one of {', '.join(SYNTH_KINDS)}, got {text!r}"
        )
    return kind, _split_counts(counts)


def _override(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value (e.g. train.lr=1e-3), got {text!r}")
    return text


# ----------------------------------------------------------------------------------------------------------------
# Handlers


def _cmd_synth(args: argparse.Namespace) -> int:
    from avs_mamba.data.synthetic import SynthConfig, generate

    knobs: dict[str, Any] = {
        "seed": args.seed,
        "image_size": args.image_size,
        "num_classes": args.num_classes,
        "num_distractors": args.num_distractors,
        "max_sources": args.max_sources,
        "temporal_hard_fraction": args.temporal_hard_fraction,
    }
    if args.clips_per_split is not None:
        knobs.update(dict.fromkeys(SYNTH_KINDS, args.clips_per_split))
    knobs.update(dict(args.clips or []))
    config = SynthConfig(**{k: v for k, v in knobs.items() if v is not None})
    roots = generate(args.task, args.out, config, overwrite=args.overwrite)
    for task, root in roots.items():
        print(f"{task}: {root}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from avs_mamba.data import check_dataset

    report = check_dataset(args.root, args.task)
    print(report.format(per_kind=args.examples))
    return 0 if report.ok else 1


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values, then the convenience flags (which win), as ``key=value`` strings."""
    overrides = list(args.set or [])
    sugar = {
        "data.root": args.data_root,
        "data.task": args.task,
        "train.seed": args.seed,
        "train.device": args.device,
    }
    # JSON scalars are valid YAML, so a path like "2024" stays a string
    overrides += [f"{key}={json.dumps(value)}" for key, value in sugar.items() if value is not None]
    return overrides


def _tracking_uri(args: argparse.Namespace) -> str:
    from avs_mamba.tracking import default_tracking_uri

    return args.tracking_uri or default_tracking_uri()


def _cmd_train(args: argparse.Namespace) -> int:
    from avs_mamba.config import load_config
    from avs_mamba.engine import train

    config = load_config(args.config, _train_overrides(args), args.size)
    record = train(
        config,
        args.out,
        tracking=not args.no_tracking,
        tracking_uri=None if args.no_tracking else _tracking_uri(args),
        progress=not args.no_progress,
        cost=() if "none" in (args.cost or ()) else tuple(args.cost or COST_MEASURES),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        _print_summary(record, Path(args.out))
    return 0


# The console, metrics.json and MLflow keep scores as fractions; the tables print them x100, as papers do.
_FRACTIONS = "(fractions; the tables show x100)"


def _print_summary(record: dict[str, Any], out: Path) -> None:
    run = record.get("run", {})
    best = record.get("best_epoch")  # 1-based, as in the log
    best_text = "none" if best is None else f"epoch {best} of {len(record.get('history') or [])}"
    split = (record.get("selection") or {}).get("split", "val")
    print(f"{run.get('task')}/{run.get('name')}/seed{run.get('seed')}: best {best_text} (chosen on {split})")
    for protocol, metrics in (record.get("test") or {}).items():
        print(f"  test {protocol}: M_J {metrics.get('miou'):.4f}  M_F {metrics.get('fscore'):.4f}  {_FRACTIONS}")
    print(f"  wall time {record.get('wall_time_s', 0):.1f} s; results in {out / 'metrics.json'}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from avs_mamba.evaluation import evaluate_run

    record = evaluate_run(
        args.run,
        checkpoint=args.checkpoint,
        split=args.split,
        protocols=args.protocol,
        eval_batch_size=args.eval_batch_size,
        device=args.device,
        data_root=args.data_root,
        out_file=args.out,
        allow_unfinished=args.allow_unfinished,
        audio_conditions=args.audio_condition,
        noise_dbfs=args.noise_dbfs,
        condition_seed=args.condition_seed,
        mask_dir=args.save_masks,
        tracking_uri=None if args.no_tracking or not args.audio_condition else _tracking_uri(args),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        data = record["data"]
        print(f"data: {data['root']} ({data['source']}, digest {data['digest'][:12]}, {data['num_files']} files)")
        if data["matches_training"] is False:
            print("note: this is not the data the run was trained on (other digest)")
        for protocol, metrics in record["metrics"].items():
            print(f"{args.split} {protocol}: M_J {metrics['miou']:.4f}  M_F {metrics['fscore']:.4f}  {_FRACTIONS}")
        for protocol, summary in (record.get("robustness") or {}).get("summary", {}).items():
            fprs = "  ".join(f"FPR[{c}] {v['fpr']:.4f}" for c, v in summary["by_condition"].items())
            g_scores = f"G-mIoU {summary['g_miou']:.4f}  G-F {summary['g_fscore']:.4f}"
            print(f"{args.split} {protocol} robustness: {fprs}  {g_scores}")
        print(f"written to {args.out or Path(args.run) / f'eval_{args.split}.json'}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from avs_mamba.importers.run import import_checkpoint

    record = import_checkpoint(
        args.source_format,
        args.checkpoint,
        config=args.config,
        task=args.task,
        out_dir=args.out,
        size=args.size,
        overrides=list(args.set or []),
        data_root=args.data_root,
        device=args.device,
        tracking=not args.no_tracking,
        tracking_uri=None if args.no_tracking else _tracking_uri(args),
    )
    imported = record["imported"]
    print(f"{imported['provenance']} ({imported['format']}); dropped {len(imported['dropped'])} dead official keys")
    for key in imported["dropped"]:
        print(f"  dropped {key}")
    _print_summary(record, Path(args.out))
    return 0


def _cmd_recipe(args: argparse.Namespace) -> int:
    from avs_mamba.config import load_config
    from avs_mamba.recipe import format_card, recipe_card

    overrides = [*(args.set or []), *([f"data.task={args.task}"] if args.task else [])]
    config = load_config(args.config, overrides, args.size)
    card = recipe_card(config)
    print(json.dumps(card, indent=2) if args.json else format_card(config, card))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from avs_mamba.predict import predict_video

    record = predict_video(
        args.run, args.video, args.out, audio=args.audio, checkpoint=args.checkpoint, device=args.device
    )
    padded = sum(w["padded_frames"] for w in record["windows"])
    print(
        f"{record['seconds']} masks ({len(record['windows'])} windows of {record['window_frames']} s, last padded by "
        f"{padded}) and overlay.mp4 written to {args.out}"
    )
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from avs_mamba.checkpointing import atomic_write_json
    from avs_mamba.profiling import profile_config

    options = {"batch": args.batch, "frames": args.frames, "image_size": args.image_size, "warmup": args.warmup}
    options["repeats"] = args.repeats
    measure = tuple(args.measure or MEASUREMENTS)
    print(
        f"profiling {args.config} ({args.size} size) on {args.device}: {', '.join(measure)}"
        + (" (paper-size models take minutes on a CPU)" if args.size == "paper" else ""),
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    row = profile_config(
        args.config,
        size=args.size,
        overrides=list(args.set or []),
        device=args.device,
        measure=measure,
        **{k: v for k, v in options.items() if v is not None},
    )
    atomic_write_json(args.out, row)
    errors = f" (errors: {row['error']})" if row.get("error") else ""
    print(f"profile written to {args.out} after {time.perf_counter() - t0:.0f} s{errors}")
    return 0


def _cmd_tables(args: argparse.Namespace) -> int:
    if not (args.runs or args.costs or args.scaling):  # before the slow plotting imports
        raise ValueError("nothing to build: give --runs, --costs or --scaling files")
    from avs_mamba.report import build_tables

    written = build_tables(
        args.runs or [],
        args.out,
        figures_dir=None if args.no_figures else args.figures,
        costs=args.costs or [],
        scaling=args.scaling or [],
        only=args.only,
        protocol=args.protocol,
        reference=args.reference,
        published=args.published,
    )
    for path in written:
        print(path)
    if args.tracking_uri:
        _log_report(args, written)
    return 0


def _log_report(args: argparse.Namespace, written: list[Path]) -> None:
    """The report run (tables and figures) and the per-variant parent runs of ``tables --tracking-uri``."""
    from avs_mamba.report import load_runs
    from avs_mamba.tracking import log_report

    runs = load_runs(args.runs).to_dict("records") if args.runs else []
    profiles = sorted({str(run["profile"]) for run in runs})
    if args.profile is None and len(profiles) > 1:
        raise ValueError(f"the runs belong to the profiles {profiles}; pass --profile to name the report's experiment")
    profile = args.profile or (profiles[0] if profiles else "smoke")
    report = "+".join(args.only) if args.only else "all"
    ids = log_report(args.tracking_uri, runs, written, report=report, profile=profile)
    print(f"MLflow: report run report/{report} and {len(ids) - 1} variant parent run(s) in avs-bench-{profile}")


def _cmd_scaling(args: argparse.Namespace) -> int:
    from avs_mamba.checkpointing import atomic_write_json
    from avs_mamba.profiling import scaling_sweep

    options = {"base_frames": args.base_frames, "base_image_size": args.base_image_size, "batch": args.batch}
    options |= {"warmup": args.warmup, "repeats": args.repeats}
    rows = scaling_sweep(
        args.config,
        size=args.size,
        overrides=list(args.set or []),
        frames=tuple(args.frames),
        image_sizes=tuple(args.image_sizes),
        device=args.device,
        measure=tuple(args.measure or MEASUREMENTS),
        **{k: v for k, v in options.items() if v is not None},
    )
    atomic_write_json(args.out, rows)
    errors = [row["error"] for row in rows if row.get("error")]
    print(f"{len(rows)} scaling points written to {args.out}" + (f" (errors: {errors})" if errors else ""))
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from avs_mamba.tracking import init_store, runs_url, ui_command

    uri = _tracking_uri(args)
    # the schema under its file lock (the server must not race running jobs to create it); also points a copied or
    # moved results/ at its own artifacts
    experiments = init_store(uri)
    argv = ui_command(uri, port=args.port, host=args.host)
    print("starting: " + " ".join(argv), file=sys.stderr, flush=True)
    for name, experiment_id in experiments.items():
        print(f"{name}: {runs_url(experiment_id, args.port, args.host)}", file=sys.stderr, flush=True)
    os.execv(argv[0], argv)  # replaces this process; Ctrl-C stops the server
    return 0  # not reached


def _cmd_init_store(args: argparse.Namespace) -> int:
    from avs_mamba.tracking import init_store

    uri = _tracking_uri(args)
    experiments = init_store(uri)
    print(f"MLflow store ready at {uri}: " + ", ".join(f"{n} (id {i})" for n, i in experiments.items()))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Parser


def _add_tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<abs>/results/mlflow.db)",
    )


def _add_device(p: argparse.ArgumentParser, default: str | None) -> None:
    fallback = "%(default)s" if default is not None else "the config's train.device"
    p.add_argument("--device", default=default, help=f"auto, cpu, cuda or cuda:N (default: {fallback})")
    p.add_argument(
        "--threads", type=_positive_int, help="torch CPU threads (torch.set_num_threads); default: torch's choice"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``avs-bench`` argument parser (one subparser per command, each with its own ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="avs-bench",
        description="Benchmark and ablation suite for AVS-Mamba and transformer baselines on AVSBench.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="write synthetic AVSBench data in the official layouts")
    p.add_argument("--task", required=True, choices=(*TASKS, "all"), help="which dataset(s) to write")
    p.add_argument("--out", required=True, type=Path, help="parent folder of the task roots (e.g. data/synthetic)")
    p.add_argument("--seed", type=_non_negative_int, help="dataset seed (default 0)")
    p.add_argument("--image-size", type=_positive_int, help="stored frame height in px (default 64)")
    p.add_argument("--num-classes", type=_positive_int, help="number of synthetic classes (default 4)")
    p.add_argument("--num-distractors", type=_non_negative_int, help="silent objects per clip (default 1)")
    p.add_argument("--max-sources", type=_positive_int, help="most sources in a multi-source clip (default 3)")
    p.add_argument("--temporal-hard-fraction", type=float, help="share of temporal-hard clips (default 0.25)")
    p.add_argument(
        "--clips-per-split", type=_split_counts, metavar="TRAIN,VAL,TEST", help="clip counts for every clip kind"
    )
    p.add_argument(
        "--clips",
        type=_kind_counts,
        action="append",
        metavar="KIND=TRAIN,VAL,TEST",
        help=f"clip counts of one kind ({', '.join(SYNTH_KINDS)}); repeatable, wins over --clips-per-split",
    )
    p.add_argument("--overwrite", action="store_true", help="replace task roots that already exist")
    p.set_defaults(handler=_cmd_synth)

    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = data_sub.add_parser("check", help="read every file of a dataset and report all problems (exit 1 if any)")
    q.add_argument("root", type=Path, help="task root (e.g. data/synthetic/Single-source)")
    q.add_argument("--task", required=True, choices=TASKS, help="which AVSBench task the root holds")
    q.add_argument("--examples", type=_positive_int, default=3, help="examples shown per problem kind (default 3)")
    q.set_defaults(handler=_cmd_data_check)

    p = sub.add_parser("train", help="train, select on val, test and record one run (resumes if interrupted)")
    p.add_argument("--config", required=True, type=Path, help="experiment YAML (e.g. ablations/full.yaml)")
    p.add_argument("--size", choices=SIZES, help="size profile (default: the config's profile, else smoke)")
    p.add_argument(
        "--set", type=_override, action="append", metavar="KEY=VALUE", help="config override, e.g. train.lr=1e-3"
    )
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, metrics.json, overlays)")
    _add_device(p, None)
    _add_tracking_uri(p)
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--data-root", help="sugar for --set data.root=...")
    p.add_argument("--seed", type=int, help="sugar for --set train.seed=...")
    p.add_argument("--task", choices=TASKS, help="sugar for --set data.task=...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--cost",
        choices=(*MEASUREMENTS, "none"),
        action="append",
        help="cost measurements recorded in metrics.json (repeatable; default: params, flops, memory (peaks of the "
        "run's own training and evaluation), latency; none: skip)",
    )
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("evaluate", help="re-evaluate a trained run's checkpoint; writes eval_{split}.json")
    p.add_argument(
        "--run",
        "--run-dir",
        dest="run",
        required=True,
        type=Path,
        help="run directory written by `avs-bench train` (--run-dir: same, for use under torchrun, which claims --run)",
    )
    p.add_argument("--checkpoint", default="best", help="best, last or a checkpoint path (default: best)")
    p.add_argument("--split", default="test", choices=("test", "val"), help="split to score (default: %(default)s)")
    p.add_argument(
        "--protocol", choices=PROTOCOLS, action="append", help="metric protocol (repeatable; default: the run's)"
    )
    p.add_argument("--eval-batch-size", type=_positive_int, help="videos per official M_F batch (default: the run's)")
    p.add_argument(
        "--data-root", help="data to score (default: the data the run was trained on, as its training recorded)"
    )
    p.add_argument("--out", type=Path, help="output JSON (default: RUN/eval_{split}.json)")
    p.add_argument(
        "--allow-unfinished", action="store_true", help="score a run that has not finished training (no metrics.json)"
    )
    p.add_argument(
        "--audio-condition",
        choices=AUDIO_CONDITIONS,
        action="append",
        help="audio-reliance protocol (repeatable): original, silence (zero waveform), noise, swapped (another clip's "
        "audio of a class not in view); adds FPR, G-mIoU and G-F to RUN/metrics.json and the run's MLflow record",
    )
    p.add_argument(
        "--noise-dbfs", type=float, help="RMS level of the noise condition in dBFS (default -4.77: uniform on [-1, 1])"
    )
    p.add_argument(
        "--condition-seed", type=_non_negative_int, default=0, help="seed of noise and swap pairing (default 0)"
    )
    p.add_argument("--save-masks", type=Path, metavar="DIR", help="write every clip's predicted masks (PNG) under DIR")
    _add_tracking_uri(p)
    p.add_argument("--no-tracking", action="store_true", help="do not log the robustness scores to MLflow")
    _add_device(p, "auto")
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser(
        "import", help="turn a checkpoint trained with an official code into a run directory (scored on test)"
    )
    p.add_argument("checkpoint", type=Path, help="the official checkpoint file (.pth)")
    p.add_argument(
        "--from", dest="source_format", required=True, choices=IMPORT_FORMATS, help="which official code saved it"
    )
    p.add_argument("--task", required=True, choices=TASKS, help="the task it was trained for")
    p.add_argument(
        "--config", required=True, type=Path, help="experiment YAML of the model (e.g. baselines/avsegformer.yaml)"
    )
    p.add_argument("--out", required=True, type=Path, help="run directory to write")
    p.add_argument("--size", choices=SIZES, help="size profile (default: the config's profile, else smoke)")
    p.add_argument("--set", type=_override, action="append", metavar="KEY=VALUE", help="config override")
    p.add_argument("--data-root", help="data to score the test split on (sugar for --set data.root=...)")
    _add_device(p, None)
    _add_tracking_uri(p)
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.set_defaults(handler=_cmd_import)

    p = sub.add_parser("predict", help="segment the sounding objects of a video file with a trained run")
    p.add_argument("--run", required=True, type=Path, help="run directory written by `avs-bench train`")
    p.add_argument("--video", required=True, type=Path, help="video file (any container FFmpeg reads, e.g. .mp4)")
    p.add_argument("--audio", type=Path, help="WAV file to use instead of the video's audio track")
    p.add_argument("--out", required=True, type=Path, help="output folder (masks/, overlay.mp4, predict.json)")
    p.add_argument("--checkpoint", default="best", help="best, last or a checkpoint path (default: best)")
    _add_device(p, "cpu")
    p.set_defaults(handler=_cmd_predict)

    p = sub.add_parser("recipe", help="the resolved training/evaluation recipe with its official sources or deviations")
    p.add_argument("--config", required=True, type=Path, help="experiment YAML (e.g. ablations/full.yaml)")
    p.add_argument("--task", choices=TASKS, help="sugar for --set data.task=...")
    p.add_argument("--size", choices=SIZES, help="size profile (default: the config's profile, else smoke)")
    p.add_argument("--set", type=_override, action="append", metavar="KEY=VALUE", help="config override")
    p.add_argument("--json", action="store_true", help="the card as JSON: {key: {value, source | deviation}}")
    p.set_defaults(handler=_cmd_recipe)

    p = sub.add_parser("profile", help="params, FLOPs, memory and latency of a config's model")
    p.add_argument("--config", required=True, type=Path, help="experiment YAML (e.g. ablations/full.yaml)")
    p.add_argument("--size", choices=SIZES, default="smoke", help="size profile (default: %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="output JSON")
    p.add_argument("--measure", choices=MEASUREMENTS, action="append", help="what to measure (repeatable; default all)")
    _add_device(p, "cpu")
    p.add_argument("--batch", type=_positive_int, help="clips per input (default 1)")
    p.add_argument("--frames", type=_positive_int, help="frames per clip (default: the config's)")
    p.add_argument("--image-size", type=_positive_int, help="input size in px (default: the config's)")
    p.add_argument("--warmup", type=_non_negative_int, help="untimed forwards before the latency timing")
    p.add_argument("--repeats", type=_positive_int, help="timed forwards")
    p.add_argument("--set", type=_override, action="append", metavar="KEY=VALUE", help="config override")
    p.set_defaults(handler=_cmd_profile)

    p = sub.add_parser("ui", help="start the MLflow UI on the tracking store")
    _add_tracking_uri(p)
    p.add_argument("--port", type=_positive_int, default=5000, help="default: %(default)s")
    p.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    p.set_defaults(handler=_cmd_ui)

    p = sub.add_parser("init-store", help="create the MLflow store and experiments (once, before parallel jobs)")
    _add_tracking_uri(p)
    p.set_defaults(handler=_cmd_init_store)

    p = sub.add_parser("tables", help="paper-style tables (md, tex, csv) and figures from run outputs")
    p.add_argument("--runs", nargs="+", type=Path, help="metrics.json files or run directories")
    p.add_argument("--costs", nargs="+", type=Path, help="profile JSONs (or metrics.json) for the efficiency table")
    p.add_argument("--scaling", nargs="+", type=Path, help="scaling-sweep JSONs (avs-bench scaling)")
    p.add_argument("--out", type=Path, default=Path("results/tables"), help="tables folder (default: %(default)s)")
    p.add_argument(
        "--figures", type=Path, default=Path("results/figures"), help="figures folder (default: %(default)s)"
    )
    p.add_argument("--no-figures", action="store_true", help="write tables only")
    p.add_argument("--only", nargs="+", choices=TABLES, help="default: all possible")
    p.add_argument("--protocol", choices=PROTOCOLS, default="official", help="default: %(default)s")
    p.add_argument("--reference", default="full", help="variant the ablation Δ is relative to (default: %(default)s)")
    p.add_argument("--published", type=Path, help="published-numbers CSV (default: the packaged one)")
    p.add_argument(
        "--tracking-uri",
        help="also log to this MLflow store: a report run holding the tables and figures, and a parent run per "
        "variant with its seed runs nested and their mean and 95%% interval (default: no logging)",
    )
    p.add_argument(
        "--profile", choices=SIZES, help="experiment of the MLflow report (default: the runs' profile, else smoke)"
    )
    p.set_defaults(handler=_cmd_tables)

    p = sub.add_parser("scaling", help="cost (FLOPs, memory, latency) vs clip length and resolution")
    p.add_argument("--config", required=True, type=Path, help="experiment YAML (e.g. ablations/full.yaml)")
    p.add_argument("--size", choices=SIZES, default="smoke", help="size profile (default: %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="output JSON (a list of profile rows)")
    p.add_argument("--frames", nargs="+", type=_positive_int, default=[5, 10, 20, 40], help="default: %(default)s")
    p.add_argument(
        "--image-sizes", nargs="+", type=_positive_int, default=[64, 96, 128, 192], help="default: %(default)s"
    )
    p.add_argument("--base-frames", type=_positive_int, help="T of the resolution sweep (default: the config's)")
    p.add_argument("--base-image-size", type=_positive_int, help="side of the T sweep (default: the config's)")
    p.add_argument("--measure", choices=MEASUREMENTS, action="append", help="what to measure (repeatable; default all)")
    _add_device(p, "cpu")
    p.add_argument("--batch", type=_positive_int, help="clips per input (default 1)")
    p.add_argument("--warmup", type=_non_negative_int, help="untimed forwards per point")
    p.add_argument("--repeats", type=_positive_int, help="timed forwards per point")
    p.add_argument("--set", type=_override, action="append", metavar="KEY=VALUE", help="config override")
    p.set_defaults(handler=_cmd_scaling)

    return parser


def _one_line(err: BaseException) -> str:
    """The error message on one line (multi-line config errors joined with '; ')."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    if len(lines) > 1:
        text = text.rstrip(":") + ": " + "; ".join(lines[1:])
    return text


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that describe a user mistake (printed as one line), as opposed to a bug (traceback)."""
    from avs_mamba.checkpointing import CheckpointMismatchError
    from avs_mamba.distributed import DeviceUnavailableError
    from avs_mamba.engine import TrainingDivergedError
    from avs_mamba.tracking import TrackingStoreError

    return (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        CheckpointMismatchError,
        TrainingDivergedError,
        TrackingStoreError,
        DeviceUnavailableError,
    )


# Environment problems an OSError reports (full disk, read-only or unwritable destination): one line, with the fix.
_OS_HINTS = {
    errno.ENOSPC: "free space, or write elsewhere (--out)",
    errno.EDQUOT: "free space, or write elsewhere (--out)",
    errno.EROFS: "write elsewhere (--out)",
    errno.EACCES: "write elsewhere (--out), or fix the folder's permissions",
    errno.EPERM: "write elsewhere (--out), or fix the folder's permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder, not a file",
}


def _os_error_line(err: OSError) -> str | None:
    """``PATH: what happened (what to do)`` for the environment errors of ``_OS_HINTS``; None for anything else."""
    if err.errno not in _OS_HINTS:
        return None
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or os.strerror(err.errno)} ({_OS_HINTS[err.errno]})"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``avs-bench``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)
    handler: Callable[[argparse.Namespace], int] = args.handler
    if args.debug:
        return handler(args)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("avs-bench: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        line = _os_error_line(err) if isinstance(err, OSError) else None
        if line is None and not isinstance(err, _user_errors()):
            raise
        print(f"avs-bench: error: {line or _one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
