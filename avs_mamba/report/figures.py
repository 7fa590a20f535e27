"""Figures from the runs' files (seaborn on matplotlib's non-interactive Agg backend).

* :func:`ablation_bars`: M_J / M_F per variant and task, bars at the seed mean with ±1 sample-std error bars and the
  individual seeds as dots.
* :func:`qualitative_grid`: one row per variant, one column per test clip, each cell the run's own overlay
  (``overlays/{id}.png``: frames | ground truth | prediction), clips common to every variant.
* :func:`scaling_plot`: GFLOPs, peak memory and latency against clip length T and against pixels per frame H·W,
  log-log, with slope-1 and slope-2 guides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (workflow jobs run headless)

import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from PIL import Image  # noqa: E402

from avs_mamba.report.tables import METRICS, SCALING_MEASURES, TASK_LABELS, _metric, sweep_points  # noqa: E402

__all__ = ["ablation_bars", "qualitative_grid", "scaling_plot"]

DPI = 150


def _save(fig: plt.Figure, out_path: str | Path) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return out


def ablation_bars(
    runs: pd.DataFrame, out_path: str | Path, *, protocol: str = "official", reference: str = "full"
) -> Path:
    """Bar chart of the AVS-Mamba variants (reference first): one panel per metric, one bar colour per task."""
    runs = runs[runs["model"] == "avs_mamba"]
    if runs.empty:
        raise ValueError("ablation figure: no AVS-Mamba runs among the inputs")
    long = pd.DataFrame(
        [
            {
                "variant": run.name_,
                "task": TASK_LABELS[run.task],
                "metric": label,
                "value": _metric(run.test, protocol, key, run.path),
            }
            for run in runs.rename(columns={"name": "name_"}).itertuples()
            for key, label in METRICS
        ]
    )
    names = sorted(set(long["variant"]))
    ref = runs.loc[runs["variant"] == reference, "name"]
    order = ([ref.iloc[0]] if not ref.empty else []) + [n for n in names if ref.empty or n != ref.iloc[0]]
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.catplot(
        data=long,
        kind="bar",
        x="variant",
        y="value",
        hue="task",
        col="metric",
        order=order,
        errorbar=("sd", 1),
        capsize=0.15,
        height=3.2,
        aspect=max(1.0, 0.35 * len(order)),
        sharey=False,
    )
    for ax, (_, label) in zip(grid.axes.flat, METRICS, strict=True):
        sns.stripplot(
            data=long[long["metric"] == label],
            x="variant",
            y="value",
            hue="task",
            order=order,
            dodge=True,
            palette="dark:black",
            size=3,
            legend=False,
            ax=ax,
        )
        ax.set_xlabel("")
        ax.set_ylabel(f"{label} ×100 ({protocol})")
        ax.tick_params(axis="x", rotation=30)
    grid.figure.suptitle("AVS-Mamba ablations: mean ± std over seeds (dots: seeds)", y=1.03)
    return _save(grid.figure, out_path)


def _split_overlay(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An engine overlay ``[3H, T*W, 3]`` -> its frame, ground-truth and prediction strips ``[H, T*W, 3]``."""
    image = np.asarray(Image.open(path).convert("RGB"))
    if image.shape[0] % 3:
        raise ValueError(f"overlay {path} has height {image.shape[0]}, expected 3 stacked rows (frame | GT | pred)")
    h = image.shape[0] // 3
    return image[:h], image[h : 2 * h], image[2 * h :]


