"""Comparing arms across the datasets of one study (``[[datasets]]``), as Demšar (2006) compares
classifiers over data sets: average ranks, a Friedman test with the datasets as blocks, the
Nemenyi critical difference, and images needed normalised so datasets can be read together.

Each dataset of such a study is a study of its own in the store (``<study>/<dataset>``, its
config's ``group`` naming the study), analysed on its own by ``analysis.analyse``; the functions
here take those analyses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from analysis.stats import RankTests, rank_tests
from analysis.study_analysis import StudyAnalysis
from study.store.engine import open_database
from study.store.schema import StudyRow

SIZE_RANK_COLUMNS = ["size_kind", "size_value", "model", "average_rank", "n_datasets"]
NORMALISED_COLUMNS = [
    "dataset",
    "model",
    "target",
    "target_label",
    "n_star",
    "ci_low",
    "ci_high",
    "extrapolated",
    "upper_bound",
    "n_pool",
    "share_of_pool",
    "times_fewest",
]


def dataset_study_names(url: str, group: str) -> list[str]:
    """The studies, one per dataset, of the study of several datasets called ``group`` (in the
    order they were made); none when ``group`` is a study of one dataset or not in the store."""
    return [name for name, config in _configs(url) if config.get("group") == group and name != group]


def _configs(url: str) -> list[tuple[str, dict]]:
    """(name, config) of every study in the store, in the order they were made; none when the
    database is not a study database (``load_study`` says so)."""
    try:
        with Session(open_database(url, create=False)) as s, s.begin():
            rows = s.execute(select(StudyRow.name, StudyRow.config).order_by(StudyRow.id)).all()
    except Exception:
        return []
    return [(name, config or {}) for name, config in rows]


def only_study(url: str) -> str | None:
    """The study of several datasets that every study in the store belongs to, if there is one."""
    groups = {config.get("group", "") for _, config in _configs(url)}
    return groups.pop() if len(groups) == 1 and "" not in groups else None


@dataclass
class DatasetComparison:
    """The arms across datasets. ``datasets``: dataset label -> its analysis (tables labelled by
    arm); ``size_ranks``: average rank of each arm's mean test accuracy per size (rank 1 = most
    accurate, datasets as blocks; SIZE_RANK_COLUMNS); ``overall``: average ranks of the arms'
    data-efficiency scores, the Friedman test with datasets as blocks and the Nemenyi post-hoc
    (``stats.RankTests``); ``scores``: the score per (dataset, arm); ``normalised``: images
    needed per arm and dataset (NORMALISED_COLUMNS)."""

    datasets: dict[str, StudyAnalysis]
    size_ranks: pd.DataFrame
    overall: RankTests
    scores: pd.DataFrame
    normalised: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        """name -> table, the CSV files of the cross-dataset report."""
        return {
            "dataset_scores": self.scores,
            "ranks_per_size": self.size_ranks,
            "average_ranks_over_datasets": self.overall.ranks,
            "friedman_over_datasets": self.overall.friedman,
            "nemenyi_over_datasets": self.overall.posthoc,
            "images_needed_normalised": self.normalised,
        }


def compare_datasets(analyses: dict[str, StudyAnalysis], alpha: float = 0.05) -> DatasetComparison:
    """Rank the arms on every dataset and across them (see ``DatasetComparison``). Only arms that
    every dataset has enter the ranks: a block must rank the same arms."""
    means = pd.concat(
        [
            a.data.done.groupby(["model", "size_kind", "size_value"], as_index=False)["test_acc"]
            .mean()
            .assign(dataset=name)
            for name, a in analyses.items()
        ],
        ignore_index=True,
    )
    rows = []
    for (kind, value), group in means.groupby(["size_kind", "size_value"], sort=True):
        ranks = _ranks(group, "test_acc", alpha).ranks
        rows += [
            {
                "size_kind": kind,
                "size_value": value,
                "model": r["model"],
                "average_rank": r["average_rank"],
                "n_datasets": r["n_blocks"],
            }
            for _, r in ranks.iterrows()
        ]
    scores = pd.concat(
        [a.scores[["model", "score", "ci_low", "ci_high"]].assign(dataset=name) for name, a in analyses.items()],
        ignore_index=True,
    )[["dataset", "model", "score", "ci_low", "ci_high"]]
    return DatasetComparison(
        datasets=analyses,
        size_ranks=pd.DataFrame(rows, columns=SIZE_RANK_COLUMNS),
        overall=_ranks(scores.dropna(subset=["score"]), "score", alpha),
        scores=scores,
        normalised=normalised_needed(analyses),
    )


def _ranks(frame: pd.DataFrame, metric: str, alpha: float) -> RankTests:
    """``stats.rank_tests`` with the datasets as its blocks (one size, each dataset a 'seed')."""
    blocks = frame.assign(size_kind="all", size_value=0.0, fraction=1.0, n_train=0, seed=frame["dataset"])
    return rank_tests(blocks, alpha, metric=metric)


def normalised_needed(analyses: dict[str, StudyAnalysis]) -> pd.DataFrame:
    """Images each arm needs per dataset and target (the dataset's own targets, which by default
    are shares of its best full-data accuracy), normalised two ways so that datasets of
    different sizes read together: as a share of the dataset's training pool, and as a multiple
    of the fewest images any arm needs on that dataset for that target."""
    rows = []
    for name, a in analyses.items():
        n_pool = a.data.splits.get("n_pool", np.nan)
        labels = dict(zip(a.targets["target"], a.targets["label"], strict=True))
        needed = a.needed[np.isfinite(a.needed["n_star"].astype(float))]
        for target, group in needed.groupby("target"):
            fewest = group["n_star"].astype(float).min()
            for _, r in group.iterrows():
                n_star = float(r["n_star"])
                rows.append(
                    {
                        "dataset": name,
                        "model": r["model"],
                        "target": target,
                        "target_label": labels.get(target, f"{target:.1%}"),
                        "n_star": n_star,
                        "ci_low": r["ci_low"],
                        "ci_high": r["ci_high"],
                        "extrapolated": bool(r["extrapolated"]),
                        "upper_bound": bool(r["upper_bound"]),  # reached at the smallest measured size
                        "n_pool": n_pool,
                        "share_of_pool": n_star / n_pool if n_pool else np.nan,
                        "times_fewest": n_star / fewest if fewest > 0 else np.nan,
                    }
                )
    return pd.DataFrame(rows, columns=NORMALISED_COLUMNS)
