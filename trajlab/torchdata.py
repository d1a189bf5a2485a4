"""PyTorch datasets over a finished run directory (the only module that imports torch).

:class:`TrajectoryVideoDataset` gives ``(video, label)`` pairs for
classification and generation; :class:`TrajectoryForecastDataset` cuts each
clip into context frames and the future frames (and 2D/3D positions) to
predict. Both read the memory-mapped arrays of :func:`trajlab.open_dataset`
and verify each shard's checksums the first time one of its samples is read
(``verify='lazy'``), so corrupted data raises
:class:`~trajlab.storage.RunDirError` instead of being returned.

``DataLoader(num_workers>0)``: a dataset holds only the run dir path, its
sample indices and small metadata. The memory maps are reopened lazily in
each worker process (after fork, or after unpickling with ``spawn``); they
are never pickled. With ``verify='lazy'`` each worker verifies the shards it
reads once; use ``persistent_workers=True`` to keep that across epochs, or
``verify='full'`` to check everything once up front in the main process.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from . import _validation as v
from .dataset import VERIFY_MODES, open_dataset
from .generator import SPLITS
from .storage import RunDirError

__all__ = ["TrajectoryVideoDataset", "TrajectoryForecastDataset"]

DTYPES = ("float", "uint8")


def _to_tensor(video, dtype):
    """uint8 (T, 3, H, W) array -> tensor; 'float' maps 0..255 to [0, 1] in float32."""
    if dtype == "float":
        # Same ufunc as trajlab.export, so both give bit-identical floats.
        video = video.astype(np.float32)
        video /= np.float32(255.0)
    return torch.from_numpy(video)


class _RunDirDataset(Dataset):
    """Shared part: opening, split indices, lazy per-process memory maps."""

    def __init__(self, root, split, dtype, verify, owner):
        if not isinstance(root, (str, os.PathLike)):
            v.fail("root", owner, "a path (str or os.PathLike)", root, TypeError)
        v.check_choice(split, "split", owner, SPLITS + (None,))
        v.check_choice(dtype, "dtype", owner, DTYPES)
        v.check_choice(verify, "verify", owner, VERIFY_MODES)
        self.root = os.path.abspath(os.fspath(root))
        self.split, self.dtype, self.verify = split, dtype, verify
        data = _open(self.root, verify)
        self.spec = data.spec
        self.fingerprint = data.spec.fingerprint
        self.classes = list(data.class_names)
        self.class_to_idx = {c: k for k, c in enumerate(self.classes)}
        self.indices = data.indices(split)
        counts = data.manifest["split_counts"]
        expected = (data.spec.n_samples if split is None
                    else sum(counts[split].values()))
        if len(self.indices) != expected:
            raise RunDirError(
                f"{self.root!r}: splits.npy selects {len(self.indices)} {split} samples but "
                f"manifest.json records {expected}: the data is corrupted. Run `trajlab verify "
                f"--repair {self.root}` then `trajlab generate {self.root}` to regenerate it.")
        # Worker processes reopen the maps; after 'full' everything is already checked.
        self._reopen_verify = "none" if verify == "full" else verify
        self._data, self._pid = data, os.getpid()

    def _dataset(self):
        if self._data is None or self._pid != os.getpid():
            self._data = _open(self.root, self._reopen_verify)
            self._pid = os.getpid()
        return self._data

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_data"] = None       # never pickle memory maps (or their pages)
        return state

    def __len__(self):
        return len(self.indices)

    def _global_index(self, idx):
        n = len(self.indices)
        idx = int(idx)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for {type(self).__name__} of "
                             f"{n} samples")
        return int(self.indices[idx])

    def _repr_lines(self):
        s = self.spec
        kind = "float32 in [0, 1]" if self.dtype == "float" else "uint8 in [0, 255]"
        return [f"Dataset {type(self).__name__}",
                f"    Number of datapoints: {len(self)}",
                f"    Root location: {self.root}",
                f"    Split: {self.split if self.split is not None else 'all'}",
                f"    Video: ({s.n_frames}, 3, {s.image_size}, {s.image_size}) {kind}",
                f"    Classes: {', '.join(self.classes)}",
                f"    Fingerprint: {self.fingerprint}"]


def _open(root, verify):
    try:
        return open_dataset(root, verify=verify)
    except RunDirError as exc:
        msg = str(exc)
        if "trajlab generate" not in msg:
            msg += (f" Generate it first with `trajlab generate {root} --n-samples N` or "
                    f"`trajlab.generate(trajlab.DatasetSpec(...), {root!r})`.")
        raise RunDirError(msg) from exc


class TrajectoryVideoDataset(_RunDirDataset):
    """Clips and class labels of a trajlab run directory.

    Parameters
    ----------
    root : str or os.PathLike
        A complete run directory written by :func:`trajlab.generate`.
    split : {'train', 'val', 'test'} or None, default='train'
        None selects all samples.
    transform : callable, optional
        Applied to the video tensor.
    target_transform : callable, optional
        Applied to the label (int).
    dtype : {'float', 'uint8'}, default='float'
        ``'float'``: float32 in [0, 1] (``uint8 / 255``); ``'uint8'``: the
        stored bytes.
    verify : {'lazy', 'full', 'none'}, default='lazy'
        See :func:`trajlab.open_dataset`.

    Attributes
    ----------
    classes : list of str
    class_to_idx : dict
    indices : ndarray of shape (len(self),), int64
        Sample indices in the run dir, in increasing order.
    spec : DatasetSpec

    Raises
    ------
    RunDirError (a RuntimeError)
        If the data is missing, incomplete, truncated or corrupted (the
        latter when a sample of a damaged shard is read).

    Notes
    -----
    ``dataset[k]`` is ``(video, label)`` with ``video`` a tensor of shape
    (T, 3, H, W) and ``label`` an int.
    """

    def __init__(self, root, split="train", transform=None, target_transform=None,
                 dtype="float", verify="lazy"):
        super().__init__(root, split, dtype, verify, "TrajectoryVideoDataset")
        self.transform, self.target_transform = transform, target_transform

    def __getitem__(self, idx):
        i = self._global_index(idx)
        data = self._dataset()
        video = _to_tensor(data.video(i), self.dtype)   # verifies the shard first
        label = data.label(i)
        if self.transform is not None:
            video = self.transform(video)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return video, label

    def __repr__(self):
        lines = self._repr_lines()
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}")
        if self.target_transform is not None:
            lines.append(f"    Target transform: {self.target_transform!r}")
        return "\n".join(lines)


class TrajectoryForecastDataset(_RunDirDataset):
    """Forecasting view: the first frames as input, the next ones as target.

    Parameters
    ----------
    root : str or os.PathLike
        A complete run directory written by :func:`trajlab.generate`.
    split : {'train', 'val', 'test'} or None, default='train'
    n_context : int, optional
        Input frames ``c``, in [1, T - 1]; default ``T // 2``.
    n_future : int, optional
        Target frames ``f``, in [1, T - c]; default ``T - c``.
    dtype : {'float', 'uint8'}, default='float'
    transform : callable, optional
        Applied to the whole clip (T, 3, H, W) *before* it is cut, so that
        context and future get the same augmentation. It must keep the T
        frames; pixel positions refer to the untransformed frames.
    verify : {'lazy', 'full', 'none'}, default='lazy'

    Notes
    -----
    ``dataset[k]`` is a dict (frames ``0..c-1`` are the input, frames
    ``c..c+f-1`` the target; the two never overlap and share no memory):

    - ``context``: tensor (c, 3, H, W); ``future``: tensor (f, 3, H, W);
    - ``context_pixels`` (c, 2), ``future_pixels`` (f, 2): sub-pixel
      ``(u, v)`` of the object centre, float32;
    - ``context_positions`` (c, 3), ``future_positions`` (f, 3): world
      positions in metres, float32;
    - ``label``: int; ``index``: sample index in the run dir.
    """

    def __init__(self, root, split="train", n_context=None, n_future=None, dtype="float",
                 transform=None, verify="lazy"):
        own = "TrajectoryForecastDataset"
        # Types first (before touching the disk); ranges depend on the data's T.
        for name, value in (("n_context", n_context), ("n_future", n_future)):
            if value is not None:
                v.check_int(value, name, own, 1)
        super().__init__(root, split, dtype, verify, own)
        T = self.spec.n_frames
        c = T // 2 if n_context is None else v.check_int(n_context, "n_context", own, 1, T - 1)
        f = T - c if n_future is None else v.check_int(n_future, "n_future", own, 1, T - c)
        self.n_context, self.n_future, self.transform = c, f, transform

    def __getitem__(self, idx):
        i = self._global_index(idx)
        s = self._dataset().sample(i)               # verified copies
        clip = _to_tensor(s["videos"], self.dtype)
        if self.transform is not None:
            clip = self.transform(clip)
        c, f = self.n_context, self.n_future
        pix = torch.from_numpy(s["pixels"].astype(np.float32))
        pos = torch.from_numpy(s["positions"].astype(np.float32))
        return {
            "context": clip[:c].clone(memory_format=torch.contiguous_format),
            "future": clip[c:c + f].clone(memory_format=torch.contiguous_format),
            "context_pixels": pix[:c].clone(), "future_pixels": pix[c:c + f].clone(),
            "context_positions": pos[:c].clone(), "future_positions": pos[c:c + f].clone(),
            "label": int(s["labels"]), "index": i,
        }

    def __repr__(self):
        lines = self._repr_lines()
        lines.append(f"    Context frames: {self.n_context}, future frames: {self.n_future}")
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}")
        return "\n".join(lines)


def _save_export(obj, path):
    """torch.save the export dict (numpy arrays become tensors without a copy).

    Used by :mod:`trajlab.export`, so that torch stays confined to this module.
    """
    out = {k: torch.from_numpy(x) if isinstance(x, np.ndarray) else x for k, x in obj.items()}
    torch.save(out, path)
