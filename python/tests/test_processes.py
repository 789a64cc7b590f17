"""Many processes on one store: a shared cache under load, kill -9 of a
writer, single flight, and handles inherited through fork()."""

import hashlib
import multiprocessing
import os
import random
import signal
import subprocess
import time

import pytest

import mapkv
from conftest import run_python

fork = multiprocessing.get_context("fork")


def checked(key: bytes, n: int) -> bytes:
    """A value that says which key it belongs to and checks itself."""
    body = key + b"|" + os.urandom(8).hex().encode() * n
    return hashlib.blake2b(body, digest_size=8).hexdigest().encode() + body


def verify(key: bytes, value: bytes) -> None:
    digest, body = value[:16], value[16:]
    assert hashlib.blake2b(body, digest_size=8).hexdigest().encode() == digest, "torn value"
    assert body.split(b"|", 1)[0] == key, "another key's value"


CAPACITY = 1 << 20


def cache_worker(path, seed, seconds):
    rng = random.Random(seed)
    db = mapkv.Db(path, capacity=CAPACITY)
    ops = reads = 0
    worst = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        key = b"key%d" % rng.randrange(500)
        r = rng.random()
        if r < 0.5:
            v = db.get(key)
            if v is not None:
                verify(key, v)
                reads += 1
        elif r < 0.9:
            ttl = rng.choice([None, 0.01, 0.2, 5])
            db.set(key, checked(key, rng.randrange(1, 60)), ttl=ttl)
        elif r < 0.95:
            db.delete(key)
        else:
            v = db.get_or_set(key, lambda: checked(key, 3), ttl=1)
            verify(key, v)
        ops += 1
        if ops % 200 == 0:
            worst = max(worst, os.path.getsize(path))
    return ops, reads, worst


def test_eight_processes_share_a_bounded_cache(path):
    mapkv.Db(path, capacity=CAPACITY).close()
    with fork.Pool(8) as pool:
        results = pool.starmap(cache_worker, [(path, s, 4.0) for s in range(8)])
    assert sum(r[0] for r in results) > 8 * 500
    assert sum(r[1] for r in results) > 0
    assert max(r[2] for r in results) <= CAPACITY
    db = mapkv.Db(path)
    s = db.cache_stats()
    assert s["capacity"] == CAPACITY and s["file_len"] <= CAPACITY
    assert s["evictions"] > 0
    for k, v in db.items():
        verify(k, v)
    db.check()


WRITER = r"""
import sys, mapkv
db = mapkv.Db(sys.argv[1], durability=sys.argv[2], lock_timeout=10)
start = int(sys.argv[3])
out = sys.stdout
i = start
while True:
    db[b"k%d" % i] = b"v%d" % i * 20
    if i % 7 == 0:
        with db.batch() as b:
            b[b"b%d" % i] = b"1"
            b[b"c%d" % i] = b"2"
    out.write("%d\n" % i)
    out.flush()
    i += 1
"""


@pytest.mark.parametrize("durability", ["none", "sync"])
def test_kill_9_loses_nothing_acknowledged(path, durability):
    """A writer killed at a random moment, again and again: every write it
    acknowledged is there, batches are whole, and nobody waits for the dead
    writer."""
    rng = random.Random(1)
    acked = -1
    observer = mapkv.Db(path, lock_timeout=10)
    for round in range(12):
        child = run_python(WRITER, path, durability, acked + 1, stdout=subprocess.PIPE)
        time.sleep(rng.uniform(0.02, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        lines = out.split()
        if lines:
            acked = int(lines[-1])
        # No one waits for the dead writer: a write goes through at once.
        t0 = time.monotonic()
        observer[b"observer"] = b"%d" % round
        assert time.monotonic() - t0 < 5
        for i in range(acked + 1):
            assert observer.get(b"k%d" % i) == b"v%d" % i * 20, i
            if i % 7 == 0:
                assert observer.get(b"b%d" % i) == b"1" and observer.get(b"c%d" % i) == b"2"
        # Batches are all-or-nothing even when not acknowledged.
        for k in list(observer.keys()):
            if k.startswith(b"b"):
                assert observer.get(b"c" + k[1:]) == b"2"
    assert acked > 50
    observer.close()
    reopened = mapkv.Db(path)
    assert reopened.check()["live_keys"] == len(reopened)


def flight_worker(path, barrier, key, results):
    db = mapkv.Db(path)

    def compute():
        db.incr(b"calls:" + key)
        time.sleep(0.3)
        return b"computed once " + key

    barrier.wait()
    results.put(db.get_or_set(key, compute))


def test_single_flight_across_processes(path):
    mapkv.Db(path).close()
    for key in (b"a", b"b"):
        barrier, results = fork.Barrier(8), fork.Queue()
        procs = [fork.Process(target=flight_worker, args=(path, barrier, key, results)) for _ in range(8)]
        for p in procs:
            p.start()
        got = [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert got == [b"computed once " + key] * 8
    db = mapkv.Db(path)
    assert db.get(b"calls:a") == (1).to_bytes(8, "little")
    assert db.get(b"calls:b") == (1).to_bytes(8, "little")


# Opened in the parent, before the Pool forks: inherited by every worker.
INHERITED = None


def inherited_worker(n):
    db = INHERITED
    # The first call in the child reopened the store for this process: it
    # joined the parent's session instead of using the inherited handle.
    assert db.stats()["opened"] == "joined"
    for i in range(200):
        db[b"w%d-%d" % (n, i)] = b"%d" % os.getpid()
        assert db[b"w%d-%d" % (n, i)] == b"%d" % os.getpid()
    assert db[b"from parent"] == b"yes"
    db.incr(b"workers")
    with db.batch() as b:
        b[b"done%d" % n] = b"1"
    return os.getpid(), len(db) > 0


def test_fork_pool_with_a_parent_handle(path):
    global INHERITED
    INHERITED = mapkv.Db(path, capacity=8 << 20)
    INHERITED[b"from parent"] = b"yes"
    try:
        with fork.Pool(8) as pool:
            results = pool.map(inherited_worker, range(32))
        pids = {pid for pid, _ in results}
        assert os.getpid() not in pids and len(pids) > 1
        db = INHERITED
        assert int.from_bytes(db[b"workers"], "little") == 32
        for n in range(32):
            assert db[b"done%d" % n] == b"1"
            assert len(db[b"w%d-199" % n]) > 0
        db[b"parent after"] = b"still works"
        assert db.check()["live_keys"] == len(db)
    finally:
        INHERITED.close()
        INHERITED = None
    with mapkv.Db(path) as db:
        assert db[b"parent after"] == b"still works"
        # Pool workers end with os._exit, so their handles never close; the
        # next opener replays what they left (nothing is lost).
        assert db.stats()["opened"] in ("clean", "replayed")


def test_fork_child_that_never_used_the_handle(path):
    db = mapkv.Db(path)
    db[b"k"] = b"v"
    pid = os.fork()
    if pid == 0:
        # The child lets go of the inherited handle without using it.
        code = 0
        try:
            db.close()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    db[b"after"] = b"fork"
    assert db[b"k"] == b"v" and db.check()["live_keys"] == 2
