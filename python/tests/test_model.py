"""A model test: random operations on a Db and on a dict must agree."""

import random

import mapkv


def test_against_a_dict(path):
    rng = random.Random(14)
    db = mapkv.Db(path)
    model = {}
    keys = [b"k%d" % i for i in range(60)] + [b"", "unicodé", b"\x00\xff"]

    def enc(k):
        return k.encode() if isinstance(k, str) else k

    for step in range(6000):
        k = rng.choice(keys)
        ek = enc(k)
        op = rng.randrange(14)
        if op <= 3:
            v = rng.randbytes(rng.choice([0, 1, 8, 100, 3000]))
            db[k] = v
            model[ek] = v
        elif op == 4:
            assert db.delete(k) == (ek in model)
            model.pop(ek, None)
        elif op == 5:
            v = b"a%d" % step
            assert db.add(k, v) == (ek not in model)
            model.setdefault(ek, v)
        elif op == 6:
            cur = model.get(ek)
            if cur is None or len(cur) == 8:
                n = int.from_bytes(cur or bytes(8), "little", signed=True) + 3
                assert db.incr(k, 3) == n
                model[ek] = n.to_bytes(8, "little", signed=True)
        elif op == 7:
            expected = model.get(ek) if rng.random() < 0.7 else b"wrong"
            new = rng.choice([None, b"c%d" % step])
            swapped = db.cas(k, expected, new)
            assert swapped == (model.get(ek) == expected)
            if swapped:
                if new is None:
                    model.pop(ek, None)
                else:
                    model[ek] = new
        elif op == 8:
            with db.batch() as b:
                for _ in range(rng.randrange(1, 5)):
                    bk = enc(rng.choice(keys))
                    if rng.random() < 0.7:
                        b[bk] = b"b%d" % step
                        model[bk] = b"b%d" % step
                    else:
                        del b[bk]
                        model.pop(bk, None)
        elif op == 9:
            v = db.get_or_set(k, lambda: b"g%d" % step)
            model.setdefault(ek, b"g%d" % step)
            assert v == model[ek]
        elif op == 10:
            assert (k in db) == (ek in model)
        elif op == 11 and step % 500 == 0:
            if rng.random() < 0.5:
                db.compact()
            else:
                db.close()
                db = mapkv.Db(path)
        else:
            assert db.get(k) == model.get(ek)
        if step % 997 == 0:
            assert len(db) == len(model)
            assert dict(db.items()) == model
    assert dict(db.items()) == model
    db.check()
