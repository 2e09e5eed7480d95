"""Run a study's cells: each worker claims the next tuning trial or run from the store, does it
and records the result, until nothing is left; a run waits until its cell is tuned.

Execution goes through joblib: ``loky`` (local processes, the default) or ``dask`` (a
dask.distributed cluster, through joblib's dask backend). The engine schedules tasks; the store
keeps the books: every task claims its work from the store, so any number of ``study run`` or
``study worker`` commands, on any number of machines, can feed one study and nothing runs twice.
A worker holding a run sends heartbeats from a background thread; a run whose worker fell silent
for the grace period is taken over by a worker that has nothing else to do.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterable
from contextlib import closing
from functools import partial

from tqdm.auto import tqdm

from study import tracking
from study.budget_control import carries_control, control_fields
from study.config import StudyConfig, TrainConfig, to_dict
from study.machine import dask_client, plan_workers, torch_threads
from study.masking import mask_urls
from study.outcomes import Outcome, RunOutcome, TuningOutcome
from study.plan import ATTACH, WorkerState, open_context
from study.sequential import extend
from study.stopping import Stopped, ignore_interrupts
from study.store import Cell, Heartbeat, RunRow, worker_id

MAX_RESTARTS = 20  # times the local worker processes are restarted after one of them died


_STATE: dict[str, WorkerState] = {}
_STATE_LOCK = threading.Lock()  # a dask worker runs several tasks at once in threads
_REGISTERED: set[tuple[str, str, str]] = set()  # (storage URL, study, worker name) already in ``workers``


def _worker_state(cfg: StudyConfig) -> WorkerState:
    """The cached dataset (memory-mapped) and the device, opened once per worker process and reused."""
    import json

    key = json.dumps(to_dict(cfg), sort_keys=True)
    with _STATE_LOCK:
        if key not in _STATE:
            from study.images import image_source, memory_budget
            from study.speed import Speed
            from study.train import resolve_device

            ctx = open_context(cfg, mode=ATTACH)
            device = resolve_device(cfg.device)
            # The cache's memory map; each run takes the images it uses, resident or streamed.
            data = image_source(ctx.dataset, device, memory_budget(cfg.memory_budget, device))
            _STATE.clear()
            _STATE[key] = WorkerState(
                ctx, data, device, Speed.from_config(cfg, partial(ctx.store.layout_choice, ctx.study_id))
            )
        state = _STATE[key]
    me = worker_id()
    if (cfg.storage_url, cfg.name, me) not in _REGISTERED:
        state.ctx.store.register_worker(state.ctx.study_id, me)
        _REGISTERED.add((cfg.storage_url, cfg.name, me))
    return state


def hparams_for(cfg: StudyConfig, run: RunRow) -> tuple[TrainConfig, str]:
    """The hyper-parameters a run uses and where they came from: the best trial of its cell's
    Optuna study when the study tunes, else its arm's ``[train]`` (the study's, with the arm's keys)."""
    arm = cfg.arm(run.arm or run.model)
    if cfg.tune.trials:
        from study.tune import tuned_hparams

        return tuned_hparams(cfg, arm, run.size_kind, run.size_value)
    return arm.resolved(cfg.train), "config"


def run_next(cfg: StudyConfig, threads: int = 0, show_epochs: bool = False, epoch_queue=None) -> Outcome | None:
    """Do one piece of the study's work: trials for a cell being tuned, or one run, claimed
    from the store and recorded there. Returns what happened, or None when the study has nothing
    left for anyone (no pending run, none held by another worker, no cell being tuned).

    While every pending run waits (for a cell being tuned, or held by other workers that might
    die), the worker polls: it takes over runs whose worker fell silent for ``cfg.grace_period``.

    Progress: ``show_epochs`` draws an epoch bar here (one worker in the main process);
    ``epoch_queue`` (a multiprocessing queue) sends each epoch to the main process instead.
    """
    import torch

    torch.set_num_threads(torch_threads(cfg, threads))
    state = _worker_state(cfg)
    ctx, me, sid = state.ctx, worker_id(), state.ctx.study_id
    while True:
        if cfg.tune.trials:
            from study.tune import tune_next

            tuned = tune_next(cfg, state, show_progress=show_epochs)
            if tuned is not None:
                return tuned
        ctx.store.release_stale(sid, cfg.grace_period)
        run = ctx.store.claim(sid, me)
        if run is not None:
            return _do_run(cfg, state, run, me, show_epochs, epoch_queue)
        if not ctx.store.others_working(sid):
            if extend(cfg, ctx.store, sid):  # a sequential study's next seeds (one decision for every worker)
                continue
            ctx.store.worker_doing(sid, me, "idle: nothing left to do")
            return None
        ctx.store.worker_doing(sid, me, "waiting: the runs left are held by other workers or wait for tuning")
        time.sleep(min(2.0, cfg.heartbeat))


