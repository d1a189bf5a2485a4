"""Storage benchmark: raw .npy slices against compressed zarr v3 stores.

Measured on real trajlab clips (``generate_block`` of the default spec) at
16x3x64x64 and 8x3x32x32, side by side in one run:

* **codecs** on one shard's videos, one clip per chunk (the inner chunk of
  the proposed store): compression ratio, and compress / decompress clips
  per second per core (CPU time of one thread; blosc's own threads off);
* **stores**, each writing a whole dataset end to end with ``--n-jobs``
  worker processes (default 2), every written file made durable
  (``fdatasync`` of the data, ``fsync`` of new directories) before the
  parent writes the shard's record (itself fsynced, as ``fsync=True`` does):

  - ``npy``: today's format v1 (``trajlab.storage.write_shard`` into
    preallocated ``.npy`` files, ``fsync=True``);
  - ``zarr``: zarr-python 3, one zarr v3 array per trajlab array, the
    videos with the sharding codec (one trajlab shard = one storage shard,
    inner chunk = one clip), the small arrays one chunk per shard;
  - ``tensorstore``: the same zarr v3 arrays written by tensorstore;
  - ``direct``: the same zarr v3 arrays (metadata by zarr-python), each
    chunk or shard object encoded here with numcodecs zstd and written as
    one file (temporary name, ``O_NOFOLLOW``, ``fdatasync``, rename);
  - ``trajlab.generate``: the product itself (``fsync=True``), as a check
    that the ``npy`` row measures what users get;
  - ``render``: the same shards generated in memory and dropped, the
    ceiling of any store;

  then the bytes on disk, the peak RSS of each writer process, and a full
  decode of every array compared with the sha256 the workers computed
  before writing (which also checks that two processes wrote different
  shards of the same zarr arrays at once, with no lock, correctly);
* **reads**, ``--n-jobs`` reader processes at once, each for a fixed time:
  random single clips and batches of 32 consecutive clips per process,
  through numpy memmap, zarr-python, tensorstore (without and with a cache
  pool, which keeps shard indices), and a direct reader of the zarr v3
  shard format (``pread`` of the shard index and of one chunk, numcodecs
  zstd decode), with the page cache warm (the files were just written);
* **concurrent writers**: two processes released by a barrier write the
  even and odd shards of one array, with zarr-python and with
  tensorstore; the decoded array must equal the generated clips;
* with ``--s3`` instead: moto's S3 server started on a free 127.0.0.1 port
  (and stopped): the conditional PUTs a writer lease needs, the direct
  shard encoder writing through s3fs, zarr-python and tensorstore's S3
  driver decoding it, random clips by ranged GET.

Rates are wall-clock on a shared machine (codec rates are CPU time);
repeat runs to see the spread. Nothing here is a pass/fail test.

Needs packages that are not yet dependencies of trajlab (storage v2 is not
built yet): ``pip install 'zarr>=3' numcodecs tensorstore`` and, for
``--s3``, ``pip install 'moto[server]' s3fs boto3``.

Usage::

    python bench/bench_storage.py            # 5,000 x 16x64^2 and 25,000 x 8x32^2 (~3 min)
    python bench/bench_storage.py --sizes 10000,50000 --read-seconds 1.5   # docs/STORAGE_V2.md
    python bench/bench_storage.py --quick    # 10x fewer clips, smoke run
    python bench/bench_storage.py --full     # the issue's 30,000 and 100,000
    python bench/bench_storage.py --dir /mnt/disk/tmp --n-jobs 2
    python bench/bench_storage.py --s3       # object-storage check on loopback
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from trajlab.generator import generate_block  # noqa: E402
from trajlab.spec import DatasetSpec  # noqa: E402

ARRAYS = ("videos", "labels", "splits", "positions", "pixels", "depth", "radius",
          "K", "R", "t", "colors", "attempts")
ZSTD_LEVEL = 1
BATCH = 32
_STATE = {}   # per-process cache of open stores (workers are reused across shards)


# ------------------------------------------------------------------ helpers
def _sha(buf):
    return hashlib.sha256(buf).hexdigest()


def _peak_rss():
    """Peak resident set size of this process so far (VmHWM), bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _disk_bytes(root):
    """(allocated bytes, logical bytes) of every file under ``root``."""
    alloc = logical = 0
    for dp, _dn, fns in os.walk(root):
        for fn in fns:
            st = os.lstat(os.path.join(dp, fn))
            alloc += st.st_blocks * 512
            logical += st.st_size
    return alloc, logical


def _parts(root, kind):
    """Logical bytes of videos, other arrays, annotations, records+metadata."""
    data = root if kind in ("npy", "trajlab.generate") else os.path.join(root, "data")
    if kind in ("npy", "trajlab.generate"):
        sizes = {name: os.path.getsize(os.path.join(root, f"{name}.npy")) for name in ARRAYS}
    else:
        sizes = {name: _disk_bytes(os.path.join(data, name))[1] for name in ARRAYS}
    ann = _disk_bytes(os.path.join(root, "annotations"))[1]
    total = _disk_bytes(root)[1]
    videos = sizes["videos"]
    other = sum(sizes.values()) - videos
    return {"videos": videos, "other arrays": other, "annotations": ann,
            "records+metadata": total - videos - other - ann}


