import multiprocessing as mp

import numpy as np

from study.store import DONE, PENDING, RUNNING, Cell, Store, worker_id


def _study(tmp_path, n=6):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    sid = store.open_study("s", "fp", {"a": 1}, {}, {"name": "x"}, {}, np.array([0, 1]))
    store.add_cells(sid, [(Cell("m", "fraction", 1.0, seed), 10, 1.0) for seed in range(n)])
    return store, sid


def _claim_all(url, sid, queue):
    store = Store(url)
    got = []
    while (run := store.claim(sid, worker_id())) is not None:
        got.append(run.id)
        store.finish(run.id, worker_id(), {"test_acc": 0.5}, [], np.array([0, 1]))
    queue.put(got)


def test_parallel_processes_claim_each_run_exactly_once(tmp_path):
    store, sid = _study(tmp_path, n=30)
    queue = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=_claim_all, args=(store.url, sid, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    claimed = [i for _ in procs for i in queue.get(timeout=120)]
    for p in procs:
        p.join()
    assert sorted(claimed) == sorted(r.id for r in store.runs(sid))
    assert store.counts(sid)[DONE] == 30


def test_adding_cells_twice_adds_nothing_and_a_changed_setting_is_refused(tmp_path):
    store, sid = _study(tmp_path)
    assert store.add_cells(sid, [(Cell("m", "fraction", 1.0, 0), 10, 1.0)]) == 0
    import pytest

    from study.errors import UserError

    with pytest.raises(UserError, match=r"was run with a=1, this config has a=2"):
        store.open_study("s", "other", {"a": 2}, {}, {}, {}, np.array([0]))


def test_only_the_claim_holder_can_finish_and_dead_workers_are_released(tmp_path):
    store, sid = _study(tmp_path, n=1)
    run = store.claim(sid, "somehost:1")
    assert not store.finish(run.id, "otherhost:2", {}, [], np.array([0]))
    # A claim by a process of this host that no longer exists is released at once.
    dead = f"{worker_id().rsplit(':', 1)[0]}:999999999"
    store.fail(run.id, "somehost:1", "boom")
    store.retry_failed(sid)
    run = store.claim(sid, dead)
    assert store.counts(sid)[RUNNING] == 1
    assert store.release_stale(sid, grace_seconds=3600) == 1
    assert store.counts(sid)[PENDING] == 1
