"""The convergence check (analysis/convergence.py, study/budget_control.py): studies whose runs
plateau early get no warning, studies cut short get one, and the budget control, when present,
decides a cell by the doubled budget's gain against the seed noise."""

from __future__ import annotations

import pytest
from synthetic import make_study

from analysis.convergence import budget_words
from analysis.load import load_control, load_study
from analysis.study_analysis import analyse
from reports.format import display_names
from reports.verdict import verdict
from study import config
from study.budget_control import FACTOR, control_config
from study.store.schema import control_name

CURVES = {"mobilenetv2_100": (0.93, 4.0, 0.55), "resnet18": (0.95, 3.0, 0.5)}


def _analysed(path, **kwargs):
    study = make_study(path / "study.db", curves=CURVES, seeds=3, epochs=6, **kwargs)
    data = load_study(study.url, study.name)
    a = analyse(data, n_boot_curves=20, n_boot_stats=200, control=load_control(data))
    return a, display_names(data.config, CURVES)


def test_a_study_whose_models_plateau_early_gets_no_convergence_warning(tmp_path):
    a, names = _analysed(tmp_path, val_curve="plateau")
    assert a.convergence["converged"].all()
    assert (a.convergence["evidence"] == "validation curves").all()
    assert "not_converged" not in set(a.warnings["check"])
    assert not a.convergence_runs["rising"].any()
    headline = verdict(a, names).headline
    assert "under a 6-epoch budget, enough for every model" in headline
    assert "not converged" not in headline


@pytest.mark.parametrize(
    "epochs, words", [(6, "a 6-epoch budget"), (8, "an 8-epoch budget"), (11, "an 11-epoch budget")]
)
def test_the_budget_is_named_with_its_article(epochs, words):
    assert budget_words({"train": {"epochs": epochs}}) == words


def test_a_study_cut_short_gets_the_warning_in_the_banner_rows_and_the_headline(tmp_path):
    a, names = _analysed(tmp_path, val_curve="rising")
    assert not a.convergence["converged"].any()
    warned = a.warnings[a.warnings["check"] == "not_converged"]
    assert len(warned) == len(a.convergence) == 8  # 2 models x 4 sizes
    assert "had not converged under a 6-epoch budget" in warned["message"].iloc[0]
    assert a.convergence_runs["best_is_last"].all() and a.convergence_runs["rising"].all()
    assert "under a 6-epoch budget; MobileNetV2 and ResNet-18 had not converged" in verdict(a, names).headline


def test_the_budget_control_decides_its_cells_by_the_gain_over_the_seed_noise(tmp_path):
    # The study plateaus (its curves alone would pass); the control, trained longer, is far
    # better for MobileNetV2 and the same for ResNet-18.
    better = {"mobilenetv2_100": (0.93 + 0.12, 4.0, 0.55), "resnet18": CURVES["resnet18"]}
    make_study(
        tmp_path / "study.db", curves=better, fractions=(0.1, 1.0), seeds=1, name=control_name("synthetic"), noise=0.0
    )
    a, names = _analysed(tmp_path, val_curve="plateau")
    cells = a.convergence.set_index(["model", "n_train"])
    controlled = cells[cells["evidence"] == "budget control"]
    assert len(controlled) == 4  # 2 models at the smallest and the largest size
    assert not controlled.loc["mobilenetv2_100", "converged"].any()
    assert (controlled.loc["mobilenetv2_100", "control_gain"] > controlled.loc["mobilenetv2_100", "threshold"]).all()
    # the companion's changed test images come from the two studies' predictions: its gain has a bound
    mnv2 = controlled.loc["mobilenetv2_100"]
    assert (mnv2["control_bound"] > mnv2["threshold"]).all() and (mnv2["control_bound"] < mnv2["control_gain"]).all()
    assert controlled.loc["resnet18", "converged"].all()
    assert (cells[cells["evidence"] == "validation curves"]["converged"]).all()
    assert "MobileNetV2 had not converged" in verdict(a, names).headline
    # The control is no study of its own: `report` without --name still finds the one study.
    assert load_study(a.data.storage_url).name == "synthetic"


