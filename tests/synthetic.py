"""A study written into a real store through ``study.store.Store`` with realistic, known numbers:
for testing the analysis and the report without training (the real end-to-end runs live in
test_cli.py and test_report.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import update

from study.store import Cell, ModelCostRow, RunRow, Store

CLASS_NAMES = ["zero", "one", "two", "three", "four"]
WORKER = "synthetic:1"


def power_law(n: float, a: float, b: float, c: float) -> float:
    """acc(n) = a - b * n^-c, the known curve the synthetic runs are drawn around."""
    return a - b * n**-c


@dataclass
class SyntheticStudy:
    url: str
    name: str
    y_test: np.ndarray
    curves: dict[str, tuple[float, float, float]]
    sizes: dict[float, int]
    accuracies: dict[tuple[str, float, int], float] = field(default_factory=dict)


def make_study(
    path: Path,
    curves: dict[str, tuple[float, float, float]] | None = None,
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0),
    seeds: int = 5,
    pool: int = 2000,
    n_test: int = 400,
    noise: float = 0.01,
    failed: tuple[tuple[str, float, int], ...] = (),
    pending: tuple[tuple[str, float, int], ...] = (),
    costs: dict[str, dict] | None = None,
    name: str = "synthetic",
    seed: int = 0,
    epochs: int = 3,
    val_curve: str = "rising",
) -> SyntheticStudy:
    """Write a finished study: every (model, fraction, seed) run done with test accuracy drawn
    around ``curves[model]`` (a power law in n) plus seed noise shared across models (a seed
    fixes the subset), except the cells listed in ``failed`` (recorded as failed with a
    DivergedError) and ``pending`` (never run). Test predictions are right on exactly
    round(acc * n_test) items, epochs are plausible, and ``costs`` rows go to model_costs.

    ``val_curve`` shapes each run's ``epochs`` validation accuracies: 'rising' climbs to the run's
    accuracy in the last epoch (a run cut short), 'plateau' reaches it by the third epoch and
    stays there (a run that converged early)."""
    curves = curves or {
        "mobilenetv2_100": (0.93, 4.0, 0.55),
        "mobilevit_xxs": (0.95, 6.0, 0.55),
        "resnet18": (0.90, 3.0, 0.5),
    }
    rng = np.random.default_rng(seed)
    store = Store(f"sqlite:///{path}")
    y_test = np.arange(n_test) % len(CLASS_NAMES)
    dataset = {
        "name": "synthetic-digits",
        "class_names": CLASS_NAMES,
        "n_images": pool + n_test + 500,
        "image_shape": [16, 16, 3],
        "class_counts": [(pool + n_test + 500) // 5] * 5,
        "official_test_split": False,
        "skipped_files": 0,
    }
    splits = {
        "n_test": n_test,
        "n_val": 500,
        "n_pool": pool,
        "dropped_duplicates": 0,
        "duplicate_groups": 0,
        "warnings": [],
    }
    config = {
        "name": name,
        "models": sorted(curves),
        "fractions": list(fractions),
        "seeds": seeds,
        "data": {
            "dataset": "digits",
            "image_size": 16,
            "min_per_class": 2,
            "root": "",
            "test_root": "",
            "cache_dir": "",
        },
        "train": {
            "epochs": epochs,
            "min_steps": 10,
            "batch_size": 32,
            "optimizer": "adamw",
            "lr": 1e-3,
            "augment": "standard",
            "normalization": "model",
        },
    }
    study_id = store.open_study(name, "fp", {"synthetic": True}, config, dataset, splits, y_test)
    sizes = {f: int(round(f * pool)) for f in fractions}
    store.add_cells(
        study_id,
        [
            (Cell(m, "fraction", f, s), sizes[f], sizes[f] / pool)
            for f in fractions
            for m in sorted(curves)
            for s in range(seeds)
        ],
    )
    seed_effect = rng.normal(
        0, noise, size=(len(fractions), seeds)
    )  # the subset drawn by a seed helps or hurts every model
    out = SyntheticStudy(store.url, name, y_test, curves, sizes)
    held = []  # runs claimed but left unfinished: put back to pending below
    while (run := store.claim(study_id, WORKER)) is not None:
        key = (run.model, run.size_value, run.seed)
        if key in pending:
            held.append(run.id)
            continue
        if key in failed:
            store.fail(
                run.id, WORKER, "DivergedError: loss became nan at epoch 2\nTraceback (most recent call last): ..."
            )
            continue
        n = run.n_train
        mean = (
            power_law(n, *curves[run.model])
            + seed_effect[fractions.index(run.size_value), run.seed]
            + rng.normal(0, noise / 2)
        )
        correct = int(round(np.clip(mean, 0, 1) * n_test))
        predictions = y_test.copy()
        wrong = rng.choice(n_test, n_test - correct, replace=False)
        predictions[wrong] = (y_test[wrong] + 1 + rng.integers(0, len(CLASS_NAMES) - 1, len(wrong))) % len(CLASS_NAMES)
        acc = correct / n_test
        out.accuracies[key] = acc
        history = [
            {
                "epoch": e,
                "train_loss": 1.6 / e,
                "train_acc": min(1.0, acc * (0.8 + 0.1 * e)),
                "val_loss": 1.7 / e,
                "val_acc": _val_curve(val_curve, acc, e, epochs),
                "lr": 1e-3,
                "seconds": n / 900,
                "images_seen": n * e,
            }
            for e in range(1, epochs + 1)
        ]
        fields = {
            "hparams": config["train"],
            "hparams_source": "config",
            "val_acc": acc,
            "test_acc": acc,
            "test_loss": 1.0 - acc,
            "test_f1": acc,
            "best_epoch": int(np.argmax([h["val_acc"] for h in history])) + 1,
            "epochs_run": epochs,
            "train_seconds": epochs * n / 900 + 0.5,
            "images_per_second": 900.0 * (1 + 0.1 * sorted(curves).index(run.model)),
            "n_params": {"mobilenetv2_100": 2_236_682, "mobilevit_xxs": 951_666, "resnet18": 11_181_642}.get(
                run.model, 100_000
            ),
            "peak_memory_mb": 850.0,
            "device": "cpu",
            "environment": {
                "python": "3.11.7",
                "torch": "2.14.1",
                "timm": "1.0.31",
                "numpy": "2.4.6",
                "device": "cpu",
                "host": "testhost",
                "cpu_count": 2,
            },
        }
        assert store.finish(run.id, WORKER, fields, history, predictions)
    with store.session() as s:
        s.execute(update(RunRow).where(RunRow.id.in_(held)).values(status="pending", worker=None))
    for model, row in (costs or {}).items():
        with store.session() as s:
            s.add(ModelCostRow(study_id=study_id, model=model, **row))
    return out


def _val_curve(shape: str, acc: float, epoch: int, epochs: int) -> float:
    """Validation accuracy at ``epoch`` of ``epochs`` for a run that ends at ``acc``."""
    if shape == "plateau":
        return acc * (1 - 0.3 * max(0, 3 - epoch) / 2)
    return acc * (1 - 0.15 * (epochs - epoch) / max(1, epochs - 1))


REALISTIC_COSTS = {
    "mobilenetv2_100": {
        "input_size": 16,
        "n_params": 2_236_682,
        "macs": 1.9e6,
        "size_mb": 8.6,
        "latency_p50_ms_1t": 2.1,
        "latency_p95_ms_1t": 2.6,
        "latency_p50_ms_all": 1.4,
        "latency_p95_ms_all": 1.9,
        "threads_all": 2,
    },
    "resnet18": {
        "input_size": 16,
        "n_params": 11_181_642,
        "macs": 9.3e6,
        "size_mb": 42.7,
        "latency_p50_ms_1t": 3.2,
        "latency_p95_ms_1t": 3.9,
        "latency_p50_ms_all": 2.0,
        "latency_p95_ms_all": 2.4,
        "threads_all": 2,
    },
}
