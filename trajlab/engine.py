"""Parallel, checkpointed, resumable generation of a dataset on disk.

:func:`generate` cuts the dataset into fixed shards and schedules only the
shards that have no valid completion record, through joblib with whatever
backend ``joblib.parallel_config`` selects (``loky`` by default; pass
``backend='dask'`` to use a dask.distributed cluster, see
:mod:`trajlab.cluster`). Each worker writes its shard's bytes into the
preallocated files and returns a small record; the parent writes that
record atomically, which is what makes the shard count as done. Results
stream back as they complete, so memory is bounded by the shards in
flight, whatever ``n_samples`` is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import _validation as v
from .generator import SPLITS
from .progress import MODES, Progress
from .spec import DatasetSpec
from .storage import (ANNOTATIONS_DIR, MANIFEST_FILE, SHARDS_DIR, SPEC_FILE, RunDirError,
                      RunLayout, RunLock, load_layout, read_json, read_record,
                      shard_slice_bytes, sha256_bytes, utcnow, write_json_atomic, write_shard)

__all__ = ["generate", "repair", "GenerationResult", "auto_shard_size", "find_bad_shards"]

#: Target bytes of video per shard when ``shard_size='auto'``.
SHARD_TARGET_BYTES = 32 * 2**20
_OWN_FILES = {".lock", "progress.json", "PROGRESS.txt"}


def _is_own(name):
    # temporary files of an atomic write cut short by a kill also count
    return name in _OWN_FILES or ".tmp-" in name


def auto_shard_size(spec):
    """Samples per shard: about 32 MiB of video, between 16 and 4096."""
    per = spec.n_frames * 3 * spec.image_size ** 2
    return int(min(4096, max(16, SHARD_TARGET_BYTES // per)))


@dataclass
class GenerationResult:
    """What :func:`generate` did.

    Attributes
    ----------
    run_dir : str
    fingerprint : str
    n_samples : int
    shards_total, shards_generated, shards_reused : int
    seconds : float
        Wall time of this call.
    rate : float or None
        Samples generated per second in this call.
    already_complete : bool
        The run dir held a complete dataset; nothing was done.
    manifest : dict
    """

    run_dir: str
    fingerprint: str
    n_samples: int
    shards_total: int
    shards_generated: int
    shards_reused: int
    seconds: float
    rate: float | None
    already_complete: bool
    manifest: dict = field(default_factory=dict)

    def summary(self):
        m = self.manifest
        lines = [
            f"Run dir:      {self.run_dir}",
            f"Fingerprint:  {self.fingerprint}",
            f"Samples:      {self.n_samples:,} in {self.shards_total} shards "
            f"({self.shards_generated} generated now, {self.shards_reused} reused)",
        ]
        if self.already_complete:
            lines.append("Status:       already complete - nothing to do")
        else:
            rate = f"{self.rate:,.0f} samples/s" if self.rate else "-"
            lines.append(f"Time:         {self.seconds:.1f} s ({rate})")
        if m:
            names = m["class_names"]
            lines.append("Classes:      " + ", ".join(f"{k}={m['class_counts'][k]:,}" for k in names))
            lines.append("Splits:       " + ", ".join(
                f"{s}={sum(m['split_counts'][s].values()):,}" for s in SPLITS))
            lines.append("Rejections:   " + ", ".join(f"{k}={m['rejections'][k]:,}" for k in names))
        lines.append(f"Progress:     {os.path.join(self.run_dir, 'PROGRESS.txt')}")
        return "\n".join(lines)

    def __repr__(self):
        return "GenerationResult(\n  " + self.summary().replace("\n", "\n  ") + "\n)"


def _check_args(spec, run_dir, n_jobs, shard_size, progress):
    own = "generate"
    if not isinstance(spec, DatasetSpec):
        v.fail("spec", own, "a trajlab.DatasetSpec", spec, TypeError)
    if not isinstance(run_dir, (str, os.PathLike)):
        v.fail("run_dir", own, "a path (str or os.PathLike)", run_dir, TypeError)
    run_dir = os.path.abspath(os.fspath(run_dir))
    parent = os.path.dirname(run_dir)
    if not os.path.isdir(parent):
        v.fail("run_dir", own, "a path whose parent directory exists", run_dir)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        v.fail("run_dir", own, "a directory path (not an existing file)", run_dir)
    target = run_dir if os.path.isdir(run_dir) else parent
    if not os.access(target, os.W_OK | os.X_OK):
        v.fail("run_dir", own, "a path in a writable directory", run_dir, PermissionError)
    if n_jobs is not None:
        n_jobs = v.check_int(n_jobs, "n_jobs", own, -1024, 1024)
        if n_jobs == 0:
            v.fail("n_jobs", own, "a non-zero int (negative counts from the number of CPUs)", 0)
    if shard_size != "auto":
        shard_size = v.check_int(shard_size, "shard_size", own, 1)
    v.check_choice(progress, "progress", own, MODES)
    return run_dir, n_jobs, shard_size


def find_bad_shards(run_dir, layout, shards=None):
    """Shards whose stored bytes do not match their record.

    Returns a list of ``(shard, what, reason)``; ``what`` names the array
    (or ``'record'``/``'annotations'``).
    """
    bad = []
    sizes = {name: os.path.getsize(os.path.join(run_dir, f)) if os.path.exists(
        os.path.join(run_dir, f)) else -1 for name, (f, *_r) in layout.arrays().items()}
    for shard in (range(layout.n_shards) if shards is None else shards):
        rec = read_record(run_dir, layout, shard)
        if rec is None:
            bad.append((shard, "record", "missing or unreadable completion record"))
            continue
        start, stop = layout.shard_range(shard)
        for name, (fname, shape, dt, hlen, per) in layout.arrays().items():
            if sizes[name] < hlen + per * stop:
                bad.append((shard, name, f"{fname} is truncated ({sizes[name]} bytes, "
                                         f"needs {hlen + per * stop})"))
                break
            if sha256_bytes(shard_slice_bytes(run_dir, layout, name, shard)) != rec["sha256"].get(name):
                bad.append((shard, name, f"checksum mismatch in {fname} "
                                         f"(samples {start}..{stop - 1})"))
                break
        else:
            try:
                with open(layout.annotations_path(run_dir, shard), "rb") as fh:
                    ok = sha256_bytes(fh.read()) == rec["sha256"].get("annotations")
            except OSError:
                ok = False
            if not ok:
                bad.append((shard, "annotations", "annotations file missing or changed"))
    return bad


def _repair_files(run_dir, layout):
    """Make every array file exist with its full size. Returns the shards
    whose records must be dropped (their bytes were lost)."""
    from numpy.lib.format import open_memmap

    lost = set()
    for name, (fname, shape, dt, hlen, per) in layout.arrays().items():
        path = os.path.join(run_dir, fname)
        full = hlen + per * shape[0]
        size = os.path.getsize(path) if os.path.exists(path) else -1
        if size == full:
            continue
        if size < hlen:
            open_memmap(path, mode="w+", dtype=dt, shape=shape)
            valid = 0
        else:
            valid = (size - hlen) // per
            os.truncate(path, full)
        lost.update(s for s in range(layout.n_shards) if layout.shard_range(s)[1] > valid)
    for d in (SHARDS_DIR, ANNOTATIONS_DIR):
        os.makedirs(os.path.join(run_dir, d), exist_ok=True)
    # temporary files of writers killed between write and os.replace
    for d in (".", SHARDS_DIR, ANNOTATIONS_DIR):
        for name in os.listdir(os.path.join(run_dir, d)):
            if ".tmp-" in name:
                os.remove(os.path.join(run_dir, d, name))
    return lost


def _is_complete(run_dir, layout):
    """Manifest present, every file full size, every record readable."""
    if not os.path.isfile(os.path.join(run_dir, MANIFEST_FILE)):
        return False
    for name, (fname, *_r) in layout.arrays().items():
        path = os.path.join(run_dir, fname)
        if not os.path.exists(path) or os.path.getsize(path) != layout.expected_size(name):
            return False
    return all(read_record(run_dir, layout, s) is not None for s in range(layout.n_shards))


def _drop_records(run_dir, layout, shards):
    for s in shards:
        with contextlib.suppress(FileNotFoundError):
            os.remove(layout.shard_record_path(run_dir, s))


def _finalize(run_dir, layout, doc, fsync=False):
    """Write manifest.json from the records and the stored labels/splits."""
    spec = layout.spec
    digest = hashlib.sha256()
    rejections = {c: 0 for c in spec.classes}
    for s in range(layout.n_shards):
        rec = read_record(run_dir, layout, s)
        if rec is None:
            raise RunDirError(f"shard {s} has no completion record; cannot finalize")
        for name in sorted(rec["sha256"]):
            digest.update(f"{s}:{name}:{rec['sha256'][name]}\n".encode())
        for c, k in rec["rejections"].items():
            rejections[c] += k
    labels = np.load(os.path.join(run_dir, "labels.npy"), mmap_mode="r", allow_pickle=False)
    splits = np.load(os.path.join(run_dir, "splits.npy"), mmap_mode="r", allow_pickle=False)
    C = spec.n_classes
    joint = np.bincount(np.asarray(splits, dtype=np.int64) * C + np.asarray(labels),
                        minlength=3 * C).reshape(3, C)
    counts = joint.sum(axis=0)
    manifest = {
        "complete": True,
        "format_version": doc["format_version"],
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
        "files": {name: {"file": f, "bytes": layout.expected_size(name)}
                  for name, (f, *_r) in layout.arrays().items()},
        "finished_at": utcnow(),
    }
    write_json_atomic(os.path.join(run_dir, MANIFEST_FILE), manifest, fsync=fsync)
    return manifest


def _prepare(spec, run_dir, shard_size):
    """Check (read-only) what is in ``run_dir``. Returns (doc, layout, new)."""
    if os.path.isfile(os.path.join(run_dir, SPEC_FILE)):
        doc, layout = load_layout(run_dir)
        if layout.spec != spec:
            keys = layout.spec.diff(spec)
            raise ValueError(
                f"Run directory {run_dir!r} holds a different dataset (fingerprint "
                f"{layout.spec.fingerprint}); differing spec keys: {', '.join(keys)}. "
                "Use another run_dir, or the same spec to resume.")
        if shard_size != "auto" and shard_size != layout.shard_size:
            raise ValueError(
                f"Run directory {run_dir!r} was created with shard_size={layout.shard_size}; "
                f"got shard_size={shard_size}. Omit it to resume.")
        _check_probe(run_dir, doc, layout.spec)
        return doc, layout, False
    if os.path.isdir(run_dir):
        foreign = sorted(n for n in os.listdir(run_dir) if not _is_own(n))
        if foreign:
            raise ValueError(
                f"The 'run_dir' parameter of generate must be a new or empty directory or a "
                f"trajlab run directory. Got {run_dir!r} instead, which holds "
                f"{foreign[:5]} and no {SPEC_FILE}.")
    size = auto_shard_size(spec) if shard_size == "auto" else shard_size
    return None, RunLayout(spec, size), True


@contextlib.contextmanager
def _backend(backend, scheduler, n_jobs, run_dir=None):
    import joblib

    if backend is None:
        yield
    elif backend == "dask":
        from .cluster import dask_backend

        with dask_backend(scheduler, n_jobs=n_jobs, run_dir=run_dir):
            yield
    else:
        with joblib.parallel_config(backend=backend):
            yield


def generate(spec, run_dir, *, n_jobs=-1, shard_size="auto", progress="auto", fsync=False,
             verify=False, backend=None, scheduler=None, heartbeat=15.0, text_interval=30.0):
    """Generate ``spec`` into ``run_dir``; resume if it is partly done.

    Parameters
    ----------
    spec : DatasetSpec
    run_dir : str or os.PathLike
        Created if missing (its parent must exist). If it holds a run of the
        same spec, only missing shards are generated; a finished run is a
        no-op. A different spec is an error naming the differing keys.
    n_jobs : int, default=-1
        Parallel workers (joblib semantics: -1 = all CPUs). ``None`` leaves
        it to ``joblib.parallel_config``.
    shard_size : int or 'auto', default='auto'
        Samples per shard (fixed when the run dir is created; 'auto' aims at
        32 MiB of video per shard). Does not change any generated byte.
    progress : {'auto', 'bar', 'widget', 'text', 'none'}
        Console/notebook view; the progress files are always written.
    fsync : bool, default=False
        Also force each shard to stable storage before recording it (safe
        against power loss, not only process death; slower).
    verify : bool, default=False
        Re-check the checksums of already recorded shards before resuming;
        bad shards are regenerated.
    backend : str, optional
        joblib backend name; None uses the active ``joblib.parallel_config``
        (``loky`` by default). ``'dask'`` connects to ``scheduler``.
    scheduler : str, optional
        dask.distributed scheduler address (``tcp://host:8786``); with
        ``backend='dask'`` and no address, a local cluster is started.
    heartbeat : float, default=15.0
        Maximum seconds between two writes of progress.json.
    text_interval : float, default=30.0
        Seconds between plain-text progress lines.

    Returns
    -------
    GenerationResult
    """
    run_dir, n_jobs, shard_size = _check_args(spec, run_dir, n_jobs, shard_size, progress)
    _check_backend(backend, scheduler)
    doc, layout, new = _prepare(spec, run_dir, shard_size)
    t0 = time.perf_counter()
    if not new and not verify and _is_complete(run_dir, layout):
        # read-only fast path: a finished run is left untouched (not even the lock)
        return GenerationResult(run_dir, spec.fingerprint, spec.n_samples, layout.n_shards, 0,
                                layout.n_shards, time.perf_counter() - t0, None, True,
                                read_json(os.path.join(run_dir, MANIFEST_FILE)))
    if new:
        _check_feasible(spec)
        _check_disk_space(run_dir, layout)
    if backend == "dask":
        from .cluster import check_scheduler

        check_scheduler(scheduler)   # fail fast, before run_dir is created or changed
    os.makedirs(run_dir, exist_ok=True)
    with RunLock(run_dir):
        # again under the lock: another writer may have created the run dir
        # between the first look and the lock
        doc, layout, new = _prepare(spec, run_dir, shard_size)
        if new:
            from . import __version__

            doc = layout.spec_document(__version__)
            write_json_atomic(os.path.join(run_dir, SPEC_FILE), doc, fsync=fsync)
            layout.preallocate(run_dir)
        manifest_path = os.path.join(run_dir, MANIFEST_FILE)
        lost = _repair_files(run_dir, layout)
        done = {s for s in range(layout.n_shards)
                if s not in lost and read_record(run_dir, layout, s) is not None}
        if verify and done:
            bad = {s for s, *_r in find_bad_shards(run_dir, layout, sorted(done))}
            lost |= bad
            done -= bad
        if lost:
            _drop_records(run_dir, layout, lost)
        missing = [s for s in range(layout.n_shards) if s not in done]
        if not missing and os.path.isfile(manifest_path) and not lost:
            manifest = read_json(manifest_path)
            return GenerationResult(run_dir, spec.fingerprint, spec.n_samples, layout.n_shards,
                                    0, layout.n_shards, time.perf_counter() - t0, None, True,
                                    manifest)
        with contextlib.suppress(FileNotFoundError):
            os.remove(manifest_path)
        n_done = sum(layout.shard_range(s)[1] - layout.shard_range(s)[0] for s in done)
        prog = Progress(run_dir, spec.n_samples, n_done, mode=progress, heartbeat=heartbeat,
                        text_interval=text_interval,
                        info={"fingerprint": spec.fingerprint, "shards_total": layout.n_shards,
                              "backend": backend or "joblib default", "n_jobs": n_jobs,
                              "scheduler": scheduler if isinstance(scheduler, str) else None})
        prog.start(message=f"resuming: {len(done)} of {layout.n_shards} shards already done"
                   if done else "")
        t_gen = time.perf_counter()
        try:
            if missing:
                _run_shards(run_dir, layout, missing, n_jobs, fsync, backend, scheduler, prog)
            manifest = _finalize(run_dir, layout, doc, fsync)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                prog.close("interrupted", message=(
                    f"interrupted by {str(exc) or 'the user (SIGINT / Ctrl-C)'}; re-run the same "
                    "command to resume"))
            else:
                prog.close("failed", message=f"{type(exc).__name__}: {exc}"[:500])
            raise
        seconds = time.perf_counter() - t_gen
        generated = spec.n_samples - n_done
        prog.close("finished", message="dataset complete")
    return GenerationResult(run_dir, spec.fingerprint, spec.n_samples, layout.n_shards,
                            len(missing), layout.n_shards - len(missing),
                            time.perf_counter() - t0,
                            generated / seconds if seconds > 0 and generated else None,
                            False, manifest)


def _check_probe(run_dir, doc, spec):
    """Refuse to add to a run dir if this process would write other bytes."""
    from .generator import probe_digest

    recorded = doc.get("probe_sha256")
    if recorded and recorded != probe_digest(spec):
        raise RunDirError(
            f"This machine generates different bytes for {run_dir!r} than the one that "
            f"started it (numpy {doc.get('numpy_version')} there, {np.__version__} here; "
            "probe of the first samples differs). Resume it where it was started, or with "
            "the same numpy and C library.")


def _check_backend(backend, scheduler):
    from joblib import parallel

    known = sorted(set(parallel.BACKENDS) | set(getattr(parallel, "EXTERNAL_BACKENDS", {})))
    if backend is not None:
        if not isinstance(backend, str):
            v.fail("backend", "generate", "a joblib backend name or None", backend, TypeError)
        if backend not in known:
            v.fail("backend", "generate",
                   "None or one of {" + ", ".join(map(repr, known)) + "}", backend)
    if scheduler is not None and backend != "dask":
        v.fail("scheduler", "generate", "None unless backend='dask'", scheduler)


def _check_feasible(spec):
    """Generate the first few samples in memory: a spec under which nothing
    fits in the frame fails here, before anything is written."""
    from .generator import generate_block

    try:
        generate_block(spec, 0, min(spec.n_samples, 4 * spec.n_classes))
    except RuntimeError as exc:
        raise ValueError(f"The spec cannot be generated: {exc}") from None


def _check_disk_space(run_dir, layout):
    need = sum(layout.expected_size(name) for name in layout.arrays())
    target = run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir)
    st = os.statvfs(target)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise OSError(
            f"Not enough disk space for the dataset in {run_dir!r}: it needs "
            f"{need / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free. Choose another run_dir "
            "or fewer/smaller samples.")


def repair(run_dir):
    """Drop the records of shards whose bytes do not match (and the
    manifest), under the run dir's lock, so that :func:`generate`
    regenerates them. Returns the list of bad ``(shard, what, reason)``."""
    _, layout = load_layout(run_dir)
    with RunLock(run_dir):
        bad = find_bad_shards(run_dir, layout)
        if bad:
            _drop_records(run_dir, layout, sorted({s for s, *_r in bad}))
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(run_dir, MANIFEST_FILE))
    return bad


def _run_shards(run_dir, layout, shards, n_jobs, fsync, backend, scheduler, prog):
    from joblib import Parallel, delayed

    with _backend(backend, scheduler, n_jobs, run_dir):
        # one shard per task: at most ~3 * n_jobs shards are in flight, which
        # bounds both memory and the work redone after a kill
        parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered", batch_size=1,
                            pre_dispatch="2*n_jobs")
        for rec in parallel(delayed(write_shard)(run_dir, layout, s, fsync) for s in shards):
            write_json_atomic(layout.shard_record_path(run_dir, rec["shard"]), rec, fsync=fsync)
            prog.update(rec["stop"] - rec["start"])
