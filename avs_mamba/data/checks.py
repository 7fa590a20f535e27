"""Whole-dataset validation behind ``avs-bench data check ROOT --task s4|ms3|avss``.

``check_dataset`` reads every file of every clip of every split (and, for AVSS, every subset) through the same
loaders training uses, and collects all problems instead of stopping at the first, so one run lists everything
to fix. The metadata CSV is also checked for rows the loaders would never see (a ``split`` outside
train/val/test, an AVSS ``label`` outside v1s/v1m/v2).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pandas as pd

from avs_mamba.data.avsbench import AVSS_SUBSETS, SPLITS, TASKS, DatasetError, build_dataset

__all__ = ["CheckReport", "check_dataset"]


@dataclasses.dataclass
class CheckReport:
    """Outcome of ``check_dataset``: clips read per split and every problem found."""

    root: Path
    task: str
    clips: dict[str, int] = dataclasses.field(default_factory=dict)
    problems: list[DatasetError] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Number of problems per kind, most frequent first."""
        return dict(Counter(p.kind for p in self.problems).most_common())

    def examples(self, per_kind: int = 3) -> dict[str, list[DatasetError]]:
        """The first ``per_kind`` problems of each kind, in the order found."""
        out: dict[str, list[DatasetError]] = {}
        for p in self.problems:
            bucket = out.setdefault(p.kind, [])
            if len(bucket) < per_kind:
                bucket.append(p)
        return out

    def format(self, per_kind: int = 3) -> str:
        """Human-readable summary: clips per split, then counts and first examples per kind."""
        clips = ", ".join(f"{split} {n}" for split, n in self.clips.items()) or "none"
        lines = [f"{self.task} dataset at {self.root}: clips checked: {clips}"]
        if self.ok:
            lines.append("OK: no problems found")
            return "\n".join(lines)
        lines.append(f"{len(self.problems)} problem(s):")
        examples = self.examples(per_kind)
        for kind, n in self.counts().items():
            lines.append(f"  {kind}: {n}")
            lines.extend(f"    - {p}" for p in examples[kind])
            if n > len(examples[kind]):
                lines.append(f"    ... and {n - len(examples[kind])} more")
        return "\n".join(lines)


def _csv_problems(task: str, root: Path) -> list[DatasetError]:
    """Rows whose split (or AVSS label) no loader will select; the loaders themselves check the columns."""
    csv_path = root / {"s4": "s4_meta_data.csv", "ms3": "ms3_meta_data.csv", "avss": "metadata.csv"}[task]
    df = pd.read_csv(csv_path, sep=",", dtype=str, keep_default_na=False)
    problems = []
    checks = [("split", SPLITS)] + ([("label", AVSS_SUBSETS)] if task == "avss" else [])
    for column, allowed in checks:
        bad = df[~df[column].isin(allowed)]
        for row, value in zip(bad.index, bad[column], strict=True):
            problems.append(
                DatasetError(
                    f"line {row + 2}: {column} {value!r} is not one of {allowed}", kind="bad_csv", path=csv_path
                )
            )
    return problems


def check_dataset(root: str | Path, task: str) -> CheckReport:
    """Read the whole ``task`` dataset under ``root`` and report every problem (see ``CheckReport``).

    A missing root or an unreadable metadata CSV is reported as the single problem (nothing else can be read).
    Val/test clips are checked as evaluation reads them and train clips as training reads them (S4 train: frame-1
    mask only); audio is checked as ``audio_source="auto"`` loads it (cached ``.pkl``, else ``.wav``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    report = CheckReport(root=Path(root), task=task)
    for split in SPLITS:
        # Rows with an unknown split (or AVSS label) are reported once, by _csv_problems, not by the loader.
        # Off-palette colours are problems to report here, even though training reads them as background.
        options = {"skip_unknown_splits": True} | (
            {"skip_unknown_labels": True, "off_palette": "error"} if task == "avss" else {}
        )
        try:
            dataset = build_dataset(task, root, split, **options)
        except DatasetError as err:
            report.problems.append(err)
            return report
        report.clips[split] = len(dataset)
        for index in range(len(dataset)):
            report.problems.extend(dataset.clip_problems(index))
    report.problems[:0] = _csv_problems(task, report.root)
    return report