def test_the_convergence_figure_is_written_in_three_formats_with_the_control_where_it_ran(tmp_path):
    from PIL import Image

    from analysis.convergence import RISE_TOLERANCE
    from reports import figure_style, run_figures, write_report

    better = {"mobilenetv2_100": (0.93 + 0.12, 4.0, 0.55), "resnet18": CURVES["resnet18"]}
    make_study(
        tmp_path / "study.db", curves=better, fractions=(0.1, 1.0), seeds=1, name=control_name("synthetic"), noise=0.0
    )
    a, names = _analysed(tmp_path, val_curve="plateau")
    folder = write_report(a.data, tmp_path / "out", analysis=a)
    png = folder / "figures" / "convergence.png"
    with Image.open(png) as img:
        img.verify()
    assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF-")
    svg = png.with_suffix(".svg").read_text(encoding="utf-8")
    assert "final-epoch validation gain (pp)" in svg and "test gain, 2× budget (pp)" in svg  # two panels
    assert "cell's threshold" in svg and "MobileNetV2" in svg and "ResNet-18" in svg
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert "](figures/convergence.png)" in report
    assert "Top: the final-epoch validation gain of each finished run" in report and "seed 0 with twice" in report
    # the verdict's rule in words: the gain's bound, since the changed test images were counted
    assert "beyond its own noise: its one-sided 95% lower bound, paired over the test images" in report
    assert "gain's 95% lower bound" in svg

    # Without a control (and with runs still rising): one panel, the rising runs drawn as such.
    b, names = _analysed(tmp_path / "rising", val_curve="rising")
    path = run_figures.convergence(
        b.convergence_runs, b.convergence, tmp_path / "f" / "c.png", RISE_TOLERANCE, names=names
    )
    assert all(path.with_suffix(f".{ext}").stat().st_size > 0 for ext in figure_style.FORMATS)
    svg = path.with_suffix(".svg").read_text(encoding="utf-8")
    assert "final-epoch validation gain (pp)" in svg and "2× budget" not in svg and "run still rising" in svg


def test_control_config_trains_seed_0_at_the_ends_with_twice_the_budget():
    on = {"budget_control": True, "train.budget": "fixed"}
    cfg = config.load(None, {**on, "fractions": "0.1,0.25,0.5,1.0", "train.epochs": 5, "train.min_steps": 60})
    control = control_config(cfg)
    assert control.name == "default+budget-x2"
    assert control.fractions == [0.1, 1.0] and control.seeds == 1
    assert (control.train.epochs, control.train.min_steps) == (5 * FACTOR, 60 * FACTOR)
    assert not control.costs and not control.budget_control
    assert control_config(config.load(None, {"budget_control": False})) is None
    assert control_config(config.load(None, {**on, "tune.trials": 3})) is None
    per_class = control_config(config.load(None, {**on, "per_class": "5,10,50", "fractions": []}))
    assert per_class.per_class == [5, 50]
    # The plateau budget's runs carry their control: no companion study.
    assert control_config(config.load(None, {"budget_control": True})) is None


@pytest.mark.parametrize("key", ["display_names"])
def test_display_names_come_from_the_config_with_readable_defaults(key):
    cfg = config.load(None, {key: {"resnet18": "RN18"}})
    names = display_names(config.to_dict(cfg), ["resnet18", "mobilevit_xxs", "my_model"])
    assert names == {"resnet18": "RN18", "mobilevit_xxs": "MobileViT-XXS", "my_model": "my_model"}


