"""Generator: framing (never clipped), uniqueness, motion, determinism,
labels and splits, blocks vs whole datasets."""

from __future__ import annotations

import hashlib

import os
import re

import numpy as np
import pytest

from trajlab import CameraSpec, DatasetSpec, make_trajectories
from trajlab.generator import (NEAR_PLANE, SPLITS, Block, generate_block, labels_at,
                               labels_for, sample_rng, sample_rngs, splits_for)

ARRAYS = ("positions", "pixels", "depth", "radius", "K", "R", "t", "splits", "colors",
          "attempts")


def _assert_same(a, b):
    """Two make_trajectories(..., return_annotations=True) results are equal."""
    (va, la, aa), (vb, lb, ab) = a, b
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(la, lb)
    for key in ARRAYS:
        np.testing.assert_array_equal(aa[key], ab[key], err_msg=key)
    assert aa["records"] == ab["records"]


def _check_inside(pixels, radius, depth, S, margin):
    reach = radius + margin
    u, v = pixels[..., 0], pixels[..., 1]
    assert (u - reach >= 0).all() and (u + reach <= S).all()
    assert (v - reach >= 0).all() and (v + reach <= S).all()
    assert (depth > NEAR_PLANE).all()


def _check_border_is_background(videos, background=(0, 0, 0)):
    bg = np.asarray(background, dtype=np.uint8)[None, None, :, None]
    for edge in (videos[..., 0, :], videos[..., -1, :], videos[..., :, 0], videos[..., :, -1]):
        assert (edge == bg).all()


# ---------------------------------------------------------------- framing
def test_every_dot_lies_inside_the_frame(size_datasets):
    """Thousands of samples per size: centre +/- radius + margin inside the
    image by the stored ground truth, and no lit pixel on the border."""
    total = 0
    for seed, videos, labels, ann in size_datasets:
        spec = ann["spec"]
        _check_inside(ann["pixels"], ann["radius"], ann["depth"], spec.image_size,
                      spec.margin_px)
        _check_border_is_background(videos)
        # and the dot is there in every frame
        assert (videos[:, :, 0].max(axis=(-1, -2)) > 0).all()
        total += len(labels)
    assert total >= 2000


@pytest.mark.parametrize("fields", [
    dict(camera=CameraSpec(fov_deg=(24.0, 24.0))),
    dict(camera=CameraSpec(distance=(4.0, 4.5)), margin_px=3.0),
    dict(object_radius=0.4, margin_px=0.0),
])
def test_tight_framing_redraws_instead_of_clipping(make_ds, fields):
    videos, labels, ann = make_ds(600, 16, 64, seed=4, **fields)
    spec = ann["spec"]
    _check_inside(ann["pixels"], ann["radius"], ann["depth"], 64, spec.margin_px)
    if spec.margin_px >= 1:
        _check_border_is_background(videos)
    # these specs force redraws, and the counts add up per class
    assert sum(ann["rejections"].values()) > 0
    assert (ann["attempts"] > 1).any()
    for c, name in enumerate(spec.classes):
        assert ann["rejections"][name] == int((ann["attempts"][labels == c] - 1).sum())


def test_impossible_spec_raises_naming_the_classes():
    spec = DatasetSpec(n_samples=3, object_radius=2.0, margin_px=30.0, n_frames=2,
                       image_size=16, classes=("circular", "linear"))
    with pytest.raises(RuntimeError, match=r"of class\(es\) \['circular', 'linear'\] .*"
                                           r"were rejected 1000 times"):
        make_trajectories(3, spec=spec)


# ------------------------------------------------------ variety and motion
def test_no_duplicate_videos_in_10000_samples():
    videos, labels = make_trajectories(10_000, n_frames=8, image_size=32, seed=2024)
    digests = {hashlib.blake2b(v.tobytes(), digest_size=16).digest() for v in videos}
    assert len(digests) == 10_000
    # not even the opening frames repeat: phases, cameras and offsets vary
    firsts = {hashlib.blake2b(v[:2].tobytes(), digest_size=16).digest() for v in videos}
    assert len(firsts) == 10_000


