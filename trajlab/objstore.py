"""Object-store access for run dirs: a local folder or an ``s3://`` prefix.

One small interface, :class:`Store`, with two implementations:

* :class:`LocalStore` -- a folder. Objects are regular files; nothing is
  read or written through a symbolic link below the root (every folder on
  the way is checked with ``lstat``, files are opened with ``O_NOFOLLOW``),
  whole-object writes go through a temporary file and ``os.replace``
  (:func:`trajlab.storage.atomic_writer`), optionally with ``fsync`` of the
  file and of its folder.
* :class:`S3Store` -- a bucket prefix, through fsspec/s3fs and its
  aiobotocore client (the optional ``trajlab[s3]`` extra). Each write is one
  ``PutObject`` (never a multipart upload, so an interrupted write leaves
  nothing behind), ranged reads are ``GetObject`` with ``Range``, and the
  conditional operations send the real S3 preconditions (``If-None-Match:
  *`` and ``If-Match`` on ``PutObject``, ``If-Match`` on ``DeleteObject``);
  a ``412 Precondition Failed`` answer becomes ``None`` / ``False``.
  Endpoint and credentials come from the environment the way botocore reads
  them (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, an
  instance role, ...), or from ``storage_options`` (the keyword arguments of
  ``s3fs.S3FileSystem``).

Keys are relative, ``/``-separated strings of ``[A-Za-z0-9._-]`` components
(no empty, ``.`` or ``..`` component); every key is checked before any I/O.

A store pickles as its URL (and ``storage_options``), so joblib and dask
workers on other hosts receive it and open their own connection.

Conditional operations and their limits
---------------------------------------
They exist for the single-writer lease (:mod:`trajlab.lease`).

* S3: atomic on the server. Safe where the server honours the headers
  atomically (AWS S3, MinIO releases with conditional writes); an
  S3-compatible server that ignores them is caught by the lease's probe.
  moto's server checks and writes in separate steps (two concurrent writes
  on one ETag can both succeed), which no probe can see; the tests run it
  with one mutating request at a time (``tests/_moto_server.py``).
* Local: ``put_if_absent`` writes a temporary file and ``os.link``\\ s it to
  the key (fails if the key exists, even against a plain :meth:`put`);
  ``put_if_match`` and ``delete_if_match`` compare and write while holding
  an exclusive ``flock`` on the key's folder. That is atomic among the
  processes of one host that use these methods, not against a plain
  :meth:`put` of the same key, and not across hosts on a network
  filesystem (whose ``flock`` may be local to one client). The ETag of a
  local object is derived from its inode, modification time, size and
  first 64 KiB, so a rewrite with different bytes always changes it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import email.utils
import errno
import hashlib
import os
import re
import stat
import threading
import time
from typing import NamedTuple

from . import _validation as v
from . import storage as _st

__all__ = ["open_store", "Store", "LocalStore", "S3Store", "ObjectInfo", "ObjectTooLargeError",
           "TruncatedObjectError", "check_key", "S3_EXTRA_HINT"]

#: What to install for ``s3://`` run dirs.
S3_EXTRA_HINT = "pip install 'trajlab[s3]'"
#: Longest key, in bytes (S3's limit, prefix included).
MAX_KEY_BYTES = 1024
#: Longest key component (a file name on Linux).
MAX_COMPONENT = 255
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_RULE = ("a relative '/'-separated key of components made of [A-Za-z0-9._-] "
             "(no empty, '.' or '..' component, no leading or trailing '/', at most "
             f"{MAX_KEY_BYTES} bytes)")
_URL_RULE = ("a local path or an 's3://bucket/prefix' URL (URL schemes trajlab reads: 's3'; "
             "remote storage needs " + S3_EXTRA_HINT + ")")
#: Bytes of a local object that enter its ETag.
_ETAG_HEAD = 1 << 16
#: Retries of a conditional S3 write answered 409 ConditionalRequestConflict.
_CONFLICT_RETRIES = 4
#: Requests that S3Store.get_many keeps in flight at once.
CONCURRENCY = 32


class ObjectInfo(NamedTuple):
    """What :meth:`Store.head` returns."""

    #: Opaque version tag; any rewrite changes it (S3: the ETag, quotes included).
    etag: str
    #: Last modification, Unix seconds, by the store's clock (S3: whole seconds).
    last_modified: float
    #: Bytes.
    size: int


class ObjectTooLargeError(_st.TooLargeError):
    """An object is larger than its reader's bound (``size``: bytes found)."""

    def __init__(self, url, size, max_bytes):
        super().__init__(size)
        self.url, self.max_bytes = url, max_bytes

    def __str__(self):
        return (f"{self.url} holds {self.size} bytes, more than the {self.max_bytes} bytes "
                "trajlab reads from it; it was not read.")


