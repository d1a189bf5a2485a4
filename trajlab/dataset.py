"""Reading a finished run directory: memory-mapped, verified, O(1) to open.

:func:`open_dataset` refuses an incomplete dataset, checks the sizes of all
files (a truncated file is caught at once) and returns a
:class:`TrajectoryData` whose arrays are read-only memory maps. Checksums
are verified lazily, one shard at a time, the first time a sample of that
shard is read through :meth:`TrajectoryData.sample` (or the torch
datasets); ``verify='full'`` checks everything up front and
``verify='none'`` skips it. A corrupted shard raises
:class:`~trajlab.storage.RunDirError`; it is never returned.
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import _validation as v
from .generator import SPLITS
from .storage import MANIFEST_FILE, RunDirError, load_layout, read_json, read_record
from .storage import sha256_bytes

__all__ = ["open_dataset", "TrajectoryData", "verify_run"]

VERIFY_MODES = ("lazy", "full", "none")


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

    Raw memmap attributes are not checksum-verified; :meth:`sample`,
    :meth:`verify` and the torch datasets are.
    """

    def __init__(self, run_dir, verify="lazy"):
        run_dir = os.fspath(run_dir)
        v.check_choice(verify, "verify", "open_dataset", VERIFY_MODES)
        if not os.path.isdir(run_dir):
            raise RunDirError(f"No dataset at {run_dir!r}: the directory does not exist.")
        self.doc, self.layout = load_layout(run_dir)
        self.run_dir = run_dir
        self.spec = self.layout.spec
        mpath = os.path.join(run_dir, MANIFEST_FILE)
        if not os.path.isfile(mpath):
            done = sum(read_record(run_dir, self.layout, s) is not None
                       for s in range(self.layout.n_shards))
            raise RunDirError(
                f"Dataset {run_dir!r} is incomplete ({done} of {self.layout.n_shards} shards "
                f"done, no {MANIFEST_FILE}). Resume it with `trajlab generate {run_dir}` "
                "(same spec) before loading.")
        self.manifest = read_json(mpath)
        if self.manifest.get("fingerprint") != self.spec.fingerprint:
            raise RunDirError(f"{mpath!r} belongs to another dataset "
                              f"({self.manifest.get('fingerprint')} != {self.spec.fingerprint}).")
        self._arrays = {}
        for name, (fname, shape, dt, hlen, per) in self.layout.arrays().items():
            path = os.path.join(run_dir, fname)
            size = os.path.getsize(path) if os.path.exists(path) else -1
            if size != hlen + per * shape[0]:
                raise RunDirError(
                    f"{path!r} has {size} bytes, expected {hlen + per * shape[0]}: the dataset "
                    "is truncated or damaged. Run `trajlab verify` and resume with "
                    "`trajlab generate` to regenerate it.")
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.shape != tuple(shape) or arr.dtype != dt:
                raise RunDirError(f"{path!r} holds {arr.dtype}{arr.shape}, expected {dt}{shape}.")
            self._arrays[name] = arr
        self.verify_mode = verify
        self._verified = set()
        self._records = {}
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
    def _record(self, shard):
        rec = self._records.get(shard)
        if rec is None:
            rec = read_record(self.run_dir, self.layout, shard)
            if rec is None:
                raise RunDirError(f"Shard {shard} of {self.run_dir!r} has no valid record.")
            self._records[shard] = rec
        return rec

    def verify_shard(self, shard):
        """Check one shard's checksums (cached); raise RunDirError if bad."""
        if shard in self._verified:
            return
        rec = self._record(shard)
        start, stop = self.layout.shard_range(shard)
        for name, arr in self._arrays.items():
            got = sha256_bytes(np.ascontiguousarray(arr[start:stop]).data)
            if got != rec["sha256"].get(name):
                raise RunDirError(
                    f"Checksum mismatch in {name}.npy, shard {shard} (samples {start}..{stop - 1}) "
                    f"of {self.run_dir!r}: the data is corrupted. Run `trajlab verify --repair` "
                    "then `trajlab generate` on it to regenerate the bad shards.")
        self._verified.add(shard)

    def verify(self):
        """Verify every shard's checksums (reads the whole dataset)."""
        for shard in range(self.layout.n_shards):
            self.verify_shard(shard)
        return True

    # ----------------------------------------------------------- samples
    def sample(self, i):
        """Sample ``i`` as a dict of arrays (copies), verified per shard."""
        i = self._checked_index(i)
        out = {name: np.array(arr[i]) for name, arr in self._arrays.items()}
        out["index"] = i
        out["class_name"] = self.spec.classes[int(out["labels"])]
        out["split"] = SPLITS[int(out["splits"])]
        return out

    def _index(self, i):
        """Normalise index ``i`` (negative counts from the end)."""
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {len(self)} samples")
        return i % len(self)

    def _checked_index(self, i):
        """Normalise index ``i`` and verify its shard (unless verify='none')."""
        i = self._index(i)
        if self.verify_mode != "none":
            self.verify_shard(i // self.layout.shard_size)
        return i

    def video(self, i):
        """Video of sample ``i``: a (T, 3, H, W) uint8 copy, verified per shard.

        Faster than :meth:`sample` when only the frames are needed.
        """
        i = self._checked_index(i)
        return np.array(self._arrays["videos"][i])

    def label(self, i):
        """Label of sample ``i`` (int), verified per shard."""
        i = self._checked_index(i)
        return int(self._arrays["labels"][i])

    def annotation(self, i):
        """Text ground truth of sample ``i``: class, split, params, equation,
        description (checked against the shard's checksum unless
        ``verify='none'``)."""
        i = self._index(i)
        shard = i // self.layout.shard_size
        return self._shard_annotations(shard)[i - shard * self.layout.shard_size]

    def annotations(self):
        """Iterate over all annotation records in index order (streamed)."""
        for shard in range(self.layout.n_shards):
            yield from self._shard_annotations(shard)

    def _shard_annotations(self, shard):
        if self._ann_cache is not None and self._ann_cache[0] == shard:
            return self._ann_cache[1]
        path = self.layout.annotations_path(self.run_dir, shard)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise RunDirError(f"Annotations of shard {shard} are missing ({exc}). Run `trajlab "
                              "verify --repair` then `trajlab generate` on the run dir.") from None
        if self.verify_mode != "none" and sha256_bytes(raw) != self._record(shard)["sha256"].get(
                "annotations"):
            raise RunDirError(
                f"Checksum mismatch in {path!r} (shard {shard}): the annotations are corrupted. "
                "Run `trajlab verify --repair` then `trajlab generate` on the run dir.")
        recs = tuple(json.loads(line) for line in raw.decode("utf-8").splitlines())
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
        When shard checksums are checked: on first access to a shard
        (``'lazy'``), all at once now (``'full'``), or never.

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
    """Recompute every checksum of a run dir.

    Returns
    -------
    report : dict
        ``ok`` (bool), ``n_shards``, ``bad`` (list of ``(shard, what,
        reason)``, in shard order), ``complete`` (manifest present).
    """
    from .engine import find_bad_shards

    _, layout = load_layout(run_dir)
    bad = find_bad_shards(run_dir, layout)
    complete = os.path.isfile(os.path.join(run_dir, MANIFEST_FILE))
    return {"ok": not bad and complete, "n_shards": layout.n_shards, "bad": bad,
            "complete": complete, "layout": layout}