def test_every_class_moves_enough(size_datasets):
    for seed, videos, labels, ann in size_datasets:
        spec = ann["spec"]
        step = np.linalg.norm(np.diff(ann["pixels"], axis=1), axis=-1).mean(axis=1)
        threshold = spec.min_motion * spec.image_size
        for c, name in enumerate(spec.classes):
            sel = labels == c
            assert sel.sum() >= len(labels) // 4
            assert (step[sel] > threshold).all(), name
            # stated visibility floors, independent of the generator's own
            # rejection cut (0.48 px/frame at 32 px): every clip moves at
            # least 0.9 px per frame, a typical clip of each class 1.5 px
            assert step[sel].min() >= 0.9, name
            assert np.median(step[sel]) >= 1.5, name
            # visible in the pixels too: the lit region moves between
            # the first and the last frame
            first, last = videos[sel, 0, 0] > 0, videos[sel, -1, 0] > 0
            assert ((first != last).sum(axis=(-1, -2)) > 0).all(), name


def test_min_motion_is_enforced_when_raised(make_ds):
    videos, labels, ann = make_ds(400, 8, 32, seed=9, min_motion=0.06)
    step = np.linalg.norm(np.diff(ann["pixels"], axis=1), axis=-1).mean(axis=1)
    assert (step >= 0.06 * 32).all()
    assert sum(ann["rejections"].values()) > 0


# ------------------------------------------------------------ determinism
def test_same_spec_and_seed_give_identical_bytes():
    spec = DatasetSpec(n_samples=60, n_frames=8, image_size=32, seed=77)
    a = make_trajectories(60, spec=spec, return_annotations=True)
    b = make_trajectories(60, spec=spec, return_annotations=True)
    _assert_same(a, b)


BUSY = dict(style="trail", object_color="random", position_jitter=0.005, pixel_noise=2.0,
            camera=CameraSpec(fov_deg=(20.0, 24.0)))        # every stream consumer, redraws


@pytest.mark.parametrize("seed", [0, 1, 31337])
@pytest.mark.parametrize("fields", [{}, BUSY], ids=["default", "busy"])
def test_prefix_of_n_equals_dataset_of_k(seed, fields):
    k, n = 37, 90
    spec = DatasetSpec(n_samples=n, n_frames=8, image_size=32, seed=seed, **fields)
    small = make_trajectories(k, spec=spec, return_annotations=True)
    if fields:
        assert (small[2]["attempts"] > 1).any()             # redraws are exercised
    for chunk in (256, 16, 7, 1):
        v, lab, ann = make_trajectories(n, spec=spec, return_annotations=True, chunk_size=chunk)
        prefix = (v[:k], lab[:k], {key: (val[:k] if key in (*ARRAYS, "params") else val)
                                   for key, val in ann.items()})
        prefix[2]["records"] = ann["records"][:k]
        _assert_same(small, prefix)


def test_different_seeds_differ():
    v0, l0 = make_trajectories(200, n_frames=8, image_size=32, seed=0)
    v1, l1 = make_trajectories(200, n_frames=8, image_size=32, seed=1)
    assert not np.array_equal(l0, l1)
    same = [(a == b).all() for a, b in zip(v0, v1)]
    assert not any(same)


@pytest.mark.parametrize("a, b", [(0, 10), (5, 37), (250, 300), (255, 257), (299, 300),
                                  (40, 40)])
