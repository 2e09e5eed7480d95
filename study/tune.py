"""Hyper-parameter tuning with Optuna: one Optuna study per (study, arm, size), stored in the
study's own database, whose best trial gives the hyper-parameters of that cell's final runs.

A tuning job (``store.TuningJobRow``) says whether a cell is tuned; any number of workers, on any
machines, may add trials to one Optuna study at once. Trials are taken through Optuna's own
storage (``RDBStorage`` on the study's database), the TPE sampler runs with the constant liar
(trials still running count as if they had scored badly, so parallel workers explore different
parameters), and Optuna's heartbeats mark a dead worker's trial failed after the grace period;
``RetryFailedTrialCallback`` then enqueues it again with the same parameters. A trial left by a
dead process of this host is failed at once. The budget counts finished trials (complete or
pruned): a worker takes a trial only while finished and running trials fall short of it (checked
and taken under a lock per cell, so the budget is exact), and whichever worker sees it spent closes
the job, fixing the best trial for the final runs. A resumed
study continues the same Optuna study: finished trials are kept.

Each trial trains on the tuning seed's subset and reports validation accuracy after every
epoch; the pruner (median by default, Hyperband as an option) may stop it there. A trial whose
loss turns NaN or infinite is pruned: a diverging learning rate is an answer, not a crash.
The TPE sampler is seeded from the config seed and the trial number, so one worker with the same
config proposes the same trials, even across a resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from study import tracking
from study.config import Arm, StudyConfig, TrainConfig, TuneConfig
from study.errors import DivergedError
from study.outcomes import TuningOutcome
from study.plan import WorkerState
from study.store import (
    DONE,
    FAILED,
    Cell,
    Heartbeat,
    NamedLock,
    TuningJobRow,
    dead_here,
    optuna_storage,
    tuning_study_name,
    worker_id,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what the trial budget counts
CHOSEN_TRIAL = "chosen_trial"  # Optuna study user attribute: the trial whose parameters the final runs use

# train(hyper-parameters, on_epoch) -> a result with ``val_acc``; on_epoch may raise to stop.
TrainFn = Callable[[TrainConfig, Callable[[Any], None]], Any]


def trial_epochs(tune: TuneConfig, train: TrainConfig) -> int | None:
    """Epochs of a trial under the fixed budget (``tune.epochs``, 0 = ``train.epochs``); None under
    the plateau budget, whose trials stop on their plateau like the runs, each after its own number."""
    return None if train.budget == "plateau" else tune.epochs or train.epochs


def make_pruner(tune: TuneConfig, epochs: int | None) -> optuna.pruners.BasePruner:
    """The configured pruner, deciding on validation accuracy reported after each epoch. Trials of
    different lengths (``epochs`` None: the plateau budget) are compared epoch by epoch as far as
    each went; Hyperband then takes its largest resource from the first trial that finishes."""
    warmup = max(1, tune.warmup_epochs)
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=warmup)
    if tune.pruner == "hyperband":
        if epochs is None:
            return optuna.pruners.HyperbandPruner(min_resource=warmup, max_resource="auto", reduction_factor=3)
        return optuna.pruners.HyperbandPruner(min_resource=min(warmup, epochs), max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def make_sampler(tune: TuneConfig, trial_number: int) -> optuna.samplers.TPESampler:
    """A TPE sampler seeded from the config seed and the trial number: trial k draws the same
    parameters whether or not the process that tunes was restarted before it."""
    seed = int(np.random.SeedSequence([tune.seed, trial_number]).generate_state(1)[0])
    # constant_liar: trials that other workers are running count as bad results meanwhile, so
    # parallel workers do not all propose the same parameters.
    return optuna.samplers.TPESampler(n_startup_trials=tune.startup_trials, seed=seed, constant_liar=True)


def suggest(trial: optuna.Trial, tune: TuneConfig) -> dict[str, Any]:
    """Draw the searched ``[train]`` keys for ``trial``; keys with an empty range are left out."""
    params: dict[str, Any] = {}
    for key in tune.searched:
        space = getattr(tune, key)
        if key in ("lr", "weight_decay"):
            params[key] = trial.suggest_float(key, space[0], space[1], log=True)
        elif key == "augment_strength":
            params[key] = trial.suggest_float(key, space[0], space[1])
        else:
            params[key] = trial.suggest_categorical(key, list(space))
    return params


def tune_cell(
    study_name: str,
    storage: optuna.storages.BaseStorage,
    train: TrainFn,
    base: TrainConfig,
    tune: TuneConfig,
    attrs: dict[str, Any],
    on_trial: Callable[[FrozenTrial], None] | None = None,
    on_start: Callable[[optuna.Trial], None] | None = None,
) -> optuna.Study:
    """Add trials to Optuna study ``study_name`` while its finished (complete or pruned) and
    running trials fall short of ``tune.trials`` and ``tune.timeout`` seconds of finished trials
    have not passed; return the study. Other workers may add trials to it meanwhile.

    ``base`` is the ``[train]`` section resolved for the model (``TrainConfig.resolved``); each
    trial replaces the searched keys. ``attrs`` become the study's user attributes. ``on_start``
    is called as a trial starts, ``on_trial`` when it has ended.
    """
    epochs = trial_epochs(tune, base)
    study = open_tuning_study(study_name, storage, tune, epochs)
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    engine = getattr(storage, "engine", None)
    while True:
        # "Is a trial left in the budget? Then take it" happens under a lock per cell, released
        # once the trial is in the storage: workers finishing at once never overshoot the budget.
        with NamedLock(engine, f"tune:{study_name}") if engine is not None else contextlib.nullcontext() as lock:
            if budget_left(study, tune) <= 0:
                return study
            study.sampler = make_sampler(tune, len(study.get_trials(deepcopy=False)))

            def started(trial: optuna.Trial) -> None:
                if lock is not None:
                    lock.release()
                if on_start is not None:
                    on_start(trial)

            trial_train = base if epochs is None else dataclasses.replace(base, epochs=epochs)
            frozen = _run_trial(study, train, trial_train, tune, started)
        if on_trial is not None:
            on_trial(frozen)


def open_tuning_study(
    study_name: str, storage: optuna.storages.BaseStorage, tune: TuneConfig, epochs: int | None
) -> optuna.Study:
    """The cell's Optuna study (made if new), with the trials of dead workers failed."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # progress and failed trials are ours to show
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="maximize",
        pruner=make_pruner(tune, epochs),
        load_if_exists=True,
    )
    fail_dead_trials(study)
    return study


