"""Dataset specification: one frozen dataclass that defines every byte.

A :class:`DatasetSpec` holds everything that determines the generated data.
Sample ``i`` of a dataset is a pure function of ``(spec, i)`` (the seed is
part of the spec). Specs are validated once, in ``__post_init__``, and are
serialised to canonical JSON; :attr:`DatasetSpec.fingerprint` is a hash of
that JSON and names the dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from . import _validation as v

__all__ = ["CameraSpec", "DatasetSpec", "DATA_VERSION", "STYLES", "RADIUS_MODES", "PRESETS",
           "PARAMS", "Param", "check_fields", "check_table"]

#: Version of the generation algorithm. Bumped whenever the bytes produced
#: for a given spec change; it is part of the fingerprint, so datasets made
#: by different algorithms never share a name.
DATA_VERSION = 7

STYLES = ("dot", "trail")
RADIUS_MODES = ("perspective", "constant")


def _pair(value):
    """Accept a scalar as a fixed range ``(x, x)``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value, value)
    return value


@dataclass(frozen=True)
class CameraSpec:
    """Ranges of the look-at pinhole camera, drawn per sample.

    The camera looks at the world origin from a point given in spherical
    coordinates around it. Each parameter is a ``(min, max)`` range; equal
    bounds give a fixed camera. Conventions are documented in
    :mod:`trajlab.camera`.

    Parameters
    ----------
    distance : (float, float), default=(5.5, 6.5)
        Distance from the camera centre to the origin, in metres.
    azimuth_deg : (float, float), default=(20.0, 70.0)
        Azimuth of the camera position, degrees counter-clockwise from +X.
    elevation_deg : (float, float), default=(20.0, 35.0)
        Elevation of the camera above the XY plane, degrees, in [5, 45]:
        gravity is then at least 45 degrees and a helix axis (within 20
        degrees of vertical) at least 25 degrees from the optical axis.
    fov_deg : (float, float), default=(30.0, 30.0)
        Full field of view of the (square) image, degrees.
    """

    distance: tuple = (5.5, 6.5)
    azimuth_deg: tuple = (20.0, 70.0)
    elevation_deg: tuple = (20.0, 35.0)
    fov_deg: tuple = (30.0, 30.0)

    def __post_init__(self):
        own = "CameraSpec"
        checks = {
            "distance": (1.0, 100.0),
            "azimuth_deg": (-360.0, 360.0),
            "elevation_deg": (5.0, 45.0),
            "fov_deg": (10.0, 120.0),
        }
        for name, (lo, hi) in checks.items():
            value = v.check_range_pair(_pair(getattr(self, name)), name, own, lo, hi)
            object.__setattr__(self, name, value)

    def to_dict(self):
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}


# --------------------------------------------------------------- parameters
def _check_classes(value, name, own):
    from .trajectories import REGISTRY

    classes = (value,) if isinstance(value, str) else value
    valid = tuple(REGISTRY)
    if isinstance(classes, bytes) or not hasattr(classes, "__iter__"):
        v.fail(name, own, f"a non-empty sequence of names from {valid}", value, TypeError)
    # materialise once: an iterator must not be consumed by the checks
    classes = tuple(classes)
    if len(classes) == 0:
        v.fail(name, own, f"a non-empty sequence of names from {valid}", value)
    for c in classes:
        if not isinstance(c, str) or c not in REGISTRY:
            v.fail(name, own, "a sequence of class names from {" + ", ".join(map(repr, valid))
                   + "}", c)
    if len(set(classes)) != len(classes):
        v.fail(name, own, "a sequence of distinct class names", classes)
    return classes


def _check_camera(value, name, own):
    cam = value
    if isinstance(cam, dict):
        fields = [f.name for f in dataclasses.fields(CameraSpec)]
        unknown = sorted(set(cam) - set(fields))
        if unknown:
            v.fail(name, own, f"a CameraSpec or a dict with keys from {fields}", cam)
        cam = CameraSpec(**cam)
    if not isinstance(cam, CameraSpec):
        v.fail(name, own, "a CameraSpec or a dict of its fields", cam, TypeError)
    return cam