def test_generate_block_equals_slice_of_whole(a, b):
    spec = DatasetSpec(n_samples=300, n_frames=8, image_size=32, seed=5, **BUSY)
    whole_v, whole_l, whole = _whole(spec)
    block = generate_block(spec, a, b)
    assert isinstance(block, Block) and (block.start, block.stop) == (a, b)
    np.testing.assert_array_equal(block.videos, whole_v[a:b])
    np.testing.assert_array_equal(block.labels, whole_l[a:b])
    for key in ARRAYS:
        np.testing.assert_array_equal(getattr(block, key), whole[key][a:b], err_msg=key)
    assert block.annotations(spec) == whole["records"][a:b]


_WHOLE = {}


def _whole(spec):
    if spec not in _WHOLE:
        _WHOLE[spec] = make_trajectories(spec.n_samples, spec=spec, return_annotations=True)
    return _WHOLE[spec]


def test_samples_do_not_depend_on_n_samples():
    small = DatasetSpec(n_samples=10, n_frames=8, image_size=32, seed=3)
    big = small.replace(n_samples=1000)
    a = generate_block(small, 8, 14)            # may run past the end
    b = generate_block(big, 8, 14)
    np.testing.assert_array_equal(a.videos, b.videos)
    np.testing.assert_array_equal(a.splits, b.splits)
    np.testing.assert_array_equal(a.positions, b.positions)


def test_generate_block_renders_in_place():
    spec = DatasetSpec(n_samples=20, n_frames=8, image_size=32, seed=8)
    buf = np.zeros((6, 8, 3, 32, 32), dtype=np.uint8)
    block = generate_block(spec, 4, 10, videos_out=buf)
    assert block.videos is buf
    np.testing.assert_array_equal(buf, make_trajectories(10, spec=spec)[0][4:])


def test_sample_stream_is_seed_sequence_spawn():
    a = sample_rng(9, 4).random(5)
    b = np.random.Generator(np.random.PCG64(np.random.SeedSequence(9, spawn_key=(4,)))).random(5)
    np.testing.assert_array_equal(a, b)
    # streams of neighbouring (seed, index) pairs do not collide (seed + i was unsafe)
    assert not np.array_equal(sample_rng(1, 0).random(3), sample_rng(0, 1).random(3))


# seeds and indices around the 32-bit word boundaries of SeedSequence's entropy
EDGE_SEEDS = [0, 1, 2**32 - 1, 2**32, 2**40 + 3, 2**63 - 1]
EDGE_INDICES = [0, 1, 7, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40 + 5, 2**63 - 1, 99_999_999]


@pytest.mark.parametrize("seed", EDGE_SEEDS)
def test_batched_streams_are_the_one_at_a_time_streams(seed):
    # generate_samples builds every sample's stream in one vectorised pass;
    # each must be exactly SeedSequence(seed, spawn_key=(i,)) -> PCG64
    indices = np.array(EDGE_INDICES + list(range(100, 140)), dtype=np.int64)
    batch = sample_rngs(seed, indices)
    assert len(batch) == len(indices)
    for rng, i in zip(batch, indices.tolist()):
        ref = sample_rng(seed, i)
        np.testing.assert_array_equal(rng.random(25), ref.random(25))
        # and it stays the same stream for later draws of other kinds
        np.testing.assert_array_equal(rng.standard_normal(3), ref.standard_normal(3))
    assert sample_rngs(seed, np.zeros(0, dtype=np.int64)) == []


@pytest.mark.parametrize("seed", EDGE_SEEDS)
def test_pcg64_lanes_are_numpys_pcg64(seed):
    # generate_samples draws its uniforms from PCG64 run in lanes: each lane
    # must give numpy's PCG64 doubles bit for bit, over uneven draws of row
    # subsets, and hand back a numpy Generator at the same stream position
    import trajlab.generator as g

    indices = np.array(EDGE_INDICES + list(range(100, 120)), dtype=np.int64)
    lanes = g._lanes(seed, indices)
    refs = [sample_rng(seed, i) for i in indices.tolist()]
    for rows, k in ((np.arange(len(indices)), 19), (np.arange(0, len(indices), 3), 7),
                    (np.array([1, 4, 5]), 1), (np.arange(len(indices)), 19)):
        got = lanes.random(rows, k)
        assert got.shape == (len(rows), k) and got.dtype == np.float64
        for row, values in zip(rows.tolist(), got):
            np.testing.assert_array_equal(values, refs[row].random(k))
    for rng, ref in zip(lanes.generators(), refs):
        np.testing.assert_array_equal(rng.standard_normal(4), ref.standard_normal(4))
        np.testing.assert_array_equal(rng.random(3), ref.random(3))