@pytest.mark.slow  # eight real runs and two reports (~2 min on 2 cores)
def test_run_with_budget_control_trains_the_control_and_the_report_uses_it(tmp_path, cli):
    from tests.conftest import FAST_MODEL

    out = tmp_path / "o"
    args = [
        *["--out", out, "--models", FAST_MODEL, "--image-size", "16"],
        *["--budget", "fixed", "--no-budget-control", "--epochs", "1", "--min-steps", "2"],
    ]
    code, stdout, err = cli(
        "run",
        *args,
        "--fractions",
        "0.25,0.5,1.0",
        "--seeds",
        "2",
        "--jobs",
        "1",
        "--quiet",
        "--no-costs",
        "--budget-control",
    )
    assert code == 0, err
    assert "budget control: 2 done, 0 failed" in stdout
    control = load_study(f"sqlite:///{out / 'study.db'}", control_name("default"))
    assert len(control.done) == 2 and set(control.done["epochs_run"]) == {2}  # twice the one epoch
    assert sorted(control.done["size_value"]) == [0.25, 1.0] and set(control.done["seed"]) == {0}
    html = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "Budget control: seed 0 of each model" in html and "budget control</td>" in html
    code, stdout, err = cli("report", "--out", out)  # the control is no second study to choose from
    assert code == 0, err


def test_the_controls_bound_is_the_gain_less_its_paired_noise_and_decides_the_cell():
    import numpy as np
    import pandas as pd

    from analysis.convergence import cell_convergence, gain_bound

    # 20 test images gained and 5 lost of 359: gain 15/359 = 4.18 pp, paired standard error
    # sqrt(25 - 15**2 / 359) / 359 = 1.375 pp, one-sided 95% bound 4.18 - 1.645 x 1.375 = 1.92 pp.
    assert gain_bound(20, 5, 359) == pytest.approx(0.01916, abs=5e-5)
    assert gain_bound(0, 0, 359) == 0.0  # nothing changed: no gain, no noise
    assert np.isnan(gain_bound(np.nan, np.nan, 359))  # a control stored without its changed images

    # Three cells of three seeds with a seed spread of 0.5 pp (threshold: the 1 pp floor), each
    # with a control gaining 12 images more than it lost on 359.
    seeds = [0.90, 0.905, 0.91]
    done = pd.DataFrame(
        [{"model": m, "n_train": 100, "seed": s, "test_acc": a} for m in "abc" for s, a in enumerate(seeds)]
    )
    runs = done.assign(capped=False, rising=False, best_is_last=False)
    gain = 12 / 359
    control = pd.DataFrame(
        [
            {
                "model": m,
                "n_train": 100,
                "seed": 0,
                "test_acc": 0.90 + gain,
                "epochs_run": 400,
                "gained": g,
                "lost": lost,
            }
            for m, g, lost in [("a", 12, 0), ("b", 24, 12), ("c", np.nan, np.nan)]
        ]
    )
    cells = cell_convergence(done, runs, control, n_test=359).set_index("model")
    assert np.allclose(cells["control_gain"], gain) and np.allclose(cells["threshold"], 0.01)
    # a: 12 images gained and none lost is a gain clear of its noise (bound 1.8 pp): not converged;
    # b: the same gain out of 36 changed images is within it (bound 0.6 pp): converged;
    # c: without the changed images, the gain alone decides (3.3 pp > 1 pp): not converged.
    assert cells.loc["a", "control_bound"] > 0.01 and not cells.loc["a", "converged"]
    assert cells.loc["b", "control_bound"] < 0.01 and cells.loc["b", "converged"]
    assert np.isnan(cells.loc["c", "control_bound"]) and not cells.loc["c", "converged"]


def test_the_controls_bound_has_its_level_on_simulated_test_sets_with_a_known_gain():
    import numpy as np

    from analysis.convergence import LEVEL, gain_bound

    # Two checkpoints on 359 images: each image is gained with probability 4%, lost with 2%, so
    # the true gain is 2 points. The bound must fall below it in LEVEL of the test sets.
    rng = np.random.default_rng(0)
    draws = rng.multinomial(359, [0.04, 0.02, 0.94], size=4000)
    covered = np.mean([gain_bound(g, lost, 359) <= 0.02 for g, lost, _ in draws])
    assert abs(covered - LEVEL) < 0.015  # Monte Carlo SE 0.0034