def _fsync_path(path, datasync=True):
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if datasync else os.fsync)(fd)
    finally:
        os.close(fd)


def _chunk_key(shard, ndim):
    """zarr v3 default chunk key of chunk-grid cell (shard, 0, ..., 0)."""
    return "/".join(["c", str(shard)] + ["0"] * (ndim - 1))


def _durable(array_dir, key, synced_dirs):
    """fdatasync a written chunk file and fsync the directories that a new
    file or folder was created in (up to and including the array's)."""
    path = os.path.join(array_dir, key)
    _fsync_path(path)
    d = os.path.dirname(path)
    while True:
        if d not in synced_dirs:
            _fsync_path(d, datasync=False)
            synced_dirs.add(d)
        if d == array_dir:
            break
        d = os.path.dirname(d)


def _write_annotations(run_dir, shard, block, spec):
    """The annotation file of one shard, as format v1 writes it (fsync'd)."""
    text = "".join(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n"
                   for rec in block.annotations(spec)).encode("utf-8")
    path = os.path.join(run_dir, "annotations", f"{shard:05d}.jsonl")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(text)
        fh.flush()
        os.fdatasync(fh.fileno())
    os.replace(tmp, path)
    _fsync_path(os.path.dirname(path), datasync=False)
    return _sha(text)


def _write_record(run_dir, rec):
    from trajlab.storage import write_json_atomic

    write_json_atomic(os.path.join(run_dir, "shards", f"{rec['shard']:05d}.json"), rec, fsync=True)


def _spec(n, frames, size):
    return DatasetSpec(n_samples=n, n_frames=frames, image_size=size)


def _shard_range(n, shard_size, k):
    return k * shard_size, min(n, (k + 1) * shard_size)


# ------------------------------------------------------------------ codecs
def _codecs():
    import numcodecs
    from numcodecs import Blosc, Zstd, blosc

    # one core per codec: blosc's internal threads would hide per-call cost
    blosc.use_threads = False
    blosc.set_nthreads(1)
    return [
        ("zstd-1", Zstd(level=1)),
        ("zstd-3", Zstd(level=3)),
        ("blosc-lz4 shuffle", Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)),
        ("blosc-lz4 bitshuffle", Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE)),
        ("blosc-zstd-1 shuffle", Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE)),
        ("blosc-zstd-1 bitshuffle", Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE)),
    ], numcodecs.__version__


def bench_codecs(videos):
    """Ratio and per-core rates of each codec, one clip per call."""
    codecs, _ = _codecs()
    clips = [np.ascontiguousarray(v) for v in videos]
    raw = sum(c.nbytes for c in clips)
    rows = []
    for name, codec in codecs:
        codec.encode(clips[0])   # warm up (allocations, lazy init)
        t0 = time.process_time()
        enc = [codec.encode(c) for c in clips]
        t_c = time.process_time() - t0
        t0 = time.process_time()
        dec = [codec.decode(e) for e in enc]
        t_d = time.process_time() - t0
        ok = all(np.array_equal(np.frombuffer(d, np.uint8), c.reshape(-1))
                 for d, c in zip(dec, clips))
        size = sum(len(e) for e in enc)
        rows.append((name, raw / size, len(clips) / t_c, len(clips) / t_d, size / len(clips), ok))
    return rows


# ------------------------------------------------------------ store writers
def _zarr_codec_args():
    import zarr

    return zarr.codecs.ZstdCodec(level=ZSTD_LEVEL)


def create_store(kind, root, spec, shard_size):
    """Create the empty store (parent only): files, folders, metadata."""
    from trajlab.generator import array_layout

    os.makedirs(root)
    os.makedirs(os.path.join(root, "shards"))
    os.makedirs(os.path.join(root, "annotations"))
    layout = array_layout(spec, spec.n_samples)
    if kind == "npy":
        from trajlab.storage import RunLayout

        RunLayout(spec, shard_size).preallocate(root)
    elif kind in ("zarr", "direct"):
        import zarr

        g = zarr.open_group(os.path.join(root, "data"), mode="w", zarr_format=3)
        for name in ARRAYS:
            shape, dt = layout[name]
            inner = (1,) + tuple(shape[1:]) if name == "videos" else None
            outer = (shard_size,) + tuple(shape[1:])
            g.create_array(name, shape=shape, dtype=dt, fill_value=0,
                           chunks=inner if inner else outer,
                           shards=outer if inner else None,
                           compressors=_zarr_codec_args())
    elif kind == "tensorstore":
        import tensorstore as ts

        os.makedirs(os.path.join(root, "data"))
        with open(os.path.join(root, "data", "zarr.json"), "w") as fh:
            json.dump({"zarr_format": 3, "node_type": "group", "attributes": {}}, fh)
        futs = [ts.open(_ts_spec(root, name, layout[name], shard_size), create=True)
                for name in ARRAYS]
        for f in futs:
            f.result()
    for dp, _dn, fns in os.walk(root):
        for fn in fns:
            _fsync_path(os.path.join(dp, fn))
        _fsync_path(dp, datasync=False)


