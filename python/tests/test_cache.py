"""mapkv.Cache: the diskcache-like face."""

import multiprocessing
import time

import pytest

import mapkv

fork = multiprocessing.get_context("fork")


def test_values_and_keys_keep_their_types(path):
    c = mapkv.Cache(path)
    values = [
        b"bytes",
        "str",
        "",
        b"",
        0,
        -5,
        2**63 - 1,
        2**70,  # too big for a counter: pickled
        1.5,
        None,
        True,
        [1, {"a": (2, 3)}],
        b"7 bytes",  # padded so that it never reads as a counter
        "7 chars",
        b"8 bytes!",
    ]
    for i, v in enumerate(values):
        c.set(i, v)
        got = c.get(i)
        assert got == v and type(got) is type(v), (v, got)
    # str, bytes and int keys never collide.
    c["1"] = "str key"
    c[b"1"] = "bytes key"
    c[1] = "int key"
    c[("tuple", 1)] = "tuple key"
    assert (c["1"], c[b"1"], c[1], c[("tuple", 1)]) == ("str key", "bytes key", "int key", "tuple key")
    assert set(c) >= {"1", b"1", 1, ("tuple", 1)}
    assert len(c) == len(set(c))
    assert "1" in c and "2" not in c
    with pytest.raises(KeyError):
        c["missing"]
    del c["1"]
    with pytest.raises(KeyError):
        del c["1"]


def test_expire_add_touch_pop(path):
    c = mapkv.Cache(path)
    assert c.set("a", 1, expire=0.05) is True
    assert c.add("a", 2) is False
    time.sleep(0.1)
    assert c.get("a", "gone") == "gone"
    assert c.add("a", 3, expire=60) is True and c["a"] == 3
    assert c.touch("a", 0.05) is True
    assert 0 < c.ttl("a") <= 0.05
    time.sleep(0.1)
    assert "a" not in c and c.touch("a") is False
    c["p"] = {"x": 1}
    assert c.pop("p") == {"x": 1}
    assert c.pop("p", "default") == "default"
    assert c.delete("p") is False


def test_incr_decr(path):
    c = mapkv.Cache(path)
    assert c.incr("n") == 1
    assert c.incr("n", 5) == 6
    assert c.decr("n", 2) == 4
    assert c.get("n") == 4
    assert c.incr("d", 1, default=100) == 101
    with pytest.raises(KeyError):
        c.incr("missing", default=None)
    assert c.incr("d", 1, default=None) == 102
    c["s"] = "text"
    with pytest.raises(mapkv.Error):
        c.incr("s")
    with pytest.raises(TypeError):
        c.incr("s", default=None)


def test_clear_and_stats(path):
    c = mapkv.Cache(path, capacity=1 << 20)
    for i in range(10):
        c[i] = i
    c.get(1)
    c.get("nope")
    s = c.stats()
    assert s["hits"] >= 1 and s["misses"] >= 1 and s["capacity"] == 1 << 20
    assert c.clear() == 10
    assert len(c) == 0
    assert 0 < c.volume() <= 1 << 20


def test_memoize(path):
    c = mapkv.Cache(path)
    calls = []

    @c.memoize(expire=60)
    def add(a, b=0):
        calls.append((a, b))
        return {"sum": a + b}

    assert add(1, 2) == {"sum": 3}
    assert add(1, 2) == {"sum": 3}
    assert add(1, b=2) == {"sum": 3}  # keyword arguments make another key
    assert calls == [(1, 2), (1, 2)]
    assert add.__name__ == "add"
    assert add.__cache_key__(1, 2)[1:] == (1, 2)

    @c.memoize()
    def none():
        calls.append("none")

    assert none() is None and none() is None
    assert calls.count("none") == 1  # None is cached too

    @c.memoize(typed=True)
    def ident(x):
        calls.append(x)
        return x

    assert ident(1) == 1 and type(ident(1.0)) is float

    class Failed(Exception):
        pass

    @c.memoize()
    def fails():
        calls.append("fails")
        raise Failed

    with pytest.raises(Failed):
        fails()
    with pytest.raises(Failed):
        fails()
    assert calls.count("fails") == 2  # nothing was stored

    with pytest.raises(TypeError, match="parentheses"):

        @c.memoize
        def oops():
            pass

    @c.memoize(expire=0.05)
    def short():
        calls.append("short")
        return 1

    short()
    time.sleep(0.1)
    short()
    assert calls.count("short") == 2


CACHE = None


def memo_worker(_):
    @CACHE.memoize(name="shared")
    def compute(x):
        CACHE.incr("computed")
        time.sleep(0.3)
        return x * 2

    return compute(21)


def test_memoize_single_flight_across_processes(path):
    global CACHE
    CACHE = mapkv.Cache(path)
    try:
        with fork.Pool(8) as pool:
            assert pool.map(memo_worker, range(8)) == [42] * 8
        assert CACHE.get("computed") == 1
    finally:
        CACHE.close()
        CACHE = None


def test_context_manager(path):
    with mapkv.Cache(path) as c:
        c["k"] = "v"
    with pytest.raises(mapkv.ClosedError):
        c["k"]
    assert repr(c).startswith("mapkv.Cache(")
