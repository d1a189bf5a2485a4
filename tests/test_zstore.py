"""Storage format 2: a standard zarr v3 store, read by other zarr readers,
and refused when an object is not what trajlab writes.

The guarantees shared with format 1 (bytes, resume, corruption of every
file, symlinks) run on both formats in test_engine.py, test_dataset.py,
test_export.py and test_torchdata.py; this file holds what only format 2
has: the zarr metadata, the shard index and the zstd frames.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
import tracemalloc

import numpy as np
import pytest

import trajlab
from trajlab import DatasetSpec, RunDirError, generate, open_dataset, verify_run, zstore
from trajlab.generator import n_param_columns
from trajlab.storage import load_layout

from _util import small_run

N, T, S, SHARD = 30, 6, 16, 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return small_run(tmp_path_factory, "zstore", seed=4, n=N, frames=T, size=S, shard=SHARD)


@pytest.fixture()
def copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run["dir"], dst)
    return dst


def _arrays(run):
    ann = run["ann"]
    out = {"videos": run["videos"], "labels": run["labels"]}
    out.update({k: ann[k] for k in ("splits", "positions", "pixels", "depth", "radius", "K", "R",
                                    "t", "colors")})
    return out


# ------------------------------------------------------- other readers
def test_zarr_python_reads_every_array_as_generated(run):
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(f"{run['dir']}/data", mode="r")
    assert group.attrs["trajlab"]["fingerprint"] == run["spec"].fingerprint
    assert group.attrs["trajlab"]["format_version"] == 2
    ds = open_dataset(run["dir"])
    for name, want in _arrays(run).items():
        arr = group[name]
        assert arr.shape == want.shape and arr.dtype == want.dtype, name
        np.testing.assert_array_equal(arr[:], want, err_msg=name)
    np.testing.assert_array_equal(group["attempts"][:], np.asarray(ds.attempts))
    assert group["videos"].chunks == (1, T, 3, S, S)           # inner chunk: one clip
    assert group["videos"].shards == (SHARD, T, 3, S, S)       # storage shard = trajlab shard
    assert tuple(group["videos"].metadata.dimension_names) == zstore.DIMENSIONS["videos"]


def test_dask_reads_the_videos_lazily(run):
    da = pytest.importorskip("dask.array")
    pytest.importorskip("zarr")
    videos = da.from_zarr(f"{run['dir']}/data", component="videos")
    assert videos.shape == (N, T, 3, S, S)
    np.testing.assert_array_equal(videos[9:13].compute(), run["videos"][9:13])
    assert float(videos.mean().compute()) == pytest.approx(run["videos"].mean())


def test_trajlab_reads_what_zarr_python_writes(tmp_path, run):
    """The encoder and reader are trajlab's own: a store written by
    zarr-python from the same metadata must decode to the same bytes."""
    zarr = pytest.importorskip("zarr")
    layout = load_layout(run["dir"])[1]
    doc = zstore.array_document(layout, "videos")
    path = tmp_path / "videos"
    path.mkdir()
    (path / "zarr.json").write_text(json.dumps(doc))
    arr = zarr.open_array(str(path), mode="r+")
    arr[:] = run["videos"]
    for shard in range(layout.n_shards):
        raw = (path / zstore.chunk_key(layout, "videos", shard)).read_bytes()
        a, b = layout.shard_range(shard)
        got = zstore.decode_object(raw, layout, "videos", shard, "zarr-python's shard")
        np.testing.assert_array_equal(got, run["videos"][a:b])


def _tensorstore(path, **extra):
    ts = pytest.importorskip("tensorstore")
    return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
                    **extra}).result()


def test_tensorstore_reads_every_array_as_generated(run):
    """A second, independent implementation of zarr v3 sharding (C++):
    every array, whole and clip by clip in the short last shard."""
    ds = open_dataset(run["dir"])
    want = {**_arrays(run), "attempts": np.asarray(ds.attempts)}
    names = sorted(load_layout(run["dir"])[1].arrays())
    assert set(want) <= set(names) and "params" in names
    for name in names:
        got = _tensorstore(f"{run['dir']}/data/{name}").read().result()
        expected = want[name] if name in want else np.asarray(getattr(ds, name))
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        # NaN == NaN where the parameters leave a column unused
        np.testing.assert_array_equal(got, expected, err_msg=name)
    videos = _tensorstore(f"{run['dir']}/data/videos")
    assert tuple(videos.domain.labels) == zstore.DIMENSIONS["videos"]
    for i in (0, SHARD - 1, SHARD, N - 1):
        np.testing.assert_array_equal(videos[i].read().result(), run["videos"][i])


def test_trajlab_reads_what_tensorstore_writes(tmp_path, run):
    layout = load_layout(run["dir"])[1]
    path = tmp_path / "videos"
    path.mkdir()
    (path / "zarr.json").write_text(json.dumps(zstore.array_document(layout, "videos")))
    arr = _tensorstore(path)
    arr.write(run["videos"]).result()
    for shard in range(layout.n_shards):
        raw = (path / zstore.chunk_key(layout, "videos", shard)).read_bytes()
        a, b = layout.shard_range(shard)
        got = zstore.decode_object(raw, layout, "videos", shard, "tensorstore's shard")
        np.testing.assert_array_equal(got, run["videos"][a:b])


def test_compressed_dataset_is_small_and_the_manifest_says_how_small(run):
    ds = open_dataset(run["dir"])
    m = ds.manifest
    assert m["format_version"] == 2 and m["store"] == "zarr-v3" and m["codec"] == "zstd-fast1-crc32c"
    # every array, and the parameter matrix the annotations are made from
    width = n_param_columns(ds.spec)
    assert ds.layout.annotations == "params" and np.asarray(ds.params).shape == (30, width)
    assert m["raw_bytes"] == sum(a.nbytes for a in _arrays(run).values()) \
        + np.asarray(ds.attempts).nbytes + np.asarray(ds.params).nbytes
    assert m["stored_bytes"]["params"] > 0 and "annotations" not in m["stored_bytes"]
    assert m["stored_bytes"]["videos"] * 10 < run["videos"].nbytes
    assert m["compression_ratio"] == round(m["raw_bytes"] / m["stored_bytes"]["total"], 1)


# ------------------------------------------------------- array views
@pytest.mark.parametrize("key", [0, -1, 17, np.int64(5), slice(None), slice(3, 20, 4),
                                 slice(-5, None), slice(20, 3, -3), [29, 0, 8, 8, 15],
                                 np.array([2, 2, 1]), np.arange(N) % 3 == 0, (4, 2),
                                 (slice(0, 9), 0, 1), (np.array([1, 9]), slice(None), 0),
                                 (Ellipsis, 0), ()])
def test_views_index_like_numpy(run, key):
    ds = open_dataset(run["dir"])
    for name, want in (("videos", run["videos"]), ("pixels", run["ann"]["pixels"]),
                       ("labels", run["labels"])):
        if isinstance(key, tuple) and len(key) > want.ndim:
            continue
        got = ds.arrays[name][key]
        np.testing.assert_array_equal(got, want[key], err_msg=f"{name}[{key!r}]")
        assert np.asarray(got).dtype == want.dtype


@pytest.mark.parametrize("key", [N, -N - 1, [0, N], np.ones(N - 1, dtype=bool), 1.5, "3"])
def test_views_refuse_what_numpy_refuses(run, key):
    view = open_dataset(run["dir"]).videos
    with pytest.raises(IndexError):
        view[key]


def test_views_have_the_array_attributes(run):
    ds = open_dataset(run["dir"])
    v = ds.videos
    assert (v.shape, v.dtype, v.ndim, len(v)) == ((N, T, 3, S, S), np.uint8, 5, N)
    np.testing.assert_array_equal(np.asarray(v), run["videos"])
    assert np.asarray(ds.labels, dtype=np.float32).dtype == np.float32


# ------------------------------------------------ hostile objects
def _videos_object(rd, shard):
    layout = load_layout(rd)[1]
    return zstore.object_path(str(rd), layout, "videos", shard), layout


def _rewrite_index(rd, shard, edit):
    """Change the shard index of a videos object; the crc32c is recomputed
    unless ``edit`` returns False (a crafted, self-consistent index)."""
    path, layout = _videos_object(rd, shard)
    raw = bytearray(open(path, "rb").read())
    n = layout.shard_size * 16
    idx = np.frombuffer(bytes(raw[-n - 4:-4]), dtype="<u8").reshape(-1, 2).copy()
    keep_crc = edit(idx) is False
    body = idx.astype("<u8").tobytes()
    crc = raw[-4:] if keep_crc else struct.pack("<I", zstore._crc32c(body))
    raw[-n - 4:] = body + crc
    open(path, "wb").write(bytes(raw))


def _refused_by_verify_and_load(rd, shard, pattern):
    rep = verify_run(rd)
    assert not rep["ok"]
    assert any(s == shard and __import__("re").search(pattern, r) for s, _, r in rep["bad"]), \
        rep["bad"]
    ds = open_dataset(rd)
    with pytest.raises(RunDirError, match=pattern):
        ds.video(shard * SHARD)
    with pytest.raises(RunDirError, match=pattern):
        open_dataset(rd, verify="none").videos[shard * SHARD]
    with pytest.raises(RunDirError, match=pattern):
        open_dataset(rd, verify="full")


@pytest.mark.parametrize("edit,pattern", [
    (lambda idx: idx.__setitem__((1, 0), idx[0, 0]), "overlapping clips"),
    (lambda idx: idx.__setitem__((2, 1), 2**40), "missing or impossible entry"),
    (lambda idx: idx.__setitem__((2, 0), 2**40), "pointing outside the object"),
    (lambda idx: idx.__setitem__(3, zstore.ABSENT), "missing or impossible entry"),
    (lambda idx: idx.__setitem__((0, 0), 3) or False, "crc32c does not match"),
])
def test_crafted_shard_index_is_refused_by_verify_and_load(copy, edit, pattern):
    _rewrite_index(copy, 1, edit)
    _refused_by_verify_and_load(copy, 1, pattern)


def test_clips_listed_past_the_last_sample_are_refused(copy):
    last = -(-N // SHARD) - 1            # the edge shard holds N % SHARD clips
    _rewrite_index(copy, last, lambda idx: idx.__setitem__(N % SHARD, idx[0]))
    rep = verify_run(copy)
    assert any(s == last and "past the end" in r for s, _, r in rep["bad"])


def _frame_claiming(size, payload=b"\x00" * 16):
    """A zstd frame (RFC 8878) whose header declares ``size`` decoded bytes
    and that holds one raw block of ``payload``."""
    import zstandard

    header = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", size)  # 8-byte FCS
    block = struct.pack("<I", (len(payload) << 3) | 1)[:3] + payload           # last, raw
    frame = header + block
    assert zstandard.frame_content_size(frame) == size
    return frame


def test_a_chunk_declaring_a_huge_size_is_refused_before_allocating(copy):
    layout = load_layout(copy)[1]
    path = zstore.object_path(str(copy), layout, "positions", 0)
    # sealed with a valid crc32c: what a crafted object can do
    open(path, "wb").write(zstore.seal(_frame_claiming(2**40), layout.codec))
    tracemalloc.start()
    try:
        rep = verify_run(copy)
        with pytest.raises(RunDirError, match="declares 1099511627776 decoded bytes"):
            open_dataset(copy, verify="none").positions[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20
    assert any(s == 0 and "declares 1099511627776 decoded bytes" in r for s, _, r in rep["bad"])


def test_a_clip_declaring_a_huge_size_is_refused(copy):
    """A self-consistent shard whose first clip is a frame claiming 1 TB."""
    path, layout = _videos_object(copy, 0)
    rows = zstore.read_shard(str(copy), layout, "videos", 0)
    obj = zstore.encode(layout, "videos", rows)
    n = layout.shard_size * 16
    idx = np.frombuffer(obj[-n - 4:-4], dtype="<u8").reshape(-1, 2).astype(np.int64)
    bomb = zstore.seal(_frame_claiming(2**40), layout.codec)
    data = bomb + obj[idx[1, 0]:idx[-1, 0] + idx[-1, 1]]
    shift = len(bomb) - int(idx[1, 0])
    idx[0] = (0, len(bomb))
    idx[1:, 0] += shift
    body = idx.astype("<u8").tobytes()
    open(path, "wb").write(data + body + struct.pack("<I", zstore._crc32c(body)))
    _refused_by_verify_and_load(copy, 0, "declares 1099511627776 decoded bytes")


def test_bytes_appended_to_a_chunk_are_refused(copy):
    layout = load_layout(copy)[1]
    path = zstore.object_path(str(copy), layout, "labels", 2)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw + raw)           # a second valid frame: other readers differ
    rep = verify_run(copy)
    assert any(s == 2 and "does not decode" in r for s, _, r in rep["bad"]), rep["bad"]
    with pytest.raises(RunDirError, match="does not decode"):
        open_dataset(copy, verify="none").labels[2 * SHARD]


def test_an_object_larger_than_trajlab_writes_is_not_read(copy):
    path, layout = _videos_object(copy, 0)
    with open(path, "ab") as fh:
        fh.truncate(zstore.max_object_bytes(layout, "videos") + 1)
    rep = verify_run(copy)
    assert any(s == 0 and "larger" in r for s, _, r in rep["bad"]), rep["bad"]
    with pytest.raises(RunDirError, match="larger"):
        open_dataset(copy, verify="none").videos[0]


def test_bytes_between_clips_decode_but_are_refused_by_size(copy):
    """Padding inserted between clips with a consistent index decodes to
    the right clips; the object is still not the one recorded."""
    path, layout = _videos_object(copy, 1)
    rows = zstore.read_shard(str(copy), layout, "videos", 1)
    obj = zstore.encode(layout, "videos", rows)
    n = layout.shard_size * 16
    idx = np.frombuffer(obj[-n - 4:-4], dtype="<u8").reshape(-1, 2).copy()
    data = b"PAD!" + obj[:-n - 4]
    idx[:, 0] += 4
    body = idx.astype("<u8").tobytes()
    open(path, "wb").write(data + body + struct.pack("<I", zstore._crc32c(body)))
    np.testing.assert_array_equal(zstore.read_shard(str(copy), layout, "videos", 1), rows)
    rep = verify_run(copy)
    assert any(s == 1 and "its record says" in r for s, _, r in rep["bad"]), rep["bad"]
    with pytest.raises(RunDirError, match="its record says"):
        open_dataset(copy).video(SHARD)
    proc = trajlab.engine.repair(str(copy))
    assert proc["dropped"] == [1]
    res = generate(DatasetSpec(n_samples=N, n_frames=T, image_size=S, seed=4), copy,
                   progress="none")
    assert res.shards_generated == 1 and verify_run(copy)["ok"]


def test_every_shard_object_is_written_whole(run):
    """Each object decodes on its own: no shard depends on another."""
    layout = load_layout(run["dir"])[1]
    for name in layout.arrays():
        for shard in range(layout.n_shards):
            a, b = layout.shard_range(shard)
            got = zstore.read_shard(run["dir"], layout, name, shard)
            assert got.shape[0] == b - a
    assert layout.to_dict()["store"] == "zarr-v3"


@pytest.mark.parametrize("fmt", [2, 1])
def test_open_dataset_reads_the_same_files_whatever_the_shard_count(tmp_path, monkeypatch, fmt):
    """O(1) open: spec.json, the manifest and the metadata, never a record
    or a shard object (those are read on first use of their shard)."""
    import os

    spec = DatasetSpec(n_samples=N, n_frames=T, image_size=S, seed=4)
    for shard in (N, 1):
        generate(spec, tmp_path / f"s{shard}", n_jobs=1, shard_size=shard, progress="none",
                 format_version=fmt)
    real, seen = os.open, []
    monkeypatch.setattr(os, "open", lambda path, *a, **k: (seen.append(str(path)),
                                                            real(path, *a, **k))[1])
    opened = {}
    for shard in (N, 1):
        seen.clear()
        ds = open_dataset(tmp_path / f"s{shard}")
        opened[shard] = sorted(os.path.relpath(p, tmp_path / f"s{shard}") for p in seen)
        assert ds.layout.n_shards == N // shard
    assert opened[1] == opened[N]            # 1 shard or 30: the same files
    assert not [p for p in opened[1] if p.startswith("shards") or "/c." in p
                or p.startswith("annotations")]


# ------------------------------------------------------- streamed videos
@pytest.mark.parametrize("options", [{}, {"style": "trail", "object_color": "random"},
                                     {"pixel_noise": 3.0}], ids=str)
def test_videos_rendered_in_pieces_are_the_videos_rendered_whole(tmp_path, monkeypatch,
                                                                 options):
    # write_shard renders, hashes and compresses the videos piece by piece
    # (not with pixel noise): any piece size gives the object and the
    # checksum of the whole shard rendered at once
    from trajlab import storage
    from trajlab.generator import generate_samples

    spec = DatasetSpec(n_samples=45, n_frames=6, image_size=16, seed=8, **options)
    layout = storage.RunLayout(spec, 20, 2)
    whole = trajlab.make_trajectories(spec=spec)[0]
    objects = []
    for piece_bytes in (1, 5 * 6 * 3 * 16 * 16, 2**30):
        monkeypatch.setattr(storage, "STREAM_BYTES", piece_bytes)
        rd = tmp_path / f"rd{piece_bytes}"
        rd.mkdir()
        layout.preallocate(str(rd))
        recs = [storage.write_shard(str(rd), layout, s) for s in range(layout.n_shards)]
        objects.append([(rd / "data" / "videos" / zstore.chunk_key(layout, "videos", s))
                        .read_bytes() for s in range(layout.n_shards)])
        for s, rec in enumerate(recs):
            a, b = layout.shard_range(s)
            assert rec["xxh3_128"]["videos"] == layout.digest(whole[a:b].tobytes())
            assert objects[-1][s] == zstore.encode(layout, "videos", whole[a:b])
    assert objects[0] == objects[1] == objects[2]
    if options.get("pixel_noise"):
        with pytest.raises(ValueError, match="render_videos=False needs pixel_noise == 0"):
            generate_samples(spec, np.arange(4), render_videos=False)


def test_generate_seconds_count_the_rendering_of_streamed_videos(tmp_path, monkeypatch):
    # the record's generate_seconds is trajectories plus rendering, also
    # where rendering is interleaved with hashing and compression
    from trajlab import storage

    calls = []
    real = storage.render_rows

    def slow(*args, **kwargs):
        calls.append(1)
        time.sleep(0.03)
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "render_rows", slow)
    monkeypatch.setattr(storage, "STREAM_BYTES", 4 * 6 * 3 * 16 * 16)
    spec = DatasetSpec(n_samples=20, n_frames=6, image_size=16, seed=8)
    layout = storage.RunLayout(spec, 20, 2)
    layout.preallocate(str(tmp_path))
    rec = storage.write_shard(str(tmp_path), layout, 0)
    assert len(calls) == 5                              # 20 clips in pieces of 4
    assert 0.03 * len(calls) <= rec["generate_seconds"] <= rec["seconds"]


def test_a_video_object_holds_its_compressed_size_not_the_bound_of_each_clip():
    # python-zstandard leaves every frame at zstd's bound (24 KiB for a
    # 8x32^2 clip of ~250 compressed bytes): a shard kept as frames held
    # ~97 MiB, its object is ~1 MiB
    from trajlab.storage import RunLayout

    spec = DatasetSpec(n_samples=2048, n_frames=8, image_size=32, seed=3)
    layout = RunLayout(spec, 2048, 2)
    videos = trajlab.make_trajectories(spec=spec)[0]
    piece = 128
    tracemalloc.start()
    try:
        obj = zstore.VideoObject(layout)
        for a in range(0, 2048, piece):
            obj.add(videos[a:a + piece])
        held = tracemalloc.get_traced_memory()[0]
        out = obj.finish()
    finally:
        tracemalloc.stop()
    bound_of_a_piece = piece * zstore.compress_bound(videos[0].nbytes)
    assert held < len(out) + 2 * bound_of_a_piece, (held, len(out))
    assert out == zstore.encode(layout, "videos", videos)


def test_a_video_object_built_in_pieces_is_the_encoded_shard():
    spec = DatasetSpec(n_samples=30, n_frames=4, image_size=16, seed=2)
    from trajlab.storage import RunLayout

    layout = RunLayout(spec, 16, 2)
    videos = trajlab.make_trajectories(spec=spec)[0]
    for a, b in ((0, 16), (16, 30)):
        obj = zstore.VideoObject(layout)
        for k in range(a, b, 3):
            obj.add(videos[k:min(b, k + 3)])
        assert obj.finish() == zstore.encode(layout, "videos", videos[a:b])
