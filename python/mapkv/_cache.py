"""``mapkv.Cache``: a diskcache-like cache on a ``mapkv.Db``.

Binding code only: it encodes keys and values, and every operation is one
call to ``Db`` (or a compare-and-swap loop of them), so what ``Db``
guarantees across processes holds here too.

Encoding (part of the file's contents: a store written by ``Cache`` is read
by ``Cache``):

* keys carry a one-byte type tag, so that ``"1"``, ``b"1"`` and ``1`` are
  three keys: ``b`` bytes, ``s`` str (UTF-8), ``i`` int (decimal), ``p``
  anything else, pickled;
* a value of exactly 8 bytes is an int counter (little-endian, signed), the
  format of ``Db.incr``, so ``incr`` is atomic across processes; any other
  value is a tag and a payload: ``B`` bytes, ``S`` str, ``P`` pickle. A
  tagged value that would be 8 bytes long gets a pad byte (and a lower-case
  tag) so that it never reads as a counter.
"""

from __future__ import annotations

import functools
import os
import pickle
from typing import Any, Callable, Dict, Iterator, Tuple, Literal, Optional, TypeVar, Union

from ._mapkv import Db, Error

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_PICKLE = pickle.HIGHEST_PROTOCOL
# Keys must pickle to the same bytes in every process: a fixed protocol.
_KEY_PICKLE = 4
_KWARGS_MARK = "mapkv.memoize:kwargs"

F = TypeVar("F", bound=Callable[..., Any])


def _key(key: Any) -> bytes:
    if type(key) is bytes:
        return b"b" + key
    if type(key) is str:
        return b"s" + key.encode()
    t = type(key)
    if t is int or t is bool:
        return b"i" + str(int(key)).encode()
    return b"p" + pickle.dumps(key, protocol=_KEY_PICKLE)


def _unkey(raw: bytes) -> Any:
    tag, body = raw[:1], raw[1:]
    if tag == b"b":
        return body
    if tag == b"s":
        return body.decode()
    if tag == b"i":
        return int(body)
    if tag == b"p":
        return pickle.loads(body)
    raise Error(f"not a key written by mapkv.Cache: {raw[:16]!r}")


def _counter(n: int) -> bytes:
    return n.to_bytes(8, "little", signed=True)


def _dump(value: Any) -> bytes:
    if type(value) is int and _I64_MIN <= value <= _I64_MAX:
        return _counter(value)
    if type(value) is bytes:
        tag, body = b"B", value
    elif type(value) is str:
        tag, body = b"S", value.encode()
    else:
        tag, body = b"P", pickle.dumps(value, protocol=_PICKLE)
    if len(body) == 7:  # would be 8 bytes: a counter
        return tag.lower() + body + b"\0"
    return tag + body


def _load(raw: bytes) -> Any:
    if len(raw) == 8:
        return int.from_bytes(raw, "little", signed=True)
    tag = raw[:1]
    if tag == b"B":
        return raw[1:]
    if tag == b"S":
        return raw[1:].decode()
    if tag == b"P":
        return pickle.loads(raw[1:])
    if tag == b"b":
        return raw[1:-1]
    if tag == b"s":
        return raw[1:-1].decode()
    if tag == b"p":
        return pickle.loads(raw[1:-1])
    raise Error(f"not a value written by mapkv.Cache: {raw[:16]!r}")


def _full_name(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}"


