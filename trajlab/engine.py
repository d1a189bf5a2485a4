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
import numbers
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import _validation as v
from .generator import SPLITS, array_layout
from .progress import HEARTBEAT_RANGE, MODES, TEXT_INTERVAL_RANGE, Progress
from .spec import DatasetSpec, Param, check_table
from .lease import LEASE_KEY
from .storage import (ANNOTATIONS_DIR, LOCK_FILE, MANIFEST_FILE, SHARDS_DIR, SPEC_FILE,
                      RunDirError, RunLayout, RunLock, open_for_writing, pwrite_all,
                      available_memory, build_manifest, check_array_file,
                      check_managed_entries, check_shard_data, compare_manifest,
                      is_remote, is_trajlab_lock, listed_sizes, load_layout, make_dirs,
                      path_lexists,
                      read_manifest, read_record, remote_run_dir, remove_file,
                      remove_stale_temps, stored_size_problem, temp_owner, utcnow,
                      write_json_atomic, write_shard)

__all__ = ["generate", "repair", "GenerationResult", "auto_shard_size", "find_bad_shards",
           "GENERATE_PARAMS", "check_generate_args", "check_backend", "ensure_dataset"]

#: Target bytes of video per shard when ``shard_size='auto'``: 512 clips at
#: 16x64^2, 4096 (the cap) at 8x32^2. Measured end to end, n_jobs=2 (whole
#: process, to disk): 30,000 x 16x64^2 took 4.26 s with 512-clip shards and
#: 5.13 s with the former 32 MiB (170 clips), 100,000 x 8x32^2 5.70 s with
#: 4096 and 6.26 s with 1365: a generate_block call has a fixed cost of a few
#: ms. The worker's reused render buffer is this size.
SHARD_TARGET_BYTES = 96 * 2**20
#: Seconds between two checks of a worker that its parent is alive.
PARENT_POLL_SECONDS = 0.5


def _is_own_leftover(run_dir, name):
    """What a start killed before spec.json existed can leave: trajlab's
    lock (with its record) and trajlab's temporary files."""
    if name == LOCK_FILE:
        return is_trajlab_lock(os.path.join(run_dir, name))
    return temp_owner(name) is not None


