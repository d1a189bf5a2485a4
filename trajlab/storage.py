"""The run directory: on-disk format, shard writing, records, lock.

The format is described in ``docs/FORMAT.md`` (format version
:data:`FORMAT_VERSION`). In short::

    run_dir/
      spec.json            written first: spec, fingerprint, layout, versions
      <array>.npy          one preallocated .npy per array (see LAYOUT)
      annotations/NNNNN.jsonl   per-shard text ground truth (one JSON per sample)
      shards/NNNNN.json    completion record of shard NNNNN (checksums)
      progress.json, PROGRESS.txt   written by the parent only
      manifest.json        written last: the dataset is complete
      .lock                one writer at a time (flock; dies with its owner)

Workers write their shard's bytes straight into the preallocated files
(``os.pwrite`` at the shard's offset) and return a small record; the
parent alone writes records, progress and the manifest, each atomically
(temporary file + ``os.replace``).

Nothing here follows a symbolic link: files are opened with
``O_NOFOLLOW`` (files written in place must also have a single hard link),
temporary files are created exclusively under names that record trajlab,
the host and the pid (:func:`temp_path`), and only such names of dead
processes are ever cleaned up. Everything read back is checked against
what trajlab writes: spec.json field by field (:func:`load_layout`), each
.npy header byte for byte (:func:`check_array_file`), records
(:func:`check_record`, :func:`record_data_problem`) and the manifest
(:func:`check_manifest`, :func:`build_manifest`); JSON files are read with
a size limit.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import io
import json
import os
import re
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import xxhash

from . import _validation as v
from . import zstore
from .generator import (annotation_records, array_layout, generate_block, generate_samples,
                        n_param_columns, param_columns, probe_digest, render_rows)
from .spec import DATA_VERSION, DatasetSpec

__all__ = ["FORMAT_VERSION", "RunLayout", "atomic_writer", "write_json_atomic", "read_json", "RunLock",
           "RunDirError", "write_shard", "sha256_bytes", "utcnow", "temp_path", "temp_owner",
           "remove_stale_temps", "check_managed_entries", "HOST"]

#: How new format-2 run dirs keep the text ground truth: ``'params'``, a
#: float64 array of every sample's class parameters in the zarr store, from
#: which the records (class, split, params, equation, description) are made
#: on read; ``'jsonl'``, the records as JSON lines in ``annotations/``
#: (format 1, and format-2 run dirs from before ``layout.annotations``).
#: Writing the JSON took a worker ~35 us a clip, more than rendering an
#: 8x32^2 clip (see docs/STORAGE_V2.md).
ANNOTATIONS = "params"
ANNOTATION_KINDS = ("jsonl", "params")

#: The format trajlab writes by default (zarr v3, see trajlab.zstore).
FORMAT_VERSION = 2
#: The formats trajlab reads and writes: 1 raw .npy memmaps, 2 zarr v3 + zstd.
FORMATS = (1, 2)
SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
SHARDS_DIR = "shards"
ANNOTATIONS_DIR = "annotations"
PROGRESS_FILES = ("progress.json", "PROGRESS.txt")
#: This host's name as it appears in temporary file names and lock records.
HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
_TEMP_MARK = ".trajlab-tmp."
_TEMP_RE = re.compile(r"^\.(?P<base>.+)\.trajlab-tmp\.(?P<host>[A-Za-z0-9_.-]+)\."
                      r"(?P<pid>[0-9]+)\.[0-9a-f]{8}$")
_RECORD_RE = re.compile(r"^[0-9]{5,}\.json$")
_ANNOTATION_RE = re.compile(r"^[0-9]{5,}\.jsonl(\.zst)?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^[0-9a-f]+$")


class RunDirError(RuntimeError):
    """A run directory is missing, incomplete, corrupted or in use."""


def utcnow():
    """ISO-8601 UTC time stamp with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_bytes(buf):
    return hashlib.sha256(buf).hexdigest()


#: The checksums a completion record can hold, ``{name: (function, hex
#: digits, streaming hasher)}``; the record keeps them under the key
#: ``name``. Each is of the decoded bytes of one array's shard slice (and of
#: the annotation text); a hasher fed the same bytes in pieces gives the
#: same hex digest (``update``/``hexdigest``, as hashlib's and xxhash's).
CHECKSUMS = {"sha256": (sha256_bytes, 64, hashlib.sha256),
             "xxh3_128": (xxhash.xxh3_128_hexdigest, 32, xxhash.xxh3_128)}
#: The checksum of new run dirs. xxh3_128 (the xxhash library) finds a
#: flipped or truncated byte as surely as sha256 for what it is used for
#: (accidental damage: 128 bits), at 8 us instead of 125 us per 16x64^2
#: clip here, which was half of a format-2 worker's time; it is no defence
#: against someone who rewrites the records too, and neither was sha256.
#: Run dirs whose spec.json has no ``layout.checksum`` were written with
#: sha256 and keep it (a resume writes sha256 there too).
CHECKSUM = "xxh3_128"


def fsync_dir(path):
    """fsync a directory, making renames inside it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------- no-follow I/O
class _LinkError(RunDirError):
    pass


class _NotRegularError(RunDirError):
    pass


def _symlink_error(path):
    return _LinkError(
        f"{path!r} is a symbolic link. trajlab never reads or writes a run directory's own "
        "files through symbolic links (the link could point anywhere); replace it with the "
        "real file, or remove it, and run the command again.")


def _folder_error(path):
    return _NotRegularError(
        f"{path!r} is a folder where trajlab keeps a file. trajlab does not remove a folder "
        "it did not make; move it away (its contents are not trajlab's), then run the "
        "command again.")


def open_nofollow(path, flags, mode=0o666, root=None):
    """``os.open`` that refuses a symbolic link as the last path component
    (``O_NOFOLLOW``) and anything but a regular file; returns the fd.

    ``root``: ``path`` lies beneath the run dir ``root``, and the folders
    between them are opened without following links too
    (:func:`open_dir_beneath`): a folder swapped for a link after the run
    dir was checked is refused instead of read through.
    """
    dfd, name = (None, path) if root is None else _dir_of(path, root, "reading")
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode,
                     dir_fd=dfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _symlink_error(path) from None
        if exc.errno == errno.EISDIR:
            raise _folder_error(path) from None
        if dfd is not None:         # name the whole path, not the folder-relative one
            raise type(exc)(exc.errno, exc.strerror, os.fspath(path)) from None
        raise
    finally:
        if dfd is not None:
            os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _NotRegularError(f"{path!r} is not a regular file.")
    return fd


#: Flags of the folder fds writes are made relative to: O_PATH where there
#: is one (Linux), so that a folder needs no read permission, as a write by
#: path needed none.
_DIR_FLAGS = os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_PATH", os.O_RDONLY)


def open_dir_beneath(root, rel, what=None):
    """An fd of the folder ``rel`` (relative to ``root``), every component
    of ``rel`` opened without following a link (``O_NOFOLLOW``, one
    ``openat`` each); ``root`` itself is the caller's path and may be a
    link. A folder of a run dir swapped for a link after the run dir was
    checked then fails here (:class:`_LinkError`) instead of sending the
    write, or the removal, to wherever the link points."""
    parts = [p for p in os.path.normpath(rel).split(os.sep) if p not in ("", ".")]
    if ".." in parts:
        raise RunDirError(f"{rel!r} is not inside {root!r}")
    fd = os.open(root, _DIR_FLAGS)
    done = []
    try:
        for part in parts:
            try:
                nfd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                where = os.path.join(root, *done, part)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                        os.lstat(part, dir_fd=fd).st_mode):
                    raise _LinkError(
                        f"{where!r} became a symbolic link while trajlab was using the run "
                        f"directory{' (' + what + ')' if what else ''}. trajlab never reads or "
                        "writes through links (they could point anywhere); put the real folder "
                        "back, then run the command again.") from None
                raise type(exc)(exc.errno, exc.strerror, where) from None
            old, fd = fd, nfd           # fd is always the one open folder
            os.close(old)
            done.append(part)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _dir_of(path, root, doing="writing"):
    """``(directory fd, file name)`` for a write or removal of ``path``:
    beneath ``root`` without following links (:func:`open_dir_beneath`),
    else the folder as named."""
    d, base = os.path.split(os.fspath(path))
    if root is None:
        try:
            return os.open(d or ".", _DIR_FLAGS), base
        except OSError as exc:
            raise type(exc)(exc.errno, exc.strerror, os.fspath(path)) from None
    rel = os.path.relpath(d or ".", root)
    return open_dir_beneath(root, rel, what=f"{doing} {os.path.join(rel, base)}"), base


def _fsync_dir_fd(dfd):
    """fsync the folder ``dfd`` names (an O_PATH fd cannot be fsynced itself)."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_for_writing(path, flags=os.O_WRONLY, mode=0o666):
    """Open a run-dir file for writing in place: no symlink, no second hard
    link (a ``cp -al`` copy, or a link to another file, would change too)."""
    fd = open_nofollow(path, flags, mode)
    if os.fstat(fd).st_nlink > 1:
        os.close(fd)
        raise RunDirError(
            f"{path!r} has {os.stat(path).st_nlink - 1} other hard link(s): writing it would "
            "also change those files. Copy it (`cp --remove-destination`) or remove the other "
            "names first.")
    return fd