class TruncatedObjectError(OSError):
    """A ranged read found fewer bytes than asked: the object is truncated."""

    def __init__(self, url, start, length, got):
        super().__init__(errno.EIO, f"{url} is truncated: asked for {length} bytes at offset "
                                    f"{start}, it holds only {got} of them.")
        self.url, self.start, self.length, self.got = url, start, length, got


# --------------------------------------------------------------------- keys
def check_key(key, owner="Store", name="key", allow_empty=False):
    """Return ``key`` if it is a valid store key (else the template's
    TypeError / ValueError). ``allow_empty``: also accept '' (the root)."""
    if not isinstance(key, str):
        v.fail(name, owner, _KEY_RULE, key, TypeError)
    if key == "" and allow_empty:
        return key
    parts = key.split("/")
    if (key == "" or len(key.encode("utf-8")) > MAX_KEY_BYTES
            or any(p in ("", ".", "..") or len(p) > MAX_COMPONENT
                   or not _COMPONENT_RE.match(p) for p in parts)):
        v.fail(name, owner, _KEY_RULE, key)
    return key


def _check_prefix(prefix, owner):
    """A listing prefix: a key, '' (everything) or a key with one trailing '/'."""
    if isinstance(prefix, str) and prefix.endswith("/") and prefix != "/":
        prefix = prefix[:-1]
    return check_key(prefix, owner, "prefix", allow_empty=True)


def _check_data(data, owner):
    try:
        view = memoryview(data)
    except TypeError:
        v.fail("data", owner, "a bytes-like object (bytes, bytearray, memoryview)", type(data),
               TypeError)
    if not view.c_contiguous:
        v.fail("data", owner, "a C-contiguous bytes-like object", "a non-contiguous buffer")
    if view.format == "B" and view.ndim == 1:
        return view
    try:
        return view.cast("B")
    except TypeError:       # a format memoryview cannot cast (e.g. a structured dtype)
        return memoryview(view.tobytes())


#: Most ranges in one get_ranges call.
MAX_RANGES = 1 << 20


def _check_ranges(ranges, owner):
    expected = (f"a sequence of at most {MAX_RANGES} (start, length) pairs of ints >= 0")
    try:
        pairs = list(ranges)
    except TypeError:
        v.fail("ranges", owner, expected, ranges, TypeError)
    if len(pairs) > MAX_RANGES:
        v.fail("ranges", owner, expected, f"{len(pairs)} pairs")
    out = []
    for p in pairs:
        if isinstance(p, (str, bytes)) or not hasattr(p, "__len__") or len(p) != 2:
            v.fail("ranges", owner, expected, p, TypeError)
        out.append((v.check_int(p[0], "start", owner, 0, 1 << 60),
                    v.check_int(p[1], "length", owner, 0, 1 << 40)))
    return out


def _check_etag(etag, owner):
    if not isinstance(etag, str) or not etag or len(etag) > 1024:
        v.fail("etag", owner, "a non-empty str (an ETag returned by this store)", etag,
               TypeError if not isinstance(etag, str) else ValueError)
    return etag


# -------------------------------------------------------------------- stores
def open_store(url_or_path, storage_options=None, *, name="url_or_path", owner="open_store"):
    """The :class:`Store` of a local path or an ``s3://bucket/prefix`` URL.

    A :class:`Store` is returned as it is. ``storage_options`` (S3 only):
    keyword arguments of ``s3fs.S3FileSystem`` (``endpoint_url``, ``key``,
    ``secret``, ``client_kwargs``, ...); without them s3fs/botocore read the
    environment. ``name`` and ``owner`` name the parameter in error
    messages (e.g. ``name='run_dir', owner='generate'``).
    """
    if isinstance(url_or_path, Store):
        if storage_options is not None:
            v.fail("storage_options", owner, "None when a Store is given", storage_options)
        return url_or_path
    if isinstance(url_or_path, bytes) or not isinstance(url_or_path, (str, os.PathLike)):
        v.fail(name, owner, _URL_RULE, url_or_path, TypeError)
    text = os.fspath(url_or_path)
    if not isinstance(text, str) or text == "":
        v.fail(name, owner, _URL_RULE, url_or_path, TypeError if not isinstance(text, str)
               else ValueError)
    m = _SCHEME_RE.match(text)
    if m is None:
        if storage_options is not None:
            v.fail("storage_options", owner, "None for a local path", storage_options)
        return LocalStore(text)
    if m.group(1) != "s3":
        v.fail(name, owner, _URL_RULE, url_or_path)
    return S3Store(text, storage_options, name=name, owner=owner)