def auto_shard_size(spec, workers=1):
    """Samples per shard: about 96 MiB of video, between 16 and 4096, and
    fewer where ``workers`` shards at once would take more than half of the
    memory available now (a machine with many cores and little memory)."""
    per = spec.n_frames * 3 * spec.image_size ** 2
    size = min(4096, SHARD_TARGET_BYTES // per)
    avail = available_memory()
    if avail is not None and workers > 0:
        size = min(size, avail // 2 // (workers * _sample_memory(spec)))
    return int(max(16, size))


def _sample_memory(spec):
    """Bytes a worker holds per sample of its shard: frames, render and noise
    temporaries, ground truth and its copies, text."""
    arrays = array_layout(spec)
    video = int(np.prod(arrays["videos"][0])) * np.dtype(arrays["videos"][1]).itemsize
    other = sum(int(np.prod(shape)) * np.dtype(dt).itemsize
                for name, (shape, dt) in arrays.items() if name != "videos")
    return 3 * video + 2 * other + 4096


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
    repaired : list of str
        What was rebuilt or dropped on the way (damaged headers, sizes,
        records, shards, the manifest), one line each.
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
    repaired: list = field(default_factory=list)

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
        for k, line in enumerate(self.repaired):
            lines.append(("Repaired:     " if k == 0 else "              ") + line)
        if m:
            names = m["class_names"]
            lines.append("Classes:      " + ", ".join(f"{k}={m['class_counts'][k]:,}" for k in names))
            lines.append("Splits:       " + ", ".join(
                f"{s}={sum(m['split_counts'][s].values()):,}" for s in SPLITS))
            lines.append("Rejections:   " + ", ".join(f"{k}={m['rejections'][k]:,}" for k in names))
            if "stored_bytes" in m:
                lines.append(f"On disk:      {m['stored_bytes']['total'] / 1e6:,.1f} MB "
                             f"({m['codec']}, {m['store']}; {m['raw_bytes'] / 1e6:,.1f} MB "
                             f"decoded, {m['compression_ratio']}x smaller)")
            else:
                lines.append(f"On disk:      {sum(f['bytes'] for f in m['files'].values()) / 1e6:,.1f}"
                             " MB (raw .npy, format 1)")
        lines.append(f"Progress:     {os.path.join(self.run_dir, 'PROGRESS.txt')}")
        return "\n".join(lines)

    def __repr__(self):
        return "GenerationResult(\n  " + self.summary().replace("\n", "\n  ") + "\n)"


def _check_n_jobs(value, name, owner):
    if value is None:
        return None
    n = v.check_int(value, name, owner, -v.MAX_N_JOBS, v.MAX_N_JOBS)
    if n == 0:
        v.fail(name, owner, "a non-zero int (negative counts from the number of CPUs) or None",
               0)
    return n


def _check_shard_size(value, name, owner):
    expected = f"an int in the range [1, {v.MAX_SHARD_SIZE}] or 'auto'"
    if isinstance(value, str):
        if value != "auto":
            v.fail(name, owner, expected, value)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        v.fail(name, owner, expected, value, TypeError)
    if not 1 <= value <= v.MAX_SHARD_SIZE:
        v.fail(name, owner, expected, int(value))
    return int(value)


def _check_optional_str(what):
    def check(value, name, owner):
        if value is not None and (not isinstance(value, str) or not value):
            v.fail(name, owner, f"{what} or None", value, TypeError)
        return value
    return check


def _check_format_version(value, name, owner):
    if value is None:
        return None
    from .storage import FORMATS

    if type(value) is not int or value not in FORMATS:
        v.fail(name, owner, "None, 1 (raw .npy memmaps) or 2 (zarr v3 + zstd)", value,
               TypeError if type(value) is not int else ValueError)
    return value


def _check_scheduler(value, name, owner):
    # an address, a distributed.Client or None: trajlab.cluster.check_scheduler
    # checks it when the backend is 'dask' (check_backend refuses it otherwise)
    return value


def _shard_text(text):
    return text if text == "auto" else int(text)


def _cli_choice(choices):
    def parse(text):
        if text not in choices:
            raise ValueError(text)
        return text
    return parse


def _float_in(low, high):
    return lambda value, name, owner: v.check_float(value, name, owner, low, high)


#: The one table of :func:`generate`'s own parameters (beside ``spec`` and
#: ``run_dir``): it drives generate's checks, the notebooks' checks (which
#: name the notebook) and the ``trajlab generate`` flags. Defaults live in
#: generate's signature.
GENERATE_PARAMS = {p.name: p for p in (
    Param("n_jobs", _check_n_jobs, "workers, joblib semantics, -1: all CPUs (Python default "
          "None: 1, or the n_jobs of an active joblib.parallel_config; the command line's "
          "default: all CPUs)", "--n-jobs", int, short="-j"),
    Param("shard_size", _check_shard_size, "samples per shard (default: auto)", "--shard-size",
          _shard_text, f"an int in the range [1, {v.MAX_SHARD_SIZE}] or 'auto'"),
    Param("progress", lambda value, name, owner: v.check_choice(value, name, owner, MODES),
          "console view: auto, bar, text or none", "--progress",
          _cli_choice(("auto", "bar", "text", "none")), "one of {'auto', 'bar', 'text', 'none'}"),
    Param("fsync", v.check_bool, "fsync each shard (power-loss safe)", "--fsync", bool),
    Param("verify", v.check_bool,
          "re-check every recorded shard before resuming; rebuild whatever is derivable "
          "(headers, records, shards, manifest) and say what", "--verify", bool),
    Param("backend", _check_optional_str("a joblib backend name"),
          "joblib backend (default: loky; 'dask' for a cluster)", "--backend", str),
    Param("scheduler", _check_scheduler,
          "dask scheduler address, e.g. tcp://10.0.0.5:8786", "--scheduler", str),
    Param("heartbeat", _float_in(*HEARTBEAT_RANGE),
          "maximum seconds between two writes of progress.json", "--heartbeat", float),
    Param("text_interval", _float_in(*TEXT_INTERVAL_RANGE),
          "seconds between plain-text progress lines", "--text-interval", float),
    Param("format_version", _check_format_version,
          "storage format of a new run dir: 2 = zarr v3 with zstd (default), 1 = raw .npy "
          "memmaps; a resume keeps the run dir's own", "--format-version", int),
)}


def check_generate_args(values, owner="generate"):
    """Validate and normalise :func:`generate` parameters given as a dict.

    Parameters
    ----------
    values : dict
        Parameter name -> value (names of :data:`GENERATE_PARAMS`); only
        the keys present are checked. ``backend`` and ``scheduler`` are also
        checked together (:func:`check_backend`).
    owner : str, default='generate'
        Named in error messages (a notebook passes its own name).

    Returns
    -------
    dict
        The normalised values, in the same keys.
    """
    out = check_table(GENERATE_PARAMS, values, owner, "generate")
    if "backend" in out or "scheduler" in out:
        check_backend(out.get("backend"), out.get("scheduler"), owner)
    return out


def _check_args(spec, run_dir, params):
    own = "generate"
    if not isinstance(spec, DatasetSpec):
        v.fail("spec", own, "a trajlab.DatasetSpec", spec, TypeError)
    run_dir = v.check_path(run_dir, "run_dir", own)
    checked = check_generate_args(params, own)
    if is_remote(run_dir):
        run_dir = remote_run_dir(run_dir, "run_dir", own)
        if checked["format_version"] == 1:
            v.fail("format_version", own, "None or 2 for an s3:// run_dir (format 1 is raw "
                   ".npy memory maps, local only)", 1)
        return run_dir, checked
    run_dir = os.path.abspath(run_dir)
    parent = os.path.dirname(run_dir)
    if not os.path.isdir(parent):
        v.fail("run_dir", own, "a path whose parent directory exists", run_dir)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        v.fail("run_dir", own, "a directory path (not an existing file)", run_dir)
    return run_dir, checked


def _check_writable(run_dir):
    if is_remote(run_dir):      # permissions show in the first PUT (the spec's)
        return
    target = run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir)
    if not os.access(target, os.W_OK | os.X_OK):
        v.fail("run_dir", "generate", "a path in a writable directory", run_dir, PermissionError)


def find_bad_shards(run_dir, layout, shards=None):
    """Shards whose stored bytes do not match their record.

    Returns a list of ``(shard, what, reason)``; ``what`` names the array
    (or ``'record'``/``'annotations'``). Arrays whose file is damaged as a
    whole (header, size) are left to :func:`trajlab.verify_run`.
    """
    broken = {name for name in layout.arrays()
              if check_array_file(run_dir, layout, name) is not None}
    bad = []
    for shard in (range(layout.n_shards) if shards is None else shards):
        rec = read_record(run_dir, layout, shard)
        if rec is None:
            bad.append((shard, "record", "missing or unreadable completion record"))
            continue
        found = check_shard_data(run_dir, layout, shard, rec, skip=broken)
        if found is not None:
            bad.append((shard, *found))
    return bad


def _repair_files(run_dir, layout):
    """Make every array file exist with its exact header and full size, and
    remove the temporary files of dead writers.

    Returns ``(lost, rebuilt)``: the shards whose bytes were lost (their
    records must go) and one line per file that was rebuilt.
    """
    lost, rebuilt = set(), []
    check_managed_entries(run_dir, layout)
    if layout.format_version == 2:
        return lost, _repair_store(run_dir, layout)
    for name, (fname, shape, dt, hlen, per) in layout.arrays().items():
        problem = check_array_file(run_dir, layout, name)
        if problem is None:
            continue
        path = os.path.join(run_dir, fname)
        full = layout.expected_size(name)
        if not os.path.lexists(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o666)
            size = 0
            rebuilt.append(f"{fname}: created (it was missing)")
        else:
            fd = open_for_writing(path, os.O_RDWR)
            size = os.fstat(fd).st_size
            if size == 0:
                rebuilt.append(f"{fname}: rebuilt (it was empty)")
        try:
            if os.pread(fd, hlen, 0) != layout.header(name):
                pwrite_all(fd, layout.header(name), 0)
                if size:
                    rebuilt.append(f"{fname}: header rewritten")
            if size != full:
                os.ftruncate(fd, full)
                if size:
                    rebuilt.append(f"{fname}: {'extended' if size < full else 'cut'} to its "
                                   f"full size ({size} -> {full} bytes)")
        finally:
            os.close(fd)
        valid = max(0, (min(size, full) - hlen) // per) if size >= hlen else 0
        lost.update(s for s in range(layout.n_shards) if layout.shard_range(s)[1] > valid)
    make_dirs(run_dir, layout.folders)
    # temporary files of writers killed between write and os.replace
    for d in (".", SHARDS_DIR, ANNOTATIONS_DIR):
        remove_stale_temps(os.path.join(run_dir, d))
    return lost, rebuilt


def _repair_store(run_dir, layout):
    """Format 2: make the store's folders and every ``zarr.json`` exactly
    what trajlab writes (the shard objects are checked with their shards),
    and remove the temporary files of dead writers."""
    from . import zstore
    from .storage import _diff_paths, make_store_dirs, parse_json, read_bytes, write_bytes_atomic

    rebuilt = []
    make_store_dirs(run_dir, layout)
    for rel, doc in layout.store_documents().items():
        path = os.path.join(run_dir, rel)
        try:
            obj, reason = parse_json(read_bytes(path, 2**20, root=run_dir))
        except FileNotFoundError:
            obj, reason = None, "missing"
        except Exception as exc:          # unreadable, too large, not a file
            obj, reason = None, str(exc)
        if reason is None and not _diff_paths(obj, doc):     # type-strict: true != 1
            continue
        write_bytes_atomic(path, zstore.document_bytes(doc), root=run_dir)
        rebuilt.append(f"{rel}: rewritten ({'it was missing' if reason == 'missing' else 'it differed from what trajlab writes'})")
    make_dirs(run_dir, layout.folders)
    for d in (".", SHARDS_DIR, ANNOTATIONS_DIR, zstore.STORE_DIR,
              *(f for f, *_r in layout.arrays().values())):
        remove_stale_temps(os.path.join(run_dir, d))
    return rebuilt


def _label_split_mismatches(run_dir, layout, shards):
    """``(shard, reason)`` for shards whose labels, splits or attempts do not
    match its record (13 bytes a sample, read for the manifest anyway:
    checked on every resume)."""
    from .storage import open_array, record_data_problem

    out = []
    arrays = {name: open_array(run_dir, layout, name)
              for name in ("labels", "splits", "attempts")}
    for s in shards:
        rec = read_record(run_dir, layout, s)
        a, b = layout.shard_range(s)
        for name, arr in arrays.items():
            try:
                data = np.ascontiguousarray(arr[a:b])
            except RunDirError as exc:       # format 2: a damaged object
                out.append((s, str(exc).split(" in run directory ")[0]))
                break
            if layout.digest(data.data) != rec[layout.checksum][name]:
                out.append((s, f"checksum mismatch in {layout.arrays()[name][0]} "
                               f"(samples {a}..{b - 1})"))
                break
        else:
            problem = record_data_problem(rec, layout, arrays["labels"][a:b],
                                          arrays["attempts"][a:b])
            if problem:
                out.append((s, f"completion record damaged: {problem}"))
    return out


def _manifest_ok(run_dir, layout):
    """The manifest exists, passes its checks and matches the records and
    the data (what verify_run requires of it)."""
    manifest, problem = read_manifest(run_dir, layout)
    if manifest is None or problem:
        return False
    records = {}
    with listed_sizes(run_dir):         # s3: records, labels and splits fetched together
        for s in range(layout.n_shards):
            records[s] = read_record(run_dir, layout, s)
            if records[s] is None:
                return False
        try:
            expected = build_manifest(run_dir, layout, records)
        except RunDirError:
            return False
    return compare_manifest(manifest, expected, run_dir) is None


def _is_complete(run_dir, layout):
    """Every array file exact, every record valid, the manifest right
    (format 2: every object of every shard with its recorded size)."""
    with listed_sizes(run_dir):         # s3: one listing, the small objects fetched together
        return _is_complete_now(run_dir, layout)


def _is_complete_now(run_dir, layout):
    if any(check_array_file(run_dir, layout, name) is not None for name in layout.arrays()):
        return False
    if layout.format_version == 2:
        for s in range(layout.n_shards):
            rec = read_record(run_dir, layout, s)
            if rec is None or stored_size_problem(run_dir, layout, s, rec) is not None:
                return False
    if not is_remote(run_dir) and not all(
            os.path.isdir(os.path.join(run_dir, d)) for d in layout.folders):
        return False
    return _manifest_ok(run_dir, layout)


def _drop_records(run_dir, layout, shards):
    for s in shards:
        remove_file(layout.shard_record_path(run_dir, s), root=run_dir)


def _finalize(run_dir, layout, doc, fsync=False):
    """Write manifest.json from the records and the stored labels/splits."""
    records = {}
    with listed_sizes(run_dir):         # s3: records, labels and splits fetched together
        for s in range(layout.n_shards):
            records[s] = read_record(run_dir, layout, s)
            if records[s] is None:
                raise RunDirError(f"shard {s} has no completion record; cannot finalize")
        manifest = build_manifest(run_dir, layout, records)
    manifest["finished_at"] = utcnow()
    write_json_atomic(os.path.join(run_dir, MANIFEST_FILE), manifest, fsync=fsync)
    return manifest


def _prepare(spec, run_dir, shard_size, format_version=None, workers=1):
    """Check (read-only) what is in ``run_dir``. Returns (doc, layout, new).

    Only a folder with trajlab's spec.json is a run dir; a new one must be
    empty but for what a start killed before spec.json existed leaves.
    """
    if path_lexists(os.path.join(run_dir, SPEC_FILE)):
        doc, layout = load_layout(run_dir)
        check_managed_entries(run_dir, layout)
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
        if format_version is not None and format_version != layout.format_version:
            raise ValueError(
                f"Run directory {run_dir!r} was created with format_version="
                f"{layout.format_version}; got format_version={format_version}. Omit it to "
                "resume (`trajlab export` converts a dataset to other files).")
        return doc, layout, False
    if is_remote(run_dir):
        from .storage import _remote_store

        foreign = sorted(k for k in _remote_store(run_dir).list() if k != LEASE_KEY)
        if foreign:
            raise ValueError(
                f"The 'run_dir' parameter of generate must be a new or empty prefix or a "
                f"trajlab run directory. Got {run_dir!r} instead, which holds "
                f"{foreign[:5]} and no {SPEC_FILE}.")
    elif os.path.isdir(run_dir):
        foreign = sorted(n for n in os.listdir(run_dir) if not _is_own_leftover(run_dir, n))
        if foreign:
            raise ValueError(
                f"The 'run_dir' parameter of generate must be a new or empty directory or a "
                f"trajlab run directory. Got {run_dir!r} instead, which holds "
                f"{foreign[:5]} and no {SPEC_FILE}.")
        check_managed_entries(run_dir)
    from . import storage

    size = auto_shard_size(spec, workers) if shard_size == "auto" else shard_size
    layout = RunLayout(spec, size, storage.FORMAT_VERSION if format_version is None
                       else format_version, storage.CHECKSUM, storage.zstore.CODEC)
    v.check_int(layout.n_shards, "n_shards", "generate (n_samples / shard_size)", 1,
                v.MAX_N_SHARDS)
    return None, layout, True


def _watch_parent(parent_pid, child=False):
    """In a worker process: exit within :data:`PARENT_POLL_SECONDS` once the
    process that started the generation dies (a killed parent must not
    leave workers behind). Only in direct children of ``parent_pid`` (loky,
    multiprocessing); a no-op in the parent itself and on dask workers.
    ``child=True`` (loky's initializer: the worker is known to be a child of
    ``parent_pid``): a parent already gone at start means exit now."""
    global _WATCHED
    if _WATCHED == parent_pid or os.getpid() == parent_pid:
        return
    if os.getppid() != parent_pid:
        if child:
            os._exit(70)
        return
    _WATCHED = parent_pid

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(70)      # the parent is gone: nobody will record this shard

    threading.Thread(target=watch, name="trajlab-parent-watch", daemon=True).start()


_WATCHED = None


def _shard_task(run_dir, layout, shard, fsync, parent_pid, env=None):
    _watch_parent(parent_pid)
    if env is not None:         # an s3:// run dir: this call's AWS_* settings of the parent
        for k in [k for k in os.environ if k.startswith("AWS_") and k not in env]:
            del os.environ[k]
        os.environ.update(env)
    return write_shard(run_dir, layout, shard, fsync)


def _object_store_env(run_dir, backend):
    """For an s3:// run dir written by workers of this machine (loky,
    multiprocessing, threads): the parent's ``AWS_*`` variables, given to
    each task. loky keeps its workers between calls, so a worker started
    before the credentials or the endpoint were set would not see them.
    None for dask (its workers take their own environment on their host)
    and for local run dirs."""
    if not is_remote(run_dir) or backend == "dask":
        return None
    return {k: val for k, val in os.environ.items() if k.startswith("AWS_")}


@contextlib.contextmanager
def _watched_loky():
    """Give the default loky workers the parent watch from their start (an
    idle worker never runs a task, so only an initializer reaches it)."""
    import joblib
    from joblib.parallel import get_active_backend

    active, _ = get_active_backend()
    kwargs = dict(getattr(active, "backend_kwargs", {}) or {})
    if type(active).__name__ != "LokyBackend" or "initializer" in kwargs:
        yield
        return
    kwargs.update(initializer=_watch_parent, initargs=(os.getpid(), True))
    inner = getattr(active, "inner_max_num_threads", None)
    with joblib.parallel_config(backend="loky", inner_max_num_threads=inner, **kwargs):
        yield


@contextlib.contextmanager
def _backend(backend, scheduler, n_jobs, run_dir=None):
    import joblib

    if backend is None:
        with _watched_loky():
            yield
    elif backend == "dask":
        from .cluster import dask_backend

        with dask_backend(scheduler, n_jobs=n_jobs, run_dir=run_dir):
            yield
    else:
        with joblib.parallel_config(backend=backend), _watched_loky():
            yield


def generate(spec, run_dir, *, n_jobs=None, shard_size="auto", progress="auto", fsync=False,
             verify=False, backend=None, scheduler=None, heartbeat=15.0, text_interval=30.0,
             format_version=None):
    """Generate ``spec`` into ``run_dir``; resume if it is partly done.

    Parameters
    ----------
    spec : DatasetSpec
    run_dir : str or os.PathLike
        Created if missing (its parent must exist). If it holds a run of the
        same spec, only missing shards are generated; a finished run is a
        no-op (it needs no write access). A different spec is an error
        naming the differing keys. Only a folder with trajlab's spec.json,
        or an empty one, is used; trajlab's files in it must not be symbolic
        links.
    n_jobs : int or None, default=None
        Parallel workers, with joblib semantics: None leaves it to the
        active ``joblib.parallel_config(n_jobs=...)`` (1 outside one, as in
        scikit-learn), -1 = all CPUs, -2 = all but one; at most 1024 either
        way.
    shard_size : int or 'auto', default='auto'
        Samples per shard, in [1, 1048576] (fixed when the run dir is
        created; 'auto' aims at 96 MiB of video per shard). Does not change
        any generated byte.
    progress : {'auto', 'bar', 'widget', 'text', 'none'}
        Console/notebook view; the progress files are always written.
    fsync : bool, default=False
        Also force each shard to stable storage before recording it (safe
        against power loss, not only process death; slower).
    verify : bool, default=False
        Re-check every recorded shard (checksums, annotations) before
        resuming: bad shards are regenerated, and whatever else is derivable
        (array headers and sizes, records, the manifest) is rebuilt; the
        result's ``repaired`` says what.
    backend : str, optional
        joblib backend name; None uses the active ``joblib.parallel_config``
        (``loky`` by default). ``'dask'`` connects to ``scheduler``.
    scheduler : str, optional
        dask.distributed scheduler address (``tcp://host:8786``); with
        ``backend='dask'`` and no address, a local cluster is started.
    heartbeat : float, default=15.0
        Maximum seconds between two writes of progress.json, in [0.1, 3600].
    text_interval : float, default=30.0
        Seconds between plain-text progress lines, in [0, 86400].
    format_version : {None, 1, 2}, default=None
        Storage format of a new run dir (``docs/FORMAT.md``): 2 is a zarr v3
        group with zstd-compressed shards (the default; 80-235x smaller for
        typical specs), 1 is one raw ``.npy`` per array, for plain memory
        maps. None: 2 for a new run dir; a resume keeps the run dir's own
        format (giving the other one is an error).

    Returns
    -------
    GenerationResult

    Notes
    -----
    Before anything is written or computed: every argument is checked,
    then the disk space (new run dirs) and the memory the shards need, then
    a few samples are generated to check that the spec can be generated.
    """
    run_dir, checked = _check_args(spec, run_dir, dict(
        n_jobs=n_jobs, shard_size=shard_size, progress=progress, fsync=fsync, verify=verify,
        backend=backend, scheduler=scheduler, heartbeat=heartbeat, text_interval=text_interval,
        format_version=format_version))
    n_jobs, shard_size = checked["n_jobs"], checked["shard_size"]
    fmt = checked["format_version"]
    heartbeat, text_interval = checked["heartbeat"], checked["text_interval"]
    workers = _workers(n_jobs, backend, scheduler)
    doc, layout, new = _prepare(spec, run_dir, shard_size, fmt, workers)
    t0 = time.perf_counter()
    if not new and not verify and _is_complete(run_dir, layout):
        # read-only fast path: a finished run is left untouched (not even the lock)
        return GenerationResult(run_dir, spec.fingerprint, spec.n_samples, layout.n_shards, 0,
                                layout.n_shards, time.perf_counter() - t0, None, True,
                                read_manifest(run_dir, layout)[0])
    _check_writable(run_dir)
    if new and not is_remote(run_dir):
        _check_disk_space(run_dir, layout)
    _check_memory(layout, n_jobs, backend, scheduler)
    if new:
        _check_feasible(spec)
    else:
        _check_probe(run_dir, doc, layout.spec)
    if backend == "dask":
        from .cluster import check_scheduler

        check_scheduler(scheduler)   # fail fast, before run_dir is created or changed
    if not is_remote(run_dir):
        os.makedirs(run_dir, exist_ok=True)
    with RunLock(run_dir):
        # again under the lock: another writer may have created the run dir
        # between the first look and the lock
        doc, layout, new = _prepare(spec, run_dir, shard_size, fmt, workers)
        if new:
            from . import __version__

            remove_stale_temps(run_dir)
            doc = layout.spec_document(__version__)
            write_json_atomic(os.path.join(run_dir, SPEC_FILE), doc, fsync=fsync)
            layout.preallocate(run_dir)
        manifest_path = os.path.join(run_dir, MANIFEST_FILE)
        with listed_sizes(run_dir):      # s3: one listing, not a HEAD per object
            lost, repaired = _repair_files(run_dir, layout)
            done = set()
            for s in range(layout.n_shards):
                if s in lost:
                    continue
                if read_record(run_dir, layout, s) is not None:
                    done.add(s)
                elif path_lexists(layout.shard_record_path(run_dir, s)):
                    lost.add(s)
                    repaired.append(f"shard {s}: damaged completion record dropped; regenerated")
            for s in sorted(done):           # format 2: a missing or resized object
                found = stored_size_problem(run_dir, layout, s, read_record(run_dir, layout, s))
                if found:
                    lost.add(s)
                    done.discard(s)
                    repaired.append(f"shard {s}: {found[1]}; regenerated")
            # labels and splits are read for the manifest anyway: cheap to check always
            for s, reason in _label_split_mismatches(run_dir, layout, sorted(done)):
                lost.add(s)
                done.discard(s)
                repaired.append(f"shard {s}: {reason}; regenerated")
            if verify and done:
                for s, what, reason in find_bad_shards(run_dir, layout, sorted(done)):
                    lost.add(s)
                    done.discard(s)
                    repaired.append(f"shard {s}: {reason}; regenerated")
            if lost:
                _drop_records(run_dir, layout, lost)
        missing = [s for s in range(layout.n_shards) if s not in done]
        had_manifest = path_lexists(manifest_path) or not missing
        if not missing and had_manifest and _manifest_ok(run_dir, layout):
            return GenerationResult(run_dir, spec.fingerprint, spec.n_samples, layout.n_shards,
                                    0, layout.n_shards, time.perf_counter() - t0, None,
                                    not repaired, read_manifest(run_dir, layout)[0], repaired)
        remove_file(manifest_path)
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
        if had_manifest:
            repaired.append("manifest.json: rebuilt")
        seconds = time.perf_counter() - t_gen
        generated = spec.n_samples - n_done
        prog.close("finished", message="dataset complete")
    return GenerationResult(run_dir, spec.fingerprint, spec.n_samples, layout.n_shards,
                            len(missing), layout.n_shards - len(missing),
                            time.perf_counter() - t0,
                            generated / seconds if seconds > 0 and generated else None,
                            False, manifest, repaired)


def ensure_dataset(run_dir, spec, *, create=True, progress="auto"):
    """Generate ``spec`` into ``run_dir`` if, and only if, it does not exist.

    For notebooks that read a dataset and can make a missing one (notebook
    03): an existing ``run_dir`` is left to :func:`trajlab.open_dataset` to
    check, whatever spec it holds.

    Parameters
    ----------
    run_dir : str or os.PathLike
        Missing parent folders are created.
    spec : DatasetSpec
        What to generate when ``run_dir`` is missing.
    create : bool, default=True
        False: never generate (opening the missing run dir then fails).
    progress : str, default='auto'
        As in :func:`generate`.

    Returns
    -------
    GenerationResult or None
        None when nothing was generated.
    """
    run_dir = v.check_path(run_dir, "run_dir", "ensure_dataset")
    v.check_bool(create, "create", "ensure_dataset")
    if is_remote(run_dir):      # a prefix "exists" once it holds a spec.json
        run_dir = remote_run_dir(run_dir, "run_dir", "ensure_dataset")
        if not create or path_lexists(os.path.join(run_dir, SPEC_FILE)):
            return None
    elif not create or os.path.lexists(run_dir):
        return None
    print(f"{run_dir} does not exist: generating the dataset first")
    if not is_remote(run_dir):
        os.makedirs(os.path.dirname(os.path.abspath(run_dir)), exist_ok=True)
    result = generate(spec, run_dir, progress=progress)
    print(result.summary())
    return result


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


def check_backend(backend, scheduler, owner="generate"):
    """Check a joblib ``backend`` name (registered with joblib) and that a
    ``scheduler`` is only given with ``backend='dask'``; errors name
    ``owner``."""
    from joblib import parallel

    known = sorted(set(parallel.BACKENDS) | set(getattr(parallel, "EXTERNAL_BACKENDS", {})))
    # generate takes results as shards complete (return_as='generator_unordered'),
    # which joblib's 'multiprocessing' backend cannot do: refused here, before
    # any work, instead of failing after the run dir is made
    known = [k for k in known
             if getattr(parallel.BACKENDS.get(k), "supports_return_generator", True) is not False]
    if backend is not None:
        if not isinstance(backend, str):
            v.fail("backend", owner, "a joblib backend name or None", backend, TypeError)
        if backend not in known:
            v.fail("backend", owner,
                   "None or one of {" + ", ".join(map(repr, known)) + "}", backend)
    if scheduler is not None and backend != "dask":
        v.fail("scheduler", owner, "None unless backend='dask'", scheduler)


def _check_feasible(spec):
    """Generate the first few samples in memory: a spec under which nothing
    fits in the frame fails here, before anything is written."""
    from . import generator

    try:
        generator.generate_block(spec, 0, min(spec.n_samples, 4 * spec.n_classes))
    except RuntimeError as exc:
        raise ValueError(f"The spec cannot be generated: {exc}") from None


def _check_disk_space(run_dir, layout):
    need = layout.disk_estimate()
    target = run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir)
    st = os.statvfs(target)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise OSError(
            f"Not enough disk space for the dataset in {run_dir!r}: it needs "
            f"{need / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free. Choose another run_dir "
            "or fewer/smaller samples.")


def _workers(n_jobs, backend, scheduler):
    """Worker processes on this machine that each hold a shard."""
    import joblib

    if backend == "dask" and scheduler is not None:
        return 0          # the shards are held by the cluster's workers
    if backend in ("sequential", "threading"):
        return 1 if backend == "sequential" else joblib.cpu_count()
    return max(1, joblib.effective_n_jobs(n_jobs))


def _check_memory(layout, n_jobs, backend, scheduler):
    """Refuse a spec whose shards would not fit in memory (before the probe,
    which itself generates a few samples in this process)."""
    spec = layout.spec
    per_sample = _sample_memory(spec)
    probe = min(spec.n_samples, max(8, 4 * spec.n_classes)) * per_sample
    shard = min(layout.shard_size, spec.n_samples) * per_sample
    workers = _workers(n_jobs, backend, scheduler)
    need = max(probe, shard) + max(0, workers - 1) * shard
    avail = available_memory()
    if avail is not None and need > avail:
        raise MemoryError(
            f"The spec needs about {need / 2**30:.2f} GiB of memory ({max(1, workers)} "
            f"worker(s), each generating shards of {layout.shard_size} samples of "
            f"{per_sample / 2**20:.1f} MiB), but only {avail / 2**30:.2f} GiB is available. Use "
            "fewer frames or smaller images, a smaller shard_size, or fewer n_jobs.")


def repair(run_dir):
    """Repair a run dir in place, under its lock, as far as it is derivable.

    Rebuilds array headers and sizes, drops damaged or missing records and
    the records of shards whose bytes do not match (so that
    :func:`generate` regenerates them), removes the temporary files of dead
    writers, and rebuilds the manifest when every shard is good (removes it
    otherwise). spec.json is never changed: a damaged one is refused.

    Returns
    -------
    report : dict
        ``bad`` (what was found, as ``(shard, what, reason)``), ``rebuilt``
        (one line per thing rebuilt or dropped), ``dropped`` (shards to
        regenerate) and ``complete`` (the dataset is complete now).
    """
    from .dataset import verify_run

    run_dir = v.check_path(run_dir, "run_dir", "repair")
    if is_remote(run_dir):
        run_dir = remote_run_dir(run_dir, "run_dir", "repair")
    _, layout = load_layout(run_dir)
    check_managed_entries(run_dir, layout)
    with RunLock(run_dir):
        bad = verify_run(run_dir)["bad"]
        lost, rebuilt = _repair_files(run_dir, layout)
        for s in range(layout.n_shards):
            if s not in lost and read_record(run_dir, layout, s) is None:
                lost.add(s)
        good = [s for s in range(layout.n_shards) if s not in lost]
        lost.update(s for s, *_r in find_bad_shards(run_dir, layout, good))
        for s in sorted(lost):
            if path_lexists(layout.shard_record_path(run_dir, s)):
                rebuilt.append(f"shard {s}: record dropped (bytes or record damaged)")
        _drop_records(run_dir, layout, lost)
        manifest_path = os.path.join(run_dir, MANIFEST_FILE)
        if not lost:
            if not _manifest_ok(run_dir, layout):
                _finalize(run_dir, layout, None)
                rebuilt.append("manifest.json: rebuilt")
        elif path_lexists(manifest_path):
            remove_file(manifest_path)
            rebuilt.append(f"manifest.json: removed ({len(lost)} shard(s) to regenerate)")
    return {"bad": bad, "rebuilt": rebuilt, "dropped": sorted(lost), "complete": not lost}


def _run_shards(run_dir, layout, shards, n_jobs, fsync, backend, scheduler, prog):
    from joblib import Parallel, delayed

    parent = os.getpid()
    with _backend(backend, scheduler, n_jobs, run_dir):
        # one shard per task: at most ~3 * n_jobs shards are in flight, which
        # bounds both memory and the work redone after a kill
        parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered", batch_size=1,
                            pre_dispatch="2*n_jobs")
        env = _object_store_env(run_dir, backend)
        tasks = (delayed(_shard_task)(run_dir, layout, s, fsync, parent, env) for s in shards)
        for rec in parallel(tasks):
            write_json_atomic(layout.shard_record_path(run_dir, rec["shard"]), rec, fsync=fsync,
                              root=run_dir)
            prog.update(rec["stop"] - rec["start"])