def _ts_spec(root, name, shape_dt, shard_size):
    shape, dt = shape_dt
    shape = list(shape)
    zstd = {"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}}
    outer = [shard_size] + shape[1:]
    if name == "videos":
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [1] + shape[1:],
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, zstd],
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                             {"name": "crc32c"}],
            "index_location": "end"}}]
    else:
        codecs = [{"name": "bytes", "configuration": {"endian": "little"}}, zstd]
    path = os.path.join(root, "data", name) + "/"
    return {"driver": "zarr3", "kvstore": {"driver": "file", "path": path},
            "metadata": {"shape": shape, "data_type": np.dtype(dt).name, "fill_value": 0,
                         "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": outer}},
                         "chunk_key_encoding": {"name": "default",
                                                "configuration": {"separator": "/"}},
                         "codecs": codecs}}


def _direct_write(array_dir, key, payload, synced_dirs):
    """Write one chunk object of a zarr v3 array: temporary file, fdatasync,
    rename, fsync of the new directories (no symlink followed)."""
    path = os.path.join(array_dir, key)
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(payload).cast("B")
        while view:
            view = view[os.write(fd, view):]
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    while True:
        if d not in synced_dirs:
            _fsync_path(d, datasync=False)
            synced_dirs.add(d)
        if d == array_dir:
            break
        d = os.path.dirname(d)


def direct_shard_bytes(clips, per_shard, codec):
    """One zarr v3 shard (``sharding_indexed``, index at the end, inner codecs
    bytes + zstd, index codecs bytes + crc32c) of one clip per inner chunk;
    inner chunks past the array's end are absent (offset = nbytes = 2**64-1)."""
    import google_crc32c

    parts, index, off = [], np.full((per_shard, 2), np.uint64(2**64 - 1), "<u8"), 0
    for j, clip in enumerate(clips):
        enc = codec.encode(np.ascontiguousarray(clip))
        parts.append(enc)
        index[j] = (off, len(enc))
        off += len(enc)
    raw = index.tobytes()
    parts.append(raw)
    parts.append(google_crc32c.value(raw).to_bytes(4, "little"))
    return b"".join(bytes(p) for p in parts)


def _pool_init(kind):
    # import the library once per worker, before any timing
    if kind == "zarr":
        import zarr  # noqa: F401
    elif kind == "tensorstore":
        import tensorstore  # noqa: F401
    import trajlab.storage  # noqa: F401


def _open_writer(kind, root):
    key = (kind, root)
    if key not in _STATE:
        if kind == "zarr":
            import zarr

            g = zarr.open_group(os.path.join(root, "data"), mode="r+")
            _STATE[key] = {name: g[name] for name in ARRAYS}
        elif kind == "tensorstore":
            import tensorstore as ts

            futs = {name: ts.open({"driver": "zarr3", "kvstore": {
                "driver": "file", "path": os.path.join(root, "data", name) + "/"}}, open=True)
                for name in ARRAYS}
            _STATE[key] = {name: f.result() for name, f in futs.items()}
    return _STATE.get(key)


