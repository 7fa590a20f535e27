"""Tables and figures from hand-made run files: mean ± CI, paired Δ with marks, ✓/✗ columns, booktabs, sources."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from avs_mamba.report import build_tables
from avs_mamba.report.tables import (
    ablation_table,
    comparison_table,
    efficiency_table,
    format_delta,
    format_mean_std,
    load_costs,
    load_published,
    load_runs,
    mean_std,
    scaling_table,
    to_latex,
    to_markdown,
    valid_slope,
    write_table,
)


def _model_config(**switches: Any) -> dict[str, Any]:
    model = {
        "name": "avs_mamba",
        "backbone": "pvt_v2_b0",
        "mte": {"enabled": True, "spatial": True, "tmb": True},
        "mad": {"enabled": True, "frame_v2a": True, "temporal_v2a": True},
        "cip": {"enabled": True, "tmb": True, "a2v": True},
        "scan": {"k": 8, "backend": "auto"},
        "audio": {"enabled": True},
    }
    for dotted, value in switches.items():
        section, key = dotted.split("__")
        model[section][key] = value
    return model


def _write_run(
    root: Path,
    name: str,
    seed: int,
    miou: float,
    fscore: float,
    *,
    task: str = "s4",
    model: str = "avs_mamba",
    variant: str | None = None,
    overlays: tuple[str, ...] = ("clip_a", "clip_b"),
    cost: dict[str, Any] | None = None,
    subsets: dict[str, tuple[float, int]] | None = None,
    num_videos: int = 40,
    **switches: Any,
) -> Path:
    """A metrics.json shaped like the engine's, in results/runs/smoke/{task}/{name}/seed{seed}/.

    ``subsets``: probe subset -> (M_J on it, its clip count), both protocols alike."""
    run_dir = root / "smoke" / task / name / f"seed{seed}"
    run_dir.mkdir(parents=True)
    config_model = _model_config(**switches) if model == "avs_mamba" else {"name": model, "backbone": "resnet_tiny"}
    record = {
        "run": {
            "name": name,
            "variant": variant or name,
            "model": model,
            "task": task,
            "profile": "smoke",
            "seed": seed,
            "config_hash": "abc",
        },
        "test": {
            "official": {"protocol": "official", "miou": miou, "fscore": fscore, "num_videos": num_videos},
            "clean": {"protocol": "clean", "miou": miou - 0.01, "fscore": fscore - 0.01, "num_videos": num_videos},
        },
        "test_subsets": {
            sub: {p: {"protocol": p, "miou": v, "fscore": v} for p in ("official", "clean")}
            for sub, (v, _) in (subsets or {}).items()
        },
        "subset_clips": {sub: n for sub, (_, n) in (subsets or {}).items()},
        "best_val": {"miou": miou},
        "best_epoch": 1,
        "history": [],
        "cost": cost or {},
        "wall_time_s": 1.0,
        "config": {
            "name": name,
            "variant": variant or name,
            "model": config_model,
            "train": {"batch_size": 2},
            "eval": {"batch_size": 4},
        },
    }
    (run_dir / "metrics.json").write_text(json.dumps(record))
    (run_dir / "overlays").mkdir()
    for clip in overlays:
        image = np.full((12, 20, 3), 40 * seed, dtype=np.uint8)  # frame | GT | prediction rows, 4 px each
        Image.fromarray(image).save(run_dir / "overlays" / f"{clip}.png")
    return run_dir / "metrics.json"


@pytest.fixture
def ablation_runs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "runs"
    return [
        _write_run(root, "full", 0, 0.70, 0.80),
        _write_run(root, "full", 1, 0.74, 0.82),
        _write_run(root, "no_tmb", 0, 0.60, 0.75, mte__tmb=False, cip__tmb=False),
        _write_run(root, "no_tmb", 1, 0.62, 0.79, mte__tmb=False, cip__tmb=False),
        _write_run(root, "no_cip", 0, 0.73, 0.81, cip__enabled=False),
        _write_run(root, "no_cip", 1, 0.73, 0.83, cip__enabled=False),
        # The name says nothing about the components: this run has every component on.
        _write_run(root, "frame_only_v2a", 0, 0.71, 0.80),
        _write_run(root, "frame_only_v2a", 1, 0.71, 0.80),
    ]


def _row(table: Any, first: str) -> pd.Series:
    rows = table.display[table.display.iloc[:, 0] == first]
    assert len(rows) == 1, f"expected one row {first!r}, got {list(table.display.iloc[:, 0])}"
    return rows.iloc[0]


class TestFormatting:
    def test_mean_std_is_sample_std(self) -> None:
        mean, std, n = mean_std([70.0, 74.0])
        assert (mean, n) == (72.0, 2)
        assert std == pytest.approx(math.sqrt(8.0))  # ((2² + 2²) / (2 − 1))^½
        assert math.isnan(mean_std([5.0])[1]), "one seed has no spread"
        assert mean_std([1.0, float("nan"), 3.0])[:2] == (2.0, pytest.approx(math.sqrt(2.0)))

    def test_formats(self) -> None:
        assert format_mean_std(72.0, math.sqrt(8.0)) == "72.0 ± 2.8"
        assert format_mean_std(72.04, math.nan) == "72.0"
        assert format_mean_std(math.nan, math.nan) == "–"
        assert format_delta(-11.0) == "−11.0"
        assert format_delta(1.25) == "+1.2"
        assert format_delta(0.04) == "0.0"


T_975_DF1 = 12.706204736174698  # Student t, 0.975 quantile, 1 degree of freedom (printed tables)
T_975_DF2 = 4.302652729911275  # 2 degrees of freedom
T_80_DF2 = 1.0606601717798212  # 0.80 quantile, 2 degrees of freedom


class TestAblationTable:
    def test_values_components_and_deltas(self, ablation_runs: list[Path]) -> None:
        table = ablation_table(load_runs(ablation_runs))
        # reference first, then the "components" block (no_cip, no_tmb), then frame_only_v2a: it has every component
        # on, so it differs from the reference in nothing and lands with the components, whatever its name says
        assert list(table.display["variant"]) == ["full", "frame_only_v2a", "no_cip", "no_tmb"], "reference first"
        full, no_tmb, no_cip = _row(table, "full"), _row(table, "no_tmb"), _row(table, "no_cip")
        # 2 seeds: half-width = t(0.975, 1) · s / √2; full M_J 70, 74 -> s = 2√2, half = 12.706 · 2 = 25.4
        assert full["S4 M_J"] == f"72.0 ± {T_975_DF1 * 2:.1f}"
        assert full["S4 M_F"] == f"81.0 ± {T_975_DF1 * 1:.1f}"  # 80, 82: s = √2, half = 12.706
        # paired Δ of no_tmb: per-seed differences −10, −12 -> mean −11, s = √2, half = 12.706; no mark
        assert no_tmb["S4 ΔM_J"] == f"−11.0 ± {T_975_DF1:.1f}"
        assert no_tmb["S4 ΔM_F"] == f"−4.0 ± {T_975_DF1:.1f}"  # 75 − 80, 79 − 82 = −5, −3: s = √2
        assert no_cip["S4 ΔM_J"].startswith("+1.0")
        assert full["S4 ΔM_J"] == "–"
        assert (no_tmb["MTE-TMB"], no_tmb["CIP"], no_tmb["V2A frame"], no_tmb["V2A temporal"]) == ("✗", "✓", "✓", "✓")
        assert (no_cip["MTE-TMB"], no_cip["CIP"]) == ("✓", "✗")
        assert all(_row(table, "frame_only_v2a")[c] == "✓" for c in ("MTE-TMB", "V2A frame", "V2A temporal", "CIP"))
        # CIP-TMB differs between rows (no_tmb, and CIP off), so it is shown; audio and K never differ here.
        assert no_tmb["CIP-TMB"] == "✗" and full["CIP-TMB"] == "✓"
        assert "audio" not in table.display.columns and "K" not in table.display.columns
        assert "n = 2 seeds" in table.caption and "paired t-test" in table.caption

    def test_paired_interval_by_hand_three_seeds(self, tmp_path: Path) -> None:
        """full M_J 70, 72, 74; no_tmb 66, 69, 70: the unpaired intervals overlap, the paired Δ excludes 0."""
        root = tmp_path / "runs"
        paths = [_write_run(root, "full", s, v, 0.8) for s, v in enumerate((0.70, 0.72, 0.74))]
        paths += [
            _write_run(root, "no_tmb", s, v, 0.8, mte__tmb=False, cip__tmb=False)
            for s, v in enumerate((0.66, 0.69, 0.70))
        ]
        table = ablation_table(load_runs(paths))
        full, no_tmb = _row(table, "full"), _row(table, "no_tmb")
        assert full["S4 M_J"] == f"72.0 ± {T_975_DF2 * 2 / math.sqrt(3):.1f}" == "72.0 ± 5.0"
        # no_tmb: mean 68.33, sample std √(13/3) = 2.08 -> half 5.2: overlaps full's interval
        assert no_tmb["S4 M_J"] == "68.3 ± 5.2"
        # differences −4, −3, −4: mean −11/3, sample std √(1/3), half = 4.303 · √(1/3) / √3 = 1.434
        assert no_tmb["S4 ΔM_J"] == "−3.7 ± 1.4*"
        assert no_tmb["S4 ΔM_F"] == "0.0 ± 0.0", "identical M_F: Δ 0 with no spread, not marked"
        # minimum detectable effect of a paired t-test (α 0.05, power 0.8) at s_d = √(1/3), n = 3
        mde = (T_975_DF2 + T_80_DF2) * math.sqrt(1 / 3) / math.sqrt(3)
        assert f"S4 M_J {mde:.1f}" in table.caption and "n = 3 seeds" in table.caption
        data = table.data[(table.data["variant"] == "no_tmb") & (table.data["metric"] == "M_J")].iloc[0]
        assert data["delta"] == pytest.approx(-11 / 3)
        half = T_975_DF2 * math.sqrt(1 / 3) / math.sqrt(3)
        assert (data["delta_lo"], data["delta_hi"]) == pytest.approx((-11 / 3 - half, -11 / 3 + half))
        assert bool(data["delta_excludes_zero"]) and data["mde"] == pytest.approx(mde)

    def test_unpaired_seeds_are_an_error(self, tmp_path: Path) -> None:
        root = tmp_path / "runs"
        paths = [_write_run(root, "full", s, 0.7, 0.8) for s in (0, 1)]
        paths += [_write_run(root, "no_cip", s, 0.7, 0.8, cip__enabled=False) for s in (0, 2)]
        with pytest.raises(ValueError, match=r"no_cip \(S4\) ran seeds \[0, 2\], full ran \[0, 1\]"):
            ablation_table(load_runs(paths))

    def test_one_seed_says_no_interval(self, tmp_path: Path) -> None:
        paths = [
            _write_run(tmp_path, "full", 0, 0.70, 0.8),
            _write_run(tmp_path, "no_cip", 0, 0.65, 0.8, cip__enabled=False),
        ]
        table = ablation_table(load_runs(paths))
        assert "no interval: 1 seed" in table.caption
        assert _row(table, "full")["S4 M_J"] == "70.0" and _row(table, "no_cip")["S4 ΔM_J"] == "−5.0"

    def test_subset_columns_and_groups(self, tmp_path: Path) -> None:
        """Proper probe subsets get M_J and ΔM_J columns; a subset holding every test clip is not repeated."""
        root = tmp_path / "runs"
        sub = {"temporal_hard": (0.50, 10), "distractor": (0.7, 40)}
        paths = [
            _write_run(root, "full", s, 0.7, 0.8, subsets={**sub, "temporal_hard": (v, 10)})
            for s, v in enumerate((0.50, 0.52, 0.54))
        ]
        paths += [
            _write_run(
                root, "no_tmb", s, 0.7, 0.8, mte__tmb=False, cip__tmb=False, subsets={**sub, "temporal_hard": (v, 10)}
            )
            for s, v in enumerate((0.40, 0.43, 0.44))
        ]
        paths += [_write_run(root, "scan_k4", s, 0.7, 0.8, scan__k=4, subsets=sub) for s in range(3)]
        paths += [_write_run(root, "no_audio", s, 0.3, 0.4, audio__enabled=False, subsets=sub) for s in range(3)]
        paths += [
            _write_run(root, "frame_only_v2a", s, 0.7, 0.8, mad__temporal_v2a=False, subsets=sub) for s in range(3)
        ]
        table = ablation_table(load_runs(paths))
        assert "S4 M_J temporal-hard" in table.display.columns and "S4 ΔM_J temporal-hard" in table.display.columns
        assert not any("distractor" in c for c in table.display.columns), "distractor = all 40 clips: not repeated"
        no_tmb = _row(table, "no_tmb")
        # per-seed differences on the subset: −10, −9, −10 (same numbers as the hand example above, in M_J ×100)
        assert no_tmb["S4 ΔM_J temporal-hard"] == "−9.7 ± 1.4*"
        assert no_tmb["S4 ΔM_J"] == "0.0 ± 0.0"
        assert list(table.display["variant"]) == ["full", "no_tmb", "frame_only_v2a", "scan_k4", "no_audio"]
        assert table.rules == [1, 2, 3, 4], "a rule between the reference and each block"
        assert any("temporal-hard: clips with a same-class silent twin" in n for n in table.footnotes)

    def test_csv_data_holds_numbers(self, ablation_runs: list[Path], tmp_path: Path) -> None:
        paths = write_table(ablation_table(load_runs(ablation_runs)), tmp_path / "tables")
        assert [p.name for p in paths] == ["ablation.md", "ablation.tex", "ablation.csv"]
        data = pd.read_csv(paths[2])
        row = data[(data["variant"] == "no_tmb") & (data["metric"] == "M_J")].iloc[0]
        assert row["mean"] == pytest.approx(61.0)
        assert row["std"] == pytest.approx(math.sqrt(2.0))
        assert row["delta"] == pytest.approx(-11.0)
        assert (row["delta_lo"], row["delta_hi"]) == pytest.approx((-11.0 - T_975_DF1, -11.0 + T_975_DF1))
        assert (row["ci_lo"], row["ci_hi"]) == pytest.approx((61.0 - T_975_DF1, 61.0 + T_975_DF1))
        assert row["n_seeds"] == 2 and row["subset"] == "all" and row["group"] == "components"

    def test_cost_columns_from_the_runs_own_records(self, tmp_path: Path) -> None:
        """Params, GFLOPs and both memory peaks per variant (mean over seeds), Δ in the CSV, method footnoted."""
        root = tmp_path / "runs"

        def cost(params: float, train_mb: float, infer_mb: float) -> dict[str, Any]:
            shape = {"batch": 1, "frames": 5, "image_size": 64}
            method = "cpu: peak RSS growth; run: train = its training steps"
            return {"params_total": params, "gflops_fvcore": 0.25, **shape, "memory_method": method} | {
                "peak_mem_train_mb": train_mb,
                "peak_mem_infer_mb": infer_mb,
            }

        paths = [
            _write_run(root, "full", 0, 0.70, 0.80, cost=cost(1.5e6, 200.0, 100.0)),
            _write_run(root, "full", 1, 0.74, 0.82, cost=cost(1.5e6, 210.0, 102.0)),
            _write_run(root, "no_tmb", 0, 0.60, 0.75, cost=cost(1.2e6, 150.0, 90.0), mte__tmb=False),
            _write_run(root, "no_tmb", 1, 0.62, 0.79, cost=cost(1.2e6, 160.0, None), mte__tmb=False),
        ]
        table = ablation_table(load_runs(paths))
        full, no_tmb = _row(table, "full"), _row(table, "no_tmb")
        assert list(table.display.columns[-5:]) == [
            "S4 params (M)",
            "S4 GFLOPs",
            "S4 train mem (MB)",
            "S4 infer mem (MB)",
            "setting",
        ]
        assert (full["S4 params (M)"], full["S4 GFLOPs"], full["S4 train mem (MB)"], full["S4 infer mem (MB)"]) == (
            "1.50",
            "0.25",
            "205",
            "101",
        )
        assert (no_tmb["S4 params (M)"], no_tmb["S4 train mem (MB)"], no_tmb["S4 infer mem (MB)"]) == (
            "1.20",
            "155",
            "90",  # the seed without a figure is left out, not counted as 0
        )
        data = table.data
        row = data[(data["variant"] == "no_tmb") & (data["metric"] == "peak_mem_train_mb")].iloc[0]
        assert (row["mean"], row["delta"], row["n_seeds"]) == (155.0, -50.0, 2)
        assert row["std"] == pytest.approx(math.sqrt(50.0))
        assert data[(data["variant"] == "no_tmb") & (data["metric"] == "peak_mem_infer_mb")].iloc[0]["n_seeds"] == 1
        note = table.footnotes[-1]
        assert "1×5×3×64²" in note and "train/eval batch 2/4" in note and "cpu: peak RSS growth" in note

        plain = ablation_table(load_runs([_write_run(tmp_path / "plain", "full", 0, 0.7, 0.8)]))
        assert not any("mem" in c for c in plain.display.columns), "no cost recorded: no cost columns"

    def test_clean_protocol_is_a_parameter(self, ablation_runs: list[Path]) -> None:
        table = ablation_table(load_runs(ablation_runs), protocol="clean")
        assert _row(table, "full")["S4 M_J"] == f"71.0 ± {T_975_DF1 * 2:.1f}"
        assert "clean protocol" in table.caption

    def test_missing_reference_is_an_error(self, ablation_runs: list[Path]) -> None:
        runs = load_runs([p for p in ablation_runs if "/full/" not in p.as_posix()])
        with pytest.raises(ValueError, match="reference variant 'full'"):
            ablation_table(runs)

    def test_missing_config_key_names_it(self, tmp_path: Path) -> None:
        path = _write_run(tmp_path, "full", 0, 0.5, 0.5)
        record = json.loads(path.read_text())
        del record["config"]["model"]["mad"]["temporal_v2a"]
        path.write_text(json.dumps(record))
        with pytest.raises(ValueError, match=r"config\.mad\.temporal_v2a"):
            ablation_table(load_runs([path]))


class TestComparisonTable:
    def test_reproduced_beside_published(self, tmp_path: Path) -> None:
        root = tmp_path / "runs"
        paths = [
            _write_run(root, "full", 0, 0.70, 0.80),
            _write_run(root, "full", 1, 0.74, 0.82),
            _write_run(root, "no_tmb", 0, 0.10, 0.10, mte__tmb=False),  # an ablation: not in this table
            _write_run(root, "tpavi", 0, 0.50, 0.60, model="tpavi"),
            _write_run(root, "avesformer", 0, 0.55, 0.65, model="avesformer"),
            _write_run(root, "avesformer", 0, 0.40, 0.50, model="avesformer", task="ms3"),
        ]
        table = comparison_table(load_runs(paths))
        methods = list(table.display["method"])
        reproduced = table.display.iloc[: table.rules[0] : 2]  # each followed by its same-setting published row
        assert [m.rstrip("†‡§¶") for m in reproduced["method"]] == ["AVS-Mamba", "TPAVI", "AVESFormer"]
        beside = table.display.iloc[1 : table.rules[0] : 2]
        assert all(m == "  published, same setting" for m in beside["method"])
        assert all("no published number for this setting" in s for s in beside["source"]), "smoke runs have none"
        mamba = reproduced.iloc[0]
        # mean ± 95 % CI half-width over 2 seeds: t(0.975, 1) · s / √2
        assert mamba["S4 M_J"] == f"72.0 ± {T_975_DF1 * 2:.1f}" and mamba["S4 M_F"] == f"81.0 ± {T_975_DF1:.1f}"
        assert mamba["source"] == "reproduced (smoke, 2 seeds)"
        assert mamba["MS3 M_J"] == "–"
        aves = reproduced.iloc[2]
        assert aves["MS3 M_J"] == "40.0" and aves["source"] == "reproduced (smoke, 1 seed)"
        mark = aves["method"][-1]
        assert mark in "†‡§¶"
        assert any(note.startswith(mark) and "re-implemented from the paper" in note for note in table.footnotes)
        # Published rows: only the reproduced methods, each with its citation; COMBO is not reproduced here.
        published = table.display.iloc[table.rules[0] :]
        assert not any(m.startswith("COMBO") for m in methods)
        assert all(s and not s.startswith("reproduced") for s in published["source"])
        tpavi_pvt = published[
            published["backbone"].str.startswith("PVT-v2-B5") & published["method"].str.startswith("TPAVI")
        ]
        assert tpavi_pvt.iloc[0]["S4 M_J"] == "78.74" and tpavi_pvt.iloc[0]["MS3 M_F"] == "64.5"
        mamba_pub = published[published["method"].str.startswith("AVS-Mamba")].iloc[0]
        assert mamba_pub["MS3 M_F"] == "78.8"
        assert any("78.6" in note for note in table.footnotes), "the MS3 M_F conflict is footnoted"
        aves_pub = published[published["method"].str.startswith("AVESFormer")].iloc[0]
        assert aves_pub["S4 M_J"] == "79.90" and aves_pub["S4 M_F"] == "–"

    def test_cost_columns_for_reproduced_rows_only(self, tmp_path: Path) -> None:
        measured = {"params_total": 2e6, "gflops_fvcore": 1.0, "peak_mem_train_mb": 300.0, "peak_mem_infer_mb": 80.0}
        paths = [
            _write_run(tmp_path, "full", 0, 0.70, 0.80, cost=measured),
            _write_run(tmp_path, "tpavi", 0, 0.5, 0.6, model="tpavi", cost={**measured, "peak_mem_train_mb": 500.0}),
        ]
        table = comparison_table(load_runs(paths))
        assert list(table.display.columns[-6:]) == [
            "S4 params (M)",
            "S4 GFLOPs",
            "S4 train mem (MB)",
            "S4 infer mem (MB)",
            "setting",
            "source",
        ]
        reproduced, published = table.display.iloc[: table.rules[0]], table.display.iloc[table.rules[0] :]
        # reproduced rows alternate with their "published, same setting" rows, which carry no cost
        assert list(reproduced["S4 train mem (MB)"]) == ["300", "–", "500", "–"]
        assert set(published["S4 train mem (MB)"]) == {"–"} and set(published["S4 params (M)"]) == {"–"}
        rows = table.data[table.data["metric"] == "peak_mem_infer_mb"]
        assert list(rows["name"]) == ["full", "tpavi"] and list(rows["value"]) == [80.0, 80.0]
        assert "Cost columns: the S4 runs" in table.footnotes[-1]

    @staticmethod
    def _paper_run(root: Path, model: str, backbone: str, size: int, selection: str, task: str = "s4") -> Path:
        path = _write_run(root, model, 0, 0.70, 0.80, model=model, task=task)
        record = json.loads(path.read_text())
        record["config"]["model"]["backbone"] = backbone
        record["config"]["data"] = {"image_size": size}
        record["config"]["eval"] = {"batch_size": 1, "selection": selection}
        path.write_text(json.dumps(record))
        return path

    def test_published_number_only_beside_the_same_setting(self, tmp_path: Path) -> None:
        """Input size, backbone and selection split must all match the published row's setting."""
        table = comparison_table(load_runs([self._paper_run(tmp_path / "a", "tpavi", "resnet50", 224, "val")]))
        mine, beside = table.display.iloc[0], table.display.iloc[1]
        assert mine["setting"] == "224 px, eval batch 1, selection val"
        assert (beside["S4 M_J"], beside["S4 M_F"]) == ("72.79", "84.8")
        assert beside["source"].startswith("AVSBench project page")
        on_test = comparison_table(load_runs([self._paper_run(tmp_path / "b", "tpavi", "resnet50", 224, "test")]))
        assert on_test.display.iloc[1]["S4 M_J"] == "–"
        assert "S4: no published number for this setting" in on_test.display.iloc[1]["source"]
        # AVSegFormer HEAD: its README numbers are at 512 px; HEAD at 224 px has none (76.45 is the older model's)
        at_512 = comparison_table(load_runs([self._paper_run(tmp_path / "c", "avsegformer", "resnet50", 512, "val")]))
        assert at_512.display.iloc[1]["S4 M_J"] == "76.38"
        at_224 = comparison_table(load_runs([self._paper_run(tmp_path / "d", "avsegformer", "resnet50", 224, "val")]))
        assert at_224.display.iloc[1]["S4 M_J"] == "–"
        old = at_224.display[at_224.display["method"].str.startswith("AVSegFormer (before b2f40e2)")]
        assert old.iloc[0]["S4 M_J"] == "76.45" and old.iloc[0]["setting"] == "224 px, selection val"

    def test_latex_uses_booktabs_and_separates_blocks(self, tmp_path: Path) -> None:
        paths = [_write_run(tmp_path, "full", 0, 0.70, 0.80), _write_run(tmp_path, "tpavi", 0, 0.5, 0.6, model="tpavi")]
        table = comparison_table(load_runs(paths))
        tex = to_latex(table)
        assert tex.count(r"\toprule") == 1 and tex.count(r"\bottomrule") == 1
        assert tex.count(r"\midrule") == 2, "one under the header, one between reproduced and published rows"
        assert r"\hline" not in tex
        assert r"\begin{tabular}{lc" in tex
        assert "±" not in tex and "β" not in tex, "unicode symbols are mapped to LaTeX"
        assert r"AVS-Mamba & pvt\_v2\_b0" in tex
        md = to_markdown(table)
        assert md.splitlines()[2].startswith("| method | backbone | S4 M_J | S4 M_F")


