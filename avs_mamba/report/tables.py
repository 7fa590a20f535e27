"""Paper-style tables from the files the runs wrote: main comparison, ablation, efficiency and scaling.

Every table is built from declared files (each run's ``metrics.json``, each profile JSON, each scaling sweep), never
by searching the MLflow store, so the workflow knows exactly what a table depends on. Each table is written three
ways by :func:`write_table`: Markdown (``.md``, for the README and reviews), LaTeX with booktabs rules (``.tex``, for
papers) and CSV (``.csv``, the numbers unformatted, one row per cell group, for further analysis).

Conventions: M_J and M_F are shown ×100, as AVSBench papers print them. Reproduced numbers are the mean over seeds
± the sample standard deviation (ddof = 1; one seed shows the mean alone). Which evaluation protocol a table uses is
a parameter and is printed in its caption; published numbers are official-protocol numbers.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
    "comparison_table",
    "ablation_table",
    "efficiency_table",
    "scaling_table",
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
PUBLISHED_COLUMNS = ("method", "backbone", "input", "task", "M_J", "M_F", "source", "note")
MISSING = "–"
CHECK, CROSS = "✓", "✗"


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
    metrics dict), ``config`` (the resolved config), ``cost`` (dict, possibly empty), ``overlays`` (the run's
    ``overlays/`` folder) and ``wall_time_s``.

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
                "config": record["config"],
                "cost": record.get("cost") or {},
                "overlays": str(path.parent / "overlays"),
                "wall_time_s": record.get("wall_time_s", math.nan),
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


def _seed_stats(runs: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Per (name, task): mean/std/n of M_J and M_F (×100) over seeds."""
    rows = []
    for (name, task), group in runs.groupby(["name", "task"], sort=False):
        row: dict[str, Any] = {"name": name, "task": task, "n_seeds": len(group)}
        for key, label in METRICS:
            values = [_metric(t, protocol, key, p) for t, p in zip(group["test"], group["path"], strict=True)]
            row[label], row[f"{label}_std"], _ = mean_std(values)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(
    runs: pd.DataFrame,
    published: pd.DataFrame | None = None,
    *,
    protocol: str = "official",
    reference: str = "full",
    methods: Iterable[str] | None = None,
) -> Table:
    """Main comparison: reproduced M_J / M_F per task (mean ± std over seeds) above the published numbers.

    Reproduced rows are the baselines and AVS-Mamba's ``reference`` variant (its ablations belong in the ablation
    table). Published rows are restricted to ``methods`` (default: the methods reproduced here, by display name).
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
    published = published[published["method"].str.rstrip("*").isin(wanted)]
    columns = ["method", "backbone"] + [f"{TASK_LABELS[t]} {m}" for t in tasks for _, m in METRICS] + ["source"]
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
        cells = []
        for task in tasks:
            for _, label in METRICS:
                if task in mine.index:
                    cells.append(format_mean_std(mine.loc[task, label], mine.loc[task, f"{label}_std"]))
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
                            "n_seeds": int(mine.loc[task, "n_seeds"]),
                            "protocol": protocol,
                            "source": _profile_note(group),
                        }
                    )
                else:
                    cells.append(MISSING)
        display.append([method, backbone, *cells, _profile_note(group)])
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
                            "n_seeds": 0,
                            "protocol": "official",
                            "source": by_task.loc[task, "source"],
                        }
                    )
        for note in dict.fromkeys(n for n in group["note"] if n):
            method += mark(f"{method.rstrip('†‡§¶')} ({backbone}): {note}.")
        inputs = sorted(set(group["input"]))
        display.append([method, f"{backbone} / {','.join(inputs)}", *cells, source])
    caption = (
        f"Main comparison on AVSBench: M_J (Jaccard) and M_F (F-score, β² = 0.3) ×100, {protocol} protocol. "
        "Reproduced rows: mean ± sample std over seeds. Published rows: the numbers reported by the cited source."
    )
    return Table(
        "comparison",
        caption,
        pd.DataFrame(display, columns=columns),
        pd.DataFrame(data),
        footnotes,
        rules=[first_published] if len(display) > first_published > 0 else [],
    )


def _components(config: Mapping[str, Any], source: str, specs: Mapping[str, Callable]) -> dict[str, Any]:
    model = config.get("model")
    if not isinstance(model, Mapping):
        raise ValueError(f"{source}: resolved config has no 'model' section")
    return {column: spec(model, source) for column, spec in specs.items()}


def _symbol(value: Any) -> str:
    return (CHECK if value else CROSS) if isinstance(value, bool) else str(value)


def ablation_table(runs: pd.DataFrame, *, protocol: str = "official", reference: str = "full") -> Table:
    """Ablation table in the paper's style: one ✓/✗ column per component, M_J / M_F per task, Δ vs ``reference``.

    Only AVS-Mamba runs are used. Component columns come from each run's resolved config; the optional columns
    (``OPTIONAL_COMPONENTS``) appear only when they differ between rows. Δ is the difference of seed means.
    """
    runs = runs[runs["model"] == "avs_mamba"]
    if runs.empty:
        raise ValueError("ablation table: no AVS-Mamba runs among the inputs")
    if reference not in set(runs["variant"]):
        raise ValueError(
            f"ablation table: no run of the reference variant {reference!r} (found {sorted(set(runs['variant']))}); "
            "Δ columns are relative to it"
        )
    specs = {**COMPONENTS, **OPTIONAL_COMPONENTS}
    comps: dict[str, dict[str, Any]] = {}
    for name, group in runs.groupby("name", sort=False):
        seen = [_components(c, p, specs) for c, p in zip(group["config"], group["path"], strict=True)]
        if any(s != seen[0] for s in seen[1:]):
            raise ValueError(f"ablation table: runs of {name!r} have different components: {sorted(group['path'])}")
        comps[name] = seen[0]
    shown = list(COMPONENTS) + [c for c in OPTIONAL_COMPONENTS if len({str(comp[c]) for comp in comps.values()}) > 1]
    stats = _seed_stats(runs, protocol).set_index(["name", "task"])
    tasks = _ordered_tasks(runs["task"])
    ref_name = runs.loc[runs["variant"] == reference, "name"].iloc[0]
    names = [ref_name] + sorted(n for n in comps if n != ref_name)
    columns = ["variant", *shown]
    for task in tasks:
        columns += [f"{TASK_LABELS[task]} {m}" for _, m in METRICS] + [f"{TASK_LABELS[task]} Δ{m}" for _, m in METRICS]
    display, data = [], []
    for name in names:
        row: list[str] = [name, *(_symbol(comps[name][c]) for c in shown)]
        for task in tasks:
            have = (name, task) in stats.index
            ref = stats.loc[(ref_name, task)] if (ref_name, task) in stats.index else None
            deltas = []
            for _, label in METRICS:
                mean = stats.loc[(name, task), label] if have else math.nan
                std = stats.loc[(name, task), f"{label}_std"] if have else math.nan
                delta = mean - ref[label] if ref is not None else math.nan
                row.append(format_mean_std(mean, std))
                deltas.append(MISSING if name == ref_name else format_delta(delta))
                if have:
                    data.append(
                        {
                            "variant": name,
                            **{c: comps[name][c] for c in shown},
                            "task": task,
                            "metric": label,
                            "mean": mean,
                            "std": std,
                            "n_seeds": int(stats.loc[(name, task), "n_seeds"]),
                            "delta": 0.0 if name == ref_name else delta,
                            "protocol": protocol,
                        }
                    )
            row += deltas
        display.append(row)
    caption = (
        f"AVS-Mamba ablations ({_profile_note(runs)}): M_J / M_F ×100, {protocol} protocol, mean ± sample std over "
        f"seeds; Δ = variant mean − {ref_name} mean. Components are read from each run's resolved config."
    )
    footnotes = [
        "MTE-TMB: Temporal Mamba Block of the encoder; V2A frame / temporal: frame- and temporal-level vision-to-audio "
        "blocks of the decoder; CIP: Contextual Integration Pyramid (✗ = plain FPN)."
    ]
    return Table("ablation", caption, pd.DataFrame(display, columns=columns), pd.DataFrame(data), footnotes)


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


SCALING_MEASURES = (("gflops_fvcore", "GFLOPs"), ("peak_mem_infer_mb", "memory"), ("latency_ms_median", "latency"))


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
        "Sweep: " + ("; ".join(spans) if spans else "no points") + ". Memory is inference peak memory.",
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