class Store:
    """Interface of an object store rooted at :attr:`url` (see the module
    docstring). Keys are checked with :func:`check_key`."""

    #: ``file`` or ``s3``.
    scheme = ""

    @property
    def url(self):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.url!r})"

    def __eq__(self, other):
        return type(self) is type(other) and self.__reduce__() == other.__reduce__()

    def __hash__(self):
        return hash(self.url)

    def key_url(self, key):
        """Full URL (or path) of ``key``, for messages."""
        return self.url.rstrip("/") + "/" + key

    def _key(self, key, method):
        return check_key(key, f"{type(self).__name__}.{method}")

    def _max_bytes(self, max_bytes, method):
        return v.check_int(max_bytes, "max_bytes", f"{type(self).__name__}.{method}", 0,
                           1 << 40)

    # The methods every store has (documented here, implemented below).
    def get(self, key, max_bytes):
        """The bytes of ``key``. FileNotFoundError if absent;
        :class:`ObjectTooLargeError` (read nothing) if larger than ``max_bytes``."""
        raise NotImplementedError

    def get_range(self, key, start, length):
        """Exactly ``length`` bytes of ``key`` from offset ``start``.
        FileNotFoundError if absent, :class:`TruncatedObjectError` if shorter."""
        raise NotImplementedError

    def get_tail(self, key, length):
        """``(the last min(length, size) bytes of key, size)``: a shard
        index with the object's size in one request on S3 (a suffix range).
        FileNotFoundError if absent."""
        key = self._key(key, "get_tail")
        length = v.check_int(length, "length", f"{type(self).__name__}.get_tail", 1, 1 << 40)
        size = self.size(key)
        if size is None:
            raise FileNotFoundError(errno.ENOENT, f"{self.key_url(key)} does not exist")
        n = min(length, size)
        return (self.get_range(key, size - n, n) if n else b""), size

    def get_ranges(self, key, ranges):
        """``[get_range(key, start, length) for start, length in ranges]``,
        with the requests in flight together on S3 (the local store reads
        them in turn)."""
        owner = f"{type(self).__name__}.get_ranges"
        key = self._key(key, "get_ranges")
        return [self.get_range(key, s, n) for s, n in _check_ranges(ranges, owner)]

    def get_many(self, keys, max_bytes):
        """``{key: bytes}`` of the ``keys`` that exist (each at most
        ``max_bytes``, as :meth:`get`); S3: up to :data:`CONCURRENCY`
        requests in flight."""
        out = {}
        for k in keys:
            with contextlib.suppress(FileNotFoundError):
                out[k] = self.get(k, max_bytes)
        return out

    def size(self, key):
        """Bytes of ``key``, or None if there is no such object."""
        raise NotImplementedError

    def exists(self, key):
        """Whether object ``key`` exists."""
        return self.size(key) is not None

    def head(self, key):
        """:class:`ObjectInfo` ``(etag, last_modified, size)`` of ``key``, or None."""
        raise NotImplementedError

    def server_time(self, key=None):
        """The store's current time, Unix seconds (S3: the ``Date`` header of
        a HEAD request on ``key``; local: the modification time of a file
        created now, i.e. the filesystem's clock)."""
        raise NotImplementedError

    def put(self, key, data, fsync=False):
        """Replace ``key`` by ``data`` as a whole (readers see the old or the
        new object, never a part). Returns the new ETag."""
        raise NotImplementedError

    def put_many(self, items):
        """``put`` every ``(key, data)`` of ``items``; their ETags in order
        (S3: the requests are in flight together)."""
        return [self.put(k, d) for k, d in items]

    def put_if_absent(self, key, data):
        """Create ``key`` only if there is no such object: its ETag, or None
        if the key exists. (On S3, None can also follow a write of this very
        call whose answer was lost and whose retry then met its own object:
        compare the content where that matters, as the lease does.)"""
        raise NotImplementedError

    def put_if_match(self, key, data, etag):
        """Replace ``key`` only if its ETag is ``etag``: the new ETag, or
        None if it differs or the key is absent (the same caveat as
        :meth:`put_if_absent` on a retried request)."""
        raise NotImplementedError

    def delete(self, key):
        """Remove ``key`` (no error if it is absent)."""
        raise NotImplementedError

    def delete_if_match(self, key, etag):
        """Remove ``key`` only if its ETag is ``etag``; whether it was removed."""
        raise NotImplementedError

    def list(self, prefix=""):
        """Sorted keys of the objects under the folder-like ``prefix`` ('' = all).
        Names that are not valid keys (and the local store's temporary
        files) are not objects of the store and are left out."""
        raise NotImplementedError

    def list_sizes(self, prefix=""):
        """``{key: bytes}`` of the objects :meth:`list` gives (S3: from the
        listing itself, one request per 1,000 keys instead of a HEAD each)."""
        return {k: s for k in self.list(prefix) if (s := self.size(k)) is not None}


