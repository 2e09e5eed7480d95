"""The whole analysis of one study in one call: every table the report shows, as DataFrames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.arms import by_arm
from analysis.confusion import confusion_matrices
from analysis.convergence import (
    budget_words,
    cell_convergence,
    convergence_messages,
    in_run_control,
    run_convergence,
)
from analysis.costs import model_costs, time_to_target, training_costs
from analysis.curves import DEFAULT_SELECTION, LearningCurves, curve_bands, fit_learning_curves
from analysis.efficiency import (
    crossovers,
    data_needed,
    data_ratios,
    efficiency_scores,
    score_differences,
    targets_table,
)
from analysis.load import StudyData, results_table
from analysis.population import population_accuracy
from analysis.sanity import sanity_checks
from analysis.stats import Comparisons, RankTests, paired_comparisons, rank_tests
from study.store.schema import flips

ANSWER_COLUMNS = [
    "model",
    "n_smallest",
    "acc_smallest",
    "acc_smallest_ci_low",
    "acc_smallest_ci_high",
    "n_largest",
    "acc_largest",
    "acc_largest_ci_low",
    "acc_largest_ci_high",
    "score",
    "score_ci_low",
    "score_ci_high",
    "train_seconds_largest",
    "n_params",
    "macs",
    "latency_p50_ms_1t",
]


@dataclass
class StudyAnalysis:
    """Every answer about one study. Each table is a DataFrame whose columns are documented by
    the function that makes it: summary (``curves.summarize``), fits and bands (``curves``),
    targets, needed, ratios, scores (``efficiency``), comparisons and ranks (``stats``),
    model_costs, training_costs, time_to_target (``costs``), confusion (``confusion``),
    warnings (``sanity``), population (``population.population_accuracy``: accuracy on the item
    population, the main table's interval) and answer (``answer_table``).

    Two estimands: ``summary``'s interval is over seeds on this test set (the learning curves'
    and the paired differences' question); ``population``'s adds the test set's sampling (the
    question of a reader who compares an accuracy with other work). The primary comparison is
    ``score_differences`` (``PRIMARY_COMPARISON``)."""

    data: StudyData
    curves: LearningCurves
    bands: pd.DataFrame
    targets: pd.DataFrame
    needed: pd.DataFrame
    ratios: pd.DataFrame
    scores: pd.DataFrame
    comparisons: Comparisons
    ranks: RankTests
    score_differences: pd.DataFrame
    crossovers: pd.DataFrame
    model_costs: pd.DataFrame
    training_costs: pd.DataFrame
    time_to_target: pd.DataFrame
    confusion: pd.DataFrame
    warnings: pd.DataFrame
    answer: pd.DataFrame
    population: pd.DataFrame | None = None  # analysis.population.population_accuracy
    convergence_runs: pd.DataFrame | None = None  # analysis.convergence.run_convergence
    convergence: pd.DataFrame | None = None  # analysis.convergence.cell_convergence
    control: StudyData | None = None  # the budget control (study.budget_control), when it ran

    @property
    def summary(self) -> pd.DataFrame:
        return self.curves.summary

    @property
    def fits(self) -> pd.DataFrame:
        return self.curves.fits

    def tables(self) -> dict[str, pd.DataFrame]:
        """name -> table, the CSV files of the report."""
        return {
            "answer": self.answer,
            "results": results_table(self.data),
            "learning_curve": self.summary,
            "population_accuracy": self.population if self.population is not None else pd.DataFrame(),
            "curve_fits": self.fits,
            "curve_bands": self.bands,
            "targets": self.targets,
            "data_needed": self.needed,
            "data_ratios": self.ratios,
            "efficiency_scores": self.scores,
            "score_differences": self.score_differences,
            "crossovers": self.crossovers,
            "curve_parameters": self.curves.parameters,
            "lack_of_fit": self.curves.lack_of_fit,
            "pairwise": self.comparisons.pairwise,
            "mcnemar_by_seed": self.comparisons.mcnemar,
            "average_ranks": self.ranks.ranks,
            "friedman": self.ranks.friedman,
            "friedman_by_size": self.ranks.by_size,
            "nemenyi": self.ranks.posthoc,
            "model_costs": self.model_costs,
            "training_costs": self.training_costs,
            "time_to_target": self.time_to_target,
            "confusion_full_data": self.confusion,
            "warnings": self.warnings,
            "convergence": self.convergence if self.convergence is not None else pd.DataFrame(),
            "convergence_runs": self.convergence_runs if self.convergence_runs is not None else pd.DataFrame(),
        }


def mcnemar_inputs(data: StudyData) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Predictions and labels for McNemar's test. With per-seed splits the two runs of a pair
    share a seed, hence a test split, but seeds do not: each run's prediction is then given as
    right (1) or wrong (0) against its own labels, scored against a label of 1 for every item."""
    if not data.y_true:
        return data.predictions, data.y_test
    right = {r: (p == data.labels_of(r)).astype(np.int32) for r, p in data.predictions.items()}
    return right, np.ones(len(data.y_test), np.int32)


