"""trajlab.torchdata: torch datasets over a run directory.

The in-memory generator (make_trajectories) is the oracle for every value.
"""

from __future__ import annotations

import gc
import os
import pickle
import re
import shutil

import numpy as np
import pytest
from _util import FORMATS, array_file, damage_sample, small_run

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

import trajlab  # noqa: E402
from trajlab.generator import SPLITS  # noqa: E402
from trajlab.storage import RunDirError, read_json  # noqa: E402
from trajlab.torchdata import TrajectoryForecastDataset, TrajectoryVideoDataset  # noqa: E402

N, T, S, SHARD = 40, 8, 16, 8


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """A finished run dir (5 shards of 8, default format) and the in-memory oracle."""
    return small_run(tmp_path_factory, "torchdata", seed=3, n=N, frames=T, size=S, shard=SHARD)


@pytest.fixture(scope="session", params=FORMATS, ids=lambda f: f"format{f}")
def any_run(tmp_path_factory, request):
    """The same dataset in each storage format."""
    return small_run(tmp_path_factory, "torchdata", seed=3, n=N, frames=T, size=S, shard=SHARD,
                     fmt=request.param)


@pytest.fixture
def run_copy(any_run, tmp_path):
    """A private copy of the run dir (each format), free to damage."""
    dst = tmp_path / "run"
    shutil.copytree(any_run["dir"], dst)
    return str(dst)


def _flip_video_byte(run_dir, sample):
    """One decoded byte of ``sample``'s video differs."""
    damage_sample(run_dir, "videos", sample)


def _mismatch(run_dir, shard):
    return rf"Shard {shard} of .* corrupted: checksum mismatch in {re.escape(array_file(run_dir, 'videos'))}"


FIELDS = ("pixels", "positions", "depth", "radius", "K", "R", "t", "colors", "split", "index")


def test_both_formats_give_the_same_items(any_run, run):
    for item in ("pair", "dict"):
        a = TrajectoryVideoDataset(any_run["dir"], split="train", item=item, fields=FIELDS if item == "dict" else ())
        b = TrajectoryVideoDataset(run["dir"], split="train", item=item, fields=FIELDS if item == "dict" else ())
        assert len(a) == len(b) > 0
        for k in (0, len(a) // 2, len(a) - 1):
            x, y = a[k], b[k]
            for u, w in zip(x.values() if item == "dict" else x,
                            y.values() if item == "dict" else y, strict=True):
                assert torch.equal(torch.as_tensor(u), torch.as_tensor(w))


# ----------------------------------------------------------- values
def test_uint8_items_are_the_generated_bytes(run):
    ds = TrajectoryVideoDataset(run["dir"], split=None, dtype="uint8")
    assert len(ds) == N
    for i in range(N):
        video, label = ds[i]
        assert video.dtype == torch.uint8 and video.shape == (T, 3, S, S)
        np.testing.assert_array_equal(video.numpy(), run["videos"][i])
        assert type(label) is int and label == run["labels"][i]


def test_float_items_are_bytes_over_255(run):
    ds = TrajectoryVideoDataset(run["dir"], split=None)
    expected = torch.from_numpy(run["videos"]).float() / 255
    for i in (0, 17, N - 1, -1):
        video, _ = ds[i]
        assert video.dtype == torch.float32
        assert torch.equal(video, expected[i])
    assert 0.0 <= float(expected.min()) and float(expected.max()) <= 1.0
    assert float(expected.max()) == 1.0       # white dot on black: full range used


@pytest.mark.parametrize("split", SPLITS)
def test_split_indices_match_generator_and_manifest(run, split):
    ds = TrajectoryVideoDataset(run["dir"], split=split, dtype="uint8")
    code = SPLITS.index(split)
    np.testing.assert_array_equal(ds.indices, np.flatnonzero(run["ann"]["splits"] == code))
    manifest = read_json(os.path.join(run["dir"], "manifest.json"))
    assert len(ds) == sum(manifest["split_counts"][split].values())
    for k in range(len(ds)):
        video, label = ds[k]
        np.testing.assert_array_equal(video.numpy(), run["videos"][ds.indices[k]])
        assert label == run["labels"][ds.indices[k]]


def test_splits_partition_the_dataset(run):
    parts = [TrajectoryVideoDataset(run["dir"], split=s).indices for s in SPLITS]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(N))
    assert len(parts[0]) > len(parts[1]) > 0


