"""Arms: named ways to train (a model plus [train] keys of its own), from ``--arm`` and
``[[arms]]``; cells, results, fingerprints and the report per arm. Weights files are written by
the tests themselves."""

from __future__ import annotations

import csv
import re
import sqlite3

import pytest
import timm
import torch
from safetensors.torch import save_file

from study import config
from study.errors import UserError
from study.store import Store
from tests.conftest import FAST_MODEL

# A tiny study: test_resnet at 16 px, two rounds, on the bundled digits.
TINY = [
    "--image-size",
    "16",
    "--budget",
    "fixed",
    "--no-budget-control",
    "--epochs",
    "2",
    "--min-steps",
    "4",
    "--threads",
    "1",
    "--jobs",
    "1",
    "--quiet",
]


def _refused(result, fragment):
    code, out, err = result
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("study: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in err


def _weights(path, seed: int = 3):
    """A test_resnet state dict (1000 ImageNet classes, as a pretrained file holds it)."""
    torch.manual_seed(seed)
    state = {k: v.clone().contiguous() for k, v in timm.create_model(FAST_MODEL).state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


# -- grammar and validation --------------------------------------------------------------------


def test_arm_flags_name_ways_to_train_and_resolve_their_settings():
    cfg = config.load(
        None,
        {
            "arms": [
                "vit-scratch=mobilevit_xxs",
                "vit-in1k=mobilevit_xxs,pretrained=true",
                "r18-probe=resnet18,pretrained=true,finetune=head,input_size=native",
            ]
        },
    )
    assert [a.name for a in cfg.study_arms] == ["vit-scratch", "vit-in1k", "r18-probe"]
    assert cfg.models == ["mobilevit_xxs", "resnet18"]  # the arms' distinct models
    scratch, in1k, probe = (a.resolved(cfg.train) for a in cfg.study_arms)
    assert (scratch.pretrained, scratch.lr) == (False, config.SCHEDULE_FREE_LR)
    assert (in1k.pretrained, in1k.lr) == (True, config.FINETUNE_LR)
    assert (probe.finetune, probe.input_size) == ("head", "native")
    # The config as stored and read back by a worker is the same study.
    assert config.from_stored(config.to_dict(cfg)) == cfg


def test_models_are_shorthand_for_arms_named_after_them(tmp_path):
    assert [(a.name, a.model, a.overrides) for a in config.load(None).study_arms] == [
        (m, m, {}) for m in config.DEFAULT_MODELS
    ]
    path = tmp_path / "s.toml"
    weights = _weights(tmp_path / "w.pth")
    path.write_text(
        f'models = ["resnet18"]\n[[arms]]\nname = "r18-file"\nmodel = "resnet18"\nweights = "{weights}"\nlr = 0.01\n'
    )
    cfg = config.load(path)
    assert [a.name for a in cfg.study_arms] == ["resnet18", "r18-file"]
    file_arm = cfg.arm("r18-file").resolved(cfg.train)
    assert file_arm.weight_files == {"resnet18": str(weights)} and file_arm.lr == 0.01
    assert cfg.arm("resnet18").resolved(cfg.train).weight_files == {}


@pytest.mark.parametrize(
    "arms, fragment",
    [
        (["x"], "--arm 'x' is invalid; use NAME=MODEL[,KEY=VALUE...]"),
        (["=resnet18"], "is invalid; use NAME=MODEL"),
        (["x=resnet18,lr"], "'lr' is not KEY=VALUE"),
        (["x=resnet18,colour=red"], "arm 'x': unknown key 'colour'; valid keys: name, model, epochs"),
        (["x=resnet18,lr=fast"], "arm 'x': lr='fast' is not a number"),
        (["x=resnet18,lr=20"], "arm 'x': lr=20.0 must be a learning rate"),
        (["x=resnet18,finetune=half"], "arm 'x': finetune='half' is unknown; valid: full, head"),
        (["x=resnet18,pretrained=maybe"], "arm 'x': pretrained='maybe' is not true or false"),
        (["x=resnet18", "x=mobilenetv2_100"], "arm name 'x' is given twice"),
        (["a|b=resnet18"], "arm name 'a|b' is invalid"),
    ],
)
def test_bad_arm_specs_are_refused_naming_the_arm_and_the_key(cli, tmp_path, arms, fragment):
    flags = [x for spec in arms for x in ("--arm", spec)]
    _refused(cli("run", "--out", tmp_path / "o", *flags, *TINY), fragment)
    assert not (tmp_path / "o" / "study.db").exists()  # nothing was started


@pytest.mark.parametrize(
    "table, fragment",
    [
        ('name = "x"\nmodel = "resnet18"\nfreeze = 2\n', "arm 'x': unknown key 'freeze'"),
        ('name = "x"\nmodel = "resnet18"\nepochs = "many"\n', "arm 'x': epochs='many' is not a whole number"),
        ('model = "resnet18"\n', "arm name None is invalid"),
        ('name = "x"\n', "arm 'x': model None must name a timm model"),
    ],
)
def test_bad_arm_tables_are_refused(tmp_path, table, fragment):
    path = tmp_path / "s.toml"
    path.write_text(f"[[arms]]\n{table}")
    with pytest.raises(UserError) as info:
        config.load(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_weights_file_that_does_not_fit_its_arm_stops_before_any_work(cli, tmp_path):
    other = {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}
    save_file(other, tmp_path / "r18.safetensors")
    _refused(
        cli("run", "--out", tmp_path / "o", "--arm", f"bad={FAST_MODEL},weights={tmp_path / 'r18.safetensors'}", *TINY),
        "arm 'bad': weights file",
    )
    _refused(
        cli("run", "--out", tmp_path / "o", "--arm", f"gone={FAST_MODEL},weights={tmp_path / 'nope.pth'}", *TINY),
        "arm 'gone': weights file",
    )
    assert not (tmp_path / "o" / "study.db").exists()


# -- a study of two arms of one model ----------------------------------------------------------


@pytest.mark.slow
def test_two_arms_of_one_model_run_and_the_report_compares_them_by_arm_name(cli, tmp_path):
    weights = _weights(tmp_path / "backbone.safetensors")
    out = tmp_path / "o"
    arms = ["--arm", f"scratch={FAST_MODEL}", "--arm", f"from-file={FAST_MODEL},weights={weights}"]
    study = ["--out", out, *arms, "--fractions", "0.5,1", "--seeds", "2", *TINY]
    code, _, err = cli("run", *study)
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["arm"], r["model"]) for r in rows} == {("scratch", FAST_MODEL), ("from-file", FAST_MODEL)}
    assert len(rows) == 8
    store = Store(f"sqlite:///{out / 'study.db'}", create=False)
    runs = store.runs(store.study("default").id)
    lr = {r.arm: r.hparams["lr"] for r in runs}
    assert lr == {"scratch": config.SCRATCH_LR, "from-file": config.FINETUNE_LR}  # each arm's own settings
    assert {r.arm: r.hparams["weights"] for r in runs}["from-file"] == [f"{FAST_MODEL}={weights}"]
    report = (out / "report" / "report.md").read_text()
    assert "scratch" in report and "from-file" in report
    assert "Pretraining's effect" in report
    answer = list(csv.DictReader(open(out / "report" / "answer.csv")))
    assert sorted(r["model"] for r in answer) == ["from-file", "scratch"]

    # A third arm adds its cells and reruns nothing.
    finished = {r.cell_key: r.finished_at for r in runs}
    code, _, err = cli("run", *study, "--arm", f"probe={FAST_MODEL},weights={weights},finetune=head", "--no-report")
    assert code == 0, err
    after = store.runs(store.study("default").id)
    assert len(after) == 12
    assert {r.cell_key: r.finished_at for r in after if r.cell_key in finished} == finished
    assert {r.arm for r in after if r.cell_key not in finished} == {"probe"}

    # Changing an existing arm's settings is refused, naming the arm and the setting.
    _refused(
        cli("run", "--out", out, "--arm", f"scratch={FAST_MODEL},lr=0.01", "--fractions", "0.5,1", *TINY),
        "arm 'scratch' of study 'default'",
    )
    code, _, err = cli("run", "--out", out, "--arm", f"scratch={FAST_MODEL},lr=0.01", *TINY)
    assert code == 2 and "lr=None" in err and "lr=0.01" in err


def test_a_database_written_before_arms_gets_an_arm_column_filled_with_the_model(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the runs and tuning_jobs tables as they were before arms
        conn.execute(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY, study_id INTEGER, cell_key VARCHAR(300), "
            "model VARCHAR(200), size_kind VARCHAR(16), size_value FLOAT, seed INTEGER, n_train INTEGER, "
            "fraction FLOAT, status VARCHAR(16))"
        )
        conn.execute(
            "INSERT INTO runs VALUES (1, 1, 'resnet18|fraction=1|seed=0', 'resnet18', 'fraction', 1, 0, 9, 1, 'done')"
        )
        conn.execute(
            "CREATE TABLE tuning_jobs (id INTEGER PRIMARY KEY, study_id INTEGER, optuna_study VARCHAR(500), "
            "model VARCHAR(200), size_kind VARCHAR(16), size_value FLOAT, status VARCHAR(16))"
        )
        conn.execute(
            "INSERT INTO tuning_jobs VALUES (1, 1, 's|tune|resnet18|fraction=1', 'resnet18', 'fraction', 1, 'done')"
        )
    Store(f"sqlite:///{db}", create=False)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT arm, model, cell_key FROM runs").fetchall() == [
            ("resnet18", "resnet18", "resnet18|fraction=1|seed=0")
        ]
        assert conn.execute("SELECT arm FROM tuning_jobs").fetchall() == [("resnet18",)]


# -- the analysis of arms (a synthetic store: no training) ------------------------------------


def _arms_study(tmp_path):
    """A synthetic finished study of three arms, two of them resnet18 (from scratch and
    pretrained), analysed: (its data, its analysis, the arms' settings)."""
    from sqlalchemy import update

    from analysis import analyse
    from analysis.load import load_study
    from study.store import RunRow, StudyRow
    from tests.synthetic import make_study

    # acc(n) = a - b n^-c: with b four times smaller, pretrained needs (1/4)^(1/c) = 1/16 the images.
    curves = {"r18-scratch": (0.95, 8.0, 0.5), "r18-in1k": (0.95, 2.0, 0.5), "mnv2": (0.95, 4.0, 0.5)}
    made = make_study(tmp_path / "s.db", curves=curves, fractions=(0.05, 0.1, 0.25, 0.5, 1.0), seeds=3, noise=0.002)
    store = Store(made.url, create=False)
    arms = {
        "r18-scratch": {"model": "resnet18"},
        "r18-in1k": {"model": "resnet18", "pretrained": True},
        "mnv2": {"model": "mobilenetv2_100", "pretrained": True},
    }
    with store.session() as s:
        for arm, keys in arms.items():
            s.execute(update(RunRow).where(RunRow.arm == arm).values(model=keys["model"]))
        s.execute(update(StudyRow).values(settings={"arms": arms}))
    data = load_study(made.url)
    return data, analyse(data, n_boot_curves=30, n_boot_stats=100), arms


def test_pretraining_effect_is_the_ratio_of_images_needed_from_scratch_to_pretrained(tmp_path):
    from analysis.arms import pretraining_effect
    from reports import write_report

    data, a, arms = _arms_study(tmp_path)
    assert set(zip(data.runs["arm"], data.runs["model"])) == {(a, k["model"]) for a, k in arms.items()}
    assert sorted(a.answer["model"]) == sorted(arms)  # the analysis compares arms, by name
    effect = pretraining_effect(a.data, a.ratios, a.needed)
    assert set(effect["model"]) == {"resnet18"}  # only resnet18 is trained both ways
    assert set(zip(effect["scratch_arm"], effect["pretrained_arm"])) == {("r18-scratch", "r18-in1k")}
    for _, r in effect.iterrows():
        assert r["ratio"] == pytest.approx(16, rel=0.25)
        assert r["ci_low"] <= r["ratio"] <= r["ci_high"]
        assert r["images_saved"] == pytest.approx(r["n_scratch"] - r["n_pretrained"])
    folder = write_report(data, tmp_path / "out", analysis=a)
    report = (folder / "report.md").read_text()
    assert "## Arms" in report and "| r18-in1k | resnet18 | pretrained weights | pretrained=True |" in report
    assert "from scratch (r18-scratch) it needs" in report and "the images it needs pretrained (r18-in1k)" in report


def test_tables_and_captions_of_a_study_with_arms_name_arms_not_models(tmp_path):
    import pandas as pd

    from reports import write_report

    data, a, arms = _arms_study(tmp_path)
    folder = write_report(data, tmp_path / "out", analysis=a)
    for name in ("table_accuracy", "table_convergence"):
        table = pd.read_csv(folder / f"{name}.csv")
        assert table.columns[0] == "Arm" and sorted(table["Arm"].unique()) == sorted(arms), name
        assert (folder / f"{name}.tex").read_text().count("Arm &") == 1
    report = (folder / "report.md").read_text()
    html = (folder / "index.html").read_text()
    # only pretraining's effect, per timm model, starts with a "model" column
    assert re.findall(r"^\| [Mm]odel \| [^|]+", report, re.M) == ["| model | from scratch "]
    assert re.findall(r"<tr><th>[Mm]odel</th><th>[^<]+", html) == ["<tr><th>model</th><th>from scratch"]
    assert "| Arm |" in report and "| arm | accuracy, smallest size |" in report
    assert "<th>arm</th>" in html and "per arm and training-set size" in report
    assert "Pairwise differences, better arm first" in report and "The study compares 3 arms (" in report


def test_cells_and_tuning_jobs_are_per_arm_and_costs_per_model_and_input_size(tmp_path):
    import numpy as np

    from study.costs import record_model_costs
    from study.plan import plan_cells, plan_tuning
    from tests.test_costs import tiny_conv_net

    cfg = config.load(
        None,
        {
            "arms": [f"small={FAST_MODEL}", f"large={FAST_MODEL},input_size=32"],
            "fractions": "0.5,1",
            "seeds": "2",
            "tune.trials": "3",
        },
    )
    cells = plan_cells(cfg)
    assert len(cells) == 2 * 2 * 2 and {c.arm for c in cells} == {"small", "large"}
    assert {c.model for c in cells} == {FAST_MODEL}
    assert cells[0].key == "small|fraction=0.5|seed=0"
    jobs = plan_tuning(cfg)
    assert [(j[0], j[4]) for j in jobs[:2]] == [
        ("default|tune|small|fraction=0.5", "small"),
        ("default|tune|large|fraction=0.5", "large"),
    ]
    # The arms of one model at two input sizes: its costs are measured at each size once.
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    sid = store.open_study("s", "fp", {}, {}, {}, {}, np.array([0]))
    pairs = [(FAST_MODEL, 16), (FAST_MODEL, 32), (FAST_MODEL, 16)]
    factory = lambda name, n: tiny_conv_net()  # noqa: E731  fast; costs only need a module
    assert record_model_costs(store, sid, pairs, 10, factory, progress=False) == [FAST_MODEL, FAST_MODEL]
    assert sorted(r.input_size for r in store.model_costs(sid)) == [16, 32]
    assert record_model_costs(store, sid, pairs, 10, factory, progress=False) == []
