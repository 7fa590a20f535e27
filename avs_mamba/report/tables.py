"""Paper-style tables from the files the runs wrote: main comparison, ablation, efficiency and scaling.

Every table is built from declared files (each run's ``metrics.json``, each profile JSON, each scaling sweep), never
by searching the MLflow store, so the workflow knows exactly what a table depends on. Each table is written three
ways by :func:`write_table`: Markdown (``.md``, for the README and reviews), LaTeX with booktabs rules (``.tex``, for
papers) and CSV (``.csv``, the numbers unformatted, one row per cell group, for further analysis).

Conventions: M_J and M_F are shown ×100, as AVSBench papers print them. Reproduced numbers are the mean over seeds
± the half-width of its 95 % Student-t confidence interval (:mod:`avs_mamba.report.stats`; one seed shows the mean
alone and the caption says "no interval: 1 seed"). An ablation Δ is the mean of the per-seed differences to the
reference variant (runs paired by seed: same data order and augmentation draws) ± the half-width of its paired-t
interval, marked ``*`` when that interval excludes 0. Which evaluation protocol a table uses is a parameter and is
printed in its caption; published numbers are official-protocol numbers.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avs_mamba.report.stats import Interval, mean_ci, minimum_detectable_effect, paired_delta_ci

__all__ = [
    "TASK_LABELS",
    "MODEL_LABELS",
    "REIMPLEMENTED",
    "COMPONENTS",
    "OPTIONAL_COMPONENTS",
    "Table",
    "load_runs",
    "load_published",
    "load_costs",
    "load_scaling",
    "mean_std",
    "format_mean_std",
    "format_delta",
    "format_ci",
    "format_delta_ci",
    "SUBSET_LABELS",
    "seed_intervals",
    "comparison_table",
    "ablation_table",
    "ablation_components",
    "ablation_order",
    "variant_group",
    "GROUPS",
    "efficiency_table",
    "scaling_table",
    "robustness_table",
    "valid_slope",
    "write_table",
]

TASK_LABELS = {"s4": "S4", "ms3": "MS3", "avss": "AVSS"}
MODEL_LABELS = {"avs_mamba": "AVS-Mamba", "tpavi": "TPAVI", "avsegformer": "AVSegFormer", "avesformer": "AVESFormer"}
# Models whose implementation follows a paper's text because no code was released; the tables footnote them.
REIMPLEMENTED = {
    "avesformer": "AVESFormer is re-implemented from the paper's description (arXiv:2408.01708); no official code "
    "was released, so its reproduced numbers test our reading of the paper, not the authors' model."
}
RUN_KEYS = ("name", "variant", "model", "task", "profile", "seed")
REQUIRED_KEYS = ("run", "test", "config")
METRICS = (("miou", "M_J"), ("fscore", "M_F"))
PUBLISHED_COLUMNS = ("method", "backbone", "input", "selection", "task", "M_J", "M_F", "source", "note")
NO_PUBLISHED = "no published number for this setting"
MISSING = "–"
CHECK, CROSS = "✓", "✗"
SIGNIFICANT = "*"  # a Δ whose 95 % paired interval excludes 0
# Probe subsets of the synthetic test split (avs_mamba.evaluation.PROBE_SUBSETS) as the tables name them.
SUBSET_LABELS = {"temporal_hard": "temporal-hard", "distractor": "distractor", "switching": "switching"}


def _get(config: Mapping[str, Any], dotted: str, source: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``; a missing key names the file and the key."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"{source}: resolved config has no key 'config.{dotted}' (needed by the ablation table)")
        node = node[part]
    return node


def _on(config: Mapping[str, Any], source: str, *keys: str) -> bool:
    return all(bool(_get(config, key, source)) for key in keys)


# Ablation columns, read from the resolved model config of each run (never from the variant's name). A component
# counts as present only when its parent module is enabled too.
COMPONENTS: dict[str, Callable[[Mapping[str, Any], str], Any]] = {
    "MTE-TMB": lambda m, s: _on(m, s, "mte.enabled", "mte.tmb"),
    "V2A frame": lambda m, s: _on(m, s, "mad.enabled", "mad.frame_v2a"),
    "V2A temporal": lambda m, s: _on(m, s, "mad.enabled", "mad.temporal_v2a"),
    "CIP": lambda m, s: _on(m, s, "cip.enabled"),
}
# Shown only when they differ between the rows of a table (e.g. the audio control, or the scan-direction sweep).
OPTIONAL_COMPONENTS: dict[str, Callable[[Mapping[str, Any], str], Any]] = {
    "MTE-VSS": lambda m, s: _on(m, s, "mte.enabled", "mte.spatial"),
    "CIP-TMB": lambda m, s: _on(m, s, "cip.enabled", "cip.tmb"),
    "CIP-A2V": lambda m, s: _on(m, s, "cip.enabled", "cip.a2v"),
    "audio": lambda m, s: _on(m, s, "audio.enabled"),
    "K": lambda m, s: int(_get(m, "scan.k", s)),
}


@dataclass
class Table:
    """One table: ``display`` (formatted strings, rendered to Markdown and LaTeX) and ``data`` (numbers, to CSV).

    ``rules`` are display row indices that get a ``\\midrule`` above them in LaTeX (block separators).
    """

    name: str
    caption: str
    display: pd.DataFrame
    data: pd.DataFrame
    footnotes: list[str] = field(default_factory=list)
    rules: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def _metrics_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand run directories to their ``metrics.json``; a directory without one is searched recursively."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = [path / "metrics.json"] if (path / "metrics.json").is_file() else sorted(path.rglob("metrics.json"))
            if not found:
                raise FileNotFoundError(f"no metrics.json in run directory {path} (nor below it)")
            files += found
        else:
            files.append(path)
    return files


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run from ``metrics.json`` files (or run directories holding them).

    Columns: ``path``, the ``run`` fields (name, variant, model, task, profile, seed), ``test`` (protocol ->
    metrics dict), ``test_subsets`` (probe subset -> protocol -> metrics; empty on real data), ``subset_clips``
    (probe subset -> clips), ``test_clips`` (clips in the test split, None in older files), ``config`` (the resolved
    config), ``cost`` (dict, possibly empty), ``overlays`` (the run's ``overlays/`` folder) and ``wall_time_s``.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a file lacks a required key, or two files describe the same run (task, name, seed).
    """
    rows = []
    for path in _metrics_files(paths):
        record = _read_json(path)
        if not isinstance(record, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(record).__name__}")
        missing = [key for key in REQUIRED_KEYS if key not in record]
        if missing:
            raise ValueError(f"{path} lacks the keys {missing}; expected a metrics.json written by 'avs-bench train'")
        run = record["run"]
        absent = [key for key in RUN_KEYS if key not in run]
        if absent:
            raise ValueError(f"{path}: 'run' lacks {absent}; expected keys {list(RUN_KEYS)}")
        if not isinstance(record["test"], dict) or not record["test"]:
            raise ValueError(f"{path}: 'test' must map protocol names to metric dicts, got {record['test']!r}")
        rows.append(
            {
                "path": str(path),
                **{key: run[key] for key in RUN_KEYS},
                "seed": int(run["seed"]),
                "test": record["test"],
                "test_subsets": record.get("test_subsets") or {},
                "subset_clips": record.get("subset_clips") or {},
                "test_clips": record.get("test_clips"),
                "config": record["config"],
                "cost": record.get("cost") or {},
                "overlays": str(path.parent / "overlays"),
                "wall_time_s": record.get("wall_time_s", math.nan),
                "robustness": record.get("robustness") or {},
            }
        )
    if not rows:
        raise ValueError("no runs given: pass metrics.json files or run directories")
    frame = pd.DataFrame(rows)
    dup = frame[frame.duplicated(["task", "name", "seed"], keep=False)]
    if not dup.empty:
        raise ValueError(f"the same run appears more than once (task, name, seed): {sorted(dup['path'])}")
    return frame


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """The published-numbers sheet (default: the packaged ``published_numbers.csv``); every row must cite a source."""
    if path is None:
        text = resources.files("avs_mamba.report").joinpath("published_numbers.csv").read_text()
        where = "published_numbers.csv"
    else:
        where = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"published numbers file {path} does not exist")
        text = Path(path).read_text()
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or list(rows[0]) != list(PUBLISHED_COLUMNS):
        got = list(rows[0]) if rows else []
        raise ValueError(f"{where}: expected columns {list(PUBLISHED_COLUMNS)}, got {got}")
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        if not row["source"].strip():
            raise ValueError(f"{where} line {i}: {row['method']} {row['task']} has no source")
        if row["task"] not in TASK_LABELS:
            raise ValueError(f"{where} line {i}: unknown task {row['task']!r}; expected one of {list(TASK_LABELS)}")
    frame = pd.DataFrame(rows)
    for column in ("M_J", "M_F"):
        frame[column] = pd.to_numeric(frame[column].replace("", np.nan), errors="raise")
    return frame