class _NumpyLanes:
    """The contract of generator._PCG64Lanes, served by numpy Generators."""

    def __init__(self, seed, indices):
        self.rngs = sample_rngs(seed, indices)

    def random(self, rows, k):
        return np.stack([self.rngs[r].random(k) for r in np.asarray(rows).tolist()])

    def generators(self):
        return self.rngs


@pytest.mark.parametrize("options", [{}, {"pixel_noise": 4.0}, {"min_motion": 0.06},
                                     {"style": "trail", "object_color": "random"}], ids=str)
def test_generation_with_pcg64_lanes_is_generation_with_numpy_generators(monkeypatch, options):
    # the same bytes as drawing every uniform from a numpy Generator per
    # sample, also where samples are redrawn (attempts > 1) and where the
    # pixel noise continues each stream after the lanes' uniforms
    import trajlab.generator as g

    spec = DatasetSpec(n_samples=120, n_frames=8, image_size=32, seed=3, **options)
    fast = g.generate_block(spec, 0, 120)
    monkeypatch.setattr(g, "_lanes", _NumpyLanes)
    ref = g.generate_block(spec, 0, 120)
    if "min_motion" in options:
        assert fast.attempts.max() > 1
    for name in g.Block.ARRAYS:
        np.testing.assert_array_equal(getattr(fast, name), getattr(ref, name), err_msg=name)
    assert fast.annotations(spec) == ref.annotations(spec)


def test_pcg64_lanes_refuse_a_pcg64_they_do_not_reproduce(monkeypatch):
    import trajlab.generator as g

    m_lo, m_hi, lo_lo, lo_hi = g._PCG64Lanes._M
    monkeypatch.setattr(g._PCG64Lanes, "_M", (m_lo, m_hi ^ np.uint64(4), lo_lo, lo_hi))
    with pytest.raises(RuntimeError, match="PCG64 or SeedSequence differs"):
        generate_block(DatasetSpec(n_samples=4), 0, 4)


def test_label_permutations_use_their_own_seed_sequences():
    spec = DatasetSpec(n_samples=100, classes=("linear", "circular", "helical"), seed=2**32 + 9)
    blocks = [0, 1, 2**32 // 3, 2**33]
    for b in blocks:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
            spec.seed, spawn_key=(0x4C41424C, b))))
        np.testing.assert_array_equal(labels_at(spec, 3 * b + np.arange(3)), rng.permutation(3))


def test_batched_streams_refuse_a_seed_sequence_they_do_not_reproduce(monkeypatch):
    # every batch is checked against numpy's own SeedSequence: a mismatch
    # (a numpy with another algorithm) raises instead of changing the bytes
    import trajlab.generator as g

    monkeypatch.setattr(g, "_MULT_B", g._MULT_B ^ 2)
    with pytest.raises(RuntimeError, match="SeedSequence differs"):
        sample_rngs(1, [5, 6])
    with pytest.raises(RuntimeError, match="SeedSequence differs"):
        generate_block(DatasetSpec(n_samples=4), 0, 4)


# ------------------------------------------------------- labels and splits
CLASS_SETS = [("linear", "circular", "helical", "parabolic"), ("helical", "linear", "parabolic"),
              ("circular", "parabolic"), ("linear",)]


