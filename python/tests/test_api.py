"""The Db API, call by call."""

import os
import pickle
import time

import pytest

import mapkv


def test_mapping_protocol(path):
    with mapkv.Db(path) as db:
        db[b"a"] = b"1"
        db["b"] = "2"  # str keys and values are stored as UTF-8
        db[bytearray(b"c")] = memoryview(b"3")
        assert db[b"a"] == b"1"
        assert db[b"b"] == b"2" and db["b"] == b"2"
        assert db[b"c"] == b"3"
        assert b"a" in db and "b" in db and b"zz" not in db
        assert len(db) == 3
        assert sorted(db) == [b"a", b"b", b"c"]
        assert sorted(db.keys()) == [b"a", b"b", b"c"]
        assert sorted(db.values()) == [b"1", b"2", b"3"]
        assert sorted(db.items()) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
        with pytest.raises(KeyError):
            db[b"missing"]
        del db[b"a"]
        with pytest.raises(KeyError):
            del db[b"a"]
        assert len(db) == 2
        assert type(db[b"b"]) is bytes


def test_get_set_delete(path):
    db = mapkv.Db(path)
    assert db.get(b"k") is None
    assert db.get(b"k", 7) == 7
    db.set(b"k", b"v")
    assert db.get(b"k", 7) == b"v"
    assert db.delete(b"k") is True
    assert db.delete(b"k") is False
    db.set(b"empty", b"")
    assert db.get(b"empty") == b""
    big = os.urandom(1 << 20)  # read with the GIL released
    db.set(b"big", big)
    assert db.get(b"big") == big
    assert db.get(b"big") == big
    assert db.get(b"empty") == b""
    db.close()


def test_bad_types(path):
    db = mapkv.Db(path)
    for bad in (1, 1.5, None, [b"x"], object()):
        with pytest.raises(TypeError):
            db.set(bad, b"v")
        with pytest.raises(TypeError):
            db.set(b"k", bad)
    with pytest.raises(TypeError):
        db.get(1)


def test_ttl(path):
    db = mapkv.Db(path)
    db.set(b"short", b"v", ttl=0.05)
    db.set(b"long", b"v", ttl=60)
    db.set(b"int", b"v", ttl=1)
    assert db.get(b"short") == b"v"
    assert 59 < db.ttl(b"long") <= 60
    assert db.ttl(b"missing") is None
    time.sleep(0.1)
    assert db.get(b"short") is None
    assert b"short" not in db
    assert sorted(db) == [b"int", b"long"]
    db.set(b"zero", b"v", ttl=0)
    assert db.get(b"zero") is None
    assert db.expire(b"long", None) is True
    assert db.ttl(b"long") is None
    assert db.expire(b"long", 0.05) is True
    time.sleep(0.1)
    assert db.get(b"long") is None
    assert db.expire(b"long", 1) is False
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            db.set(b"k", b"v", ttl=bad)


def test_add(path):
    db = mapkv.Db(path)
    assert db.add(b"k", b"1") is True
    assert db.add(b"k", b"2") is False
    assert db[b"k"] == b"1"
    assert db.add(b"t", b"1", ttl=0.05) is True
    assert db.add(b"t", b"2", ttl=0.05) is False
    assert 0 < db.ttl(b"t") <= 0.05
    time.sleep(0.1)
    assert db.add(b"t", b"3", ttl=10) is True  # the old entry expired
    assert db[b"t"] == b"3"


def test_incr(path):
    db = mapkv.Db(path)
    assert db.incr(b"n") == 1
    assert db.incr(b"n", 10) == 11
    assert db.incr(b"n", -20) == -9
    assert db[b"n"] == (-9).to_bytes(8, "little", signed=True)
    db[b"n"] = (2**63 - 1).to_bytes(8, "little", signed=True)
    with pytest.raises(mapkv.Error, match="overflow"):
        db.incr(b"n")
    db[b"s"] = b"not a counter"
    with pytest.raises(mapkv.Error):
        db.incr(b"s")
    with pytest.raises(OverflowError):
        db.incr(b"n", 2**64)


def test_cas(path):
    db = mapkv.Db(path)
    assert db.cas(b"k", None, b"1") is True  # create if absent
    assert db.cas(b"k", None, b"2") is False
    assert db.cas(b"k", b"0", b"2") is False
    assert db.cas(b"k", b"1", b"2") is True
    assert db[b"k"] == b"2"
    assert db.cas(b"k", b"2", None) is True  # remove
    assert b"k" not in db
    assert db.cas(b"k", None, None) is True  # absent stays absent


def test_get_or_set(path):
    db = mapkv.Db(path)
    calls = []

    def compute():
        calls.append(1)
        return b"value"

    assert db.get_or_set(b"k", compute) == b"value"
    assert db.get_or_set(b"k", compute) == b"value"
    assert len(calls) == 1
    assert db.get_or_set(b"s", lambda: "text") == b"text"

    class Boom(Exception):
        pass

    def fail():
        raise Boom("backend down")

    with pytest.raises(Boom, match="backend down"):
        db.get_or_set(b"f", fail)
    assert b"f" not in db  # nothing stored, and the claim is free again:
    assert db.get_or_set(b"f", lambda: b"later") == b"later"
    with pytest.raises(TypeError):
        db.get_or_set(b"bad", lambda: 42)
    assert b"bad" not in db
    assert db.get_or_set(b"t", lambda: b"v", ttl=0.05) == b"v"
    time.sleep(0.1)
    assert db.get_or_set(b"t", lambda: b"w", ttl=10) == b"w"