def pwrite_all(fd, buf, offset):
    """Write all of ``buf`` at ``offset`` of ``fd`` (``os.pwrite`` may write
    less than asked)."""
    view = memoryview(buf).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def temp_path(path):
    """Temporary name for an atomic write of ``path``, in the same folder:
    ``.<name>.trajlab-tmp.<host>.<pid>.<random>``. The prefix, host and pid
    are what lets clean-up prove that trajlab made the file and that its
    writer is dead (see :func:`remove_stale_temps`)."""
    d, base = os.path.split(os.fspath(path))
    return os.path.join(d, f".{base}{_TEMP_MARK}{HOST}.{os.getpid()}.{secrets.token_hex(4)}")


def temp_owner(name):
    """``(target name, host, pid)`` of a trajlab temporary file name, else None."""
    m = _TEMP_RE.match(name)
    return None if m is None else (m["base"], m["host"], int(m["pid"]))


def pid_alive(pid):
    """Whether process ``pid`` exists on this host (True when that cannot be
    told: a process of another user, or a pid that is not a number, is not
    declared dead)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True
    return True


def remove_stale_temps(directory, target=None):
    """Delete the temporary files trajlab's dead writers left in ``directory``.

    Only names made by :func:`temp_path` on this host whose process is gone
    are deleted (optionally only those for ``target``); files of other
    programs, of other hosts and of live processes are never touched.
    Returns the removed names.
    """
    removed = []
    if is_remote(directory):        # every object is one PUT: nothing temporary
        return removed
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return removed
    for name in entries:
        owner = temp_owner(name)
        if owner is None or owner[1] != HOST or (target is not None and owner[0] != target):
            continue
        if owner[2] == os.getpid() or pid_alive(owner[2]):
            continue
        path = os.path.join(directory, name)
        try:
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                os.unlink(path)
                removed.append(name)
        except FileNotFoundError:
            pass
    return removed


@contextlib.contextmanager
def atomic_writer(path, fsync=False, root=None):
    """The one way trajlab replaces a file: write it through a new
    temporary file, then ``os.replace``.

    Yields a binary file object open on the temporary file
    (``.<name>.trajlab-tmp.<host>.<pid>.<hex>``, see :func:`temp_path`,
    in ``path``'s folder), created exclusively (``O_EXCL``) without
    following links (``O_NOFOLLOW``). When the block ends normally the file
    is renamed over ``path``; the rename replaces a link at ``path`` itself,
    never its target. If anything fails, also a signal (KeyboardInterrupt)
    landing anywhere in between, the temporary file is removed (a full disk
    leaves no empty file behind) and ``path`` is unchanged. With ``fsync``,
    the file and the rename reach stable storage. With ``root`` (a folder
    ``path`` lies in), the folders between ``root`` and ``path`` are
    opened without following links (:func:`open_dir_beneath`); the file
    is created and renamed relative to its folder's fd either way.
    """
    path = os.fspath(path)
    tmp = None
    dfd, base = _dir_of(path, root)
    try:
        for _ in range(16):
            tmp = os.path.basename(temp_path(path))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o666, dir_fd=dfd)
                break
            except FileExistsError:
                tmp = None       # not ours
        else:   # pragma: no cover - 16 random collisions
            raise RunDirError(f"cannot create a temporary file next to {path!r}")
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        try:
            os.replace(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
        except IsADirectoryError:       # a folder took the file's place meanwhile
            raise _folder_error(path) from None
        tmp = None
        if fsync:
            _fsync_dir_fd(dfd)
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
        raise
    finally:
        os.close(dfd)


def write_bytes_atomic(path, data, fsync=False, root=None):
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`;
    ``root``: the run dir, whose folders are then not followed if links).
    An ``s3://`` path is one PUT (atomic and durable once it returns), made
    only while this process's lease on the run dir, if it holds one, is
    fresh (:func:`check_lease`)."""
    if is_remote(path):
        check_lease(path)
        store, key = _remote(path)
        store.put(key, data)
        if (listed := _listed(path)) is not None:
            _SIZES.sizes[listed] = len(data)
            _SIZES.cache.pop(listed, None)
        return
    with atomic_writer(path, fsync=fsync, root=root) as fh:
        fh.write(data)


def write_objects(items, fsync=False, root=None):
    """:func:`write_bytes_atomic` of every ``(path, data)`` of ``items`` (a
    worker's objects of one shard). Remote paths of one bucket go out as
    concurrent PUTs: a shard's 13 objects then cost about one round trip,
    not 13."""
    remote = [(p, d) for p, d in items if is_remote(p)]
    for p, d in items:
        if not is_remote(p):
            write_bytes_atomic(p, d, fsync=fsync, root=root)
    if remote:                  # a shard's objects: all under one run dir, one bucket
        for p, _d in remote:
            check_lease(p)
        store = _remote(remote[0][0])[0]
        store.put_many([(_remote(p)[1], d) for p, d in remote])


def remove_file(path, root=None):
    """Delete the file or object ``path`` (a link itself, never its
    target); a missing one is not an error. Remote: under the lease, as
    :func:`write_bytes_atomic`. ``root``: as for :func:`atomic_writer`."""
    if is_remote(path):
        check_lease(path)
        store, key = _remote(path)
        store.delete(key)
        if (listed := _listed(path)) is not None:
            _SIZES.sizes.pop(listed, None)
            _SIZES.cache.pop(listed, None)
        return
    try:
        dfd, base = _dir_of(path, root, doing="removing")
    except FileNotFoundError:
        return                  # its folder is gone: so is the file
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(base, dir_fd=dfd)
    except IsADirectoryError:
        raise _folder_error(path) from None
    finally:
        os.close(dfd)


def write_json_atomic(path, obj, indent=2, fsync=False, root=None):
    """Write JSON to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    text = json.dumps(obj, indent=indent, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync, root=root)


def write_text_atomic(path, text, fsync=False):
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_writer`)."""
    write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def overwrite_in_place(path, data):
    """Last resort when the disk is full: write ``data`` over the existing
    file without allocating (only if it fits in the blocks the file already
    has). Not atomic; used only for the final progress state. Returns True
    if written."""
    try:
        fd = open_for_writing(path)
    except (OSError, RunDirError):
        return False
    try:
        st = os.fstat(fd)
        room = max(st.st_size, st.st_blocks * 512)
        if len(data) > room:
            return False
        pwrite_all(fd, data, 0)
        os.ftruncate(fd, len(data))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def is_remote(path):
    """True for a run-dir path on an object store (``s3://bucket/...``)."""
    return isinstance(path, str) and path.startswith("s3://")


def remote_run_dir(url, name="run_dir", owner="trajlab"):
    """``url`` checked as an ``s3://bucket/prefix`` run dir, without a
    trailing slash (the prefix must not be empty: a run dir never takes a
    whole bucket)."""
    from .objstore import S3Store

    store = S3Store(url, name=name, owner=owner)
    if not store.prefix:
        v.fail(name, owner, "an 's3://bucket/prefix' URL with a prefix (a run dir is a "
               "folder of a bucket, never the whole bucket)", url)
    return store.url


#: Leases this process holds on remote run dirs: {run dir URL: Lease}.
_LEASES = {}


def check_lease(path):
    """Before a write to the remote ``path``: if this process holds the
    lease of a run dir that contains it, raise
    :class:`trajlab.lease.LeaseLost` unless the lease is fresh. (Workers
    hold no lease: they write only their shards' objects, whose bytes any
    writer of the spec writes identically.)"""
    for url, lease in list(_LEASES.items()):
        if path.startswith(url + "/"):
            lease.check()


def _remote(path):
    """``(store, key)`` of an ``s3://bucket/key`` path (the store is the
    bucket; trajlab.objstore checks the key)."""
    from .objstore import open_store

    bucket, _, key = path[len("s3://"):].partition("/")
    return open_store("s3://" + bucket, name="run_dir", owner="trajlab"), key


def _listed(path):
    """The key of ``path`` in the active :func:`listed_sizes` snapshot, or None."""
    root = getattr(_SIZES, "run_dir", None)
    if root is not None and path.startswith(root + "/"):
        return path[len(root) + 1:]
    return None


def path_lexists(path):
    """``os.path.lexists`` for local paths, an existing object for s3:// ones."""
    if is_remote(path):
        if (key := _listed(path)) is not None:
            return key in _SIZES.sizes
        store, key = _remote(path)
        return store.exists(key)
    return os.path.lexists(path)


_SIZES = threading.local()
#: What :func:`listed_sizes` fetches ahead: records and the small arrays.
_PREFETCH_RE = re.compile(r"^(shards/[0-9]{5,}\.json|data/(labels|splits|attempts)/c\.[0-9]+)$")
_PREFETCH_BYTES = 1 << 20


@contextlib.contextmanager
def listed_sizes(run_dir):
    """Within the block, :func:`file_size` of a remote ``run_dir``'s
    objects answers from one listing of the run dir (a request per 1,000
    objects) instead of a HEAD per object. For the parent's checks under
    the lease only, while no worker writes (a local run dir: no effect)."""
    if not is_remote(run_dir) or getattr(_SIZES, "run_dir", None) == run_dir:
        yield           # local, or inside a block of the same run dir already
        return
    store = _remote_store(run_dir)
    sizes = store.list_sizes()
    # the small objects every resume and manifest reads (records, labels,
    # splits, attempts): fetched together, not one round trip each
    small = [k for k, n in sizes.items() if n <= _PREFETCH_BYTES and _PREFETCH_RE.match(k)]
    _SIZES.cache = store.get_many(small, _PREFETCH_BYTES)
    _SIZES.run_dir, _SIZES.sizes = run_dir, sizes
    try:
        yield
    finally:
        _SIZES.run_dir = _SIZES.sizes = _SIZES.cache = None


def file_size(path, root=None):
    """Bytes of the file or object ``path`` (a link is not followed), or
    None if there is none. ``root``: the run dir ``path`` lies beneath; the
    folders between are opened without following links
    (:func:`open_dir_beneath`), so a folder swapped for a link raises
    RunDirError instead of giving the size of a file it points to."""
    if is_remote(path):
        if (key := _listed(path)) is not None:
            return _SIZES.sizes.get(key)
        store, key = _remote(path)
        return store.size(key)
    try:
        if root is None:
            return os.lstat(path).st_size
        dfd, name = _dir_of(path, root, "reading the size of")
        try:
            return os.lstat(name, dir_fd=dfd).st_size
        finally:
            os.close(dfd)
    except FileNotFoundError:
        return None


def read_range(path, start, length, root=None):
    """``length`` bytes of ``path`` from ``start`` (fewer if it ends first;
    an object store: a ranged GET). ``root``: as in :func:`open_nofollow`."""
    if is_remote(path):
        store, key = _remote(path)
        try:
            return store.get_range(key, start, length)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            return b""           # shorter than the index says: the caller reports it
    fd = open_nofollow(path, os.O_RDONLY, root=root)
    try:
        return os.pread(fd, length, start)
    finally:
        os.close(fd)


def read_tail(path, length, root=None):
    """``(the last min(length, size) bytes of path, size)`` of the file or
    object ``path`` (remote: one suffix-range GET). FileNotFoundError if
    there is none. ``root``: as in :func:`open_nofollow`."""
    if is_remote(path):
        store, key = _remote(path)
        return store.get_tail(key, length)
    fd = open_nofollow(path, os.O_RDONLY, root=root)
    try:
        size = os.fstat(fd).st_size
        n = min(length, size)
        return os.pread(fd, n, size - n), size
    finally:
        os.close(fd)


def read_bytes(path, max_bytes, root=None):
    """Bytes of the regular file ``path`` (no symlink), at most ``max_bytes``.

    Raises FileNotFoundError, RunDirError (link, not a regular file, too
    large) or OSError. An ``s3://`` path is read from its object store (an
    object larger than ``max_bytes`` is not read). ``root``: the run dir
    ``path`` lies beneath, whose folders are not followed through links
    either (:func:`open_nofollow`).
    """
    if is_remote(path):
        if (key := _listed(path)) is not None and key in _SIZES.cache:
            data = _SIZES.cache[key]
            if len(data) > max_bytes:
                raise TooLargeError(len(data))
            return data
        store, key = _remote(path)
        return store.get(key, max_bytes)
    fd = open_nofollow(path, os.O_RDONLY, root=root)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise TooLargeError(size)
        chunks, n = [], 0
        while True:
            b = os.read(fd, min(1 << 20, max_bytes + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
            if n > max_bytes:
                raise TooLargeError(n)
        return b"".join(chunks)
    finally:
        os.close(fd)


class TooLargeError(Exception):
    """A file is larger than its reader's bound (``size``: bytes found)."""

    def __init__(self, size):
        super().__init__(size)
        self.size = size


def parse_json(raw):
    """``(object, None)`` or ``(None, reason)`` for bytes that should be JSON."""
    try:
        return json.loads(raw.decode("utf-8")), None
    except UnicodeDecodeError as exc:
        return None, f"invalid JSON (not utf-8: {exc})"
    except RecursionError:
        return None, "invalid JSON (nested too deeply)"
    except ValueError as exc:
        return None, f"invalid JSON ({exc})"


def read_json_file(path, run_dir, fname=None, max_bytes=v.MAX_JSON_BYTES):
    """A JSON object from a run-dir file, or RunDirError with the template.

    FileNotFoundError is passed on (callers decide what a missing file means).
    """
    fname = fname or os.path.basename(path)
    expected = f"a JSON object of at most {max_bytes // 2**20} MiB"
    try:
        raw = read_bytes(path, max_bytes, root=run_dir)
    except TooLargeError as exc:
        v.fail_file(fname, run_dir, expected, f"{exc.size} bytes", RunDirError)
    except _NotRegularError:
        v.fail_file(fname, run_dir, expected, "something that is not a regular file",
                    RunDirError)
    except FileNotFoundError:
        raise
    except OSError as exc:
        v.fail_file(fname, run_dir, expected, f"an unreadable file ({exc})", RunDirError)
    obj, reason = parse_json(raw)
    if reason:
        v.fail_file(fname, run_dir, expected, reason, RunDirError)
    if not isinstance(obj, dict):
        v.fail_file(fname, run_dir, expected, f"a {type(obj).__name__}", RunDirError)
    return obj


def read_json(path):
    """JSON of a trajlab file (no symlink, at most :data:`MAX_JSON_BYTES`)."""
    path = os.fspath(path)
    return read_json_file(path, os.path.dirname(path) or ".")


def _npy_header(shape, dtype):
    """The exact .npy header (format 1.0) numpy writes for a C-order array."""
    from numpy.lib import format as npf

    d = {"descr": npf.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
         "shape": tuple(shape)}
    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, d)
    return buf.getvalue()


@dataclass(frozen=True)
class RunLayout:
    """Where every sample's bytes live: derived from the spec and shard size."""

    spec: DatasetSpec
    shard_size: int
    format_version: int = FORMAT_VERSION
    #: key of :data:`CHECKSUMS`; run dirs from before it had one are sha256
    checksum: str = CHECKSUM
    #: format 2: the codec of every object, a key of trajlab.zstore.CODECS
    codec: str = zstore.CODEC
    #: one of :data:`ANNOTATION_KINDS`; None: ``'jsonl'`` for format 1, else
    #: :data:`ANNOTATIONS`
    annotations: str = None

    def __post_init__(self):
        if self.annotations is None:
            object.__setattr__(self, "annotations",
                               "jsonl" if self.format_version == 1 else ANNOTATIONS)
        if self.annotations not in ANNOTATION_KINDS or (
                self.format_version == 1 and self.annotations != "jsonl"):
            raise ValueError(f"annotations {self.annotations!r} is not available in format "
                             f"{self.format_version}")

    @property
    def folders(self):
        """trajlab's folders beside the store: shard records, and the
        annotation files where there are any."""
        return (SHARDS_DIR, ANNOTATIONS_DIR) if self.annotations == "jsonl" else (SHARDS_DIR,)

    @property
    def record_names(self):
        """What a completion record has a checksum (and format 2 a stored
        size) of: every array, and the annotation file where there is one."""
        return (*self.arrays(), "annotations") if self.annotations == "jsonl" \
            else tuple(self.arrays())

    def digest(self, buf):
        """This run dir's checksum (hex) of ``buf``."""
        return CHECKSUMS[self.checksum][0](buf)

    def hasher(self):
        """A streaming hasher of this run dir's checksum (update, hexdigest)."""
        return CHECKSUMS[self.checksum][2]()

    @property
    def n_shards(self):
        return -(-self.spec.n_samples // self.shard_size)

    def shard_range(self, shard):
        start = shard * self.shard_size
        return start, min(self.spec.n_samples, start + self.shard_size)

    def arrays(self):
        """``{name: (file, shape, dtype, header_len, bytes_per_sample)}``."""
        return self._arrays

    @cached_property
    def _arrays(self):
        out = {}
        shapes = array_layout(self.spec, self.spec.n_samples)
        if self.annotations == "params":
            shapes["params"] = ((self.spec.n_samples, n_param_columns(self.spec)), np.float64)
        for name, (shape, dt) in shapes.items():
            per = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dt).itemsize
            if self.format_version == 1:
                out[name] = (f"{name}.npy", shape, np.dtype(dt), len(self.header(name)), per)
            else:
                out[name] = (f"{zstore.STORE_DIR}/{name}", shape, np.dtype(dt), 0, per)
        return out

    @cached_property
    def _headers(self):
        return {name: _npy_header(shape, dt)
                for name, (shape, dt) in array_layout(self.spec, self.spec.n_samples).items()}

    def header(self, name):
        """The exact header bytes of array ``name``'s file."""
        return self._headers[name]

    def to_dict(self):
        if self.format_version == 2:
            return {
                "shard_size": self.shard_size,
                "n_shards": self.n_shards,
                "store": "zarr-v3",
                "codec": self.codec,
                "arrays": {name: {"path": f, "shape": list(shape), "dtype": dt.str,
                                  "bytes_per_sample": per}
                           for name, (f, shape, dt, h, per) in self.arrays().items()},
                **self._checksum_entry(),
                **self._annotations_entry(),
            }
        return {
            "shard_size": self.shard_size,
            "n_shards": self.n_shards,
            "arrays": {name: {"file": f, "shape": list(shape), "dtype": dt.str,
                              "header_bytes": h, "bytes_per_sample": per}
                       for name, (f, shape, dt, h, per) in self.arrays().items()},
            **self._checksum_entry(),
        }

    def _annotations_entry(self):
        # absent means jsonl: the spec.json of older run dirs stays as it was
        if self.annotations == "jsonl":
            return {}
        return {"annotations": self.annotations,
                "param_columns": {c: [[key, off, list(shape)] for key, off, shape in cols]
                                  for c, cols in param_columns(self.spec).items()}}

    def _checksum_entry(self):
        # absent means sha256: the spec.json of older run dirs stays as it was
        return {} if self.checksum == "sha256" else {"checksum": self.checksum}

    def spec_document(self, trajlab_version):
        return {
            "format": "trajlab-run",
            "format_version": self.format_version,
            "data_version": DATA_VERSION,
            "trajlab_version": trajlab_version,
            # float results of numpy's math could differ across versions;
            # recorded so that a resume with another numpy can warn
            "numpy_version": np.__version__,
            "probe_sha256": probe_digest(self.spec),
            "fingerprint": self.spec.fingerprint,
            "spec": self.spec.to_dict(),
            "layout": self.to_dict(),
            "created_at": utcnow(),
        }

    def preallocate(self, run_dir):
        """Create every .npy with its header and full (sparse) size, and the
        shard folders. Existing files are never opened: a name already
        taken (even by a link) is an error. Format 2: the zarr group and
        array folders with their ``zarr.json``."""
        if self.format_version == 2:
            make_store_dirs(run_dir, self)
            for rel, doc in self.store_documents().items():
                if os.path.islink(os.path.join(run_dir, rel)):
                    raise _symlink_error(os.path.join(run_dir, rel))
                write_bytes_atomic(os.path.join(run_dir, rel), zstore.document_bytes(doc),
                                   root=run_dir)
            make_dirs(run_dir, self.folders)
            return
        for name, (fname, shape, dt, hlen, per) in self.arrays().items():
            path = os.path.join(run_dir, fname)
            if os.path.islink(path):
                raise _symlink_error(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o666)
            try:
                pwrite_all(fd, self.header(name), 0)
                os.ftruncate(fd, self.expected_size(name))
            finally:
                os.close(fd)
        make_dirs(run_dir, self.folders)

    def expected_size(self, name):
        """Bytes of array ``name``'s file (format 1), decoded bytes (format 2)."""
        fname, shape, dt, hlen, per = self.arrays()[name]
        return hlen + per * shape[0]

    def raw_bytes(self, name):
        """Decoded bytes of array ``name``."""
        fname, shape, dt, hlen, per = self.arrays()[name]
        return per * shape[0]

    def disk_estimate(self):
        """Bytes the arrays take on disk: exact for format 1; for format 2 a
        generous bound (videos compress 100-235x, the rest about 1.2x; this
        assumes 16x and 1x)."""
        if self.format_version == 1:
            return sum(self.expected_size(name) for name in self.arrays())
        return sum(self.raw_bytes(n) // (16 if n == "videos" else 1) for n in self.arrays()) \
            + 1024 * self.spec.n_samples

    def store_documents(self):
        """Format 2: ``{relative path: zarr.json document}`` of the group and
        of every array, exactly as trajlab writes them."""
        docs = {f"{zstore.STORE_DIR}/{zstore.ZARR_JSON}": zstore.group_document(self)}
        for name in self.arrays():
            docs[f"{zstore.STORE_DIR}/{name}/{zstore.ZARR_JSON}"] = \
                zstore.array_document(self, name)
        return docs

    def shard_record_path(self, run_dir, shard):
        return os.path.join(run_dir, SHARDS_DIR, f"{shard:05d}.json")

    def annotations_path(self, run_dir, shard):
        ext = ".jsonl" if self.format_version == 1 else ".jsonl.zst"
        return os.path.join(run_dir, ANNOTATIONS_DIR, f"{shard:05d}{ext}")


def make_dirs(run_dir, folders=(SHARDS_DIR, ANNOTATIONS_DIR)):
    """Create trajlab's ``folders`` in ``run_dir`` (default: the shard
    folders); a link or a file in their place is refused. An object store
    has no folders: nothing to do."""
    if is_remote(run_dir):
        return
    for d in folders:
        path = os.path.join(run_dir, d)
        if os.path.islink(path):
            raise _symlink_error(path)
        # made in its parent's fd, which was opened without following a
        # link: a parent swapped for one meanwhile gets no folder
        dfd, base = _dir_of(path, run_dir, doing="creating")
        try:
            os.mkdir(base, dir_fd=dfd)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(base, dir_fd=dfd).st_mode):
                raise (_symlink_error(path) if os.path.islink(path) else RunDirError(
                    f"{path!r} should be a folder of trajlab's, but is a file.")) from None
        finally:
            os.close(dfd)


def make_store_dirs(run_dir, layout):
    """Format 2: create ``data/`` and one folder per array."""
    make_dirs(run_dir, [zstore.STORE_DIR] + [f for f, *_r in layout.arrays().values()])


_BUFFERS = threading.local()


def _render_buffer(layout, n):
    """A (n, T, 3, H, W) uint8 buffer reused by the shards a worker thread
    renders: a fresh one costs a page fault per 4 KiB, which took half of
    the render time at 16x64^2 here (``ndarray.fill`` of new memory ran at
    ~260 MB/s). Format 2 only: format 1 renders into its own copy because
    its bytes go to the page cache anyway."""
    shape = (n, *layout.arrays()["videos"][1][1:])
    buf = getattr(_BUFFERS, "videos", None)
    if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < n:
        buf = _BUFFERS.videos = np.empty((layout.shard_size, *shape[1:]), dtype=np.uint8)
    return buf[:n]


#: Bytes of video rendered, hashed and compressed at a time (see write_shard).
STREAM_BYTES = 3 * 2**20


def _stream_videos(layout, block, n):
    """``(checksum, object, render seconds)`` of a block's videos, rendered
    in pieces of about :data:`STREAM_BYTES` into a reused buffer."""
    T, S = layout.spec.n_frames, layout.spec.image_size
    rows = max(1, STREAM_BYTES // (T * 3 * S * S))
    step = min(n, rows)
    # one buffer per clip shape, kept across shards (a short last shard
    # uses the front of it)
    buf = getattr(_BUFFERS, "piece", None)
    if buf is None or buf.shape != (rows, T, 3, S, S):
        buf = _BUFFERS.piece = np.empty((rows, T, 3, S, S), dtype=np.uint8)
    hasher, obj = layout.hasher(), zstore.VideoObject(layout)
    render_seconds = 0.0
    for a in range(0, n, step):
        b = min(n, a + step)
        t0 = time.perf_counter()
        piece = render_rows(layout.spec, block, a, b, buf[:b - a])
        render_seconds += time.perf_counter() - t0
        hasher.update(piece.data)
        obj.add(piece)
    return hasher.hexdigest(), obj.finish(), render_seconds


def _annotation_text(layout, block):
    """The JSON lines of a block's annotations (layouts that keep them)."""
    return "".join(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n"
                   for rec in block.annotations(layout.spec)).encode("utf-8")


def encode_shard(layout, shard):
    """Format 2: everything a worker makes of shard ``shard``, nothing
    written: ``(block, checksums, {name: object bytes}, generate seconds)``
    (names: the arrays, and ``'annotations'`` where the layout keeps JSON
    lines). ``block.videos`` is None where the videos were streamed."""
    t0 = time.perf_counter()
    start, stop = layout.shard_range(shard)
    checksums, objects = {}, {}
    if layout.spec.pixel_noise == 0:
        # the videos go piece by piece through render, checksum and zstd
        # while the piece is still in the cache: measured per 8x32^2 clip
        # 29 -> 24 us, per 16x64^2 clip 176 -> 119 us, against rendering
        # the whole shard first and then reading it back from memory twice
        block = generate_samples(layout.spec, np.arange(start, stop, dtype=np.int64),
                                 render_videos=False)
        t_traj = time.perf_counter() - t0
        checksums["videos"], objects["videos"], t_render = _stream_videos(layout, block,
                                                                          stop - start)
        t_gen = t_traj + t_render       # rendering counts as generating on both paths
    else:
        block = generate_block(layout.spec, start, stop,
                               videos_out=_render_buffer(layout, stop - start))
        t_gen = time.perf_counter() - t0
    for name in layout.arrays():
        if name not in objects:
            data = np.ascontiguousarray(block.array(name))
            checksums[name] = layout.digest(data.data)
            objects[name] = zstore.encode(layout, name, data)
    if layout.annotations == "jsonl":
        text = _annotation_text(layout, block)
        checksums["annotations"] = layout.digest(text)
        objects["annotations"] = zstore.compress(text, layout.codec)
    return block, checksums, objects, t_gen


def write_shard(run_dir, layout, shard, fsync=False):
    """Generate shard ``shard`` and write its bytes into ``run_dir``.

    Runs in a worker. Returns the shard's completion record (a small dict);
    the caller (the parent) makes the shard count as done by writing that
    record with :func:`write_json_atomic`.
    """
    t0 = time.perf_counter()
    start, stop = layout.shard_range(shard)
    extra = {}
    if layout.format_version == 2:
        block, checksums, encoded, t_gen = encode_shard(layout, shard)
        write_objects([(layout.annotations_path(run_dir, shard) if name == "annotations"
                        else zstore.object_path(run_dir, layout, name, shard), obj)
                       for name, obj in encoded.items()], fsync=fsync, root=run_dir)
        extra["stored_bytes"] = {name: len(obj) for name, obj in encoded.items()}
    else:
        block = generate_block(layout.spec, start, stop)
        t_gen = time.perf_counter() - t0
        checksums = {}
        for name, (fname, shape, dt, hlen, per) in layout.arrays().items():
            buf = np.ascontiguousarray(block.array(name)).data
            checksums[name] = layout.digest(buf)
            fd = open_for_writing(os.path.join(run_dir, fname))
            try:
                pwrite_all(fd, buf, hlen + per * start)
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        text = _annotation_text(layout, block)
        checksums["annotations"] = layout.digest(text)
        write_objects([(layout.annotations_path(run_dir, shard), text)], fsync=fsync,
                      root=run_dir)
    return {**extra,
        "shard": shard,
        "start": start,
        "stop": stop,
        layout.checksum: checksums,
        "rejections": block.rejections,
        "class_counts": np.bincount(block.labels, minlength=layout.spec.n_classes).tolist(),
        "seconds": round(time.perf_counter() - t0, 4),
        "generate_seconds": round(t_gen, 4),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def shard_slice_bytes(run_dir, layout, name, shard):
    """Read the stored bytes of one array's shard slice (for verification;
    format 2: decoded, :class:`trajlab.zstore.DamagedObject` if damaged)."""
    if layout.format_version == 2:
        return zstore.read_shard(run_dir, layout, name, shard).tobytes()
    fname, shape, dt, hlen, per = layout.arrays()[name]
    start, stop = layout.shard_range(shard)
    fd = open_nofollow(os.path.join(run_dir, fname), os.O_RDONLY)
    with os.fdopen(fd, "rb") as fh:
        fh.seek(hlen + per * start)
        return fh.read(per * (stop - start))


class RunLock:
    """One writer per run directory.

    An exclusive ``flock`` on ``run_dir/.lock``: the kernel releases it when
    the owner dies (even by SIGKILL), so a dead owner's lock is taken over
    automatically. The file holds the owner's program, pid, host and start
    time for error messages (and so that a folder holding only trajlab's
    lock is recognised as trajlab's). It is never opened through a symbolic
    link. (flock across hosts needs a filesystem that supports it; see
    docs/FORMAT.md.)
    """

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, LOCK_FILE)
        self._fh = None
        self.run_dir, self.lease = run_dir, None

    def acquire(self):
        if is_remote(self.run_dir):
            return self._acquire_lease()
        import fcntl    # here, not at import: trajlab imports where fcntl does not exist

        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        fh = os.fdopen(fd, "r+", encoding="utf-8", errors="replace")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                fh.close()
                raise
            fh.seek(0)
            owner = fh.read(1000).strip() or "unknown owner"
            fh.close()
            raise RunDirError(
                f"Run directory {os.path.dirname(self.path)!r} is being written by another "
                f"process ({owner}). Wait for it to finish or stop it; a dead owner's lock is "
                "released automatically.") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(lock_record()))
            fh.flush()
        except BaseException:
            fh.close()
            raise
        self._fh = fh
        return self

    def _acquire_lease(self):
        """An object store has no flock: a lease object (trajlab.lease),
        renewed by a heartbeat thread while the run dir is written."""
        from .lease import Lease

        ttl = lease_ttl()
        lease = Lease(_remote_store(self.run_dir), ttl_seconds=ttl,
                      heartbeat_seconds=ttl / 4)
        lease.acquire()
        lease.start()
        self.lease = _LEASES[self.run_dir] = lease
        return self

    def release(self):
        if self.lease is not None:
            lease, self.lease = self.lease, None
            _LEASES.pop(self.run_dir, None)
            with contextlib.suppress(Exception):    # a lost lease has nothing to release
                lease.release()
        if self._fh is not None:
            import fcntl

            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


#: Seconds without renewal after which another writer may take a remote run
#: dir's lease over; the environment variable TRAJLAB_LEASE_TTL (seconds,
#: in [2, 86400]) changes it (the heartbeat renews it every TTL / 4).
LEASE_TTL = 60.0


def lease_ttl():
    raw = os.environ.get("TRAJLAB_LEASE_TTL")
    if raw is None:
        return LEASE_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = float("nan")
    if not 2.0 <= ttl <= 86400.0:
        v.fail("TRAJLAB_LEASE_TTL", "the environment", "a number of seconds in [2, 86400]",
               raw)
    return ttl


def _remote_store(run_dir):
    from .objstore import open_store

    return open_store(run_dir, name="run_dir", owner="trajlab")


def lock_record():
    return {"program": "trajlab", "pid": os.getpid(), "host": HOST, "since": utcnow()}


def is_trajlab_lock(path):
    """True if ``path`` is a regular file holding a trajlab lock record."""
    try:
        raw = read_bytes(path, 4096)
    except (OSError, RunDirError, TooLargeError):
        return False
    obj, reason = parse_json(raw)
    return (reason is None and isinstance(obj, dict) and obj.get("program") == "trajlab"
            and set(obj) == {"program", "pid", "host", "since"})


# ------------------------------------------------------------ reading checks
class _Damaged:
    """Turn the template's ValueError/TypeError into RunDirError."""

    def __init__(self, prefix=""):
        self.prefix = prefix

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if typ is not None and issubclass(typ, (ValueError, TypeError)) \
                and not issubclass(typ, RunDirError):
            raise RunDirError(f"{self.prefix}{exc}") from None
        return False


def _diff_paths(a, b, prefix=""):
    """Dotted paths where two JSON values differ (types count: 1 != True)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_paths(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for k, (x, y) in enumerate(zip(a, b)):
            out += _diff_paths(x, y, f"{prefix}{k}.")
        return out
    if type(a) is not type(b) or a != b:
        return [prefix.rstrip(".")]
    return []


_MISSING = object()


def load_layout(run_dir):
    """Read and check ``spec.json`` of a run dir: ``(document, RunLayout)``.

    Every field is checked with the template messages (a damaged file is a
    :class:`RunDirError` naming the field, the allowed values and what it
    holds), so nothing downstream divides by a shard size of 0 or reads a
    layout that does not follow from the spec.
    """
    run_dir = os.fspath(run_dir)
    path = os.path.join(run_dir, SPEC_FILE)
    if not path_lexists(path):
        raise RunDirError(f"{run_dir!r} is not a trajlab run directory (no {SPEC_FILE}).")
    doc = read_json_file(path, run_dir, SPEC_FILE)
    if is_remote(run_dir) and doc.get("format_version") == 1:
        raise RunDirError(f"{run_dir!r} holds a format-1 run dir (raw .npy memory maps), which "
                          "trajlab reads only from a local folder: copy it to a local disk, or "
                          "generate it in format 2.")
    if doc.get("format") != "trajlab-run" or type(doc.get("format_version")) is not int \
            or doc.get("format_version") not in FORMATS:
        raise RunDirError(
            f"{path!r} has format {doc.get('format')!r} version {doc.get('format_version')!r}; "
            f"this trajlab reads 'trajlab-run' versions {' and '.join(map(str, FORMATS))}, so "
            f"{run_dir!r} is not a trajlab run directory it can use.")
    own = f"{SPEC_FILE} in {run_dir!r}"
    with _Damaged(f"{path!r} is damaged: "):
        if not isinstance(doc.get("spec"), dict):
            v.fail("spec", own, "an object of DatasetSpec fields", doc.get("spec"), TypeError)
        spec = DatasetSpec.from_dict(doc["spec"])
    if type(doc.get("data_version")) is not int or spec.fingerprint != doc.get("fingerprint"):
        raise RunDirError(
            f"{path!r} is inconsistent: its spec hashes to {spec.fingerprint}, but it records "
            f"fingerprint {doc.get('fingerprint')} (data version {doc.get('data_version')}; this "
            f"trajlab generates data version {DATA_VERSION}).")
    with _Damaged():
        lay = doc.get("layout")
        if not isinstance(lay, dict):
            v.fail("layout", own, "an object", lay, TypeError)
        shard_size = v.check_int(lay.get("shard_size"), "layout.shard_size", own, 1,
                                 v.MAX_SHARD_SIZE)
        checksum = lay.get("checksum", "sha256")
        if not isinstance(checksum, str) or checksum not in CHECKSUMS:   # [..]: unhashable
            v.fail("layout.checksum", own, f"one of {sorted(CHECKSUMS)} (or absent: sha256)",
                   checksum)
        codec = zstore.CODEC
        if doc["format_version"] == 2:
            codec = lay.get("codec")
            if not isinstance(codec, str) or codec not in zstore.CODECS:
                v.fail("layout.codec", own, f"one of {sorted(zstore.CODECS)}", codec)
        kind = lay.get("annotations", "jsonl")
        allowed = ANNOTATION_KINDS if doc["format_version"] == 2 else ("jsonl",)
        if kind not in allowed:
            v.fail("layout.annotations", own, f"one of {list(allowed)} (or absent: jsonl)", kind)
        layout = RunLayout(spec, shard_size, doc["format_version"], checksum, codec, kind)
        v.check_int(layout.n_shards, "layout.n_shards", own, 1, v.MAX_N_SHARDS)
        diff = _diff_paths(lay, layout.to_dict())
        if diff:
            v.fail("layout", own, "the layout trajlab derives from the spec (it differs at "
                   + ", ".join("layout." + d for d in diff[:5]) + ")",
                   {d: _get(lay, d) for d in diff[:3]})
        for key in ("trajlab_version", "numpy_version", "created_at"):
            if not isinstance(doc.get(key), str):
                v.fail(key, own, "a str", doc.get(key), TypeError)
        probe = doc.get("probe_sha256", None)
        if probe is not None and not (isinstance(probe, str) and _HEX64.match(probe)):
            v.fail("probe_sha256", own, "64 lowercase hex digits (or absent)", probe)
    return doc, layout


def _get(obj, dotted):
    for k in dotted.split("."):
        if isinstance(obj, dict):
            obj = obj.get(k, None)
        elif isinstance(obj, list) and k.isdigit() and int(k) < len(obj):
            obj = obj[int(k)]
        else:
            return None
    return obj


def _is_count(x):
    return type(x) is int and x >= 0


def check_record(rec, layout, shard):
    """None if ``rec`` is a well-formed completion record of ``shard``, else
    the reason."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    start, stop = layout.shard_range(shard)
    for key, want in (("shard", shard), ("start", start), ("stop", stop)):
        if type(rec.get(key)) is not int or rec.get(key) != want:
            return f"{key} is {rec.get(key)!r}, expected {want}"
    key, digits = layout.checksum, CHECKSUMS[layout.checksum][1]
    sums = rec.get(key)
    names = set(layout.record_names)
    if not isinstance(sums, dict) or set(sums) != names:
        return f"{key} does not list every array" + (
            " and the annotations" if "annotations" in names else "")
    if not all(isinstance(x, str) and len(x) == digits and _HEX.fullmatch(x)
               for x in sums.values()):
        return f"{key} holds a value that is not {digits} hex digits"
    classes = layout.spec.classes
    rej = rec.get("rejections")
    if not isinstance(rej, dict) or set(rej) != set(classes) or \
            not all(_is_count(x) for x in rej.values()):
        return "rejections is not a count per class"
    cc = rec.get("class_counts")
    if not isinstance(cc, list) or len(cc) != len(classes) or \
            not all(_is_count(x) for x in cc) or sum(cc) != stop - start:
        return f"class_counts is not {len(classes)} counts summing to {stop - start}"
    if layout.format_version == 2:
        sb = rec.get("stored_bytes")
        if not isinstance(sb, dict) or set(sb) != names or \
                not all(_is_count(x) for x in sb.values()):
            return "stored_bytes is not a count per array" + (
                " and for the annotations" if "annotations" in names else "")
    elif "stored_bytes" in rec:
        return "it has stored_bytes, which format 1 records do not have"
    return None


def record_data_problem(rec, layout, labels, attempts):
    """None if the counts of a record follow from its shard's stored data,
    else the reason: ``class_counts`` from the labels and ``rejections``
    from the attempts (a sample accepted at attempt k was redrawn k - 1
    times)."""
    C = layout.spec.n_classes
    labels = np.asarray(labels, dtype=np.int64)
    attempts = np.asarray(attempts, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= C or attempts.min() < 1):
        return "labels or attempts out of range"
    counts = np.bincount(labels, minlength=C)
    redrawn = np.bincount(labels, weights=attempts - 1, minlength=C).astype(np.int64)
    if counts.tolist() != rec["class_counts"]:
        return "its class_counts do not match labels.npy"
    if [rec["rejections"][c] for c in layout.spec.classes] != redrawn.tolist():
        return "its rejections do not match attempts.npy"
    return None


#: Samples hashed into spec.json's ``probe_sha256`` (see generator.probe_digest).
PROBE_SAMPLES = 8


def probe_problem(doc, layout, arrays):
    """None if the stored first samples hash to spec.json's ``probe_sha256``
    (computed from the generator when the run started), else the reason.
    ``arrays`` maps every array name to its stored array."""
    from .generator import Block

    recorded = doc.get("probe_sha256")
    if recorded is None:
        return None
    k = min(PROBE_SAMPLES, layout.spec.n_samples)
    h = hashlib.sha256()
    for name in Block.ARRAYS:
        h.update(np.ascontiguousarray(arrays[name][:k]).tobytes())
    if h.hexdigest() != recorded:
        return (f"The stored first {k} samples do not hash to spec.json's probe_sha256: the "
                "data was not generated from this spec.json (or spec.json was changed).")
    return None


def read_record(run_dir, layout, shard):
    """A shard's completion record, or None if missing, unreadable or not a
    well-formed record of that shard."""
    try:
        rec = read_json_file(layout.shard_record_path(run_dir, shard), run_dir)
    except (OSError, RunDirError):
        return None
    return rec if check_record(rec, layout, shard) is None else None


def _shown(names):
    return ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")


def check_managed_entries(run_dir, layout=None):
    """Refuse a run dir where trajlab's own files or folders are symbolic
    links, its folders are not folders or its files are folders (nothing
    could replace such a file, and trajlab does not remove a folder it did
    not make). Raises RunDirError. (An object store has no links and no
    folders: nothing to check.)"""
    if is_remote(run_dir):
        return
    names = [SPEC_FILE, MANIFEST_FILE, LOCK_FILE, *PROGRESS_FILES]
    # without a layout (or with JSON lines) annotations/ counts as trajlab's
    folders = [(SHARDS_DIR, _RECORD_RE)]
    if layout is None or ANNOTATIONS_DIR in layout.folders:
        folders.append((ANNOTATIONS_DIR, _ANNOTATION_RE))
    if layout is not None and layout.format_version == 2:
        names += [zstore.STORE_DIR, *layout.store_documents()]
        folders += [(f, zstore.chunk_key_pattern(name, len(shape)))
                    for name, (f, shape, *_r) in layout.arrays().items()]
    elif layout is not None:
        names += [f for f, *_r in layout.arrays().values()]
    links = [n for n in names if os.path.islink(os.path.join(run_dir, n))]
    dirs = [n for n in names if n != zstore.STORE_DIR and n not in links
            and os.path.isdir(os.path.join(run_dir, n))]
    for d, pattern in folders:
        path = os.path.join(run_dir, d)
        if os.path.islink(path):
            links.append(d + "/")
        elif os.path.lexists(path) and not os.path.isdir(path):
            raise RunDirError(f"{path!r} should be a folder of trajlab's, but is a file.")
        elif os.path.isdir(path):
            with os.scandir(path) as it:
                for e in it:
                    if not pattern.match(e.name):
                        continue
                    if e.is_symlink():
                        links.append(f"{d}/{e.name}")
                    elif e.is_dir(follow_symlinks=False):
                        dirs.append(f"{d}/{e.name}")
    if links:
        raise _LinkError(
            f"Run directory {run_dir!r} has symbolic links where trajlab keeps its own files "
            f"or folders: {_shown(links)}. trajlab never reads or writes through them (they could "
            "point anywhere); replace them with the real files or folders, or remove them, "
            "and run the command again.")
    if dirs:
        raise _NotRegularError(
            f"Run directory {run_dir!r} has folders where trajlab keeps its own files: "
            f"{_shown(dirs)}. trajlab does not remove a folder it did not make; move it "
            "away (its contents are not trajlab's), then run the command again.")


def check_array_file(run_dir, layout, name):
    """None if array ``name``'s file has exactly its expected size and header,
    else ``(kind, reason)`` with kind 'missing', 'size' or 'header'.

    Format 2: the array's and the group's ``zarr.json`` must be exactly the
    documents trajlab writes (kind 'missing' or 'header'); the objects of
    each shard are checked with the shard (:func:`check_shard_data`)."""
    if layout.format_version == 2:
        return check_store_document(run_dir, layout, name)
    fname, shape, dt, hlen, per = layout.arrays()[name]
    path = os.path.join(run_dir, fname)
    want = layout.expected_size(name)
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return "missing", f"{fname} is missing"
    except (OSError, RunDirError) as exc:
        return "missing", f"{fname} cannot be read ({exc})"
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, hlen, 0)
    finally:
        os.close(fd)
    if head != layout.header(name):
        return "header", describe_header(run_dir, layout, name, head)
    if size != want:
        what = "truncated" if size < want else "too long"
        return "size", f"{fname} is {what} ({size} bytes, expected {want})"
    return None


def check_store_document(run_dir, layout, name):
    """Format 2: None if the group's and array ``name``'s ``zarr.json`` are
    the documents trajlab writes, else ``(kind, reason)``."""
    docs = layout.store_documents()
    for rel in (f"{zstore.STORE_DIR}/{zstore.ZARR_JSON}",
                f"{zstore.STORE_DIR}/{name}/{zstore.ZARR_JSON}"):
        path = os.path.join(run_dir, rel)
        try:
            raw = read_bytes(path, v.MAX_JSON_BYTES, root=run_dir)
        except FileNotFoundError:
            return "missing", f"{rel} is missing"
        except TooLargeError as exc:
            return "header", f"{rel} is larger than trajlab writes ({exc.size} bytes)"
        except (OSError, RunDirError) as exc:
            return "missing", f"{rel} cannot be read ({exc})"
        obj, reason = parse_json(raw)
        if reason is not None:
            return "header", f"{rel} is not valid JSON ({reason})"
        diff = _diff_paths(obj, docs[rel])
        if diff:
            return "header", (
                f"The {rel!r} document of run directory {run_dir!r} must be the zarr v3 "
                f"metadata trajlab writes for this spec (codecs, shape, chunks, dtype, fill "
                f"value). It differs at {', '.join(diff[:4])}: got "
                f"{_get(obj, diff[0])!r} where trajlab writes {_get(docs[rel], diff[0])!r}.")
    return None


def describe_header(run_dir, layout, name, head):
    """The template message for an array file whose header is not the one
    trajlab writes (never raises on crafted bytes)."""
    from numpy.lib import format as npf

    fname, shape, dt, hlen, per = layout.arrays()[name]
    expected = (f"the header of a C-order (fortran_order False) {dt.str} array of shape "
                f"{tuple(shape)} in .npy format 1.0")
    try:
        fh = io.BytesIO(head)
        version = npf.read_magic(fh)
        reader = {(1, 0): npf.read_array_header_1_0, (2, 0): npf.read_array_header_2_0}.get(
            version)
        if reader is None:
            raise ValueError(f"format version {version[0]}.{version[1]}")
        got_shape, fortran, got_dt = reader(fh)
        got = (f"a header of format {version[0]}.{version[1]} with fortran_order {fortran}, "
               f"dtype {got_dt.str}, shape {got_shape}")
    except Exception as exc:   # crafted bytes: whatever numpy's parser says
        got = f"an unreadable header ({type(exc).__name__}: {str(exc)[:200]})"
    return (f"The {fname!r} file of run directory {run_dir!r} must have {expected}. "
            f"Got {got} instead.")


def open_array(run_dir, layout, name):
    """Read-only memory map of array ``name`` after checking its file."""
    problem = check_array_file(run_dir, layout, name)
    if problem is not None:
        raise RunDirError(f"{problem[1].rstrip('.')}: the dataset is damaged. Run `trajlab verify "
                          f"--repair {run_dir}` (and `trajlab generate {run_dir}` if it says "
                          "shards must be regenerated).")
    if layout.format_version == 2:
        return zstore.ChunkedArray(run_dir, layout, name)
    fname, shape, dt, hlen, per = layout.arrays()[name]
    fd = open_nofollow(os.path.join(run_dir, fname), os.O_RDONLY)
    with os.fdopen(fd, "rb") as fh:
        return np.memmap(fh, dtype=dt, mode="r", offset=hlen, shape=tuple(shape), order="C")


# ------------------------------------------------------------------ manifest
def build_manifest(run_dir, layout, records, labels=None, splits=None):
    """The manifest trajlab writes for complete records (without
    ``finished_at``). ``labels``/``splits`` are read if not given; their
    shard slices must match the records (RunDirError otherwise)."""
    from .generator import SPLITS

    spec = layout.spec
    if labels is None:
        labels = open_array(run_dir, layout, "labels")
    if splits is None:
        splits = open_array(run_dir, layout, "splits")
    attempts = open_array(run_dir, layout, "attempts")
    digest = hashlib.sha256()
    rejections = {c: 0 for c in spec.classes}
    for s in range(layout.n_shards):
        rec = records[s]
        a, b = layout.shard_range(s)
        for name, arr in (("labels", labels), ("splits", splits), ("attempts", attempts)):
            if layout.digest(np.ascontiguousarray(arr[a:b]).data) != rec[layout.checksum][name]:
                raise RunDirError(f"{layout.arrays()[name][0]} does not match the record of "
                                  f"shard {s} (samples {a}..{b - 1})")
        problem = record_data_problem(rec, layout, labels[a:b], attempts[a:b])
        if problem:
            raise RunDirError(f"the record of shard {s} is damaged: {problem}")
        sums = rec[layout.checksum]
        for name in sorted(sums):
            digest.update(f"{s}:{name}:{sums[name]}\n".encode())
        for c, k in rec["rejections"].items():
            rejections[c] += k
    C = spec.n_classes
    lab = np.asarray(labels, dtype=np.int64)
    spl = np.asarray(splits, dtype=np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= C or spl.max() > 2):
        raise RunDirError("labels or splits hold values out of range")
    joint = np.bincount(spl * C + lab, minlength=3 * C).reshape(3, C)
    counts = joint.sum(axis=0)
    from_records = np.sum([records[s]["class_counts"] for s in range(layout.n_shards)], axis=0)
    if not np.array_equal(from_records, counts):
        raise RunDirError("the class counts of the shard records do not match the labels")
    return {
        "complete": True,
        "format_version": layout.format_version,
        "fingerprint": spec.fingerprint,
        "n_samples": spec.n_samples,
        "n_shards": layout.n_shards,
        "shard_size": layout.shard_size,
        "class_names": list(spec.classes),
        "class_counts": {c: int(counts[k]) for k, c in enumerate(spec.classes)},
        "split_counts": {s: {c: int(joint[j, k]) for k, c in enumerate(spec.classes)}
                         for j, s in enumerate(SPLITS)},
        "rejections": rejections,
        "rejection_rate": {c: round(rejections[c] / max(1, rejections[c] + int(counts[k])), 4)
                           for k, c in enumerate(spec.classes)},
        "digest": digest.hexdigest(),
        **manifest_layout(layout),
        **stored_totals(layout, records),
    }


def manifest_layout(layout):
    """What the manifest says of the files, from the spec alone."""
    if layout.format_version == 1:
        return {"files": {name: {"file": f, "bytes": layout.expected_size(name)}
                          for name, (f, *_r) in layout.arrays().items()}}
    return {"store": "zarr-v3", "codec": layout.codec,
            "files": {name: {"path": f, "raw_bytes": layout.raw_bytes(name)}
                      for name, (f, *_r) in layout.arrays().items()}}


def stored_totals(layout, records):
    """Format 2: bytes on disk per array (sum of the records' objects), the
    raw (decoded) bytes and their ratio."""
    if layout.format_version == 1:
        return {}
    names = list(layout.record_names)
    stored = {n: sum(records[s]["stored_bytes"][n] for s in range(layout.n_shards))
              for n in names}
    stored["total"] = sum(stored[n] for n in names)
    raw = sum(layout.raw_bytes(n) for n in layout.arrays())
    return {"stored_bytes": stored, "raw_bytes": raw,
            "compression_ratio": round(raw / max(1, stored["total"]), 1)}


def check_manifest(manifest, layout, run_dir):
    """O(1) checks of a manifest against the spec: None or the template
    message. (Counts against the data: :func:`compare_manifest`.)"""
    from .generator import SPLITS

    spec = layout.spec
    where = f"{MANIFEST_FILE} in {run_dir!r}"
    classes = list(spec.classes)
    want = {"complete": True, "format_version": layout.format_version,
            "fingerprint": spec.fingerprint, "n_samples": spec.n_samples,
            "n_shards": layout.n_shards, "shard_size": layout.shard_size,
            "class_names": classes, **manifest_layout(layout)}
    for key, value in want.items():
        if _diff_paths(manifest.get(key, _MISSING), value):
            return (f"The {key!r} parameter of {where} must be {value!r} (from spec.json). "
                    f"Got {manifest.get(key, '<missing>')!r} instead.")
    cc = manifest.get("class_counts")
    if not isinstance(cc, dict) or set(cc) != set(classes) or \
            not all(_is_count(x) for x in cc.values()) or sum(cc.values()) != spec.n_samples:
        return (f"The 'class_counts' parameter of {where} must be a count per class summing to "
                f"{spec.n_samples}. Got {cc!r} instead.")
    sc = manifest.get("split_counts")
    if not isinstance(sc, dict) or set(sc) != set(SPLITS) or not all(
            isinstance(sc[s], dict) and set(sc[s]) == set(classes)
            and all(_is_count(x) for x in sc[s].values()) for s in SPLITS) or any(
            sum(sc[s][c] for s in SPLITS) != cc[c] for c in classes):
        return (f"The 'split_counts' parameter of {where} must be a count per split and class "
                f"adding up to class_counts. Got {sc!r} instead.")
    for key in ("rejections", "rejection_rate"):
        if not isinstance(manifest.get(key), dict) or set(manifest[key]) != set(classes):
            return (f"The {key!r} parameter of {where} must be a value per class. "
                    f"Got {manifest.get(key)!r} instead.")
    d = manifest.get("digest")
    if not (isinstance(d, str) and _HEX64.match(d)):
        return f"The 'digest' parameter of {where} must be 64 hex digits. Got {d!r} instead."
    if layout.format_version == 2:
        sb = manifest.get("stored_bytes")
        names = {*layout.record_names, "total"}
        if not isinstance(sb, dict) or set(sb) != names or \
                not all(_is_count(x) for x in sb.values()):
            return (f"The 'stored_bytes' parameter of {where} must be a count per array"
                    + (", for the annotations" if layout.annotations == "jsonl" else "")
                    + f" and in total. Got {sb!r} instead.")
        if manifest.get("raw_bytes") != sum(layout.raw_bytes(n) for n in layout.arrays()) \
                or type(manifest.get("compression_ratio")) not in (int, float):
            return (f"The 'raw_bytes' and 'compression_ratio' parameters of {where} must be "
                    "the decoded size from spec.json and a number. Got "
                    f"{manifest.get('raw_bytes')!r} and {manifest.get('compression_ratio')!r}"
                    " instead.")
    if not isinstance(manifest.get("finished_at"), str):
        return (f"The 'finished_at' parameter of {where} must be a str. "
                f"Got {manifest.get('finished_at')!r} instead.")
    return None


def compare_manifest(manifest, expected, run_dir):
    """None if ``manifest`` holds what :func:`build_manifest` derives from
    the records and the data, else the reason."""
    diff = [d for key in expected for d in _diff_paths(manifest.get(key, _MISSING),
                                                        expected[key], key + ".")]
    if not diff:
        return None
    shown = ", ".join(diff[:4])
    return (f"{MANIFEST_FILE} in {run_dir!r} does not match the shard records and the data "
            f"(it differs at {shown}; e.g. {diff[0]} is {_get(manifest, diff[0])!r}, the data "
            f"gives {_get(expected, diff[0])!r}).")


def read_manifest(run_dir, layout):
    """``(manifest, problem)``: the manifest if present and readable (None
    if missing), and None or the reason it fails the O(1) checks."""
    path = os.path.join(run_dir, MANIFEST_FILE)
    if not path_lexists(path):
        return None, None
    try:
        m = read_json_file(path, run_dir, MANIFEST_FILE)
    except (OSError, RunDirError) as exc:
        return {}, str(exc)
    return m, check_manifest(m, layout, run_dir)


def annotations_limit(layout, shard):
    """Largest annotation file trajlab reads for ``shard`` (64 KiB a sample)."""
    a, b = layout.shard_range(shard)
    return v.MAX_JSON_BYTES + 65536 * (b - a)


def parse_annotations(raw, layout, shard, run_dir):
    """The records of an annotation file, checked to be one JSON object per
    sample of the shard in index order; RunDirError otherwise."""
    path = layout.annotations_path(run_dir, shard)
    a, b = layout.shard_range(shard)
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{path!r} is damaged (not utf-8: {exc}). Run `trajlab verify "
                          "--repair` then `trajlab generate` on the run dir.") from None
    if len(lines) != b - a:
        raise RunDirError(f"{path!r} holds {len(lines)} lines, expected {b - a} (one per "
                          "sample). Run `trajlab verify --repair` then `trajlab generate` on "
                          "the run dir.")
    recs = []
    for k, line in enumerate(lines):
        obj, reason = parse_json(line.encode("utf-8"))
        if reason is None and not (isinstance(obj, dict) and type(obj.get("index")) is int
                                   and obj["index"] == a + k):
            reason = f"not the record of sample {a + k}"
        if reason:
            raise RunDirError(f"{path!r} line {k + 1} is damaged ({reason}). Run `trajlab "
                              "verify --repair` then `trajlab generate` on the run dir.")
        recs.append(obj)
    return tuple(recs)


def params_records(layout, shard, labels, splits, params, run_dir):
    """The annotation records of ``shard`` made from its stored labels,
    splits and parameter matrix (raw bytes or arrays), checked first by
    :func:`check_params`. RunDirError if they are not what trajlab writes."""
    lab, spl, mat = check_params(layout, shard, labels, splits, params, run_dir)
    a, b = layout.shard_range(shard)
    return tuple(annotation_records(layout.spec, np.arange(a, b), lab, spl, mat))


def check_params(layout, shard, labels, splits, params, run_dir):
    """``(labels, splits, params)`` of ``shard`` as arrays, checked to be
    what trajlab writes: one row per sample, labels and splits in range,
    the columns of each sample's class finite and the others NaN.
    RunDirError otherwise. The records made from such parameters are then
    well formed, so ``verify`` checks this and does not make them (about
    20 us a record)."""
    spec = layout.spec
    a, b = layout.shard_range(shard)
    lab = np.frombuffer(labels, np.int64) if isinstance(labels, (bytes, memoryview)) \
        else np.asarray(labels)
    spl = np.frombuffer(splits, np.uint8) if isinstance(splits, (bytes, memoryview)) \
        else np.asarray(splits)
    width = n_param_columns(spec)
    mat = np.frombuffer(params, np.float64) if isinstance(params, (bytes, memoryview)) \
        else np.asarray(params, dtype=np.float64)
    where = f"the parameters of shard {shard} in {run_dir!r} (samples {a}..{b - 1})"
    fix = " Run `trajlab verify --repair` then `trajlab generate` on the run dir."
    if lab.size != b - a or spl.size != b - a or mat.size != (b - a) * width:
        raise RunDirError(f"{where} do not have one row per sample." + fix)
    mat = mat.reshape(b - a, width)
    if lab.size and (lab.min() < 0 or lab.max() >= spec.n_classes or spl.max() > 2):
        raise RunDirError(f"{where}: labels or splits hold values out of range." + fix)
    used = np.zeros((spec.n_classes, width), dtype=bool)
    for c, cols in enumerate(param_columns(spec).values()):
        for _key, off, shape in cols:
            used[c, off:off + (shape[0] if shape else 1)] = True
    # a used column finite, an unused one NaN (inf there is not trajlab's)
    bad = ~np.where(used[lab], np.isfinite(mat), np.isnan(mat))
    if bad.any():
        k = int(np.flatnonzero(bad.any(axis=1))[0])
        raise RunDirError(f"{where}: sample {a + k} has parameters that are not finite, or "
                          f"values other than NaN in columns its class does not use." + fix)
    return lab, spl, mat


def read_shard_records(run_dir, layout, shard, sums=None):
    """The annotation records of ``shard``, a tuple in index order.
    ``sums``: the shard record's checksums, to check what is read against
    (None: not checked). RunDirError if missing, damaged or changed."""
    if layout.annotations == "params":
        raw = {}
        for name in ("labels", "splits", "params"):
            try:
                raw[name] = shard_slice_bytes(run_dir, layout, name, shard)
            except (zstore.DamagedObject, OSError, RunDirError) as exc:
                raise RunDirError(f"Annotations of shard {shard} are missing or unreadable "
                                  f"(the {name} they are made from: {exc}). Run `trajlab "
                                  "verify --repair` then `trajlab generate` on the run "
                                  "dir.") from None
            if sums is not None and layout.digest(raw[name]) != sums[name]:
                path = zstore.object_path(run_dir, layout, name, shard)
                raise RunDirError(
                    f"Checksum mismatch in {path!r} (shard {shard}): the annotations "
                    "are corrupted (the " + name + " they are made from). Run `trajlab "
                    "verify --repair` then `trajlab generate` on the run dir.")
        return params_records(layout, shard, raw["labels"], raw["splits"], raw["params"],
                              run_dir)
    raw = read_annotations_bytes(run_dir, layout, shard)
    if sums is not None and layout.digest(raw) != sums["annotations"]:
        path = layout.annotations_path(run_dir, shard)
        raise RunDirError(
            f"Checksum mismatch in {path!r} (shard {shard}): the annotations are corrupted. "
            "Run `trajlab verify --repair` then `trajlab generate` on the run dir.")
    return parse_annotations(raw, layout, shard, run_dir)


def read_annotations_bytes(run_dir, layout, shard):
    """Raw bytes of a shard's annotation file; RunDirError if unreadable."""
    path = layout.annotations_path(run_dir, shard)
    limit = annotations_limit(layout, shard)
    try:
        raw = read_bytes(path, limit if layout.format_version == 1
                         else zstore.compress_bound(limit), root=run_dir)
    except TooLargeError as exc:
        raise RunDirError(f"{path!r} is damaged ({exc.size} bytes, more than trajlab "
                          "writes).") from None
    except (OSError, RunDirError) as exc:
        raise RunDirError(f"Annotations of shard {shard} are missing or unreadable ({exc}). "
                          "Run `trajlab verify --repair` then `trajlab generate` on the run "
                          "dir.") from None
    if layout.format_version == 1:
        return raw
    what = os.path.relpath(path, run_dir)
    try:
        size = zstore.content_size(raw, layout.codec, what)
        if not 0 <= size <= limit:
            raise zstore.DamagedObject(f"it declares {size} decoded bytes")
        return zstore.decompress(raw, size, what, layout.codec)
    except zstore.DamagedObject as exc:
        raise RunDirError(f"{path!r} is damaged ({exc}). Run `trajlab verify --repair` then "
                          "`trajlab generate` on the run dir.") from None


def stored_size_problem(run_dir, layout, shard, rec, names=None):
    """Format 2: None if every object of ``shard`` (of ``names``: arrays
    and ``'annotations'``; default all) exists with the size its record
    gives (one ``lstat`` each, beneath the run dir's no-follow folder fds:
    the cheap check a resume makes, like format 1's file sizes), else
    ``(name, reason)`` for the first that does not."""
    if layout.format_version == 1:
        return None
    paths = {name: zstore.object_path(run_dir, layout, name, shard) for name in layout.arrays()}
    if layout.annotations == "jsonl":
        paths["annotations"] = layout.annotations_path(run_dir, shard)
    for name in (paths if names is None else names):
        rel = os.path.relpath(paths[name], run_dir)
        try:
            size = file_size(paths[name], root=run_dir)
        except RunDirError as exc:
            return name, f"{rel} cannot be sized ({exc})"
        if size is None:
            return name, f"{rel} is missing"
        if size != rec["stored_bytes"][name]:
            return name, f"{rel} has {size} bytes, its record says {rec['stored_bytes'][name]}"
    return None


def check_shard_data(run_dir, layout, shard, rec, skip=()):
    """None if every array slice and the annotations of ``shard`` match
    ``rec``, else ``(what, reason)`` for the first that does not."""
    start, stop = layout.shard_range(shard)
    raw = {}
    for name, (fname, shape, dt, hlen, per) in layout.arrays().items():
        if name in skip:
            continue
        try:
            raw[name] = shard_slice_bytes(run_dir, layout, name, shard)
        except zstore.DamagedObject as exc:
            return name, f"{exc} (samples {start}..{stop - 1})"
        if layout.digest(raw[name]) != rec[layout.checksum][name]:
            return name, f"checksum mismatch in {fname} (samples {start}..{stop - 1})"
        # format 2: decodes right, yet not the object the worker wrote (bytes
        # added between clips, say): no reader may see other bytes than trajlab
        found = stored_size_problem(run_dir, layout, shard, rec, [name])
        if found:
            return name, f"{found[1]} (samples {start}..{stop - 1})"
    if "labels" in raw and "attempts" in raw:
        arrays = layout.arrays()
        problem = record_data_problem(rec, layout,
                                      np.frombuffer(raw["labels"], arrays["labels"][2]),
                                      np.frombuffer(raw["attempts"], arrays["attempts"][2]))
        if problem:
            return "record", f"completion record damaged: {problem}"
    if layout.annotations == "params":
        if {"labels", "splits", "params"} & set(skip):
            return None
        try:
            check_params(layout, shard, raw["labels"], raw["splits"], raw["params"], run_dir)
        except RunDirError as exc:
            return "params", str(exc)
        return None
    try:
        raw = read_annotations_bytes(run_dir, layout, shard)
        if layout.digest(raw) != rec[layout.checksum]["annotations"]:
            return "annotations", "annotations file changed (checksum mismatch)"
        parse_annotations(raw, layout, shard, run_dir)
        found = stored_size_problem(run_dir, layout, shard, rec, ["annotations"])
        if found:
            return found
    except RunDirError as exc:
        return "annotations", f"annotations file missing or damaged ({exc})"
    return None


def available_memory():
    """Bytes of memory available to a new allocation (best effort), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


__all__ += ["load_layout", "read_record", "shard_slice_bytes", "write_text_atomic",
            "write_bytes_atomic", "open_array", "check_array_file", "build_manifest",
            "check_manifest", "compare_manifest", "read_manifest", "check_record",
            "available_memory", "read_json_file", "parse_annotations",
            "read_annotations_bytes", "check_shard_data", "stored_size_problem",
            "read_shard_records", "params_records", "check_params", "ANNOTATIONS"]
