"""Format version 2: every array of a run dir as a zarr v3 array.

``run_dir/data`` is a zarr v3 group holding one array per trajlab array
(same names, shapes and dtypes as the ``.npy`` files of format 1). Every
array is chunked along the sample axis with one chunk per trajlab shard,
so the object ``data/<name>/c.K.0...`` holds exactly the samples of
shard ``K``, written whole by the worker that generated the shard:

- ``videos`` uses zarr's ``sharding_indexed`` codec: inner chunks of one
  clip, each compressed with zstd, followed by the shard index (offset and
  length of every clip, little-endian uint64, then its crc32c). One clip
  is read with two small reads (the index, cached, and the clip);
- the other arrays are one zstd-compressed chunk per shard (the last one
  padded with the fill value 0 to the full chunk shape, as zarr requires).

Every chunk (a clip of ``videos``, a shard of any other array, an
annotation file) is a zstd frame that declares its decoded size, followed
by the crc32c of the frame (zarr's ``crc32c`` codec, 4 bytes little-endian),
so a flipped or truncated byte fails the read of the clip it lands in.
Run dirs written before ``zstd-fast1-crc32c`` keep zstd's own XXH64
checksum of the decoded bytes in each frame instead (:data:`CODECS`). The
completion records keep the checksum (xxh3_128, or sha256 in older run
dirs) of each array's decoded shard slice, as in format 1 (the same spec
gives the same records and manifest digest in both formats).

Any zarr v3 reader opens ``run_dir/data`` (zarr-python, tensorstore,
``dask.array.from_zarr``, xarray); trajlab writes and reads the objects
itself, because it must never follow a symbolic link, must bound what a
crafted object can make it allocate, and reads single clips an order of
magnitude faster than zarr-python (``bench/bench_storage.py``). Every
document and object is checked against what trajlab writes before it is
used: ``zarr.json`` documents are compared in full, a shard index must
have exactly one entry per clip of the shard, inside the object and
without overlaps, and a chunk's declared decoded size must be its exact
size before anything is decoded.
"""

from __future__ import annotations

import json
import numbers
import os
import struct
import threading
from collections import OrderedDict

import numpy as np

STORE_DIR = "data"
ZARR_JSON = "zarr.json"
#: ``layout.codec`` of spec.json and the manifest: ``(zstd level, check)``
#: of every chunk of the run dir, ``check`` being ``'crc32c'`` (zarr's crc32c
#: codec after zstd, frames without a checksum) or ``'zstd'`` (zstd's own
#: XXH64 of the decoded bytes in each frame). Run dirs keep the codec they
#: were created with (spec.json and every zarr.json say it).
#:
#: - level -1 (zstd's "fast 1") instead of 1 by measurement
#:   (bench/bench_formats.py, tools in docs/STORAGE_V2.md): 54 instead of
#:   82 us per 16x64^2 clip, for 214x instead of 235x;
#: - crc32c instead of zstd's checksum: XXH64 of a decoded 16x64^2 clip
#:   (196 KB) costs ~24 us to write and again to read, a quarter of zstd's
#:   time (104 -> 68 us per clip with write_checksum=False, 2-core Xeon);
#:   crc32c of its ~920 compressed bytes (hardware crc32c) 0.4 us. Both
#:   detect a flipped or cut byte of the stored clip; the decoded bytes are
#:   still checked against the records' xxh3_128 by ``verify``.
CODECS = {"zstd-1": (1, "zstd"), "zstd-fast1": (-1, "zstd"),
          "zstd-fast1-crc32c": (-1, "crc32c")}
#: codec of new run dirs
CODEC = "zstd-fast1-crc32c"
#: Index entry of an inner chunk that is not stored (beyond the last sample).
ABSENT = 2**64 - 1
#: Names of the axes, for xarray (which needs them) and for people.
DIMENSIONS = {
    "videos": ("sample", "frame", "channel", "y", "x"),
    "labels": ("sample",), "splits": ("sample",), "attempts": ("sample",),
    "positions": ("sample", "frame", "xyz"), "pixels": ("sample", "frame", "uv"),
    "depth": ("sample", "frame"), "radius": ("sample", "frame"),
    "K": ("sample", "row", "col"), "R": ("sample", "row", "col"), "t": ("sample", "xyz"),
    "colors": ("sample", "rgb"), "params": ("sample", "param"),
}
_ZARR_DTYPES = {"uint8": "uint8", "int32": "int32", "int64": "int64", "float64": "float64"}
_INDEX_ENTRY = 16
_CRC = 4


