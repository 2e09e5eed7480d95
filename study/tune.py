"""Hyper-parameter tuning with Optuna: one Optuna study per (study, model, size), stored in the
study's own database, whose best trial gives the hyper-parameters of that cell's final runs.

A tuning job (``store.TuningJobRow``) is claimed from the store like a run, so one worker at a
time adds trials to an Optuna study. The budget counts finished trials (complete or pruned) in
Optuna's tables, so a resumed study continues the same Optuna study where it stopped: trials
finished before a kill are kept, a trial that was in flight is marked failed and redone.

Each trial trains on the tuning seed's subset and reports validation accuracy after every
round; the pruner (median by default, Hyperband as an option) may stop it there. A trial whose
loss turns NaN or infinite is pruned: a diverging learning rate is an answer, not a crash.
The TPE sampler is seeded from the config seed and the trial number, so the same config
proposes the same trials, even across a resume.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import numpy as np
import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from study.config import StudyConfig, TrainConfig, TuneConfig
from study.errors import DivergedError
from study.store import Cell, TuningJobRow, tuning_study_name, worker_id

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what the trial budget counts

# train(hyper-parameters, on_epoch) -> a result with ``val_acc``; on_epoch may raise to stop.
TrainFn = Callable[[TrainConfig, Callable[[Any], None]], Any]


@functools.lru_cache(maxsize=4)
def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on the study's database (one per process and URL)."""
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    attempts = 5
    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except sqlalchemy.exc.OperationalError:
            # Processes opening a fresh database at once race to create Optuna's tables ("table
            # ... already exists"): the loser finds them created when it tries again.
            if attempt == attempts:
                raise
            time.sleep(0.2 * attempt)


