"""Claims per second on the store with 1, 4 and 8 worker processes, on a throwaway PostgreSQL
server and on SQLite, and a check that every run was done exactly once.

What is measured is the claim path itself: each worker process makes the store calls that a
worker's loop (``study.execute.run_next``) makes for one run, in the same order, with training
left out: register once, then per run ``release_stale`` (taking over silent runs), ``claim``
(which also records what the worker does), one ``heartbeat``, and ``finish`` with a result, its
epochs and its test predictions, until nothing is left to claim. Workers start together (after
their imports and connections) and the clock stops when the last one is done.

    python benchmarks/bench_claims.py                          # 400 runs; 1, 4, 8 workers; both stores
    python benchmarks/bench_claims.py --runs 200 --workers 1,2 --stores sqlite

Prints one line per (store, workers): seconds, claims per second, the ratio to one worker on
the same store, and the exactly-once check (runs done, attempts, duplicate claims, lost
heartbeats); then the load average. Exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study.stopping import stop_on_signals  # noqa: E402
from study.store import DONE, Cell, Store, worker_id  # noqa: E402

EPOCHS = [
    {
        "epoch": e,
        "train_loss": 1.0,
        "train_acc": 0.5,
        "val_loss": 1.0,
        "val_acc": 0.5,
        "lr": 1e-3,
        "seconds": 0.1,
        "images_seen": 100,
    }
    for e in range(1, 4)
]
PREDICTIONS = np.arange(200, dtype=np.int32) % 10  # a test split of 200 images


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=400, help="runs in each study (default 400)")
    p.add_argument("--workers", default="1,4,8", help="worker processes, comma-separated (default 1,4,8)")
    p.add_argument("--stores", default="postgresql,sqlite", help="postgresql and/or sqlite (default both)")
    return p.parse_args(argv)


def count_write_transactions(engine) -> list[int]:
    """A one-element counter of the transactions that took the write lock (SQLite's BEGIN
    IMMEDIATE) or wrote a row: what workers queue for, independent of this machine's speed."""
    from sqlalchemy import event

    count, writing = [0], set()

    @event.listens_for(engine, "after_cursor_execute")
    def _seen(conn, cursor, statement, *args):  # noqa: ANN001
        if statement.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE") or "IMMEDIATE" in statement:
            writing.add(id(conn))

    @event.listens_for(engine, "commit")
    def _commit(conn):  # noqa: ANN001
        if id(conn) in writing:
            writing.discard(id(conn))
            count[0] += 1

    return count


def work(url: str, study_id: int, start, queue) -> None:
    """One worker process: the store calls of ``run_next`` per run, until nothing is left."""
    store = Store(url)
    me = worker_id()
    store.register_worker(study_id, me)
    writes = count_write_transactions(store.engine)
    start.wait()
    claimed, lost = [], 0
    while True:
        store.release_stale(study_id, grace_seconds=180)
        run = store.claim(study_id, me)
        if run is None:
            break
        lost += not store.heartbeat(run.id, me)
        store.finish(run.id, me, {"test_acc": 0.5, "val_acc": 0.5, "epochs_run": 3}, EPOCHS, PREDICTIONS)
        claimed.append(run.id)
    written = writes[0]
    store.worker_doing(study_id, me, "idle: nothing left to do")
    store.engine.dispose()
    queue.put((claimed, lost, written))


def measure(url: str, runs: int, workers: int) -> dict:
    """Seconds for ``workers`` processes to claim and finish ``runs`` runs, and the checks."""
    store = Store(url)
    study_id = store.open_study("bench", "fp", {}, {}, {}, {}, PREDICTIONS)
    store.add_cells(study_id, [(Cell("m", "fraction", 1.0, seed), 10, 1.0) for seed in range(runs)])
    ctx = mp.get_context("spawn")
    start, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=work, args=(url, study_id, start, queue)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    # Every worker has registered (imports done, connected) before the clock starts.
    while len(store.workers(study_id)) < workers:
        time.sleep(0.05)
    began = time.perf_counter()
    start.set()
    results = [queue.get(timeout=600) for _ in procs]
    seconds = time.perf_counter() - began
    for proc in procs:
        proc.join()
    claimed = [run_id for ids, _, _ in results for run_id in ids]
    rows = store.runs(study_id)
    with store.engine.connect() as conn:
        from sqlalchemy import text

        predictions = conn.execute(text("select count(*), count(distinct run_id) from predictions")).one()
        epochs = conn.execute(text("select count(*) from epochs")).scalar()
    checks = {
        "done": sum(r.status == DONE for r in rows),
        "attempts_1": sum(r.attempts == 1 for r in rows),
        "duplicate_claims": len(claimed) - len(set(claimed)),
        "lost_heartbeats": sum(lost for _, lost, _ in results),
        "writes_per_run": sum(w for _, _, w in results) / runs,
        "predictions": tuple(predictions),
        "epochs": epochs,
        "per_worker": sorted(len(ids) for ids, _, _ in results),
    }
    ok = (
        checks["done"] == runs
        and checks["attempts_1"] == runs
        and checks["duplicate_claims"] == 0
        and sorted(claimed) == sorted(r.id for r in rows)
        and checks["lost_heartbeats"] == 0
        and checks["predictions"] == (runs, runs)
        and epochs == runs * len(EPOCHS)
    )
    store.engine.dispose()
    return {"seconds": seconds, "rate": runs / seconds, "ok": ok, **checks}


def main(argv=None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    stores = [s.strip() for s in args.stores.split(",")]
    failed = False
    print(f"{args.runs} runs per study; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with stop_on_signals(), ExitStack() as stack:  # Ctrl-C or SIGTERM still stops the server and deletes it
        server = None
        if "postgresql" in stores:
            from tests.postgres import throwaway_postgres

            server = stack.enter_context(throwaway_postgres())
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-claims-")))
        for kind in stores:
            base = None
            for n in counts:
                with ExitStack() as per_run:
                    if kind == "postgresql":
                        from tests.postgres import fresh_database

                        url = per_run.enter_context(fresh_database(server))
                    else:
                        url = f"sqlite:///{folder / f'claims-{n}.db'}"
                    result = measure(url, args.runs, n)
                base = base or result["rate"]
                failed |= not result["ok"]
                print(
                    f"{kind:10s} workers={n}: {result['seconds']:6.2f} s, {result['rate']:7.1f} claims/s, "
                    f"ratio to 1 worker {result['rate'] / base:.2f}, {result['writes_per_run']:.2f} write "
                    f"transactions per run; exactly once: {'yes' if result['ok'] else 'NO'} "
                    f"(done {result['done']}, attempts=1 {result['attempts_1']}, duplicates "
                    f"{result['duplicate_claims']}, lost heartbeats {result['lost_heartbeats']}, "
                    f"runs per worker {result['per_worker']})",
                    flush=True,
                )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