def write_task(args):
    """Worker: generate one shard, write it to the store, make it durable.

    Returns the shard's record (sha256 of the decoded bytes of each array,
    computed before writing) and this process's peak RSS.
    """
    kind, root, spec, shard_size, shard = args
    t0 = time.perf_counter()
    start, stop = _shard_range(spec.n_samples, shard_size, shard)
    if kind == "npy":
        from trajlab.storage import RunLayout, write_shard

        rec = write_shard(root, RunLayout(spec, shard_size, 1, "sha256"), shard, fsync=True)
        rec["peak_rss"] = _peak_rss()
        return rec
    # a compressing writer keeps no raw bytes after the shard, so it renders
    # into one buffer per process (fresh 100 MB arrays cost page faults)
    buf = _STATE.get("videos_out")
    shape = (stop - start, spec.n_frames, 3, spec.image_size, spec.image_size)
    if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:]:
        buf = _STATE["videos_out"] = np.empty((shard_size,) + shape[1:], np.uint8)
    block = generate_block(spec, start, stop, videos_out=buf[:shape[0]])
    sums = {name: _sha(np.ascontiguousarray(getattr(block, name)).data) for name in ARRAYS}
    if kind == "render":
        return {"shard": shard, "start": start, "stop": stop, "sha256": sums,
                "peak_rss": _peak_rss(), "seconds": time.perf_counter() - t0}
    arrays = _open_writer(kind, root)
    if kind == "direct":
        import numcodecs

        codec = numcodecs.Zstd(level=ZSTD_LEVEL)
        synced = set()
        for name in ARRAYS:
            arr = np.ascontiguousarray(getattr(block, name))
            adir = os.path.join(root, "data", name)
            if name == "videos":
                payload = direct_shard_bytes(arr, shard_size, codec)
            else:
                if arr.shape[0] < shard_size:   # zarr stores edge chunks at full shape
                    full = np.zeros((shard_size,) + arr.shape[1:], arr.dtype)
                    full[:arr.shape[0]] = arr
                    arr = full
                payload = codec.encode(arr)
            _direct_write(adir, _chunk_key(shard, arr.ndim), payload, synced)
        sums["annotations"] = _write_annotations(root, shard, block, spec)
        return {"shard": shard, "start": start, "stop": stop, "sha256": sums,
                "peak_rss": _peak_rss(), "seconds": time.perf_counter() - t0}
    if kind == "zarr":
        for name in ARRAYS:
            arrays[name][start:stop] = getattr(block, name)
    else:
        futs = [arrays[name][start:stop].write(getattr(block, name)) for name in ARRAYS]
        for f in futs:
            f.result()
    synced = set()
    for name in ARRAYS:
        arr = getattr(block, name)
        _durable(os.path.join(root, "data", name), _chunk_key(shard, arr.ndim), synced)
    sums["annotations"] = _write_annotations(root, shard, block, spec)
    return {"shard": shard, "start": start, "stop": stop, "sha256": sums,
            "peak_rss": _peak_rss(), "seconds": time.perf_counter() - t0}


def run_write(kind, root, spec, shard_size, n_jobs):
    """Write a whole dataset; returns (seconds, records)."""
    n_shards = -(-spec.n_samples // shard_size)
    import resource

    ctx = mp.get_context("spawn")
    pool = ctx.Pool(n_jobs, initializer=_pool_init, initargs=(kind,))
    # workers are started and have imported their library before the clock starts
    pool.map(_cpu_task, range(n_jobs))
    base = sum(pool.map(_cpu_task, range(n_jobs), chunksize=1))
    with pool:
        t0 = time.perf_counter()
        if kind != "render":
            create_store(kind, root, spec, shard_size)
        recs = []
        for rec in pool.imap_unordered(write_task, [(kind, root, spec, shard_size, k)
                                                    for k in range(n_shards)]):
            if kind != "render":
                _write_record(root, rec)
            recs.append(rec)
        secs = time.perf_counter() - t0
        pool.close()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        pool.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds the writers spent (user + system) after start-up, and the parent's
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) - base
    return secs, sorted(recs, key=lambda r: r["shard"]), cpu


def _cpu_task(_):
    time.sleep(0.05)   # lets every worker take one task
    t = os.times()
    return t.user + t.system


def _peak_rss_task(_):
    return _peak_rss()


def run_generate(root, spec, shard_size, n_jobs):
    import trajlab

    t0 = time.perf_counter()
    trajlab.generate(spec, root, n_jobs=n_jobs, shard_size=shard_size, fsync=True,
                     progress="none")
    return time.perf_counter() - t0


# ------------------------------------------------------------------ readers
class DirectShardReader:
    """Reads clips of a zarr v3 sharded array with ``pread`` and numcodecs.

    Only the layout this benchmark writes: sharding along axis 0, one clip
    per inner chunk, inner codecs ``bytes`` + ``zstd``, index at the end
    with ``bytes`` + ``crc32c``. Shard indices are cached per open reader.
    """

    def __init__(self, array_dir):
        import numcodecs

        with open(os.path.join(array_dir, "zarr.json"), encoding="utf-8") as fh:
            meta = json.load(fh)
        self.dir = array_dir
        self.shape = tuple(meta["shape"])
        self.per_shard = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        self.ndim = len(self.shape)
        self._zstd = numcodecs.Zstd()
        self._open = {}

    def _shard(self, k):
        got = self._open.get(k)
        if got is None:
            import google_crc32c

            path = os.path.join(self.dir, _chunk_key(k, self.ndim))
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            size = os.fstat(fd).st_size
            n = self.per_shard * 16
            raw = os.pread(fd, n + 4, size - n - 4)
            if google_crc32c.value(raw[:n]) != int.from_bytes(raw[n:], "little"):
                raise ValueError(f"shard index checksum mismatch in {path}")
            got = self._open[k] = (fd, np.frombuffer(raw[:n], "<u8").reshape(-1, 2))
        return got

    def clip(self, i, out=None):
        k, j = divmod(i, self.per_shard)
        fd, index = self._shard(k)
        off, n = (int(x) for x in index[j])
        if out is None:
            out = np.empty(self.shape[1:], np.uint8)
        # decoded straight into the output: no temporary clip
        self._zstd.decode(os.pread(fd, n, off), out=out)
        return out

    def batch(self, i, n):
        out = np.empty((n,) + self.shape[1:], np.uint8)
        for k in range(n):
            self.clip(i + k, out=out[k])
        return out


