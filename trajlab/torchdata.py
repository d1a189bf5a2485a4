"""PyTorch datasets: stored run directories and on-the-fly generation (the only module that imports torch).

Four datasets share one set of view options, so that a clip reaches any
video trainer in the form it expects without conversion code:

* :class:`TrajectoryVideoDataset` -- clips of a finished run directory;
* :class:`TrajectoryForecastDataset` -- the same, cut into context and future;
* :class:`OnTheFlyVideoDataset` and :class:`OnTheFlyForecastDataset` -- the
  same items rendered on access from a :class:`~trajlab.spec.DatasetSpec`
  alone, byte-identical to the stored dataset of that spec, for any length
  up to 2**48 samples (no disk at all).

View options (keyword-only, the same on every dataset):

=================  ======================================  ====================================
option             values                                  meaning
=================  ======================================  ====================================
``layout``         ``"TCHW"`` (default), ``"CTHW"``,       axis order of a clip (T frames, C = 3
                   ``"THWC"``                              channels); a batch adds B in front
``value_range``    ``(0, 1)`` (default), ``(-1, 1)``,      float32 ``x / 255``, float32
                   ``"uint8"``                             ``x / 127.5 - 1``, or the stored bytes
``item``           ``"pair"`` (default), ``"video"``,      ``(video, label)``, the bare video
                   ``"dict"``                              tensor, or ``{"video", "label", ...}``
``fields``         names from :data:`FIELDS`               ground truth added to ``"dict"`` items
=================  ======================================  ====================================

Stored datasets verify each shard's checksums the first time one of its
samples is read (``verify='lazy'``), so corrupted data raises
:class:`~trajlab.storage.RunDirError` instead of being returned.

``DataLoader(num_workers>0)``: a dataset holds only the run dir path (or the
spec), its sample indices and small metadata. Memory maps are reopened
lazily in each worker process (after fork, or after unpickling with
``spawn``); they are never pickled. With ``verify='lazy'`` each worker
verifies the shards it reads once; use ``persistent_workers=True`` to keep
that across epochs, or ``verify='full'`` to check everything once up front.
"""

from __future__ import annotations

import numbers
import operator
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from . import _validation as v
from .dataset import VERIFY_MODES, open_dataset
from .generator import SPLITS, Block, generate_samples
from .spec import DatasetSpec
from .splitindex import split_count, split_sample
from .storage import RunDirError

__all__ = ["TrajectoryVideoDataset", "TrajectoryForecastDataset", "OnTheFlyVideoDataset",
           "OnTheFlyForecastDataset", "LAYOUTS", "VALUE_RANGES", "ITEMS", "FIELDS",
           "MAX_ON_THE_FLY"]

LAYOUTS = ("TCHW", "CTHW", "THWC")
VALUE_RANGES = ((0, 1), (-1, 1), "uint8")
ITEMS = ("pair", "video", "dict")
#: Ground-truth fields a ``"dict"`` item can carry (per-frame arrays have T rows).
FIELDS = ("pixels", "positions", "depth", "radius", "K", "R", "t", "colors", "split", "index")
#: Largest number of samples an on-the-fly dataset may span.
MAX_ON_THE_FLY = 2 ** 48
DTYPES = ("float", "uint8")
_TIME_AXIS = {"TCHW": 0, "CTHW": 1, "THWC": 0}


# ------------------------------------------------------------------ views
def _check_value_range(value, owner):
    if isinstance(value, str):
        if value == "uint8":
            return value
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in value)):
        pair = (float(value[0]), float(value[1]))
        if pair in ((0.0, 1.0), (-1.0, 1.0)):
            return (int(pair[0]), int(pair[1]))
    v.fail("value_range", owner, "one of {(0, 1), (-1, 1), 'uint8'}", value)


