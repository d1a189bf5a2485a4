"""DatasetSpec / CameraSpec: validation, canonical JSON, fingerprint, diff."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest

import trajlab.generator as generator
from trajlab import CameraSpec, DatasetSpec, make_trajectories
from trajlab.spec import DATA_VERSION


def _msg(name, owner, expected, got):
    """The project-wide message template, as an exact regex."""
    return re.escape(f"The {name!r} parameter of {owner} must be {expected}. Got {got} instead.")


# ----------------------------------------------------------------- defaults
def test_defaults_are_normalised():
    s = DatasetSpec()
    assert s.classes == ("linear", "circular", "helical", "parabolic")
    assert s.n_classes == 4
    assert (s.n_frames, s.image_size, s.style) == (16, 64, "dot")
    assert s.splits == (0.8, 0.1, 0.1)
    assert isinstance(s.camera, CameraSpec)
    assert s.camera.distance == (5.5, 6.5)


def test_scalars_and_sequences_are_normalised():
    s = DatasetSpec(classes="helical", splits=[1, 0, 0], object_color=[1, 2, 3],
                    camera={"distance": 6, "fov_deg": [30, 50]}, n_samples=np.int64(7),
                    trail_decay=np.float32(0.25))
    assert s.classes == ("helical",)
    assert s.splits == (1.0, 0.0, 0.0) and all(type(x) is float for x in s.splits)
    assert s.object_color == (1, 2, 3)
    assert s.camera.distance == (6.0, 6.0)          # a scalar is a fixed range
    assert s.camera.fov_deg == (30.0, 50.0)
    assert type(s.n_samples) is int and s.n_samples == 7
    assert type(s.trail_decay) is float and s.trail_decay == 0.25


def test_classes_iterator_is_consumed_once():
    s = DatasetSpec(classes=(c for c in ["parabolic", "linear"]))
    assert s.classes == ("parabolic", "linear")


@pytest.mark.parametrize("n_frames", [2, 3, 8, 17])
def test_times_are_evenly_spaced_over_the_clip(n_frames):
    s = DatasetSpec(n_frames=n_frames, clip_seconds=2.5)
    t = s.times
    assert t.shape == (n_frames,)
    assert t[0] == 0.0 and t[-1] == pytest.approx(2.5, abs=1e-12)
    np.testing.assert_allclose(np.diff(t), 2.5 / (n_frames - 1), rtol=1e-12)


def test_spec_is_frozen():
    s = DatasetSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_samples = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.camera.distance = (1, 2)


# -------------------------------------------------------------- bad input
INT_RANGE = "an int in the range"

BAD_DATASET = [
    # (field, value, exception, expected phrase, repr of the value in the message)
    ("n_samples", 0, ValueError, f"{INT_RANGE} [1, 100000000]", "0"),
    ("n_samples", -5, ValueError, f"{INT_RANGE} [1, 100000000]", "-5"),
    ("n_samples", 10.0, TypeError, f"{INT_RANGE} [1, 100000000]", "10.0"),
    ("n_samples", True, TypeError, f"{INT_RANGE} [1, 100000000]", "True"),
    ("n_samples", "10", TypeError, f"{INT_RANGE} [1, 100000000]", "'10'"),
    ("n_frames", 0, ValueError, f"{INT_RANGE} [2, 1024]", "0"),
    ("n_frames", 1, ValueError, f"{INT_RANGE} [2, 1024]", "1"),
    ("n_frames", False, TypeError, f"{INT_RANGE} [2, 1024]", "False"),
    ("image_size", 8, ValueError, f"{INT_RANGE} [16, 1024]", "8"),
    ("image_size", 0, ValueError, f"{INT_RANGE} [16, 1024]", "0"),
    ("image_size", 2048, ValueError, f"{INT_RANGE} [16, 1024]", "2048"),
    ("image_size", 32.5, TypeError, f"{INT_RANGE} [16, 1024]", "32.5"),
    ("trail_length", 1, ValueError, f"{INT_RANGE} [2, 64]", "1"),
    ("trail_decay", 0.0, ValueError, "a finite float in the range (0, 1)", "0.0"),
    ("trail_decay", 1.0, ValueError, "a finite float in the range (0, 1)", "1.0"),
    ("trail_decay", math.nan, ValueError, "a finite float in the range (0, 1)", "nan"),
    ("object_radius", 0.0, ValueError, "a finite float in the range (0, 2]", "0.0"),
    ("object_radius", -0.1, ValueError, "a finite float in the range (0, 2]", "-0.1"),
    ("object_radius", math.inf, ValueError, "a finite float in the range (0, 2]", "inf"),
    ("clip_seconds", 0.0, ValueError, "a finite float in the range [0.1, 10]", "0.0"),
    ("gravity", 0.0, ValueError, "a finite float in the range (0, 100]", "0.0"),
    ("gravity", -9.81, ValueError, "a finite float in the range (0, 100]", "-9.81"),
    ("gravity", 10 ** 309, ValueError, "a finite float in the range (0, 100]", "1" + "0" * 309),
    ("gravity", 10 ** 5000, ValueError, "a finite float in the range (0, 100]",
     f"an int of {(10 ** 5000).bit_length()} bits"),
    ("margin_px", -1.0, ValueError, "a finite float in the range [0, 64]", "-1.0"),
    ("min_motion", 0.5, ValueError, "a finite float in the range [0, 0.25]", "0.5"),
    ("position_jitter", -0.1, ValueError, "a finite float in the range [0, 1]", "-0.1"),
    ("pixel_noise", math.nan, ValueError, "a finite float in the range [0, 128]", "nan"),
    ("pixel_noise", True, TypeError, "a finite float in the range [0, 128]", "True"),
    ("seed", -1, ValueError, f"{INT_RANGE} [0, {2**63 - 1}]", "-1"),
    ("seed", 1.5, TypeError, f"{INT_RANGE} [0, {2**63 - 1}]", "1.5"),
    ("seed", None, TypeError, f"{INT_RANGE} [0, {2**63 - 1}]", "None"),
    ("style", "line", ValueError, "one of {'dot', 'trail'}", "'line'"),
    ("radius_mode", "fixed", ValueError, "one of {'perspective', 'constant'}", "'fixed'"),
    ("radius_mode", None, ValueError, "one of {'perspective', 'constant'}", "None"),
    ("object_color", (256, 0, 0), ValueError,
     "an (r, g, b) triple of ints in the range [0, 255] or 'random'", "(256, 0, 0)"),
    ("object_color", (1.0, 2.0, 3.0), ValueError,
     "an (r, g, b) triple of ints in the range [0, 255] or 'random'", "(1.0, 2.0, 3.0)"),
    ("object_color", "red", TypeError,
     "an (r, g, b) triple of ints in the range [0, 255] or 'random'", "'red'"),
    ("background_color", (0, 0), TypeError,
     "an (r, g, b) triple of ints in the range [0, 255]", "(0, 0)"),
    ("background_color", "random", TypeError,
     "an (r, g, b) triple of ints in the range [0, 255]", "'random'"),
    ("camera", 5, TypeError, "a CameraSpec or a dict of its fields", "5"),
]


@pytest.mark.parametrize("name, value, exc, expected, got", BAD_DATASET,
                         ids=[f"{b[0]}={b[4]}"[:60] for b in BAD_DATASET])
def test_bad_dataset_parameter(name, value, exc, expected, got):
    with pytest.raises(exc, match=_msg(name, "DatasetSpec", expected, got)):
        DatasetSpec(**{name: value})


def test_template_example_from_the_issue():
    # the exact sentence the issue quotes
    with pytest.raises(ValueError) as info:
        DatasetSpec(n_frames=0)
    assert str(info.value) == ("The 'n_frames' parameter of DatasetSpec must be an int in the "
                               "range [2, 1024]. Got 0 instead.")


def test_unknown_class_lists_the_valid_ones():
    with pytest.raises(ValueError, match=_msg(
            "classes", "DatasetSpec",
            "a sequence of class names from {'linear', 'circular', 'helical', 'parabolic'}",
            "'square'")):
        DatasetSpec(classes=("linear", "square"))


@pytest.mark.parametrize("classes, exc, phrase", [
    ((), ValueError, "a non-empty sequence of names"),
    ([], ValueError, "a non-empty sequence of names"),
    (5, TypeError, "a non-empty sequence of names"),
    (("linear", "linear"), ValueError, "a sequence of distinct class names"),
    ((["linear"],), ValueError, "a sequence of class names from"),
    (("Linear",), ValueError, "a sequence of class names from"),
])
def test_bad_classes(classes, exc, phrase):
    with pytest.raises(exc, match=r"The 'classes' parameter of DatasetSpec must be "
                                  + re.escape(phrase)):
        DatasetSpec(classes=classes)


@pytest.mark.parametrize("splits, exc", [
    ((0.8, 0.1), TypeError),
    ((0.8, 0.1, 0.1, 0.0), TypeError),
    ("abc", TypeError),
    (0.8, TypeError),
    ((0.8, 0.1, 0.2), ValueError),           # sums to 1.1
    ((0.5, 0.1, 0.1), ValueError),           # sums to 0.7
    ((0.0, 0.5, 0.5), ValueError),           # no training data
    ((1.2, -0.1, -0.1), ValueError),
    ((math.nan, 0.5, 0.5), ValueError),
    ((0.8, 0.1, math.inf), ValueError),
    ((0.8, "0.1", 0.1), ValueError),
])
def test_bad_splits(splits, exc):
    expected = ("three finite fractions (train, val, test) in [0, 1] summing to 1 "
                "with train > 0")
    with pytest.raises(exc, match=_msg("splits", "DatasetSpec", expected, repr(splits))):
        DatasetSpec(splits=splits)


PAIR = "a pair (min, max) of finite floats with min <= max in the range"
BAD_CAMERA = [
    ("distance", (0.5, 2.0), ValueError, f"{PAIR} [1, 100]"),
    ("distance", (7.0, 6.0), ValueError, f"{PAIR} [1, 100]"),
    ("distance", (5.0, math.inf), ValueError, f"{PAIR} [1, 100]"),
    ("distance", (math.nan, 6.0), ValueError, f"{PAIR} [1, 100]"),
    ("distance", (5.0, 6.0, 7.0), TypeError, f"{PAIR} [1, 100]"),
    ("distance", "far", TypeError, f"{PAIR} [1, 100]"),
    ("distance", (True, 6.0), TypeError, f"{PAIR} [1, 100]"),
    ("azimuth_deg", (0.0, 400.0), ValueError, f"{PAIR} [-360, 360]"),
    ("elevation_deg", (20.0, 90.0), ValueError, f"{PAIR} [5, 45]"),
    ("elevation_deg", (0.0, 30.0), ValueError, f"{PAIR} [5, 45]"),
    ("fov_deg", (0.0, 40.0), ValueError, f"{PAIR} [10, 120]"),
    ("fov_deg", 180, ValueError, f"{PAIR} [10, 120]"),
]


@pytest.mark.parametrize("name, value, exc, expected", BAD_CAMERA,
                         ids=[f"{b[0]}={b[1]!r}" for b in BAD_CAMERA])
def test_bad_camera_parameter(name, value, exc, expected):
    got = repr((value, value)) if isinstance(value, (int, float)) else repr(value)
    with pytest.raises(exc, match=_msg(name, "CameraSpec", expected, got)):
        CameraSpec(**{name: value})
    # the same check fires through a DatasetSpec built with a dict
    with pytest.raises(exc, match=_msg(name, "CameraSpec", expected, got)):
        DatasetSpec(camera={name: value})


def test_camera_dict_with_unknown_key():
    with pytest.raises(ValueError, match=r"The 'camera' parameter of DatasetSpec must be a "
                                         r"CameraSpec or a dict with keys from \['distance'"):
        DatasetSpec(camera={"distanse": (5, 6)})


# ------------------------------------------------ make_trajectories input
BAD_MAKE = [
    (dict(n_samples=0), ValueError, _msg("n_samples", "make_trajectories", f"{INT_RANGE} [1, 100000000]", 0)),
    (dict(n_samples=-3), ValueError,
     _msg("n_samples", "make_trajectories", f"{INT_RANGE} [1, 100000000]", -3)),
    (dict(n_samples=2.0), TypeError,
     _msg("n_samples", "make_trajectories", f"{INT_RANGE} [1, 100000000]", 2.0)),
    (dict(n_frames=1), ValueError, _msg("n_frames", "make_trajectories", f"{INT_RANGE} [2, 1024]", 1)),
    (dict(n_frames=True), TypeError,
     _msg("n_frames", "make_trajectories", f"{INT_RANGE} [2, 1024]", True)),
    (dict(image_size=4), ValueError,
     _msg("image_size", "make_trajectories", f"{INT_RANGE} [16, 1024]", 4)),
    (dict(classes=("linear", "spiral")), ValueError,
     r"must be a sequence of class names from \{'linear', 'circular', 'helical', 'parabolic'\}"),
    (dict(style="blur"), ValueError, _msg("style", "make_trajectories", "one of {'dot', 'trail'}",
                                          "'blur'")),
    (dict(seed=-1), ValueError, r"The 'seed' parameter of make_trajectories must be an int"),
    (dict(chunk_size=0), ValueError,
     _msg("chunk_size", "make_trajectories", f"{INT_RANGE} [1, inf)", 0)),
    (dict(chunk_size=True), TypeError,
     _msg("chunk_size", "make_trajectories", f"{INT_RANGE} [1, inf)", True)),
    (dict(spec={"n_samples": 3}), TypeError,
     r"The 'spec' parameter of make_trajectories must be a DatasetSpec or None\. Got \{'n_samples': 3\}"),
    (dict(spec=DatasetSpec(), n_samples=0), ValueError,
     _msg("n_samples", "make_trajectories", f"{INT_RANGE} [1, 100000000]", 0)),
]


@pytest.mark.parametrize("kwargs, exc, pattern", BAD_MAKE, ids=[repr(b[0])[:40] for b in BAD_MAKE])
def test_make_trajectories_bad_input_fails_before_any_work(monkeypatch, kwargs, exc, pattern):
    def no_work(*args, **kw):
        raise AssertionError("generation started before validation")

    monkeypatch.setattr(generator, "generate_block", no_work)
    kwargs = dict(kwargs)
    n = kwargs.pop("n_samples", 4)
    with pytest.raises(exc, match=pattern):
        make_trajectories(n, **kwargs)


# -------------------------------------------------- JSON and fingerprint
ROUND_TRIP = [
    DatasetSpec(),
    DatasetSpec(n_samples=12345, classes=("parabolic", "linear"), n_frames=9, image_size=48,
                style="trail", trail_length=6, trail_decay=0.3, object_color="random",
                background_color=(10, 20, 30), object_radius=0.2, clip_seconds=2.0,
                gravity=3.7, camera=CameraSpec(distance=(7.0, 8.0), azimuth_deg=(-30.0, 10.0),
                                               elevation_deg=(25.0, 25.0), fov_deg=(35.0, 45.0)),
                margin_px=2.5, min_motion=0.02, position_jitter=0.01, pixel_noise=3.0,
                splits=(0.7, 0.2, 0.1), seed=2**40 + 3),
    DatasetSpec(object_color=(255, 0, 128), splits=(1.0, 0.0, 0.0), seed=9),
]


@pytest.mark.parametrize("spec", ROUND_TRIP)
def test_json_round_trip(spec):
    text = spec.to_json()
    back = DatasetSpec.from_json(text)
    assert back == spec
    assert back.to_json() == text
    assert back.fingerprint == spec.fingerprint
    assert DatasetSpec.from_json(spec.to_json(indent=2)) == spec
    # canonical: sorted keys, compact, plain JSON types only
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert ", " not in text and ": " not in text
    assert isinstance(data["camera"], dict) and isinstance(data["classes"], list)


def test_fingerprint_is_pinned():
    # A change here means every existing dataset changes its name: bump
    # DATA_VERSION when generated bytes change, and update these values.
    assert DATA_VERSION == 7
    assert DatasetSpec().fingerprint == "d4df40e09110fd5e"
    assert DatasetSpec(n_samples=10, seed=3).fingerprint == "ca6522c4bf9d97ea"


def test_fingerprint_is_stable_and_insensitive_to_spelling():
    a = DatasetSpec(camera={"distance": 6}, splits=[0.8, 0.1, 0.1], classes=["linear"])
    b = DatasetSpec(camera=CameraSpec(distance=(6.0, 6.0)), splits=(0.8, 0.1, 0.1),
                    classes="linear")
    assert a.fingerprint == b.fingerprint
    assert re.fullmatch(r"[0-9a-f]{16}", a.fingerprint)


CHANGES = [
    ("n_samples", 1001), ("classes", ("circular", "linear", "helical", "parabolic")),
    ("n_frames", 8), ("image_size", 32), ("style", "trail"), ("trail_length", 5),
    ("trail_decay", 0.6), ("object_color", "random"), ("background_color", (0, 0, 1)),
    ("object_radius", 0.1), ("radius_mode", "constant"), ("clip_seconds", 1.5), ("gravity", 9.8),
    ("camera", CameraSpec(fov_deg=(41.0, 41.0))), ("margin_px", 2.0), ("min_motion", 0.02),
    ("position_jitter", 0.001), ("pixel_noise", 1.0), ("splits", (0.8, 0.15, 0.05)),
    ("seed", 1),
]


def test_changes_cover_every_field():
    assert sorted(c[0] for c in CHANGES) == sorted(f.name for f in dataclasses.fields(DatasetSpec))


@pytest.mark.parametrize("name, value", CHANGES, ids=[c[0] for c in CHANGES])
def test_every_field_changes_the_fingerprint_and_is_named_by_diff(name, value):
    base = DatasetSpec()
    other = base.replace(**{name: value})
    assert other.fingerprint != base.fingerprint
    expected = ["camera.fov_deg"] if name == "camera" else [name]
    assert base.diff(other) == expected
    assert other.diff(base) == expected
    assert base.diff(base.replace()) == []


def test_diff_names_several_keys_sorted():
    a = DatasetSpec()
    b = a.replace(seed=4, n_frames=8, camera=CameraSpec(distance=(4.0, 5.0),
                                                        elevation_deg=(30.0, 30.0)))
    assert a.diff(b) == ["camera.distance", "camera.elevation_deg", "n_frames", "seed"]


def test_replace_validates_again():
    with pytest.raises(ValueError, match=_msg("n_frames", "DatasetSpec",
                                              f"{INT_RANGE} [2, 1024]", "0")):
        DatasetSpec().replace(n_frames=0)


def test_from_dict_rejects_unknown_keys():
    d = DatasetSpec().to_dict()
    d["n_sample"] = 3
    with pytest.raises(ValueError, match=r"Unknown DatasetSpec parameter\(s\) \['n_sample'\]"):
        DatasetSpec.from_dict(d)
    d = DatasetSpec().to_dict()
    d["camera"]["zoom"] = 2
    with pytest.raises(ValueError, match=r"Unknown CameraSpec parameter\(s\) \['zoom'\]"):
        DatasetSpec.from_dict(d)
    with pytest.raises(TypeError, match=r"The 'data' parameter of DatasetSpec.from_dict must be "
                                        r"a dict\. Got \[1, 2\] instead\."):
        DatasetSpec.from_dict([1, 2])


def test_from_dict_validates_values():
    d = DatasetSpec().to_dict()
    d["image_size"] = 15
    with pytest.raises(ValueError, match=_msg("image_size", "DatasetSpec",
                                              f"{INT_RANGE} [16, 1024]", "15")):
        DatasetSpec.from_dict(d)


# ------------------------------------------------------------------ presets
def test_presets_fit_causal_video_tokenizers():
    from trajlab.spec import PRESETS

    assert DatasetSpec.preset("default") == DatasetSpec()
    m = DatasetSpec.preset("magvit")
    assert (m.n_frames, m.image_size) == (17, 64)
    m32 = DatasetSpec.preset("magvit32")
    assert (m32.n_frames, m32.image_size) == (17, 32)
    for name, changed in (("magvit", ["n_frames"]), ("magvit32", ["image_size", "n_frames"])):
        spec = DatasetSpec.preset(name)
        # T = 1 + 16: (T - 1) divisible by 2, 4, 8 and 16 (magvit2-pytorch's
        # compress_time layers; Open-MAGVIT2's T = 1 mod 4)
        assert (spec.n_frames - 1) % 16 == 0 and spec.n_frames % 4 == 1
        # nothing else differs from the defaults
        assert DatasetSpec().diff(spec) == changed
    assert sorted(PRESETS) == ["default", "magvit", "magvit32", "notebook"]


def test_preset_overrides_are_validated_like_the_constructor():
    spec = DatasetSpec.preset("magvit", n_samples=100, seed=7, radius_mode="constant")
    assert (spec.n_samples, spec.seed, spec.n_frames, spec.radius_mode) == (
        100, 7, 17, "constant")
    # an override wins over the preset's own value
    assert DatasetSpec.preset("magvit", n_frames=33).n_frames == 33
    with pytest.raises(ValueError, match=_msg("n_frames", "DatasetSpec", f"{INT_RANGE} [2, 1024]",
                                              "1")):
        DatasetSpec.preset("magvit32", n_frames=1)
    with pytest.raises(TypeError, match=r"Unknown DatasetSpec parameter\(s\) \['frames'\] given "
                                        r"to DatasetSpec\.preset; valid parameters are \["):
        DatasetSpec.preset("magvit", frames=17)


@pytest.mark.parametrize("name, got", [("vqgan", "'vqgan'"), ("MAGVIT", "'MAGVIT'"),
                                       (17, "17"), (None, "None")])
def test_unknown_preset_lists_the_valid_ones(name, got):
    with pytest.raises(ValueError, match=_msg("name", "DatasetSpec.preset",
                                              "one of {'default', 'magvit', 'magvit32', 'notebook'}", got)):
        DatasetSpec.preset(name)


# ------------------------------------------------------------ seed as a SeedSequence
def test_seed_sequence_gives_the_bytes_of_its_int_entropy():
    import numpy as np

    from trajlab import make_trajectories

    spec = DatasetSpec(n_samples=8, n_frames=4, image_size=16, seed=np.random.SeedSequence(5))
    five = DatasetSpec(n_samples=8, n_frames=4, image_size=16, seed=5)
    assert spec.seed == 5 and type(spec.seed) is int
    assert spec == five and spec.to_json() == five.to_json()
    assert spec.fingerprint == five.fingerprint
    a, la = make_trajectories(spec=spec)
    b, lb = make_trajectories(spec=five)
    assert a.tobytes() == b.tobytes() and la.tolist() == lb.tolist()
    assert make_trajectories(spec=DatasetSpec(n_samples=8, n_frames=4, image_size=16,
                                              seed=6))[0].tobytes() != a.tobytes()


@pytest.mark.parametrize("make, got", [
    (lambda np: np.random.SeedSequence(5).spawn(1)[0], r"entropy=5, spawn_key=\(0,\)"),
    (lambda np: np.random.SeedSequence([1, 2]), r"entropy=\[1, 2\], spawn_key=\(\)"),
    (lambda np: np.random.SeedSequence(2**64), r"entropy=18446744073709551616"),
])
def test_seed_sequence_without_an_int_form_is_refused(make, got):
    import numpy as np

    with pytest.raises(ValueError, match=r"The 'seed' parameter of DatasetSpec must be an int "
                       r"in the range \[0, 9223372036854775807\] or a numpy\.random\.SeedSequence "
                       r"with an int entropy in that range and an empty spawn_key\. Got "
                       r"SeedSequence\(" + got):
        DatasetSpec(seed=make(np))
