"""ImageNet in its distributed layouts (written by the tests: a few synsets of real JPEGs), and
subset lists: a size that is exactly the images a file names, for every seed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from study import execute
from study.config import DataConfig, StudyConfig
from study.datasets import load_dataset
from study.errors import UserError
from study.plan import load_data_and_lists
from tests.conftest import FAST_MODEL, class_image

WNIDS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark
DEVKIT_ORDER = ["n01484850", "n01440764", "n01443537"]  # the devkit's IDs 1..3 follow its own order
N_TRAIN, N_VAL = 12, 4
SMALL = [
    "--models",
    FAST_MODEL,
    "--image-size",
    "16",
    "--budget",
    "fixed",
    "--no-budget-control",
    "--epochs",
    "1",
    "--min-steps",
    "3",
    "--threads",
    "1",
]


def write_imagenet(root: Path, val: str = "devkit", seed: int = 0) -> Path:
    """train/<wnid>/<wnid>_<n>.JPEG and a labelled val/ in one of the layouts: 'devkit' (flat, with
    ILSVRC2012_validation_ground_truth.txt and meta.mat), 'kaggle' (flat, LOC_val_solution.csv) or
    'folders' (a folder per synset); LOC_synset_mapping.txt names the classes."""
    rng = np.random.default_rng(seed)
    for label, wnid in enumerate(WNIDS):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(N_TRAIN):
            Image.fromarray(class_image(rng, label, (28, 36))).save(folder / f"{wnid}_{100 + i}.JPEG", quality=90)
    (root / "val").mkdir()
    truth, solution = [], ["ImageId,PredictionString"]
    for n in range(1, N_VAL * len(WNIDS) + 1):
        label = (n * 7) % len(WNIDS)  # interleaved, as the real validation set is
        image = f"ILSVRC2012_val_{n:08d}"
        folder = root / "val" / (WNIDS[label] if val == "folders" else "")
        folder.mkdir(exist_ok=True)
        Image.fromarray(class_image(rng, label, (30, 30))).save(folder / f"{image}.JPEG", quality=90)
        truth.append(str(DEVKIT_ORDER.index(WNIDS[label]) + 1))
        solution.append(f"{image},{WNIDS[label]} 1 2 20 20")
    if val == "devkit":
        data = root / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(truth) + "\n")
        synsets = np.zeros(4, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
        for i, wnid in enumerate(DEVKIT_ORDER):
            synsets[i] = (i + 1, wnid, "fish", 0)
        synsets[3] = (1001, "n00000001", "a parent synset", 3)  # not a class: it has children
        scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    elif val == "kaggle":
        (root / "LOC_val_solution.csv").write_text("\n".join(solution) + "\n")
    names = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark, white shark"]
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(WNIDS, names)))
    return root


def _expected_val_labels() -> list[int]:
    return [(n * 7) % len(WNIDS) for n in range(1, N_VAL * len(WNIDS) + 1)]


@pytest.mark.parametrize("layout", ["devkit", "kaggle", "folders"])
def test_every_validation_layout_gives_the_same_labelled_test_split(tmp_path, layout):
    root = write_imagenet(tmp_path / "imagenet", layout)
    ds = load_dataset(DataConfig(dataset="imagenet", root=str(root), image_size=16), tmp_path / "cache")
    assert ds.class_names == ["tench", "goldfish", "great white shark"]
    assert ds.images.shape == (len(WNIDS) * (N_TRAIN + N_VAL), 16, 16, 3) and not ds.skipped
    assert np.bincount(ds.labels[~ds.test_mask]).tolist() == [N_TRAIN] * len(WNIDS)
    test_labels = ds.labels[ds.test_mask]
    if layout == "folders":  # read folder by folder: the same images, grouped by synset
        assert sorted(test_labels.tolist()) == sorted(_expected_val_labels())
    else:
        assert test_labels.tolist() == _expected_val_labels()
    # Each test image's pixels carry its class colour (class_image): the labels belong to the images.
    colour = ds.images[ds.test_mask].reshape(-1, 16 * 16, 3).mean(1).argmax(1)
    assert colour.tolist() == test_labels.tolist()
    assert ds.names[0].decode() == "n01440764/n01440764_100.JPEG"


@pytest.mark.parametrize(
    "breakage, fragment",
    [
        (lambda r: shutil.rmtree(r / "train"), "has no train/ folder"),
        (lambda r: (r / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").unlink(), "need the devkit's meta.mat"),
        (lambda r: shutil.rmtree(r / "ILSVRC2012_devkit_t12"), "is flat but no LOC_val_solution.csv"),
        (lambda r: (r / "train" / "cats").mkdir(), "is not a synset folder"),
    ],
)
def test_broken_layouts_are_refused_in_one_line(cli, tmp_path, breakage, fragment):
    root = write_imagenet(tmp_path / "imagenet")
    breakage(root)
    code, _, err = cli("run", "--out", tmp_path / "o", *SMALL, "--dataset", "imagenet", "--data-root", root, "--quiet")
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def _write_list(path: Path, names: list[str]) -> Path:
    path.write_text("# a published-style list: one training file name a line\n" + "\n".join(names) + "\n")
    return path


def test_a_subset_list_selects_exactly_its_images_for_every_seed(tmp_path):
    root = write_imagenet(tmp_path / "imagenet")
    listed = [f"{w}_{100 + i}.JPEG" for w in WNIDS for i in (1, 4, 9)] + ["n01443537/n01443537_102.JPEG"]
    lst = _write_list(tmp_path / "1percent.txt", listed)
    cfg = StudyConfig(
        out=str(tmp_path / "o"),
        data=DataConfig(dataset="imagenet", root=str(root), image_size=16, val_fraction=0.3),
        subset_lists=[str(lst)],
        fractions=[1.0],
    ).validate()
    assert cfg.sizes == [("fraction", 1.0), ("list", 0.0)]
    dataset, splits, _, (indices,) = load_data_and_lists(cfg)
    chosen = sorted(dataset.names[i].decode().rsplit("/", 1)[-1] for i in indices)
    assert chosen == sorted(n.rsplit("/", 1)[-1] for n in listed)
    assert set(indices) <= set(splits.pool)  # listed images are never drawn for validation


def test_a_study_with_a_subset_list_and_streamed_data_runs_end_to_end(cli, tmp_path):
    """The devkit layout, a subset list beside the nested fraction, and a memory budget of a few
    images: every run streams its images from the cache, trains, is evaluated and recorded."""
    from analysis.load import load_study

    root = write_imagenet(tmp_path / "imagenet")
    lst = _write_list(tmp_path / "1percent.txt", [f"{w}_{100 + i}.JPEG" for w in WNIDS for i in range(4)])
    out = tmp_path / "o"
    code, _, err = cli(
        "run",
        "--out",
        out,
        *SMALL,
        "--dataset",
        "imagenet",
        "--data-root",
        root,
        "--fractions",
        "1.0",
        "--subset-list",
        lst,
        "--seeds",
        "2",
        "--memory-budget",
        "4KB",
        "--jobs",
        "1",
        "--quiet",
    )
    assert code == 0, err
    (state,) = execute._STATE.values()  # --jobs 1: the runs were done in this process
    assert set(state.data.decisions) == {"streamed"} and len(state.data.decisions) == 4
    data = load_study(f"sqlite:///{out / 'study.db'}")
    done = data.done
    assert len(done) == 4 and set(done["size_kind"]) == {"fraction", "list"}
    lists = done[done["size_kind"] == "list"]
    assert set(lists["n_train"]) == {12} and set(lists["subset_list"]) == {"1percent.txt"}
    assert data.dataset["class_names"] == ["tench", "goldfish", "great white shark"]
    assert data.splits["n_test"] == N_VAL * len(WNIDS)
    results = (out / "results.csv").read_text()
    assert "1percent.txt" in results
    assert "1percent.txt" in (out / "report" / "report.md").read_text()


def test_a_subset_list_naming_an_image_outside_the_training_pool_is_refused(cli, tmp_path):
    root = write_imagenet(tmp_path / "imagenet")

    def run_with(lst):
        return cli(
            "run",
            "--out",
            tmp_path / "o",
            *SMALL,
            "--dataset",
            "imagenet",
            "--data-root",
            root,
            "--subset-list",
            lst,
            "--quiet",
        )

    lst = _write_list(tmp_path / "bad.txt", ["n01440764_100.JPEG", "n09999999_1.JPEG"])
    code, _, err = run_with(lst)
    assert code == 2 and "'n09999999_1.JPEG', which is not in the training pool" in err
    assert len(err.strip().splitlines()) == 1
    # A validation image is not a training image either.
    lst = _write_list(tmp_path / "val.txt", ["ILSVRC2012_val_00000001.JPEG"])
    code, _, err = run_with(lst)
    assert code == 2 and "ILSVRC2012_val_00000001.JPEG" in err
    code, _, err = cli("run", "--out", tmp_path / "o", *SMALL, "--subset-list", tmp_path / "missing.txt", "--quiet")
    assert code == 2 and "missing.txt' does not exist" in err


def test_a_subset_list_refuses_a_file_name_two_classes_share(tmp_path):
    from study.subsets import resolve

    names = np.array([b"cat/0.png", b"dog/0.png", b"dog/1.png"])
    lst = _write_list(tmp_path / "l.txt", ["0.png"])
    with pytest.raises(UserError, match="several class folders share"):
        resolve(lst, names, np.arange(3))
    assert resolve(_write_list(tmp_path / "m.txt", ["dog/0.png", "1.png"]), names, np.arange(3)).tolist() == [1, 2]
