"""MLflow tracking on a SQLite store: parallel writers, idempotent init, run replacement, param limits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avs_mamba.tracking import (
    RUN_KEY_TAG,
    RunLogger,
    artifact_root,
    default_tracking_uri,
    git_commit,
    init_store,
    run_name,
    runs_url,
    ui_command,
)

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402

EXPERIMENT = "avs-bench-smoke"

# One job of the parallel test: waits for the go signal so that all writers hit the store at the same moment.
CHILD = """
import sys, time
from pathlib import Path
from avs_mamba.tracking import RunLogger, run_name

uri, index, sync, artifact = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
(sync / f"ready{index}").touch()
deadline = time.time() + 60
while not (sync / "go").exists():
    if time.time() > deadline:
        sys.exit("no go signal")
    time.sleep(0.01)
params = {f"p{k}": k * index for k in range(30)}
with RunLogger(uri).start(run_name("s4", f"job{index}", 0), "avs-bench-smoke", {"job": str(index)}, params) as run:
    for epoch in range(5):
        run.log_epoch(epoch, {"train/loss": 1.0 / (epoch + 1) + index, "val/miou": 0.1 * epoch})
    run.log_final({"test": {"miou": 0.5 + index, "fscore": 0.25}})
    run.log_artifacts([artifact])
"""


@pytest.fixture(scope="module")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store made by ``init_store`` once: creating the schema (alembic migrations) takes seconds."""
    db = tmp_path_factory.mktemp("template") / "results" / "mlflow.db"
    init_store(f"sqlite:///{db}")
    return db


def sqlite_uri(tmp_path: Path, template: Path | None = None) -> str:
    """URI of a store under ``tmp_path``; a copy of the initialised template when given."""
    db = tmp_path / "results" / "mlflow.db"
    if template is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, db)
    return f"sqlite:///{db}"


def runs_of(client: MlflowClient, experiment: str, view: int = ViewType.ACTIVE_ONLY) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], run_view_type=view, max_results=100)


@pytest.mark.slow
def test_eight_processes_create_and_log_to_one_fresh_store_at_once(tmp_path: Path) -> None:
    """No init_store first (a shell loop of train jobs): the writers race to create the schema, under its lock."""
    uri = sqlite_uri(tmp_path)
    assert not (tmp_path / "results").exists()
    n = 8
    sync = tmp_path / "sync"
    sync.mkdir()
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, uri, str(i), str(sync), str(artifact)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    deadline = time.time() + 120
    while len(list(sync.glob("ready*"))) < n and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    (sync / "go").touch()
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    client = MlflowClient(tracking_uri=uri)
    runs = {run.data.tags["job"]: run for run in runs_of(client, EXPERIMENT)}
    assert sorted(runs) == [str(i) for i in range(n)]
    for job, run in runs.items():
        i = int(job)
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"s4/job{i}/seed0"
        assert run.data.params == {f"p{k}": str(k * i) for k in range(30)}
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted((m.step, m.value) for m in history) == [(e, pytest.approx(1 / (e + 1) + i)) for e in range(5)]
        assert len(client.get_metric_history(run.info.run_id, "val/miou")) == 5
        assert run.data.metrics["test/miou"] == pytest.approx(0.5 + i)
        assert run.data.metrics["test/fscore"] == pytest.approx(0.25)
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]


def test_init_store_is_idempotent_and_sets_artifact_locations(tmp_path: Path) -> None:
    uri = sqlite_uri(tmp_path)
    first = init_store(uri)  # creates the schema
    assert init_store(uri) == first
    assert sorted(first) == ["avs-bench-paper", "avs-bench-smoke"]
    client = MlflowClient(tracking_uri=uri)
    location = client.get_experiment(first[EXPERIMENT]).artifact_location
    assert location == (tmp_path / "results" / "mlartifacts" / EXPERIMENT).as_uri()
    assert init_store(uri, ["extra"])["extra"] not in first.values()
    # the UI opens these experiments on their runs, not on MLflow 3's GenAI pages; an untagged one gets the tag
    assert client.get_experiment(first[EXPERIMENT]).tags["mlflow.experimentKind"] == "custom_model_development"
    untagged = client.create_experiment("made-elsewhere")
    assert init_store(uri, ["made-elsewhere"]) == {"made-elsewhere": untagged}
    assert client.get_experiment(untagged).tags["mlflow.experimentKind"] == "custom_model_development"
    # the shared view that runs_url names: the runs table with the suite's columns
    view = json.loads(client.get_experiment(first[EXPERIMENT]).tags["mlflow.sharedViewState.avs-bench"])
    assert "metrics.`test/official/miou`" in view["selectedColumns"]
    assert runs_url("7", 5001) == (
        "http://127.0.0.1:5001/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=avs-bench"
    )

    artifact = tmp_path / "metrics.json"
    artifact.write_text("{}")
    with RunLogger(uri).start("s4/m/seed0", EXPERIMENT, params={"a": 1}) as run:
        run.log_epoch(0, {"loss": 0.5})
        run.log_artifacts([artifact])
    stored = client.get_run(run.run_id)
    assert (stored.info.status, stored.data.metrics, stored.data.params) == ("FINISHED", {"loss": 0.5}, {"a": "1"})
    assert (tmp_path / "results" / "mlartifacts" / EXPERIMENT / run.run_id / "artifacts" / "metrics.json").is_file()