def _zstd():
    import zstandard

    return zstandard


#: One compressor and decompressor per thread: python-zstandard's contexts
#: must not be shared between threads (the threading backend writes shards
#: from several threads of one process).
_LOCAL = threading.local()


def _compressor(codec):
    """This thread's zstd ``compress`` for ``codec`` (frames with the
    decoded size; zstd's checksum only where the codec keeps it there)."""
    cctxs = getattr(_LOCAL, "cctxs", None)
    if cctxs is None:
        cctxs = _LOCAL.cctxs = {}
    fn = cctxs.get(codec)
    if fn is None:
        level, check = CODECS[codec]
        fn = cctxs[codec] = _zstd().ZstdCompressor(
            level=level, write_checksum=check == "zstd", write_content_size=True).compress
    return fn


def seal(frame, codec):
    """The stored chunk of zstd ``frame`` under ``codec``: the frame, then
    its crc32c where the codec has one."""
    if CODECS[codec][1] == "crc32c":
        return frame + _crc32c(frame).to_bytes(_CRC, "little")
    return frame


def compress(buf, codec):
    """The stored chunk of ``buf`` under ``codec`` (see :func:`seal`)."""
    return seal(_compressor(codec)(buf), codec)


def _dctx():
    dctx = getattr(_LOCAL, "dctx", None)
    if dctx is None:
        dctx = _LOCAL.dctx = _zstd().ZstdDecompressor()
    return dctx


def compress_bound(n):
    """Largest stored chunk trajlab accepts for ``n`` decoded bytes.

    libzstd's ZSTD_COMPRESSBOUND (n + n/256 + a small constant) plus the
    frame header and a checksum (zstd's or the crc32c); python-zstandard
    does not expose it, and a generous bound is all that is needed (a
    crafted object larger than this is refused before it is read).
    """
    return n + (n >> 8) + 1024


class DamagedObject(Exception):
    """An object of the store is missing or is not what trajlab writes."""


def _unseal(data, codec, what):
    """The zstd frame of a stored chunk, its crc32c checked where ``codec``
    has one."""
    if CODECS[codec][1] != "crc32c":
        return data
    if len(data) < _CRC:
        raise DamagedObject(f"{what} does not decode (too short for its crc32c)")
    frame = bytes(data[:-_CRC])
    if _crc32c(frame) != int.from_bytes(data[-_CRC:], "little"):
        raise DamagedObject(f"{what} does not decode (its crc32c does not match)")
    return frame


def content_size(data, codec, what):
    """The decoded size a stored chunk declares (its crc32c checked first)."""
    zstd = _zstd()
    frame = _unseal(data, codec, what)
    try:
        return zstd.frame_content_size(frame)
    except zstd.ZstdError as exc:
        raise DamagedObject(f"{what} is not a zstd frame ({exc})") from None


def decompress(data, size, what, codec):
    """Decode one stored chunk that must hold exactly ``size`` bytes.

    The crc32c (where ``codec`` has one) and the declared size are checked
    before anything is allocated; trailing bytes, a wrong checksum or a
    short frame raise :class:`DamagedObject`.
    """
    zstd = _zstd()
    data = _unseal(data, codec, what)
    try:
        declared = zstd.frame_content_size(data)
    except zstd.ZstdError as exc:
        raise DamagedObject(f"{what} is not a zstd frame ({exc})") from None
    if declared != size:
        raise DamagedObject(f"{what} declares {declared} decoded bytes, expected {size}")
    try:
        out = _dctx().decompress(data, max_output_size=size, allow_extra_data=False)
    except zstd.ZstdError as exc:
        raise DamagedObject(f"{what} does not decode ({exc})") from None
    if len(out) != size:
        raise DamagedObject(f"{what} decodes to {len(out)} bytes, expected {size}")
    return out


def _crc32c(buf):
    """crc32c of ``buf`` (bytes-like; google_crc32c takes bytes only)."""
    import google_crc32c

    return google_crc32c.value(bytes(buf))


# ----------------------------------------------------------------- documents
def group_document(layout):
    from .spec import DATA_VERSION

    return {"zarr_format": 3, "node_type": "group",
            "attributes": {"trajlab": {"format_version": 2,
                                       "fingerprint": layout.spec.fingerprint,
                                       "data_version": DATA_VERSION,
                                       "shard_size": layout.shard_size}}}