@pytest.mark.parametrize("classes", CLASS_SETS, ids=len)
def test_labels_of_every_prefix_are_balanced(classes):
    n = 2001
    for seed in range(12):
        spec = DatasetSpec(n_samples=n, classes=classes, seed=seed)
        labels = labels_for(spec, 0, n)
        assert labels.dtype == np.int64 and set(np.unique(labels)) == set(range(len(classes)))
        counts = np.cumsum(np.eye(len(classes), dtype=np.int64)[labels], axis=0)
        assert (counts.max(axis=1) - counts.min(axis=1)).max() <= 1
        # any window start: labels_for(start, stop) is a slice of the whole
        np.testing.assert_array_equal(labels_for(spec, 1234, 1777), labels[1234:1777])
    # labels are not a fixed cycle: two seeds give different orders (one class has one)
    a = labels_for(DatasetSpec(classes=classes, seed=0), 0, 40)
    b = labels_for(DatasetSpec(classes=classes, seed=1), 0, 40)
    assert np.array_equal(a, b) == (len(classes) == 1)


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), (0.6, 0.4, 0.0),
                                       (1.0, 0.0, 0.0), (0.34, 0.33, 0.33), (0.9, 0.0, 0.1)])
@pytest.mark.parametrize("classes", CLASS_SETS[:3], ids=len)
def test_splits_are_stratified_per_class_in_every_prefix(fractions, classes):
    n = 2400
    expected = np.array(fractions)
    for seed in range(8):
        spec = DatasetSpec(n_samples=n, classes=classes, seed=seed, splits=fractions)
        labels = labels_for(spec, 0, n)
        splits = splits_for(spec, 0, n, labels)
        assert splits.dtype == np.uint8
        if seed == 0:
            np.testing.assert_array_equal(splits_for(spec, 999, 2345), splits[999:2345])
        for c in range(len(classes)):
            s = splits[labels == c]
            counts = np.cumsum(np.eye(3, dtype=np.int64)[s], axis=0)
            seen = np.arange(1, len(s) + 1)[:, None]
            err = np.abs(counts - seen * expected)
            assert err.max() <= 2.0 + 1e-9, (seed, c, err.max(axis=0))
            assert err[:, 0].max() < 1.0 + 1e-9         # train: within one
            for k in np.flatnonzero(expected == 0):
                assert counts[-1, k] == 0


def test_splits_differ_between_seeds_and_classes():
    spec = DatasetSpec(n_samples=4000)
    a, b = splits_for(spec, 0, 4000), splits_for(spec.replace(seed=1), 0, 4000)
    assert not np.array_equal(a, b)
    labels = labels_for(spec, 0, 4000)
    per_class = [a[labels == c][:500] for c in range(4)]
    assert any(not np.array_equal(per_class[0], p) for p in per_class[1:])