class TestPublished:
    def test_every_row_has_a_source(self) -> None:
        published = load_published()
        assert len(published) >= 20
        assert published["source"].str.strip().str.len().gt(0).all()
        assert set(published["task"]) == {"s4", "ms3", "avss"}
        mamba = published[(published["method"] == "AVS-Mamba") & (published["task"] == "ms3")].iloc[0]
        assert mamba["M_F"] == 78.8 and "78.6" in mamba["note"]

    def test_row_without_source_is_rejected(self, tmp_path: Path) -> None:
        path = tmp_path / "pub.csv"
        path.write_text("method,backbone,input,selection,task,M_J,M_F,source,note\nX,R50,224,val,s4,70,80,,\n")
        with pytest.raises(ValueError, match="line 2: X s4 has no source"):
            load_published(path)


class TestLoading:
    def test_missing_key_names_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "metrics.json"
        path.write_text(json.dumps({"run": {}, "test": {}}))
        with pytest.raises(ValueError, match=r"metrics\.json lacks the keys \['config'\]"):
            load_runs([path])

    def test_duplicate_run_is_an_error(self, tmp_path: Path) -> None:
        a = _write_run(tmp_path / "a", "full", 0, 0.5, 0.5)
        b = _write_run(tmp_path / "b", "full", 0, 0.6, 0.6)
        with pytest.raises(ValueError, match="more than once"):
            load_runs([a, b])

    def test_directories_expand_to_their_runs(self, ablation_runs: list[Path], tmp_path: Path) -> None:
        assert len(load_runs([tmp_path / "runs"])) == len(ablation_runs)

    def test_unknown_protocol_names_it(self, ablation_runs: list[Path]) -> None:
        runs = load_runs(ablation_runs)
        runs.at[0, "test"] = {"clean": {"miou": 0.5, "fscore": 0.5}}
        with pytest.raises(ValueError, match="no 'official' protocol"):
            ablation_table(runs)


