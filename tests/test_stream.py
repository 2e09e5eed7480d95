"""Runs whose images exceed the memory budget stream them from the cache file, and compute
exactly what the resident run computes."""

import numpy as np
import pytest
import torch

from study.config import DataConfig, TrainConfig
from study.datasets import load_dataset
from study.images import ImageFile, ImageSource, StreamedData, TrainData, image_source
from study.train import train_run
from tests.conftest import FAST_MODEL, class_image

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cache(tmp_path, n_per_class=14, classes=3, size=16):
    """A real images.npy as the cache writes it, memory-mapped read-only as workers open it."""
    rng = np.random.default_rng(0)
    images = np.stack([class_image(rng, c, (size, size)) for c in range(classes) for _ in range(n_per_class)])
    labels = np.repeat(np.arange(classes), n_per_class)
    np.save(tmp_path / "images.npy", images)
    return np.load(tmp_path / "images.npy", mmap_mode="r"), labels


def test_image_file_reads_any_indices_in_their_order(tmp_path):
    images, _ = _cache(tmp_path)
    file = ImageFile(tmp_path / "images.npy")
    for indices in ([5, 3, 4, 40, 0, 1, 2], [7, 7, 8, 6], list(range(42)), [41]):
        out = np.empty((len(indices), *images.shape[1:]), np.uint8)
        file.read_into(np.array(indices), out)
        np.testing.assert_array_equal(out, images[indices])


def test_image_file_refuses_a_truncated_cache(tmp_path):
    images, _ = _cache(tmp_path)
    path = tmp_path / "images.npy"
    file = ImageFile(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(OSError, match="truncated"):
        file.read_into(np.array([41]), np.empty((1, *images.shape[1:]), np.uint8))


def test_workers_on_a_cpu_share_the_caches_memory_map_not_a_copy(tmp_path):
    """What a worker process builds from the cache (``execute._worker_state``): the images of a
    resident run are the read-only map's own pages, which every worker of the machine shares."""
    dataset = load_dataset(DataConfig(dataset="digits", image_size=16), tmp_path)
    source = image_source(dataset, CPU, budget=2**30)
    assert source.path == str(tmp_path / f"digits-{dataset.key}" / "images.npy")
    assert isinstance(source.images, np.memmap) and not source.images.flags.writeable
    data = source.for_run(np.arange(10), np.arange(20, 30))
    assert isinstance(data, TrainData) and source.decisions == ["resident"]
    start = source.images.ctypes.data
    assert start <= data.images.data_ptr() < start + source.images.nbytes  # the map itself: no copy


def test_a_run_over_its_budget_streams_and_matches_the_resident_run(tmp_path):
    images, labels = _cache(tmp_path)
    train, val, test = np.arange(0, 42, 2), np.arange(1, 42, 4), np.arange(3, 42, 4)
    hp = TrainConfig(budget="fixed", epochs=2, min_steps=7, batch_size=4, lr=1e-3, augment="standard")
    row = images[0].nbytes
    needed = len(np.unique(np.r_[train, val, test])) * row
    resident = ImageSource(images, labels, 3, CPU, budget=needed, path=str(tmp_path / "images.npy"))
    # A budget of a few images: every chunk read holds one batch, and evaluation streams too.
    streamed = ImageSource(images, labels, 3, CPU, budget=20 * row, path=str(tmp_path / "images.npy"))
    assert isinstance(streamed.for_run(train, val, test), StreamedData)
    results = [train_run(src, train, val, test, FAST_MODEL, hp, 7, CPU) for src in (resident, streamed)]
    assert resident.decisions[-1] == "resident" and streamed.decisions[-1] == "streamed"
    a, b = results
    assert [vars(e) | {"seconds": 0} for e in a.history] == [vars(e) | {"seconds": 0} for e in b.history]
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert (a.test_acc, a.test_loss, a.val_acc) == (b.test_acc, b.test_loss, b.val_acc)
