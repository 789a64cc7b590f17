"""Benchmark mapkv against other caches a Python program can share between
processes, the way diskcache benchmarks itself (python-diskcache,
docs/cache-benchmarks.rst and tests/benchmark_core.py):

* every worker process does OPS operations on a shared space of RANGE keys:
  90% get, 9% set, 1% delete; keys are short byte strings, values a
  counter repeated 1-99 times (up to ~500 bytes);
* each operation is timed alone; the first WARMUP are not counted;
* reported per action: count, misses, median, p90, p99, max and total;
* 1 process, then 8 processes at once.

Differences from diskcache's script: timings use time.perf_counter_ns
(diskcache used time.time); Redis is reached through a unix socket of a
server this script starts (redis-server must be installed; it is skipped,
and said so, when it is not); python-lmdb and sqlitedict are added.

Durability is comparable: mapkv "none" and python-lmdb sync=False keep
acknowledged writes through a crash of any process (the page cache has
them) but not through an OS crash; diskcache's SQLite (WAL,
synchronous=NORMAL) and sqlitedict (autocommit) likewise.

The peers are installed with pip when missing; they are not dependencies
of mapkv. Run (release build of the binding: pip builds release):

    pip install ./python
    python python/bench/cache_bench.py            # 1 and 8 processes
    python python/bench/cache_bench.py --profile  # where a call's time goes
"""

import argparse
import collections
import importlib
import multiprocessing
import os
import pickle
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

OPS = 100_000
RANGE = 100
WARMUP = 1_000
PEERS = {"diskcache": "diskcache", "lmdb": "lmdb", "sqlitedict": "sqlitedict", "redis": "redis"}


