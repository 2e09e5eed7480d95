"""Run a study's cells: each worker claims the next pending tuning job or run from the store,
does it and records the result, until none is left; a run waits until its cell is tuned.
Workers are joblib processes (loky) locally; because the store does the bookkeeping, any number
of ``study run`` processes on any number of machines can feed the same study.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from study.config import StudyConfig, to_dict
from study.store import Cell, RunRow, worker_id

HEARTBEAT_SECONDS = 20.0
STALE_AFTER_SECONDS = 180.0  # a run whose worker has been silent this long is taken over
TUNING_POLL_SECONDS = 1.0  # how often a worker whose runs wait for another's tuning looks again


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_workers(jobs: int, device: str, pending: int) -> tuple[int, int]:
    """(worker processes, torch threads per worker), never oversubscribing the cores.

    On a GPU one worker owns the device. On CPU, small models train faster as several
    single-thread processes than as one multi-thread process, so ``jobs=0`` uses one worker per
    core (as many as there are runs).
    """
    cores = available_cores()
    if device == "cuda":
        workers = jobs or 1
    else:
        workers = jobs or cores
    workers = max(1, min(workers, max(1, pending)))
    return workers, max(1, cores // workers)


class Heartbeat:
    """Refreshes a run's (or tuning job's) claim from a background thread while it works."""

    def __init__(self, store, run_id: int, worker: str, interval: float = HEARTBEAT_SECONDS, table: type = RunRow):
        self._store, self._run_id, self._worker, self._interval, self._table = store, run_id, worker, interval, table
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._store.heartbeat(self._run_id, self._worker, table=self._table)
            except Exception:  # a missed beat is retried; the grace period covers several
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _WorkerState:
    ctx: Any
    data: Any
    device: Any
    speed: Any  # study.speed.Speed: layout and compilation, for every run of this worker


_STATE: dict[str, _WorkerState] = {}


def _worker_state(cfg: StudyConfig) -> _WorkerState:
    """The dataset on the training device, loaded once per worker process and reused."""
    import json

    key = json.dumps(to_dict(cfg), sort_keys=True)
    if key not in _STATE:
        from study.context import open_context
        from study.speed import Speed
        from study.train import TrainData, resolve_device

        ctx = open_context(cfg, register=False)
        ctx.study_id = ctx.store.study(cfg.name).id
        device = resolve_device(cfg.device)
        with warnings.catch_warnings():  # a read-only memmap is only ever read
            warnings.simplefilter("ignore", UserWarning)
            data = TrainData.from_arrays(ctx.dataset.images, ctx.dataset.labels, ctx.dataset.num_classes, device, ctx.dataset.hflip)
        _STATE.clear()
        _STATE[key] = _WorkerState(ctx, data, device, Speed.from_config(cfg))
    return _STATE[key]


def hparams_for(cfg: StudyConfig, run: RunRow) -> tuple[Any, str]:
    """The hyper-parameters a run uses and where they came from: the best trial of its cell's
    Optuna study when the study tunes, else the config's ``[train]``."""
    if cfg.tune.trials:
        from study.tune import tuned_hparams

        return tuned_hparams(cfg, run.model, run.size_kind, run.size_value)
    return cfg.train.resolved(run.model), "config"