def analyse(
    data: StudyData,
    targets: list[float] | None = None,
    select: str = DEFAULT_SELECTION,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_boot_curves: int | None = None,
    n_boot_stats: int | None = None,
    seed: int = 0,
    control: StudyData | None = None,
) -> StudyAnalysis:
    """Analyse every finished run of ``data``. ``targets``: absolute test accuracies for the
    images-needed estimates (default: 90% and 95% of the best full-data accuracy); ``select``:
    the curve rule (``analysis.curves.fit_learning_curves``). Nothing is resampled at random,
    so the same store always gives the same numbers; ``n_boot_curves``, ``n_boot_stats`` and
    ``seed`` are accepted from older callers and unused. Tables compare the study's arms: their
    ``model`` column holds arm names (``arms.by_arm``). ``control``: the study's budget control
    (``study.budget_control``), for the convergence check."""
    del n_boot_curves, n_boot_stats, seed
    data = by_arm(data)
    done = data.done
    done = done[done["test_acc"].notna()]
    n_test = len(data.y_test) if data.y_test is not None and len(data.y_test) else None
    curves = fit_learning_curves(done, select=select, confidence=confidence, alpha=alpha, n_test=n_test)
    target_frame = targets_table(curves.summary, targets)
    predictions, y_test = mcnemar_inputs(data)
    comparisons = paired_comparisons(done, predictions, y_test, alpha=alpha, confidence=confidence, n_test=n_test)
    training = training_costs(done)
    costs = model_costs(data.costs, data.runs)
    scores = efficiency_scores(curves)
    analysis = StudyAnalysis(
        data=data,
        curves=curves,
        bands=curve_bands(curves),
        targets=target_frame,
        needed=data_needed(curves, target_frame),
        ratios=data_ratios(curves, target_frame),
        scores=scores,
        comparisons=comparisons,
        ranks=rank_tests(done, alpha),
        score_differences=score_differences(curves, alpha, n_test),
        crossovers=crossovers(curves),
        model_costs=costs,
        training_costs=training,
        time_to_target=time_to_target(curves.summary, training, target_frame),
        confusion=confusion_matrices(data),
        warnings=sanity_checks(data, curves, comparisons),
        answer=pd.DataFrame(),
        population=population_accuracy(
            done, data.predictions, data.y_test, confidence, split_per_seed=data.split_per_seed
        ),
    )
    analysis.answer = answer_table(analysis)
    analysis.control = control
    analysis.convergence_runs = run_convergence(done, data.epochs)
    control_done = _companion_control(data, control) if control is not None else in_run_control(done)
    analysis.convergence = cell_convergence(done, analysis.convergence_runs, control_done, len(data.y_test))
    analysis.warnings = _with_convergence(analysis.warnings, analysis.convergence, data.config)
    return analysis