def ensure_peers():
    missing = []
    for module, package in PEERS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        print(f"installing benchmark peers: {' '.join(missing)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
        importlib.invalidate_caches()


# --- stores: each opens a handle in the worker process -------------------


class MapkvDb:
    name = "mapkv.Db"

    def __init__(self, where):
        import mapkv

        self.db = mapkv.Db(os.path.join(where, "bench.mapkv"))
        self.get, self.set, self.delete = self.db.get, self.db.set, self.db.delete


class MapkvCache:
    name = "mapkv.Cache"

    def __init__(self, where):
        import mapkv

        self.c = mapkv.Cache(os.path.join(where, "bench-cache.mapkv"))
        self.get, self.set, self.delete = self.c.get, self.c.set, self.c.delete


class DiskcacheCache:
    name = "diskcache.Cache"

    def __init__(self, where):
        import diskcache

        self.c = diskcache.Cache(os.path.join(where, "diskcache"))
        self.get, self.set, self.delete = self.c.get, self.c.set, self.c.delete


class DiskcacheFanout:
    name = "diskcache.FanoutCache(shards=4, timeout=1.0)"

    def __init__(self, where):
        import diskcache

        self.c = diskcache.FanoutCache(os.path.join(where, "fanout"), shards=4, timeout=1.0)
        self.get, self.set, self.delete = self.c.get, self.c.set, self.c.delete


class Lmdb:
    name = "lmdb (python-lmdb, sync=False)"

    def __init__(self, where):
        import lmdb

        self.env = lmdb.open(os.path.join(where, "lmdb"), map_size=1 << 30, sync=False)

    def get(self, key):
        with self.env.begin() as txn:
            return txn.get(key)

    def set(self, key, value):
        with self.env.begin(write=True) as txn:
            return txn.put(key, value)

    def delete(self, key):
        with self.env.begin(write=True) as txn:
            return txn.delete(key)


class Sqlitedict:
    name = "sqlitedict (autocommit)"

    def __init__(self, where):
        from sqlitedict import SqliteDict

        self.d = SqliteDict(os.path.join(where, "sqlitedict.sqlite"), autocommit=True, timeout=60)

    def get(self, key):
        return self.d.get(key.decode())

    def set(self, key, value):
        self.d[key.decode()] = value

    def delete(self, key):
        try:
            del self.d[key.decode()]
            return True
        except KeyError:
            return False


class Redis:
    name = "redis-py (unix socket)"
    socket = None

    def __init__(self, where):
        import redis

        self.r = redis.Redis(unix_socket_path=Redis.socket)
        self.get, self.set = self.r.get, self.r.set

    def delete(self, key):
        return self.r.delete(key) == 1


def start_redis(where):
    exe = shutil.which("redis-server")
    if exe is None:
        print("redis-server is not installed: Redis skipped (apt-get install redis-server)")
        return None
    sock = os.path.join(where, "redis.sock")
    proc = subprocess.Popen(
        [exe, "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    Redis.socket = sock
    return proc


# --- the workload --------------------------------------------------------


def worker(num, kind, where, ops, out):
    random.seed(num)
    time.sleep(0.01)  # let the other processes start
    store = kind(where)
    timings = collections.defaultdict(list)
    clock = time.perf_counter_ns
    for count in range(ops):
        key = str(random.randrange(RANGE)).encode()
        value = str(count).encode() * random.randrange(1, 100)
        choice = random.random()
        if choice < 0.900:
            start = clock()
            result = store.get(key)
            end = clock()
            miss = result is None
            action = "get"
        elif choice < 0.990:
            start = clock()
            result = store.set(key, value)
            end = clock()
            miss = result is False
            action = "set"
        else:
            start = clock()
            result = store.delete(key)
            end = clock()
            miss = result is False
            action = "delete"
        if count > WARMUP:
            timings[action].append(end - start)
            if miss:
                timings[action + "-miss"].append(end - start)
    with open(os.path.join(out, f"output-{num}.pkl"), "wb") as f:
        pickle.dump(dict(timings), f)


def run(kind, procs, ops, where):
    store_dir = tempfile.mkdtemp(dir=where)
    first = kind(store_dir)
    for k in range(RANGE):
        first.set(str(k).encode(), str(k).encode())
    del first
    ctx = multiprocessing.get_context("fork")
    ps = [ctx.Process(target=worker, args=(n, kind, store_dir, ops, store_dir)) for n in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"{kind.name}: a worker failed")
    timings = collections.defaultdict(list)
    for n in range(procs):
        with open(os.path.join(store_dir, f"output-{n}.pkl"), "rb") as f:
            for k, v in pickle.load(f).items():
                timings[k].extend(v)
    shutil.rmtree(store_dir, ignore_errors=True)
    return timings


def fmt(ns):
    if ns < 1e3:
        return f"{ns:.0f}ns"
    if ns < 1e6:
        return f"{ns / 1e3:.3f}us"
    if ns < 1e9:
        return f"{ns / 1e6:.3f}ms"
    return f"{ns / 1e9:.3f}s"


def summary(ts):
    ts = sorted(ts)
    n = len(ts)
    return {
        "count": n,
        "median": ts[n // 2],
        "p90": ts[int(n * 0.9)],
        "p99": ts[int(n * 0.99)],
        "max": ts[-1],
        "total": sum(ts),
    }


def display(name, timings):
    cols = ("Action", "Count", "Miss", "Median", "P90", "P99", "Max", "Total")
    line = " ".join(["=" * 9] * len(cols))
    print(line)
    print(f"Timings for {name}")
    print("-" * len(line))
    print(" ".join(f"{c:>9}" for c in cols))
    print(line)
    total = count = 0
    out = {}
    for action in ("get", "set", "delete"):
        s = summary(timings[action])
        out[action] = s
        miss = len(timings.get(action + "-miss", []))
        print(
            f"{action:>9} {s['count']:>9} {miss:>9} "
            + " ".join(f"{fmt(s[k]):>9}" for k in ("median", "p90", "p99", "max", "total"))
        )
        total += s["total"]
        count += s["count"]
    print(f"{'Total':>9} {count:>9}" + " " * 50 + f"{fmt(total):>9}")
    print(line)
    print(flush=True)
    return out


def ratios(results):
    """The goals, as ratios measured in this run."""
    print("Goals (ratios of medians/p99 in this run):")

    def r(a, b, stat, action, procs):
        try:
            return results[(a, procs)][action][stat] / results[(b, procs)][action][stat]
        except KeyError:
            return None

    rows = [
        ("get median, diskcache.Cache / mapkv.Db, 1 process", r(DiskcacheCache.name, MapkvDb.name, "median", "get", 1), 15),
        ("set median, diskcache.Cache / mapkv.Db, 1 process", r(DiskcacheCache.name, MapkvDb.name, "median", "set", 1), 50),
        ("set p99, diskcache.Cache / mapkv.Db, 8 processes", r(DiskcacheCache.name, MapkvDb.name, "p99", "set", 8), 100),
        ("get median, redis-py / mapkv.Db, 1 process", r(Redis.name, MapkvDb.name, "median", "get", 1), 10),
        ("get median, lmdb / mapkv.Db, 1 process", r(Lmdb.name, MapkvDb.name, "median", "get", 1), 1),
        ("set median, lmdb / mapkv.Db, 1 process", r(Lmdb.name, MapkvDb.name, "median", "set", 1), 1),
    ]
    for what, ratio, goal in rows:
        if ratio is None:
            print(f"  {what}: not measured")
        else:
            print(f"  {what}: {ratio:.1f}x (goal >= {goal}x: {'met' if ratio >= goal else 'MISSED'})")


# --- profile: where one call's time goes ---------------------------------


def profile(where):
    import timeit

    import mapkv

    db = mapkv.Db(os.path.join(where, "profile.mapkv"))
    value = b"v" * 100
    db[b"hit"] = value
    db["hit-str"] = value
    d = {b"hit": value}
    env = {"db": db, "d": d, "value": value}
    rows = [
        ("Python: dict.get (hit)", "d.get(b'hit')"),
        ("PyO3 call doing nothing (Db.read_only getter)", "db.read_only"),
        ("Db.get, missing key", "db.get(b'missing')"),
        ("Db.get, hit, 100-byte value", "db.get(b'hit')"),
        ("Db.get, hit, str key", "db.get('hit-str')"),
        ("Db.__contains__, hit (no copy)", "b'hit' in db"),
        ("Db.set, 100-byte value (writer lock, GIL released)", "db.set(b'hit', value)"),
        ("perf_counter_ns() (the bench's timer, per call)", "clock()"),
    ]
    env["clock"] = time.perf_counter_ns
    try:
        import diskcache

        env["dc"] = diskcache.Cache(os.path.join(where, "profile-dc"))
        env["dc"].set(b"hit", value)
        rows += [("diskcache.Cache.get, hit", "dc.get(b'hit')"), ("diskcache.Cache.set", "dc.set(b'hit', value)")]
    except ImportError:
        pass
    print("Where a call's time goes (best of 5 timeit runs, ns per call):")
    for what, stmt in rows:
        n = 20_000 if "dc." in stmt else 200_000
        best = min(timeit.repeat(stmt, globals=env, number=n, repeat=5)) / n * 1e9
        print(f"  {what:<55} {best:8.0f} ns")
    print("Rust, criterion (benches/ops.rs, 1M keys, random): get hit ~505 ns, miss ~83 ns,")
    print("insert unsynced ~1.0-1.2 us (target/criterion, if you ran cargo bench).")


def main():
    global RANGE, WARMUP
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--processes", default="1,8", help="process counts, comma-separated")
    p.add_argument("-n", "--operations", type=int, default=OPS, help="operations per process")
    p.add_argument("-r", "--range", type=int, default=RANGE, help="number of keys")
    p.add_argument("-w", "--warmup", type=int, default=WARMUP, help="untimed operations first")
    p.add_argument("--only", default="", help="comma-separated substrings of store names to run")
    p.add_argument("--profile", action="store_true", help="time single calls instead")
    args = p.parse_args()
    RANGE, WARMUP = args.range, args.warmup
    ensure_peers()
    where = tempfile.mkdtemp(prefix="mapkv-bench-")
    redis_proc = None
    try:
        if args.profile:
            profile(where)
            return
        redis_proc = start_redis(where)
        kinds = [MapkvDb, MapkvCache, DiskcacheCache, DiskcacheFanout, Lmdb, Sqlitedict]
        if redis_proc is not None:
            kinds.append(Redis)
        if args.only:
            kinds = [k for k in kinds if any(s in k.name for s in args.only.split(","))]
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.operations} ops per process, "
              f"{RANGE} keys, storage in {where}\n")
        results = {}
        for procs in map(int, args.processes.split(",")):
            print(f"##### {procs} process{'es' if procs > 1 else ''}\n")
            for kind in kinds:
                if redis_proc is not None:
                    import redis

                    redis.Redis(unix_socket_path=Redis.socket).flushall()
                results[(kind.name, procs)] = display(kind.name, run(kind, procs, args.operations, where))
        ratios(results)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
