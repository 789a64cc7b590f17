"""Threads: blocking calls release the GIL; long waits hear Ctrl-C."""

import signal
import threading
import time

import pytest

import mapkv


def test_wait_for_change_does_not_block_other_threads(path):
    db = mapkv.Db(path)
    seq = db.commit_seq()
    woke = []

    def waiter():
        woke.append(db.wait_for_change(seq, 10))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)  # the waiter is blocked now
    # This thread keeps running Python while the other one waits.
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 0.3:
        n += 1
    assert n > 10_000, f"only {n} iterations: the waiter held the GIL"
    assert t.is_alive() and not woke
    db[b"wake"] = b"up"
    t.join(5)
    assert woke == [seq + 1]


def test_many_waiters_and_writers(path):
    db = mapkv.Db(path)
    seq = db.commit_seq()
    results = []

    def waiter():
        results.append(db.wait_for_change(seq, 10))

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    db[b"k"] = b"v"
    for t in threads:
        t.join(5)
    assert len(results) == 8 and all(r > seq for r in results)


def test_get_or_set_waiter_does_not_hold_the_gil(path):
    db = mapkv.Db(path)
    started = threading.Event()
    results = []

    def slow():
        started.set()
        time.sleep(0.4)
        return b"slow value"

    def caller():
        results.append(db.get_or_set(b"k", slow))

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait(5)
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 0.2:
        n += 1
    assert n > 10_000
    for t in threads:
        t.join(5)
    assert results == [b"slow value"] * 4


def test_threads_write_in_parallel_without_losing_anything(path):
    db = mapkv.Db(path)

    def writer(n):
        for i in range(2000):
            db[b"t%d-%d" % (n, i)] = b"%d" % i
            db.incr(b"total")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(db) == 8 * 2000 + 1
    assert int.from_bytes(db[b"total"], "little") == 16000


def test_ctrl_c_interrupts_wait_for_change(path):
    db = mapkv.Db(path)
    seq = db.commit_seq()
    timer = threading.Timer(0.2, lambda: signal.raise_signal(signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        db.wait_for_change(seq, 30)
    assert time.monotonic() - t0 < 2
    timer.join()
