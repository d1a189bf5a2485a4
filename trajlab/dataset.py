"""Reading a finished run directory: memory-mapped, verified, O(1) to open.

:func:`open_dataset` refuses an incomplete dataset, checks spec.json, the
manifest against the spec and the exact header and size of every file (a
truncated or re-typed file is caught at once), and returns a
:class:`TrajectoryData` whose arrays are read-only memory maps. Records, the
manifest's counts and the checksums (arrays and annotations) are verified
lazily, one shard at a time, the first time a sample of that shard is read
through :meth:`TrajectoryData.sample` (or the torch datasets);
``verify='full'`` checks everything up front and ``verify='none'`` skips
them. A corrupted shard raises :class:`~trajlab.storage.RunDirError`; it is
never returned.

:func:`verify_run` makes the same checks on the whole run dir: it succeeds
exactly when opening the dataset and reading every sample and annotation
would succeed and return the recorded bytes.
"""

from __future__ import annotations

import os

import numpy as np

from . import _validation as v
from .generator import SPLITS
from .storage import (MANIFEST_FILE, RunDirError, build_manifest, check_array_file,
                      check_managed_entries, check_shard_data, compare_manifest, load_layout,
                      open_array, probe_problem, read_shard_records,
                      is_remote, listed_sizes, read_manifest, read_record, remote_run_dir)

__all__ = ["open_dataset", "TrajectoryData", "verify_run"]

VERIFY_MODES = ("lazy", "full", "none")


def _fix_hint(run_dir):
    return (f" Run `trajlab verify --repair {run_dir}` (and `trajlab generate {run_dir}` if it "
            "says shards must be regenerated).")