def _companion_control(data: StudyData, control: StudyData) -> pd.DataFrame:
    """A companion control study's finished runs, each with the test images it gained and lost
    against the study's run of the same model, size and seed (``cell_convergence``'s columns)."""
    runs = control.done[control.done["test_acc"].notna()]
    keys = ["model", "n_train", "seed"]
    own = data.done.drop_duplicates(keys).set_index(keys)["run_id"]
    counts = []
    for r in runs.itertuples():
        before = data.predictions.get(own.get((r.model, r.n_train, r.seed)))
        after = control.predictions.get(r.run_id)
        same = before is not None and after is not None and len(before) == len(after) == len(data.y_test)
        counts.append(flips(before, after, data.y_test) if same else (np.nan, np.nan))
    gained, lost = zip(*counts) if counts else ((), ())
    return runs.assign(gained=list(gained), lost=list(lost))


def _with_convergence(warnings: pd.DataFrame, cells: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The sanity warnings with one 'not_converged' warning per cell that had not converged,
    placed after the errors."""
    rows = [
        {"severity": "warning", "check": "not_converged", "model": m, "n_train": n, "seed": pd.NA, "message": text}
        for m, n, text in convergence_messages(cells, budget_words(config))
    ]
    if not rows:
        return warnings
    added = pd.DataFrame(rows, columns=warnings.columns)
    errors = warnings[warnings["severity"] == "error"]
    rest = warnings[warnings["severity"] != "error"]
    out = pd.concat([errors, added, rest], ignore_index=True)
    for col in ("n_train", "seed"):
        out[col] = out[col].astype("Int64")
    return out


def answer_table(analysis: StudyAnalysis) -> pd.DataFrame:
    """One row per model (ANSWER_COLUMNS): mean test accuracy with its population CI (seeds and
    test-set sampling, ``population.population_accuracy``) at the smallest and the largest
    measured size, the data-efficiency score with its CI, mean training seconds of a
    run at the largest size, parameters, MACs and CPU latency (p50, one thread). The images
    needed per target are in ``analysis.needed``."""
    s = analysis.population if analysis.population is not None else analysis.summary
    rows = []
    for model in sorted(analysis.data.runs["model"].unique()):
        m = s[s["model"] == model].sort_values("n_train")
        row = {"model": model}
        for end, pick in (("smallest", m.head(1)), ("largest", m.tail(1))):
            r = pick.iloc[0] if len(pick) else None
            row.update(
                {
                    f"n_{end}": r["n_train"] if r is not None else pd.NA,
                    f"acc_{end}": r["mean"] if r is not None else np.nan,
                    f"acc_{end}_ci_low": r["ci_low"] if r is not None else np.nan,
                    f"acc_{end}_ci_high": r["ci_high"] if r is not None else np.nan,
                }
            )
        sc = analysis.scores[analysis.scores["model"] == model]
        row.update(
            score=sc["score"].iloc[0] if len(sc) else np.nan,
            score_ci_low=sc["ci_low"].iloc[0] if len(sc) else np.nan,
            score_ci_high=sc["ci_high"].iloc[0] if len(sc) else np.nan,
        )
        tc = analysis.training_costs[analysis.training_costs["model"] == model]
        row["train_seconds_largest"] = tc.sort_values("n_train")["train_seconds"].iloc[-1] if len(tc) else np.nan
        mc = analysis.model_costs[analysis.model_costs["model"] == model]
        for col in ("n_params", "macs", "latency_p50_ms_1t"):
            row[col] = mc[col].iloc[0] if len(mc) else np.nan
        rows.append(row)
    frame = pd.DataFrame(rows, columns=ANSWER_COLUMNS)
    for col in ("n_smallest", "n_largest", "n_params"):
        frame[col] = pd.to_numeric(frame[col]).astype("Int64")
    return frame