class _View:
    """How a stored uint8 (T, 3, H, W) clip becomes a tensor item."""

    def __init__(self, owner, layout, value_range, dtype, item="pair", fields=()):
        v.check_choice(layout, "layout", owner, LAYOUTS)
        if dtype is not None:
            # `dtype` is the older spelling of value_range; both may not disagree.
            v.check_choice(dtype, "dtype", owner, DTYPES)
            implied = (0, 1) if dtype == "float" else "uint8"
            if value_range is not None and _check_value_range(value_range, owner) != implied:
                v.fail("dtype", owner, f"None or consistent with value_range={value_range!r}",
                       dtype)
            value_range = implied
        value_range = _check_value_range((0, 1) if value_range is None else value_range, owner)
        v.check_choice(item, "item", owner, ITEMS)
        if isinstance(fields, str):
            fields = (fields,)
        if not isinstance(fields, (tuple, list)):
            v.fail("fields", owner, f"a sequence of names from {FIELDS}", fields, TypeError)
        for name in fields:
            v.check_choice(name, "fields", owner, FIELDS)
        if fields and item != "dict":
            v.fail("fields", owner, "empty unless item='dict'", tuple(fields))
        self.layout, self.value_range, self.item = layout, value_range, item
        self.fields = tuple(dict.fromkeys(fields))

    def video(self, clip):
        """uint8 (T, 3, H, W) array -> tensor in the chosen layout and range."""
        if self.layout == "CTHW":
            clip = clip.transpose(1, 0, 2, 3)
        elif self.layout == "THWC":
            clip = clip.transpose(0, 2, 3, 1)
        if self.value_range == "uint8":
            return torch.from_numpy(np.ascontiguousarray(clip))
        out = clip.astype(np.float32, order="C")
        if self.value_range == (0, 1):
            out /= np.float32(255.0)     # same ufunc as trajlab.export: bit-identical floats
        else:
            out /= np.float32(127.5)     # Open-MAGVIT2's x / 127.5 - 1: 0 -> -1, 255 -> 1 exactly
            out -= np.float32(1.0)
        return torch.from_numpy(out)

    def extras(self, sample, fields=None):
        """Ground-truth fields of a sample dict, as tensors (floats as float32)."""
        out = {}
        for name in self.fields if fields is None else fields:
            if name == "index":
                out[name] = int(sample["index"])
            elif name == "split":
                out[name] = int(sample["splits"])
            else:
                x = np.asarray(sample[name])
                if x.dtype.kind == "f":
                    x = x.astype(np.float32)
                out[name] = torch.from_numpy(np.ascontiguousarray(x))
        return out

    def describe(self):
        kind = {(0, 1): "float32 in [0, 1]", (-1, 1): "float32 in [-1, 1]",
                "uint8": "uint8 in [0, 255]"}[self.value_range]
        return f"{kind}, layout {self.layout}"

    def shape(self, T, S):
        return {"TCHW": (T, 3, S, S), "CTHW": (3, T, S, S), "THWC": (T, S, S, 3)}[self.layout]


def _check_transform(value, name, owner):
    if value is not None and not callable(value):
        v.fail(name, owner, "a callable or None", value, TypeError)
    return value


def _check_lengths(owner, n_context, n_future):
    """Types of the forecast lengths; their ranges depend on the data's T."""
    for name, value in (("n_context", n_context), ("n_future", n_future)):
        if value is not None:
            v.check_int(value, name, owner, 1)