class Cache:
    """A cache in one file, shared by every process that opens it.

    Values are any picklable object (``bytes``, ``str`` and ints are stored
    without pickling); keys are ``str``, ``bytes``, ``int`` or any other
    picklable object. ``expire`` is in seconds. With ``capacity`` (bytes)
    the file never grows past it: the oldest entries are evicted first,
    except those read since they were written.

    ``durability``, ``read_only`` and ``lock_timeout`` are passed to
    ``mapkv.Db``.
    """

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]"],
        capacity: Optional[int] = None,
        *,
        durability: Literal["none", "async", "sync"] = "none",
        read_only: bool = False,
        lock_timeout: Optional[float] = None,
    ) -> None:
        self._db = Db(
            path,
            durability=durability,
            capacity=capacity,
            read_only=read_only,
            lock_timeout=lock_timeout,
        )

    @property
    def db(self) -> Db:
        """The underlying ``mapkv.Db`` (its keys and values are encoded)."""
        return self._db

    @property
    def path(self) -> str:
        """The store's path."""
        return os.fspath(self._db.path)

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` if it is absent or expired."""
        raw = self._db.get(_key(key))
        return default if raw is None else _load(raw)

    def __getitem__(self, key: Any) -> Any:
        raw = self._db.get(_key(key))
        if raw is None:
            raise KeyError(key)
        return _load(raw)

    def set(self, key: Any, value: Any, expire: Optional[float] = None) -> bool:
        """Set ``key`` to ``value``, expiring after ``expire`` seconds if
        given. Returns True."""
        self._db.set(_key(key), _dump(value), expire)
        return True

    def __setitem__(self, key: Any, value: Any) -> None:
        self._db.set(_key(key), _dump(value))

    def add(self, key: Any, value: Any, expire: Optional[float] = None) -> bool:
        """Set ``key`` only if it is absent; returns whether it did. Atomic
        across processes."""
        return self._db.add(_key(key), _dump(value), expire)

    def incr(self, key: Any, delta: int = 1, default: Optional[int] = 0) -> int:
        """Add ``delta`` to the int at ``key`` and return the new value,
        atomically across processes. An absent key starts at ``default``;
        with ``default=None`` an absent key raises KeyError."""
        k = _key(key)
        if default is None:
            while True:
                raw = self._db.get(k)
                if raw is None:
                    raise KeyError(key)
                if len(raw) != 8:
                    raise TypeError(f"the value of {key!r} is not an int counter")
                new = int.from_bytes(raw, "little", signed=True) + delta
                if not _I64_MIN <= new <= _I64_MAX:
                    raise OverflowError("the counter would overflow a signed 64-bit int")
                if self._db.cas(k, raw, _counter(new)):
                    return new
        if default:
            self._db.add(k, _counter(default))
        return self._db.incr(k, delta)

    def decr(self, key: Any, delta: int = 1, default: Optional[int] = 0) -> int:
        """``incr(key, -delta, default)``."""
        return self.incr(key, -delta, default)

    def delete(self, key: Any) -> bool:
        """Remove ``key``; returns whether it was there."""
        return self._db.delete(_key(key))

    def __delitem__(self, key: Any) -> None:
        if not self._db.delete(_key(key)):
            raise KeyError(key)

    def pop(self, key: Any, default: Any = None) -> Any:
        """Remove ``key`` and return its value (``default`` if absent).
        Atomic: of several processes popping one key, one gets the value."""
        k = _key(key)
        while True:
            raw = self._db.get(k)
            if raw is None:
                return default
            if self._db.cas(k, raw, None):
                return _load(raw)

    def touch(self, key: Any, expire: Optional[float] = None) -> bool:
        """Set ``key`` to expire ``expire`` seconds from now (None: never),
        keeping its value. Returns False if the key is absent."""
        return self._db.expire(_key(key), expire)

    def ttl(self, key: Any) -> Optional[float]:
        """Seconds until ``key`` expires; None if absent or permanent."""
        return self._db.ttl(_key(key))

    def __contains__(self, key: Any) -> bool:
        return _key(key) in self._db

    def __len__(self) -> int:
        return len(self._db)

    def __iter__(self) -> Iterator[Any]:
        for raw in self._db.keys():
            yield _unkey(raw)

    def clear(self) -> int:
        """Remove every entry, for every process. Returns how many there
        were."""
        n = len(self._db)
        self._db.clear()
        return n

    def stats(self) -> Dict[str, Any]:
        """Hits and misses of every process, evictions, sizes: see
        ``Db.cache_stats``."""
        return self._db.cache_stats()

    def volume(self) -> int:
        """Length of the file in bytes."""
        return int(self._db.cache_stats()["file_len"])

    def memoize(
        self,
        expire: Optional[float] = None,
        typed: bool = False,
        name: Optional[str] = None,
    ) -> Callable[[F], F]:
        """Decorator: cache the function's results, keyed by its name and
        arguments (which must be picklable). A miss computes the value in
        one process: concurrent callers, in any process, wait for it. An
        exception raised by the function stores nothing and propagates.

        ``expire``: seconds results are kept. ``typed``: arguments of
        different types (``1`` and ``1.0``) are different keys. ``name``:
        the key prefix (default: the function's module and qualified name).
        The wrapper's ``__cache_key__(*args, **kwargs)`` returns the key.
        """
        if callable(expire):
            raise TypeError("memoize needs parentheses: @cache.memoize()")

        def decorator(func: F) -> F:
            base = (name if name is not None else _full_name(func),)

            def __cache_key__(*args: Any, **kwargs: Any) -> Tuple[Any, ...]:
                key: Tuple[Any, ...] = base + args
                if kwargs:
                    items = tuple(sorted(kwargs.items()))
                    key += (_KWARGS_MARK,) + items
                    if typed:
                        key += tuple(type(a) for a in args)
                        key += tuple(type(v) for _, v in items)
                elif typed:
                    key += tuple(type(a) for a in args)
                return key

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                k = _key(__cache_key__(*args, **kwargs))
                raw = self._db.get_or_set(k, lambda: _dump(func(*args, **kwargs)), expire)
                return _load(raw)

            wrapper.__cache_key__ = __cache_key__  # type: ignore[attr-defined]
            return wrapper  # type: ignore[return-value]

        return decorator

    def close(self) -> None:
        """Close the handle; the store stays for other handles."""
        self._db.close()

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"mapkv.Cache({self.path!r})"