def _open_reader(kind, root):
    """(single(i), batch(i, n)) for one reader kind."""
    if kind == "npy":
        v = np.load(os.path.join(root, "videos.npy"), mmap_mode="r", allow_pickle=False)
        return (lambda i: np.array(v[i])), (lambda i, n: np.array(v[i:i + n]))
    path = os.path.join(root, "data", "videos")
    if kind == "zarr":
        import zarr

        a = zarr.open_array(path, mode="r")
        return (lambda i: a[i]), (lambda i, n: a[i:i + n])
    if kind.startswith("tensorstore"):
        import tensorstore as ts

        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path + "/"}}
        ctx = None
        if kind == "tensorstore+cache":
            # the cache keeps shard indices (and some decoded chunks) between reads
            spec["recheck_cached_data"] = False
            spec["recheck_cached_metadata"] = False
            ctx = ts.Context({"cache_pool": {"total_bytes_limit": 64 * 2**20}})
        t = ts.open(spec, open=True, read=True, context=ctx).result()
        return (lambda i: t[i].read().result()), (lambda i, n: t[i:i + n].read().result())
    if kind == "direct":
        r = DirectShardReader(path)
        return r.clip, r.batch
    raise ValueError(kind)


def read_task(args):
    """Worker: random single-clip reads, then random 32-clip batches, each
    for ``budget`` seconds, starting at the shared ``t_start``."""
    kind, root, n, budget, seed, t_start = args
    single, batch = _open_reader(kind, root)
    rng = np.random.default_rng(seed)
    expect_shape = single(0).shape
    for i in rng.integers(0, n, 20):
        single(int(i))
    late = time.time() > t_start
    time.sleep(max(0.0, t_start - time.time()))
    out = {"late": late, "shape": expect_shape}
    for mode in ("single", "batch"):
        count, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            idx = rng.integers(0, n - BATCH, 64)
            for i in idx:
                if mode == "single":
                    single(int(i))
                    count += 1
                else:
                    batch(int(i), BATCH)
                    count += BATCH
            el = time.perf_counter() - t0
            if el >= budget:
                break
        out[mode] = count / el
        out[mode + "_cpu"] = count / (time.process_time() - c0)
    return out


def run_reads(kind, root, n, budget, n_jobs):
    ctx = mp.get_context("spawn")
    with ctx.Pool(n_jobs, initializer=_pool_init, initargs=(
            "tensorstore" if kind.startswith("tensorstore") else kind,)) as pool:
        pool.map(_peak_rss_task, range(n_jobs))
        t_start = time.time() + 1.5
        res = pool.map(read_task, [(kind, root, n, budget, s, t_start) for s in range(n_jobs)],
                       chunksize=1)
    return tuple(float(np.mean([r[k] for r in res]))
                 for k in ("single", "batch", "single_cpu", "batch_cpu")) + (
        any(r["late"] for r in res),)


# ---------------------------------------------------------------- verifying
def decode_check(kind, root, spec, shard_size, recs):
    """Decode every array of every shard and compare with the records."""
    # each zarr store is decoded by a library that did not write it: the
    # format, not one implementation, is what readers rely on
    if kind == "npy":
        arrays = {name: np.load(os.path.join(root, f"{name}.npy"), mmap_mode="r",
                                allow_pickle=False) for name in ARRAYS}
        get = lambda name, a, b: arrays[name][a:b]  # noqa: E731
    elif kind == "tensorstore":
        import zarr

        g = zarr.open_group(os.path.join(root, "data"), mode="r")
        get = lambda name, a, b: g[name][a:b]  # noqa: E731
    else:
        import tensorstore as ts

        t = {name: ts.open({"driver": "zarr3", "kvstore": {
            "driver": "file", "path": os.path.join(root, "data", name) + "/"}}, open=True).result()
            for name in ARRAYS}
        get = lambda name, a, b: t[name][a:b].read().result()  # noqa: E731
    bad = 0
    for rec in recs:
        for name in ARRAYS:
            got = _sha(np.ascontiguousarray(get(name, rec["start"], rec["stop"])).data)
            bad += got != rec["sha256"][name]
    return bad == 0


# ------------------------------------------------------- concurrent writers
def _concurrent_writer(kind, path, spec, shard_size, shards, barrier):
    barrier.wait()
    if kind == "zarr":
        import zarr

        a = zarr.open_array(path, mode="r+")
        for k in shards:
            s, e = _shard_range(spec.n_samples, shard_size, k)
            a[s:e] = generate_block(spec, s, e).videos
    else:
        import tensorstore as ts

        t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path + "/"}},
                    open=True).result()
        for k in shards:
            s, e = _shard_range(spec.n_samples, shard_size, k)
            t[s:e].write(generate_block(spec, s, e).videos).result()