def _do_run(cfg: StudyConfig, state: WorkerState, run: RunRow, me: str, show_epochs: bool, epoch_queue) -> RunOutcome:
    """Train a claimed run under heartbeats and record it, done or failed with its error."""
    from study.machine import environment
    from study.train import train_run

    ctx = state.ctx
    cell = Cell(run.model, run.size_kind, run.size_value, run.seed, run.arm or run.model)
    outcome = RunOutcome(cell.key)
    bar, tracked = None, tracking.NO_RUN
    try:
        hp, source = hparams_for(cfg, run)
        train_idx = ctx.train_indices(cell)
        epochs_at_most = hp.plan(len(train_idx))[2]
        bar = tqdm(total=epochs_at_most, desc=f"  {cell.key}", unit="epoch", leave=False, disable=not show_epochs)
        tracked = tracking.start_run(cfg, ctx.store, cell, run.id, len(train_idx), hp, source)  # --mlflow

        def on_epoch(stats) -> None:
            tracked.epoch(stats)
            bar.update(1)
            bar.set_postfix(val_acc=f"{stats.val_acc:.3f}")
            # The workers table shows each run's progress (`status`, and tests that act mid-run).
            ctx.store.worker_doing(
                ctx.study_id, me, f"run {cell.key}: epoch {stats.epoch}/{epochs_at_most}, val_acc {stats.val_acc:.3f}"
            )
            if epoch_queue is not None:
                epoch_queue.put((cell.key, stats.epoch, stats.val_acc))

        split = ctx.splits_for(cell.seed)  # the study's fixed split, or the seed's own
        with Heartbeat(ctx.store, run.id, me, interval=cfg.heartbeat):
            result = train_run(
                state.data,
                train_idx,
                split.val,
                split.test,
                cell.model,
                hp,
                cell.seed,
                state.device,
                on_epoch=on_epoch,
                speed=state.speed,
                control=carries_control(cfg, hp, run.size_value, cell.seed),
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
            "stop": result.stop,
            "steps_run": result.steps,
            **control_fields(result.control),
        }
        epochs = [vars(e) for e in result.history]
        # A seed's own split: its test labels are stored with the predictions they score.
        y_true = ctx.dataset.labels[split.test] if cfg.data.split_per_seed else None
        if ctx.store.finish(run.id, me, fields, epochs, result.predictions, y_true):
            outcome.status, outcome.test_acc = "done", result.test_acc
            tracked.end("FINISHED", "done", tracking.final_metrics(result), stop=result.stop)
            _keep_weights(cfg, ctx.store, run, result.weights)
        else:
            outcome.status = "lost"  # another worker took the run over meanwhile
            tracked.end("KILLED", "lost")
    except Exception as exc:  # out of memory, a NaN loss...: recorded, and the study goes on
        ctx.store.fail(run.id, me, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
        outcome.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        tracked.end("FAILED", "failed", error=f"{type(exc).__name__}: {exc}")
    except BaseException:  # stopped (study.stopping): the run goes back to the store, not left running
        tracked.end("KILLED", "stopped")
        raise
    finally:
        if bar is not None:
            bar.close()
        tracked.close()  # its records reach the tracker before the next run starts
    return outcome


def _keep_weights(cfg: StudyConfig, store, run: RunRow, weights: dict) -> None:
    """Keep a finished run's trained weights in the store when it may be exported (study/deploy.py):
    with ``deploy.runs = "best"`` only the best seed's so far, per model at the largest size."""
    from study.deploy import keeps_weights, weights_bytes

    if keeps_weights(cfg, run):
        store.save_weights(run.id, weights_bytes(weights), best_only=cfg.deploy.runs == "best")


def execute(cfg: StudyConfig, study_id: int, store, progress: bool = True) -> dict[str, int]:
    """Work on the study until nothing is left for anyone; return the final counts by status.

    Tasks go to joblib's ``cfg.backend`` one by one while work remains: each claims its work
    from the store, so tasks of other commands (other machines) share the same queue. When a
    local worker process dies (killed, out of memory), its run is returned to the queue (or
    failed after ``store.MAX_ATTEMPTS`` deaths) and the workers are started again.
    """
    store.release_stale(study_id, cfg.grace_period)
    counts = store.counts(study_id)
    total, pending = sum(counts.values()), counts["pending"]
    tasks = pending + store.tuning_counts(study_id)["pending"]
    if tasks == 0 and not store.others_working(study_id):  # finished (or only failed runs left)
        if not extend(cfg, store, study_id):  # ... and no sequential seeds to add: nothing to start
            return {**counts, "tuning_failed": store.tuning_counts(study_id)["failed"]}
        counts = store.counts(study_id)
        total, pending = sum(counts.values()), counts["pending"]
        tasks = pending
    device = cfg.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    bar = tqdm(total=total, initial=counts["done"] + counts["failed"], desc="runs", unit="run", disable=not progress)
    reports = _Reports(store, study_id, bar)
    try:
        _work(cfg, store, study_id, device, tasks, pending, reports, progress)
    except KeyboardInterrupt as stop:  # SIGINT or SIGTERM (study.stopping): the pool is stopped by now
        handed = hand_back(cfg, store, study_id)
        if isinstance(stop, Stopped):
            stop.handed_back = handed
        raise
    finally:
        bar.close()
    return {**store.counts(study_id), "tuning_failed": store.tuning_counts(study_id)["failed"]}


def hand_back(cfg: StudyConfig, store, study_id: int) -> dict[str, int]:
    """What a stopped command had in flight, back to the store at once: its runs and tuning jobs
    to pending (``Store.hand_back``), and the Optuna trials its stopped worker processes held
    failed and enqueued again with their parameters. Returns counts for the message."""
    handed = store.hand_back(study_id, worker_id())
    tracking.hand_back(cfg, store)  # --mlflow: the handed-back runs ended, not left running
    trials = 0
    if cfg.tune.trials:
        import optuna

        from study.tune import fail_dead_trials, optuna_storage

        storage = optuna_storage(cfg.storage_url, cfg.heartbeat, cfg.grace_period)
        for job in store.open_tuning_jobs(study_id):
            try:
                tuning = optuna.load_study(study_name=job.optuna_study, storage=storage)
            except KeyError:  # no trial was ever asked for
                continue
            fail_dead_trials(tuning)  # this process's own trial was failed and enqueued as it stopped
            trials += len(tuning.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    return {**handed, "trials": trials}


def _work(
    cfg: StudyConfig, store, study_id: int, device: str, tasks: int, pending: int, reports, progress: bool
) -> None:
    """Feed the study's work to the configured engine until nothing is left for anyone."""
    from joblib import Parallel, delayed, parallel_config
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    epochs = None
    try:
        if cfg.backend == "dask":
            client = dask_client(cfg.scheduler)
            with client, parallel_config(backend="dask"):
                with closing(_parallel(Parallel, delayed, cfg, cfg.jobs or -1, 0, None, reports)) as results:
                    reports.consume(results)
        else:
            workers, threads = plan_workers(cfg.jobs, device, tasks, cfg.threads)
            if workers == 1:
                reports.consume(iter(lambda: run_next(cfg, threads, show_epochs=progress), None))
            else:
                planned = pending * cfg.train.epochs if cfg.train.budget == "fixed" else None  # plateau: unknown
                epochs = _EpochProgress(planned) if progress else None
                for restart in range(MAX_RESTARTS + 1):
                    try:
                        queue = epochs.queue if epochs else None
                        with closing(_parallel(Parallel, delayed, cfg, workers, threads, queue, reports)) as results:
                            reports.consume(results)
                        break
                    except TerminatedWorkerError:
                        if restart == MAX_RESTARTS:
                            raise
                        tqdm.write(
                            "a worker process died (killed, or out of memory); its run goes back to the queue and "
                            "the workers restart"
                        )
                        store.release_stale(study_id, cfg.grace_period)
    finally:
        if epochs:
            epochs.close()


def _parallel(Parallel, delayed, cfg: StudyConfig, n_jobs: int, threads: int, queue, reports: _Reports):
    """joblib results of ``run_next`` tasks, submitted while the study has work left: the
    stream of tasks ends once a task has found nothing left for anyone."""

    def tasks():
        while not reports.finished:
            yield delayed(run_next)(cfg, threads, False, queue)

    local = {} if cfg.backend == "dask" else {"initializer": _start_pool_worker}
    results = Parallel(n_jobs=n_jobs, return_as="generator_unordered", pre_dispatch="n_jobs", **local)(tasks())
    yield from results  # closed early (an interrupt), joblib stops the workers at once


def _start_pool_worker() -> None:
    """Set up a local worker process so that stopping it is clean: it leaves Ctrl-C to the main
    process (study.stopping), and tqdm's lock is a thread lock, not a multiprocessing semaphore
    that a stopped process would leave behind ("leaked semaphore objects")."""
    ignore_interrupts()
    tqdm.set_lock(threading.RLock())


class _Reports:
    """Shows what tasks report: the runs bar (counted from the store, so it includes other
    machines' work), tuned cells and failures."""

    def __init__(self, store, study_id: int, bar):
        self.store, self.study_id, self.bar = store, study_id, bar
        self.finished = False

    def consume(self, outcomes: Iterable[Outcome | None]) -> None:
        for outcome in outcomes:
            if outcome is None:
                self.finished = True  # nothing is left for anyone: submit no more tasks
                continue
            if isinstance(outcome, TuningOutcome):
                if outcome.status == "tuned":
                    tqdm.write(
                        f"tuned {outcome.cell}: best val_acc={outcome.best_value:.3f} (trial "
                        f"#{outcome.best_trial}; {outcome.complete} complete, {outcome.pruned} pruned)"
                    )
                elif outcome.status == "failed":
                    tqdm.write(f"tuning {outcome.cell} failed: {mask_urls(outcome.error or '')}")
                continue
            counts = self.store.counts(self.study_id)
            self.bar.total = sum(counts.values())  # a sequential study adds runs as it goes
            self.bar.n = counts["done"] + counts["failed"]
            self.bar.refresh()
            if outcome.status == "done":
                self.bar.set_postfix_str(f"{outcome.cell} test_acc={outcome.test_acc:.3f}")
            elif outcome.status == "failed":
                tqdm.write(f"run {outcome.cell} failed: {mask_urls(outcome.error or '')}")


class _EpochProgress:
    """An epoch bar in the main process fed by worker processes through a queue: parallel
    workers cannot share a terminal line, but each epoch they finish shows here."""

    def __init__(self, total: int):
        from multiprocessing.managers import SyncManager

        # The queue's server process leaves Ctrl-C to the main process, like the pool's workers:
        # killed by it, it would break the queue under the thread that drains it.
        self._manager = SyncManager()
        self._manager.start(ignore_interrupts)
        self.queue = self._manager.Queue()
        self._bar = tqdm(total=total, desc="epochs", unit="epoch", position=1, leave=False)
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                cell, epoch, val_acc = item
                self._bar.update(1)
                self._bar.set_postfix_str(f"{cell} epoch {epoch} val_acc={val_acc:.3f}")
        except (OSError, EOFError):  # the queue's process is gone (SIGTERM or SIGKILL to the group): no more epochs
            return

    def close(self) -> None:
        try:
            self.queue.put(None)
            self._thread.join(timeout=5)
        except (OSError, EOFError):  # the manager's process was stopped with the rest (SIGTERM to the group)
            pass
        self._bar.close()
        self._manager.shutdown()