def test_dataset_splits_and_records_agree(size_datasets):
    for seed, videos, labels, ann in size_datasets:
        spec = ann["spec"]
        np.testing.assert_array_equal(labels, labels_for(spec, 0, len(labels)))
        np.testing.assert_array_equal(ann["splits"], splits_for(spec, 0, len(labels)))
        for k in (0, 1, len(labels) // 2, len(labels) - 1):
            rec = ann["records"][k]
            assert rec["index"] == k and rec["label"] == labels[k]
            assert rec["class"] == spec.classes[labels[k]]
            assert rec["split"] == SPLITS[ann["splits"][k]]
            assert rec["equation"].startswith("p(t) = ") and rec["description"]


# --------------------------------------------------------------- outputs
def test_output_shapes_dtypes_and_class_order():
    classes = ("parabolic", "linear")
    v, labels, ann = make_trajectories(9, classes=classes, n_frames=5, image_size=24, seed=3,
                                       return_annotations=True)
    assert v.shape == (9, 5, 3, 24, 24) and v.dtype == np.uint8
    assert labels.shape == (9,) and labels.dtype == np.int64
    shapes = {"positions": (9, 5, 3), "pixels": (9, 5, 2), "depth": (9, 5), "radius": (9, 5),
              "K": (9, 3, 3), "R": (9, 3, 3), "t": (9, 3), "splits": (9,), "colors": (9, 3),
              "attempts": (9,)}
    for key, shape in shapes.items():
        assert ann[key].shape == shape, key
    assert ann["colors"].dtype == np.uint8 and (ann["colors"] == 255).all()
    assert ann["spec"].n_samples == 9 and ann["spec"].classes == classes
    assert set(ann["rejections"]) == set(classes)
    for k in range(9):
        name = ann["records"][k]["class"]
        assert name == classes[labels[k]]
        expected = {"p0", "v0", "g"} if name == "parabolic" else {"p0", "v"}
        assert set(ann["records"][k]["params"]) == expected, name
    # two-output form gives the same bytes
    v2, l2 = make_trajectories(9, classes=classes, n_frames=5, image_size=24, seed=3)
    np.testing.assert_array_equal(v, v2)
    np.testing.assert_array_equal(labels, l2)


def test_spec_argument_overrides_n_samples_only():
    spec = DatasetSpec(n_samples=500, n_frames=6, image_size=20, seed=12, classes=("helical",))
    v, labels, ann = make_trajectories(7, spec=spec, return_annotations=True)
    assert v.shape == (7, 6, 3, 20, 20)
    assert (labels == 0).all() and ann["spec"] == spec.replace(n_samples=7)


@pytest.mark.parametrize("name,value", [("n_frames", 99), ("image_size", 32), ("seed", 0),
                                        ("style", "dot"), ("classes", ("linear",))])
def test_spec_with_a_spec_field_raises_naming_both(name, value):
    spec = DatasetSpec(n_samples=5, n_frames=6, image_size=20, seed=12)
    with pytest.raises(ValueError, match=re.escape(
            f"The '{name}' parameter of make_trajectories must be None when 'spec' is given "
            f"(spec.{name} = {getattr(spec, name)!r} defines it). Got {value!r} instead.")):
        make_trajectories(3, spec=spec, **{name: value})


def test_own_parameters_are_reported_as_make_trajectories():
    with pytest.raises(ValueError, match=re.escape(
            "The 'n_frames' parameter of make_trajectories must be an int in the range [2, ")):
        make_trajectories(3, n_frames=1)
    with pytest.raises(TypeError, match="The 'spec' parameter of make_trajectories must be a "
                                        "DatasetSpec or None"):
        make_trajectories(3, spec={"n_frames": 4})


def test_bytes_do_not_depend_on_the_cpus_simd_features():
    """numpy picks SIMD kernels by CPU feature at run time; a machine
    without AVX-512/AVX2 must produce the same bytes (mixed clusters,
    resuming elsewhere). Disable every dispatchable feature in a child."""
    import subprocess
    import sys

    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    active = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    if not active:
        pytest.skip("this CPU has no dispatchable SIMD features to turn off")
    code = (
        "import hashlib, numpy as np, trajlab\n"
        "spec = trajlab.DatasetSpec(n_samples=300, n_frames=16, image_size=32, "
        "camera=trajlab.CameraSpec(fov_deg=(25, 35), elevation_deg=(10, 40)), "
        "object_color='random', style='trail', position_jitter=0.01, pixel_noise=2.0)\n"
        "v, l, a = trajlab.make_trajectories(spec=spec, return_annotations=True)\n"
        "h = hashlib.sha256(v.tobytes())\n"
        "for k in ('positions', 'pixels', 'depth', 'radius', 'K', 'R', 't', 'splits'):\n"
        "    h.update(np.ascontiguousarray(a[k]).tobytes())\n"
        "print(h.hexdigest())\n")
    env = dict(os.environ)
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True).stdout
    env["NPY_DISABLE_CPU_FEATURES"] = " ".join(active)
    scalar = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=True).stdout
    assert plain.strip() and plain == scalar


