"""Paper-style tables (Markdown, LaTeX booktabs, CSV) and figures (seaborn) from the files the runs wrote.

:func:`build_tables` is the one entry point (``avs-bench tables`` and the workflow's report rules call it): give it
the runs' ``metrics.json`` files, the profile JSONs and the scaling sweeps, and it writes every table and figure
those inputs allow, or exactly the ones named in ``only``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from avs_mamba.report.tables import (
    Table,
    ablation_table,
    comparison_table,
    efficiency_table,
    load_costs,
    load_published,
    load_runs,
    load_scaling,
    robustness_table,
    scaling_table,
    write_table,
)

__all__ = [
    "ARTIFACTS",
    "Table",
    "build_tables",
    "load_runs",
    "load_published",
    "load_costs",
    "load_scaling",
    "comparison_table",
    "ablation_table",
    "efficiency_table",
    "scaling_table",
    "robustness_table",
    "write_table",
]

# What build_tables can produce, and the inputs each needs.
ARTIFACTS = {
    "comparison": "runs",
    "ablation": "runs",
    "efficiency": "costs",
    "scaling": "scaling",
    "robustness": "runs",
}


def build_tables(
    runs: Iterable[str | Path] = (),
    out_dir: str | Path = "results/tables",
    *,
    figures_dir: str | Path | None = "results/figures",
    costs: Iterable[str | Path] = (),
    scaling: Iterable[str | Path] = (),
    only: Iterable[str] | None = None,
    protocol: str = "official",
    reference: str = "full",
    published: str | Path | None = None,
) -> list[Path]:
    """Write tables into ``out_dir`` and figures into ``figures_dir`` (None: no figures); returns the paths written.

    Args:
        runs: ``metrics.json`` files or run directories (comparison and ablation tables, ablation figures).
        costs: profile JSONs, or ``metrics.json`` files whose ``cost`` block is used (efficiency table).
        scaling: scaling-sweep JSONs (scaling table and figure).
        only: subset of ``ARTIFACTS`` to build; None builds what the given inputs allow (the ablation table when
            AVS-Mamba runs are among them, the comparison table when baselines or the reference variant are and
            the runs are not all smoke runs on synthetic data).
        protocol: evaluation protocol of the tables (``official`` or ``clean``).
        reference: the AVS-Mamba variant that ablation deltas are relative to and the comparison table shows.
        published: published-numbers CSV; None uses the packaged ``published_numbers.csv``.

    Raises:
        ValueError: an unknown name in ``only``, or a requested artifact without its inputs.
    """
    from avs_mamba.report import figures

    runs, costs, scaling = list(runs), list(costs), list(scaling)
    inputs = {"runs": runs, "costs": costs, "scaling": scaling}
    if only is not None:
        wanted = list(dict.fromkeys(only))
        unknown = [name for name in wanted if name not in ARTIFACTS]
        if unknown:
            raise ValueError(f"unknown table {unknown}; expected some of {list(ARTIFACTS)}")
        for name in wanted:
            if not inputs[ARTIFACTS[name]]:
                raise ValueError(f"the {name} table needs {ARTIFACTS[name]} files (--{ARTIFACTS[name]}), none given")
    if protocol not in ("official", "clean"):
        raise ValueError(f"protocol must be 'official' or 'clean', got {protocol!r}")
    frame = load_runs(runs) if runs else None
    if only is None:
        wanted = []
        if frame is not None:
            mamba = frame[frame["model"] == "avs_mamba"]
            if not mamba.empty:
                wanted.append("ablation")
            compared = (frame["model"] != "avs_mamba").any() or (mamba["variant"] == reference).any()
            # The comparison sets the runs beside the published real-data numbers: by default only for real-data
            # (paper) runs; smoke runs (synthetic data) get it when asked for (only=["comparison"]).
            if compared and (frame["profile"] != "smoke").any():
                wanted.append("comparison")
            if any(protocol in (block or {}).get("test", {}).get("summary", {}) for block in frame["robustness"]):
                wanted.append("robustness")
        wanted += [name for name in ("efficiency", "scaling") if inputs[ARTIFACTS[name]]]
        if not wanted:
            raise ValueError("nothing to build: give runs, costs or scaling files")

    written: list[Path] = []
    fig_dir = Path(figures_dir) if figures_dir is not None else None
    if "comparison" in wanted:
        pub = load_published(published)
        written += write_table(comparison_table(frame, pub, protocol=protocol, reference=reference), out_dir)
    if "ablation" in wanted:
        written += write_table(ablation_table(frame, protocol=protocol, reference=reference), out_dir)
        if fig_dir is not None:
            written.append(
                figures.ablation_forest(frame, fig_dir / "ablation_forest.png", protocol=protocol, reference=reference)
            )
            mamba = frame[frame["model"] == "avs_mamba"]
            for task in sorted(set(mamba["task"])):
                written.append(
                    figures.qualitative_grid(mamba, fig_dir / f"qualitative_{task}.png", task=task, reference=reference)
                )
    if "efficiency" in wanted:
        written += write_table(efficiency_table(load_costs(costs)), out_dir)
    if "robustness" in wanted:
        written += write_table(robustness_table(frame, protocol=protocol), out_dir)
    if "scaling" in wanted:
        rows = load_scaling(scaling)
        written += write_table(scaling_table(rows), out_dir)
        if fig_dir is not None:
            written.append(figures.scaling_plot(rows, fig_dir / "scaling.png"))
    return written
