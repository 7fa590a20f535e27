"""Probe subsets of the synthetic data: which clips belong to which subset, and their metrics from one pass."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from _engine_helpers import write_config
from torch.utils.data import Subset

from avs_mamba.config import load_config
from avs_mamba.data.synthetic import SplitCounts, SynthConfig, generate
from avs_mamba.distributed import DistContext
from avs_mamba.evaluation import (
    IndexedDataset,
    build_split,
    clip_names,
    evaluate_model,
    evaluate_model_subsets,
    make_loader,
    probe_subsets,
    subset_of_row,
)


def _row(temporal_hard: str, sources: str, silent: str, on: str) -> dict[str, str]:
    return {"temporal_hard": temporal_hard, "sources": sources, "silent": silent, "on": on}


class TestSubsetOfRow:
    def test_temporal_hard_twin_is_not_a_distractor(self) -> None:
        """The silent twin shares the source's class: only another class makes a distractor."""
        assert subset_of_row(_row("1", "red-disc", "red-disc", "11111")) == {"temporal_hard"}
        assert subset_of_row(_row("1", "red-disc", "red-disc_blue-square", "11111")) == {"temporal_hard", "distractor"}

    def test_switching_needs_a_change_in_which_sources_sound(self) -> None:
        assert subset_of_row(_row("0", "a_b", "c", "11000|00111")) == {"distractor", "switching"}
        assert subset_of_row(_row("0", "a_b", "", "11111|11111")) == set(), "both always on: no switch"
        assert subset_of_row(_row("0", "a_b", "", "10101|10101")) == {"switching"}, "on together, off together"
        assert subset_of_row(_row("0", "a", "b", "11111")) == {"distractor"}, "an S4 clip never switches"


@pytest.fixture(scope="module")
def s4_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("probe")
    config = SynthConfig(
        seed=5, image_size=32, num_classes=4, temporal_hard_fraction=0.5, s4=SplitCounts(train=1, val=1, test=8)
    )
    generate("s4", root, config)
    path = write_config(root / "tiny.yaml", root, model={"name": "tiny_seg", "dropout": 0.0}, eval={"batch_size": 3})
    return root, load_config(path)


def _csv_rows(root: Path) -> list[dict[str, str]]:
    with (root / "Single-source" / "synth_clips.csv").open() as f:
        return list(csv.DictReader(f))


def test_subsets_follow_the_csv(s4_run: tuple[Path, object]) -> None:
    root, config = s4_run
    test_set = build_split(config, "test")
    names = clip_names(test_set)
    flags = {r["name"]: r["temporal_hard"] == "1" for r in _csv_rows(root) if r["split"] == "test"}
    assert sorted(names) == sorted(flags) and len(names) == 8
    subsets = probe_subsets(config, test_set)
    assert subsets["temporal_hard"] == [i for i, n in enumerate(names) if flags[n]]
    assert 0 < len(subsets["temporal_hard"]) < 8, "seed 5 at fraction 0.5 mixes both kinds (fixture check)"
    assert subsets["distractor"] == list(range(8)), "one silent distractor in every clip by default"
    assert "switching" not in subsets, "S4 sources sound all clip long"


def test_subset_metrics_equal_evaluating_the_subset_alone(s4_run: tuple[Path, object]) -> None:
    """One pass over the split, sliced by clip, gives exactly what a separate evaluation of those clips gives."""
    _, config = s4_run
    torch.manual_seed(0)
    model = config.build_model()
    test_set = build_split(config, "test")
    subsets = probe_subsets(config, test_set)
    kwargs = {"task": "s4", "protocols": ["official", "clean"], "eval_batch_size": 3, "device": torch.device("cpu")}

    def loader(dataset: object) -> torch.utils.data.DataLoader:
        return make_loader(
            dataset, 3, ctx=DistContext(), shuffle=False, seed=0, num_workers=0, generator=torch.Generator()
        )

    whole, by_subset = evaluate_model_subsets(model, loader(test_set), subsets, **kwargs)
    assert whole == evaluate_model(model, loader(test_set), **kwargs)
    ids = subsets["temporal_hard"]
    alone = evaluate_model(model, loader(IndexedDataset(Subset(test_set.dataset, ids))), **kwargs)
    for protocol in ("official", "clean"):
        assert by_subset["temporal_hard"][protocol]["miou"] == pytest.approx(alone[protocol]["miou"], abs=1e-12)
        assert by_subset["temporal_hard"][protocol]["fscore"] == pytest.approx(alone[protocol]["fscore"], abs=1e-12)
        assert by_subset["temporal_hard"][protocol]["num_frames"] == 5 * len(ids)


def test_real_data_has_no_subsets_and_a_stale_csv_is_an_error(s4_run: tuple[Path, object], tmp_path: Path) -> None:
    root, config = s4_run
    test_set = build_split(config, "test")
    path = root / "Single-source" / "synth_clips.csv"
    text = path.read_text()
    try:
        path.unlink()
        assert probe_subsets(config, test_set) == {}, "no synth_clips.csv (real AVSBench): no subsets"
        lines = text.splitlines()
        path.write_text("\n".join(line for line in lines if "s4_test_00003" not in line) + "\n")
        with pytest.raises(ValueError, match="lists no row for 1 clip"):
            probe_subsets(config, test_set)
    finally:
        path.write_text(text)


def test_train_order_is_the_same_for_every_variant(s4_run: tuple[Path, object]) -> None:
    """Δ pairs runs by seed: the train order must not depend on how much of the global RNG model init consumed."""
    _, config = s4_run
    dataset = list(range(20))

    def order(consume: int) -> list[int]:
        torch.manual_seed(0)
        torch.randn(consume)  # a larger model draws more initial weights
        loader = make_loader(
            dataset,
            4,
            ctx=DistContext(),
            shuffle=True,
            seed=7,
            num_workers=0,
            generator=torch.Generator().manual_seed(7),
        )
        loader.sampler.set_epoch(1)
        return [int(i) for batch in loader for i in batch]

    assert order(10) == order(100_000)
    assert sorted(order(10)) == dataset and order(10) != dataset, "shuffled, every clip once"
