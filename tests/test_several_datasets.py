"""Studies of several datasets (``[[datasets]]``): each dataset a study of its own with its own
splits, one report per dataset, and the arms compared across datasets (average ranks, Friedman
with datasets as blocks, critical-difference diagram, normalised images needed)."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from study import config
from study.errors import UserError
from study.store import Store
from tests.conftest import FAST_MODEL, write_imagefolder


def _toml(path, folder, extra: str = "") -> str:
    path.write_text(
        f"""fractions = [0.34, 0.67, 1.0]
seeds = 3
threads = 1
jobs = 1
budget_control = false
{extra}
[[arms]]
name = "scratch"
model = "{FAST_MODEL}"
[[arms]]
name = "fast-lr"
model = "{FAST_MODEL}"
lr = 0.01
[[arms]]
name = "sgd"
model = "{FAST_MODEL}"
optimizer = "sgd"

[[datasets]]
name = "digits"
dataset = "digits"

[[datasets]]
name = "shapes"
dataset = "imagefolder"
root = "{folder}"
image_size = 20

[data]
image_size = 16

[train]
budget = "fixed"
epochs = 2
min_steps = 4
"""
    )
    return path


def test_datasets_tables_take_the_data_keys_they_do_not_set(tmp_path):
    cfg = config.load(_toml(tmp_path / "s.toml", tmp_path / "folder"))
    digits, shapes = cfg.dataset_studies()
    assert (digits.name, digits.data.dataset, digits.data.image_size) == ("default/digits", "digits", 16)
    assert (shapes.name, shapes.data.dataset, shapes.data.image_size) == ("default/shapes", "imagefolder", 20)
    assert digits.group == shapes.group == "default" and not digits.datasets
    assert config.from_stored(config.to_dict(cfg)).datasets == cfg.datasets  # as a worker reads it back
    assert config.load(None).dataset_studies() == []  # a plain [data] study is one study, as before


@pytest.mark.parametrize(
    "tables, fragment",
    [
        ('[[datasets]]\nname = "a"\ndataset = "digits"\ncolour = 1\n', "unknown config key 'datasets.a.colour'"),
        ('[[datasets]]\ndataset = "digits"\n', "dataset name None is invalid"),
        ('[[datasets]]\nname = "a/b"\n', "dataset name 'a/b' is invalid"),
        ('[[datasets]]\nname = "a"\n[[datasets]]\nname = "a"\n', "dataset name 'a' is given twice"),
        ('[[datasets]]\nname = "a"\nimage_size = 4\n', "dataset 'a': image_size=4 is too small"),
    ],
)
def test_bad_datasets_tables_are_refused(tmp_path, tables, fragment):
    path = tmp_path / "s.toml"
    path.write_text(tables)
    with pytest.raises(UserError) as info:
        config.load(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_two_dataset_study_reports_each_dataset_and_compares_arms_across_them(cli, tmp_path):
    folder = write_imagefolder(tmp_path / "folder", {"a": 12, "b": 12, "c": 12}, mixed_modes=False)
    out = tmp_path / "o"
    code, _, err = cli("run", "--config", _toml(tmp_path / "s.toml", folder), "--out", out, "--quiet")
    assert code == 0, err
    store = Store(f"sqlite:///{out / 'study.db'}", create=False)
    assert store.study_names() == ["default/digits", "default/shapes"]
    digits, shapes = (store.study(n) for n in store.study_names())
    assert digits.splits["n_pool"] != shapes.splits["n_pool"]  # each dataset has its own splits
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 * 3 * 3 * 3  # datasets x arms x sizes x seeds
    assert {r["dataset"] for r in rows} == {"digits", "imagefolder"}

    # One full report per dataset, labelled by arm.
    for name in ("digits", "shapes"):
        report = (out / "datasets" / name / "report" / "report.md").read_text()
        assert "fast-lr" in report and "## Arms" in report

    # The report across datasets: per-dataset sections, ranks, Friedman over datasets, CD figure.
    report = (out / "report" / "report.md").read_text()
    assert "### digits" in report and "### shapes" in report
    assert "Average ranks per size" in report and "Friedman test over 2 datasets and 3 arms" in report
    ranks = list(csv.DictReader(open(out / "report" / "average_ranks_over_datasets.csv")))
    assert sorted(r["model"] for r in ranks) == ["fast-lr", "scratch", "sgd"]
    assert sum(float(r["average_rank"]) for r in ranks) == pytest.approx(6.0)  # 1 + 2 + 3 on each dataset
    per_size = list(csv.DictReader(open(out / "report" / "ranks_per_size.csv")))
    assert len(per_size) == 3 * 3
    figure = out / "report" / "figures" / "critical_difference.png"
    assert Image.open(figure).size[0] > 100
    assert "data:image/png;base64," in (out / "report" / "index.html").read_text()
    normalised = list(csv.DictReader(open(out / "report" / "images_needed_normalised.csv")))
    assert {r["dataset"] for r in normalised} == {"digits", "shapes"}
    for r in normalised:
        assert float(r["times_fewest"]) >= 1.0
        assert float(r["share_of_pool"]) == pytest.approx(float(r["n_star"]) / float(r["n_pool"]))

    # `study report` finds the study of several datasets from the store alone.
    (out / "report" / "report.md").unlink()
    code, _, err = cli("report", "--out", out)
    assert code == 0, err
    assert (out / "report" / "report.md").exists()
