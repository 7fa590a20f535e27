"""MLflow tracking: one run per workflow job in one SQLite store that parallel jobs share.

* Store: ``sqlite:///<abs>/results/mlflow.db`` (``MLFLOW_TRACKING_URI`` overrides it), artifacts under
  ``<abs>/results/mlartifacts/<experiment>``, one experiment per profile (``avs-bench-smoke``, ``avs-bench-paper``).
  Whatever opens a SQLite store first (``train``, ``init-store``, ``ui``, any :class:`RunLogger`) creates its schema
  holding an exclusive file lock ``<db>.lock`` beside it: parallel first writers racing MLflow's schema migrations
  otherwise fail, and can leave the store half-migrated (DESIGN §9). :func:`init_store` also makes the experiments.
* A URI that cannot work fails at once with :class:`TrackingStoreError` naming it: an unknown scheme, a SQLite path
  under a file or in a folder this process cannot write.
* Runs are named ``{dataset}/{model}/seed{n}`` and carry that name as the run key tag ``avs.run_key``. Re-running a
  job replaces its run: the new run is logged next to the old ones, and only when it ends FINISHED are the older runs
  with the same key deleted (MLflow soft delete: hidden from the UI and searches, purged by ``mlflow gc``). A crash
  mid-run therefore never loses the last complete result; the FAILED run stays visible until a rerun succeeds.
  Earlier attempts still marked RUNNING (a killed process cannot end its run) are marked KILLED when a new attempt
  starts. :func:`finished_run` tells whether the store holds a complete record of a job (the engine re-logs a
  finished run directory whose MLflow record is missing or FAILED).
* What a run logs: the flattened config as params; scores and costs (``test/official/miou``, ``cost/gflops_fvcore``,
  ...) as metrics; the counts and settings that say how a value was measured (``num_frames``, ``eval_batch_size``,
  ``cost/repeats``, ...) as tags, so the metric list holds results only; the dataset it trained on as an MLflow
  dataset input (name, digest, source ``synthetic`` or ``AVSBench``).
* :func:`log_report` (``avs-bench tables --tracking-uri``) adds a parent run per (dataset, variant) with the seed
  runs nested under it and the mean and 95 % interval over seeds as its metrics, and a report run holding the tables
  and figures as artifacts.
* Artifacts live in ``mlartifacts/`` beside the SQLite file. MLflow stores absolute artifact URIs, so
  :func:`relocate_artifacts` (run by ``init_store`` and ``avs-bench ui``) points a copied or moved store at the
  ``mlartifacts/`` beside it.
* SQLite allows one writer at a time. MLflow waits up to 20 s on a locked database (``busy_timeout``); on top of that
  every write here is retried with bounded exponential backoff when the database is still locked, so a few jobs
  logging at once lose nothing. Writes are batched (``log_batch``) to keep transactions few.

mlflow is imported lazily, so importing this module stays cheap for the command line.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from avs_mamba.config import ExperimentConfig

__all__ = [
    "RUN_KEY_TAG",
    "CONFIG_HASH_TAG",
    "TrackingStoreError",
    "MAX_PARAM_VALUE_LENGTH",
    "MAX_PARAMS_PER_BATCH",
    "PROFILES",
    "experiment_name",
    "run_name",
    "default_tracking_uri",
    "artifact_root",
    "check_tracking_uri",
    "init_store",
    "finished_run",
    "git_commit",
    "run_tags",
    "ui_command",
    "log_to_finished_run",
    "runs_url",
    "is_result_metric",
    "relocate_artifacts",
    "log_report",
    "RunLogger",
]

RUN_KEY_TAG = "avs.run_key"
REPLACED_BY_TAG = "avs.replaced_by"
CONFIG_HASH_TAG = "avs.config_hash"
TRUNCATED_TAG = "avs.truncated_params"
# MLflow's limits (mlflow/utils/validation.py): param values up to 6000 characters, tag values up to 5000 in the
# documented API, at most 100 params or tags and 1000 metrics per log_batch call.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 5000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
PROFILES = ("smoke", "paper")
# MLflow 3 opens an experiment in its GenAI view (traces, judges) unless the experiment says it holds model training
# runs; with this tag the UI opens on the runs table and the metric charts.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The MLflow 3.17 UI opens every experiment on its GenAI overview unless the URL (or the browser's last choice) says
# workflowType=machine_learning; a shared view (an experiment tag the URL names with viewStateShareKey) then opens
# the runs table with these columns. Parents (one per variant) list first, their seed runs nested under them.
VIEW_KEY = "avs-bench"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_COLUMNS = (
    "metrics.`test/official/miou`",
    "metrics.`test/official/miou_ci95_lo`",
    "metrics.`test/official/miou_ci95_hi`",
    "metrics.`test/official/fscore`",
    "metrics.`cost/params_total`",
    "metrics.`cost/gflops_fvcore`",
    "tags.`variant`",
    "tags.`num_seeds`",
    "attributes.`Dataset`",
)
VIEW_STATE = json.dumps({"selectedColumns": list(VIEW_COLUMNS)})
_TRUNCATION_MARK = "...[truncated; full value in params_full.json]"
KIND_TAG = "avs.kind"  # run (one training job), variant (the parent of its seeds), report (tables and figures)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under its parent
SCORE_KEYS = ("miou", "fscore")
COST_METRIC_PREFIXES = ("params_", "gflops_", "latency_", "fps", "peak_mem_")

T = TypeVar("T")


def experiment_name(profile: str) -> str:
    """``avs-bench-<profile>``: one MLflow experiment per size profile."""
    return f"avs-bench-{profile}"


def run_name(dataset: str, model: str, seed: int) -> str:
    """``{dataset}/{model}/seed{n}``; ``model`` is the config's ``name`` (the table row), unique per variant."""
    return f"{dataset}/{model}/seed{seed}"


