import logging
import subprocess
import sys
import time

import pytest

from supervisor.wire.messages import ResourceSample
from tests.support.wait import wait_until
from tests.unit.test_history_store import make_store  # noqa: F401 - the fixture, shared with the unit half


LOGGER = "supervisor.parent.history_store"


DAY = 86400.0


# Holds the write lock on the database until its stdin closes; prints once it has it. Released by the
# test, not by a clock, so "still locked" holds however slow the machine is.
LOCKER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
con.execute("COMMIT")
"""


@pytest.fixture
def lock_db():
    """lock(path) -> the locker process; release(proc) lets go of the lock."""
    procs = []

    def lock(path):
        proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield lock
    for proc in procs:
        proc.kill()
        proc.wait()


def release(proc) -> int:
    proc.stdin.close()
    return proc.wait(timeout=30)


def sample(agent_id="db-shipper", ts=None, **kw):
    return ResourceSample(agent_id=agent_id, ts=time.time() if ts is None else ts, **kw)


def warnings(caplog, text):
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING and text in r.getMessage()]


def test_locked_database_is_retried_after_release(make_store, lock_db, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = make_store()
    store.add([sample(ts=1.0)])
    assert store.flush()
    proc = lock_db(store.path)
    now = time.time()
    # add never waits for the lock: these return (and the test goes on) while the lock is held.
    store.add([sample(ts=now + i) for i in range(10)])
    for _ in range(20):
        store.add([sample(ts=now + 10)])
    wait_until(lambda: store.stats()["errors"] >= 1, timeout=30)
    assert proc.poll() is None, "the lock holder should still hold the lock"
    assert store.query("db-shipper", since=now) == []  # queued, not written, while locked
    assert release(proc) == 0
    assert store.flush(timeout=30)
    assert len(store.query("db-shipper", since=now)) == 30
    assert store.stats()["dropped"] == 0
    assert len(warnings(caplog, "locked by another process")) == 1
    assert any("writable again" in r.getMessage() for r in caplog.records)


def test_queue_is_bounded_and_drops_oldest(make_store, lock_db):
    store = make_store(max_pending=50)
    assert store.flush()
    proc = lock_db(store.path)
    now = time.time()
    for i in range(200):
        store.add([sample(ts=now + i)])
    assert store.stats()["pending"] <= 50
    assert release(proc) == 0
    assert store.flush(timeout=30)  # the writer's retry backoff may have grown while the lock was held
    stats = store.stats()
    # Up to max_pending wait, plus the chunk the writer had in hand while it waited for the lock (itself
    # at most max_pending: everything else was trimmed): so at most 2 x 50 are written.
    assert stats["written"] + stats["dropped"] == 200 and stats["dropped"] >= 100
    got = store.query("db-shipper", since=0)
    assert got[-1].ts == now + 199  # the newest samples are the ones kept