# --------------------------------------------------------------------- local
def _local_etag(st, head):
    h = hashlib.sha256(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}:".encode())
    h.update(head)
    return h.hexdigest()[:32]


def _local_missing(path):
    return FileNotFoundError(errno.ENOENT, f"{path} does not exist")


class LocalStore(Store):
    """A folder as an object store (see the module docstring).

    The root itself may be reached through a symbolic link (the user chose
    it); below it, no link is followed: a link in the place of a folder or
    an object raises :class:`trajlab.storage.RunDirError`.
    """

    scheme = "file"

    def __init__(self, root):
        root = v.check_path(root, "root", "LocalStore")
        if root == "":
            v.fail("root", "LocalStore", "a non-empty path", root)
        self.root = os.path.abspath(root)

    @property
    def url(self):
        return self.root

    def __reduce__(self):
        return (LocalStore, (self.root,))

    def path(self, key):
        """Filesystem path of ``key`` (checked)."""
        return os.path.join(self.root, *self._key(key, "path").split("/"))

    def _folders(self, key, create=False, include_last=False):
        """Check (and with ``create`` make) the folders on the way to ``key``
        from the root; returns the path of ``key``. FileNotFoundError if one
        is missing (without ``create``)."""
        parts = key.split("/") if key else []
        if create:
            os.makedirs(self.root, exist_ok=True)
        path = self.root
        for part in parts if include_last else parts[:-1]:
            path = os.path.join(path, part)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path)
                mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise _st._symlink_error(path)
            if not stat.S_ISDIR(mode):
                raise _st.RunDirError(f"{path!r} should be a folder of the store {self.root!r}, "
                                      "but is a file.")
        return os.path.join(self.root, *parts)

    def _existing(self, key):
        """Path of ``key`` whose folders exist (FileNotFoundError naming the key)."""
        try:
            return self._folders(key)
        except FileNotFoundError:
            raise _local_missing(os.path.join(self.root, key)) from None

    def _lstat(self, key, path):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise _st._symlink_error(path)
        if stat.S_ISDIR(st.st_mode):
            return None
        if not stat.S_ISREG(st.st_mode):
            raise _st._NotRegularError(f"{path!r} is not a regular file.")
        return st

    def get(self, key, max_bytes):
        key = self._key(key, "get")
        max_bytes = self._max_bytes(max_bytes, "get")
        path = self._existing(key)
        try:
            return _st.read_bytes(path, max_bytes)
        except FileNotFoundError:
            raise _local_missing(path) from None
        except _st._NotRegularError:
            if os.path.isdir(path) and not os.path.islink(path):
                raise _local_missing(path) from None    # a folder is no object
            raise
        except _st.TooLargeError as exc:
            raise ObjectTooLargeError(path, exc.size, max_bytes) from None

    def get_range(self, key, start, length):
        key = self._key(key, "get_range")
        start = v.check_int(start, "start", "LocalStore.get_range", 0, 1 << 60)
        length = v.check_int(length, "length", "LocalStore.get_range", 0, 1 << 40)
        path = self._existing(key)
        try:
            fd = _st.open_nofollow(path, os.O_RDONLY)
        except FileNotFoundError:
            raise _local_missing(path) from None
        except _st._NotRegularError:
            if os.path.isdir(path) and not os.path.islink(path):
                raise _local_missing(path) from None
            raise
        try:
            size = os.fstat(fd).st_size
            if start + length > size:
                raise TruncatedObjectError(path, start, length, max(0, min(length, size - start)))
            out = bytearray(length)
            view, got = memoryview(out), 0
            while got < length:
                n = os.preadv(fd, [view[got:]], start + got)
                if n == 0:
                    break
                got += n
        finally:
            os.close(fd)
        if got < length:
            raise TruncatedObjectError(path, start, length, got)
        return bytes(out)

    def size(self, key):
        key = self._key(key, "size")
        try:
            path = self._folders(key)
        except FileNotFoundError:
            return None
        st = self._lstat(key, path)
        return None if st is None else st.st_size

    def head(self, key):
        key = self._key(key, "head")
        try:
            path = self._folders(key)
        except FileNotFoundError:
            return None
        return self._head_path(path)

    def _head_path(self, path):
        try:
            fd = _st.open_nofollow(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except _st._NotRegularError:
            if os.path.isdir(path):
                return None
            raise
        try:
            st = os.fstat(fd)
            head = os.pread(fd, _ETAG_HEAD, 0)
        finally:
            os.close(fd)
        return ObjectInfo(_local_etag(st, head), st.st_mtime_ns / 1e9, st.st_size)

    def server_time(self, key=None):
        if key is not None:
            self._key(key, "server_time")
        try:
            os.makedirs(self.root, exist_ok=True)
            tmp = _st.temp_path(os.path.join(self.root, "clock"))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            try:
                return os.fstat(fd).st_mtime_ns / 1e9
            finally:
                os.close(fd)
                os.unlink(tmp)
        except OSError:     # a read-only store: this host's clock
            return time.time()

    def put(self, key, data, fsync=False):
        key = self._key(key, "put")
        view = _check_data(data, "LocalStore.put")
        v.check_bool(fsync, "fsync", "LocalStore.put")
        path = self._folders(key, create=True)
        return self._write(path, view, fsync)

    @staticmethod
    def _write(path, view, fsync):
        with _st.atomic_writer(path, fsync=fsync) as fh:
            fh.write(view)
            fh.flush()
            st = os.fstat(fh.fileno())
        return _local_etag(st, bytes(view[:_ETAG_HEAD]))

    def put_if_absent(self, key, data):
        key = self._key(key, "put_if_absent")
        view = _check_data(data, "LocalStore.put_if_absent")
        path = self._folders(key, create=True)
        if os.path.lexists(path):
            self._lstat(key, path)          # a link is refused, not reported as "exists"
            return None
        tmp = None
        try:
            for _ in range(16):
                tmp = _st.temp_path(path)
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o666)
                    break
                except FileExistsError:
                    tmp = None
            else:   # pragma: no cover - 16 random collisions
                raise _st.RunDirError(f"cannot create a temporary file next to {path!r}")
            with os.fdopen(fd, "wb") as fh:
                fh.write(view)
                fh.flush()
                os.fsync(fh.fileno())
                st = os.fstat(fh.fileno())
            try:
                os.link(tmp, path)          # atomic: fails if the key exists
            except FileExistsError:
                return None
            _st.fsync_dir(os.path.dirname(path))
            return _local_etag(st, bytes(view[:_ETAG_HEAD]))
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    @contextlib.contextmanager
    def _folder_lock(self, path):
        import fcntl    # here: trajlab imports where fcntl does not exist

        fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                     | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)        # releases the lock

    def put_if_match(self, key, data, etag):
        key = self._key(key, "put_if_match")
        view = _check_data(data, "LocalStore.put_if_match")
        etag = _check_etag(etag, "LocalStore.put_if_match")
        try:
            path = self._folders(key)
        except FileNotFoundError:
            return None
        with self._folder_lock(path):
            self._lstat(key, path)
            info = self._head_path(path)
            if info is None or info.etag != etag:
                return None
            return self._write(path, view, True)

    def delete(self, key):
        key = self._key(key, "delete")
        try:
            path = self._folders(key)
        except FileNotFoundError:
            return
        st = self._lstat(key, path)
        if st is None and os.path.isdir(path):
            raise _st.RunDirError(f"{path!r} is a folder, not an object of the store; "
                                  "trajlab does not delete it.")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def delete_if_match(self, key, etag):
        key = self._key(key, "delete_if_match")
        etag = _check_etag(etag, "LocalStore.delete_if_match")
        try:
            path = self._folders(key)
        except FileNotFoundError:
            return False
        with self._folder_lock(path):
            self._lstat(key, path)
            info = self._head_path(path)
            if info is None or info.etag != etag:
                return False
            os.unlink(path)
        return True

    def list(self, prefix=""):
        prefix = _check_prefix(prefix, "LocalStore.list")
        try:
            base = self._folders(prefix, include_last=True)
        except FileNotFoundError:
            return []
        except _st.RunDirError:
            if prefix and os.path.isfile(os.path.join(self.root, prefix)) and not \
                    os.path.islink(os.path.join(self.root, prefix)):
                return []       # an object, not a folder: nothing under it
            raise
        out = []
        self._walk(base, prefix, out)
        return sorted(out)

    def _walk(self, folder, rel, out):
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        for e in entries:
            if not _COMPONENT_RE.match(e.name) or e.name in (".", "..") \
                    or _st.temp_owner(e.name) is not None:
                continue
            key = f"{rel}/{e.name}" if rel else e.name
            if e.is_symlink():
                raise _st._symlink_error(e.path)
            if e.is_dir(follow_symlinks=False):
                self._walk(e.path, key, out)
            elif e.is_file(follow_symlinks=False) and len(key.encode()) <= MAX_KEY_BYTES:
                out.append(key)


