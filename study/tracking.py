"""The study's runs in an MLflow tracker (``--mlflow URI``, ``[tracking] mlflow``; docs/tracking.md).

Every training run is one MLflow run, nested under one parent run per study (and, in a study of
several datasets, under one parent per dataset, nested under the study's). A run logs its cell
and every resolved training setting as params, each epoch's metrics with the epoch as the step,
and its test accuracy, loss and macro-F1; a tuning trial is a run of its own, tagged as a trial.
The parent gets the report folder and ``results.csv`` as artifacts once the report is written.

What this module promises the study: tracking never costs a run. Every call to MLflow goes
through one background thread per process (training never waits for the tracker, which may be a
slow or distant server), and the first failure is one warning, after which this process tracks
nothing more and the study goes on. A worker process has its own client; the parent run is found
by a tag holding the study's key (its name and creation time in the store), created under the
store's named lock by whichever process comes first, so any number of ``study run`` and
``study worker`` processes nest their runs under the same parent.
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.masking import mask_urls, masked_url
from study.tracking_uri import client_uri, split_uri

FLUSH_SECONDS = 60.0  # the longest a run's end waits for its records to reach the tracker
# Tags (names under "study." so that they sort together in MLflow's UI).
KIND, KEY, NAME, STATUS = "study.kind", "study.key", "study.name", "study.status"
WORKER, RUN_ID = "study.worker", "study.run_id"
STUDY, RUN, TRIAL = "study", "run", "trial"  # values of KIND: a parent, a training run, a tuning trial
PARENT_TAG, RUN_NAME_TAG = "mlflow.parentRunId", "mlflow.runName"
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_seen")


# -- the study a run belongs to ----------------------------------------------------------------


@dataclass(frozen=True)
class StudyInfo:
    """What the tracker needs to know of a study: how to name, find and tag its parent run."""

    name: str  # the study in the store ("<study>/<dataset>" in a study of several datasets)
    key: str  # its parent's tag: the same for every process of this study, different for any other
    experiment: str  # the MLflow experiment: the top study's name
    tags: dict[str, str]  # every run of the study carries them (the store URL masked)
    group: StudyInfo | None = None  # a study of several datasets: the parent above this one
    lock: Callable[[str], AbstractContextManager] = field(default=lambda name: nullcontext(), compare=False)


def study_info(cfg, store, name: str | None = None) -> StudyInfo:
    """The tracker's view of study ``name`` (default ``cfg.name``) in ``store``."""
    from study.store.schema import control_name, is_control

    name = name or cfg.name
    row = store.study(name)
    url = store.url
    experiment = cfg.group or (name[: -len(control_name(""))] if is_control(name) else name)
    group = None
    if cfg.group:  # the parent of all datasets: keyed by the first dataset's study, as every process finds it
        first = next((n for n in store.study_names() if n.startswith(cfg.group + "/")), name)
        group = _info(cfg.group, _key(cfg.group, store.study(first).created_at), experiment, url, "", None, store)
    return _info(name, _key(name, row.created_at), experiment, url, row.fingerprint, group, store)


def _key(name: str, created) -> str:
    return hashlib.sha256(f"{name}|{created.isoformat() if created else ''}".encode()).hexdigest()[:16]


def study_tags(name: str, url: str, fingerprint: str) -> dict[str, str]:
    """The tags every run of a study carries: its name, its store's URL (password masked) and
    its settings' fingerprint."""
    return {NAME: name, "study.store": masked_url(url), "study.fingerprint": fingerprint}


def _info(name, key, experiment, url, fingerprint, group, store) -> StudyInfo:
    from study.store import NamedLock

    tags = study_tags(name, url, fingerprint)
    return StudyInfo(name, key, experiment, tags, group, lock=lambda lock: NamedLock(store.engine, lock))


# -- the tracker of one process ------------------------------------------------------------------


