"""Figures from the runs' files (seaborn on matplotlib's non-interactive Agg backend).

* :func:`ablation_forest`: a forest (dot-and-whisker) plot of each variant's paired Δ vs the reference with its
  95 % interval (the numbers of the ablation table, from :mod:`avs_mamba.report.stats`), variants grouped into
  components / V2A / scan K / controls, one panel per task and metric (probe subsets included).
* :func:`qualitative_grid`: the test frames, the ground truth, then one row per variant (the reference first), one
  column per test clip, each cell the run's own overlay row (``overlays/{id}.png``; binary tasks: TP / FP / FN on a
  grey frame), upsampled with nearest-neighbour so 32-px frames stay sharp.
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

from avs_mamba.report.tables import (  # noqa: E402
    METRICS,
    SCALING_MEASURES,
    SUBSET_LABELS,
    TASK_LABELS,
    _ordered_tasks,
    _proper_subsets,
    ablation_order,
    seed_intervals,
    sweep_points,
)

__all__ = ["ablation_forest", "qualitative_grid", "scaling_plot"]

DPI = 150


def _save(fig: plt.Figure, out_path: str | Path) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return out


def ablation_forest(
    runs: pd.DataFrame, out_path: str | Path, *, protocol: str = "official", reference: str = "full"
) -> Path:
    """Forest plot of Δ vs ``reference`` (mean of per-seed paired differences, ×100) with 95 % paired-t intervals.

    One row per variant, grouped as in the ablation table; one panel per (task, metric): M_J and M_F of the test
    split, then M_J of each probe subset. Filled dots: the interval excludes 0; hollow: it does not. With one seed
    there is no interval and the title says so.
    """
    runs = runs[runs["model"] == "avs_mamba"]
    ref_name, order = ablation_order(runs, reference)
    rows = order[1:]
    if not rows:  # the workflow declares the file; say why it is empty rather than fail the report
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"only the reference variant {ref_name!r} was run: no Δ to plot", ha="center", va="center")
        return _save(fig, out_path)
    panels: list[tuple[str, str, str, str | None]] = []
    for task in _ordered_tasks(runs["task"]):
        panels += [(task, key, label, None) for key, label in METRICS]
        panels += [(task, "miou", "M_J", sub) for sub in _proper_subsets(runs, task)]
    # y positions: groups stacked top to bottom with a gap and a header line between them
    ys, labels, headers, y = [], [], [], 0.0
    previous = None
    for name, group in rows:
        if group != previous:
            headers.append((y, group))
            y += 0.8
            previous = group
        ys.append(y)
        labels.append(name)
        y += 1.0
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(
        1, len(panels), figsize=(2.8 * len(panels) + 1.4, 0.34 * y + 1.4), sharey=True, squeeze=False
    )
    n_max = 0
    for ax, (task, key, label, subset) in zip(axes[0], panels, strict=True):
        for (name, _), yy in zip(rows, ys, strict=True):
            if not ((runs["name"] == name) & (runs["task"] == task)).any():
                continue
            _, delta = seed_intervals(runs, name, ref_name, task, protocol, key, subset)
            if delta is None:  # the reference itself (never among the rows)
                continue
            n_max = max(n_max, delta.n)
            colour = "black" if delta.excludes_zero else "grey"
            if math.isfinite(delta.lo):
                ax.plot([delta.lo, delta.hi], [yy, yy], color=colour, lw=1.6, solid_capstyle="butt")
            ax.plot(delta.mean, yy, "o", ms=6, color=colour, markerfacecolor=colour if delta.excludes_zero else "white")
        ax.axvline(0.0, color="#b03030", lw=1.0, ls="--")
        where = f"{TASK_LABELS[task]} Δ{label}" + (f"\n{SUBSET_LABELS[subset]} clips" if subset else "\nall test clips")
        ax.set_title(where, fontsize=10)
        ax.set_xlabel("Δ ×100 vs " + ref_name, fontsize=9)
        ax.tick_params(labelsize=9)
    ax0 = axes[0][0]
    ax0.set_yticks(ys, labels, fontsize=10)
    for yy, group in headers:
        ax0.annotate(
            group,
            xy=(0, yy),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=9,
            fontweight="bold",
            annotation_clip=False,
        )
    ax0.set_ylim(y - 0.4, -0.6)  # first group on top
    seeds = "no interval: 1 seed" if n_max < 2 else f"95 % paired-t intervals over {n_max} seeds"
    fig.suptitle(
        f"AVS-Mamba ablations: Δ vs {ref_name} ({protocol} protocol; {seeds}; filled: interval excludes 0)",
        fontsize=11,
    )
    fig.tight_layout()
    return _save(fig, out_path)


def _split_overlay(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An engine overlay ``[3H, T*W, 3]`` -> its frame, ground-truth and prediction strips ``[H, T*W, 3]``."""
    image = np.asarray(Image.open(path).convert("RGB"))
    if image.shape[0] % 3:
        raise ValueError(f"overlay {path} has height {image.shape[0]}, expected 3 stacked rows (frame | GT | pred)")
    h = image.shape[0] // 3
    return image[:h], image[h : 2 * h], image[2 * h :]