def fail_dead_trials(study: optuna.Study) -> None:
    """Fail the trials whose worker is gone, so that their share of the budget is done again:
    those silent for the storage's grace period (Optuna's heartbeats), and at once those held by
    a process of this host that no longer exists. Each is retried with its parameters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage = study._storage  # the study's own storage (Optuna exposes no accessor)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not dead_here(trial.user_attrs.get("worker")):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                _retry(study, trial._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it first


def _retry(study: optuna.Study, trial_id: int) -> None:
    """Enqueue a failed, interrupted trial again with its parameters (as Optuna does for a trial
    whose heartbeat stopped), so that its share of the budget is done once more."""
    storage = study._storage
    retry = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if retry is not None:
        retry(study, storage.get_trial(trial_id))


def budget_left(study: optuna.Study, tune: TuneConfig) -> int:
    """How many more trials may start: the budget less the finished and the running trials;
    0 once ``tune.timeout`` seconds of finished trials have passed."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    finished = [t for t in trials if t.state in FINISHED]
    spent = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in finished)
    if tune.timeout and spent >= tune.timeout:
        return 0
    return max(0, tune.trials - len(trials))


def budget_spent(study: optuna.Study, tune: TuneConfig) -> bool:
    """Whether the cell is tuned: ``tune.trials`` finished trials, or the timeout reached."""
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    spent = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in finished)
    return len(finished) >= tune.trials or bool(tune.timeout and spent >= tune.timeout)