def _cost(name: str, params: float, gflops: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "task": "s4",
        "params_total": params,
        "gflops_fvcore": gflops,
        "peak_mem_infer_mb": 123.4,
        "peak_mem_train_mb": 456.0,
        "memory_method": "peak RSS increase in a fresh subprocess",
        "latency_ms_median": 20.0,
        "latency_ms_iqr": 1.5,
        "fps": 250.0,
        "device": "cpu",
        "batch": 1,
        "frames": 5,
        "image_size": 64,
        **extra,
    }


def test_efficiency_table(tmp_path: Path) -> None:
    full = _cost("full", 1_500_000, 0.25, model="avs_mamba", threads=2)
    tpavi = {k: v for k, v in _cost("tpavi", 2e6, 1.0, error="OOM").items() if k != "task"}
    files = [tmp_path / "s4" / "full.json", tmp_path / "s4" / "tpavi.json"]
    files[0].parent.mkdir()
    for path, record in zip(files, (full, tpavi), strict=True):
        path.write_text(json.dumps(record))
    table = efficiency_table(load_costs(files))
    row, base = _row(table, "AVS-Mamba (full)"), _row(table, "TPAVI")
    assert row["task"] == base["task"] == "S4", "the task comes from the record, else from the folder name"
    assert row["params (M)"] == "1.50" and row["GFLOPs†"] == "0.25" and base["params (M)"] == "2.00"
    assert row["input (B×T×3×H×W)"] == "1×5×3×64²"
    assert row["latency (ms)"] == "20.0 (IQR 1.5)" and row["FPS"] == "250.0"
    assert row["device"] == "cpu (2 threads)" and base["device"] == "cpu"
    assert "fvcore" in table.footnotes[0] and "peak RSS" in table.footnotes[1]
    assert "TPAVI: OOM" in table.footnotes[-1]