def _bytes_codec(dtype):
    if np.dtype(dtype).itemsize == 1:
        return {"name": "bytes"}
    return {"name": "bytes", "configuration": {"endian": "little"}}


def _chunk_codecs(dtype, codec):
    """zarr's codec list of one chunk: bytes, zstd, and crc32c where ``codec``
    has one."""
    level, check = CODECS[codec]
    zstd = {"name": "zstd", "configuration": {"level": level, "checksum": check == "zstd"}}
    return [_bytes_codec(dtype), zstd] + ([{"name": "crc32c"}] if check == "crc32c" else [])


def array_document(layout, name):
    """The exact ``zarr.json`` of array ``name`` (compared in full on open)."""
    _f, shape, dt, _h, _per = layout.arrays()[name]
    chunk = [layout.shard_size, *shape[1:]]
    if name == "videos":
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [1, *shape[1:]],
            "codecs": _chunk_codecs(dt, layout.codec),
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                             {"name": "crc32c"}],
            "index_location": "end"}}]
    else:
        codecs = _chunk_codecs(dt, layout.codec)
    return {
        "zarr_format": 3, "node_type": "array",
        "shape": list(shape), "data_type": _ZARR_DTYPES[dt.name],
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
        # params: NaN, as in the columns a class does not use (an absent
        # shard then reads as no parameters, not as zeros)
        "fill_value": ("NaN" if name == "params" else 0.0) if dt.kind == "f" else 0,
        "codecs": codecs,
        "attributes": _attributes(layout, name),
        "dimension_names": list(DIMENSIONS[name]),
    }


def _attributes(layout, name):
    """``params``: where each class's parameters lie in a row (NaN in the
    columns a class does not use), so that any zarr reader can use them."""
    if name != "params":
        return {}
    from .generator import param_columns

    return {"columns": {c: [{"name": k, "column": off, "shape": list(shape)}
                            for k, off, shape in cols]
                        for c, cols in param_columns(layout.spec).items()},
            "classes": list(layout.spec.classes),
            "note": "row i holds the parameters of sample i's class (labels[i] indexes "
                    "classes); the other columns are NaN"}


def document_bytes(doc):
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def array_dir(name):
    return f"{STORE_DIR}/{name}"


def chunk_key(layout, name, shard):
    """Object name of shard ``shard`` of array ``name`` (zarr's default
    chunk key encoding with separator '.')."""
    ndim = len(layout.arrays()[name][1])
    return "c." + ".".join([str(shard)] + ["0"] * (ndim - 1))


def object_path(run_dir, layout, name, shard):
    return os.path.join(run_dir, STORE_DIR, name, chunk_key(layout, name, shard))


def chunk_key_pattern(name, ndim):
    import re

    return re.compile(r"^c\.[0-9]+" + r"\.0" * (ndim - 1) + "$")


# ------------------------------------------------------------------ encoding
def encode(layout, name, rows):
    """The object of one shard of array ``name`` from its ``rows`` (the
    shard's samples, C-contiguous, in the array's dtype)."""
    _f, shape, dt, _h, per = layout.arrays()[name]
    S = layout.shard_size
    rows = np.ascontiguousarray(rows, dtype=dt.newbyteorder("<"))
    n = rows.shape[0]
    if name != "videos":
        if n < S:      # zarr stores edge chunks at the full chunk shape
            padded = np.zeros((S, *shape[1:]), dtype=rows.dtype)
            padded[:n] = rows
            rows = padded
        return compress(rows.data, layout.codec)
    obj = VideoObject(layout)
    obj.add(rows)
    return obj.finish()