def run_next(cfg: StudyConfig, threads: int, show_epochs: bool = False, epoch_queue=None) -> dict | None:
    """Claim one pending tuning job or run of the study, do it and record it. Returns a summary,
    or None when nothing was left to claim.

    Progress: ``show_epochs`` draws an epoch bar here (one worker in the main process);
    ``epoch_queue`` (a multiprocessing queue) sends each round to the main process instead.
    """
    import torch

    from study.context import environment
    from study.train import train_run

    torch.set_num_threads(threads)
    state = _worker_state(cfg)
    ctx, me = state.ctx, worker_id()
    while True:
        if cfg.tune.trials:
            from study.tune import tune_next

            tuned = tune_next(cfg, state, show_progress=show_epochs)
            if tuned is not None:
                return tuned
        run = ctx.store.claim(ctx.study_id, me)
        if run is not None or not ctx.store.waiting_on_tuning(ctx.study_id):
            break
        # Every claimable run waits for a cell another worker is tuning (or one whose worker died).
        ctx.store.release_stale(ctx.study_id, STALE_AFTER_SECONDS)
        time.sleep(TUNING_POLL_SECONDS)
    if run is None:
        return None
    cell = Cell(run.model, run.size_kind, run.size_value, run.seed)
    hp, source = hparams_for(cfg, run)
    summary = {"cell": cell.key, "status": "failed"}
    bar = tqdm(total=hp.epochs, desc=f"  {cell.key}", unit="epoch", leave=False, disable=not show_epochs)

    def on_epoch(stats) -> None:
        bar.update(1)
        bar.set_postfix(val_acc=f"{stats.val_acc:.3f}")
        if epoch_queue is not None:
            epoch_queue.put((cell.key, stats.epoch, stats.val_acc))

    try:
        with Heartbeat(ctx.store, run.id, me):
            result = train_run(
                state.data, ctx.train_indices(cell), ctx.splits.val, ctx.splits.test, cell.model, hp, cell.seed, state.device, on_epoch=on_epoch, speed=state.speed
            )
        fields = {
            "hparams": to_dict(hp),
            "hparams_source": source,
            "val_acc": result.val_acc,
            "test_acc": result.test_acc,
            "test_loss": result.test_loss,
            "test_f1": result.test_f1,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "train_seconds": result.train_seconds,
            "images_per_second": result.images_per_second,
            "n_params": result.n_params,
            "peak_memory_mb": result.peak_memory_mb,
            "device": result.device,
            "environment": environment(result.device),
        }
        epochs = [vars(e) for e in result.history]
        if ctx.store.finish(run.id, me, fields, epochs, result.predictions):
            summary.update(status="done", test_acc=result.test_acc)
        else:
            summary.update(status="lost")  # another worker took the run over meanwhile
    except Exception as exc:  # recorded, and the study goes on
        ctx.store.fail(run.id, me, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
        summary["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        bar.close()
    return summary


def execute(cfg: StudyConfig, study_id: int, store, progress: bool = True) -> dict[str, int]:
    """Run every pending cell of the study; return the final counts by status."""
    from joblib import Parallel, delayed

    store.release_stale(study_id, STALE_AFTER_SECONDS)
    pending = store.counts(study_id)["pending"]
    total = sum(store.counts(study_id).values())
    tasks = pending + store.tuning_counts(study_id)["pending"]  # one task claims one job or run
    device = cfg.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    workers, threads = plan_workers(cfg.jobs, device, tasks)
    done_before = total - pending
    bar = tqdm(total=total, initial=done_before, desc="runs", unit="run", disable=not progress)
    failures = 0
    epochs = _EpochProgress(pending * cfg.train.epochs) if progress and workers > 1 else None
    try:
        if workers == 1:
            results = (run_next(cfg, threads, show_epochs=progress) for _ in range(tasks))
        else:
            queue = epochs.queue if epochs else None
            results = Parallel(n_jobs=workers, return_as="generator_unordered")(delayed(run_next)(cfg, threads, False, queue) for _ in range(tasks))
        for summary in results:
            if summary is None:
                continue
            if summary.get("kind") == "tuning":
                if summary["status"] == "tuned":
                    tqdm.write(f"tuned {summary['cell']}: best val_acc={summary['best_value']:.3f} (trial #{summary['best_trial']}; {summary['complete']} complete, {summary['pruned']} pruned)")
                elif summary["status"] == "failed":
                    tqdm.write(f"tuning {summary['cell']} failed: {summary.get('error', '')}")
                continue
            bar.update(1)
            if summary["status"] == "done":
                bar.set_postfix_str(f"{summary['cell']} test_acc={summary['test_acc']:.3f}")
            elif summary["status"] == "failed":
                failures += 1
                tqdm.write(f"run {summary['cell']} failed: {summary.get('error', '')}")
    finally:
        if epochs:
            epochs.close()
        bar.close()
    return {**store.counts(study_id), "tuning_failed": store.tuning_counts(study_id)["failed"]}


class _EpochProgress:
    """An epoch bar in the main process fed by worker processes through a queue: parallel
    workers cannot share a terminal line, but each round they finish shows here."""

    def __init__(self, total: int):
        import multiprocessing

        self._manager = multiprocessing.Manager()
        self.queue = self._manager.Queue()
        self._bar = tqdm(total=total, desc="epochs", unit="epoch", position=1, leave=False)
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (item := self.queue.get()) is not None:
            cell, epoch, val_acc = item
            self._bar.update(1)
            self._bar.set_postfix_str(f"{cell} round {epoch} val_acc={val_acc:.3f}")

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=5)
        self._bar.close()
        self._manager.shutdown()
