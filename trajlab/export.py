"""Export a run directory as the earlier system's single-file dict (.npz or .pt).

The dict holds:

- ``videos``: float32 of shape (N, T, 3, H, W), values ``uint8 / 255`` in [0, 1];
- ``labels``: int64 of shape (N,), index into ``class_names``;
- ``trajectory_3d``: float32 of shape (N, T, 3), world positions in metres;
- ``equations``, ``descriptions``: N strings;
- ``class_names``: the C class names;
- ``indices``: int64 of shape (N,), sample indices in the run dir;
- ``fingerprint``: the dataset's fingerprint.

``.npz`` needs no pickle (strings are numpy unicode arrays; load with
``np.load(path, allow_pickle=False)``) and is written with bounded memory:
``videos`` is streamed into the zip member chunk by chunk. ``.pt``
(``torch.save``) holds every tensor in memory at once. Data is
checksum-verified per shard while it is read; a corrupted run dir raises
:class:`~trajlab.storage.RunDirError` and writes nothing.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from . import _validation as v
from .dataset import open_dataset
from .generator import SPLITS
from .storage import RunDirError, atomic_writer, available_memory, remove_stale_temps

__all__ = ["export", "ExportMemoryError", "FORMATS"]

FORMATS = ("npz", "pt")
_EXTENSIONS = {".npz": "npz", ".pt": "pt", ".pth": "pt"}
#: Bytes of float32 video converted per step while streaming.
CHUNK_BYTES = 64 * 2**20


class ExportMemoryError(MemoryError, ValueError):
    """A ``.pt`` export would not fit in the available memory.

    Also a ValueError, so the CLI reports it as a bad argument.
    """


def _to_float(videos):
    # Same ufunc as trajlab.torchdata, so both give bit-identical floats.
    out = videos.astype(np.float32)
    out /= np.float32(255.0)
    return out


def _resolve_format(output, format):
    own = "export"
    ext = os.path.splitext(output)[1].lower()
    if format is None:
        if ext not in _EXTENSIONS:
            v.fail("output", own, "a path ending in '.npz', '.pt' or '.pth' (or give "
                   "format='npz' or 'pt')", output)
        return _EXTENSIONS[ext]
    v.check_choice(format, "format", own, FORMATS + (None,))
    if ext in _EXTENSIONS and _EXTENSIONS[ext] != format:
        v.fail("output", own, f"a path whose extension matches format={format!r}", output)
    return format


def export(run_dir, output, format=None, split=None, *, force=False, compress=False):
    """Write a run directory (or one split) as one ``.npz`` or ``.pt`` file.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A complete run directory written by :func:`trajlab.generate`.
    output : str or os.PathLike
        File to write (replaced atomically if it exists); its directory must
        exist. It is written under a temporary name
        (``.<name>.trajlab-tmp.<host>.<pid>.<random>``) that is removed if
        the export fails or is interrupted (``trajlab export`` also on
        SIGTERM/SIGHUP), and by the next export of the same file if the
        process was killed.
    format : {'npz', 'pt'}, optional
        Default: from the extension of ``output`` (``.npz``, ``.pt``/``.pth``).
    split : {'train', 'val', 'test'}, optional
        Export only this split (samples in run-dir order); default all.
    force : bool, default=False
        ``.pt`` only: write even if the estimated size exceeds the available
        memory.
    compress : bool, default=False
        ``.npz`` only: deflate the members (like ``np.savez_compressed``).

    Returns
    -------
    path : str
        ``output``.

    Notes
    -----
    ``.npz`` memory is bounded: ``videos`` is converted and written
    ``CHUNK_BYTES`` at a time; only the small per-sample arrays and strings
    are held (a few KB per sample: about 2 % of the float32 videos at
    8x32x32, 0.3 % at 16x64x64). ``.pt`` is written with
    ``torch.save`` and needs the whole float32 video tensor in memory
    (4 bytes per pixel value); it raises :class:`ExportMemoryError` before
    reading anything if that exceeds the available memory, unless ``force``.
    See the module docstring for the keys.
    """
    own = "export"
    if not isinstance(output, (str, os.PathLike)):
        v.fail("output", own, "a path (str or os.PathLike)", output, TypeError)
    output = os.fspath(output)
    fmt = _resolve_format(output, format)
    v.check_choice(split, "split", own, SPLITS + (None,))
    for name, value in (("force", force), ("compress", compress)):
        if not isinstance(value, bool):
            v.fail(name, own, "a bool", value, TypeError)
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        v.fail("output", own, "a path whose directory exists", output)
    if os.path.isdir(output):
        v.fail("output", own, "a file path (not a directory)", output)

    data = open_dataset(run_dir, verify="lazy")
    idx = data.indices(split)
    s = data.spec
    video_shape = (len(idx), s.n_frames, 3, s.image_size, s.image_size)
    if fmt == "pt" and not force:
        # float32 videos + trajectory_3d + labels/indices + ~4 KB of strings per sample
        need = (4 * int(np.prod(video_shape, dtype=np.int64))
                + len(idx) * (12 * s.n_frames + 16 + 4096))
        avail = available_memory()
        if avail is not None and need > avail:
            raise ExportMemoryError(
                f"Exporting {len(idx):,} samples to .pt needs about {need / 2**30:.2f} GiB "
                f"in memory (torch.save writes whole tensors), but only {avail / 2**30:.2f} "
                "GiB is available. Export to .npz instead (streamed, bounded memory), "
                "export one split at a time, or pass force=True.")
    small = _small_arrays(data, idx)
    # leftovers of earlier exports of this file whose process was killed
    remove_stale_temps(parent, target=os.path.basename(output))
    with atomic_writer(os.path.abspath(output)) as fh:
        if fmt == "npz":
            _write_npz(fh, data, idx, video_shape, small, compress)
        else:
            _write_pt(fh, data, idx, video_shape, small)
    return output


def _shard_selections(data, idx):
    """Yield ``(shard, selected global indices)`` for shards holding any of ``idx``."""
    layout = data.layout
    for shard in range(layout.n_shards):
        start, stop = layout.shard_range(shard)
        sel = idx[np.searchsorted(idx, start):np.searchsorted(idx, stop)]
        if sel.size:
            yield shard, sel


def _small_arrays(data, idx):
    """Everything but the videos; verifies every shard that is read."""
    labels, traj, equations, descriptions = [], [], [], []
    for shard, sel in _shard_selections(data, idx):
        data.verify_shard(shard)
        start = data.layout.shard_range(shard)[0]
        labels.append(np.asarray(data.labels[sel], dtype=np.int64))
        traj.append(np.asarray(data.positions[sel], dtype=np.float32))
        records = data._shard_annotations(shard)   # checksum-verified
        for i in sel:
            r = records[int(i) - start]
            if r.get("index") != int(i):
                raise RunDirError(f"Annotation of sample {int(i)} in {data.run_dir!r} is out "
                                  f"of order (found index {r.get('index')}).")
            equations.append(r["equation"])
            descriptions.append(r["description"])
    T = data.spec.n_frames
    return {
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64),
        "trajectory_3d": np.concatenate(traj) if traj else np.zeros((0, T, 3), np.float32),
        "equations": np.array(equations, dtype=str),
        "descriptions": np.array(descriptions, dtype=str),
        "class_names": np.array(list(data.class_names), dtype=str),
        "indices": np.asarray(idx, dtype=np.int64),
        "fingerprint": np.array(data.spec.fingerprint, dtype=str),
    }


def _video_chunks(data, idx):
    """Yield float32 video chunks of ``idx`` in order, at most ~CHUNK_BYTES each."""
    per = 4 * int(np.prod(data.videos.shape[1:], dtype=np.int64))
    rows = max(1, CHUNK_BYTES // per)
    for shard, sel in _shard_selections(data, idx):
        data.verify_shard(shard)        # cached: already done by _small_arrays
        for a in range(0, sel.size, rows):
            yield _to_float(data.videos[sel[a:a + rows]])


def _member(name, compression):
    # A fixed time stamp makes the file a pure function of the data (reproducible).
    info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compression
    return info


def _write_npz(fh, data, idx, video_shape, small, compress):
    from numpy.lib import format as npf

    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(fh, "w", compression=mode, allowZip64=True) as zf:
        with zf.open(_member("videos", mode), "w", force_zip64=True) as fh:
            npf.write_array_header_1_0(fh, {"descr": npf.dtype_to_descr(np.dtype(np.float32)),
                                            "fortran_order": False, "shape": video_shape})
            n = 0
            for chunk in _video_chunks(data, idx):
                fh.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                n += len(chunk)
            if n != video_shape[0]:      # would leave a file np.load cannot read
                raise RuntimeError(f"wrote {n} videos, expected {video_shape[0]}")
        for name, arr in small.items():
            with zf.open(_member(name, mode), "w", force_zip64=True) as fh:
                npf.write_array(fh, arr, allow_pickle=False)


def _write_pt(fh, data, idx, video_shape, small):
    from .torchdata import save_export

    videos = np.empty(video_shape, dtype=np.float32)
    n = 0
    for chunk in _video_chunks(data, idx):
        videos[n:n + len(chunk)] = chunk
        n += len(chunk)
    obj = {"videos": videos}
    for name, arr in small.items():
        obj[name] = arr.tolist() if arr.dtype.kind == "U" else arr
    save_export(obj, fh)        # torch.save takes an open binary file too