class VideoObject:
    """The shard object of ``videos`` built clip by clip: :meth:`add` the
    shard's clips in order (in pieces of any size), then :meth:`finish`
    gives exactly :func:`encode` of all of them."""

    def __init__(self, layout):
        self.shard_size = layout.shard_size
        self._compress = _compressor(layout.codec)
        self._crc = CODECS[layout.codec][1] == "crc32c"
        self.parts = []
        self.lengths = []

    def add(self, rows):
        """Compress the clips ``rows`` (k, T, 3, H, W) uint8, C-contiguous."""
        flat = rows.reshape(len(rows), -1)
        # one frame per clip; the index is made once in finish (an index
        # entry written per clip cost ~3 us of a 8x32^2 clip's ~50)
        frames = list(map(self._compress, map(memoryview, flat)))
        if self._crc:        # each frame followed by its crc32c
            import google_crc32c

            crc = google_crc32c.value
            crcs = [crc(f).to_bytes(_CRC, "little") for f in frames]
            self.lengths.extend(len(f) + _CRC for f in frames)
            frames = [x for pair in zip(frames, crcs) for x in pair]
        else:
            self.lengths.extend(map(len, frames))
        # python-zstandard's frames keep the allocation of zstd's bound (24
        # KiB for a 8x32^2 clip that compresses to ~250 bytes): kept one by
        # one, a 4,096-clip shard held ~97 MiB (tracemalloc) and each worker
        # grew by ~45 MB of RSS. Joined per piece, they cost their size.
        self.parts.append(b"".join(frames))

    def finish(self):
        n = len(self.lengths)
        if n > self.shard_size:
            raise ValueError(f"{n} clips added to a shard of {self.shard_size}")
        index = np.full((self.shard_size, 2), ABSENT, dtype="<u8")
        lengths = np.fromiter(self.lengths, dtype=np.uint64, count=n)
        index[:n, 1] = lengths
        index[:n, 0] = np.cumsum(lengths) - lengths
        ib = index.tobytes()
        return b"".join([*self.parts, ib, struct.pack("<I", _crc32c(ib))])


def max_object_bytes(layout, name):
    _f, _shape, _dt, _h, per = layout.arrays()[name]
    S = layout.shard_size
    if name == "videos":
        return S * compress_bound(per) + S * _INDEX_ENTRY + _CRC
    return compress_bound(S * per)


def parse_index(tail, layout, shard, size, what):
    """``(offsets, lengths)`` of the clips of ``shard`` from the last bytes
    of its videos object of ``size`` bytes; DamagedObject unless it is an
    index trajlab could have written (crc32c, one entry per clip inside
    the object, no overlap, absent entries exactly past the last sample)."""
    S = layout.shard_size
    start, stop = layout.shard_range(shard)
    n = stop - start
    want = S * _INDEX_ENTRY + _CRC
    if len(tail) != want:
        raise DamagedObject(f"{what} is too short for its shard index ({size} bytes)")
    body, crc = tail[:-_CRC], tail[-_CRC:]
    if struct.unpack("<I", crc)[0] != _crc32c(body):
        raise DamagedObject(f"{what} has a shard index whose crc32c does not match")
    idx = np.frombuffer(body, dtype="<u8").reshape(S, 2)
    if n < S and not (idx[n:] == ABSENT).all():
        raise DamagedObject(f"{what} lists clips past the end of the dataset")
    off, ln = idx[:n, 0], idx[:n, 1]
    per = layout.arrays()["videos"][4]
    data_end = size - want
    if (idx[:n] == ABSENT).any() or (ln < 9).any() or (ln > compress_bound(per)).any():
        raise DamagedObject(f"{what} has a shard index with a missing or impossible entry")
    if (off > data_end).any() or ((off + ln) > data_end).any():
        raise DamagedObject(f"{what} has a shard index pointing outside the object")
    order = np.argsort(off, kind="stable")
    so, sl = off[order], ln[order]
    if n > 1 and ((so[:-1] + sl[:-1]) > so[1:]).any():
        raise DamagedObject(f"{what} has a shard index with overlapping clips")
    return off.astype(np.int64), ln.astype(np.int64)


def decode_object(raw, layout, name, shard, what):
    """The decoded rows of shard ``shard`` of array ``name`` from its whole
    object ``raw``: an array of shape (stop - start, ...)."""
    _f, shape, dt, _h, per = layout.arrays()[name]
    start, stop = layout.shard_range(shard)
    n = stop - start
    if name != "videos":
        out = decompress(raw, layout.shard_size * per, what, layout.codec)
        return np.frombuffer(out, dtype=dt.newbyteorder("<"), count=n * per // dt.itemsize
                             ).astype(dt, copy=False).reshape((n, *shape[1:]))
    tail = bytes(raw[len(raw) - (layout.shard_size * _INDEX_ENTRY + _CRC):]) \
        if len(raw) >= layout.shard_size * _INDEX_ENTRY + _CRC else b""
    off, ln = parse_index(tail, layout, shard, len(raw), what)
    rows = np.empty((n, per), dtype=np.uint8)
    mv = memoryview(raw)
    for j in range(n):
        rows[j] = np.frombuffer(decompress(mv[off[j]:off[j] + ln[j]], per,
                                           f"{what}, clip {start + j}", layout.codec),
                                dtype=np.uint8)
    return rows.reshape((n, *shape[1:]))