def test_transform_and_target_transform_are_applied(run):
    ds = TrajectoryVideoDataset(run["dir"], split=None, dtype="uint8",
                                transform=lambda v: v[:, 0].sum(),
                                target_transform=lambda y: ("label", y))
    video, label = ds[5]
    assert int(video) == int(run["videos"][5][:, 0].astype(np.int64).sum())
    assert label == ("label", int(run["labels"][5]))


def test_index_out_of_range(run):
    ds = TrajectoryVideoDataset(run["dir"], split="val")
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]


def test_repr_is_readable(run):
    text = repr(TrajectoryVideoDataset(run["dir"], split="val", dtype="uint8"))
    assert run["dir"] in text and "Split: val" in text
    assert f"Number of datapoints: {len(TrajectoryVideoDataset(run['dir'], split='val'))}" in text
    assert f"({T}, 3, {S}, {S}) uint8" in text
    assert "linear, circular, helical, parabolic" in text
    assert "Context frames: 4, future frames: 4" in repr(TrajectoryForecastDataset(run["dir"]))


# ----------------------------------------------------- multiprocessing
def test_pickle_holds_no_arrays_and_reopens(run):
    ds = TrajectoryVideoDataset(run["dir"], split=None)
    ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000          # path, indices, spec: no memory-mapped data
    clone = pickle.loads(blob)
    assert clone._data is None
    assert torch.equal(clone[3][0], ds[3][0])
    assert clone._data is not None


def test_reopens_after_fork(run):
    ds = TrajectoryVideoDataset(run["dir"], split=None)
    first = ds._dataset()
    ds._pid = -1                        # what a forked worker sees
    assert ds._dataset() is not first
    assert torch.equal(ds[1][0], torch.from_numpy(run["videos"][1]).float() / 255)


def _batches(ds, **kw):
    return list(DataLoader(ds, batch_size=6, shuffle=False, **kw))