def _check_splits(value, name, own):
    expected = "three finite fractions (train, val, test) in [0, 1] summing to 1 with train > 0"
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
        v.fail(name, own, expected, value, TypeError)
    try:
        fr = tuple(v.check_float(x, name, own, 0.0, 1.0) for x in value)
    except (TypeError, ValueError):
        v.fail(name, own, expected, value)
    if not math.isclose(sum(fr), 1.0, abs_tol=1e-9) or fr[0] <= 0:
        v.fail(name, own, expected, value)
    return fr


def _check_seed(value, name, own):
    """An int, or a ``numpy.random.SeedSequence`` stored as its int entropy
    (the canonical form: specs, JSON and fingerprints hold ints only)."""
    import numpy as np

    expected = (f"an int in the range [0, {2**63 - 1}] or a numpy.random.SeedSequence with "
                "an int entropy in that range and an empty spawn_key")
    if isinstance(value, np.random.SeedSequence):
        entropy = value.entropy
        if (value.spawn_key or isinstance(entropy, bool) or not isinstance(entropy, int)
                or not 0 <= entropy <= 2**63 - 1):
            # a spawned child or a pool of entropy words has no int form that
            # reproduces its streams
            raise ValueError(f"The {name!r} parameter of {own} must be {expected}. Got "
                             f"SeedSequence(entropy={entropy!r}, spawn_key={value.spawn_key!r})"
                             " instead.")
        return int(entropy)
    return v.check_int(value, name, own, 0, 2**63 - 1)


def _int(lo, hi=None):
    return lambda value, name, own: v.check_int(value, name, own, lo, hi)


def _float(lo, hi, **kw):
    return lambda value, name, own: v.check_float(value, name, own, lo, hi, **kw)


def _choice(choices):
    return lambda value, name, own: v.check_choice(value, name, own, choices)


@dataclass(frozen=True)
class Param:
    """One DatasetSpec field: how it is checked, documented and spelled on the CLI.

    ``check(value, name, owner)`` returns the normalised value or raises with
    the project's message template naming ``owner``; ``flag`` is the
    command-line option (None: not offered as a flag; use ``--spec``) and
    ``cli`` parses its string (``bool``: a switch that takes no value).
    ``text`` describes the command-line form for the error raised when
    ``cli`` cannot parse a string (None: argparse's own message for a plain
    ``int``/``float``); ``short`` is an optional one-letter alias (``-n``).

    Other owners (:data:`trajlab.engine.GENERATE_PARAMS`) declare their
    parameters with the same class, so one loop builds every CLI flag.
    """

    name: str
    check: object
    help: str
    flag: str = None
    cli: object = None
    text: str = None
    short: str = None


def _csv(parse):
    # "" is not an empty list: float("") fails, so ``--splits ""`` gets the
    # command-line template, not a DatasetSpec error about ()
    return lambda text: tuple(parse(x) for x in text.split(","))


def _names(text):
    """Comma-separated names; blanks around and between commas are dropped."""
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _color(text):
    return text if text == "random" else tuple(int(x) for x in text.split(","))