class _ViewDataset(Dataset):
    """Shared part: indices, view options and a torchvision-style repr."""

    def _init_view(self, owner, transform, layout, value_range, dtype, item="pair", fields=(),
                   target_transform=None):
        self.transform = _check_transform(transform, "transform", owner)
        self.target_transform = _check_transform(target_transform, "target_transform", owner)
        self.view = _View(owner, layout, value_range, dtype, item, fields)
        self.layout, self.value_range = self.view.layout, self.view.value_range
        self.item, self.fields = self.view.item, self.view.fields

    def _init_classes(self, spec):
        self.spec = spec
        self.fingerprint = spec.fingerprint
        self.classes = list(spec.classes)
        self.class_to_idx = {c: k for k, c in enumerate(self.classes)}

    def _position(self, idx):
        """Normalise a position in the dataset (negative counts from the end)."""
        try:
            idx = operator.index(idx)        # ints, numpy ints; not 1.5, '3' or True-as-1.0
        except TypeError:
            raise TypeError(f"{type(self).__name__} indices must be integers. "
                            f"Got {idx!r} instead.") from None
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for {type(self).__name__} of "
                             f"{n} samples")
        return idx % n

    def _video_item(self, sample):
        """The item of a video dataset from a sample dict (``videos``, ``labels``, ...)."""
        video = self.view.video(sample["videos"])
        label = int(sample["labels"])
        if self.transform is not None:
            video = self.transform(video)
        if self.target_transform is not None:
            label = self.target_transform(label)
        if self.item == "video":
            return video
        if self.item == "pair":
            return video, label
        out = {"video": video, "label": label}
        out.update(self.view.extras(sample))
        return out

    def _forecast_item(self, sample):
        """Context and future of a sample dict; the two never overlap."""
        clip = self.view.video(sample["videos"])
        if self.transform is not None:
            clip = self.transform(clip)
        c, f = self.n_context, self.n_future
        axis = _TIME_AXIS[self.layout]
        past, future = clip.narrow(axis, 0, c), clip.narrow(axis, c, f)
        gt = self.view.extras(sample, ("pixels", "positions"))
        out = {
            "context": past.clone(memory_format=torch.contiguous_format),
            "future": future.clone(memory_format=torch.contiguous_format),
            "context_pixels": gt["pixels"][:c].clone(),
            "future_pixels": gt["pixels"][c:c + f].clone(),
            "context_positions": gt["positions"][:c].clone(),
            "future_positions": gt["positions"][c:c + f].clone(),
            "label": int(sample["labels"]), "index": int(sample["index"]),
        }
        return out

    def _init_forecast(self, owner, n_context, n_future):
        T = self.spec.n_frames
        c = T // 2 if n_context is None else v.check_int(n_context, "n_context", owner, 1, T - 1)
        f = T - c if n_future is None else v.check_int(n_future, "n_future", owner, 1, T - c)
        self.n_context, self.n_future = c, f

    # ------------------------------------------------------------- repr
    def extra_repr(self):
        """Lines after the common header of the repr (override to add)."""
        s = self.spec
        T = getattr(self, "n_context", None)
        lines = [f"Split: {self.split if self.split is not None else 'all'}",
                 f"Video: {self.view.shape(s.n_frames, s.image_size)} {self.view.describe()}",
                 f"Item: {self.item}" + (f" with {', '.join(self.fields)}" if self.fields else ""),
                 f"Classes: {', '.join(self.classes)}",
                 f"Fingerprint: {self.fingerprint}"]
        if T is not None:
            lines.append(f"Context frames: {self.n_context}, future frames: {self.n_future}")
        return "\n".join(lines)

    def __repr__(self):
        head = [f"Dataset {type(self).__name__}", f"    Number of datapoints: {len(self)}"]
        body = [f"    {line}" for line in self.extra_repr().splitlines()]
        tail = []
        if self.transform is not None:
            tail.append(f"    Transform: {self.transform!r}")
        if self.target_transform is not None:
            tail.append(f"    Target transform: {self.target_transform!r}")
        return "\n".join(head + body + tail)


# ----------------------------------------------------- stored run dirs
def _open(root, verify):
    try:
        return open_dataset(root, verify=verify)
    except RunDirError as exc:
        msg = str(exc)
        if "trajlab generate" not in msg:
            msg += (f" Generate it first with `trajlab generate {root} --n-samples N` or "
                    f"`trajlab.generate(trajlab.DatasetSpec(...), {root!r})`.")
        raise RunDirError(msg) from exc


class _RunDirDataset(_ViewDataset):
    """Opening, split indices and lazy per-process memory maps of a run dir."""

    def _init_run_dir(self, root, split, verify, owner):
        if not isinstance(root, (str, os.PathLike)):
            v.fail("root", owner, "a path (str or os.PathLike)", root, TypeError)
        v.check_choice(split, "split", owner, SPLITS + (None,))
        v.check_choice(verify, "verify", owner, VERIFY_MODES)
        from .storage import is_remote, remote_run_dir

        root = os.fspath(root)
        self.root = remote_run_dir(root, "root", owner) if is_remote(root) \
            else os.path.abspath(root)
        self.split, self.verify = split, verify
        data = _open(self.root, verify)
        self._init_classes(data.spec)
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
        return int(self.indices[self._position(idx)])

    def _sample(self, i, need_all):
        data = self._dataset()
        if need_all:
            return data.sample(i)                         # verified copies of every array
        return {"videos": data.video(i), "labels": data.label(i), "index": i}

    def extra_repr(self):
        return f"Root location: {self.root}\n" + super().extra_repr()