def concurrent_check(kind, workdir):
    """Two processes write the even and odd shards of one array at once."""
    spec = _spec(8 * 32 - 5, 16, 64)   # a partial last shard too
    shard_size = 32
    n_shards = -(-spec.n_samples // shard_size)
    root = os.path.join(workdir, f"concurrent-{kind}")
    create_store(kind, root, spec, shard_size)
    path = os.path.join(root, "data", "videos")
    meta_before = open(os.path.join(path, "zarr.json"), "rb").read()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_concurrent_writer, args=(
        kind, path, spec, shard_size, list(range(w, n_shards, 2)), barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        return False, "a writer failed"
    import zarr

    got = zarr.open_array(path, mode="r")[:]
    want = generate_block(spec, 0, spec.n_samples).videos
    same_meta = open(os.path.join(path, "zarr.json"), "rb").read() == meta_before
    shutil.rmtree(root, ignore_errors=True)
    ok = bool(np.array_equal(got, want)) and same_meta
    return ok, f"{n_shards} shards, decoded == generated: {np.array_equal(got, want)}, " \
               f"zarr.json untouched: {same_meta}"


# ------------------------------------------------------- object storage
def s3_check(n_clips=256, shard_size=64, budget=1.0):
    """Against moto's S3 server on 127.0.0.1: conditional PUTs for a lease,
    the direct shard encoder through s3fs, zarr-python and tensorstore
    reading it, and random single-clip reads by ranged GET. Returns lines."""
    import socket
    import subprocess

    lines = []
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1")
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION")})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    t0 = time.perf_counter()
    srv = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import boto3
        import botocore
        import numcodecs
        import s3fs
        import zarr
        from zarr.storage import FsspecStore

        client = boto3.client("s3", endpoint_url=url)
        for _ in range(100):   # bounded wait for the server
            try:
                client.list_buckets()
                break
            except botocore.exceptions.EndpointConnectionError:
                time.sleep(0.2)
        lines.append(f"moto_server on {url} answered after {time.perf_counter() - t0:.1f} s")
        bucket = "trajlab-bench"
        client.create_bucket(Bucket=bucket)

        def refused(**kw):
            try:
                client.put_object(Bucket=bucket, Key="run/.lease.json", Body=b"{}", **kw)
                return "ACCEPTED"
            except botocore.exceptions.ClientError as exc:
                return f"refused ({exc.response['Error']['Code']})"

        etag = client.put_object(Bucket=bucket, Key="run/.lease.json", Body=b"{}",
                                 IfNoneMatch="*")["ETag"]
        lines.append(f"lease: create If-None-Match:* ok; again: {refused(IfNoneMatch='*')}")
        client.put_object(Bucket=bucket, Key="run/.lease.json", Body=b'{"hb": 1}', IfMatch=etag)
        lines.append(f"lease: renew If-Match ok; with the stale ETag: {refused(IfMatch=etag)}")

        spec = _spec(n_clips, 16, 64)
        root = f"{bucket}/run/data"
        fs = s3fs.S3FileSystem(endpoint_url=url, key="testing", secret="testing")
        afs = s3fs.S3FileSystem(endpoint_url=url, key="testing", secret="testing",
                                asynchronous=True)
        g = zarr.open_group(FsspecStore(afs, path=root), mode="w", zarr_format=3)
        g.create_array("videos", shape=(n_clips, 16, 3, 64, 64), dtype="uint8", fill_value=0,
                       chunks=(1, 16, 3, 64, 64), shards=(shard_size, 16, 3, 64, 64),
                       compressors=_zarr_codec_args())
        videos = generate_block(spec, 0, n_clips).videos
        codec = numcodecs.Zstd(level=ZSTD_LEVEL)
        t0 = time.perf_counter()
        for k in range(-(-n_clips // shard_size)):
            a, b = _shard_range(n_clips, shard_size, k)
            fs.pipe_file(f"{root}/videos/{_chunk_key(k, 5)}",
                         direct_shard_bytes(videos[a:b], shard_size, codec))
        lines.append(f"direct encoder -> s3fs PUT: {n_clips / (time.perf_counter() - t0):,.0f} "
                     "clips/s (one process)")
        got = zarr.open_array(FsspecStore(afs, path=root + "/videos", read_only=True), mode="r")[:]
        lines.append(f"zarr-python via s3fs decodes it equal: {np.array_equal(got, videos)}")
        try:
            import tensorstore as ts

            t = ts.open({"driver": "zarr3", "kvstore": {
                "driver": "s3", "bucket": bucket, "path": "run/data/videos/", "endpoint": url,
                "aws_region": "us-east-1"}}, open=True).result()
            lines.append(f"tensorstore S3 driver decodes it equal: "
                         f"{np.array_equal(t[:].read().result(), videos)}")
        except Exception as exc:   # report, do not hide, a driver failure
            lines.append(f"tensorstore S3 driver failed: {type(exc).__name__}: {exc}"[:200])
        # random single clips by ranged GET: shard index once per shard, then one GET per clip
        index = {}
        rng = np.random.default_rng(0)
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < budget:
            i = int(rng.integers(0, n_clips))
            k, j = divmod(i, shard_size)
            key = f"{root}/videos/{_chunk_key(k, 5)}"
            if k not in index:
                size = fs.size(key)
                raw = fs.cat_file(key, start=size - shard_size * 16 - 4, end=size)
                index[k] = np.frombuffer(raw[:-4], "<u8").reshape(-1, 2)
            off, n = (int(x) for x in index[k][j])
            out = np.empty(videos.shape[1:], np.uint8)
            codec.decode(fs.cat_file(key, start=off, end=off + n), out=out)
            count += 1
            if not np.array_equal(out, videos[i]):
                lines.append(f"ranged GET read of clip {i} differs")
                break
        lines.append(f"random single clips by ranged GET (moto, loopback): "
                     f"{count / (time.perf_counter() - t0):,.0f} clips/s (one process)")
    finally:
        srv.terminate()
        srv.wait(10)
    return lines


# --------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10x fewer clips, shorter reads")
    ap.add_argument("--full", action="store_true", help="the issue's sizes (30,000 and 100,000)")
    ap.add_argument("--sizes", default=None, metavar="N16,N8",
                    help="clips at 16x64^2 and at 8x32^2 (default 5000,25000)")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--read-seconds", type=float, default=None,
                    help="seconds per read mode and store (default 1.0, --quick 0.5)")
    ap.add_argument("--no-generate", action="store_true", help="skip the trajlab.generate row")
    ap.add_argument("--s3", action="store_true",
                    help="only the object-storage check, against moto_server on 127.0.0.1 "
                         "(needs moto[server] and s3fs)")
    args = ap.parse_args()
    if args.s3:
        print("Object storage (moto_server on 127.0.0.1, 256 clips of 16x3x64x64, 64 per shard)")
        for line in s3_check():
            print("  " + line)
        return
    if args.quick:
        configs = [(1_000, 16, 64, 128), (5_000, 8, 32, 512)]
    elif args.full:
        configs = [(30_000, 16, 64, 512), (100_000, 8, 32, 2048)]
    elif args.sizes:
        n16, n8 = (int(x) for x in args.sizes.split(","))
        configs = [(n16, 16, 64, 512), (n8, 8, 32, 2048)]
    else:
        configs = [(5_000, 16, 64, 512), (25_000, 8, 32, 2048)]
    budget = args.read_seconds or (0.5 if args.quick else 1.0)
    n_codec = 256 if args.quick else 1024

    import zarr
    from importlib.metadata import version

    _, numcodecs_version = _codecs()
    workdir = tempfile.mkdtemp(prefix="trajlab-bench-storage-", dir=args.dir)
    print(f"trajlab storage benchmark: n_jobs={args.n_jobs}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}, dir {workdir}")
    print(f"numpy {np.__version__}, zarr {zarr.__version__}, numcodecs {numcodecs_version}, "
          f"tensorstore {version('tensorstore')}; store codec zstd level {ZSTD_LEVEL}")
    t_all = time.perf_counter()
    try:
        # ---------------------------------------------------------- codecs
        codec_rows = {}
        for n, frames, size, shard_size in configs:
            videos = generate_block(_spec(n, frames, size), 0, n_codec).videos
            codec_rows[(frames, size)] = bench_codecs(videos)
            del videos
        print()
        print(f"Codecs: {n_codec} clips, one clip per call, one core (CPU time)")
        print(f"{'clip':>9} {'codec':>24} {'ratio':>7} {'B/clip':>7} {'compress/s':>11} "
              f"{'decompress/s':>13}  ok")
        for (frames, size), rows in codec_rows.items():
            for name, ratio, c, d, per, ok in rows:
                print(f"{frames:>3}x{size}^2 {name:>24} {ratio:>6.0f}x {per:>7.0f} {c:>11,.0f} "
                      f"{d:>13,.0f}  {ok}")

        # --------------------------------------------------- concurrency
        conc = {kind: concurrent_check(kind, workdir) for kind in ("zarr", "tensorstore")}
        print()
        for kind, (ok, msg) in conc.items():
            print(f"Two {kind} writers, same array, different shards, no lock: "
                  f"{'OK' if ok else 'FAILED'} ({msg})")

        # ----------------------------------------------- writes and reads
        results = []
        for n, frames, size, shard_size in configs:
            spec = _spec(n, frames, size)
            raw_bytes = n * frames * 3 * size * size
            print()
            print(f"{n:,} x {frames}x3x{size}x{size} ({raw_bytes / 1e9:.2f} GB of video), "
                  f"shard {shard_size} clips, {-(-n // shard_size)} shards", flush=True)
            kinds = ["render", "npy", "zarr", "tensorstore", "direct"]
            if not args.no_generate:
                kinds.insert(2, "trajlab.generate")
            for kind in kinds:
                root = os.path.join(workdir, f"{kind}-{frames}x{size}")
                row = {"config": (n, frames, size), "kind": kind}
                if kind == "trajlab.generate":
                    row["seconds"] = run_generate(root, spec, shard_size, args.n_jobs)
                    row["ok"] = None
                    row["rss"] = None
                else:
                    row["seconds"], recs, row["cpu"] = run_write(kind, root, spec, shard_size,
                                                                 args.n_jobs)
                    row["rss"] = max(r["peak_rss"] for r in recs)
                    row["ok"] = None if kind == "render" else decode_check(
                        kind, root, spec, shard_size, recs)
                if kind != "render":
                    row["disk"], row["logical"] = _disk_bytes(root)
                    row["parts"] = _parts(root, kind)
                if kind in ("npy", "zarr", "tensorstore", "direct"):
                    readers = {"npy": ["npy"], "zarr": ["zarr"],
                               "tensorstore": ["tensorstore", "tensorstore+cache"],
                               "direct": ["direct"]}[kind]
                    row["reads"] = {}
                    for rk in readers:
                        row["reads"][rk] = run_reads(rk, root, n, budget, args.n_jobs)
                shutil.rmtree(root, ignore_errors=True)
                results.append(row)
                extra = ("" if row["ok"] is None
                         else f", decoded (by another library) == records: {row['ok']}")
                print(f"  {kind:>16}: {row['seconds']:6.2f} s, {n / row['seconds']:>9,.0f} clips/s"
                      + (f", {row['disk'] / 1e6:,.1f} MB on disk" if "disk" in row else "")
                      + extra, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    # ------------------------------------------------------------- summary
    print()
    print(f"Summary (n_jobs={args.n_jobs}; writes end to end with fdatasync/fsync, wall time and "
          "clips per CPU-second of the writers; reads per process, "
          f"{args.n_jobs} readers at once, warm page cache, wall and per CPU-second; "
          "x = ratio to npy)")
    hdr = (f"{'config':>17} {'store':>17} {'write s':>8} {'clips/s':>9} {'x npy':>6} "
           f"{'clips/CPU-s':>11} {'disk MB':>9} {'npy/this':>9} {'writer RSS MB':>13} "
           f"{'reader':>17} {'1 clip/s':>9} {'x npy':>6} {'/CPU-s':>8} {'batch32 clips/s':>15} "
           f"{'x npy':>6} {'/CPU-s':>8}")
    print(hdr)
    for n, frames, size, _s in configs:
        rows = [r for r in results if r["config"] == (n, frames, size)]
        npy = next(r for r in rows if r["kind"] == "npy")
        npy_single, npy_batch = npy["reads"]["npy"][:2]
        for r in rows:
            cfg = f"{n:,}x{frames}x{size}^2"
            base = (f"{cfg:>17} {r['kind']:>17} {r['seconds']:>8.2f} {n / r['seconds']:>9,.0f} "
                    f"{npy['seconds'] / r['seconds']:>5.2f}x "
                    + (f"{n / r['cpu']:>11,.0f} " if r.get("cpu") else f"{'-':>11} ")
                    + (f"{r['disk'] / 1e6:>9,.1f} {npy['disk'] / r['disk']:>8.0f}x "
                       if "disk" in r else f"{'-':>9} {'-':>9} ")
                    + (f"{r['rss'] / 2**20:>13.0f}" if r["rss"] else f"{'-':>13}"))
            reads = r.get("reads") or {"-": None}
            for j, (rk, val) in enumerate(reads.items()):
                lead = base if j == 0 else " " * len(base)
                if val is None:
                    print(f"{lead} {'-':>17}")
                    continue
                single, batch, single_cpu, batch_cpu, late = val
                print(f"{lead} {rk:>17} {single:>9,.0f} {single / npy_single:>5.2f}x "
                      f"{single_cpu:>8,.0f} {batch:>15,.0f} {batch / npy_batch:>5.2f}x "
                      f"{batch_cpu:>8,.0f}" + (" (readers not concurrent)" if late else ""))
    print()
    print("Bytes by part (logical MB): videos / other arrays / annotations / records+metadata")
    for r in results:
        if "parts" in r:
            n, frames, size = r["config"]
            p = r["parts"]
            print(f"  {n:,}x{frames}x{size}^2 {r['kind']:>17}: " + " / ".join(
                f"{p[k] / 1e6:,.2f}" for k in ("videos", "other arrays", "annotations",
                                              "records+metadata")))
    if any(r["ok"] is False for r in results) or not all(ok for ok, _ in conc.values()):
        print("\nWARNING: a decoded array did not match its record (see above)")
    print(f"\nTotal benchmark time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