def make_pruner(tune: TuneConfig, epochs: int) -> optuna.pruners.BasePruner:
    """The configured pruner, deciding on validation accuracy reported after each round."""
    warmup = max(1, tune.warmup_epochs)
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=warmup)
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min(warmup, epochs), max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def make_sampler(tune: TuneConfig, trial_number: int) -> optuna.samplers.TPESampler:
    """A TPE sampler seeded from the config seed and the trial number: trial k draws the same
    parameters whether or not the process that tunes was restarted before it."""
    seed = int(np.random.SeedSequence([tune.seed, trial_number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(n_startup_trials=tune.startup_trials, seed=seed)


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
) -> optuna.Study:
    """Add trials to Optuna study ``study_name`` until ``tune.trials`` have finished (complete or
    pruned) or ``tune.timeout`` seconds of finished trials have passed; return the study.

    ``base`` is the ``[train]`` section resolved for the model (``TrainConfig.resolved``); each
    trial replaces the searched keys. The caller must hold the cell's tuning job: a trial still
    running in the study was left by a worker that died, and is marked failed. ``attrs`` become
    the study's user attributes.
    """
    epochs = tune.epochs or base.epochs
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is ours to show
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", pruner=make_pruner(tune, epochs), load_if_exists=True)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    _fail_interrupted(study, storage)
    while True:
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        spent = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in finished)
        if len(finished) >= tune.trials or (tune.timeout and spent >= tune.timeout):
            return study
        study.sampler = make_sampler(tune, len(study.get_trials(deepcopy=False)))
        frozen = _run_trial(study, train, dataclasses.replace(base, epochs=epochs), tune)
        if on_trial is not None:
            on_trial(frozen)


def _run_trial(study: optuna.Study, train: TrainFn, base: TrainConfig, tune: TuneConfig) -> FrozenTrial:
    """Ask for one trial, train it with pruning, tell Optuna how it ended."""
    trial = study.ask()
    rounds = 0

    def report(stats) -> None:
        nonlocal rounds
        rounds += 1
        trial.report(stats.val_acc, stats.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"round {stats.epoch}: val_acc={stats.val_acc:.4f}")

    value, state = None, TrialState.COMPLETE
    try:
        value = train(dataclasses.replace(base, **suggest(trial, tune)), report).val_acc
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except DivergedError as exc:
        rounds += 1  # the round whose loss diverged was trained too
        trial.set_user_attr("diverged", str(exc))
        state = TrialState.PRUNED
    except BaseException:  # a crash or an interrupt: recorded, not counted, redone on resume
        trial.set_user_attr("epochs_run", rounds)
        study.tell(trial, state=TrialState.FAIL)
        raise
    trial.set_user_attr("epochs_run", rounds)
    return study.tell(trial, value, state=state)


def _fail_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # enqueued (WAITING) ones stay
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials of the study by state: complete, pruned, failed, running."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {name: states.count(state) for name, state in (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL), ("running", TrialState.RUNNING))}


def tune_next(cfg: StudyConfig, state: Any, show_progress: bool = False) -> dict | None:
    """Claim one pending tuning job of the study and tune it. Returns a summary, or None when
    no tuning job was left to claim. ``state`` is the worker's dataset on its device and its
    speed settings (layout, compiled models), shared with its runs."""
    from tqdm.auto import tqdm

    from study.execute import Heartbeat
    from study.train import train_run

    ctx, me, tune = state.ctx, worker_id(), cfg.tune
    job = ctx.store.claim_tuning(ctx.study_id, me)
    if job is None:
        return None
    train_idx = ctx.train_indices(Cell(job.model, job.size_kind, job.size_value, tune.subset_seed))

    def train(hp: TrainConfig, on_epoch: Callable[[Any], None]):
        # Validation stands in for the test split too: tuning never looks at a test image.
        return train_run(state.data, train_idx, ctx.splits.val, ctx.splits.val, job.model, hp, tune.subset_seed, state.device, on_epoch=on_epoch, speed=state.speed)

    attrs = {"study": cfg.name, "model": job.model, "size_kind": job.size_kind, "size_value": job.size_value, "n_train": int(len(train_idx)), "subset_seed": tune.subset_seed}
    summary: dict[str, Any] = {"kind": "tuning", "cell": job.optuna_study, "status": "failed"}
    bar = tqdm(total=tune.trials, desc=f"  tune {job.optuna_study}", unit="trial", leave=False, disable=not show_progress)

    def on_trial(trial: FrozenTrial) -> None:
        bar.update(1)
        bar.set_postfix_str(f"#{trial.number} {trial.state.name.lower()} val_acc={trial.value if trial.value is not None else float('nan'):.3f}")

    try:
        with Heartbeat(ctx.store, job.id, me, table=TuningJobRow):
            study = tune_cell(job.optuna_study, optuna_storage(cfg.storage_url), train, cfg.train.resolved(job.model), tune, attrs, on_trial)
        counts = trial_counts(study)
        if counts["complete"] == 0:
            raise RuntimeError(
                f"no trial completed ({counts['pruned']} pruned, {counts['failed']} failed); "
                "widen the search space (e.g. lower tune.lr), raise --trials or --tune-timeout, then --retry-failed"
            )
        if ctx.store.finish_tuning(job.id, me):
            summary.update(status="tuned", best_value=study.best_value, best_trial=study.best_trial.number, **counts)
        else:
            summary["status"] = "lost"  # another worker took the job over meanwhile
    except Exception as exc:  # recorded; this cell's runs wait until --retry-failed tunes it again
        ctx.store.fail(job.id, me, f"{type(exc).__name__}: {exc}", table=TuningJobRow)
        summary["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        bar.close()
    return summary


def tuned_hparams(cfg: StudyConfig, model: str, size_kind: str, size_value: float) -> tuple[TrainConfig, str]:
    """The best trial's hyper-parameters for one (model, size), and where they came from:
    ``"tuned:<optuna study>#<trial number>"``."""
    name = tuning_study_name(cfg.name, model, size_kind, size_value)
    best = optuna.load_study(study_name=name, storage=optuna_storage(cfg.storage_url)).best_trial
    return dataclasses.replace(cfg.train.resolved(model), **best.params), f"tuned:{name}#{best.number}"