#: The one table of DatasetSpec parameters (defaults live on the dataclass).
PARAMS = {p.name: p for p in (
    Param("n_samples", _int(1, v.MAX_N_SAMPLES), "number of clips", "--n-samples", int,
          short="-n"),
    Param("classes", _check_classes, "comma-separated, e.g. linear,circular", "--classes",
          _names),
    Param("n_frames", _int(2, v.MAX_N_FRAMES), "frames per clip", "--n-frames", int),
    Param("image_size", _int(16, v.MAX_IMAGE_SIZE), "height = width of the frames, pixels",
          "--image-size", int),
    Param("style", _choice(STYLES), "dot or trail", "--style", str),
    Param("trail_length", _int(2, 64), "positions drawn by the trail style", "--trail-length",
          int),
    Param("trail_decay", _float(0.0, 1.0, closed_low=False, closed_high=False),
          "trail intensity factor per frame", "--trail-decay", float),
    Param("object_color", lambda value, name, own: v.check_rgb(value, name, own,
                                                               allow_random=True),
          "r,g,b of the object or 'random'", "--object-color", _color,
          "'random' or three comma-separated ints r,g,b"),
    Param("background_color", lambda value, name, own: v.check_rgb(value, name, own),
          "r,g,b of the background", "--background-color", _csv(int),
          "three comma-separated ints r,g,b"),
    Param("object_radius", _float(0.0, 2.0, closed_low=False), "object radius, metres",
          "--object-radius", float),
    Param("radius_mode", _choice(RADIUS_MODES),
          "'perspective' (f R / depth) or 'constant' (frame-0 radius held)", "--radius-mode", str),
    Param("clip_seconds", _float(0.1, 10.0), "clip duration, seconds", "--clip-seconds", float),
    Param("gravity", _float(0.0, 100.0, closed_low=False), "gravity, m/s^2", "--gravity", float),
    Param("camera", _check_camera, "camera ranges (CameraSpec; use --spec)"),
    Param("margin_px", _float(0.0, 64.0), "minimum gap between dot and border, pixels",
          "--margin-px", float),
    Param("min_motion", _float(0.0, 0.25), "minimum mean motion per frame, fraction of size",
          "--min-motion", float),
    Param("position_jitter", _float(0.0, 1.0), "std of 3D position noise, metres",
          "--position-jitter", float),
    Param("pixel_noise", _float(0.0, 128.0), "std of pixel noise, 0-255 units", "--pixel-noise",
          float),
    Param("splits", _check_splits, "train,val,test fractions, e.g. 0.8,0.1,0.1", "--splits",
          _csv(float), "three comma-separated fractions train,val,test"),
    Param("seed", _check_seed, "non-negative seed", "--seed", int),
)}


def check_table(table, values, owner, kind):
    """Check ``values`` (name -> value) against a parameter table (name -> Param).

    The one loop behind every owner's table (:data:`PARAMS` here,
    ``engine.GENERATE_PARAMS``): an unknown name is a TypeError listing the
    valid ones; each value is checked with ``owner`` named in the message.
    """
    out = {}
    for name, value in values.items():
        if name not in table:
            raise TypeError(f"Unknown {kind} parameter {name!r} given to {owner}; valid "
                            f"parameters are {list(table)}.")
        out[name] = table[name].check(value, name, owner)
    return out