def model_label(name: str, model: str | None) -> str:
    """Row label of a cost record: ``TPAVI`` for a model's own config, ``AVS-Mamba (no_tmb)`` for a variant."""
    if model is None:
        return name
    return MODEL_LABELS.get(model, model) if name == model else f"{MODEL_LABELS.get(model, model)} ({name})"


COST_KEYS = ("params_total", "gflops_fvcore", "peak_mem_infer_mb", "latency_ms_median", "fps", "device")


def load_costs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Cost records from profile JSONs (``avs-bench profile``) or from the ``cost`` block of run ``metrics.json``.

    One row per file: the profile keys plus ``label`` (the table row name) and ``task``.
    """
    rows = []
    for path in map(Path, paths):
        record = _read_json(path)
        if not isinstance(record, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(record).__name__}")
        if "cost" in record and "run" in record:  # a run's metrics.json
            cost, run = dict(record["cost"] or {}), record["run"]
            label, task, model = run.get("name"), run.get("task"), run.get("model")
        else:  # a profile JSON; the workflow keeps them as results/profile/{profile}/{task}/{name}.json
            cost = dict(record)
            folder = path.parent.name if path.parent.name in TASK_LABELS else None
            label, task, model = cost.get("name", cost.get("variant")), cost.get("task") or folder, cost.get("model")
        missing = [key for key in COST_KEYS if key not in cost]
        if missing:
            raise ValueError(f"{path}: cost record lacks {missing}; expected the keys of avs_mamba.profiling")
        rows.append(
            {"path": str(path), **cost, "label": model_label(label or model, model), "model": model, "task": task}
        )
    if not rows:
        raise ValueError("no cost files given")
    return pd.DataFrame(rows)


def load_scaling(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Rows of scaling sweeps (``avs-bench scaling`` JSON: a list of profile dicts, or ``{"rows": [...]}``)."""
    rows: list[dict[str, Any]] = []
    for path in map(Path, paths):
        record = _read_json(path)
        points = record.get("rows") if isinstance(record, dict) else record
        if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
            raise ValueError(f"{path}: expected a list of profile rows (or {{'rows': [...]}})")
        for point in points:
            missing = [key for key in ("frames", "image_size") if key not in point]
            if missing:
                raise ValueError(f"{path}: a scaling row lacks {missing}")
            name = point.get("name") or point.get("variant") or point.get("model")
            rows.append({"path": str(path), **point, "label": model_label(name, point.get("model"))})
    if not rows:
        raise ValueError("no scaling rows given")
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# Formatting


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof = 1; NaN for one value) and count of the finite values."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan, 0
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return float(arr.mean()), std, int(arr.size)


def format_mean_std(mean: float, std: float, digits: int = 1) -> str:
    """``"72.3 ± 1.2"``; the mean alone when the spread is undefined; ``"–"`` when there is no value."""
    if not math.isfinite(mean):
        return MISSING
    return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_delta(delta: float, digits: int = 1) -> str:
    """Signed difference, ``"+1.2"`` / ``"−0.8"`` (a true minus sign), ``"0.0"`` for a rounded zero."""
    if not math.isfinite(delta):
        return MISSING
    text = f"{abs(delta):.{digits}f}"
    if float(text) == 0:
        return text
    return ("+" if delta > 0 else "−") + text


def format_ci(interval: Interval | None, digits: int = 1) -> str:
    """``"72.3 ± 1.9"`` (mean ± 95 % CI half-width); the mean alone for one seed; ``"–"`` without a value."""
    if interval is None or not math.isfinite(interval.mean):
        return MISSING
    return format_mean_std(interval.mean, interval.half_width, digits)


def format_delta_ci(interval: Interval | None, digits: int = 1) -> str:
    """``"−3.1 ± 1.2*"``: signed mean paired difference ± CI half-width, ``*`` when the interval excludes 0."""
    if interval is None or not math.isfinite(interval.mean):
        return MISSING
    text = format_delta(interval.mean, digits)
    if math.isfinite(interval.half_width):
        text += f" ± {interval.half_width:.{digits}f}"
    return text + (SIGNIFICANT if interval.excludes_zero else "")


def _number(value: float, digits: int) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _metric(test: Mapping[str, Any], protocol: str, key: str, source: str) -> float:
    if protocol not in test:
        raise ValueError(f"{source}: no '{protocol}' protocol in 'test' (has {sorted(test)})")
    if key not in test[protocol]:
        raise ValueError(f"{source}: test.{protocol} has no '{key}' (has {sorted(test[protocol])})")
    value = test[protocol][key]
    return math.nan if value is None else 100.0 * float(value)