def test_slope_by_hand_skips_failed_points() -> None:
    assert valid_slope([1, 10, 100], [3, 30, 300]) == pytest.approx(1.0)
    assert valid_slope([2, 4, 8], [1, 16, None]) == pytest.approx(4.0)  # log 16 / log 2; the failed point is skipped
    assert math.isnan(valid_slope([5, 10], [1.0, float("nan")]))


def test_scaling_table_slopes() -> None:
    rows = []
    for label, power in (("linear", 1), ("quadratic", 2)):
        for t in (5, 10, 20, 40):
            rows.append({"label": label, "frames": t, "image_size": 32, "gflops_fvcore": 0.1 * t**power})
        for s in (32, 64, 128):  # cost ∝ (H·W)^power; the base point (T=5, 32 px) is shared with the T sweep
            rows.append(
                {
                    "label": label,
                    "frames": 5,
                    "image_size": s,
                    "gflops_fvcore": 0.1 * 5**power * (s / 32) ** (2 * power),
                }
            )
    for row in rows:
        row["peak_mem_infer_mb"] = 10.0
        row["latency_ms_median"] = float("nan")
    table = scaling_table(pd.DataFrame(rows))
    assert _row(table, "linear")["GFLOPs vs T"] == "1.00" and _row(table, "quadratic")["GFLOPs vs T"] == "2.00"
    assert _row(table, "linear")["GFLOPs vs H·W"] == "1.00" and _row(table, "quadratic")["GFLOPs vs H·W"] == "2.00"
    assert _row(table, "linear")["memory vs T"] == "0.00" and _row(table, "linear")["latency vs T"] == "–"
    assert "Slope ≈ 1" in table.footnotes[0] and "frames ∈ {5,10,20,40}" in table.footnotes[1]


