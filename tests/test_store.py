import multiprocessing as mp

import numpy as np
import pytest

from study.store import DONE, PENDING, RUNNING, Cell, RunRow, Store, worker_id
from tests.conftest import silence


def _study(tmp_path, n=6, url=None):
    store = Store(url or f"sqlite:///{tmp_path / 's.db'}")
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


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.distributed)])
def test_parallel_processes_claim_each_run_exactly_once(tmp_path, database, request):
    store, sid = _study(
        tmp_path, n=30, url=request.getfixturevalue("postgres_url") if database == "postgresql" else None
    )
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


def test_a_silent_run_is_taken_over_after_the_grace_period_and_failed_after_max_attempts(tmp_path):
    from study.store import FAILED, MAX_ATTEMPTS

    store, sid = _study(tmp_path, n=1)
    run = store.claim(sid, "machine-a:1")
    silence(store, RunRow, run.id, 60)
    assert store.heartbeat(run.id, "machine-a:1")  # alive: its heartbeat keeps the claim
    assert store.release_stale(sid, grace_seconds=30) == 0
    silence(store, RunRow, run.id, 60)
    assert store.release_stale(sid, grace_seconds=30) == 1  # silent for the grace period (by the database's clock)
    retaken = store.claim(sid, "machine-b:1")
    assert retaken.id == run.id and retaken.attempts == 2
    assert not store.heartbeat(run.id, "machine-a:1")  # the first worker learns it lost the run...
    assert not store.finish(run.id, "machine-a:1", {"test_acc": 0.1}, [], np.array([0]))  # ...and cannot record it
    for attempt in range(3, MAX_ATTEMPTS + 1):  # its workers keep dying (killed for memory, say)
        silence(store, RunRow, run.id, 60)
        store.release_stale(sid, grace_seconds=30)
        assert store.claim(sid, f"machine-{attempt}:1").attempts == attempt
    silence(store, RunRow, run.id, 60)
    assert store.release_stale(sid, grace_seconds=30) == 1
    (row,) = store.runs(sid)
    assert (
        row.status == FAILED
        and f"its worker stopped {MAX_ATTEMPTS} times" in row.error
        and "--retry-failed" in row.error
    )
    assert store.retry_failed(sid) == 1 and store.claim(sid, "w:1").attempts == 1  # fresh attempts


def test_workers_are_recorded_with_what_they_do(tmp_path):
    store, sid = _study(tmp_path, n=2)
    store.register_worker(sid, "machine-a:7")
    store.register_worker(sid, "machine-a:7")  # again after a restart: one row
    run = store.claim(sid, "machine-a:7")
    (worker,) = store.workers(sid)
    assert worker.host == "machine-a" and worker.doing == f"run {run.cell_key}" and worker.runs_done == 0
    assert store.finish(run.id, "machine-a:7", {"test_acc": 0.5}, [], np.array([0, 1]))
    store.worker_doing(sid, "machine-a:7", "tuning x: trial #3 complete", trials_done=1)
    (worker,) = store.workers(sid)
    assert (worker.runs_done, worker.trials_done, worker.doing) == (1, 1, "tuning x: trial #3 complete")
    assert abs((store.now() - worker.heartbeat_at).total_seconds()) < 5  # stamped by the database's clock


def test_sqlite_claims_take_the_write_lock_first_and_the_file_stays_in_wal_mode(tmp_path):
    store, sid = _study(tmp_path, n=1)
    statements = []
    from sqlalchemy import event

    event.listen(store.engine, "before_cursor_execute", lambda conn, cursor, sql, *a: statements.append(sql))
    store.claim(sid, "w:1")
    assert "BEGIN IMMEDIATE" in statements  # a read-then-write transaction waits for the lock instead of failing
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("pragma journal_mode").scalar() == "wal"


def test_a_layout_choice_is_decided_once_per_study_and_the_first_decision_holds(tmp_path):
    """Layouts round differently, so every worker of a study must train a model in the same
    one: the first worker's measured choice is stored and every later worker uses it."""
    store, sid = _study(tmp_path)
    other = Store(store.url)  # a second worker's connection

    def never() -> bool:
        raise AssertionError("a stored choice must not be measured again")

    assert store.layout_choice(sid, "m|32px|batch 8|cpu", lambda: True) is True
    assert other.layout_choice(sid, "m|32px|batch 8|cpu", never) is True
    assert other.layout_choice(sid, "m|32px|batch 8|cuda", lambda: False) is False  # another key

    def measured_while_another_worker_decides() -> bool:
        assert other.layout_choice(sid, "n|32px|batch 8|cpu", lambda: False) is False
        return True

    # Both measured; the one stored first holds for both.
    assert store.layout_choice(sid, "n|32px|batch 8|cpu", measured_while_another_worker_decides) is False
    assert other.layout_choice(sid, "n|32px|batch 8|cpu", never) is False