def check_fields(values, owner):
    """Validate and normalise DatasetSpec fields given as a dict.

    Parameters
    ----------
    values : dict
        Field name -> value; only the keys present are checked (and
        ``object_color`` against ``background_color`` when both are).
    owner : str
        Named in error messages (e.g. ``'make_trajectories'`` for its own
        arguments), so each entry point reports its own parameters.

    Returns
    -------
    dict
        The normalised values, in the same keys.
    """
    out = check_table(PARAMS, values, owner, "DatasetSpec")
    color, background = out.get("object_color"), out.get("background_color")
    if color is not None and color != "random" and color == background:
        v.fail("object_color", owner,
               "an (r, g, b) triple of ints in the range [0, 255] or 'random', different "
               f"from background_color {background} (an object of the background's colour "
               "is invisible)", color)
    return out


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that defines a trajlab dataset.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of clips, in [1, inf).
    classes : tuple of str, default=all four classes
        Trajectory classes, by registry name (see
        :data:`trajlab.trajectories.REGISTRY`). Label ``k`` is
        ``classes[k]``; counts of any prefix of the dataset differ by at
        most one between classes.
    n_frames : int, default=16
        Frames per clip, in [2, inf). Frames are evenly spaced over a clip
        of ``clip_seconds`` seconds.
    image_size : int, default=64
        Height and width of the square frames, in [16, 1024] pixels.
    style : {'dot', 'trail'}, default='dot'
        ``'trail'`` also draws the previous ``trail_length - 1`` positions
        with intensities decaying by ``trail_decay`` per frame.
    trail_length : int, default=4
    trail_decay : float, default=0.5
    object_color : (int, int, int) or 'random', default=(255, 255, 255)
        RGB of the object. ``'random'`` draws a colour per sample from the
        sample's own stream, independent of its class.
    background_color : (int, int, int), default=(0, 0, 0)
    object_radius : float, default=0.15
        Radius of the spherical object, metres. Its pixel radius is
        ``f * object_radius / depth`` in every frame (see ``radius_mode``).
    radius_mode : {'perspective', 'constant'}, default='perspective'
        ``'perspective'``: the pixel radius follows the depth in every
        frame, as a real sphere's would. Then the dot's size over time (and
        the per-frame brightness) records the depth change, which alone
        names the class for most clips. ``'constant'``: the pixel radius is
        held at its frame-0 value, ``f * object_radius / depth[0]``, for the
        whole clip, which removes that cue, for benchmarks of how a model
        reads the path's shape. Positions, pixels and depth are unchanged;
        the stored ``radius`` is the radius drawn, and framing uses it.
    clip_seconds : float, default=1.0
        Duration of a clip, seconds (time stamps ``t_k = k * clip_seconds /
        (n_frames - 1)``).
    gravity : float, default=9.81
        Magnitude of gravity (m/s^2) along world -Z for the parabolic class.
    camera : CameraSpec
    margin_px : float, default=1.0
        Minimum distance in pixels between the dot's edge and the image
        border in every frame; samples closer are redrawn, never clipped.
    min_motion : float, default=0.015
        Minimum mean per-frame displacement of the dot, as a fraction of
        the image size; slower samples are redrawn.
    position_jitter : float, default=0.0
        Standard deviation (metres) of Gaussian noise added to every 3D
        position. The stored positions include it.
    pixel_noise : float, default=0.0
        Standard deviation of Gaussian pixel noise, in 0-255 units.
    splits : (float, float, float), default=(0.8, 0.1, 0.1)
        Train/val/test fractions; stratified per class.
    seed : int or numpy.random.SeedSequence, default=0
        Non-negative seed; sample ``i`` uses
        ``SeedSequence(seed, spawn_key=(i,))``. A ``SeedSequence`` with an
        empty ``spawn_key`` and an int entropy is stored as that int
        (``DatasetSpec(seed=SeedSequence(5))`` is ``DatasetSpec(seed=5)``);
        others are refused, as no int reproduces their streams.
    """

    n_samples: int = 1000
    classes: tuple = ("linear", "circular", "helical", "parabolic")
    n_frames: int = 16
    image_size: int = 64
    style: str = "dot"
    trail_length: int = 4
    trail_decay: float = 0.5
    object_color: object = (255, 255, 255)
    background_color: tuple = (0, 0, 0)
    object_radius: float = 0.15
    radius_mode: str = "perspective"
    clip_seconds: float = 1.0
    gravity: float = 9.81
    camera: CameraSpec = field(default_factory=CameraSpec)
    margin_px: float = 1.0
    min_motion: float = 0.015
    position_jitter: float = 0.0
    pixel_noise: float = 0.0
    splits: tuple = (0.8, 0.1, 0.1)
    seed: int = 0

    def __post_init__(self):
        own = "DatasetSpec"
        for name, value in check_fields(
                {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, own).items():
            object.__setattr__(self, name, value)

    # -------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name, **overrides):
        """A named parameter set, with any field overridden.

        Parameters
        ----------
        name : {'default', 'magvit', 'magvit32', 'notebook'}
            * ``'default'``: the defaults (16 frames of 64x64); 16 frames
              divide by the temporal factor 4 of a non-causal 3D tokenizer
              such as google-research/magvit's (16-frame clips).
            * ``'magvit'``: 17 frames of 64x64. Causal video tokenizers
              keep frame 0 apart and compress the other ``T - 1`` frames in
              time, so they need ``T = 1 + k * 2^m``: lucidrains
              ``magvit2-pytorch`` ``VideoTokenizer`` (its README trains on
              ``16 + 1`` frames; each ``compress_time`` layer halves
              ``T - 1``) and Open-MAGVIT2 / SEED-Voken (``T ≡ 1 mod 4``,
              17-frame clips). 64 is divisible by the 8x or 16x spatial
              downsampling of those models.
            * ``'magvit32'``: the same 17 frames at 32x32, for CPU-sized
              tokenizer runs (8x spatial downsampling leaves a 4x4 grid).
            * ``'notebook'``: 400 clips of 8 frames of 32x32, the CI-sized
              default dataset of notebooks 02 (its parameter defaults) and
              03 (what it generates when its run dir is missing).
        **overrides
            Any :class:`DatasetSpec` field, e.g. ``n_samples`` or ``seed``;
            validated like the constructor's arguments.

        Returns
        -------
        DatasetSpec

        Examples
        --------
        >>> DatasetSpec.preset("magvit", n_samples=100).n_frames
        17
        """
        if not isinstance(name, str) or name not in PRESETS:
            v.fail("name", "DatasetSpec.preset",
                   "one of {" + ", ".join(map(repr, PRESETS)) + "}", name)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise TypeError(f"Unknown DatasetSpec parameter(s) {unknown} given to "
                            f"DatasetSpec.preset; valid parameters are {names}.")
        return cls(**{**PRESETS[name], **overrides})

    # ------------------------------------------------------------------ I/O
    def to_dict(self):
        """Plain-JSON dict of the spec (tuples as lists)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, CameraSpec):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def to_json(self, indent=None):
        """Canonical JSON: sorted keys; compact unless ``indent`` is given."""
        sep = (",", ":") if indent is None else (",", ": ")
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, separators=sep)

    @classmethod
    def from_dict(cls, data):
        """Build a spec from :meth:`to_dict` output, rejecting unknown keys."""
        if not isinstance(data, dict):
            v.fail("data", "DatasetSpec.from_dict", "a dict", data, TypeError)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(
                f"Unknown DatasetSpec parameter(s) {unknown}; valid parameters are {names}."
            )
        kwargs = dict(data)
        for key in ("classes", "splits", "background_color"):
            if key in kwargs and isinstance(kwargs[key], list):
                kwargs[key] = tuple(kwargs[key])
        if isinstance(kwargs.get("object_color"), list):
            kwargs["object_color"] = tuple(kwargs["object_color"])
        if isinstance(kwargs.get("camera"), dict):
            unknown = sorted(set(kwargs["camera"]) - {f.name for f in dataclasses.fields(CameraSpec)})
            if unknown:
                raise ValueError(f"Unknown CameraSpec parameter(s) {unknown}.")
            kwargs["camera"] = CameraSpec(
                **{k: tuple(x) if isinstance(x, list) else x for k, x in kwargs["camera"].items()}
            )
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    def replace(self, **changes):
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def fingerprint(self):
        """16 hex digits naming the dataset: hash of the canonical spec and
        the data version."""
        payload = json.dumps({"data_version": DATA_VERSION, "spec": self.to_dict()},
                             sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def diff(self, other):
        """Names of the fields (``camera.x`` for nested ones) that differ."""
        a, b = self.to_dict(), other.to_dict()
        out = []
        for key in sorted(set(a) | set(b)):
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                out += [f"{key}.{k}" for k in sorted(set(a[key]) | set(b[key]))
                        if a[key].get(k) != b[key].get(k)]
            elif a.get(key) != b.get(key):
                out.append(key)
        return out

    @property
    def n_classes(self):
        return len(self.classes)

    @property
    def times(self):
        """Time stamps of the frames, seconds, shape (n_frames,)."""
        import numpy as np

        return np.arange(self.n_frames, dtype=np.float64) * (
            self.clip_seconds / (self.n_frames - 1))


#: Named parameter sets of :meth:`DatasetSpec.preset` (fields that differ
#: from the defaults).
PRESETS = {
    "default": {},
    "magvit": {"n_frames": 17, "image_size": 64},
    "magvit32": {"n_frames": 17, "image_size": 32},
    "notebook": {"n_samples": 400, "n_frames": 8, "image_size": 32},
}