def test_batch(path):
    db = mapkv.Db(path)
    db[b"old"] = b"x"
    with db.batch() as b:
        b[b"a"] = b"1"
        b.set(b"b", b"2")
        b.set(b"t", b"3", ttl=60)
        del b[b"old"]
        b.delete(b"never-there")
        assert len(b) == 5
        assert b"a" not in db  # nothing visible before the commit
    assert sorted(db.items()) == [(b"a", b"1"), (b"b", b"2"), (b"t", b"3")]
    assert db.ttl(b"t") > 59

    with pytest.raises(RuntimeError):
        with db.batch() as b:
            b[b"x"] = b"1"
            raise RuntimeError("abort")
    assert b"x" not in db  # a block that raised writes nothing

    b = db.batch()
    b[b"y"] = b"1"
    b.discard()
    b.commit()
    assert b"y" not in db
    b[b"z"] = b"1"
    b.commit()
    assert db[b"z"] == b"1"

    # One bad operation: nothing of the batch is applied.
    b = db.batch()
    b[b"ok"] = b"1"
    b[b"k" * (mapkv.MAX_KEY_LEN + 1)] = b"v"
    with pytest.raises(mapkv.KeyTooLargeError):
        b.commit()
    assert b"ok" not in db


def test_admin(path, tmp_path):
    db = mapkv.Db(path)
    for i in range(100):
        db[b"k%d" % i] = b"v" * 100
    for i in range(50):
        del db[b"k%d" % i]
    s = db.stats()
    assert s["keys"] == 50 and s["dead_bytes"] > 0 and s["opened"] == "clean"
    r = db.compact()
    assert r["keys"] == 50 and r["len_after"] <= r["len_before"]
    assert db.check()["live_keys"] == 50
    db.flush()
    backup = str(tmp_path / "backup.mapkv")
    assert db.backup(backup)["keys"] == 50
    with mapkv.Db(backup, read_only=True) as b:
        assert len(b) == 50 and b[b"k99"] == b"v" * 100
    cs = db.cache_stats()
    assert cs["capacity"] == 0 and cs["keys"] == 50
    db.clear()
    assert len(db) == 0
    db.set_capacity(1 << 20)
    assert db.cache_stats()["capacity"] == 1 << 20


def test_cache_mode_bound(path):
    db = mapkv.Db(path, capacity=1 << 20)
    for i in range(5000):
        db[b"%d" % i] = b"x" * 1000
    s = db.cache_stats()
    assert s["capacity"] == 1 << 20
    assert s["file_len"] <= 1 << 20 and os.path.getsize(path) <= 1 << 20
    assert s["evictions"] > 0
    assert db[b"4999"] == b"x" * 1000
    db.get(b"4999")
    db.get(b"nope")
    s = db.cache_stats()
    assert s["hits"] >= 1 and s["misses"] >= 1


def test_wait_for_change(path):
    db = mapkv.Db(path)
    seq = db.commit_seq()
    t0 = time.monotonic()
    assert db.wait_for_change(seq, 0.12) == seq  # a timeout returns `since`
    assert time.monotonic() - t0 >= 0.1
    db[b"k"] = b"v"
    assert db.wait_for_change(seq, 5) == seq + 1 == db.commit_seq()
    with pytest.raises(ValueError):
        db.wait_for_change(seq, -1)


def test_close_and_context(path):
    db = mapkv.Db(path)
    db[b"k"] = b"v"
    assert not db.closed
    db.close()
    db.close()  # twice is fine
    assert db.closed
    for call in (lambda: db[b"k"], lambda: db.set(b"k", b"v"), lambda: len(db), lambda: list(db)):
        with pytest.raises(mapkv.ClosedError):
            call()
    with mapkv.Db(path) as db2:
        assert db2[b"k"] == b"v"
    assert db2.closed
    assert "closed" in repr(db2)


def test_reopen_sees_data_and_options(path):
    with mapkv.Db(path, durability="sync", lock_timeout=2.5) as db:
        db[b"k"] = b"v"
    for d in ("none", "async", "sync"):
        with mapkv.Db(path, durability=d) as db:
            assert db[b"k"] == b"v"
    with pytest.raises(ValueError):
        mapkv.Db(path, durability="fast")
    with pytest.raises(ValueError):
        mapkv.Db(path, lock_timeout=-1)


def test_pickle(path):
    db = mapkv.Db(path, durability="async")
    db[b"k"] = b"v"
    db2 = pickle.loads(pickle.dumps(db))
    assert db2[b"k"] == b"v"
    assert "async" in repr(db2)


def test_pathlike(tmp_path):
    db = mapkv.Db(tmp_path / "p.mapkv")
    db[b"k"] = b"v"
    assert os.fspath(db.path) == str(tmp_path / "p.mapkv")


def test_iteration_sees_every_entry_once(path):
    db = mapkv.Db(path)
    for i in range(2000):
        db[b"%d" % i] = b"%d" % i
    seen = list(db.items())
    assert len(seen) == 2000 and all(k == v for k, v in seen)
    it = iter(db)
    first = next(it)
    db[b"new"] = b"x"  # writing meanwhile is allowed
    rest = list(it)
    assert first not in rest