def test_build_tables_writes_everything(ablation_runs: list[Path], tmp_path: Path) -> None:
    cost = tmp_path / "cost.json"
    cost.write_text(json.dumps(_cost("full", 1e6, 0.5)))
    sweep = tmp_path / "scaling.json"
    sweep.write_text(
        json.dumps(
            [{**_cost("full", 1e6, 0.1 * t), "frames": t} for t in (5, 10, 20)]
            + [{**_cost("full", 1e6, 0.5 * (s / 32) ** 2), "image_size": s} for s in (32, 64)]
        )
    )
    written = build_tables(
        ablation_runs, tmp_path / "tables", figures_dir=tmp_path / "figures", costs=[cost], scaling=[sweep]
    )
    names = sorted(p.relative_to(tmp_path).as_posix() for p in written)
    # smoke runs: no comparison with the published real-data numbers unless asked for
    expected = [f"tables/{t}.{ext}" for t in ("ablation", "efficiency", "scaling") for ext in ("csv", "md", "tex")]
    expected += ["figures/ablation_forest.png", "figures/qualitative_s4.png", "figures/scaling.png"]
    assert names == sorted(expected)
    for path in written:
        assert path.stat().st_size > 0
    assert Image.open(tmp_path / "figures" / "qualitative_s4.png").size[0] > 100
    asked = build_tables(ablation_runs, tmp_path / "t3", only=["comparison"])
    assert [p.name for p in asked] == ["comparison.md", "comparison.tex", "comparison.csv"]
    with pytest.raises(ValueError, match="the efficiency table needs costs"):
        build_tables(ablation_runs, tmp_path / "t2", only=["efficiency"])
    with pytest.raises(ValueError, match="unknown table"):
        build_tables(ablation_runs, tmp_path / "t2", only=["ablations"])