def test_rerunning_a_run_key_replaces_the_run_only_after_success(tmp_path: Path, template_store: Path) -> None:
    uri = sqlite_uri(tmp_path, template_store)
    client = MlflowClient(tracking_uri=uri)
    name = run_name("ms3", "no_tmb", 1)

    def job(value: float, fail: bool = False) -> str:
        with RunLogger(uri).start(name, EXPERIMENT, params={"lr": value}) as run:
            run.log_final({"test/miou": value})
            if fail:
                raise RuntimeError("crash mid-run")
        return run.run_id or ""

    first = job(0.1)
    with pytest.raises(RuntimeError, match="crash mid-run"):
        job(0.2, fail=True)
    # The crash kept the complete earlier result; the failed attempt is visible next to it.
    statuses = sorted((r.info.status, r.data.metrics["test/miou"]) for r in runs_of(client, EXPERIMENT))
    assert statuses == [("FAILED", 0.2), ("FINISHED", 0.1)]

    last = job(0.3)
    active = runs_of(client, EXPERIMENT)
    assert [(r.info.run_id, r.data.params["lr"], r.data.metrics["test/miou"]) for r in active] == [(last, "0.3", 0.3)]
    assert active[0].data.tags[RUN_KEY_TAG] == name
    deleted = {r.info.run_id for r in runs_of(client, EXPERIMENT, ViewType.DELETED_ONLY)}
    assert first in deleted and len(deleted) == 2


def test_a_killed_attempt_left_running_is_marked_killed_by_the_next(tmp_path: Path, template_store: Path) -> None:
    uri = sqlite_uri(tmp_path, template_store)
    killed = RunLogger(uri).start("s4/m/seed0", EXPERIMENT)  # never ended: its process was killed
    killed.log_epoch(0, {"loss": 1.0})
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(killed.run_id).info.status == "RUNNING"
    with RunLogger(uri).start("s4/m/seed0", EXPERIMENT) as rerun:
        old = client.get_run(killed.run_id)
        assert old.info.status == "KILLED" and old.data.tags["avs.replaced_by"] == rerun.run_id
        assert client.get_run(rerun.run_id).info.status == "RUNNING"
        rerun.log_epoch(0, {"loss": 0.5})
    assert [r.info.run_id for r in runs_of(client, EXPERIMENT)] == [rerun.run_id]
    assert [r.info.status for r in runs_of(client, EXPERIMENT, ViewType.DELETED_ONLY)] == ["KILLED"]


def test_long_values_and_more_than_100_params_are_stored(tmp_path: Path, template_store: Path) -> None:
    uri = sqlite_uri(tmp_path, template_store)
    params = {f"group{k % 7}.key{k}": k for k in range(250)}
    params["model.note"] = "x" * 7000
    with RunLogger(uri).start("s4/long/seed0", EXPERIMENT, params=params) as run:
        pass
    client = MlflowClient(tracking_uri=uri)
    stored = client.get_run(run.run_id).data
    assert len(stored.params) == 251
    assert all(stored.params[f"group{k % 7}.key{k}"] == str(k) for k in range(250))
    note = stored.params["model.note"]
    assert len(note) == 6000 and note.startswith("x" * 5000) and note.endswith("params_full.json]")
    assert stored.tags["avs.truncated_params"] == "model.note"
    full = json.loads((Path(client.download_artifacts(run.run_id, "params_full.json", str(tmp_path)))).read_text())
    assert full == {"model.note": "x" * 7000}