def qualitative_grid(
    runs: pd.DataFrame, out_path: str | Path, *, task: str, max_clips: int = 3, reference: str | None = None
) -> Path:
    """Masks per variant on the same test clips: rows frames, ground truth, then each variant's prediction.

    Uses the runs' own overlays (``overlays/{id}.png``, first seed of each variant) and the first ``max_clips`` clip
    ids that every variant has; one column per clip (each cell a strip of its T frames). The ``reference`` variant's
    row comes first. Cells are drawn with nearest-neighbour upsampling (pixels stay square at 32-px frames).
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
    ref = runs.loc[runs["variant"] == reference, "name"] if reference is not None else runs.iloc[0:0]["name"]
    names = list(ref) + [n for n in overlays if n not in set(ref)]
    cells = {(n, c): _split_overlay(overlays[n][c]) for n in names for c in common}
    rows = [("frames", lambda c: cells[(names[0], c)][0]), ("ground truth", lambda c: cells[(names[0], c)][1])]
    rows += [(n, lambda c, n=n: cells[(n, c)][2]) for n in names]
    h, w = cells[(names[0], common[0])][0].shape[:2]
    # Size the figure so each cell's slot has the strip's own aspect: no empty bands between rows.
    fig_w, left, right, wspace, hspace = 6.0 * len(common) + 1.2, 0.1, 0.99, 0.04, 0.12
    cell_w = fig_w * (right - left) / (len(common) + (len(common) - 1) * wspace)
    fig_h = cell_w * h / w * (len(rows) + (len(rows) - 1) * hspace) + 1.5
    fig, axes = plt.subplots(len(rows), len(common), figsize=(fig_w, fig_h), squeeze=False)
    fig.subplots_adjust(left=left, right=right, top=1 - 0.95 / fig_h, bottom=0.55 / fig_h, wspace=wspace, hspace=hspace)
    for i, (label, strip) in enumerate(rows):
        for j, clip in enumerate(common):
            ax = axes[i][j]
            ax.imshow(strip(clip), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(clip, fontsize=10)
            if j == 0:
                ax.set_ylabel(label, fontsize=10, rotation=0, ha="right", va="center")
    if task in ("s4", "ms3"):
        from matplotlib.patches import Patch

        from avs_mamba.overlays import FN_COLOUR, FP_COLOUR, GT_COLOUR, TP_COLOUR

        legend = [
            ("ground truth", GT_COLOUR),
            ("true positive", TP_COLOUR),
            ("false positive", FP_COLOUR),
            ("false negative", FN_COLOUR),
        ]
        handles = [Patch(facecolor=np.array(c) / 255, edgecolor="black", label=n) for n, c in legend]
        fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=10, bbox_to_anchor=(0.5, -0.01))
        how = "prediction scored against the ground truth on the grey frame"
    else:
        how = "classes in the AVSBench palette"
    fig.suptitle(
        f"{TASK_LABELS.get(task, task)} test clips, first seed of each variant: {how}", fontsize=11, y=1 - 0.3 / fig_h
    )
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