class TrajectoryData:
    """A complete trajlab dataset on disk.

    Attributes
    ----------
    run_dir : str
    spec : DatasetSpec
    manifest : dict
    videos : memmap of shape (N, T, 3, H, W), uint8
    labels : memmap of shape (N,), int64
    splits : memmap of shape (N,), uint8 (0 train, 1 val, 2 test)
    positions, pixels, depth, radius, K, R, t, colors, attempts : memmaps
        Ground truth; see :class:`trajlab.generator.Block`.
    class_names : tuple of str

    Opening checks spec.json, the manifest against the spec, and every
    array file's exact header and size, whatever ``verify`` is. Format 2
    run dirs give read-only :class:`trajlab.zstore.ChunkedArray` views
    instead of memmaps (same indexing on the first axis, ``np.asarray``,
    ``shape``, ``dtype``). Raw array attributes are not checksum-verified; :meth:`sample`, :meth:`video`,
    :meth:`label`, :meth:`annotation`, :meth:`verify` and the torch datasets
    are: the first of them to run also checks every completion record and
    the manifest against the records and the data.
    """

    def __init__(self, run_dir, verify="lazy"):
        run_dir = v.check_path(run_dir, "run_dir", "open_dataset")
        v.check_choice(verify, "verify", "open_dataset", VERIFY_MODES)
        if is_remote(run_dir):
            run_dir = remote_run_dir(run_dir, "run_dir", "open_dataset")
        elif not os.path.isdir(run_dir):
            raise RunDirError(f"No dataset at {run_dir!r}: the directory does not exist.")
        self.doc, self.layout = load_layout(run_dir)
        check_managed_entries(run_dir, self.layout)
        self.run_dir = run_dir
        self.spec = self.layout.spec
        manifest, problem = read_manifest(run_dir, self.layout)
        if manifest is None:
            done = sum(read_record(run_dir, self.layout, s) is not None
                       for s in range(self.layout.n_shards))
            raise RunDirError(
                f"Dataset {run_dir!r} is incomplete ({done} of {self.layout.n_shards} shards "
                f"done, no {MANIFEST_FILE}). Resume it with `trajlab generate {run_dir}` "
                "(same spec) before loading.")
        if problem:
            raise RunDirError(problem + _fix_hint(run_dir))
        self.manifest = manifest
        self._arrays = {name: open_array(run_dir, self.layout, name)
                        for name in self.layout.arrays()}
        self.verify_mode = verify
        self._verified = set()
        self._records = None
        self._ann_cache = None
        if verify == "full":
            self.verify()

    # ------------------------------------------------------------ arrays
    def __getattr__(self, name):
        arrays = self.__dict__.get("_arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @property
    def arrays(self):
        return dict(self._arrays)

    @property
    def class_names(self):
        return self.spec.classes

    def __len__(self):
        return self.spec.n_samples

    def __repr__(self):
        s = self.spec
        return (f"TrajectoryData({self.run_dir!r}, n_samples={s.n_samples}, "
                f"video=({s.n_frames}, 3, {s.image_size}, {s.image_size}) uint8, "
                f"classes={list(s.classes)}, fingerprint={s.fingerprint})")

    def indices(self, split=None):
        """Sample indices of ``split`` ('train', 'val', 'test' or None = all)."""
        if split is None:
            return np.arange(len(self))
        v.check_choice(split, "split", "TrajectoryData.indices", SPLITS + (None,))
        return np.flatnonzero(np.asarray(self._arrays["splits"]) == SPLITS.index(split))

    # ------------------------------------------------------ verification
    def _check_records(self):
        """Once per object: every completion record is valid and the manifest
        is what the records and the data give (same rule as verify_run)."""
        if self._records is not None:
            return self._records
        records = {}
        with listed_sizes(self.run_dir):    # s3: the records fetched together
            for s in range(self.layout.n_shards):
                rec = read_record(self.run_dir, self.layout, s)
                if rec is None:
                    raise RunDirError(f"Shard {s} of {self.run_dir!r} has no valid completion "
                                      "record: the dataset is damaged." + _fix_hint(self.run_dir))
                records[s] = rec
            try:
                expected = build_manifest(self.run_dir, self.layout, records,
                                          self._arrays["labels"], self._arrays["splits"])
            except RunDirError as exc:
                detail = str(exc)
                if "trajlab verify" not in detail:      # a damaged object names the fix
                    detail = detail.rstrip(".") + "." + _fix_hint(self.run_dir)
                raise RunDirError(f"{self.run_dir!r} is damaged: {detail}") from None
        problem = compare_manifest(self.manifest, expected, self.run_dir)
        if problem:
            raise RunDirError(problem + _fix_hint(self.run_dir))
        self._records = records
        return records

    def _record(self, shard):
        return self._check_records()[shard]

    def verify_shard(self, shard):
        """Check one shard's checksums, arrays and annotations (cached);
        raise RunDirError if bad."""
        if shard in self._verified:
            return
        rec = self._record(shard)
        # the same checks as verify_run (verify == load)
        found = check_shard_data(self.run_dir, self.layout, shard, rec)
        if found is not None:
            raise RunDirError(
                f"Shard {shard} of {self.run_dir!r} is corrupted: {found[1]}. Run `trajlab verify "
                "--repair` then `trajlab generate` on it to regenerate the bad shards.")
        self._shard_annotations(shard, check=True)
        if shard == 0:     # the first samples are also those spec.json's probe hashes
            problem = probe_problem(self.doc, self.layout, self._arrays)
            if problem:
                raise RunDirError(problem + _fix_hint(self.run_dir))
        self._verified.add(shard)

    def verify(self):
        """Verify every shard's checksums and annotations (reads the whole
        dataset)."""
        for shard in range(self.layout.n_shards):
            self.verify_shard(shard)
        return True

    # ----------------------------------------------------------- samples
    def sample(self, i):
        """Sample ``i`` as a dict of arrays (copies), verified per shard."""
        i = self._checked_index(i, "sample")
        out = {name: np.array(arr[i]) for name, arr in self._arrays.items()}
        out["index"] = i
        out["class_name"] = self.spec.classes[self._in_range(i, "labels", out["labels"])]
        out["split"] = SPLITS[self._in_range(i, "splits", out["splits"])]
        return out

    def _in_range(self, i, name, value):
        """``value`` of array ``name`` for sample ``i`` as an int, if it names a
        class (labels) or a split (splits); unchecked reads (``verify='none'``)
        of a damaged shard get here too, and must not index by it."""
        n = len(self.spec.classes) if name == "labels" else len(SPLITS)
        value = int(value)
        if not 0 <= value < n:
            raise RunDirError(
                f"Sample {i} of {self.run_dir!r} holds {name} {value}, out of range (0..{n - 1}): "
                f"shard {i // self.layout.shard_size} is damaged." + _fix_hint(self.run_dir))
        return value

    def _index(self, i, method):
        """Normalise index ``i`` (an int; negative counts from the end)."""
        return v.check_index(i, len(self), "i", f"TrajectoryData.{method}")

    def _checked_index(self, i, method):
        """Normalise index ``i`` and verify its shard (unless verify='none')."""
        i = self._index(i, method)
        if self.verify_mode != "none":
            self.verify_shard(i // self.layout.shard_size)
        return i

    def video(self, i):
        """Video of sample ``i``: a (T, 3, H, W) uint8 copy, verified per shard.

        Faster than :meth:`sample` when only the frames are needed.
        """
        i = self._checked_index(i, "video")
        return np.array(self._arrays["videos"][i])

    def label(self, i):
        """Label of sample ``i`` (int), verified per shard."""
        i = self._checked_index(i, "label")
        return self._in_range(i, "labels", self._arrays["labels"][i])

    def annotation(self, i):
        """Text ground truth of sample ``i``: class, split, params, equation,
        description (checked against the shard's checksum unless
        ``verify='none'``)."""
        i = self._index(i, "annotation")
        shard = i // self.layout.shard_size
        return self._shard_annotations(shard)[i - shard * self.layout.shard_size]

    def annotations(self):
        """Iterate over all annotation records in index order (streamed)."""
        for shard in range(self.layout.n_shards):
            yield from self._shard_annotations(shard)

    def _shard_annotations(self, shard, check=False):
        if self._ann_cache is not None and self._ann_cache[0] == shard:
            return self._ann_cache[1]
        sums = self._record(shard)[self.layout.checksum] \
            if check or self.verify_mode != "none" else None
        recs = read_shard_records(self.run_dir, self.layout, shard, sums)
        self._ann_cache = (shard, recs)
        return recs

    # ------------------------------------------------------------ pickle
    def __getstate__(self):
        # never pickle the memory maps (they would be copied whole): the
        # receiving process reopens the files
        return {"run_dir": self.run_dir, "verify": self.verify_mode}

    def __setstate__(self, state):
        self.__init__(state["run_dir"], verify="none" if state["verify"] == "none" else "lazy")


def open_dataset(run_dir, *, verify="lazy"):
    """Open a complete dataset written by :func:`trajlab.generate`.

    Parameters
    ----------
    run_dir : str or os.PathLike
    verify : {'lazy', 'full', 'none'}, default='lazy'
        When checksums (arrays and annotations), completion records and the
        manifest's counts are checked: on first access to a shard
        (``'lazy'``), all at once now (``'full'``), or never. spec.json, the
        manifest against the spec and every array file's header and size
        are checked at open in every mode.

    Returns
    -------
    TrajectoryData

    Raises
    ------
    RunDirError
        If the directory is missing, incomplete, truncated or (with
        ``verify='full'``) corrupted.
    """
    return TrajectoryData(run_dir, verify=verify)


def verify_run(run_dir):
    """Check everything a load would: succeeds exactly when
    :func:`open_dataset` and reading every sample and annotation would
    succeed and return the recorded bytes.

    Checks spec.json, symbolic links, every array file's header and size,
    the manifest (against the spec, the records and the data), every
    completion record, every checksum of every shard and the annotations.

    Returns
    -------
    report : dict
        ``ok`` (bool), ``n_shards``, ``bad`` (list of ``(shard, what,
        reason)``; ``shard`` is None for run-level problems), ``complete``
        (manifest present), ``layout`` (None if spec.json is unusable).
    """
    run_dir = v.check_path(run_dir, "run_dir", "verify_run")
    rep = {"ok": False, "n_shards": 0, "bad": [], "complete": False, "layout": None}
    if is_remote(run_dir):
        run_dir = remote_run_dir(run_dir, "run_dir", "verify_run")
    elif not os.path.isdir(run_dir):
        rep["bad"].append((None, "run_dir",
                           f"No dataset at {run_dir!r}: the directory does not exist."))
        return rep
    with listed_sizes(run_dir):     # s3: one listing, not a HEAD per object
        return _verify(run_dir, rep)


def _verify(run_dir, rep):
    bad = rep["bad"]
    try:
        doc, layout = load_layout(run_dir)
        check_managed_entries(run_dir, layout)
    except RunDirError as exc:
        bad.append((None, "spec.json" if "spec.json" in str(exc) else "run_dir", str(exc)))
        return rep
    rep.update(n_shards=layout.n_shards, layout=layout)
    broken = set()
    for name in layout.arrays():
        problem = check_array_file(run_dir, layout, name)
        if problem is not None:
            bad.append((None, name, problem[1]))
            broken.add(name)
    manifest, problem = read_manifest(run_dir, layout)
    rep["complete"] = manifest is not None
    if problem:
        bad.append((None, "manifest", problem))
    records, n_run_level = {}, len(bad)
    for s in range(layout.n_shards):
        rec = read_record(run_dir, layout, s)
        if rec is None:
            bad.append((s, "record", "missing or unreadable completion record"))
            continue
        records[s] = rec
        found = check_shard_data(run_dir, layout, s, rec, skip=broken)
        if found is not None:
            bad.append((s, *found))
    if manifest is not None and len(bad) == n_run_level and not broken and not problem:
        try:
            expected = build_manifest(run_dir, layout, records)
            problem = compare_manifest(manifest, expected, run_dir)
        except RunDirError as exc:
            problem = f"{MANIFEST_FILE} cannot be checked: {exc}"
        if problem:
            bad.append((None, "manifest", problem))
    if not broken and 0 in records and not any(b[0] == 0 for b in bad):
        try:
            problem = probe_problem(doc, layout, {name: open_array(run_dir, layout, name)
                                                  for name in layout.arrays()})
        except RunDirError as exc:      # e.g. a folder swapped for a link meanwhile
            bad.append((None, "run_dir", str(exc)))
        else:
            if problem:
                bad.append((None, "spec.json", problem))
    bad.sort(key=lambda b: (-1 if b[0] is None else b[0]))
    rep["ok"] = not bad and rep["complete"]
    return rep