def test_uri_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = default_tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve() / 'results' / 'mlflow.db'}"
    assert artifact_root(uri) == tmp_path.resolve() / "results" / "mlartifacts"
    assert artifact_root("http://127.0.0.1:5000") is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri() == "http://127.0.0.1:5000"
    argv = ui_command(uri, port=5123)
    assert argv[1:] == [
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        "5123",
        "--default-artifact-root",
        (tmp_path.resolve() / "results" / "mlartifacts").as_uri(),
    ]


def test_unusable_tracking_uris_fail_at_once_naming_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avs_mamba.tracking import TrackingStoreError, check_tracking_uri

    with pytest.raises(TrackingStoreError, match=r"'foo://x': unsupported scheme 'foo'"):
        RunLogger("foo://x").start("s4/m/seed0", EXPERIMENT)
    (tmp_path / "afile").write_text("")
    with pytest.raises(TrackingStoreError, match=r"afile is a file, so the store's folder .*afile/sub cannot exist"):
        init_store(f"sqlite:///{tmp_path / 'afile' / 'sub' / 'mlflow.db'}")
    (tmp_path / "db.sqlite").mkdir()
    with pytest.raises(TrackingStoreError, match=r"db.sqlite is a folder, not a SQLite file"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'db.sqlite'}")
    (tmp_path / "junk.db").write_text("not a database " * 100)
    with pytest.raises(TrackingStoreError, match=r"junk.db.*the store could not be opened"):
        init_store(f"sqlite:///{tmp_path / 'junk.db'}")

    # A read-only folder (the test may run as root, which ignores modes: the write itself is made to fail).
    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system", str(self))

    from avs_mamba import tracking

    sleeps: list[float] = []
    monkeypatch.setattr(tracking.time, "sleep", sleeps.append)
    monkeypatch.setattr(Path, "touch", read_only)
    with pytest.raises(TrackingStoreError, match=r"folder is not writable \(.*ro: Read-only file system\)"):
        RunLogger(f"sqlite:///{tmp_path / 'ro' / 'mlflow.db'}").start("s4/m/seed0", EXPERIMENT)
    assert sleeps == []  # failed at once, not after a retry loop


