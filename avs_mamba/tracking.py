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
* SQLite allows one writer at a time. MLflow waits up to 20 s on a locked database (``busy_timeout``); on top of that
  every write here is retried with bounded exponential backoff when the database is still locked, so a few jobs
  logging at once lose nothing. Writes are batched (``log_batch``) to keep transactions few.

mlflow is imported lazily, so importing this module stays cheap for the command line.
"""

from __future__ import annotations

import errno
import json
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
_TRUNCATION_MARK = "...[truncated; full value in params_full.json]"

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
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException as err:
            if getattr(err, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = _retry("get experiment", client.get_experiment_by_name, name)  # another job created it
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        _retry("restore experiment", client.restore_experiment, experiment.experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        _retry(
            "tag experiment", client.set_experiment_tag, experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )
    return experiment.experiment_id


def init_store(uri: str | None = None, experiments: Iterable[str] | None = None) -> dict[str, str]:
    """Create the store's schema and the experiments (default: one per profile). Safe to call again.

    Returns:
        Experiment name -> experiment id.
    """
    uri = uri or default_tracking_uri()
    client = _client(uri)  # creates or migrates a SQLite store's schema under its file lock
    names = [experiment_name(p) for p in PROFILES] if experiments is None else list(experiments)
    return {name: _get_or_create_experiment(client, name, uri) for name in names}


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
        self, config: ExperimentConfig, *, scan_backend: str, device: str, commit: str | None = None
    ) -> RunLogger:
        """Start the run of ``config``: standard name, experiment and tags, flattened config and its recipe card
        (``recipe.<key>``: source or deviation) as params, the config as YAML."""
        from avs_mamba.recipe import card_params, recipe_card

        self.start(
            run_name(config.data.task, config.name, config.train.seed),
            experiment_name(config.profile),
            tags=run_tags(config, scan_backend=scan_backend, device=device, commit=commit),
            params={**config.flatten(), **card_params(recipe_card(config, strict=False))},
        )
        self._call("log config", self.client.log_text, self.run_id, config.to_yaml(), "config.yaml")
        return self

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
        """Final metrics (test scores, cost figures), logged at the last epoch's step so they are the latest values."""
        self._log_metrics(metrics, step=self._last_step)

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