@pytest.mark.parametrize("style", ["dot", "trail"])
def test_generate_samples_in_any_order_equals_the_block(style):
    from trajlab.generator import Block, generate_samples

    spec = DatasetSpec(n_samples=64, n_frames=9, image_size=24, style=style,
                       object_color="random", pixel_noise=2.0, position_jitter=0.01, seed=21)
    ref = generate_block(spec, 0, 64)
    order = [63, 5, 6, 7, 0, 33, 5, 12, 62, 1]          # scattered, a run, a repeat
    got = generate_samples(spec, order)
    np.testing.assert_array_equal(got.indices, order)
    for name in Block.ARRAYS:
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name)[order], err_msg=name)
    assert [r["index"] for r in got.annotations(spec)] == order
    assert got.annotations(spec)[1] == ref.annotations(spec)[5]
    with pytest.raises(ValueError, match="must be >= 0"):
        generate_samples(spec, [3, -1])

def test_frame0_says_little_about_the_class(size_datasets):
    """Where the dot is and how big it is in frame 0 is distributed alike
    for every class (it was not: every throw started low, z = 0.57 of a
    standard deviation off the overall mean vertical position)."""
    labels = np.concatenate([lab for _, _, lab, _ in size_datasets])
    S = size_datasets[0][3]["spec"].image_size
    f = np.concatenate([np.column_stack([a["pixels"][:, 0] / S, a["radius"][:, 0] / S])
                        for _, _, _, a in size_datasets])
    mu, sd = f.mean(axis=0), f.std(axis=0)
    for c in range(4):
        fc = f[labels == c]
        # (u, v, radius): class means within 0.15 sd (about 3 standard
        # errors at 500 samples per class), spreads within 12 %
        assert np.abs((fc.mean(axis=0) - mu) / sd).max() < 0.15, c
        np.testing.assert_allclose(fc.std(axis=0) / sd, 1.0, atol=0.12)
        # and the quartiles of each coordinate agree with the overall ones
        q = np.quantile(fc, [0.25, 0.5, 0.75], axis=0)
        assert (np.abs(q - np.quantile(f, [0.25, 0.5, 0.75], axis=0)) / sd).max() < 0.15, c


def test_every_class_starts_in_the_same_box(size_datasets):
    from trajlab.trajectories import START_JITTER

    for _, _, labels, ann in size_datasets:
        start = ann["positions"][:, 0]
        assert np.abs(start).max() <= START_JITTER + 1e-12
        for c in range(4):
            # the box is filled, not only its centre, by every class
            assert (np.abs(start[labels == c]).max(axis=0) > 0.9 * START_JITTER).all(), c


# ------------------------------------------------- radius_mode='constant'
@pytest.mark.parametrize("T, S", [(8, 32), (16, 64)])
def test_constant_radius_mode_removes_the_size_over_time_cue(make_ds, T, S):
    pv, pl, pa = make_ds(800, T, S, seed=4)
    cv, cl, ca = make_ds(800, T, S, seed=4, radius_mode="constant")
    np.testing.assert_array_equal(pl, cl)
    rad = ca["radius"]
    # the stored radius is the one drawn: frame 0's f R / Z, every frame
    f = ca["K"][:, 0, 0]
    np.testing.assert_allclose(rad[:, 0], f * 0.15 / ca["depth"][:, 0], rtol=1e-12)
    np.testing.assert_array_equal(rad, np.repeat(rad[:, :1], T, axis=1))
    # framing holds with that radius (+ the 1 px margin), never clipped
    pix = ca["pixels"]
    clear = np.minimum.reduce([pix[..., 0] - rad, S - pix[..., 0] - rad,
                               pix[..., 1] - rad, S - pix[..., 1] - rad])
    assert clear.min() >= 1.0 - 1e-9
    # same stream, same motion: a sample accepted at the same attempt in both
    # modes has the same path; perspective radii differ only after frame 0
    same = pa["attempts"] == ca["attempts"]
    assert same.mean() > 0.95
    np.testing.assert_array_equal(pa["pixels"][same], ca["pixels"][same])
    np.testing.assert_array_equal(pa["radius"][same, 0], rad[same, 0])
    assert (pa["radius"][same].std(axis=1) > 1e-3).mean() > 0.9
    # the rendered brightness (lit coverage) per frame is flat in constant
    # mode and follows 1/Z^2 in perspective mode
    def rel_spread(v):
        b = v[:, :, 0].astype(np.float64).sum(axis=(-1, -2))
        return b.std(axis=1) / b.mean(axis=1)
    assert np.median(rel_spread(cv)) < 0.03
    assert np.median(rel_spread(pv)) > 2 * np.median(rel_spread(cv))