class Tracker:
    """One process's MLflow client and the thread that makes every call to it, in order."""

    def __init__(self, uri: str):
        self.uri, self.shown = uri, masked_url(uri)
        self.failed = False
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._client = None
        self._parents: dict[str, str] = {}  # study key -> parent run id
        self._experiments: dict[str, str] = {}

    # The thread --------------------------------------------------------------------------
    def submit(self, op: Callable[[Any], None]) -> None:
        """Call ``op(client)`` on the tracker's thread, after every call submitted before it."""
        if self.failed:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="mlflow-tracking", daemon=True)
                self._thread.start()
        self._queue.put(op)

    def flush(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Wait until every call submitted so far is made; a tracker that takes longer than
        ``timeout`` counts as failed. Returns whether the tracker still works."""
        if self.failed or self._thread is None:
            return not self.failed
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(timeout):
            self.fail(TimeoutError(f"no answer within {timeout:g} s"))
        return not self.failed

    def _work(self) -> None:
        while True:
            op = self._queue.get()
            if isinstance(op, threading.Event):  # a flush: everything before it is made
                op.set()
            elif not self.failed:  # a failed tracker drops what is left
                try:
                    op(self._connect())
                except Exception as exc:  # whatever MLflow or the network raise: one warning, no more tracking
                    self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """Stop tracking in this process, with one warning; the study goes on."""
        if self.failed:
            return
        self.failed = True
        reason = mask_urls(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
        print(
            f"warning: MLflow tracking at {self.shown} failed ({reason}); this process records no more runs there, "
            "the study goes on",
            file=sys.stderr,
            flush=True,
        )

    def _connect(self):
        if self._client is None:
            import logging
            import warnings

            scheme, _ = split_uri(self.uri)
            if scheme in ("", "file"):  # MLflow 3 asks for this opt-in; the user gave a folder
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            # A server that is down fails within seconds, not after MLflow's minutes of retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from mlflow.tracking import MlflowClient

                # After the import, which sets MLflow's own levels: its INFO lines would break the progress bars.
                logging.getLogger("mlflow").setLevel(logging.WARNING)
                logging.getLogger("alembic").setLevel(logging.WARNING)
                self._client = MlflowClient(tracking_uri=client_uri(self.uri))
        return self._client

    # Studies -------------------------------------------------------------------------------
    def parent(self, client, study: StudyInfo) -> str:
        """The id of ``study``'s parent run (made if no process has made it), running."""
        if study.key in self._parents:
            return self._parents[study.key]
        above = self.parent(client, study.group) if study.group is not None else None
        with study.lock(f"mlflow-parent:{study.key}"):
            experiment = self._experiment(client, study.experiment)
            found = client.search_runs([experiment], f"tags.`{KEY}` = '{study.key}' and tags.`{KIND}` = '{STUDY}'")
            if found:
                run_id = found[0].info.run_id
                if found[0].info.status != "RUNNING":
                    client.update_run(run_id, status="RUNNING")
            else:
                tags = {**study.tags, KIND: STUDY, KEY: study.key, RUN_NAME_TAG: study.name}
                if above is not None:
                    tags[PARENT_TAG] = above
                run_id = client.create_run(experiment, tags=tags, run_name=study.name).info.run_id
        self._parents[study.key] = run_id
        return run_id

    def _experiment(self, client, name: str) -> str:
        if name not in self._experiments:
            found = client.get_experiment_by_name(name)
            self._experiments[name] = found.experiment_id if found else client.create_experiment(name, self._artifacts)
        return self._experiments[name]

    @property
    def _artifacts(self) -> str | None:
        """Where a new experiment keeps artifacts: beside a SQLite tracker's file (MLflow's default
        is ./mlruns of whatever folder a process started in); the store's or server's own choice else."""
        scheme, path = split_uri(self.uri)
        return (Path(path).expanduser().absolute().parent / "mlartifacts").as_uri() if scheme == "sqlite" else None

    def open_study(self, study: StudyInfo, params: dict[str, Any]) -> None:
        """Make (or find and reopen) the study's parent run, with the study's params."""

        def op(client) -> None:
            from mlflow.entities import Param

            run_id = self.parent(client, study)
            run = client.get_run(run_id)
            if run.info.status != "RUNNING":  # ended by an earlier command of this process: open again
                client.update_run(run_id, status="RUNNING")
            logged = run.data.params
            new = [Param(k, _text(v)) for k, v in params.items() if k not in logged]
            if new:
                client.log_batch(run_id, params=new)

        self.submit(op)

    def finish_study(self, study: StudyInfo, artifacts: list[tuple[Path, str]], status: str = "FINISHED") -> None:
        """End the study's parent run with ``status``, after logging ``artifacts`` (local file or
        folder, artifact folder) to it."""

        def op(client) -> None:
            run_id = self.parent(client, study)
            for path, where in artifacts:
                if path.is_dir():
                    client.log_artifacts(run_id, str(path), where)
                elif path.is_file():
                    client.log_artifact(run_id, str(path), where or None)
            client.set_terminated(run_id, status)

        self.submit(op)

    def end_companions(self, study: StudyInfo) -> None:
        """End the parents still running of the studies that belong to ``study``: its datasets'
        and their budget controls' (``<study>/<dataset>``, ``<study>+budget-x2``)."""

        def op(client) -> None:
            experiment = self._experiment(client, study.experiment)
            for run in client.search_runs([experiment], f"tags.`{KIND}` = '{STUDY}' and attributes.status = 'RUNNING'"):
                name = run.data.tags.get(NAME, "")
                if name.startswith((study.name + "/", study.name + "+")):
                    client.set_terminated(run.info.run_id, "FINISHED")

        self.submit(op)

    def end_abandoned(self, study: StudyInfo, abandoned: Callable[[str], bool], status: str = "KILLED") -> None:
        """End every run of the study still RUNNING whose worker ``abandoned(worker)`` names
        (a stopped command's own and its pool's dead processes'), as ``status``."""

        def op(client) -> None:
            parent = self.parent(client, study)
            experiment = self._experiment(client, study.experiment)
            for run in client.search_runs(
                [experiment], f"tags.`{KEY}` = '{study.key}' and attributes.status = 'RUNNING'"
            ):
                if run.info.run_id != parent and abandoned(run.data.tags.get(WORKER, "")):
                    client.set_tag(run.info.run_id, STATUS, "handed back")
                    client.set_terminated(run.info.run_id, status)

        self.submit(op)

    # Runs ------------------------------------------------------------------------------------
    def start_run(
        self, study: StudyInfo, kind: str, name: str, params: dict[str, Any], tags: dict[str, str]
    ) -> TrackedRun:
        """A run of ``kind`` (run or trial) under the study's parent, started at once."""
        tracked = TrackedRun(self)
        start = int(time.time() * 1000)
        tags = {**study.tags, **tags, KIND: kind, KEY: study.key, RUN_NAME_TAG: name, STATUS: "running"}

        def op(client) -> None:
            from mlflow.entities import Param

            parent = self.parent(client, study)
            experiment = self._experiment(client, study.experiment)
            run_id = tags.get(RUN_ID)
            if run_id:  # an earlier attempt at the same run, by a worker that died: not left running
                for run in client.search_runs(
                    [experiment],
                    f"tags.`{KEY}` = '{study.key}' and tags.`{RUN_ID}` = '{run_id}' and attributes.status = 'RUNNING'",
                ):
                    client.set_tag(run.info.run_id, STATUS, "taken over")
                    client.set_terminated(run.info.run_id, "KILLED")
            run = client.create_run(experiment, start_time=start, tags={**tags, PARENT_TAG: parent}, run_name=name)
            tracked.run_id = run.info.run_id
            client.log_batch(tracked.run_id, params=[Param(k, _text(v)) for k, v in params.items()])

        self.submit(op)
        return tracked


def _text(value: Any) -> str:
    """A param's value as MLflow keeps it (at most 6,000 characters), any URL's password masked."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return mask_urls(text)[:6000]


class TrackedRun:
    """One MLflow run as the training code sees it: epochs and an end. Its calls are queued on
    the tracker's thread; ``run_id`` is set there once the run exists."""

    def __init__(self, tracker: Tracker | None):
        self.tracker = tracker
        self.run_id: str | None = None
        self.ended = False

    def epoch(self, stats) -> None:
        """Log one epoch's metrics (an ``EpochStats``) with the epoch as the step."""
        if self.tracker is None:
            return
        values = {k: float(getattr(stats, k)) for k in EPOCH_METRICS if hasattr(stats, k)}
        step, at = int(stats.epoch), int(time.time() * 1000)
        self._log(lambda: {"metrics": [(k, v, at, step) for k, v in values.items()]})

    def end(
        self, status: str, outcome: str, metrics: dict[str, float] | None = None, error: str = "", stop: str = ""
    ) -> None:
        """End the run: MLflow ``status`` (FINISHED, FAILED, KILLED), the study's ``outcome``
        (done, failed, pruned, lost, stopped) as a tag, its final metrics, its error and why its
        training stopped."""
        if self.tracker is None or self.ended:
            return
        self.ended = True
        at = int(time.time() * 1000)
        tags = {STATUS: outcome, **({"study.error": mask_urls(error)[:5000]} if error else {})}
        if stop:  # why training stopped: plateau, capped, epochs, patience
            tags["study.stop"] = stop
        final = {k: float(v) for k, v in (metrics or {}).items() if v is not None}
        self._log(lambda: {"metrics": [(k, v, at, 0) for k, v in final.items()], "tags": tags})

        def op(client) -> None:
            if self.run_id is not None:
                client.set_terminated(self.run_id, status, end_time=at)

        self.tracker.submit(op)

    def close(self) -> None:
        """Wait until the run's records have reached the tracker (``FLUSH_SECONDS`` at most)."""
        if self.tracker is not None:
            self.tracker.flush()

    def _log(self, what: Callable[[], dict]) -> None:
        def op(client) -> None:
            from mlflow.entities import Metric, RunTag

            if self.run_id is None:
                return
            batch = what()
            client.log_batch(
                self.run_id,
                metrics=[Metric(k, v, at, step) for k, v, at, step in batch.get("metrics", [])],
                tags=[RunTag(k, v) for k, v in batch.get("tags", {}).items()],
            )

        self.tracker.submit(op)


NO_RUN = TrackedRun(None)  # what the training code gets when the study is not tracked


# -- the process's tracker, and the study's hooks ----------------------------------------------------

_TRACKERS: dict[str, Tracker] = {}
_INFOS: dict[tuple[str, str], StudyInfo] = {}
_LOCK = threading.Lock()


def tracker_for(cfg) -> Tracker | None:
    """This process's tracker for ``cfg``'s ``[tracking] mlflow`` URI, or None when it has none
    or when it has failed."""
    uri = cfg.tracking.mlflow
    if not uri:
        return None
    with _LOCK:
        tracker = _TRACKERS.setdefault(uri, Tracker(uri))
    return None if tracker.failed else tracker


def _study(cfg, store) -> StudyInfo:
    with _LOCK:
        key = (store.url, cfg.name)
        if key not in _INFOS:
            _INFOS[key] = study_info(cfg, store)
        return _INFOS[key]


def study_params(cfg) -> dict[str, Any]:
    """What a study's parent shows of it: its arms, sizes, seeds and dataset."""
    return {
        "dataset": cfg.data.dataset,
        "arms": [f"{a.name}={a.model}" for a in cfg.study_arms],
        "sizes": [f"{kind}={value:g}" for kind, value in cfg.sizes],
        "seeds": cfg.seeds,
    }


def open_study(cfg, store) -> None:
    """Make the study's parent run (and the parent above it, for a dataset of several) before
    its work starts, so that every worker finds it."""
    tracker = tracker_for(cfg)
    if tracker is not None:
        tracker.open_study(_study(cfg, store), study_params(cfg))


def finish_study(cfg, store, out: Path | None) -> None:
    """End the parents of a study that has nothing left to do; with ``out`` (``study run``, its
    outputs written) the report folder and ``results.csv`` become artifacts of the top parent,
    and each dataset's own report of its parent."""
    tracker = tracker_for(cfg)
    if tracker is None:
        return
    members = cfg.dataset_studies()
    for member in members:
        report = [(out / "datasets" / member.name[len(cfg.name) + 1 :] / "report", "report")] if out else []
        tracker.finish_study(_study(member, store), report)
    top = _study(members[0], store).group if members else _study(cfg, store)
    tracker.finish_study(top, [(out / "report", "report"), (out / "results.csv", "")] if out else [])
    if out is not None:  # `study run` ends its budget controls' parents too
        tracker.end_companions(top)
    tracker.flush()


def hand_back(cfg, store) -> None:
    """A stopped command's runs and trials, and its studies' parents, ended as KILLED (their
    work went back to the store): no run is left RUNNING in the tracker by a stop."""
    from study.store import dead_here, worker_id

    tracker = tracker_for(cfg)
    if tracker is None:
        return
    me = worker_id()
    info = _study(cfg, store)
    tracker.end_abandoned(info, lambda worker: worker.split(":t")[0] == me or dead_here(worker))
    for parent in (info, info.group):
        if parent is not None:
            tracker.finish_study(parent, [], "KILLED")
    tracker.flush(timeout=10)


def start_run(cfg, store, cell, run_id: int, n_train: int, hp, source: str) -> TrackedRun:
    """A claimed training run as an MLflow run (``NO_RUN`` when the study is not tracked): its
    cell and every resolved training setting as params, the tuned ones marked."""
    tracker = tracker_for(cfg)
    if tracker is None:
        return NO_RUN
    from study.store import worker_id

    tuned = list(cfg.tune.searched) if source.startswith("tuned:") else []
    params = {
        "arm": cell.arm_name,
        "model": cell.model,
        "dataset": cfg.data.dataset,
        "size_kind": cell.size_kind,
        "size_value": cell.size_value,
        "n_train": n_train,
        "seed": cell.seed,
        **train_params(hp),
        "hparams_source": source,
        "tuned": tuned or "none",
    }
    tags = {RUN_ID: str(run_id), "study.cell": cell.key, "study.tuned": ",".join(tuned), WORKER: worker_id()}
    return tracker.start_run(_study(cfg, store), RUN, cell.key, params, tags)


def start_trial(cfg, store, optuna_study: str, trial_number: int, hp, searched: dict[str, Any]) -> TrackedRun:
    """A tuning trial as an MLflow run of its own, tagged as a trial (``NO_RUN`` when not tracked)."""
    tracker = tracker_for(cfg)
    if tracker is None:
        return NO_RUN
    from study.store import worker_id

    name = f"{optuna_study}#{trial_number}"
    params = {**train_params(hp), "tuned": list(searched) or "none", "optuna_study": optuna_study}
    tags = {"study.trial": str(trial_number), "study.optuna_study": optuna_study, WORKER: worker_id()}
    return tracker.start_run(_study(cfg, store), TRIAL, name, params, tags)


def final_metrics(result) -> dict[str, float]:
    """A finished run's metrics (a ``RunResult``): test accuracy, loss and macro-F1, and more."""
    keys = ("test_acc", "test_loss", "test_f1", "best_epoch", "epochs_run", "steps", "train_seconds")
    found = {k: getattr(result, k) for k in keys if isinstance(getattr(result, k, None), (int, float))}
    return {
        **found,
        "best_val_acc": result.val_acc,
        "images_per_second": result.images_per_second,
        "peak_memory_mb": result.peak_memory_mb,
    }


def train_params(hp) -> dict[str, Any]:
    """Every resolved training setting of a run, as params named ``train.<key>``."""
    import dataclasses

    return {f"train.{k}": v for k, v in dataclasses.asdict(hp).items()}