def test_binary_overlay_scores_pixels_on_a_grey_frame() -> None:
    """Row 2: ground truth white; row 3: TP / FP / FN colours; elsewhere the dimmed grey frame, never a tint."""
    import torch

    from avs_mamba.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from avs_mamba.overlays import FN_COLOUR, FP_COLOUR, GT_COLOUR, TP_COLOUR, overlay_grid

    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    frames = red.view(1, 3, 1, 1).expand(1, 3, 2, 2)  # one pure-red 2x2 frame
    target = torch.tensor([[[1, 1], [0, 0]]])
    logits = torch.tensor([[[[5.0, -5.0], [5.0, -5.0]]]])  # predicted: left column
    image = overlay_grid(frames, target, logits)
    assert image.shape == (6, 2, 3)
    gt, pred = image[2:4], image[4:6]
    assert tuple(gt[0, 0]) == tuple(gt[0, 1]) == GT_COLOUR
    assert tuple(pred[0, 0]) == TP_COLOUR and tuple(pred[0, 1]) == FN_COLOUR and tuple(pred[1, 0]) == FP_COLOUR
    grey = round(0.55 * 0.299 * 255)  # luminance of pure red, dimmed by the overlay's grey level
    assert tuple(pred[1, 1]) == (grey, grey, grey) and tuple(gt[1, 1]) == (grey, grey, grey)