# --------------------------------------------- 17 frames (T = 1 + 16)
@pytest.mark.parametrize("S, n", [(32, 1000), (64, 400)])
def test_seventeen_frames_keep_framing_motion_and_no_aliasing(make_ds, S, n):
    from trajlab.trajectories import MIN_FRAMES_PER_TURN

    videos, labels, ann = make_ds(n, 17, S, seed=6)
    assert videos.shape == (n, 17, 3, S, S)
    spec = ann["spec"]
    pix, rad = ann["pixels"], ann["radius"]
    clear = np.minimum.reduce([pix[..., 0] - rad, S - pix[..., 0] - rad,
                               pix[..., 1] - rad, S - pix[..., 1] - rad])
    assert clear.min() >= spec.margin_px - 1e-9
    assert (ann["depth"] > 0.5).all()
    d = np.linalg.norm(np.diff(pix, axis=1), axis=-1)
    dt = spec.times[1]
    for c, name in enumerate(spec.classes):
        sel = labels == c
        assert sel.sum() >= n // 4
        # every clip moves at least min_motion per frame on average...
        assert (d[sel].mean(axis=1) >= spec.min_motion * S - 1e-9).all(), name
        # ...and no frame-to-frame step is ambiguous: at most 15 % of the
        # image and a sixth of a turn
        assert d[sel].max() <= 0.15 * S, name
        idx = np.flatnonzero(sel)
        if name in ("circular", "helical"):
            omega = np.array([ann["records"][k]["params"]["omega"] for k in idx])
            assert (np.abs(omega) * dt).max() <= 2 * np.pi / MIN_FRAMES_PER_TURN + 1e-12
    # the rendered dot sits where the ground truth says, in every frame
    k, t = np.meshgrid(np.arange(min(n, 200)), np.arange(17), indexing="ij")
    col, row = np.floor(pix[k, t, 0]).astype(int), np.floor(pix[k, t, 1]).astype(int)
    assert (videos[k, t, 0, row, col] > 0).all()


@pytest.mark.parametrize("preset", ["magvit32", "magvit"])
def test_seventeen_frame_presets_generate_validate_and_reload(tmp_path, preset):
    """End to end: trajlab.generate writes the preset, every dataset check
    passes, and the stored bytes equal make_trajectories'."""
    from trajlab import generate, open_dataset
    from trajlab.checks import validate_dataset

    spec = DatasetSpec.preset(preset, n_samples=48, seed=2)
    generate(spec, str(tmp_path / "run"), n_jobs=1, progress="none")
    report = validate_dataset(str(tmp_path / "run"))
    assert report.passed, str(report)
    ds = open_dataset(str(tmp_path / "run"))
    videos, labels = make_trajectories(spec=spec)
    assert ds.videos.shape == (48, 17, 3, spec.image_size, spec.image_size)
    np.testing.assert_array_equal(np.asarray(ds.videos), videos)
    np.testing.assert_array_equal(np.asarray(ds.labels), labels)