def test_dataloader_workers_match_sequential(run):
    ds = TrajectoryVideoDataset(run["dir"], split=None)
    ref = _batches(ds, num_workers=0)
    got = _batches(ds, num_workers=2)
    assert len(got) == len(ref) == -(-N // 6)
    for (v0, y0), (v1, y1) in zip(ref, got):
        assert torch.equal(v0, v1) and torch.equal(y0, y1)
    fc = TrajectoryForecastDataset(run["dir"], split=None)
    for b0, b1 in zip(_batches(fc, num_workers=0), _batches(fc, num_workers=2)):
        assert b0.keys() == b1.keys()
        assert all(torch.equal(b0[k], b1[k]) for k in b0)


@pytest.mark.slow                       # spawned workers import torch: 2-6 s
def test_dataloader_spawn_workers_match_sequential(run):
    ds = TrajectoryVideoDataset(run["dir"], split="train", dtype="uint8")
    ref = _batches(ds, num_workers=0)
    got = _batches(ds, num_workers=2, multiprocessing_context="spawn")
    for (v0, y0), (v1, y1) in zip(ref, got, strict=True):
        assert torch.equal(v0, v1) and torch.equal(y0, y1)


# ------------------------------------------------------------- damage
def test_flipped_byte_raises_for_that_shard_only(run_copy):
    _flip_video_byte(run_copy, 2 * SHARD + 3)            # sample 19, shard 2
    ds = TrajectoryVideoDataset(run_copy, split=None, dtype="uint8")
    ds[0]                                                # shard 0 is intact
    for i in (2 * SHARD, 2 * SHARD + 3):
        with pytest.raises(RunDirError, match=_mismatch(run_copy, 2)):
            ds[i]
    with pytest.raises(RuntimeError, match="corrupted"):  # still raises: never cached as good
        ds[2 * SHARD + 3]
    fc = TrajectoryForecastDataset(run_copy, split=None)
    with pytest.raises(RunDirError, match="Shard 2"):
        fc[2 * SHARD + 1]


# After a worker raised, torch's DataLoader waits its 5 s join timeout per
# worker when the iterator is collected: slow.
@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_flipped_byte_in_dataloader_raises(run_copy, workers):
    _flip_video_byte(run_copy, 5)
    ds = TrajectoryVideoDataset(run_copy, split=None)
    it = iter(DataLoader(ds, batch_size=6, num_workers=workers))
    with pytest.raises(RunDirError, match=_mismatch(run_copy, 0)) as err:
        list(it)
    del err, it
    gc.collect()                        # shut the workers down inside this test


def test_verify_full_raises_at_construction(run_copy):
    _flip_video_byte(run_copy, N - 1)
    with pytest.raises(RunDirError, match="Shard 4"):
        TrajectoryVideoDataset(run_copy, verify="full")
    ds = TrajectoryVideoDataset(run_copy, split=None, verify="none")   # explicit opt-out
    ds[N - 1]


def test_missing_dataset_raises_with_guidance(tmp_path):
    with pytest.raises(RuntimeError, match=r"does not exist.*trajlab generate"):
        TrajectoryVideoDataset(tmp_path / "nope")
    with pytest.raises(RunDirError, match=r"not a trajlab run directory.*trajlab generate"):
        TrajectoryForecastDataset(tmp_path)


def test_incomplete_dataset_raises_with_guidance(run_copy):
    os.remove(os.path.join(run_copy, "manifest.json"))
    os.remove(os.path.join(run_copy, "shards", "00003.json"))
    with pytest.raises(RuntimeError, match=r"incomplete \(4 of 5 shards.*trajlab generate"):
        TrajectoryVideoDataset(run_copy)


def test_truncated_file_raises(run_copy):
    damage_sample(run_copy, "videos", N - 1, how="truncate")
    if trajlab.storage.load_layout(run_copy)[1].format_version == 1:
        with pytest.raises(RuntimeError, match="truncated"):     # file sizes: checked at open
            TrajectoryVideoDataset(run_copy)
        return
    ds = TrajectoryVideoDataset(run_copy, split=None)            # objects: on first use
    ds[0]
    with pytest.raises(RunDirError, match=r"data/videos/c\.4\.0\.0\.0\.0 is too short|shard index"):
        ds[N - 1]


# ------------------------------------------------------------ forecast
@pytest.mark.parametrize("c,f", [(None, None), (1, None), (3, 2), (T - 1, 1)])
def test_forecast_shapes_values_and_no_overlap(run, c, f):
    ds = TrajectoryForecastDataset(run["dir"], split="val", n_context=c, n_future=f)
    c = T // 2 if c is None else c
    f = T - c if f is None else f
    assert (ds.n_context, ds.n_future) == (c, f)
    pos, pix = run["ann"]["positions"], run["ann"]["pixels"]
    for k in range(len(ds)):
        d = ds[k]
        i = int(ds.indices[k])
        assert d["index"] == i and d["label"] == run["labels"][i]
        clip = torch.from_numpy(run["videos"][i]).float() / 255
        assert d["context"].shape == (c, 3, S, S) and d["future"].shape == (f, 3, S, S)
        assert torch.equal(d["context"], clip[:c]) and torch.equal(d["future"], clip[c:c + f])
        assert d["context_pixels"].shape == (c, 2) and d["future_positions"].shape == (f, 3)
        np.testing.assert_array_equal(d["context_pixels"].numpy(), pix[i, :c].astype(np.float32))
        np.testing.assert_array_equal(d["future_pixels"].numpy(),
                                      pix[i, c:c + f].astype(np.float32))
        np.testing.assert_array_equal(d["context_positions"].numpy(),
                                      pos[i, :c].astype(np.float32))
        np.testing.assert_array_equal(d["future_positions"].numpy(),
                                      pos[i, c:c + f].astype(np.float32))
        # No overlap: input frames 0..c-1, target frames c..c+f-1, separate memory.
        d["context"].fill_(-1.0)
        assert torch.equal(d["future"], clip[c:c + f])
        for a, b in (("context", "future"), ("context_pixels", "future_pixels"),
                     ("context_positions", "future_positions")):
            assert d[a].untyped_storage().data_ptr() != d[b].untyped_storage().data_ptr()


def test_forecast_transform_applies_to_whole_clip(run):
    ds = TrajectoryForecastDataset(run["dir"], split=None, n_context=3, dtype="uint8",
                                   transform=lambda v: v.flip(-1))
    d = ds[7]
    clip = torch.from_numpy(run["videos"][7]).flip(-1)
    assert torch.equal(d["context"], clip[:3]) and torch.equal(d["future"], clip[3:])


def test_forecast_bad_lengths(run):
    own = "TrajectoryForecastDataset"
    with pytest.raises(ValueError, match=re.escape(
            f"The 'n_context' parameter of {own} must be an int in the range [1, {T - 1}]. "
            f"Got {T} instead.")):
        TrajectoryForecastDataset(run["dir"], n_context=T)
    with pytest.raises(ValueError, match=re.escape("in the range [1, inf). Got 0 instead.")):
        TrajectoryForecastDataset(run["dir"], n_context=0)
    with pytest.raises(ValueError, match=re.escape(
            f"The 'n_future' parameter of {own} must be an int in the range [1, 3]. "
            "Got 4 instead.")):
        TrajectoryForecastDataset(run["dir"], n_context=5, n_future=4)
    with pytest.raises(TypeError, match="'n_context' parameter"):
        TrajectoryForecastDataset(run["dir"], n_context=2.0)


# ---------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,exc,match", [
    ({"split": "training"}, ValueError,
     "The 'split' parameter of TrajectoryVideoDataset must be one of "
     "{'train', 'val', 'test', None}. Got 'training' instead."),
    ({"dtype": "float16"}, ValueError, "The 'dtype' parameter of TrajectoryVideoDataset"),
    ({"verify": "yes"}, ValueError, "The 'verify' parameter of TrajectoryVideoDataset"),
])
def test_bad_arguments(run, kwargs, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        TrajectoryVideoDataset(run["dir"], **kwargs)


def test_bad_root_type():
    with pytest.raises(TypeError, match="The 'root' parameter of TrajectoryVideoDataset"):
        TrajectoryVideoDataset(42)


# ------------------------------------------------------- view options
from trajlab.torchdata import (FIELDS, LAYOUTS, VALUE_RANGES, OnTheFlyForecastDataset,  # noqa: E402
                               OnTheFlyVideoDataset)

# Axis orders written out by hand from the raw (T, 3, H, W) bytes.
_AXES = {"TCHW": (0, 1, 2, 3), "CTHW": (1, 0, 2, 3), "THWC": (0, 2, 3, 1)}


def _expected_video(raw, layout, value_range):
    x = np.transpose(raw, _AXES[layout])
    if value_range == "uint8":
        return x
    lo, hi = value_range
    return lo + (hi - lo) * x.astype(np.float64) / 255.0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("value_range", VALUE_RANGES)
@pytest.mark.parametrize("item", ["pair", "video", "dict"])
def test_every_view_matches_the_raw_bytes(run, layout, value_range, item):
    ds = TrajectoryVideoDataset(run["dir"], split=None, layout=layout,
                                value_range=value_range, item=item)
    shape = {"TCHW": (T, 3, S, S), "CTHW": (3, T, S, S), "THWC": (T, S, S, 3)}[layout]
    for i in (0, 9, N - 1):
        got = ds[i]
        if item == "pair":
            video, label = got
            assert label == run["labels"][i]
        elif item == "dict":
            assert set(got) == {"video", "label"}
            video, label = got["video"], got["label"]
            assert label == run["labels"][i]
        else:
            video = got
            assert isinstance(video, torch.Tensor)
        assert tuple(video.shape) == shape and video.is_contiguous()
        want = _expected_video(run["videos"][i], layout, value_range)
        if value_range == "uint8":
            assert video.dtype == torch.uint8
            np.testing.assert_array_equal(video.numpy(), want)
        else:
            assert video.dtype == torch.float32
            np.testing.assert_allclose(video.numpy(), want, rtol=0, atol=1e-6)
            # the ends of the range are hit exactly (background 0, white dot 255)
            raw = np.transpose(run["videos"][i], _AXES[layout])
            assert (video.numpy()[raw == 0] == value_range[0]).all()
            assert (video.numpy()[raw == 255] == value_range[1]).all()


def test_value_range_spellings_and_dtype_alias(run):
    a = TrajectoryVideoDataset(run["dir"], split=None, value_range=[-1.0, 1.0], item="video")
    b = TrajectoryVideoDataset(run["dir"], split=None, value_range=(-1, 1), item="video")
    assert a.value_range == (-1, 1) and torch.equal(a[3], b[3])
    c = TrajectoryVideoDataset(run["dir"], split=None, dtype="uint8", item="video")
    assert c.value_range == "uint8" and c[3].dtype == torch.uint8
    with pytest.raises(ValueError, match="The 'dtype' parameter of TrajectoryVideoDataset"):
        TrajectoryVideoDataset(run["dir"], dtype="uint8", value_range=(0, 1))


def test_dict_items_carry_the_requested_ground_truth(run):
    ds = TrajectoryVideoDataset(run["dir"], split="test", item="dict", fields=FIELDS,
                                value_range="uint8")
    ann = run["ann"]
    for k in range(len(ds)):
        d = ds[k]
        i = int(ds.indices[k])
        assert d["index"] == i and d["label"] == run["labels"][i]
        assert d["split"] == SPLITS.index("test")
        np.testing.assert_array_equal(d["video"].numpy(), run["videos"][i])
        for name in ("pixels", "positions", "depth", "radius", "K", "R", "t"):
            assert d[name].dtype == torch.float32
            np.testing.assert_array_equal(d[name].numpy(), ann[name][i].astype(np.float32))
        assert d["colors"].dtype == torch.uint8
        np.testing.assert_array_equal(d["colors"].numpy(), ann["colors"][i])
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["pixels"].shape == (3, T, 2) and batch["video"].shape == (3, T, 3, S, S)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"layout": "NCHW"}, ValueError, "The 'layout' parameter of TrajectoryVideoDataset must be "
     "one of {'TCHW', 'CTHW', 'THWC'}. Got 'NCHW' instead."),
    ({"value_range": (0, 255)}, ValueError, "The 'value_range' parameter of "
     "TrajectoryVideoDataset must be one of {(0, 1), (-1, 1), 'uint8'}. Got (0, 255) instead."),
    ({"value_range": "float"}, ValueError, "'value_range' parameter"),
    ({"item": "tuple"}, ValueError, "The 'item' parameter of TrajectoryVideoDataset must be one "
     "of {'pair', 'video', 'dict'}. Got 'tuple' instead."),
    ({"item": "dict", "fields": ("pixel",)}, ValueError, "The 'fields' parameter of "
     "TrajectoryVideoDataset must be one of {'pixels', "),
    ({"fields": ("pixels",)}, ValueError, "'fields' parameter of TrajectoryVideoDataset must be "
     "empty unless item='dict'"),
    ({"item": "dict", "fields": 3}, TypeError, "'fields' parameter"),
    ({"transform": 3}, TypeError, "The 'transform' parameter of TrajectoryVideoDataset must be "
     "a callable or None. Got 3 instead."),
])
def test_bad_view_options(run, kwargs, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        TrajectoryVideoDataset(run["dir"], **kwargs)


@pytest.mark.parametrize("bad", [1.5, "3", None])
def test_non_integer_index_raises(run, bad):
    ds = TrajectoryVideoDataset(run["dir"], split=None)
    with pytest.raises(TypeError, match="indices must be integers"):
        ds[bad]
    assert torch.equal(ds[np.int64(2)][0], ds[2][0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forecast_layouts_cut_along_time(run, layout):
    ds = TrajectoryForecastDataset(run["dir"], split=None, n_context=3, layout=layout,
                                   value_range="uint8")
    d = ds[11]
    raw = run["videos"][11]
    np.testing.assert_array_equal(d["context"].numpy(), np.transpose(raw[:3], _AXES[layout]))
    np.testing.assert_array_equal(d["future"].numpy(), np.transpose(raw[3:], _AXES[layout]))


# ------------------------------------------------------------ on the fly
@pytest.fixture(scope="session")
def trail_run(tmp_path_factory):
    spec = trajlab.DatasetSpec(n_samples=30, n_frames=9, image_size=24, style="trail",
                               object_color="random", classes=("helical", "parabolic", "linear"),
                               splits=(0.6, 0.2, 0.2), seed=12)
    run_dir = tmp_path_factory.mktemp("trail") / "run"
    trajlab.generate(spec, run_dir, n_jobs=1, shard_size=7, progress="none")
    return {"dir": str(run_dir), "spec": spec}


def _assert_items_equal(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_items_equal(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_items_equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("which", ["dot", "trail"])
@pytest.mark.parametrize("split", SPLITS + (None,))
def test_on_the_fly_items_are_the_stored_samples(run, trail_run, which, split):
    r = run if which == "dot" else trail_run
    kw = dict(item="dict", fields=FIELDS, value_range="uint8")
    stored = TrajectoryVideoDataset(r["dir"], split=split, **kw)
    fly = OnTheFlyVideoDataset(r["spec"], split=split, **kw)
    assert len(fly) == len(stored) > 0
    for k in range(len(fly)):
        _assert_items_equal(fly[k], stored[k])
    _assert_items_equal(fly[-1], stored[-1])


def test_on_the_fly_with_worker_processes_matches_stored(trail_run):
    stored = TrajectoryVideoDataset(trail_run["dir"], split="train", layout="CTHW",
                                    value_range=(-1, 1), item="dict", fields=("pixels",))
    fly = OnTheFlyVideoDataset(trail_run["spec"], split="train", layout="CTHW",
                               value_range=(-1, 1), item="dict", fields=("pixels",))
    ref = list(DataLoader(stored, batch_size=4, num_workers=0))
    got = list(DataLoader(fly, batch_size=4, num_workers=2))
    assert len(got) == len(ref) == -(-len(stored) // 4)
    for a, b in zip(ref, got):
        _assert_items_equal(a, b)


def test_on_the_fly_batches_any_index_order(trail_run):
    fly = OnTheFlyVideoDataset(trail_run["spec"], split=None, value_range="uint8")
    order = [5, 6, 7, 2, 29, 6, 0, 1, 28]          # runs, a repeat, both ends
    batch = fly.__getitems__(order)
    for k, item in zip(order, batch):
        _assert_items_equal(item, fly[k])


def test_on_the_fly_forecast_matches_stored(run):
    stored = TrajectoryForecastDataset(run["dir"], split="val", n_context=5, layout="THWC")
    fly = OnTheFlyForecastDataset(run["spec"], split="val", n_context=5, layout="THWC")
    assert len(fly) == len(stored)
    for k in range(len(fly)):
        _assert_items_equal(fly[k], stored[k])


def test_on_the_fly_spans_2_to_the_40(run):
    from trajlab.generator import splits_for

    n = 2 ** 40
    every = OnTheFlyVideoDataset(run["spec"], split=None, n_samples=n, value_range="uint8",
                                 item="dict", fields=("index",))
    assert len(every) == n
    assert every[-1]["index"] == n - 1 and every[n - 1]["index"] == n - 1
    train = OnTheFlyVideoDataset(run["spec"], split="train", n_samples=n, item="dict",
                                 fields=("index", "split"))
    # about 80 % of 2**40, exactly as many as the stratified sequences give
    assert abs(len(train) - 0.8 * n) <= 4
    for k in (len(train) - 1, len(train) // 3, 12345678901):
        d = train[k]
        assert d["split"] == 0 and splits_for(run["spec"], d["index"], d["index"] + 1)[0] == 0
    with pytest.raises(IndexError, match="out of range"):
        every[n]
    with pytest.raises(IndexError, match="out of range"):
        every[-n - 1]
    loader = DataLoader(every, batch_size=4, num_workers=0, sampler=torch.utils.data.RandomSampler(
        every, replacement=True, num_samples=8, generator=torch.Generator().manual_seed(0)))
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["video"].shape == (4, T, 3, S, S)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"spec": {"n_samples": 3}}, TypeError, "The 'spec' parameter of OnTheFlyVideoDataset must "
     "be a trajlab.DatasetSpec."),
    ({"n_samples": 0}, ValueError, "The 'n_samples' parameter of OnTheFlyVideoDataset must be "
     "an int in the range [1, 281474976710656]. Got 0 instead."),
    ({"n_samples": 2 ** 48 + 1}, ValueError, "'n_samples' parameter of OnTheFlyVideoDataset"),
    ({"n_samples": 10.0}, TypeError, "'n_samples' parameter of OnTheFlyVideoDataset"),
    ({"split": "eval"}, ValueError, "The 'split' parameter of OnTheFlyVideoDataset must be one "
     "of {'train', 'val', 'test', None}. Got 'eval' instead."),
    ({"layout": "HWC"}, ValueError, "The 'layout' parameter of OnTheFlyVideoDataset"),
])
def test_on_the_fly_bad_arguments(run, kwargs, exc, match):
    kwargs = {"spec": run["spec"], **kwargs}
    with pytest.raises(exc, match=re.escape(match)):
        OnTheFlyVideoDataset(**kwargs)


def test_on_the_fly_repr_and_pickle(run):
    fly = OnTheFlyVideoDataset(run["spec"], split="val", layout="CTHW", value_range=(-1, 1))
    text = repr(fly)
    assert "Dataset OnTheFlyVideoDataset" in text and "Split: val" in text
    assert f"(3, {T}, {S}, {S}) float32 in [-1, 1], layout CTHW" in text
    assert f"samples 0..{N - 1} of the spec" in text
    blob = pickle.dumps(fly)
    assert len(blob) < 5_000
    _assert_items_equal(pickle.loads(blob)[2], fly[2])