# ------------------------------------------------------------------------ S3
def _client_error(exc):
    """The botocore ClientError behind an exception (s3fs translates them
    and keeps the original as ``__cause__``), or None."""
    try:
        from botocore.exceptions import ClientError
    except ImportError:     # pragma: no cover
        return None
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ClientError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _status(err):
    """(HTTP status, S3 error code) of a ClientError."""
    resp = err.response or {}
    return (resp.get("ResponseMetadata", {}).get("HTTPStatusCode"),
            str(resp.get("Error", {}).get("Code", "")))


def _date_header(resp):
    date = (resp or {}).get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not date:
        return None
    return email.utils.parsedate_to_datetime(date).timestamp()


def _import_s3fs():
    try:
        import fsspec.asyn  # noqa: F401
        import s3fs
    except ImportError as exc:
        raise ImportError(f"s3:// run dirs need s3fs, which is not installed ({exc}). "
                          f"Install it with: {S3_EXTRA_HINT}") from None
    return s3fs


_FS_CACHE = {}
_FS_LOCK = threading.Lock()


def _fs_cache_key(options):
    """One s3fs client per process, options and AWS_* environment (a new
    client costs about a second: botocore loads its models)."""
    from fsspec.utils import tokenize

    env = tuple(sorted((k, val) for k, val in os.environ.items() if k.startswith("AWS_")))
    return (os.getpid(), tokenize(options), env)


