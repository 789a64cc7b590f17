"""The Python writer for the crash file system (crashfs/, issue 16).

    python3 crashfs_writer.py STORE SEED START MODE

The same workload and report lines as the Rust writer (crashfs-writer): it
makes commits START, START+1, ... of workload SEED (the generator below is a
line-for-line copy of crashfs/src/workload.rs and crashfs/src/rng.rs, so the
parent regenerates every commit) through the mapkv Python package, and after
each call returns prints ``A id`` (or ``S id`` under sync) and ``F id`` after
a flush that returned. ``@S`` before opening, ``@O`` once open, ``@E msg`` on
an error, after which it waits to be killed.
"""

import sys
import time

import mapkv

M64 = (1 << 64) - 1
KEYS = 256
LIMIT = 120.0


class Rng:
    """splitmix64, as crashfs/src/rng.rs."""

    def __init__(self, seed):
        self.s = (seed ^ 0x9E3779B97F4A7C15) & M64

    def next_u64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        return 0 if n == 0 else (self.next_u64() * n) >> 64

    def chance(self, percent):
        return self.below(100) < percent


def key(k):
    return b"k%04d" % k


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def value(k, cid, length):
    rng = Rng(((k * 0x2545F4914F6CDD1D) & M64) ^ rotl(cid, 17))
    v = bytearray(b"%d:%d:" % (k, cid))
    while len(v) < length:
        v += rng.next_u64().to_bytes(8, "little")
    return bytes(v[:length])


def commit(seed, cid):
    """(writes, batch, flush_after); writes are (key, length or None)."""
    rng = Rng(seed ^ ((cid * 0xD1B54A32D192ED03) & M64))

    def length():
        if rng.chance(3):
            return 5 * 1024 + rng.below(35 * 1024)
        return rng.below(301)

    r = rng.below(100)
    if r < 55:
        k = rng.below(KEYS)
        writes, batch = [(k, length())], False
    elif r < 70:
        writes, batch = [(rng.below(KEYS), None)], False
    else:
        n = 2 + rng.below(15)
        writes = []
        for _ in range(n):
            k = rng.below(KEYS)
            writes.append((k, None) if rng.chance(25) else (k, length()))
        batch = True
    return writes, batch, rng.chance(5)


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fail(started, msg):
    emit("@E " + msg.replace("\n", " "))
    while time.monotonic() - started < LIMIT:
        time.sleep(0.05)
    sys.exit(3)


def main():
    if len(sys.argv) != 5:
        sys.stderr.write("usage: crashfs_writer.py STORE SEED START MODE\n")
        sys.exit(2)
    store, seed, cid, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if mode not in ("none", "async", "sync"):
        sys.stderr.write("MODE must be none, async or sync\n")
        sys.exit(2)
    started = time.monotonic()
    emit("@S")
    try:
        db = mapkv.Db(store, durability=mode)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        fail(started, "open: %s" % e)
    emit("@O python")
    tag = "S" if mode == "sync" else "A"
    while True:
        if time.monotonic() - started > LIMIT:
            sys.stderr.write("crashfs_writer.py: not killed in time\n")
            sys.exit(5)
        writes, batch, flush_after = commit(seed, cid)
        try:
            if batch:
                b = db.batch()
                for k, n in writes:
                    if n is None:
                        b.delete(key(k))
                    else:
                        b.set(key(k), value(k, cid, n))
                b.commit()
            else:
                k, n = writes[0]
                if n is None:
                    db.delete(key(k))
                else:
                    db.set(key(k), value(k, cid, n))
        except Exception as e:  # noqa: BLE001
            fail(started, "commit %d: %s" % (cid, e))
        emit("%s %d" % (tag, cid))
        if flush_after and mode != "sync":
            try:
                db.flush()
            except Exception as e:  # noqa: BLE001
                fail(started, "flush after %d: %s" % (cid, e))
            emit("F %d" % cid)
        cid += 1


if __name__ == "__main__":
    main()