def _run_trial(study: optuna.Study, train: TrainFn, base: TrainConfig, tune: TuneConfig, on_start=None) -> FrozenTrial:
    """Run one trial through ``Study.optimize``, which takes it from the storage (a retried
    trial first), keeps its heartbeat while it trains and records how it ended; a crash or an
    interrupt is recorded as failed and raised."""

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_id())  # so that a dead process of this host is recognised
        if on_start is not None:
            on_start(trial)
        epochs_run = 0

        def report(stats) -> None:
            nonlocal epochs_run
            epochs_run += 1
            trial.report(stats.val_acc, stats.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {stats.epoch}: val_acc={stats.val_acc:.4f}")

        try:
            return train(dataclasses.replace(base, **suggest(trial, tune)), report).val_acc
        except DivergedError as exc:
            epochs_run += 1  # the epoch whose loss diverged was trained too
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except KeyboardInterrupt:  # the command is stopping (study.stopping); Optuna fails the trial
            trial.set_user_attr("interrupted", True)
            raise
        finally:
            trial.set_user_attr("epochs_run", epochs_run)

    ended: list[FrozenTrial] = []  # callbacks run only for a trial that did not raise
    started: list[int] = []
    try:
        study.optimize(
            lambda trial: started.append(trial._trial_id) or objective(trial),
            n_trials=1,
            callbacks=[lambda _study, trial: ended.append(trial)],
        )
    except KeyboardInterrupt:  # the command is stopping: Optuna failed the trial; it runs again after a resume
        if started and study._storage.get_trial(started[0]).state == TrialState.FAIL:
            _retry(study, started[0])
        raise
    return ended[0]


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials of the study by state: complete, pruned, failed, running."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        name: states.count(state)
        for name, state in (
            ("complete", TrialState.COMPLETE),
            ("pruned", TrialState.PRUNED),
            ("failed", TrialState.FAIL),
            ("running", TrialState.RUNNING),
        )
    }


def tune_next(cfg: StudyConfig, state: WorkerState, show_progress: bool = False) -> TuningOutcome | None:
    """Join the first open tuning job of the study that still has trials to start, and run
    trials for it until its budget is spent or covered by other workers' running trials; close
    the job when its budget is spent. Returns what happened, or None when no tuning job needs this
    worker. ``state`` is the worker's dataset on its device and its speed settings (layout,
    compiled models), shared with its runs."""
    ctx, me, tune = state.ctx, worker_id(), cfg.tune
    storage = optuna_storage(cfg.storage_url, cfg.heartbeat, cfg.grace_period)
    for job in ctx.store.open_tuning_jobs(ctx.study_id):
        study = open_tuning_study(job.optuna_study, storage, tune, trial_epochs(tune, cfg.train))
        if budget_spent(study, tune):
            return close_tuning(ctx.store, job, study)
        if budget_left(study, tune) > 0 and ctx.store.join_tuning(job.id, me):
            return _tune_job(cfg, state, job, storage, show_progress)
    return None


