import numpy as np
import pytest
from PIL import Image

from study.config import DataConfig
from study.datasets import load_dataset
from study.errors import UserError
from tests.conftest import write_imagefolder


def test_digits_are_upscaled_three_channel_uint8(tmp_path):
    ds = load_dataset(DataConfig(dataset="digits", image_size=24), tmp_path)
    assert ds.images.shape == (1797, 24, 24, 3) and ds.images.dtype == np.uint8
    assert ds.class_names == [str(i) for i in range(10)]
    assert np.array_equal(ds.images[..., 0], ds.images[..., 2])  # gray made 3-channel
    assert ds.images.max() == 255 and not ds.hflip


def test_imagefolder_decodes_every_mode_and_skips_corrupt_files(tmp_path):
    root = write_imagefolder(tmp_path / "data", {"cat": 8, "dog": 8})
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dog" / "notes.txt").write_text("not an image")
    good = Image.open(root / "dog" / "0.png")
    good.save(root / "dog" / "truncated.png")
    data = (root / "dog" / "truncated.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(data[: len(data) // 2])
    ds = load_dataset(DataConfig(dataset="imagefolder", root=str(root), image_size=16), tmp_path / "cache")
    assert ds.images.shape == (16, 16, 16, 3)
    assert ds.class_names == ["cat", "dog"]
    assert np.bincount(ds.labels).tolist() == [8, 8]
    assert len(ds.skipped) == 3
    assert any("broken.jpg" in s for s in ds.skipped) and any("truncated.png" in s for s in ds.skipped)


def test_decode_cache_is_reused_then_invalidated_by_a_changed_folder(tmp_path):
    root = write_imagefolder(tmp_path / "data", {"a": 5, "b": 5})
    cfg = DataConfig(dataset="imagefolder", root=str(root), image_size=16)
    first = load_dataset(cfg, tmp_path / "cache")
    cached = tmp_path / "cache" / f"imagefolder-{first.key}" / "images.npy"
    stamp = cached.stat().st_mtime_ns
    second = load_dataset(cfg, tmp_path / "cache")
    assert second.key == first.key and cached.stat().st_mtime_ns == stamp  # not decoded again
    assert isinstance(second.images, np.memmap)  # memory-mapped, not read into RAM
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "a" / "new.png")
    third = load_dataset(cfg, tmp_path / "cache")
    assert third.key != first.key and len(third) == len(first) + 1
    changed = DataConfig(dataset="imagefolder", root=str(root), image_size=20)
    assert load_dataset(changed, tmp_path / "cache").images.shape[1] == 20


def test_separate_test_folder_becomes_the_test_split(tmp_path):
    root = write_imagefolder(tmp_path / "train", {"a": 6, "b": 6})
    test = write_imagefolder(tmp_path / "test", {"a": 2, "b": 3}, seed=5)
    ds = load_dataset(
        DataConfig(dataset="imagefolder", root=str(root), test_root=str(test), image_size=16), tmp_path / "c"
    )
    assert ds.test_mask.sum() == 5 and len(ds) == 17
    assert np.bincount(ds.labels[ds.test_mask]).tolist() == [2, 3]


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "has no class folders"),
        (lambda root: (write_imagefolder(root, {"a": 4}), (root / "b").mkdir()), "class folder"),
        (
            lambda root: (
                write_imagefolder(root, {"a": 4}),
                (root / "b").mkdir(),
                (root / "b" / "x.png").write_text("no"),
            ),
            "has no readable image",
        ),
    ],
)
def test_bad_folders_are_refused_clearly(tmp_path, make, fragment):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(UserError, match=fragment) as info:
        load_dataset(DataConfig(dataset="imagefolder", root=str(root), image_size=16), tmp_path / "c")
    assert "\n" not in str(info.value)


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(
        UserError,
        match=(
            "dataset 'mnist' is unknown; valid: cifar10, cifar100, digits, imagefolder, imagenet, text-recognition, "
            "tiny-imagenet"
        ),
    ):
        load_dataset(DataConfig(dataset="mnist"), tmp_path)