def _shared_filesystem(key, options):
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            if any(k[0] != os.getpid() for k in _FS_CACHE):     # forked: the parent's
                _FS_CACHE.clear()                                # clients are not ours
            while len(_FS_CACHE) >= 16:                         # the oldest first
                _FS_CACHE.pop(next(iter(_FS_CACHE)))
            fs = _import_s3fs().S3FileSystem(**{**options, "skip_instance_cache": True})
            _FS_CACHE[key] = fs
        return fs


def _is_precondition(status, code):
    return status == 412 or code == "PreconditionFailed"


def _is_missing(status, code):
    return status == 404 or code in ("NoSuchKey", "NotFound", "404")


def _is_conflict(status, code):
    return status == 409 and code == "ConditionalRequestConflict"


class S3Store(Store):
    """A bucket prefix as an object store, through s3fs (see the module
    docstring). ``url``: ``s3://bucket`` or ``s3://bucket/prefix``."""

    scheme = "s3"

    def __init__(self, url, storage_options=None, *, name="url", owner="S3Store"):
        if not isinstance(url, str):
            v.fail(name, owner, _URL_RULE, url, TypeError)
        rest = url[5:] if url.startswith("s3://") else None
        if rest is None:
            v.fail(name, owner, _URL_RULE, url)
        bucket, _, prefix = rest.partition("/")
        prefix = prefix[:-1] if prefix.endswith("/") else prefix
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            v.fail(name, owner, "an 's3://bucket/prefix' URL whose bucket name has 3-63 "
                   "characters of [a-z0-9.-]", url)
        if prefix:
            try:
                check_key(prefix)
            except ValueError:
                v.fail(name, owner, "an 's3://bucket/prefix' URL whose prefix is "
                       + _KEY_RULE, url)
        if storage_options is None:
            storage_options = {}
        if not isinstance(storage_options, dict) or not all(
                isinstance(k, str) for k in storage_options):
            v.fail("storage_options", owner, "a dict of s3fs.S3FileSystem keyword arguments "
                   "or None", storage_options, TypeError)
        if storage_options.get("asynchronous"):
            v.fail("storage_options", owner, "a dict without asynchronous=True",
                   storage_options)
        _import_s3fs()
        self.bucket, self.prefix = bucket, prefix
        self.storage_options = dict(storage_options)
        self._fs, self._fs_key = None, None
        self._lock = threading.Lock()

    @property
    def url(self):
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __reduce__(self):
        return (S3Store, (self.url, self.storage_options or None))

    def _full(self, key):
        full = f"{self.prefix}/{key}" if self.prefix else key
        if len(full.encode("utf-8")) > MAX_KEY_BYTES:
            v.fail("key", "S3Store", f"a key of at most {MAX_KEY_BYTES} bytes with the prefix "
                   f"{self.prefix!r}", key)
        return full

    def _filesystem(self):
        with self._lock:
            key = _fs_cache_key(self.storage_options)
            if self._fs is None or self._fs_key != key:
                self._fs = _shared_filesystem(key, self.storage_options)
                self._fs_key = key
            return self._fs

    def _run(self, coro, *args):
        import fsspec.asyn

        fs = self._filesystem()
        return fsspec.asyn.sync(fs.loop, coro, fs, *args)

    async def _call(self, fs, method, key, **kw):
        """One S3 call on ``key``: (response, None) or (None, (status,
        code, ClientError)) for an S3 error answer; other errors raise."""
        try:
            resp = await fs._call_s3(method, Bucket=self.bucket, Key=self._full(key), **kw)
            return resp, None
        except Exception as exc:
            err = _client_error(exc)
            if err is None:
                raise
            return None, (*_status(err), err, exc)

    def _missing(self, key):
        return FileNotFoundError(errno.ENOENT, f"{self.key_url(key)} does not exist")

    # -- reading
    def get(self, key, max_bytes):
        key = self._key(key, "get")
        max_bytes = self._max_bytes(max_bytes, "get")
        return self._run(self._aget, key, max_bytes)

    async def _aget(self, fs, key, max_bytes):
        resp, err = await self._call(fs, "get_object", key)
        if err is not None:
            if _is_missing(*err[:2]):
                raise self._missing(key) from None
            raise err[3]
        async with resp["Body"] as body:
            n = int(resp["ContentLength"])
            if n > max_bytes:
                raise ObjectTooLargeError(self.key_url(key), n, max_bytes)
            data = await body.read()
        if len(data) != n:
            raise TruncatedObjectError(self.key_url(key), 0, n, len(data))
        return data

    def get_many(self, keys, max_bytes):
        keys = [self._key(k, "get_many") for k in keys]
        max_bytes = self._max_bytes(max_bytes, "get_many")
        return self._run(self._aget_many, keys, max_bytes)

    async def _aget_many(self, fs, keys, max_bytes):
        import asyncio

        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(key):
            async with gate:
                try:
                    return key, await self._aget(fs, key, max_bytes)
                except FileNotFoundError:
                    return key, None

        got = await asyncio.gather(*[one(k) for k in keys])
        return {k: data for k, data in got if data is not None}

    def get_range(self, key, start, length):
        key = self._key(key, "get_range")
        start = v.check_int(start, "start", "S3Store.get_range", 0, 1 << 60)
        length = v.check_int(length, "length", "S3Store.get_range", 0, 1 << 40)
        if length == 0:
            size = self.size(key)
            if size is None:
                raise self._missing(key)
            if start > size:
                raise TruncatedObjectError(self.key_url(key), start, length, 0)
            return b""
        return self._run(self._arange, key, start, length)

    async def _arange(self, fs, key, start, length):
        resp, err = await self._call(fs, "get_object", key,
                                     Range=f"bytes={start}-{start + length - 1}")
        if err is not None:
            if _is_missing(*err[:2]):
                raise self._missing(key) from None
            if err[0] == 416 or err[1] == "InvalidRange":
                raise TruncatedObjectError(self.key_url(key), start, length, 0) from None
            raise err[3]
        async with resp["Body"] as body:
            data = await body.read()
        content_range = str(resp.get("ContentRange", ""))
        if content_range and not content_range.startswith(f"bytes {start}-"):
            raise TruncatedObjectError(self.key_url(key), start, length, 0)
        if len(data) != length:
            raise TruncatedObjectError(self.key_url(key), start, length, len(data))
        return data

    def get_tail(self, key, length):
        key = self._key(key, "get_tail")
        length = v.check_int(length, "length", "S3Store.get_tail", 1, 1 << 40)
        return self._run(self._atail, key, length)

    async def _atail(self, fs, key, length):
        resp, err = await self._call(fs, "get_object", key, Range=f"bytes=-{length}")
        if err is not None:
            if _is_missing(*err[:2]):
                raise self._missing(key) from None
            if err[0] == 416 or err[1] == "InvalidRange":     # an empty object
                return b"", 0
            raise err[3]
        n = int(resp["ContentLength"])
        if n > length:          # a server that ignored the range: read nothing of it
            resp["Body"].close()
            raise TruncatedObjectError(self.key_url(key), 0, length, n)
        async with resp["Body"] as body:
            data = await body.read()
        content_range = str(resp.get("ContentRange") or "")
        total = content_range.rpartition("/")[2]
        size = int(total) if total.isdigit() else n          # a 200 answer: the whole object
        if len(data) != n or size < n:
            raise TruncatedObjectError(self.key_url(key), max(0, size - n), n, len(data))
        return data, size

    def get_ranges(self, key, ranges):
        key = self._key(key, "get_ranges")
        pairs = _check_ranges(ranges, "S3Store.get_ranges")
        if any(n == 0 for _, n in pairs):
            return super().get_ranges(key, pairs)
        return self._run(self._aranges, key, pairs)

    async def _aranges(self, fs, key, pairs):
        import asyncio

        return list(await asyncio.gather(*[self._arange(fs, key, s, n) for s, n in pairs]))

    def size(self, key):
        info = self._run(self._ahead, self._key(key, "size"))[0]
        return None if info is None else info.size

    def head(self, key):
        return self._run(self._ahead, self._key(key, "head"))[0]

    def server_time(self, key=None):
        key = ".trajlab-clock" if key is None else self._key(key, "server_time")
        now = self._run(self._aclock, key)
        if now is None:     # pragma: no cover - every S3 answer has a Date header
            raise OSError(f"{self.url} answered without a Date header; its clock is unknown")
        return now

    async def _aclock(self, fs, key):
        """The Date of the answer to a HEAD of ``key``, whatever the answer
        (a caller without s3:ListBucket gets 403 for a missing key)."""
        resp, err = await self._call(fs, "head_object", key)
        return _date_header(resp if err is None else err[2].response)

    async def _ahead(self, fs, key):
        """(ObjectInfo or None, server time of the answer)."""
        resp, err = await self._call(fs, "head_object", key)
        if err is not None:
            if _is_missing(*err[:2]):
                return None, _date_header(err[2].response)
            raise err[3]
        lm = resp["LastModified"]
        if isinstance(lm, _dt.datetime):
            lm = lm.timestamp()
        return ObjectInfo(str(resp["ETag"]), float(lm), int(resp["ContentLength"])), \
            _date_header(resp)

    def list(self, prefix=""):
        prefix = _check_prefix(prefix, "S3Store.list")
        return sorted(self._run(self._alist, prefix))

    def list_sizes(self, prefix=""):
        prefix = _check_prefix(prefix, "S3Store.list_sizes")
        return self._run(self._alist, prefix)

    async def _alist(self, fs, prefix):
        """``{key: size}`` under ``prefix``."""
        base = "/".join(p for p in (self.prefix, prefix) if p)
        base = base + "/" if base else ""
        out, token = {}, None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": base}
            if token:
                kw["ContinuationToken"] = token
            resp = await fs._call_s3("list_objects_v2", **kw)
            for obj in resp.get("Contents", []):
                rel = obj["Key"][len(self.prefix) + 1 if self.prefix else 0:]
                try:
                    check_key(rel)
                except ValueError:
                    continue
                out[rel] = int(obj["Size"])
            if not resp.get("IsTruncated"):
                break
            token = resp.get("NextContinuationToken")
            if not token:       # pragma: no cover - a server that pages without a token
                break
        return out

    # -- writing
    def put(self, key, data, fsync=False):
        key = self._key(key, "put")
        body = bytes(_check_data(data, "S3Store.put"))
        v.check_bool(fsync, "fsync", "S3Store.put")      # a finished PUT is durable
        return self._run(self._aput, key, body, {})

    def put_many(self, items):
        checked = [(self._key(k, "put_many"), bytes(_check_data(d, "S3Store.put_many")))
                   for k, d in items]
        return self._run(self._aput_many, checked)

    async def _aput_many(self, fs, items):
        import asyncio

        return list(await asyncio.gather(*[self._aput(fs, k, d, {}) for k, d in items]))

    def put_if_absent(self, key, data):
        key = self._key(key, "put_if_absent")
        body = bytes(_check_data(data, "S3Store.put_if_absent"))
        return self._run(self._aput, key, body, {"IfNoneMatch": "*"})

    def put_if_match(self, key, data, etag):
        key = self._key(key, "put_if_match")
        body = bytes(_check_data(data, "S3Store.put_if_match"))
        etag = _check_etag(etag, "S3Store.put_if_match")
        return self._run(self._aput, key, body, {"IfMatch": etag})

    async def _aput(self, fs, key, body, cond):
        import asyncio

        for attempt in range(_CONFLICT_RETRIES + 1):
            resp, err = await self._call(fs, "put_object", key, Body=body, **cond)
            if err is None:
                return str(resp["ETag"])
            status, code = err[:2]
            if cond and _is_precondition(status, code):
                return None
            if "IfMatch" in cond and _is_missing(status, code):
                return None
            if cond and _is_conflict(status, code) and attempt < _CONFLICT_RETRIES:
                await asyncio.sleep(0.05 * 2 ** attempt)
                continue
            raise err[3]

    def delete(self, key):
        key = self._key(key, "delete")
        self._run(self._adelete, key, {})

    def delete_if_match(self, key, etag):
        key = self._key(key, "delete_if_match")
        etag = _check_etag(etag, "S3Store.delete_if_match")
        return self._run(self._adelete, key, {"IfMatch": etag})

    async def _adelete(self, fs, key, cond):
        import asyncio

        for attempt in range(_CONFLICT_RETRIES + 1):
            resp, err = await self._call(fs, "delete_object", key, **cond)
            if err is None:
                return True
            status, code = err[:2]
            if _is_missing(status, code):
                return not cond
            if cond and _is_precondition(status, code):
                return False
            if cond and _is_conflict(status, code) and attempt < _CONFLICT_RETRIES:
                await asyncio.sleep(0.05 * 2 ** attempt)
                continue
            raise err[3]