def default_tracking_uri(results_dir: str | Path = "results") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<absolute results_dir>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) and uri != "sqlite:///:memory:" else None


def artifact_root(uri: str) -> Path | None:
    """``mlartifacts/`` beside a SQLite store; None for other stores (a tracking server manages its artifacts)."""
    db = _sqlite_path(uri)
    return None if db is None else db.parent / "mlartifacts"


def _is_locked(err: Exception) -> bool:
    text = str(err).lower()
    code = getattr(err, "error_code", "")
    return "database is locked" in text or "database table is locked" in text or code == "TEMPORARILY_UNAVAILABLE"


def _retry(what: str, fn: Callable[..., T], *args: Any, attempts: int = 8, **kwargs: Any) -> T:
    """Call ``fn``; while the SQLite database is locked, retry with jittered exponential backoff (bounded)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not _is_locked(err):
                raise
            if attempt == attempts - 1:
                raise RuntimeError(f"MLflow store still locked after {attempts} attempts ({what}): {err}") from err
            time.sleep(min(0.1 * 2**attempt, 4.0) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class TrackingStoreError(RuntimeError):
    """The tracking URI cannot be used (bad scheme, unwritable or impossible SQLite path, unreadable store)."""


# Schemes MLflow's tracking store accepts (mlflow.tracking._tracking_service.utils); "" and "file" are folder stores.
_SCHEMES = ("sqlite", "file", "", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")
_LOCK_TIMEOUT_S = 600.0  # creating a schema takes seconds; a lock held this long means a hung process
_USABLE: set[str] = set()  # URIs whose schema this process has checked (MLflow caches the store per URI as well)


def _no_store(uri: str, problem: str) -> TrackingStoreError:
    return TrackingStoreError(
        f"MLflow tracking URI {uri!r}: {problem}. Pass --tracking-uri (or MLFLOW_TRACKING_URI) "
        "sqlite:///<writable folder>/mlflow.db or a tracking server's http(s):// address, or --no-tracking"
    )


def _check_sqlite_folder(uri: str, db: Path) -> None:
    """Create the store's folder and prove it writable, naming the part of the path that is in the way."""
    for parent in (db.parent, *db.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise _no_store(uri, f"{parent} is a file, so the store's folder {db.parent} cannot exist")
            break
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        if db.is_dir():
            raise _no_store(uri, f"{db} is a folder, not a SQLite file")
        probe = db.parent / f".{db.name}.{os.getpid()}.probe"
        probe.touch()
        probe.unlink()
        if db.exists() and not os.access(db, os.R_OK | os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(db))
    except OSError as err:
        where = db.parent if err.filename is None or ".probe" in str(err.filename) else err.filename
        raise _no_store(uri, f"the store's folder is not writable ({where}: {err.strerror})") from None


def _open_sqlite(uri: str, db: Path) -> MlflowClient:
    """A client on a SQLite store, built under an exclusive lock shared by every process on this store."""
    from filelock import FileLock, Timeout
    from mlflow import MlflowClient

    try:
        with FileLock(str(db) + ".lock", timeout=_LOCK_TIMEOUT_S):
            # MlflowClient builds (and caches per URI) the store at once; building it creates the tables, runs the
            # alembic migrations and adds the Default experiment: none of which is safe to race.
            return _retry("open store", MlflowClient, tracking_uri=uri)
    except Timeout:
        raise _no_store(uri, f"the schema lock {db}.lock was held for {_LOCK_TIMEOUT_S:.0f} s") from None
    except (RuntimeError, OSError) as err:
        raise _no_store(uri, f"the store could not be opened ({err})") from err
    except Exception as err:  # MLflow/SQLAlchemy errors: out-of-date or damaged schema, not a database, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _no_store(uri, f"the store could not be opened ({type(err).__name__}: {first})") from err


def check_tracking_uri(uri: str) -> None:
    """Fail fast, naming the problem, on a URI that cannot hold runs (see :class:`TrackingStoreError`)."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in _SCHEMES and not scheme.startswith(tuple(f"{s}+" for s in ("postgresql", "mysql", "mssql"))):
        known = "sqlite, postgresql, mysql, mssql, http(s), file"
        raise _no_store(uri, f"unsupported scheme {scheme!r} (MLflow stores: {known})")
    db = _sqlite_path(uri)
    if db is not None:
        _check_sqlite_folder(uri, db)


def _client(uri: str) -> MlflowClient:
    """A client on ``uri``, checked first; a SQLite store's schema is created under the store's file lock."""
    from mlflow import MlflowClient

    if uri in _USABLE:
        return MlflowClient(tracking_uri=uri)
    check_tracking_uri(uri)
    db = _sqlite_path(uri)
    client = _open_sqlite(uri, db) if db is not None else MlflowClient(tracking_uri=uri)
    _USABLE.add(uri)
    return client


def _get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with its artifact location and kind tag) if absent, restored if
    deleted; an experiment made without the kind tag gets it."""
    from mlflow.exceptions import MlflowException

    experiment = _retry("get experiment", client.get_experiment_by_name, name)
    if experiment is None:
        root = artifact_root(uri)
        location = (root / name).resolve().as_uri() if root is not None else None
        try:
            return _retry(
                "create experiment",
                client.create_experiment,
                name,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: VIEW_STATE},
            )
        except MlflowException as err:
            if getattr(err, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = _retry("get experiment", client.get_experiment_by_name, name)  # another job created it
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        _retry("restore experiment", client.restore_experiment, experiment.experiment_id)
    for key, value in ((EXPERIMENT_KIND_TAG, EXPERIMENT_KIND), (VIEW_TAG, VIEW_STATE)):
        if experiment.tags.get(key) != value:
            _retry("tag experiment", client.set_experiment_tag, experiment.experiment_id, key, value)
    return experiment.experiment_id


def init_store(uri: str | None = None, experiments: Iterable[str] | None = None) -> dict[str, str]:
    """Create the store's schema and the experiments (default: one per profile). Safe to call again.

    Returns:
        Experiment name -> experiment id.
    """
    uri = uri or default_tracking_uri()
    client = _client(uri)  # creates or migrates a SQLite store's schema under its file lock
    names = [experiment_name(p) for p in PROFILES] if experiments is None else list(experiments)
    ids = {name: _get_or_create_experiment(client, name, uri) for name in names}
    _retry("relocate artifacts", relocate_artifacts, uri)
    return ids


def _runs_with_key(client: MlflowClient, experiment_id: str, key: str, status: str | None = None) -> list[Any]:
    query = f"tags.`{RUN_KEY_TAG}` = '{key}'" + (f" and attributes.status = '{status}'" if status else "")
    return _retry("search runs", client.search_runs, [experiment_id], filter_string=query, max_results=1000)


def finished_run(uri: str, experiment: str, run_key: str, config_hash: str) -> str | None:
    """The id of a FINISHED run of ``run_key`` logged from a config with ``config_hash``, or None.

    A run ends FINISHED only after its final metrics and artifacts were logged (:class:`RunLogger` ends it FAILED on
    any error), so such a run is a complete record of the job."""
    client = _client(uri)
    found = _retry("get experiment", client.get_experiment_by_name, experiment)
    if found is None or found.lifecycle_stage == "deleted":
        return None
    for run in _runs_with_key(client, found.experiment_id, run_key, "FINISHED"):
        if run.data.tags.get(CONFIG_HASH_TAG) == config_hash:
            return run.info.run_id
    return None


def git_commit(path: str | Path | None = None) -> str:
    """Short commit hash of the git checkout holding ``path`` (default: this package), or ``"unknown"``."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def run_tags(config: ExperimentConfig, *, scan_backend: str, device: str, commit: str | None = None) -> dict[str, str]:
    """The tags DESIGN §8 puts on every run: model, variant, dataset, profile, seed, commit, scan backend, device."""
    commit = commit or git_commit()
    return {
        "model": config.model.name,
        "name": config.name,
        "variant": config.variant,
        "dataset": config.data.task,
        "profile": config.profile,
        "seed": str(config.train.seed),
        "git_commit": commit,
        "mlflow.source.git.commit": commit,  # shown by the MLflow UI
        "scan_backend": scan_backend,
        "device": device,
        CONFIG_HASH_TAG: config.config_hash(),
    }


def ui_command(uri: str | None = None, port: int = 5000, host: str = "127.0.0.1") -> list[str]:
    """argv that starts the MLflow UI on the store (``mlflow ui`` is an alias of ``mlflow server``)."""
    uri = uri or default_tracking_uri()
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    root = artifact_root(uri)
    if root is not None:
        argv += ["--default-artifact-root", root.resolve().as_uri()]
    return argv


def log_to_finished_run(uri: str, config: ExperimentConfig, metrics: Mapping[str, float]) -> str | None:
    """Add ``metrics`` to the latest FINISHED run of ``config`` (found by its run key); its id, or None if none.

    For results computed after training (``avs-bench evaluate --audio-condition``): they join the training run's
    record instead of starting a run of their own. Logged at the run's last step, so they are its latest values.
    """
    from mlflow.entities import Metric

    client = _retry("open store", _client, uri)
    experiment = _retry("get experiment", client.get_experiment_by_name, experiment_name(config.profile))
    if experiment is None:
        return None
    key = run_name(config.data.task, config.name, config.train.seed)
    runs = _retry(
        "search runs",
        client.search_runs,
        [experiment.experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run_id = runs[0].info.run_id
    step = max((m.step for m in _retry("metric history", client.get_metric_history, run_id, "train/loss")), default=0)
    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for i in range(0, len(entries), MAX_METRICS_PER_BATCH):
        _retry("log metrics", client.log_batch, run_id, metrics=entries[i : i + MAX_METRICS_PER_BATCH])
    return run_id


def is_result_metric(name: str) -> bool:
    """True for a result (a score of ``test/``, ``val/``, ``best_val/``, a ``cost/`` figure, or a top-level value
    such as ``wall_time_s``); False for bookkeeping (``test/official/num_frames``, ``cost/repeats``, ...)."""
    section, _, rest = name.partition("/")
    leaf = name.rsplit("/", 1)[-1]
    if not rest:
        return True
    if section in ("test", "val", "best_val"):
        return leaf in SCORE_KEYS
    if section == "cost":
        return leaf.startswith(COST_METRIC_PREFIXES)
    return True


def relocate_artifacts(uri: str) -> int:
    """Point the experiments and runs of a SQLite store at the ``mlartifacts/`` beside it (after the store was
    copied or moved). Returns the number of rows changed; 0 for other stores or when nothing moved."""
    import sqlite3

    db, root = _sqlite_path(uri), artifact_root(uri)
    if db is None or root is None or not db.is_file():
        return 0
    here = root.resolve().as_uri()
    changed = 0
    with sqlite3.connect(db, timeout=20) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "experiments" not in tables:
            return 0
        for location, name in conn.execute("SELECT artifact_location, name FROM experiments").fetchall():
            new = f"{here}/{name}"
            if not location or location == new or not location.rstrip("/").endswith(f"/mlartifacts/{name}"):
                continue  # already here, or not one of this store's own locations
            old = location.rstrip("/")
            cur = conn.execute(
                "UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?", (new, location)
            )
            changed += cur.rowcount
            cur = conn.execute(
                "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE substr(artifact_uri, 1, ?) = ?",
                (new, len(old) + 1, len(old) + 1, old + "/"),
            )
            changed += cur.rowcount
    return changed


def runs_url(experiment_id: str, port: int = 5000, host: str = "127.0.0.1") -> str:
    """The UI address that opens an experiment on its runs table with the suite's columns (see ``VIEW_KEY``)."""
    return (
        f"http://{host}:{port}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    )


def _param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dicts become ``a/b`` keys; values must be numbers (bools count as 0/1)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flat_metrics(value, name))
            continue
        try:
            flat[name] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"metric {name!r} must be a number, got {value!r} ({type(value).__name__})") from None
    return flat