class TrajectoryVideoDataset(_RunDirDataset):
    """Clips and class labels of a trajlab run directory.

    Parameters
    ----------
    root : str or os.PathLike
        A complete run directory written by :func:`trajlab.generate`.
    split : {'train', 'val', 'test'} or None, default='train'
        None selects all samples.
    transform : callable, optional
        Applied to the video tensor (after the view options).
    target_transform : callable, optional
        Applied to the label (int).
    layout : {'TCHW', 'CTHW', 'THWC'}, default='TCHW'
    value_range : (0, 1), (-1, 1) or 'uint8', default=(0, 1)
    item : {'pair', 'video', 'dict'}, default='pair'
    fields : sequence of str, default=()
        Ground truth added to ``'dict'`` items, from :data:`FIELDS`.
    dtype : {'float', 'uint8'}, optional
        Older spelling of ``value_range`` (``'float'`` is ``(0, 1)``).
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
    With the defaults ``dataset[k]`` is ``(video, label)``: a float32 tensor
    of shape (T, 3, H, W) in [0, 1] and an int. See the module docstring for
    the view options and the README for the settings each trainer needs.
    """

    def __init__(self, root, split="train", transform=None, target_transform=None, *,
                 layout="TCHW", value_range=None, item="pair", fields=(), dtype=None,
                 verify="lazy"):
        own = "TrajectoryVideoDataset"
        self._init_view(own, transform, layout, value_range, dtype, item, fields,
                        target_transform)
        self._init_run_dir(root, split, verify, own)

    def __getitem__(self, idx):
        i = self._global_index(idx)
        return self._video_item(self._sample(i, bool(self.fields)))


class TrajectoryForecastDataset(_RunDirDataset):
    """Forecasting view: the first frames as input, the next ones as target.

    Parameters
    ----------
    root : str or os.PathLike
        A complete run directory written by :func:`trajlab.generate`.
    split : {'train', 'val', 'test'} or None, default='train'
    transform : callable, optional
        Applied to the whole clip *before* it is cut, so that context and
        future get the same augmentation. It must keep the T frames and the
        layout; pixel positions refer to the untransformed frames.
    n_context : int, optional
        Input frames ``c``, in [1, T - 1]; default ``T // 2``.
    n_future : int, optional
        Target frames ``f``, in [1, T - c]; default ``T - c``.
    layout, value_range, dtype, verify
        As in :class:`TrajectoryVideoDataset`.

    Notes
    -----
    ``dataset[k]`` is a dict (frames ``0..c-1`` are the input, frames
    ``c..c+f-1`` the target; the two never overlap and share no memory):

    - ``context``: tensor of c frames; ``future``: tensor of f frames, in
      the chosen layout and value range;
    - ``context_pixels`` (c, 2), ``future_pixels`` (f, 2): sub-pixel
      ``(u, v)`` of the object centre, float32;
    - ``context_positions`` (c, 3), ``future_positions`` (f, 3): world
      positions in metres, float32;
    - ``label``: int; ``index``: sample index in the run dir.
    """

    def __init__(self, root, split="train", transform=None, *, n_context=None, n_future=None,
                 layout="TCHW", value_range=None, dtype=None, verify="lazy"):
        own = "TrajectoryForecastDataset"
        _check_lengths(own, n_context, n_future)     # before touching the disk
        self._init_view(own, transform, layout, value_range, dtype)
        self._init_run_dir(root, split, verify, own)
        self._init_forecast(own, n_context, n_future)

    def __getitem__(self, idx):
        i = self._global_index(idx)
        return self._forecast_item(self._sample(i, True))


# ------------------------------------------------------------ on the fly
class _OnTheFlyDataset(_ViewDataset):
    """Samples rendered on access; item k is sample ``indices[k]`` of the spec."""

    def _init_spec(self, spec, split, n_samples, owner):
        if not isinstance(spec, DatasetSpec):
            v.fail("spec", owner, "a trajlab.DatasetSpec", spec, TypeError)
        v.check_choice(split, "split", owner, SPLITS + (None,))
        n = spec.n_samples if n_samples is None else v.check_int(
            n_samples, "n_samples", owner, 1, MAX_ON_THE_FLY)
        self._init_classes(spec)
        self.split, self.n_samples = split, n
        self._len = n if split is None else split_count(spec, split, n)

    def __len__(self):
        return self._len

    def _global_index(self, idx):
        k = self._position(idx)
        return k if self.split is None else split_sample(self.spec, self.split, k)

    def _samples(self, indices):
        """Sample dicts of global indices, rendered together in one vectorised
        call whatever their order (the bytes never depend on it)."""
        uniq = sorted(set(indices))
        block = generate_samples(self.spec, uniq)
        row = {i: k for k, i in enumerate(uniq)}
        return [_block_sample(block, row[i]) for i in indices]

    def extra_repr(self):
        span = f"samples 0..{self.n_samples - 1} of the spec, rendered on access"
        return f"Source: {span}\n" + super().extra_repr()


