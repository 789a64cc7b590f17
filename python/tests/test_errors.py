"""Every error, as the exception class a caller would catch."""

import os
import signal
import sys
import time

import pytest

import mapkv
from conftest import run_python


def test_hierarchy():
    for cls in (
        mapkv.CorruptedError,
        mapkv.NotAStoreError,
        mapkv.LockTimeoutError,
        mapkv.ReadOnlyError,
        mapkv.KeyTooLargeError,
        mapkv.ValueTooLargeError,
        mapkv.OutOfSpaceError,
        mapkv.ClosedError,
    ):
        assert issubclass(cls, mapkv.Error)
        assert cls.__module__ == "mapkv" and cls.__doc__
    assert issubclass(mapkv.Error, Exception)
    assert issubclass(mapkv.LockTimeoutError, TimeoutError)
    assert issubclass(mapkv.ValueTooLargeError, ValueError)
    assert issubclass(mapkv.KeyTooLargeError, ValueError)


def test_not_a_store_is_left_untouched(tmp_path):
    for content in (b"just some text, not a store" * 10, os.urandom(1 << 16)):
        p = tmp_path / "notes.txt"
        p.write_bytes(content)
        with pytest.raises(mapkv.NotAStoreError, match="not a mapkv store") as e:
            mapkv.Db(str(p))
        assert str(p) in str(e.value)
        assert p.read_bytes() == content
        with pytest.raises(mapkv.NotAStoreError):
            mapkv.Db(str(p), read_only=True)
        assert p.read_bytes() == content


def test_corrupted_value_is_an_error_and_left_as_found(path):
    marker = b"M" * 64
    with mapkv.Db(path) as db:
        db[b"victim"] = marker
        db[b"other"] = b"fine"
    data = bytearray(open(path, "rb").read())
    at = data.index(marker)
    data[at + 10] ^= 0xFF
    with open(path, "r+b") as f:
        f.seek(at + 10)
        f.write(bytes([data[at + 10]]))
    db = mapkv.Db(path)
    with pytest.raises(mapkv.CorruptedError, match="corrupted at offset"):
        db[b"victim"]
    with pytest.raises(mapkv.CorruptedError):
        db.check()
    assert db[b"other"] == b"fine"
    db.close()
    after = open(path, "rb").read()
    assert after[at : at + 64] == bytes(data[at : at + 64])  # the damage is still there


def test_read_only(path):
    with mapkv.Db(path) as db:
        db[b"k"] = b"v"
    ro = mapkv.Db(path, read_only=True)
    assert ro.read_only and ro[b"k"] == b"v"

    def batch():
        b = ro.batch()
        b[b"a"] = b"b"
        b.commit()

    for write in (
        lambda: ro.set(b"k", b"w"),
        lambda: ro.delete(b"k"),
        lambda: ro.incr(b"n"),
        lambda: ro.add(b"a", b"v"),
        lambda: ro.cas(b"k", b"v", b"w"),
        lambda: ro.get_or_set(b"x", lambda: b"v"),
        batch,
    ):
        with pytest.raises(mapkv.ReadOnlyError, match="read-only"):
            write()
    assert ro[b"k"] == b"v"
    with pytest.raises(mapkv.Error, match="No such file"):
        mapkv.Db(path + ".missing", read_only=True)


def test_key_too_large(path):
    db = mapkv.Db(path)
    with pytest.raises(mapkv.KeyTooLargeError, match="too large"):
        db[b"k" * (mapkv.MAX_KEY_LEN + 1)] = b"v"
    db[b"k" * mapkv.MAX_KEY_LEN] = b"v"  # the limit itself is fine
    assert len(db) == 1


def test_value_too_large(path):
    db = mapkv.Db(path)
    # bytes(n) is calloc'd: untouched zero pages, so this costs no memory;
    # the library refuses it before reading a byte.
    huge = bytes(mapkv.MAX_VALUE_LEN + 1)
    with pytest.raises(mapkv.ValueTooLargeError, match="too large"):
        db[b"k"] = huge
    del huge
    assert len(db) == 0


def test_out_of_space(path):
    db = mapkv.Db(path, capacity=256 << 10)
    with pytest.raises(mapkv.OutOfSpaceError, match="out of space"):
        db[b"k"] = b"x" * (1 << 20)  # more than the whole cache
    db[b"small"] = b"fits"
    assert db[b"small"] == b"fits"


def test_capacity_mismatch_is_an_error(path):
    mapkv.Db(path, capacity=1 << 20).close()
    with pytest.raises(mapkv.Error, match="capacity"):
        mapkv.Db(path, capacity=2 << 20)
    mapkv.Db(path).close()  # without one: the store's own


HOLDER = r"""
import sys, mapkv
db = mapkv.Db(sys.argv[1], durability="sync")
print("ready", flush=True)
v = b"x" * (256 << 10)
i = 0
while True:
    db[b"k%d" % (i % 100)] = v
    i += 1
"""


def test_lock_timeout(path):
    """A writer stopped (SIGSTOP) while it holds the writer lock is alive:
    others time out instead of robbing it."""
    mapkv.Db(path).close()
    child = run_python(HOLDER, path, stdout=__import__("subprocess").PIPE)
    try:
        assert child.stdout.readline().strip() == b"ready"
        db = mapkv.Db(path, lock_timeout=0.2)
        for _ in range(100):
            time.sleep(0.005)
            os.kill(child.pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                db[b"mine"] = b"v"
            except mapkv.LockTimeoutError as e:
                assert time.monotonic() - t0 >= 0.15
                assert "gave up" in str(e)
                assert isinstance(e, TimeoutError)
                break
            finally:
                os.kill(child.pid, signal.SIGCONT)
        else:
            pytest.fail("never caught the writer holding its lock")
    finally:
        child.kill()
        child.wait()
    db[b"mine"] = b"v"  # the dead holder leaves nothing locked
    assert db[b"mine"] == b"v"


def test_io_error_missing_dir(tmp_path):
    with pytest.raises(mapkv.Error) as e:
        mapkv.Db(str(tmp_path / "no" / "such" / "dir" / "x.mapkv"))
    assert type(e.value) is mapkv.Error


def test_message_is_the_rust_errors(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes(b"hello")
    with pytest.raises(mapkv.NotAStoreError) as e:
        mapkv.Db(str(p))
    assert str(e.value).startswith(f"{p}: not a mapkv store: ")