def _ordered_tasks(tasks: Iterable[str]) -> list[str]:
    present = set(tasks)
    return [t for t in TASK_LABELS if t in present]


def _profile_note(frame: pd.DataFrame) -> str:
    profiles = sorted(set(frame["profile"]))
    seeds = frame.groupby("task")["seed"].nunique()
    n = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    return f"reproduced ({', '.join(profiles)}, {n} seed{'s' if seeds.max() > 1 else ''})"


# ----------------------------------------------------------------------------------------------------------------
# Tables


def _backbone_key(name: str) -> str:
    """``pvt_v2_b5`` and ``PVT-v2-B5``, ``resnet50`` and ``ResNet-50`` name the same backbone."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def run_setting(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's numbers depend on beyond the model: input size, evaluation batch (the official M_F picks its
    threshold per batch) and the split the checkpoint was selected on."""
    data, evaluation = config.get("data", {}), config.get("eval", {})
    return {
        "input": data.get("image_size"),
        "eval_batch": evaluation.get("batch_size"),
        "selection": evaluation.get("selection", "val"),  # runs recorded before the key existed selected on val
    }


def _setting_text(settings: Mapping[str, Mapping[str, Any]]) -> str:
    """``512 px, eval batch 1, selection val``; per task (``S4 ...; AVSS ...``) when the tasks differ."""

    def one(s: Mapping[str, Any]) -> str:
        size, batch = (MISSING if s[k] is None else s[k] for k in ("input", "eval_batch"))
        return f"{size} px, eval batch {batch}, selection {s['selection']}"

    texts = {task: one(s) for task, s in settings.items()}
    if len(set(texts.values())) <= 1:
        return next(iter(texts.values()), MISSING)
    return "; ".join(f"{TASK_LABELS[t]} {text}" for t, text in texts.items())


def _values(group: pd.DataFrame, protocol: str, key: str, subset: str | None = None) -> dict[int, float]:
    """Seed -> metric ×100 of one variant's runs, on the whole test split or on one probe subset of it."""
    out: dict[int, float] = {}
    for run in group.itertuples():
        if subset is None:
            value = _metric(run.test, protocol, key, run.path)
        else:
            value = _metric(run.test_subsets.get(subset, {}), protocol, key, f"{run.path} ({subset})")
        # ×100 leaves float noise (0.85 * 100 = 85.00000000000001): without rounding, two runs with the same
        # score would differ by 1e-14 and a zero-spread Δ of 1e-14 would "exclude 0"
        out[int(run.seed)] = round(value, 9)
    return out


