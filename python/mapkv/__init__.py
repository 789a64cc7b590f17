"""mapkv: a persistent key-value store and cache in one memory-mapped file,
shared by many processes.

``Db`` is the store itself (bytes in, bytes out), a binding of the Rust
library. ``Cache`` is a diskcache-like cache on top of it: any picklable
value, ``str``/``bytes``/``int`` keys, expiry, and ``memoize``.

    >>> import mapkv
    >>> with mapkv.Db("/tmp/example.mapkv") as db:
    ...     db[b"k"] = b"v"
    ...     db[b"k"]
    b'v'
"""

from ._cache import Cache
from ._mapkv import (
    MAX_KEY_LEN,
    MAX_VALUE_LEN,
    Batch,
    ClosedError,
    CorruptedError,
    Db,
    Error,
    Iterator,
    KeyTooLargeError,
    LockTimeoutError,
    NotAStoreError,
    OutOfSpaceError,
    ReadOnlyError,
    ValueTooLargeError,
)

__all__ = [
    "Db",
    "Batch",
    "Iterator",
    "Cache",
    "Error",
    "CorruptedError",
    "NotAStoreError",
    "LockTimeoutError",
    "ReadOnlyError",
    "KeyTooLargeError",
    "ValueTooLargeError",
    "OutOfSpaceError",
    "ClosedError",
    "MAX_KEY_LEN",
    "MAX_VALUE_LEN",
]