def _block_sample(block, k):
    out = {name: getattr(block, name)[k] for name in Block.ARRAYS}
    out["index"] = int(block.indices[k])
    return out


class OnTheFlyVideoDataset(_OnTheFlyDataset):
    """Clips rendered on access from a spec alone, byte-identical to stored ones.

    Item ``k`` is sample ``i`` of the dataset :func:`trajlab.generate` would
    write for ``spec.replace(n_samples=n_samples)`` -- the same bytes, labels
    and ground truth -- where ``i`` is the ``k``-th sample of ``split`` in
    increasing index order (``i = k`` when ``split`` is None), exactly as
    :class:`TrajectoryVideoDataset` over that run dir. Nothing touches the
    disk, so a never-repeating training stream of up to 2**48 clips costs
    no storage.

    Parameters
    ----------
    spec : DatasetSpec
    split : {'train', 'val', 'test'} or None, default='train'
    transform, target_transform : callable, optional
    n_samples : int, optional
        Samples of the spec the dataset spans, in [1, 2**48]; default
        ``spec.n_samples``. ``len(dataset)`` is the number of them in
        ``split``.
    layout, value_range, item, fields, dtype
        As in :class:`TrajectoryVideoDataset`.

    Notes
    -----
    Safe with ``DataLoader(num_workers>0)`` (the dataset pickles as the
    spec and a few ints). With ``batch_size`` set, the DataLoader asks for a
    whole batch at once (``__getitems__``), which is rendered in one
    vectorised call whatever the order of its indices. For lengths beyond a few hundred
    million use ``RandomSampler(ds, replacement=True, num_samples=...)``:
    ``shuffle=True`` builds a permutation of the whole length.
    """

    def __init__(self, spec, split="train", transform=None, target_transform=None, *,
                 n_samples=None, layout="TCHW", value_range=None, item="pair", fields=(),
                 dtype=None):
        own = "OnTheFlyVideoDataset"
        self._init_view(own, transform, layout, value_range, dtype, item, fields,
                        target_transform)
        self._init_spec(spec, split, n_samples, own)

    def __getitem__(self, idx):
        return self._video_item(self._samples([self._global_index(idx)])[0])

    def __getitems__(self, indices):
        return [self._video_item(s) for s in
                self._samples([self._global_index(k) for k in indices])]


class OnTheFlyForecastDataset(_OnTheFlyDataset):
    """:class:`TrajectoryForecastDataset` items rendered on access from a spec.

    Parameters
    ----------
    spec : DatasetSpec
    split : {'train', 'val', 'test'} or None, default='train'
    transform : callable, optional
    n_context, n_future : int, optional
    n_samples : int, optional
        As in :class:`OnTheFlyVideoDataset`.
    layout, value_range, dtype
        As in :class:`TrajectoryVideoDataset`.
    """

    def __init__(self, spec, split="train", transform=None, *, n_context=None, n_future=None,
                 n_samples=None, layout="TCHW", value_range=None, dtype=None):
        own = "OnTheFlyForecastDataset"
        _check_lengths(own, n_context, n_future)
        self._init_view(own, transform, layout, value_range, dtype)
        self._init_spec(spec, split, n_samples, own)
        self._init_forecast(own, n_context, n_future)

    def __getitem__(self, idx):
        return self._forecast_item(self._samples([self._global_index(idx)])[0])

    def __getitems__(self, indices):
        return [self._forecast_item(s) for s in
                self._samples([self._global_index(k) for k in indices])]


def save_export(obj, path):
    """torch.save the export dict (numpy arrays become tensors without a copy).

    Used by :mod:`trajlab.export`, so that torch stays confined to this module.
    """
    out = {k: torch.from_numpy(x) if isinstance(x, np.ndarray) else x for k, x in obj.items()}
    torch.save(out, path)