def _seed_stats(runs: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Per (name, task): mean/std/n of M_J and M_F (×100) over seeds, with the 95 % CI bounds (``*_lo``/``*_hi``)."""
    rows = []
    for (name, task), group in runs.groupby(["name", "task"], sort=False):
        row: dict[str, Any] = {"name": name, "task": task, "n_seeds": len(group)}
        for key, label in METRICS:
            interval = mean_ci(list(_values(group, protocol, key).values()))
            row[label], row[f"{label}_std"] = interval.mean, interval.std
            row[f"{label}_lo"], row[f"{label}_hi"] = interval.lo, interval.hi
        rows.append(row)
    return pd.DataFrame(rows)


# Cost columns of the ablation and comparison tables, from each run's own metrics.json "cost" block:
# (record key, column, CSV metric, scale, digits).
RUN_COSTS = (
    ("params_total", "params (M)", "params_m", 1e-6, 2),
    ("gflops_fvcore", "GFLOPs", "gflops", 1.0, 2),
    ("peak_mem_train_mb", "train mem (MB)", "peak_mem_train_mb", 1.0, 0),
    ("peak_mem_infer_mb", "infer mem (MB)", "peak_mem_infer_mb", 1.0, 0),
)
CostStats = dict[tuple[str, str], dict[str, tuple[float, float, int]]]


def _run_costs(runs: pd.DataFrame) -> tuple[str | None, CostStats]:
    """The task whose costs the display shows (the first with a cost recorded; None: no run has one) and, per
    (name, task), mean / std / n over seeds of each ``RUN_COSTS`` figure in its column's unit."""
    stats: CostStats = {}
    for (name, task), group in runs.groupby(["name", "task"], sort=False):
        stats[(name, task)] = {
            key: mean_std([_float(cost.get(key)) * scale for cost in group["cost"]])
            for key, _, _, scale, _ in RUN_COSTS
        }
    measured = {task for (_, task), figures in stats.items() if any(n for _, _, n in figures.values())}
    return next((t for t in _ordered_tasks(runs["task"]) if t in measured), None), stats


def _cost_columns(task: str | None) -> list[str]:
    """``S4 params (M)``, ...: the display columns of the costs of ``task``; none when no cost was recorded."""
    return [f"{TASK_LABELS[task]} {column}" for _, column, *_ in RUN_COSTS] if task else []


def _cost_cells(stats: CostStats, name: str, task: str) -> list[str]:
    figures = stats.get((name, task), {})
    return [_number(figures.get(key, (math.nan,))[0], digits) for key, _, _, _, digits in RUN_COSTS]


def _cost_rows(stats: CostStats, name: str, task: str) -> Iterator[tuple[str, float, float, int]]:
    """(CSV metric, mean, std, n) of each cost figure measured for one (name, task)."""
    for key, _, metric, _, _ in RUN_COSTS:
        mean, std, n = stats.get((name, task), {}).get(key, (math.nan, math.nan, 0))
        if n:
            yield metric, mean, std, n


def _cost_note(runs: pd.DataFrame, task: str) -> str:
    """What the cost columns show: which task's runs, the FLOP counter and input shape, memory phases and method."""
    group = runs[runs["task"] == task]
    costs = [c for c in group["cost"] if c]
    counted = [c for c in costs if _finite(c.get("gflops_fvcore"))]
    shapes = ", ".join(sorted({f"{c.get('batch')}×{c.get('frames')}×3×{c.get('image_size')}²" for c in counted}))
    batches = sorted(
        {f"{cfg.get('train', {}).get('batch_size')}/{cfg.get('eval', {}).get('batch_size')}" for cfg in group["config"]}
    )
    methods = sorted({c["memory_method"] for c in costs if c.get("memory_method")})
    return (
        f"Cost columns: the {TASK_LABELS[task]} runs' own cost records (metrics.json), mean over seeds. GFLOPs: "
        f"fvcore, one fused multiply-add = one FLOP, per forward of one clip ({shapes or 'not counted'}). Memory "
        f"(MiB): peak of each run's training steps and of its validation and test passes (train/eval batch "
        f"{', '.join(batches)}), measured by " + ("; ".join(methods) if methods else "nothing (not recorded)") + "."
    )


def seed_intervals(
    runs: pd.DataFrame, name: str, reference: str, task: str, protocol: str, key: str, subset: str | None = None
) -> tuple[Interval, Interval | None]:
    """(mean CI of variant ``name``, paired Δ CI vs ``reference``) for one task, metric and (optional) subset.

    The Δ is None for the reference itself. Seeds of the variant and the reference must match one to one.
    """
    mine = _values(runs[(runs["name"] == name) & (runs["task"] == task)], protocol, key, subset)
    interval = mean_ci(list(mine.values()))
    if name == reference:
        return interval, None
    ref = _values(runs[(runs["name"] == reference) & (runs["task"] == task)], protocol, key, subset)
    try:
        return interval, paired_delta_ci(mine, ref)
    except ValueError as err:
        raise ValueError(
            f"ablation table: {name} ({TASK_LABELS[task]}) ran seeds {sorted(mine)}, {reference} ran {sorted(ref)}; "
            f"Δ pairs runs by seed, so both need the same seeds ({err})"
        ) from None


def _proper_subsets(runs: pd.DataFrame, task: str) -> list[str]:
    """Probe subsets every run of ``task`` was scored on that are smaller than the test split (others repeat it)."""
    group = runs[runs["task"] == task]
    common = set.intersection(*(set(s) for s in group["test_subsets"])) if len(group) else set()
    shown = []
    for subset in SUBSET_LABELS:
        if subset not in common:
            continue
        sizes = {
            (int(c.get(subset, 0)), int(n) if pd.notna(n) else int(t[next(iter(t))].get("num_videos", 0)))
            for c, n, t in zip(group["subset_clips"], group["test_clips"], group["test"], strict=True)
        }
        if any(0 < n < whole for n, whole in sizes):
            shown.append(subset)
    return shown


def comparison_table(
    runs: pd.DataFrame,
    published: pd.DataFrame | None = None,
    *,
    protocol: str = "official",
    reference: str = "full",
    methods: Iterable[str] | None = None,
) -> Table:
    """Main comparison: reproduced M_J / M_F per task (mean ± 95 % CI over seeds) above the published numbers.

    Reproduced rows are the baselines and AVS-Mamba's ``reference`` variant (its ablations belong in the ablation
    table). Each is followed by the published numbers of the *same setting* (method, backbone, input size and
    selection split per task), or says "no published number for this setting". Below the rule, every published row
    of ``methods`` (default: the methods reproduced here, by display name) with its setting and source. Every row
    states its setting (input size, evaluation batch for reproduced rows, selection split).
    """
    published = load_published() if published is None else published
    keep = (runs["model"] != "avs_mamba") | (runs["variant"] == reference)
    runs = runs[keep]
    if runs.empty:
        raise ValueError(f"comparison table: no baseline runs and no AVS-Mamba '{reference}' runs among the inputs")
    stats = _seed_stats(runs, protocol)
    info = runs.drop_duplicates("name").set_index("name")
    tasks = _ordered_tasks(list(stats["task"]) + list(published["task"]))
    method_names = {name: MODEL_LABELS.get(info.loc[name, "model"], name) for name in info.index}
    wanted = set(methods) if methods is not None else set(method_names.values())
    published = published[published["method"].str.split(" (", regex=False).str[0].str.rstrip("*").isin(wanted)]
    cost_task, costs = _run_costs(runs)
    cost_columns = _cost_columns(cost_task)
    metric_columns = [f"{TASK_LABELS[t]} {m}" for t in tasks for _, m in METRICS]
    columns = ["method", "backbone", *metric_columns, *cost_columns, "setting", "source"]
    display, data, footnotes = [], [], []
    marks: dict[str, str] = {}

    def mark(note: str) -> str:
        if note not in marks:
            marks[note] = "†‡§¶"[len(marks)] if len(marks) < 4 else f"[{len(marks) + 1}]"
            footnotes.append(f"{marks[note]} {note}")
        return marks[note]

    for name in info.index:
        model = info.loc[name, "model"]
        method = method_names[name] + (mark(REIMPLEMENTED[model]) if model in REIMPLEMENTED else "")
        mine = stats[stats["name"] == name].set_index("task")
        group = runs[runs["name"] == name]
        backbone = str(info.loc[name, "config"].get("model", {}).get("backbone", MISSING))
        settings = {
            task: run_setting(group[group["task"] == task].iloc[0]["config"])
            for task in tasks
            if task in set(group["task"])
        }
        cells = []
        for task in tasks:
            for _, label in METRICS:
                if task in mine.index:
                    half = (mine.loc[task, f"{label}_hi"] - mine.loc[task, f"{label}_lo"]) / 2  # NaN for 1 seed
                    cells.append(format_mean_std(mine.loc[task, label], half))
                    data.append(
                        {
                            "kind": "reproduced",
                            "method": method_names[name],
                            "name": name,
                            "backbone": backbone,
                            "task": task,
                            "metric": label,
                            "value": mine.loc[task, label],
                            "std": mine.loc[task, f"{label}_std"],
                            "ci_lo": mine.loc[task, f"{label}_lo"],
                            "ci_hi": mine.loc[task, f"{label}_hi"],
                            "n_seeds": int(mine.loc[task, "n_seeds"]),
                            "protocol": protocol,
                            **settings[task],
                            "source": _profile_note(group),
                        }
                    )
                else:
                    cells.append(MISSING)
        cells += _cost_cells(costs, name, cost_task) if cost_task else []
        for task in mine.index:  # the CSV keeps every task's costs
            for metric, mean, std, n in _cost_rows(costs, name, task):
                data.append(
                    {
                        "kind": "reproduced",
                        "method": method_names[name],
                        "name": name,
                        "backbone": backbone,
                        "task": task,
                        "metric": metric,
                        "value": mean,
                        "std": std,
                        "n_seeds": n,
                        "protocol": "",
                        "source": _profile_note(group),
                    }
                )
        display.append([method, backbone, *cells, _setting_text(settings), _profile_note(group)])
        beside = _same_setting_row(published, method_names[name], backbone, tasks, settings)
        beside[-2:-2] = [MISSING] * len(cost_columns)  # published costs are not comparable to measured ones
        display.append(beside)
    first_published = len(display)
    for (method, backbone), group in published.groupby(["method", "backbone"], sort=False):
        by_task = group.set_index("task")
        source = "; ".join(dict.fromkeys(group["source"]))
        cells = []
        for task in tasks:
            for _, label in METRICS:
                value = by_task.loc[task, label] if task in by_task.index else math.nan
                cells.append(_number(value, 2 if label == "M_J" else 1))
                if task in by_task.index:
                    data.append(
                        {
                            "kind": "published",
                            "method": method,
                            "name": "",
                            "backbone": backbone,
                            "task": task,
                            "metric": label,
                            "value": value,
                            "std": math.nan,
                            "ci_lo": math.nan,
                            "ci_hi": math.nan,
                            "n_seeds": 0,
                            "protocol": "official",
                            "input": by_task.loc[task, "input"],
                            "selection": by_task.loc[task, "selection"],
                            "source": by_task.loc[task, "source"],
                        }
                    )
        for note in dict.fromkeys(n for n in group["note"] if n):
            method += mark(f"{method.rstrip('†‡§¶')} ({backbone}): {note}.")
        cells += [MISSING] * len(cost_columns)  # published costs are not comparable to measured ones
        settings = {t: {"input": r["input"], "selection": r["selection"]} for t, r in by_task.iterrows()}
        texts = {t: f"{s['input']} px, selection {s['selection']}" for t, s in settings.items()}
        text = (
            next(iter(texts.values()))
            if len(set(texts.values())) == 1
            else "; ".join(f"{TASK_LABELS[t]} {v}" for t, v in texts.items())
        )
        display.append([method, backbone, *cells, text, source])
    caption = (
        f"Main comparison on AVSBench: M_J (Jaccard) and M_F (F-score, β² = 0.3) ×100, {protocol} protocol. "
        "Reproduced rows: mean ± half-width of its 95 % confidence interval over seeds (Student t; one seed: the "
        "mean alone, no interval). Published rows: the numbers reported by the cited source."
    )
    if cost_task:
        footnotes.append(_cost_note(runs, cost_task))
    return Table(
        "comparison",
        caption,
        pd.DataFrame(display, columns=columns),
        pd.DataFrame(data),
        footnotes,
        rules=[first_published] if len(display) > first_published > 0 else [],
    )


def _same_setting_row(
    published: pd.DataFrame, method: str, backbone: str, tasks: list[str], settings: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """The published numbers of a reproduced row's setting, task by task (``–`` where none was published)."""
    cells, sources, missing = [], [], []
    for task in tasks:
        match = pd.DataFrame()
        if task in settings:
            s = settings[task]
            match = published[
                (published["method"] == method)
                & (published["backbone"].map(_backbone_key) == _backbone_key(backbone))
                & (published["task"] == task)
                & (published["input"].astype(str) == str(s["input"]))
                & (published["selection"] == s["selection"])
            ]
            if match.empty:
                missing.append(TASK_LABELS[task])
        for _, label in METRICS:
            cells.append(_number(match.iloc[0][label], 2 if label == "M_J" else 1) if len(match) else MISSING)
        sources += [] if match.empty else [match.iloc[0]["source"]]
    note = "; ".join(dict.fromkeys(sources))
    if missing:
        note = "; ".join(filter(None, [note, f"{', '.join(missing)}: {NO_PUBLISHED}"]))
    return ["  published, same setting", backbone, *cells, MISSING, note]


def _components(config: Mapping[str, Any], source: str, specs: Mapping[str, Callable]) -> dict[str, Any]:
    model = config.get("model")
    if not isinstance(model, Mapping):
        raise ValueError(f"{source}: resolved config has no 'model' section")
    return {column: spec(model, source) for column, spec in specs.items()}


def _symbol(value: Any) -> str:
    return (CHECK if value else CROSS) if isinstance(value, bool) else str(value)


def variant_group(components: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    """Which block of the ablation study a variant belongs to, from how its components differ from the reference's:
    ``controls`` (audio off), ``scan K`` (only the number of TMB directions), ``V2A`` (only the decoder's
    vision-to-audio levels) or ``components`` (any other module switched off)."""
    diff = {c for c in components if components[c] != reference.get(c)}
    if "audio" in diff:
        return "controls"
    if diff == {"K"}:
        return "scan K"
    if diff and diff <= {"V2A frame", "V2A temporal"}:
        return "V2A"
    return "components"


GROUPS = ("components", "V2A", "scan K", "controls")


def ablation_components(runs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Variant name -> component values (``COMPONENTS`` and ``OPTIONAL_COMPONENTS``) read from its resolved config."""
    specs = {**COMPONENTS, **OPTIONAL_COMPONENTS}
    comps: dict[str, dict[str, Any]] = {}
    for name, group in runs.groupby("name", sort=False):
        seen = [_components(c, p, specs) for c, p in zip(group["config"], group["path"], strict=True)]
        if any(s != seen[0] for s in seen[1:]):
            raise ValueError(f"ablation table: runs of {name!r} have different components: {sorted(group['path'])}")
        comps[name] = seen[0]
    return comps


def ablation_order(runs: pd.DataFrame, reference: str) -> tuple[str, list[tuple[str, str]]]:
    """(reference run name, [(variant, group)] with the reference first, then by group and name)."""
    runs = runs[runs["model"] == "avs_mamba"]
    if runs.empty:
        raise ValueError("ablation table: no AVS-Mamba runs among the inputs")
    if reference not in set(runs["variant"]):
        raise ValueError(
            f"ablation table: no run of the reference variant {reference!r} (found {sorted(set(runs['variant']))}); "
            "Δ columns are relative to it"
        )
    comps = ablation_components(runs)
    ref_name = runs.loc[runs["variant"] == reference, "name"].iloc[0]
    groups = {n: variant_group(c, comps[ref_name]) for n, c in comps.items() if n != ref_name}
    rest = sorted(groups, key=lambda n: (GROUPS.index(groups[n]), n))
    return ref_name, [(ref_name, "reference")] + [(n, groups[n]) for n in rest]


def ablation_table(runs: pd.DataFrame, *, protocol: str = "official", reference: str = "full") -> Table:
    """Ablation table in the paper's style: ✓/✗ component columns, M_J / M_F per task, paired Δ vs ``reference``.

    Only AVS-Mamba runs are used. Component columns come from each run's resolved config; the optional columns
    (``OPTIONAL_COMPONENTS``) appear only when they differ between rows. Each value is the seed mean ± the half-width
    of its 95 % Student-t interval; each Δ the mean of the per-seed differences to the reference (paired by seed)
    ± its paired-t half-width, marked ``*`` when that interval excludes 0. On the synthetic data each task also gets
    M_J and ΔM_J on its probe subsets that are proper parts of the test split (e.g. temporal-hard clips), where the
    temporal components should matter. The caption gives the seed count and the minimum detectable effect.
    """
    runs = runs[runs["model"] == "avs_mamba"]
    ref_name, order = ablation_order(runs, reference)
    comps = ablation_components(runs)
    shown = list(COMPONENTS) + [c for c in OPTIONAL_COMPONENTS if len({str(comp[c]) for comp in comps.values()}) > 1]
    tasks = _ordered_tasks(runs["task"])
    # (task, metric key, metric label, subset): the whole split's M_J and M_F, then M_J of each probe subset
    cells: list[tuple[str, str, str, str | None]] = []
    for task in tasks:
        cells += [(task, key, label, None) for key, label in METRICS]
        cells += [(task, "miou", "M_J", sub) for sub in _proper_subsets(runs, task)]
    columns = ["variant", *shown]
    for task, _, label, subset in cells:
        suffix = f" {SUBSET_LABELS[subset]}" if subset else ""
        columns += [f"{TASK_LABELS[task]} {label}{suffix}", f"{TASK_LABELS[task]} Δ{label}{suffix}"]
    cost_task, costs = _run_costs(runs)
    columns += _cost_columns(cost_task)
    columns.append("setting")  # input size, evaluation batch and selection split of the row's runs
    display, data, rules = [], [], []
    diff_sd: dict[tuple[str, str, str | None], list[tuple[float, int]]] = {}
    previous_group = None
    for name, group in order:
        if previous_group is not None and group != previous_group:
            rules.append(len(display))
        previous_group = group
        row: list[str] = [name, *(_symbol(comps[name][c]) for c in shown)]
        for task, key, label, subset in cells:
            if (
                not ((runs["name"] == name) & (runs["task"] == task)).any()
                or not ((runs["name"] == ref_name) & (runs["task"] == task)).any()
            ):
                row += [MISSING, MISSING]
                continue
            interval, delta = seed_intervals(runs, name, ref_name, task, protocol, key, subset)
            row += [format_ci(interval), format_delta_ci(delta)]
            if delta is not None and delta.n > 1:
                diff_sd.setdefault((task, label, subset), []).append((delta.std, delta.n))
            data.append(
                {
                    "variant": name,
                    "group": group,
                    **{c: comps[name][c] for c in shown},
                    "task": task,
                    "subset": subset or "all",
                    "metric": label,
                    "mean": interval.mean,
                    "ci_lo": interval.lo,
                    "ci_hi": interval.hi,
                    "std": interval.std,
                    "n_seeds": interval.n,
                    "delta": 0.0 if delta is None else delta.mean,
                    "delta_lo": math.nan if delta is None else delta.lo,
                    "delta_hi": math.nan if delta is None else delta.hi,
                    "delta_excludes_zero": False if delta is None else delta.excludes_zero,
                    "mde": math.nan if delta is None else minimum_detectable_effect(delta.std, delta.n),
                    "protocol": protocol,
                }
            )
        row += _cost_cells(costs, name, cost_task) if cost_task else []
        for task in tasks:  # the CSV keeps every task's costs, Δ against the reference's
            ref_costs = {m: v for m, v, _, _ in _cost_rows(costs, ref_name, task)}
            for metric, mean, std, n in _cost_rows(costs, name, task):
                data.append(
                    {
                        "variant": name,
                        "group": group,
                        **{c: comps[name][c] for c in shown},
                        "task": task,
                        "subset": "all",
                        "metric": metric,
                        "mean": mean,
                        "std": std,
                        "n_seeds": n,
                        "delta": mean - ref_costs.get(metric, math.nan),
                        "protocol": "",
                    }
                )
        mine = runs[runs["name"] == name]
        row.append(
            _setting_text(
                {t: run_setting(mine[mine["task"] == t].iloc[0]["config"]) for t in tasks if t in set(mine["task"])}
            )
        )
        display.append(row)
    seeds = sorted(set(runs.groupby(["name", "task"])["seed"].nunique()))
    n_text = str(seeds[0]) if seeds[0] == seeds[-1] else f"{seeds[0]}–{seeds[-1]}"
    if seeds[-1] < 2:
        stats_text = "no interval: 1 seed; Δ = variant − reference of that seed"
    else:
        mdes = []
        for (task, label, subset), pairs in diff_sd.items():
            # pooled spread of the per-seed differences over the variants, at the table's seed count
            n = min(k for _, k in pairs)
            pooled = math.sqrt(sum(sd**2 for sd, _ in pairs) / len(pairs))
            where = f"{TASK_LABELS[task]} {label}" + (f" {SUBSET_LABELS[subset]}" if subset else "")
            mdes.append(f"{where} {minimum_detectable_effect(pooled, n):.1f}")
        stats_text = (
            "value ± half-width of the 95 % Student-t confidence interval over seeds; Δ = mean of the per-seed "
            f"differences variant − {ref_name} (runs paired by seed: same data order and augmentation draws) ± "
            f"half-width of its 95 % paired-t interval (two-sided paired t-test); {SIGNIFICANT} = interval excludes 0. "
            "Minimum detectable effect (paired t, α = 0.05, power 0.8, pooled spread of the differences): "
            + ", ".join(mdes)
        )
    caption = (
        f"AVS-Mamba ablations ({_profile_note(runs)}, n = {n_text} seeds): M_J / M_F ×100, {protocol} protocol; "
        f"{stats_text}. Components are read from each run's resolved config."
    )
    footnotes = [
        "MTE-TMB: Temporal Mamba Block of the encoder; V2A frame / temporal: frame- and temporal-level vision-to-audio "
        "blocks of the decoder; CIP: Contextual Integration Pyramid (✗ = plain FPN)."
    ]
    subsets = sorted({sub for *_, sub in cells if sub})
    if subsets:
        from avs_mamba.evaluation import PROBE_SUBSETS

        footnotes.append(
            "Probe subsets of the synthetic test split (synth_clips.csv): "
            + "; ".join(f"{SUBSET_LABELS[sub]}: {PROBE_SUBSETS[sub]}" for sub in subsets)
            + ". Their M_J is computed as if the subset were evaluated alone."
        )
    blocks = ", ".join(dict.fromkeys(g for _, g in order[1:]))
    footnotes.append(f"Row blocks: reference, then {blocks} (grouped by which components differ from the reference).")
    if cost_task:
        footnotes.append(_cost_note(runs, cost_task))
    return Table("ablation", caption, pd.DataFrame(display, columns=columns), pd.DataFrame(data), footnotes, rules)


def efficiency_table(costs: pd.DataFrame) -> Table:
    """Params, GFLOPs, peak memory, latency and FPS per model, with the input shape, counter and device named."""
    display, data = [], []
    for _, rec in costs.iterrows():
        shape = f"{rec.get('batch', 1)}×{rec.get('frames', '?')}×3×{rec.get('image_size', '?')}²"
        params_m = _float(rec["params_total"]) / 1e6
        row = {
            "model": rec["label"],
            "task": rec.get("task") or "",
            "input": shape,
            "params_m": params_m,
            "gflops": _float(rec["gflops_fvcore"]),
            "peak_mem_infer_mb": _float(rec["peak_mem_infer_mb"]),
            "peak_mem_train_mb": _float(rec.get("peak_mem_train_mb")),
            "latency_ms": _float(rec["latency_ms_median"]),
            "latency_iqr_ms": _float(rec.get("latency_ms_iqr")),
            "fps": _float(rec["fps"]),
            "device": rec["device"] + (f" ({int(rec['threads'])} threads)" if _finite(rec.get("threads")) else ""),
            "memory_method": rec.get("memory_method", ""),
            "error": rec.get("error") or "",
        }
        data.append(row)
        latency = _number(row["latency_ms"], 1)
        if math.isfinite(row["latency_ms"]) and math.isfinite(row["latency_iqr_ms"]):
            latency += f" (IQR {row['latency_iqr_ms']:.1f})"
        display.append(
            [
                row["model"],
                TASK_LABELS.get(row["task"], row["task"]) or MISSING,
                shape,
                _number(params_m, 2),
                _number(row["gflops"], 2),
                _number(row["peak_mem_infer_mb"], 0),
                _number(row["peak_mem_train_mb"], 0),
                latency,
                _number(row["fps"], 1),
                row["device"],
            ]
        )
    columns = [
        "model",
        "task",
        "input (B×T×3×H×W)",
        "params (M)",
        "GFLOPs†",
        "peak mem infer (MB)‡",
        "peak mem train (MB)‡",
        "latency (ms)",
        "FPS",
        "device",
    ]
    methods = sorted({m for m in costs.get("memory_method", pd.Series(dtype=str)).dropna() if m})
    footnotes = [
        "† fvcore FlopCountAnalysis with the registered selective-scan handle (9·B·L·D·N, + B·D·L for D and for z); "
        "fvcore counts one fused multiply-add as one FLOP. Per forward pass of one clip of the input shape shown, "
        "audio included.",
        "‡ " + ("; ".join(methods) if methods else "peak memory as measured by avs_mamba.profiling") + ".",
        "Latency: median over timed forward passes after warm-up (eval mode, inference_mode); FPS = B·T / median.",
    ]
    errors = [f"{r['model']}: {r['error']}" for r in data if r["error"]]
    if errors:
        footnotes.append("Measurement errors: " + "; ".join(errors))
    caption = "Efficiency: parameters, compute, memory and speed of each model at the input shape it was run with."
    return Table("efficiency", caption, pd.DataFrame(display, columns=columns), pd.DataFrame(data), footnotes)


ROBUSTNESS_CONDITIONS = ("silence", "noise", "swapped")  # avs_mamba.robustness.NEGATIVE_CONDITIONS


def robustness_table(runs: pd.DataFrame, *, protocol: str = "official", split: str = "test") -> Table:
    """Audio reliance per model (one row per task and model, mean ± std over seeds, ×100): M_J / M_F with the
    original audio, FPR under each negative condition, G-FPR, G-mIoU and G-F (definitions in
    :mod:`avs_mamba.robustness`), and M_J under each negative condition (scored against the original masks).

    Only runs whose ``metrics.json`` has a ``robustness.{split}`` block (``avs-bench evaluate --audio-condition``)
    enter; the others are named in a footnote.

    Raises:
        ValueError: no run has a robustness block for ``split`` and ``protocol``.
    """
    usable = [
        row for _, row in runs.iterrows() if protocol in ((row["robustness"] or {}).get(split) or {}).get("summary", {})
    ]
    skipped = sorted(
        f"{row['task']}/{row['name']}/seed{row['seed']}"
        for _, row in runs.iterrows()
        if row.path not in {u.path for u in usable}
    )
    if not usable:
        raise ValueError(
            f"no run has robustness results for split '{split}' and protocol '{protocol}'; run `avs-bench evaluate "
            "--audio-condition silence --audio-condition noise --audio-condition swapped` on the runs first"
        )
    present = [c for c in ROBUSTNESS_CONDITIONS if any(c in u["robustness"][split]["conditions"] for u in usable)]
    groups: dict[tuple[str, str], list[Any]] = {}
    for row in usable:
        groups.setdefault((row["task"], row["name"]), []).append(row)
    tasks = list(TASK_LABELS)
    order = sorted(
        groups, key=lambda k: (tasks.index(k[0]), groups[k][0]["model"] != "avs_mamba", k[1] != "full", k[1])
    )
    display, data = [], []
    for task, name in order:
        rows = groups[(task, name)]
        label = model_label(name, rows[0]["model"])
        values: dict[str, list[float]] = {}
        for row in rows:
            block = row["robustness"][split]
            summary, conditions = block["summary"][protocol], block["conditions"]
            cells_of_run = {"M_J": summary["miou"], "M_F": summary["fscore"]}
            for c in present:
                cells_of_run[f"FPR {c}"] = summary["by_condition"].get(c, {}).get("fpr")
                cells_of_run[f"M_J {c}"] = (conditions.get(c) or {}).get(protocol, {}).get("miou")
            cells_of_run |= {"G-FPR": summary["g_fpr"], "G-mIoU": summary["g_miou"], "G-F": summary["g_fscore"]}
            for key, value in cells_of_run.items():
                values.setdefault(key, []).append(math.nan if value is None else 100.0 * float(value))
        columns = [
            "M_J",
            "M_F",
            *[f"FPR {c}" for c in present],
            "G-FPR",
            "G-mIoU",
            "G-F",
            *[f"M_J {c}" for c in present],
        ]
        record: dict[str, Any] = {"model": label, "name": name, "task": task, "n_seeds": len(rows)}
        cells = [label, TASK_LABELS.get(task, task), str(len(rows))]
        for column in columns:
            mean, std, _ = mean_std(values[column])
            record[f"{column} mean"], record[f"{column} std"] = mean, std
            cells.append(format_mean_std(mean, std))
        data.append(record)
        display.append(cells)
    header = [
        "model",
        "task",
        "seeds",
        "M_J",
        "M_F",
        *[f"FPR {c}" for c in present],
        "G-FPR",
        "G-mIoU",
        "G-F",
        *[f"M_J {c}" for c in present],
    ]
    footnotes = [
        f"{protocol} protocol, {split} split, ×100, mean ± std over seeds. M_J / M_F: original audio. FPR: mean "
        "fraction of each frame predicted foreground when the correct mask is empty (negative audio), AVSBench-Robust "
        "(Li et al., arXiv:2502.00358). G-FPR: mean FPR over the negative conditions. G-mIoU / G-F: harmonic mean of "
        "M_J / M_F and 100 − G-FPR (the official code ships no formula for them; see avs_mamba.robustness).",
        "silence: zero waveform; noise: uniform white noise; swapped: the audio of another test clip whose sounding "
        "class is not visible in the clip (all through the VGGish front-end). M_J under a negative condition is "
        "scored against the original masks.",
    ]
    if skipped:
        footnotes.append("Runs without robustness results (not shown): " + ", ".join(skipped))
    caption = "Audio reliance: accuracy with the clip's audio, false positives when the audio names no visible object."
    return Table("robustness", caption, pd.DataFrame(display, columns=header), pd.DataFrame(data), footnotes)


def valid_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """:func:`avs_mamba.profiling.loglog_slope` over the measured points (a failed measurement is None or NaN);
    NaN when fewer than two distinct xs remain."""
    from avs_mamba.profiling import loglog_slope

    pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True) if _finite(y) and float(y) > 0 and x and x > 0]
    if len({x for x, _ in pts}) < 2:
        return math.nan
    return loglog_slope([x for x, _ in pts], [y for _, y in pts])


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _float(value: Any) -> float:
    """A measured number, or NaN for a measurement that was not taken or failed (None)."""
    return float(value) if _finite(value) else math.nan


SCALING_MEASURES = (
    ("gflops_fvcore", "GFLOPs"),
    ("peak_mem_infer_mb", "memory"),
    ("latency_ms_median", "latency"),
    ("cpu_ms_median", "CPU time"),  # beside wall latency: what a loaded machine does not inflate
)


def sweep_points(rows: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The rows of one model's sweep along ``axis`` (``"frames"`` or ``"image_size"``), the other held fixed.

    Rows carrying a ``sweep`` field are selected by it; otherwise the sweep is the set of rows sharing the value of
    the other axis that has the most distinct values along ``axis`` (the base point of a cross-shaped sweep).
    """
    if axis not in ("frames", "image_size"):
        raise ValueError(f"axis must be 'frames' or 'image_size', got {axis!r}")
    if "sweep" in rows and rows["sweep"].notna().any():
        return rows[rows["sweep"] == axis].sort_values(axis)
    other = "image_size" if axis == "frames" else "frames"
    counts = rows.groupby(other)[axis].nunique()
    if counts.empty or counts.max() < 2:
        return rows.iloc[0:0]
    base = counts.idxmax()
    return rows[rows[other] == base].drop_duplicates(axis).sort_values(axis)


def scaling_table(rows: pd.DataFrame) -> Table:
    """Log-log slopes of GFLOPs, peak memory and latency against clip length T and against pixels per frame.

    The resolution slope is taken against H·W (tokens per frame), so on both axes 1 means cost linear in the token
    count and 2 quadratic.
    """
    display, data = [], []
    for label, group in rows.groupby("label", sort=False):
        row = [label]
        for axis, x_of in (("frames", lambda s: s), ("image_size", lambda s: s**2)):
            points = sweep_points(group, axis)
            for key, measure in SCALING_MEASURES:
                if key in points and not points.empty:
                    ys = pd.to_numeric(points[key], errors="coerce").tolist()
                    slope = valid_slope([float(x_of(v)) for v in points[axis]], ys)
                else:
                    slope = math.nan
                row.append(_number(slope, 2))
                data.append(
                    {
                        "model": label,
                        "axis": "T" if axis == "frames" else "H·W",
                        "measure": measure,
                        "slope": slope,
                        "points": ",".join(str(v) for v in points[axis]) if not points.empty else "",
                    }
                )
        display.append(row)
    columns = ["model"] + [f"{measure} vs {axis}" for axis in ("T", "H·W") for _, measure in SCALING_MEASURES]
    table = pd.DataFrame(data)
    spans = []
    for axis, name in (("T", "frames"), ("H·W", "image_size")):
        pts = table.loc[table["axis"] == axis, "points"]
        if not pts.empty:
            spans.append(f"{name} ∈ {{{pts.iloc[0]}}}")
    footnotes = [
        "Slope of a least-squares line through log(cost) against log(T) or log(H·W). Slope ≈ 1: cost grows linearly "
        "with the number of tokens (a selective scan, or per-frame processing); slope ≈ 2: quadratically (global "
        "attention over all tokens). Slopes below 1 mean fixed costs still dominate at these sizes.",
        "Sweep: " + ("; ".join(spans) if spans else "no points") + ". Memory is inference peak memory; latency (wall) "
        "and CPU time are medians over rounds that interleave all points of a model.",
    ]
    caption = "Scaling with clip length T and resolution H×W: log-log slope of each cost (the evidence for linearity)."
    return Table("scaling", caption, pd.DataFrame(display, columns=columns), table, footnotes)


# ----------------------------------------------------------------------------------------------------------------
# Writing

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "✓": r"\checkmark",
    "✗": r"$\times$",
    "×": r"$\times$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "–": r"--",
    "β": r"$\beta$",
    "²": r"$^2$",
    "·": r"$\cdot$",
    "∈": r"$\in$",
    "≈": r"$\approx$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "§": r"\S{}",
    "¶": r"\P{}",
}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIALS))


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and map the tables' symbols (±, ✓, ✗, Δ, ...) to LaTeX (needs amssymb)."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIALS[m.group(0)], str(text))


def to_markdown(table: Table) -> str:
    """Caption, a pipe table and the footnotes."""
    header = "| " + " | ".join(table.display.columns) + " |"
    align = "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(table.display.columns))) + "|"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in table.display.values]
    notes = [f"{note}  " for note in table.footnotes]
    return "\n".join([f"**{table.caption}**", "", header, align, *body, "", *notes]).rstrip() + "\n"


def to_latex(table: Table) -> str:
    """A ``table`` float with a booktabs ``tabular`` (toprule / midrule / bottomrule) and the footnotes below."""
    ncols = len(table.display.columns)
    spec = "l" + "c" * (ncols - 1)
    lines = [
        r"% Requires \usepackage{booktabs}, \usepackage{amssymb} and \usepackage{graphicx} (\resizebox).",
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + latex_escape(table.caption) + "}",
        r"\label{tab:" + table.name + "}",
        r"\resizebox{\linewidth}{!}{%",
        r"\begin{tabular}{" + spec + "}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in table.display.columns) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(table.display.values):
        if i in table.rules:
            lines.append(r"\midrule")
        lines.append(" & ".join(latex_escape(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if table.footnotes:
        lines.append(r"\par\smallskip\footnotesize")
        lines += [latex_escape(note) + r"\par" for note in table.footnotes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(table: Table, out_dir: str | Path) -> list[Path]:
    """Write ``<name>.md``, ``<name>.tex`` and ``<name>.csv`` into ``out_dir`` (created); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{table.name}.{ext}" for ext in ("md", "tex", "csv")]
    paths[0].write_text(to_markdown(table))
    paths[1].write_text(to_latex(table))
    table.data.to_csv(paths[2], index=False)
    return paths
