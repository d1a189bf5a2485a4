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
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .generator import array_layout, generate_block, probe_digest
from .spec import DATA_VERSION, DatasetSpec

__all__ = ["FORMAT_VERSION", "RunLayout", "write_json_atomic", "read_json", "RunLock",
           "RunDirError", "write_shard", "sha256_bytes", "utcnow"]

FORMAT_VERSION = 1
SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
SHARDS_DIR = "shards"
ANNOTATIONS_DIR = "annotations"


class RunDirError(RuntimeError):
    """A run directory is missing, incomplete, corrupted or in use."""


def utcnow():
    """ISO-8601 UTC time stamp with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_bytes(buf):
    return hashlib.sha256(buf).hexdigest()


def fsync_dir(path):
    """fsync a directory, making renames inside it durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path, obj, indent=2, fsync=False):
    """Write JSON to ``path`` through a temporary file and ``os.replace``;
    with ``fsync``, the file and the rename are forced to stable storage."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent, sort_keys=True)
        fh.write("\n")
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(os.path.dirname(path) or ".")


def write_text_atomic(path, text):
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def read_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _npy_header_len(shape, dtype):
    """Byte length of the .npy header numpy writes for this array."""
    from numpy.lib import format as npf

    d = {"descr": npf.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
         "shape": tuple(shape)}
    import io

    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, d)
    return buf.tell()


@dataclass(frozen=True)
class RunLayout:
    """Where every sample's bytes live: derived from the spec and shard size."""

    spec: DatasetSpec
    shard_size: int

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
        for name, (shape, dt) in array_layout(self.spec, self.spec.n_samples).items():
            per = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dt).itemsize
            out[name] = (f"{name}.npy", shape, np.dtype(dt), _npy_header_len(shape, dt), per)
        return out

    def to_dict(self):
        return {
            "shard_size": self.shard_size,
            "n_shards": self.n_shards,
            "arrays": {name: {"file": f, "shape": list(shape), "dtype": dt.str,
                              "header_bytes": h, "bytes_per_sample": per}
                       for name, (f, shape, dt, h, per) in self.arrays().items()},
        }

    def spec_document(self, trajlab_version):
        return {
            "format": "trajlab-run",
            "format_version": FORMAT_VERSION,
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
        """Create every .npy with its header and full (sparse) size."""
        from numpy.lib.format import open_memmap

        for name, (fname, shape, dt, hlen, per) in self.arrays().items():
            path = os.path.join(run_dir, fname)
            mm = open_memmap(path, mode="w+", dtype=dt, shape=shape)
            assert mm.offset == hlen, (name, mm.offset, hlen)
            del mm
        os.makedirs(os.path.join(run_dir, SHARDS_DIR), exist_ok=True)
        os.makedirs(os.path.join(run_dir, ANNOTATIONS_DIR), exist_ok=True)

    def expected_size(self, name):
        fname, shape, dt, hlen, per = self.arrays()[name]
        return hlen + per * shape[0]

    def shard_record_path(self, run_dir, shard):
        return os.path.join(run_dir, SHARDS_DIR, f"{shard:05d}.json")

    def annotations_path(self, run_dir, shard):
        return os.path.join(run_dir, ANNOTATIONS_DIR, f"{shard:05d}.jsonl")


def _pwrite_all(fd, buf, offset):
    view = memoryview(buf).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def write_shard(run_dir, layout, shard, fsync=False):
    """Generate shard ``shard`` and write its bytes into ``run_dir``.

    Runs in a worker. Returns the shard's completion record (a small dict);
    the caller (the parent) makes the shard count as done by writing that
    record with :func:`write_json_atomic`.
    """
    t0 = time.perf_counter()
    start, stop = layout.shard_range(shard)
    block = generate_block(layout.spec, start, stop)
    t_gen = time.perf_counter() - t0
    checksums = {}
    for name, (fname, shape, dt, hlen, per) in layout.arrays().items():
        data = np.ascontiguousarray(getattr(block, name))
        buf = data.data
        checksums[name] = sha256_bytes(buf)
        fd = os.open(os.path.join(run_dir, fname), os.O_WRONLY)
        try:
            _pwrite_all(fd, buf, hlen + per * start)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    text = "".join(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n"
                   for rec in block.annotations(layout.spec)).encode("utf-8")
    apath = layout.annotations_path(run_dir, shard)
    tmp = f"{apath}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(text)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, apath)
    if fsync:
        fsync_dir(os.path.dirname(apath))
    checksums["annotations"] = sha256_bytes(text)
    return {
        "shard": shard,
        "start": start,
        "stop": stop,
        "sha256": checksums,
        "rejections": block.rejections,
        "class_counts": np.bincount(block.labels, minlength=layout.spec.n_classes).tolist(),
        "seconds": round(time.perf_counter() - t0, 4),
        "generate_seconds": round(t_gen, 4),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def shard_slice_bytes(run_dir, layout, name, shard):
    """Read the stored bytes of one array's shard slice (for verification)."""
    fname, shape, dt, hlen, per = layout.arrays()[name]
    start, stop = layout.shard_range(shard)
    with open(os.path.join(run_dir, fname), "rb") as fh:
        fh.seek(hlen + per * start)
        return fh.read(per * (stop - start))


class RunLock:
    """One writer per run directory.

    An exclusive ``flock`` on ``run_dir/.lock``: the kernel releases it when
    the owner dies (even by SIGKILL), so a dead owner's lock is taken over
    automatically. The file holds the owner's pid, host and start time for
    error messages. (flock across hosts needs a filesystem that supports it;
    see docs/FORMAT.md.)
    """

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, LOCK_FILE)
        self._fh = None

    def acquire(self):
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                fh.close()
                raise
            fh.seek(0)
            owner = fh.read().strip() or "unknown owner"
            fh.close()
            raise RunDirError(
                f"Run directory {os.path.dirname(self.path)!r} is being written by another "
                f"process ({owner}). Wait for it to finish or stop it; a dead owner's lock is "
                "released automatically.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": utcnow()}))
        fh.flush()
        self._fh = fh
        return self

    def release(self):
        if self._fh is not None:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def load_layout(run_dir):
    """Read ``spec.json`` of a run dir: ``(document, RunLayout)``."""
    path = os.path.join(run_dir, SPEC_FILE)
    if not os.path.isfile(path):
        raise RunDirError(f"{run_dir!r} is not a trajlab run directory (no {SPEC_FILE}).")
    doc = read_json(path)
    if doc.get("format") != "trajlab-run" or doc.get("format_version") != FORMAT_VERSION:
        raise RunDirError(
            f"{path!r} has format {doc.get('format')!r} version {doc.get('format_version')!r}; "
            f"this trajlab reads 'trajlab-run' version {FORMAT_VERSION}.")
    spec = DatasetSpec.from_dict(doc["spec"])
    if spec.fingerprint != doc.get("fingerprint"):
        raise RunDirError(
            f"{path!r} is inconsistent: its spec hashes to {spec.fingerprint}, but it records "
            f"fingerprint {doc.get('fingerprint')} (data version {doc.get('data_version')}; this "
            f"trajlab generates data version {DATA_VERSION}).")
    return doc, RunLayout(spec, int(doc["layout"]["shard_size"]))


def read_record(run_dir, layout, shard):
    """A shard's completion record, or None if missing or unreadable."""
    try:
        rec = read_json(layout.shard_record_path(run_dir, shard))
    except (OSError, ValueError):
        return None
    start, stop = layout.shard_range(shard)
    if rec.get("shard") != shard or rec.get("start") != start or rec.get("stop") != stop:
        return None
    return rec


__all__ += ["load_layout", "read_record", "shard_slice_bytes", "write_text_atomic"]
