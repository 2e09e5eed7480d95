"""Speed machinery: batch order, memory layout choice, compiled models reused across runs,
and the planning of workers and threads."""

import numpy as np
import pytest
import torch

from study import machine, speed
from study.config import StudyConfig, TrainConfig
from study.speed import Speed, channels_last_is_faster, use_channels_last
from study.train import BatchOrder, TrainData, build_loop, train_run
from tests.conftest import FAST_MODEL, class_image


def _data(n_per_class=12, classes=3, size=16):
    rng = np.random.default_rng(0)
    images = np.stack([class_image(rng, c, (size, size)) for c in range(classes) for _ in range(n_per_class)])
    labels = np.repeat(np.arange(classes), n_per_class)
    return TrainData.from_arrays(images, labels, classes, torch.device("cpu"), hflip=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Small models train fastest on one thread, and on a machine busy with other work a
    multi-thread run can be many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


HP = TrainConfig(budget="fixed", epochs=2, min_steps=6, batch_size=8, lr=1e-3, augment="standard")


def test_batch_order_is_seeded_equal_sized_and_walks_whole_permutations():
    whole = BatchOrder(10, 4, seed=3).take(5, torch.device("cpu"))
    order = BatchOrder(10, 4, seed=3)
    in_parts = torch.cat([order.take(2, torch.device("cpu")), order.take(3, torch.device("cpu"))])
    assert whole.shape == (5, 4) and torch.equal(whole, in_parts)
    flat = whole.flatten()
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:20].tolist()) == list(range(10))
    assert not torch.equal(whole, BatchOrder(10, 4, seed=4).take(5, torch.device("cpu")))


def test_channels_last_is_forced_by_on_and_off_and_measured_once_per_model_by_auto():
    import timm

    built = []

    def build():
        built.append(1)
        return timm.create_model(FAST_MODEL, num_classes=3)

    def never():
        raise AssertionError("'on' and 'off' must not measure")

    cpu = torch.device("cpu")
    assert use_channels_last("on", FAST_MODEL, never, 16, 8, cpu)
    assert not use_channels_last("off", FAST_MODEL, never, 16, 8, cpu)
    first = use_channels_last("auto", FAST_MODEL, build, 16, 7, cpu)
    assert use_channels_last("auto", FAST_MODEL, build, 16, 7, cpu) == first and len(built) == 1
    use_channels_last("auto", FAST_MODEL, build, 16, 5, cpu)  # another batch size is measured anew
    assert len(built) == 2
    with pytest.raises(ValueError, match="valid: auto, on, off"):
        use_channels_last("yes", FAST_MODEL, never, 16, 8, cpu)


def test_the_default_layout_is_fixed_not_timed_so_a_study_repeats_its_results():
    # A timed choice between close layouts flipped ResNet-18 between two default studies and,
    # through the plateau stops, changed its accuracies (docs/performance.md).
    def never():
        raise AssertionError("the default layout must not be measured")

    for chosen in (Speed(), Speed.from_config(StudyConfig())):
        assert use_channels_last(chosen.channels_last, FAST_MODEL, never, 16, 8, torch.device("cpu"))


def test_layout_measurement_leaves_the_seeded_random_stream_alone():
    import timm

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    faster = channels_last_is_faster(
        lambda: timm.create_model(FAST_MODEL, num_classes=3), 16, 4, torch.device("cpu"), steps=1
    )
    assert isinstance(faster, bool)
    assert torch.equal(torch.rand(3), expected)


def test_a_run_in_either_layout_learns_the_same():
    data, idx = _data(), np.arange(36)
    runs = [
        train_run(
            data, idx[::2], idx[1::2], idx[1::2], FAST_MODEL, HP, 0, torch.device("cpu"), speed=Speed(channels_last=cl)
        )
        for cl in ("off", "on")
    ]
    assert runs[0].extra["channels_last"] is False and runs[1].extra["channels_last"] is True
    np.testing.assert_allclose(
        [e.train_loss for e in runs[0].history], [e.train_loss for e in runs[1].history], rtol=1e-3
    )


def test_a_compiled_model_is_compiled_once_and_each_run_starts_from_fresh_weights():
    data, idx = _data(), np.arange(36)
    args = (data, idx[::2], idx[1::2], idx[1::2], FAST_MODEL, HP)
    cpu = torch.device("cpu")
    eager = Speed(
        channels_last="off", compile=True, compile_backend="eager"
    )  # dynamo without code generation: fast and exact
    before = speed.compiled_models()
    compiled = [train_run(*args, seed, cpu, speed=eager) for seed in (0, 1)]
    assert speed.compiled_models() == before + 1
    assert all(r.extra["compiled"] for r in compiled)
    plain = [train_run(*args, seed, cpu, speed=Speed(channels_last="off")) for seed in (0, 1)]
    for c, p in zip(compiled, plain):  # run 2 did not continue from run 1's weights
        np.testing.assert_allclose([e.train_loss for e in c.history], [e.train_loss for e in p.history], rtol=1e-5)
        assert c.test_acc == p.test_acc


def test_the_loop_trains_what_it_is_given_and_counts_correct_predictions():
    data = _data()
    loop = build_loop(data, np.arange(36), FAST_MODEL, HP, 0, torch.device("cpu"))
    assert loop.batch == 8 and loop.steps_per_epoch * loop.epochs >= HP.min_steps
    before = [p.detach().clone() for p in loop.plain.parameters()]
    loss_sum, correct = loop.run(3)
    assert loss_sum.item() > 0 and 0 <= correct.item() <= 3 * 8
    assert any(not torch.equal(a, b) for a, b in zip(before, loop.plain.parameters()))


@pytest.mark.parametrize(
    "cores, jobs, threads, device, pending, expected",
    [
        (2, 0, 0, "cpu", 10, (2, 1)),  # auto: one single-thread worker per core
        (2, 1, 0, "cpu", 10, (1, 1)),  # one worker still trains on one thread: same results
        (16, 0, 0, "cpu", 3, (3, 1)),  # fewer runs than cores: idle cores, not other rounding
        (8, 0, 2, "cpu", 10, (4, 2)),  # --threads 2: as many workers as the cores hold
        (2, 4, 0, "cpu", 10, (4, 1)),  # asked for more workers than cores: never below one thread
        (16, 0, 0, "cuda", 10, (1, 16)),  # one worker owns the GPU
        (4, 0, 0, "cpu", 0, (1, 1)),
    ],
)
def test_workers_and_threads_never_oversubscribe_the_cores(
    monkeypatch, cores, jobs, threads, device, pending, expected
):  # noqa: E501
    monkeypatch.setattr(machine, "available_cores", lambda: cores)
    workers, threads = machine.plan_workers(jobs, device, pending, threads)
    assert (workers, threads) == expected
    assert workers * threads <= max(cores, workers)