# ------------------------------------------------------------------- reading
def _read_object(run_dir, layout, name, shard):
    from .storage import RunDirError, TooLargeError, read_bytes

    path = object_path(run_dir, layout, name, shard)
    try:
        return read_bytes(path, max_object_bytes(layout, name), root=run_dir)
    except FileNotFoundError:
        raise DamagedObject(f"{_rel(run_dir, path)} is missing") from None
    except TooLargeError as exc:
        raise DamagedObject(f"{_rel(run_dir, path)} is larger ({exc.size} bytes) than trajlab "
                            "writes") from None
    except (OSError, RunDirError) as exc:   # e.g. its folder swapped for a link
        raise DamagedObject(f"{_rel(run_dir, path)} cannot be read ({exc})") from None


def _rel(run_dir, path):
    return os.path.relpath(path, run_dir)


def read_shard(run_dir, layout, name, shard):
    """Decoded rows of one shard of one array (DamagedObject if damaged)."""
    raw = _read_object(run_dir, layout, name, shard)
    return decode_object(raw, layout, name, shard,
                         _rel(run_dir, object_path(run_dir, layout, name, shard)))


class ChunkedArray:
    """Read-only view of one array of a format-2 run dir.

    Supports ``len``, ``shape``, ``dtype``, ``ndim``, ``np.asarray`` and
    indexing by an int, a slice, an integer array or a boolean mask on the
    first axis (followed by any numpy index of the other axes); every
    result is a new numpy array. Shards are decoded on demand (videos one
    clip at a time) and a few are cached; a damaged object raises
    :class:`trajlab.storage.RunDirError`.
    """

    #: Bytes of decoded shards of the small arrays kept (labels of a
    #: 512-clip shard are 4 KB: random reads over a large dataset would
    #: otherwise decode a shard's labels for every clip).
    _CHUNK_BYTES = 64 * 2**20
    #: Shard indices kept (16 bytes a clip: 8 KB a 512-clip shard), so that
    #: random reads over a large dataset rarely re-read one.
    _INDICES = 4096
    #: Open file descriptors kept (each process, each array: a DataLoader
    #: with 8 workers holds at most 8 x 128).
    _FDS = 128

    def __init__(self, run_dir, layout, name):
        self.run_dir, self.layout, self.name = run_dir, layout, name
        _f, shape, dt, _h, per = layout.arrays()[name]
        self.shape, self.dtype, self._per = tuple(shape), np.dtype(dt), per
        self.ndim = len(shape)
        self._chunks = OrderedDict()       # shard -> decoded rows (small arrays)
        self._chunk_bytes = 0
        self._indices = OrderedDict()      # shard -> (offsets, lengths, name) (videos)
        self._fds = OrderedDict()          # shard -> open fd (videos)

    def __len__(self):
        return self.shape[0]

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self):
        return (f"ChunkedArray({self.name!r}, shape={self.shape}, dtype={self.dtype}, "
                f"run_dir={self.run_dir!r})")

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getstate__(self):
        return {"run_dir": self.run_dir, "layout": self.layout, "name": self.name}

    def __setstate__(self, state):
        self.__init__(state["run_dir"], state["layout"], state["name"])

    def __del__(self):
        self.close()

    def close(self):
        """Close the files this view holds open (it reopens them on use)."""
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
        if hasattr(self, "_fds"):
            self._fds.clear()

    # indexing ---------------------------------------------------------
    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        n = self.shape[0]
        if key is Ellipsis:
            key, rest = slice(None), (Ellipsis, *rest)
        if isinstance(key, (numbers.Integral, np.integer)) and not isinstance(key, bool):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis 0 with size {n}")
            s, local = divmod(i % n, self.layout.shard_size)
            if self.name == "videos":        # the common case: one clip
                out = np.empty(self.shape[1:], dtype=self.dtype)
                self._clip(s, local, out.reshape(-1))
            else:
                out = self._chunk(s)[local].copy()
            return out[rest] if rest else out
        if isinstance(key, slice):
            idx = np.arange(*key.indices(n))
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                if idx.shape != (n,):
                    raise IndexError(f"boolean index of shape {idx.shape} does not match "
                                     f"axis 0 of size {n}")
                idx = np.flatnonzero(idx)
            elif idx.dtype.kind not in "iu" or idx.ndim != 1:
                raise IndexError("only integers, slices, 1-D integer arrays and boolean masks "
                                 f"index the first axis; got {key!r}")
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise IndexError(f"index out of bounds for axis 0 with size {n}")
            idx = idx.astype(np.int64) % n if idx.size else idx.astype(np.int64)
        out = self._rows(idx)
        return out[(slice(None), *rest)] if rest else out

    def _rows(self, idx):
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        if not len(idx):
            return out
        S = self.layout.shard_size
        shards = idx // S
        order = np.argsort(shards, kind="stable")
        bounds = np.flatnonzero(np.diff(shards[order])) + 1
        for group in np.split(order, bounds):
            s = int(shards[group[0]])
            local = idx[group] - s * S
            if self.name == "videos":
                self._clips(s, local, out, group)
            else:
                out[group] = self._chunk(s)[local]
        return out

    def _damaged(self, exc):
        from .storage import RunDirError

        return RunDirError(f"{exc} in run directory {self.run_dir!r}: the dataset is damaged. "
                           f"Run `trajlab verify --repair {self.run_dir}` then `trajlab "
                           "generate` on it to regenerate the bad shards.")

    def _chunk(self, s):
        got = self._chunks.get(s)
        if got is None:
            try:
                got = read_shard(self.run_dir, self.layout, self.name, s)
            except DamagedObject as exc:
                raise self._damaged(exc) from None
            self._chunks[s] = got
            self._chunk_bytes += got.nbytes
            while self._chunk_bytes > self._CHUNK_BYTES and len(self._chunks) > 1:
                self._chunk_bytes -= self._chunks.popitem(last=False)[1].nbytes
        else:
            self._chunks.move_to_end(s)
        return got

    def _fd(self, s):
        from .storage import is_remote, open_nofollow

        if is_remote(self.run_dir):       # ranged GETs: no file to hold open
            return None
        fd = self._fds.get(s)
        if fd is not None:
            self._fds.move_to_end(s)
            return fd
        path = object_path(self.run_dir, self.layout, self.name, s)
        try:
            fd = open_nofollow(path, os.O_RDONLY, root=self.run_dir)
        except FileNotFoundError:
            raise self._damaged(f"{_rel(self.run_dir, path)} is missing") from None
        self._fds[s] = fd
        if len(self._fds) > self._FDS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _index(self, s):
        got = self._indices.get(s)
        if got is not None:
            return got
        from .storage import read_tail

        fd = self._fd(s)
        path = object_path(self.run_dir, self.layout, self.name, s)
        what = _rel(self.run_dir, path)
        want = self.layout.shard_size * _INDEX_ENTRY + _CRC
        try:
            if fd is not None:
                size = os.fstat(fd).st_size
                tail = os.pread(fd, want, size - want) if size >= want else b""
            else:               # an object store: index and size in one request
                try:
                    tail, size = read_tail(path, want)
                except FileNotFoundError:
                    raise DamagedObject(f"{what} is missing") from None
                except OSError as exc:
                    raise DamagedObject(f"{what} cannot be read ({exc})") from None
                tail = tail if size >= want else b""
            if size > max_object_bytes(self.layout, self.name):
                raise DamagedObject(f"{what} is larger ({size} bytes) than trajlab writes")
            off, ln = parse_index(tail, self.layout, s, size, what)
        except DamagedObject as exc:
            raise self._damaged(exc) from None
        got = self._indices[s] = (off.tolist(), ln.tolist(), what)
        if len(self._indices) > self._INDICES:
            self._indices.popitem(last=False)
        return got

    def _clip(self, s, j, flat_out):
        from .storage import read_range

        off, ln, what = self._index(s)
        fd = self._fd(s)
        data = os.pread(fd, ln[j], off[j]) if fd is not None else read_range(
            object_path(self.run_dir, self.layout, self.name, s), off[j], ln[j])
        try:
            if len(data) != ln[j]:
                raise DamagedObject(f"{what} is truncated")
            flat_out[:] = np.frombuffer(
                decompress(data, self._per, f"{what}, clip {s * self.layout.shard_size + j}",
                           self.layout.codec),
                dtype=np.uint8)
        except DamagedObject as exc:
            raise self._damaged(exc) from None

    def _clips(self, s, local, out, positions):
        view = out.reshape(len(out), -1)
        for j, p in zip(local.tolist(), positions.tolist()):
            self._clip(s, j, view[p])