def _tune_job(cfg: StudyConfig, state: WorkerState, job: TuningJobRow, storage, show_progress: bool) -> TuningOutcome:
    from tqdm.auto import tqdm

    from study.train import train_run

    ctx, me, tune = state.ctx, worker_id(), cfg.tune
    arm = cfg.arm(job.arm or job.model)
    train_idx = ctx.train_indices(Cell(job.model, job.size_kind, job.size_value, tune.subset_seed, arm.name))

    current: dict[str, optuna.Trial] = {}  # the trial being trained (on_start), for the tracker

    def train(hp: TrainConfig, on_epoch: Callable[[Any], None]):
        trial = current.get("trial")
        tracked = tracking.start_trial(
            cfg, ctx.store, job.optuna_study, trial.number if trial else -1, hp, trial.params if trial else {}
        )

        def epoch(stats) -> None:
            tracked.epoch(stats)
            on_epoch(stats)  # may prune the trial

        try:
            # Validation stands in for the test split too: tuning never looks at a test image.
            result = train_run(
                state.data,
                train_idx,
                ctx.splits_for(tune.subset_seed).val,
                ctx.splits_for(tune.subset_seed).val,
                job.model,
                hp,
                tune.subset_seed,
                state.device,
                on_epoch=epoch,
                speed=state.speed,
            )
        except (optuna.TrialPruned, DivergedError) as exc:
            tracked.end("FINISHED", "pruned", error=f"{type(exc).__name__}: {exc}")
            raise
        except Exception as exc:
            tracked.end("FAILED", "failed", error=f"{type(exc).__name__}: {exc}")
            raise
        except BaseException:  # stopped: the trial runs again after a resume
            tracked.end("KILLED", "stopped")
            raise
        else:
            tracked.end("FINISHED", "complete", {"val_acc": result.val_acc, "best_epoch": result.best_epoch})
        finally:
            tracked.close()
        return result

    attrs = {
        "study": cfg.name,
        "model": job.model,
        "arm": arm.name,
        "size_kind": job.size_kind,
        "size_value": job.size_value,
        "n_train": int(len(train_idx)),
        "subset_seed": tune.subset_seed,
    }
    outcome = TuningOutcome(job.optuna_study)
    bar = tqdm(
        total=tune.trials, desc=f"  tune {job.optuna_study}", unit="trial", leave=False, disable=not show_progress
    )

    def on_start(trial: optuna.Trial) -> None:
        current["trial"] = trial
        ctx.store.worker_doing(ctx.study_id, me, f"tuning {job.optuna_study}: trial #{trial.number}")

    def on_trial(trial: FrozenTrial) -> None:
        outcome.trials_run += 1
        ctx.store.worker_doing(
            ctx.study_id,
            me,
            f"tuning {job.optuna_study}: trial #{trial.number} {trial.state.name.lower()}",
            trials_done=1,
        )
        bar.update(1)
        bar.set_postfix_str(
            f"#{trial.number} {trial.state.name.lower()} "
            f"val_acc={trial.value if trial.value is not None else float('nan'):.3f}"
        )

    try:
        with Heartbeat(ctx.store, job.id, me, interval=cfg.heartbeat, table=TuningJobRow):
            study = tune_cell(
                job.optuna_study, storage, train, arm.resolved(cfg.train), tune, attrs, on_trial, on_start
            )
        if budget_spent(study, tune):
            return dataclasses.replace(close_tuning(ctx.store, job, study), trials_run=outcome.trials_run)
        outcome.status = "helped"  # the budget's last trials run on other workers; they close the job
    except (
        Exception
    ) as exc:  # a trial crashed (recorded failed in Optuna): the job fails; --retry-failed tunes it again
        ctx.store.close_tuning(job.id, FAILED, f"{type(exc).__name__}: {exc}")
        outcome.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        bar.close()
    return outcome


def close_tuning(store, job: TuningJobRow, study: optuna.Study) -> TuningOutcome:
    """Close a tuning job whose budget is spent: done, with its best trial fixed for the cell's
    final runs (a trial still running elsewhere cannot change it afterwards), or failed when no
    trial completed. Returns what happened; its status is "closed" when another worker closed it first."""
    counts = trial_counts(study)
    outcome = TuningOutcome(job.optuna_study, "closed", **counts)
    if counts["complete"] == 0:
        error = (
            f"no trial completed ({counts['pruned']} pruned, {counts['failed']} failed); "
            "widen the search space (e.g. lower tune.lr), raise --trials or --tune-timeout, then --retry-failed"
        )
        if store.close_tuning(job.id, FAILED, f"RuntimeError: {error}"):
            outcome.status, outcome.error = "failed", f"RuntimeError: {error}"
        return outcome
    best = study.best_trial
    if store.tuning_status(job.id) in ("pending", "running"):
        study.set_user_attr(CHOSEN_TRIAL, best.number)
    if store.close_tuning(job.id, DONE):
        outcome.status, outcome.best_value, outcome.best_trial = "tuned", best.value, best.number
    return outcome


def tuned_hparams(cfg: StudyConfig, arm: Arm, size_kind: str, size_value: float) -> tuple[TrainConfig, str]:
    """The best trial's hyper-parameters for one (arm, size), and where they came from:
    ``"tuned:<optuna study>#<trial number>"``."""
    name = tuning_study_name(cfg.name, arm.name, size_kind, size_value)
    study = optuna.load_study(study_name=name, storage=optuna_storage(cfg.storage_url))
    chosen = study.user_attrs.get(CHOSEN_TRIAL)
    best = study.best_trial if chosen is None else study.get_trials(deepcopy=False)[chosen]
    return dataclasses.replace(arm.resolved(cfg.train), **best.params), f"tuned:{name}#{best.number}"