def _variant_parent(client: MlflowClient, experiment_id: str, key: str, name: str, tags: Mapping[str, str]) -> str:
    """The one active run with run key ``key``, created when there is none. Report jobs running at once may each
    create one; every caller then keeps the earliest (start time, then id) and deletes the others, so they agree."""
    query = f"tags.`{RUN_KEY_TAG}` = '{key}'"
    found = _retry("search parent", client.search_runs, [experiment_id], filter_string=query, max_results=100)
    if not found:
        all_tags = {**tags, RUN_KEY_TAG: key}
        _retry("create parent", client.create_run, experiment_id, run_name=name, tags=all_tags)
        found = _retry("search parent", client.search_runs, [experiment_id], filter_string=query, max_results=100)
    keep, *extra = sorted(found, key=lambda r: (r.info.start_time, r.info.run_id))
    for run in extra:
        _retry("delete duplicate parent", client.delete_run, run.info.run_id)
    return keep.info.run_id


def log_report(
    uri: str | None,
    runs: Iterable[Mapping[str, Any]],
    files: Iterable[str | Path] = (),
    *,
    report: str,
    profile: str,
) -> dict[str, str]:
    """Log a report to MLflow: a parent run per (dataset, variant) of ``runs``, and a report run with ``files``.

    Each parent, ``{dataset}/{name}`` (tags ``avs.kind=variant``, ``variant``, ``model``, ``dataset``, ``profile``,
    ``num_seeds``), has the seed runs nested under it (MLflow's ``mlflow.parentRunId`` tag on each) and carries, per
    protocol and score, the mean over seeds (``test/official/miou``) and its two-sided 95 % Student-t interval
    (``test/official/miou_ci95_lo`` / ``_hi``, with two seeds or more; :func:`avs_mamba.report.stats.mean_ci`).
    The report run ``report/{report}`` (tag ``avs.kind=report``) holds ``files``: ``.png`` under ``figures/``, the rest
    under ``tables/``; it replaces the previous report run of that name.

    Args:
        runs: one mapping per training run with ``task``, ``name``, ``variant``, ``model``, ``profile``, ``seed`` and
            ``test`` (protocol -> metrics), as :func:`avs_mamba.report.load_runs` gives them.
        report: the report's name (e.g. ``ablation``); profile: the experiment's profile.

    Returns:
        Run name -> run id of every parent and of the report run.
    """
    from mlflow.entities import Metric, RunTag

    from avs_mamba.report.stats import mean_ci

    uri = uri or default_tracking_uri()
    client = _retry("open store", _client, uri)
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((str(run["profile"]), str(run["task"]), str(run["name"])), []).append(run)
    ids: dict[str, str] = {}
    for (run_profile, task, name), members in sorted(groups.items()):
        experiment_id = _get_or_create_experiment(client, experiment_name(run_profile), uri)
        first = members[0]
        seeds = sorted(int(m["seed"]) for m in members)
        tags = {
            KIND_TAG: "variant",
            "variant": str(first["variant"]),
            "model": str(first["model"]),
            "name": name,
            "dataset": task,
            "profile": run_profile,
            "num_seeds": str(len(seeds)),
            "seeds": ",".join(map(str, seeds)),
        }
        parent = _variant_parent(client, experiment_id, f"variant:{task}/{name}", f"{task}/{name}", tags)
        values: dict[str, list[float]] = {}
        for member in members:
            for protocol, metrics in (member["test"] or {}).items():
                for score in SCORE_KEYS:
                    if isinstance(metrics.get(score), int | float) and math.isfinite(metrics[score]):
                        values.setdefault(f"test/{protocol}/{score}", []).append(float(metrics[score]))
        summary: dict[str, float] = {}
        for metric, sample in values.items():
            interval = mean_ci(sample)
            summary[metric] = interval.mean
            if interval.n >= 2:
                summary |= {f"{metric}_ci95_lo": interval.lo, f"{metric}_ci95_hi": interval.hi}
        now = int(time.time() * 1000)
        _retry(
            "log parent",
            client.log_batch,
            parent,
            metrics=[Metric(k, v, now, 0) for k, v in summary.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        query = f"tags.`{RUN_KEY_TAG}` LIKE '{task}/{name}/seed%'"
        children = _retry(
            "search seed runs", client.search_runs, [experiment_id], filter_string=query, max_results=1000
        )
        for child in children:
            if child.data.tags.get(PARENT_TAG) != parent:
                _retry("nest seed run", client.set_tag, child.info.run_id, PARENT_TAG, parent)
        _retry("end parent", client.set_terminated, parent, "FINISHED")
        ids[f"{task}/{name}"] = parent
    paths = [Path(f) for f in files]
    if paths:
        with RunLogger(uri).start(
            f"report/{report}", experiment_name(profile), tags={KIND_TAG: "report"}, run_key=f"report/{report}"
        ) as logger:
            figures = [f for f in paths if f.suffix == ".png"]
            tables = [f for f in paths if f.suffix != ".png"]
            if tables:
                logger.log_artifacts(tables, "tables")
            if figures:
                logger.log_artifacts(figures, "figures")
            assert logger.run_id is not None
            ids[f"report/{report}"] = logger.run_id
    return ids


class RunLogger:
    """Logs one job to MLflow: params, tags, per-epoch curves, final metrics, artifacts and the end status.

    Use as a context manager; the run ends FINISHED on a clean exit, FAILED on an exception (KILLED on Ctrl-C)::

        with RunLogger(uri).start_config(config, scan_backend="cpu", device="cpu") as run:
            run.log_epoch(0, {"train/loss": 0.7})
            run.log_final({"test/miou": 0.81})
    """

    def __init__(self, tracking_uri: str | None = None, *, attempts: int = 8) -> None:
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.attempts = attempts
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: MlflowClient | None = None
        self._run_key = ""
        self._start_time = 0
        self._last_step = 0
        self._ended = False

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = _client(self.tracking_uri)
        return self._client

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return _retry(what, fn, *args, attempts=self.attempts, **kwargs)

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("RunLogger: call start() before logging")
        if self._ended:
            raise RuntimeError(f"RunLogger: run {self.run_id} has already ended")
        return self.run_id

    def start(
        self,
        run_name: str,
        experiment: str,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        run_key: str | None = None,
    ) -> RunLogger:
        """Create the run in ``experiment`` (created if needed) and log ``params``; ``run_key`` defaults to the name."""
        if self.run_id is not None:
            raise RuntimeError(f"RunLogger: run {self.run_id} already started")
        key = run_key or run_name
        if "'" in key or '"' in key:
            raise ValueError(f"run key {key!r} may not contain quotes")
        self.experiment_id = _get_or_create_experiment(self.client, experiment, self.tracking_uri)
        all_tags = {k: str(v) for k, v in (tags or {}).items()} | {RUN_KEY_TAG: key}
        run = self._call("create run", self.client.create_run, self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id, self._run_key, self._start_time = run.info.run_id, key, run.info.start_time
        self._close_stale_attempts()
        if params:
            self.log_params(params)
        return self

    def start_config(
        self,
        config: ExperimentConfig,
        *,
        scan_backend: str,
        device: str,
        commit: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> RunLogger:
        """Start the run of ``config``: standard name, experiment and tags, flattened config and its recipe card
        (``recipe.<key>``: source or deviation) as params, the config as YAML; ``data``
        (:func:`avs_mamba.data.provenance.data_provenance`) is logged as the run's dataset input."""
        from avs_mamba.recipe import card_params, recipe_card

        tags = run_tags(config, scan_backend=scan_backend, device=device, commit=commit) | {KIND_TAG: "run"}
        self.start(
            run_name(config.data.task, config.name, config.train.seed),
            experiment_name(config.profile),
            tags=tags,
            params={**config.flatten(), **card_params(recipe_card(config, strict=False))},
        )
        self._call("log config", self.client.log_text, self.run_id, config.to_yaml(), "config.yaml")
        if data is not None:
            self.log_dataset(data)
        return self

    def log_dataset(self, data: Mapping[str, Any], context: str = "train") -> None:
        """The dataset as an MLflow dataset input: name ``[synthetic ]AVSBench <TASK>``, the first 16 hex digits of
        its digest, its root as the source, and tags ``mlflow.data.context`` and ``source`` (synthetic/AVSBench)."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag

        run_id = self._require_run()
        prefix = "synthetic " if data["source"] == "synthetic" else ""
        dataset = MetaDataset(
            LocalArtifactDatasetSource(str(data["root"])),
            name=f"{prefix}AVSBench {str(data['task']).upper()}",
            digest=str(data["digest"])[:16],
        )
        tags = [InputTag("mlflow.data.context", context), InputTag("source", str(data["source"]))]
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=tags)
        self._call("log dataset", self.client.log_inputs, run_id, datasets=[entry])
        self.set_tags({"data.digest": data["digest"], "data.source": data["source"]})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params in batches of 100; values over 6000 characters are truncated, and then kept whole in the
        ``params_full.json`` artifact and listed in the ``avs.truncated_params`` tag."""
        from mlflow.entities import Param, RunTag

        run_id = self._require_run()
        values = {str(k): _param_value(v) for k, v in params.items()}
        long = {k: v for k, v in values.items() if len(v) > MAX_PARAM_VALUE_LENGTH}
        keep = MAX_PARAM_VALUE_LENGTH - len(_TRUNCATION_MARK)
        entries = [Param(k, v[:keep] + _TRUNCATION_MARK if k in long else v) for k, v in values.items()]
        for i in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self._call("log params", self.client.log_batch, run_id, params=entries[i : i + MAX_PARAMS_PER_BATCH])
        if long:
            self._call("log long params", self.client.log_dict, run_id, long, "params_full.json")
            listed = ",".join(sorted(long))[:MAX_TAG_VALUE_LENGTH]
            self._call("tag truncation", self.client.log_batch, run_id, tags=[RunTag(TRUNCATED_TAG, listed)])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        run_id = self._require_run()
        entries = [RunTag(str(k), str(v)) for k, v in tags.items()]
        for i in range(0, len(entries), MAX_PARAMS_PER_BATCH):
            self._call("set tags", self.client.log_batch, run_id, tags=entries[i : i + MAX_PARAMS_PER_BATCH])

    def _log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        run_id = self._require_run()
        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, step) for k, v in _flat_metrics(metrics).items()]
        for i in range(0, len(entries), MAX_METRICS_PER_BATCH):
            self._call("log metrics", self.client.log_batch, run_id, metrics=entries[i : i + MAX_METRICS_PER_BATCH])

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """One point per metric of the per-epoch curves (step = epoch); nested dicts give ``a/b`` keys."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._log_metrics(metrics, step=epoch)
        self._last_step = max(self._last_step, epoch)

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        """Final results (test scores, cost figures) as metrics at the last epoch's step, so they are the latest
        values; bookkeeping values (:func:`is_result_metric` False: counts, batch sizes, repeats) as tags."""
        flat = _flat_metrics(metrics)
        self._log_metrics({k: v for k, v in flat.items() if is_result_metric(k)}, step=self._last_step)
        bookkeeping = {k: (int(v) if float(v).is_integer() else v) for k, v in flat.items() if not is_result_metric(k)}
        if bookkeeping:
            self.set_tags(bookkeeping)

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        """Copy files (and whole folders, under their own name) into the run's artifacts."""
        run_id = self._require_run()
        for path in map(Path, paths):
            if path.is_dir():
                sub = f"{artifact_path}/{path.name}" if artifact_path else path.name
                self._call("log artifacts", self.client.log_artifacts, run_id, str(path), sub)
            elif path.is_file():
                self._call("log artifact", self.client.log_artifact, run_id, str(path), artifact_path)
            else:
                raise FileNotFoundError(f"artifact {path} does not exist")

    def end(self, status: str = "FINISHED") -> None:
        """Terminate the run; on FINISHED, delete the older runs with the same run key (the replaced results)."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
        run_id = self._require_run()
        self._call("end run", self.client.set_terminated, run_id, status)
        self._ended = True
        if status == "FINISHED":
            for old in self._superseded():
                self._call("delete replaced run", self.client.delete_run, old)

    def _superseded(self) -> list[str]:
        """Runs with this run key that started no later than this one (a later duplicate is left alone)."""
        runs = _runs_with_key(self.client, str(self.experiment_id), self._run_key)
        return [r.info.run_id for r in runs if r.info.run_id != self.run_id and r.info.start_time <= self._start_time]

    def _close_stale_attempts(self) -> None:
        """Earlier attempts of this run key still RUNNING were killed (a live process would not be rerun): end them
        KILLED and point them at this run, so the UI shows no phantom running job."""
        from mlflow.entities import RunTag

        for old in _runs_with_key(self.client, str(self.experiment_id), self._run_key, "RUNNING"):
            if old.info.run_id != self.run_id and old.info.start_time <= self._start_time:
                tag = [RunTag(REPLACED_BY_TAG, str(self.run_id))]
                self._call("tag replaced run", self.client.log_batch, old.info.run_id, tags=tag)
                self._call("end replaced run", self.client.set_terminated, old.info.run_id, "KILLED")

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self.run_id is None or self._ended:
            return
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
