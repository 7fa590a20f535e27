"""Tables and figures from hand-made run files: mean ± std, ✓/✗ columns, Δ values, booktabs LaTeX, sources."""

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
    **switches: Any,
) -> Path:
    """A metrics.json shaped like the engine's, in results/runs/smoke/{task}/{name}/seed{seed}/."""
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
            "official": {"protocol": "official", "miou": miou, "fscore": fscore},
            "clean": {"protocol": "clean", "miou": miou - 0.01, "fscore": fscore - 0.01},
        },
        "best_val": {"miou": miou},
        "best_epoch": 1,
        "history": [],
        "cost": {},
        "wall_time_s": 1.0,
        "config": {"name": name, "variant": variant or name, "model": config_model},
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


class TestAblationTable:
    def test_values_components_and_deltas(self, ablation_runs: list[Path]) -> None:
        table = ablation_table(load_runs(ablation_runs))
        assert list(table.display["variant"]) == ["full", "frame_only_v2a", "no_cip", "no_tmb"], "reference first"
        full, no_tmb, no_cip = _row(table, "full"), _row(table, "no_tmb"), _row(table, "no_cip")
        assert full["S4 M_J"] == "72.0 ± 2.8"
        assert full["S4 M_F"] == "81.0 ± 1.4"
        assert no_tmb["S4 M_J"] == "61.0 ± 1.4"
        assert no_tmb["S4 ΔM_J"] == "−11.0"  # 61 − 72
        assert no_tmb["S4 ΔM_F"] == "−4.0"  # 77 − 81
        assert no_cip["S4 ΔM_J"] == "+1.0"
        assert full["S4 ΔM_J"] == "–"
        assert (no_tmb["MTE-TMB"], no_tmb["CIP"], no_tmb["V2A frame"], no_tmb["V2A temporal"]) == ("✗", "✓", "✓", "✓")
        assert (no_cip["MTE-TMB"], no_cip["CIP"]) == ("✓", "✗")
        assert all(_row(table, "frame_only_v2a")[c] == "✓" for c in ("MTE-TMB", "V2A frame", "V2A temporal", "CIP"))
        # CIP-TMB differs between rows (no_tmb, and CIP off), so it is shown; audio and K never differ here.
        assert no_tmb["CIP-TMB"] == "✗" and full["CIP-TMB"] == "✓"
        assert "audio" not in table.display.columns and "K" not in table.display.columns

    def test_csv_data_holds_numbers(self, ablation_runs: list[Path], tmp_path: Path) -> None:
        paths = write_table(ablation_table(load_runs(ablation_runs)), tmp_path / "tables")
        assert [p.name for p in paths] == ["ablation.md", "ablation.tex", "ablation.csv"]
        data = pd.read_csv(paths[2])
        row = data[(data["variant"] == "no_tmb") & (data["metric"] == "M_J")].iloc[0]
        assert row["mean"] == pytest.approx(61.0)
        assert row["std"] == pytest.approx(math.sqrt(2.0))
        assert row["delta"] == pytest.approx(-11.0)
        assert row["n_seeds"] == 2

    def test_clean_protocol_is_a_parameter(self, ablation_runs: list[Path]) -> None:
        table = ablation_table(load_runs(ablation_runs), protocol="clean")
        assert _row(table, "full")["S4 M_J"] == "71.0 ± 2.8"
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
        reproduced = table.display.iloc[: table.rules[0]]
        assert [m.rstrip("†‡§¶") for m in reproduced["method"]] == ["AVS-Mamba", "TPAVI", "AVESFormer"]
        mamba = reproduced.iloc[0]
        assert mamba["S4 M_J"] == "72.0 ± 2.8" and mamba["S4 M_F"] == "81.0 ± 1.4"
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
        path.write_text("method,backbone,input,task,M_J,M_F,source,note\nX,R50,224,s4,70,80,,\n")
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
    expected += ["figures/ablation_bars.png", "figures/qualitative_s4.png", "figures/scaling.png"]
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