def test_git_commit(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"  # not a checkout
    commit = git_commit()
    assert commit == "unknown" or (7 <= len(commit) <= 12 and int(commit, 16) >= 0)


def test_logging_before_start_or_bad_metrics_raise(tmp_path: Path, template_store: Path) -> None:
    logger = RunLogger(sqlite_uri(tmp_path, template_store))
    with pytest.raises(RuntimeError, match="call start"):
        logger.log_epoch(0, {"loss": 1.0})
    with logger.start("s4/x/seed0", EXPERIMENT) as run:
        with pytest.raises(ValueError, match="metric 'val/name' must be a number"):
            run.log_final({"val": {"name": "best"}})
        with pytest.raises(FileNotFoundError, match="missing.png"):
            run.log_artifacts([tmp_path / "missing.png"])


def test_locked_database_is_retried_with_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException

    from avs_mamba import tracking

    sleeps: list[float] = []
    monkeypatch.setattr(tracking.time, "sleep", sleeps.append)
    calls = []

    def flaky(value: int) -> int:
        calls.append(value)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return value * 2

    assert tracking._retry("write", flaky, 21) == 42
    assert len(calls) == 3 and len(sleeps) == 2

    def always_locked() -> None:
        raise MlflowException("database is locked", error_code="TEMPORARILY_UNAVAILABLE")

    with pytest.raises(RuntimeError, match=r"still locked after 4 attempts \(write\)"):
        tracking._retry("write", always_locked, attempts=4)

    def other_error() -> None:
        calls.append(0)
        raise MlflowException("run not found")

    calls.clear()
    with pytest.raises(MlflowException, match="run not found"):
        tracking._retry("write", other_error)
    assert calls == [0]  # not retried


def test_results_are_metrics_and_bookkeeping_is_tags(tmp_path: Path, template_store: Path) -> None:
    from avs_mamba.tracking import is_result_metric

    assert is_result_metric("test/official/miou") and is_result_metric("cost/gflops_fvcore")
    assert is_result_metric("wall_time_s") and is_result_metric("best_epoch") and is_result_metric("val/clean/fscore")
    assert not is_result_metric("test/official/num_frames") and not is_result_metric("cost/repeats")
    assert not is_result_metric("best_val/official/eval_batch_size")
    uri = sqlite_uri(tmp_path, template_store)
    with RunLogger(uri).start("s4/m/seed0", EXPERIMENT) as run:
        run.log_final({"test": {"official": {"miou": 0.5, "num_frames": 40}}, "cost": {"repeats": 3, "fps": 2.5}})
    stored = MlflowClient(tracking_uri=uri).get_run(run.run_id)
    assert stored.data.metrics == {"test/official/miou": 0.5, "cost/fps": 2.5}
    assert stored.data.tags["test/official/num_frames"] == "40" and stored.data.tags["cost/repeats"] == "3"


def test_dataset_is_logged_as_an_input(tmp_path: Path, template_store: Path) -> None:
    uri = sqlite_uri(tmp_path, template_store)
    data = {"root": str(tmp_path), "task": "s4", "digest": "ab" * 32, "num_files": 3, "source": "synthetic"}
    with RunLogger(uri).start("s4/m/seed0", EXPERIMENT) as run:
        run.log_dataset(data)
    (entry,) = MlflowClient(tracking_uri=uri).get_run(run.run_id).inputs.dataset_inputs
    assert (entry.dataset.name, entry.dataset.digest) == ("synthetic AVSBench S4", "ab" * 8)
    assert json.loads(entry.dataset.source) == {"uri": str(tmp_path)} and entry.dataset.source_type == "local"
    assert {t.key: t.value for t in entry.tags} == {"mlflow.data.context": "train", "source": "synthetic"}


def test_report_nests_seed_runs_under_a_parent_with_mean_and_interval(tmp_path: Path, template_store: Path) -> None:
    from avs_mamba.tracking import log_report

    uri = sqlite_uri(tmp_path, template_store)
    client = MlflowClient(tracking_uri=uri)
    children, runs = {}, []
    for seed, miou in ((0, 0.5), (1, 0.7)):
        with RunLogger(uri).start(run_name("s4", "full", seed), EXPERIMENT) as run:
            children[seed] = run.run_id
        test = {"official": {"miou": miou, "fscore": 0.8, "num_frames": 10}}
        runs.append({"task": "s4", "name": "full", "variant": "full", "model": "avs_mamba", "profile": "smoke"})
        runs[-1] |= {"seed": seed, "test": test}
    table, figure = tmp_path / "ablation.md", tmp_path / "ablation_bars.png"
    table.write_text("| a |")
    figure.write_bytes(b"png")
    for _ in range(2):  # a rerun keeps one parent and replaces the report run
        ids = log_report(uri, runs, [table, figure], report="ablation", profile="smoke")
    parent = client.get_run(ids["s4/full"])
    # mean 0.6; s = 0.1414, s/sqrt(2) = 0.1, t(0.975, 1) = 12.7062 -> 0.6 -/+ 1.27062
    metrics = parent.data.metrics
    assert metrics["test/official/miou"] == pytest.approx(0.6)
    assert metrics["test/official/miou_ci95_lo"] == pytest.approx(0.6 - 1.270620, abs=1e-5)
    assert metrics["test/official/miou_ci95_hi"] == pytest.approx(0.6 + 1.270620, abs=1e-5)
    assert metrics["test/official/fscore"] == pytest.approx(0.8) and "test/official/num_frames" not in metrics
    assert parent.info.run_name == "s4/full" and parent.data.tags["avs.kind"] == "variant"
    assert parent.data.tags["num_seeds"] == "2" and parent.info.status == "FINISHED"
    for run_id in children.values():
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    names = sorted(r.info.run_name for r in runs_of(client, EXPERIMENT))
    assert names == ["report/ablation", "s4/full", "s4/full/seed0", "s4/full/seed1"]
    report = ids["report/ablation"]
    assert [a.path for a in client.list_artifacts(report)] == ["figures", "tables"]
    assert [a.path for a in client.list_artifacts(report, "tables")] == ["tables/ablation.md"]


def test_a_copied_store_finds_its_artifacts(tmp_path: Path, template_store: Path) -> None:
    from avs_mamba.tracking import relocate_artifacts

    uri = sqlite_uri(tmp_path / "a", template_store)
    init_store(uri)
    artifact = tmp_path / "metrics.json"
    artifact.write_text('{"x": 1}')
    with RunLogger(uri).start("s4/m/seed0", EXPERIMENT) as run:
        run.log_artifacts([artifact])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    moved = f"sqlite:///{tmp_path / 'b' / 'results' / 'mlflow.db'}"
    assert relocate_artifacts(moved) == 3  # two experiments and the run
    assert relocate_artifacts(moved) == 0
    client = MlflowClient(tracking_uri=moved)
    stored = client.get_run(run.run_id)
    here = tmp_path / "b" / "results" / "mlartifacts" / EXPERIMENT
    assert stored.info.artifact_uri == (here / run.run_id / "artifacts").as_uri()
    local = client.download_artifacts(run.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == {"x": 1}