def qualitative_grid(runs: pd.DataFrame, out_path: str | Path, *, task: str, max_clips: int = 3) -> Path:
    """Masks per variant on the same test clips: rows frames, ground truth, then each variant's prediction.

    Uses the runs' own overlays (``overlays/{id}.png``, first seed of each variant) and the first ``max_clips`` clip
    ids that every variant has; one column per clip (each cell a strip of its T frames).
    """
    runs = runs[runs["task"] == task].sort_values(["name", "seed"]).drop_duplicates("name")
    if runs.empty:
        raise ValueError(f"qualitative figure: no runs of task {task!r}")
    overlays: dict[str, dict[str, Path]] = {}
    for run in runs.itertuples():
        folder = Path(run.overlays)
        found = {p.stem: p for p in sorted(folder.glob("*.png"))} if folder.is_dir() else {}
        if not found:
            raise FileNotFoundError(f"no overlay PNGs in {folder} (run {run.path}); set eval.num_overlays > 0")
        overlays[run.name] = found
    common = sorted(set.intersection(*(set(o) for o in overlays.values())))[:max_clips]
    if not common:
        raise ValueError(f"qualitative figure: the runs of {task!r} share no overlay clip ids ({sorted(overlays)})")
    names = list(overlays)
    cells = {(n, c): _split_overlay(overlays[n][c]) for n in names for c in common}
    rows = [("frames", lambda c: cells[(names[0], c)][0]), ("ground truth", lambda c: cells[(names[0], c)][1])]
    rows += [(n, lambda c, n=n: cells[(n, c)][2]) for n in names]
    h, w = cells[(names[0], common[0])][0].shape[:2]
    width = 5.0  # inches per clip column
    fig, axes = plt.subplots(
        len(rows), len(common), figsize=(width * len(common), width * h / w * len(rows) + 0.6), squeeze=False
    )
    for i, (label, strip) in enumerate(rows):
        for j, clip in enumerate(common):
            ax = axes[i][j]
            ax.imshow(strip(clip))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(clip, fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"{TASK_LABELS.get(task, task)} test clips: ground truth (red) and predictions (green)", fontsize=10)
    return _save(fig, out_path)


def scaling_plot(rows: pd.DataFrame, out_path: str | Path) -> Path:
    """Log-log panels: (T, H·W) × (GFLOPs, peak memory, latency, CPU time), one line per model."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(2, len(SCALING_MEASURES), figsize=(4 * len(SCALING_MEASURES), 7), squeeze=False)
    axes_spec: Sequence[tuple[str, str]] = (
        ("frames", "clip length T (frames)"),
        ("image_size", "pixels per frame H·W"),
    )
    palette = dict(zip(rows["label"].unique(), sns.color_palette(n_colors=rows["label"].nunique()), strict=True))
    for i, (axis, xlabel) in enumerate(axes_spec):
        for j, (key, measure) in enumerate(SCALING_MEASURES):
            ax = axes[i][j]
            x_all: list[float] = []
            for label, group in rows.groupby("label", sort=False):
                points = sweep_points(group, axis)
                if points.empty or key not in points:
                    continue
                xs = points[axis].astype(float) ** (2 if axis == "image_size" else 1)
                ys = pd.to_numeric(points[key], errors="coerce")
                keep = ys.notna() & (ys > 0)
                if keep.any():
                    ax.plot(xs[keep], ys[keep], marker="o", label=label, color=palette[label])
                    x_all += list(xs[keep])
            if not x_all:  # this cost was not measured (or failed) for every model
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
                ax.set_xlabel(xlabel)
                ax.set_ylabel(measure)
                continue
            _guides(ax, min(x_all), max(x_all))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(measure)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=max(1, len(labels)), bbox_to_anchor=(0.5, 1.02))
    fig.suptitle("Cost scaling (log-log); dashed: slope 1 (linear), dotted: slope 2 (quadratic)", y=1.06)
    fig.tight_layout()
    return _save(fig, out_path)


def _guides(ax: plt.Axes, x0: float, x1: float) -> None:
    """Slope-1 and slope-2 reference lines anchored at the panel's lowest line start."""
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    y0 = min(float(line.get_ydata()[0]) for line in lines)
    if x1 <= x0 or not math.isfinite(y0):
        return
    xs = np.array([x0, x1])
    ax.plot(xs, y0 * xs / x0, ls="--", color="grey", lw=0.8)
    ax.plot(xs, y0 * (xs / x0) ** 2, ls=":", color="grey", lw=0.8)
