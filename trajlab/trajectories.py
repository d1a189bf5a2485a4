"""Trajectory classes: linear, circular, helical, parabolic.

Each class has two steps (as in disentanglement_lib):

* ``params_from_uniforms(u, ctx)`` / ``sample(rng, ctx)`` — the only random
  part: maps uniform draws to physical parameters (vectorised over a batch);
* ``positions(params, t)`` — pure: 3D positions at times ``t``.

So tests and notebooks can render hand-made parameters. Units: metres,
seconds, radians; world Z is up, gravity along -Z (see :mod:`trajlab.camera`).

Randomised per sample: the starting point, speeds, orientation (direction,
plane normal, axis), the part of the motion shown (starting phase and
extent of an arc or a helix, when a throw reaches its apex) and handedness.

Where a clip *starts* is drawn the same way for every class: position at
``t = 0`` uniform in a box of half-size :data:`START_JITTER` around the
stage centre. Each class's motion runs from there, turned towards the
stage centre (a line across the image, a circle's centre on the inner
side, a helix rising from a low start and sinking from a high one, a throw
thrown inwards and peaking earlier from a high start); these choices are
symmetric, so left/right, up/down and towards/away stay equally likely,
and they depend on the start only, which is drawn first. Class parameters
are sized so that every class travels a similar distance from its start.
Frame 0 thus says little about the class: a classifier that sees only the
first frame (dot position and size) stays near chance (measured by
``bench/probe_shortcuts.py``), where centring each path on the stage made
every throw start low and every helix start at one end.

Orientations are drawn relative to the camera's viewing direction so that
no sample is seen end-on: a linear motion is never within 35 degrees of the
optical axis, a circle's normal is within 55 degrees of it (never
edge-on), a helix axis is within 20 degrees of world Z (the camera's
elevation keeps it far from the optical axis) and a throw's horizontal
velocity is within 45 degrees of the image plane. Angular speeds are capped
so that a turn spans at least 6 frames (no temporal aliasing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _math as _m

__all__ = ["Context", "Trajectory", "Linear", "Circular", "Helical", "Parabolic",
           "REGISTRY", "get_class"]

#: Number of uniform draws per attempt reserved for the class parameters.
N_UNIFORMS = 12
#: Half-size (metres) of the box in which the position at t = 0 is drawn,
#: the same for every class (see the module docstring).
START_JITTER = 0.45
#: Minimum number of frames per full turn (anti-aliasing).
MIN_FRAMES_PER_TURN = 6


@dataclass(frozen=True)
class Context:
    """What a class needs to know about the scene to draw parameters.

    Attributes
    ----------
    view : ndarray of shape (..., 3)
        Unit optical axis (camera forward) in world coordinates.
    clip_seconds : float
    n_frames : int
    gravity : float
        Magnitude (m/s^2); gravity is ``(0, 0, -gravity)``.
    """

    view: np.ndarray
    clip_seconds: float = 1.0
    n_frames: int = 16
    gravity: float = 9.81


# ---------------------------------------------------------------- helpers
def _norm(a):
    # explicit sum: a reduction's order could depend on the SIMD width
    return a / np.sqrt(a[..., 0:1] ** 2 + a[..., 1:2] ** 2 + a[..., 2:3] ** 2)


def _orthonormal_basis(n):
    """Two unit vectors (e1, e2) with (e1, e2, n) right-handed orthonormal."""
    helper = np.where(np.abs(n[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    e1 = _norm(np.cross(helper, n))
    e2 = np.cross(n, e1)
    return e1, e2


def _cone(axis, u_cos, u_phi, max_angle_deg):
    """Unit vectors uniform on the cap of half-angle ``max_angle_deg``."""
    cmin = _m.cos(np.deg2rad(max_angle_deg))
    c = 1.0 - u_cos * (1.0 - cmin)
    s = np.sqrt(np.maximum(0.0, 1.0 - c * c))
    phi = 2.0 * np.pi * u_phi
    e1, e2 = _orthonormal_basis(axis)
    return (c[..., None] * axis + s[..., None] * (_m.cos(phi)[..., None] * e1
                                                  + _m.sin(phi)[..., None] * e2))


def _band(axis, u_z, u_phi, min_angle_deg):
    """Unit vectors uniform on the sphere minus two caps of half-angle
    ``min_angle_deg`` around +/- ``axis``."""
    zmax = _m.cos(np.deg2rad(min_angle_deg))
    z = (2.0 * u_z - 1.0) * zmax
    s = np.sqrt(1.0 - z * z)
    phi = 2.0 * np.pi * u_phi
    e1, e2 = _orthonormal_basis(axis)
    return (z[..., None] * axis + s[..., None] * (_m.cos(phi)[..., None] * e1
                                                  + _m.sin(phi)[..., None] * e2))


def lerp(u, lo_hi):
    """Map uniforms ``u`` in [0, 1) onto the range ``(lo, hi)``."""
    lo, hi = lo_hi
    return lo + u * (hi - lo)


def _start(u):
    return (2.0 * u[..., 0:3] - 1.0) * START_JITTER


def _turns_range(turns, n_frames):
    """Cap a turns-per-clip range so a turn spans >= MIN_FRAMES_PER_TURN
    frames; the lower end is kept where the cap allows (a helix keeps its
    full turn at 8 frames)."""
    cap = (n_frames - 1) / MIN_FRAMES_PER_TURN
    hi = min(turns[1], cap)
    return (min(turns[0], hi), hi)


def _inward_phase(theta0, a, b, p0):
    """``theta0``, or ``theta0 + pi`` (mod 2 pi) where that puts the circle's
    centre ``p0 - r (cos theta0 a + sin theta0 b)`` on the stage-centre side
    of the start ``p0``. A uniform phase stays uniform; the circle then
    sweeps across the frame from a start near the border instead of leaving
    it."""
    out_dir = (_m.cos(theta0)[:, None] * a + _m.sin(theta0)[:, None] * b)
    flip = np.sum(out_dir * p0, axis=-1) < 0.0
    return np.where(flip, np.where(theta0 >= np.pi, theta0 - np.pi, theta0 + np.pi), theta0)


def _vec(x):
    # tolist() gives the same Python floats as float() of each element, in
    # one call: float() of numpy scalars was 40% of the annotations' time
    x, y, z = x if type(x) is list else np.asarray(x, dtype=np.float64).tolist()
    return "(%.3f, %.3f, %.3f)" % (x, y, z)


def _length(v):
    v = v if type(v) is list else np.asarray(v, dtype=np.float64).tolist()
    return math.sqrt(sum(float(c) ** 2 for c in v))


def _col(p, key):
    """Scalar parameter broadcast against time: shape (..., 1)."""
    return np.asarray(p[key], dtype=np.float64)[..., None]


def _row(p, key):
    """Vector parameter broadcast against time: shape (..., 1, 3)."""
    return np.asarray(p[key], dtype=np.float64)[..., None, :]


class Trajectory:
    """Base class. Subclasses define ``name``, ``params_from_uniforms``,
    ``positions``, ``equation`` and ``description``."""

    name = "base"
    #: parameter names and their per-sample shapes
    param_shapes: dict = {}

    def sample(self, rng, ctx):
        """Draw parameters of one sample.

        Parameters
        ----------
        rng : numpy.random.Generator
        ctx : Context
            With ``view`` of shape (3,).

        Returns
        -------
        params : dict of str to float or ndarray of shape (3,)
        """
        u = rng.random(N_UNIFORMS)[None]
        ctx1 = Context(np.asarray(ctx.view, dtype=np.float64)[None], ctx.clip_seconds,
                       ctx.n_frames, ctx.gravity)
        batch = self.params_from_uniforms(u, ctx1)
        return {k: (float(x[0]) if x.ndim == 1 else x[0]) for k, x in batch.items()}

    def params_from_uniforms(self, u, ctx):  # pragma: no cover - abstract
        raise NotImplementedError

    def positions(self, params, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def equation(self, params):  # pragma: no cover - abstract
        raise NotImplementedError

    def description(self, params, clip_seconds):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class Linear(Trajectory):
    """Constant velocity: ``p(t) = p0 + t * v``.

    Parameters drawn: the start ``p0`` (see :data:`START_JITTER`), travel
    per clip in ``travel`` metres and a direction at least 35 degrees away
    from the optical axis (uniform on the rest of the sphere, then turned
    towards the stage centre across the image, so that a clip that starts
    near the border crosses the frame).
    """

    name = "linear"
    param_shapes = {"p0": (3,), "v": (3,)}
    travel = (1.3, 1.75)
    reach = 1.2
    min_angle_to_view_deg = 35.0

    def params_from_uniforms(self, u, ctx):
        speed = lerp(u[:, 3], self.travel) / ctx.clip_seconds
        direction = _band(ctx.view, u[:, 4], u[:, 5], self.min_angle_to_view_deg)
        p0 = _start(u)
        # head towards the stage centre (the band is symmetric, so the flip
        # keeps the direction's distribution): a start near the border then
        # crosses the frame instead of leaving it, and the start itself,
        # drawn first, is untouched
        across = direction - np.sum(direction * ctx.view, axis=-1)[:, None] * ctx.view
        along = np.sum(across * p0, axis=-1)
        inward = np.where(along > 0.0, -1.0, 1.0)
        # a long travel only from a start on the far side: the end stays
        # within ``reach`` metres of the stage centre across the image
        # (``-|along| / |across|`` is the start's offset along the travel)
        across_len = np.sqrt(np.sum(across * across, axis=-1))
        cap = (self.reach * across_len + np.abs(along)) / (across_len * across_len)
        speed = np.minimum(speed, np.maximum(cap, self.travel[0]) / ctx.clip_seconds)
        return {"p0": p0, "v": (speed * inward)[:, None] * direction}

    def positions(self, params, t):
        t = np.asarray(t, dtype=np.float64)[:, None]
        return _row(params, "p0") + t * _row(params, "v")

    def equation(self, p):
        return f"p(t) = {_vec(p['p0'])} + t·{_vec(p['v'])}"

    def description(self, p, clip_seconds):
        speed = _length(p["v"])
        return (f"Linear motion at constant speed {speed:.2f} m/s along "
                f"{_vec(np.asarray(p['v']) / speed)} for {clip_seconds:.2f} s.")


class Circular(Trajectory):
    """Uniform circular motion in a plane:
    ``p(t) = c + r (cos θ(t) a + sin θ(t) b)``, ``θ(t) = θ0 + ω t``.

    ``(a, b, n)`` is right-handed, so ``ω > 0`` turns counter-clockwise
    seen from the side ``n`` points to. The sign of ``ω`` (handedness), the
    phase ``θ0`` and the plane normal ``n`` (within 55 degrees of the
    direction towards the camera) are random.
    """

    name = "circular"
    param_shapes = {"centre": (3,), "radius": (), "omega": (), "theta0": (),
                    "a": (3,), "b": (3,), "normal": (3,)}
    radius = (0.35, 0.7)
    turns = (0.4, 0.85)
    max_normal_angle_deg = 55.0

    def params_from_uniforms(self, u, ctx):
        turns = lerp(u[:, 4], _turns_range(self.turns, ctx.n_frames))
        sign = np.where(u[:, 5] < 0.5, 1.0, -1.0)
        omega = sign * 2.0 * np.pi * turns / ctx.clip_seconds
        normal = _cone(-ctx.view, u[:, 7], u[:, 8], self.max_normal_angle_deg)
        a, b = _orthonormal_basis(normal)
        radius = lerp(u[:, 3], self.radius)
        p0 = _start(u)
        theta0 = _inward_phase(2.0 * np.pi * u[:, 6], a, b, p0)
        # the circle is placed so that the clip starts at the drawn start
        centre = p0 - radius[:, None] * (_m.cos(theta0)[:, None] * a
                                         + _m.sin(theta0)[:, None] * b)
        return {"centre": centre, "radius": radius, "omega": omega, "theta0": theta0,
                "a": a, "b": b, "normal": normal}

    def positions(self, params, t):
        t = np.asarray(t, dtype=np.float64)
        theta = _col(params, "theta0") + _col(params, "omega") * t
        r = _col(params, "radius")
        return (_row(params, "centre")
                + (r * _m.cos(theta))[..., None] * _row(params, "a")
                + (r * _m.sin(theta))[..., None] * _row(params, "b"))

    def equation(self, p):
        return (f"p(t) = c + r·(cos θ(t)·a + sin θ(t)·b), θ(t) = θ0 + ω·t; "
                f"c = {_vec(p['centre'])}, r = {p['radius']:.3f}, "
                f"a = {_vec(p['a'])}, b = {_vec(p['b'])}, "
                f"θ0 = {p['theta0']:.3f}, ω = {p['omega']:.3f}")

    def description(self, p, clip_seconds):
        turns = abs(p["omega"]) * clip_seconds / (2 * np.pi)
        way = "counter-clockwise" if p["omega"] > 0 else "clockwise"
        return (f"Circular motion of radius {p['radius']:.2f} m, {way} about normal "
                f"{_vec(p['normal'])}, {turns:.2f} turns in {clip_seconds:.2f} s.")


class Helical(Trajectory):
    """Helix: circular motion plus constant speed along the axis ``n``:
    ``p(t) = c + r (cos θ(t) a + sin θ(t) b) + t·h·n``, ``θ(t) = θ0 + ω t``.

    Pitch (advance per turn) is ``2π h / |ω|``. The axis is within 20
    degrees of world +Z or -Z (rising or sinking), never along the
    optical axis; handedness and phase are random.
    """

    name = "helical"
    param_shapes = {"centre": (3,), "radius": (), "omega": (), "theta0": (),
                    "a": (3,), "b": (3,), "axis": (3,), "axial_speed": ()}
    radius = (0.3, 0.6)
    # at least a full turn and a clear rise when the frame count allows it
    # (16 frames), so a helix is not mistaken for a tilted partial circle
    turns = (1.0, 1.6)
    rise = (0.6, 1.1)          # metres along the axis per clip
    max_axis_tilt_deg = 20.0

    def params_from_uniforms(self, u, ctx):
        turns = lerp(u[:, 4], _turns_range(self.turns, ctx.n_frames))
        sign = np.where(u[:, 5] < 0.5, 1.0, -1.0)
        omega = sign * 2.0 * np.pi * turns / ctx.clip_seconds
        p0 = _start(u)
        # rising from a low start, sinking from a high one (both equally
        # often: the start box is symmetric)
        up = np.where(p0[:, 2:3] <= 0.0, 1.0, -1.0) * np.array([0.0, 0.0, 1.0])
        axis = _cone(up, u[:, 7], u[:, 8], self.max_axis_tilt_deg)
        a, b = _orthonormal_basis(axis)
        h = lerp(u[:, 10], self.rise) / ctx.clip_seconds
        radius = lerp(u[:, 3], self.radius)
        theta0 = _inward_phase(2.0 * np.pi * u[:, 6], a, b, p0)
        centre = p0 - radius[:, None] * (_m.cos(theta0)[:, None] * a
                                         + _m.sin(theta0)[:, None] * b)
        return {"centre": centre, "radius": radius, "omega": omega, "theta0": theta0,
                "a": a, "b": b, "axis": axis, "axial_speed": h}

    def positions(self, params, t):
        t = np.asarray(t, dtype=np.float64)
        return (Circular.positions(self, params, t)
                + (_col(params, "axial_speed") * t)[..., None] * _row(params, "axis"))

    def equation(self, p):
        return (f"p(t) = c + r·(cos θ(t)·a + sin θ(t)·b) + t·h·n, θ(t) = θ0 + ω·t; "
                f"c = {_vec(p['centre'])}, r = {p['radius']:.3f}, "
                f"a = {_vec(p['a'])}, b = {_vec(p['b'])}, n = {_vec(p['axis'])}, "
                f"h = {p['axial_speed']:.3f}, θ0 = {p['theta0']:.3f}, ω = {p['omega']:.3f}")

    def description(self, p, clip_seconds):
        turns = abs(p["omega"]) * clip_seconds / (2 * np.pi)
        pitch = 2 * np.pi * p["axial_speed"] / abs(p["omega"])
        way = "counter-clockwise" if p["omega"] > 0 else "clockwise"
        return (f"Helical motion of radius {p['radius']:.2f} m and pitch {pitch:.2f} m, "
                f"{way} about axis {_vec(p['axis'])}, {turns:.2f} turns in "
                f"{clip_seconds:.2f} s.")


class Parabolic(Trajectory):
    """Projectile under gravity: ``p(t) = p0 + t·v0 + ½ t²·g``,
    ``g = (0, 0, -gravity)``.

    The clip starts at ``p0`` (see :data:`START_JITTER`) with a horizontal
    speed within 45 degrees of the image plane, to the left or right,
    towards the stage centre. The upward launch speed sets *which part* of the flight is
    shown, through the apex time as a fraction of the clip,
    ``s = v_z0 / (g T)`` (``T``: clip duration): the clip only falls when
    ``s <= 0``, only rises when ``s >= 1`` and passes its apex otherwise.
    ``s`` is drawn so that the path never climbs above or drops below its
    start by more than ``vertical_excursion`` metres, which keeps a throw
    as able to start anywhere in the frame as the other classes:

    * when the budget allows both (``g T² / 2 <= vertical_excursion``, e.g.
      low gravity or short clips), a quarter of the clips only fall, a
      quarter only rise and half pass the apex, in these fixed proportions;
    * otherwise (the default: a 1 s clip under 9.81 m/s² that only rose
      would climb at least 4.9 m, more than the field of view) every clip
      passes its apex, with ``s`` over the admissible range (0.38-0.50 by
      default: the apex in the first half, the path centred on its start
      near ``s = √2 - 1``), later for a low start and earlier for a high one.
    """

    name = "parabolic"
    param_shapes = {"p0": (3,), "v0": (3,), "g": (3,)}
    horizontal_travel = (0.6, 1.4)   # metres per clip
    vertical_excursion = 1.2         # metres above or below the start, at most
    max_off_plane_deg = 45.0
    #: probabilities of (falling only, passing the apex, rising only) when
    #: the vertical budget admits all three
    regime_weights = (0.25, 0.5, 0.25)

    def apex_fraction_range(self, ctx):
        """Admissible range ``(lo, hi)`` of the apex fraction ``s``.

        Rise above the start is ``s² g T² / 2`` for ``0 <= s <= 1`` and
        ``(2 s - 1) g T² / 2`` beyond; the drop below it is
        ``(1 - 2 s) g T² / 2`` for ``s <= 1/2``. Both are kept within
        ``vertical_excursion``; when no ``s`` satisfies both (very strong
        gravity), the range collapses to the one that exceeds it least.
        """
        e = 2.0 * self.vertical_excursion / (ctx.gravity * ctx.clip_seconds ** 2)
        lo = 0.5 * (1.0 - e)
        hi = math.sqrt(e) if e <= 1.0 else 0.5 * (1.0 + e)
        if lo > hi:
            lo = hi = math.sqrt(2.0) - 1.0   # the path centred on its start
        return lo, hi

    def params_from_uniforms(self, u, ctx):
        n = u.shape[0]
        T, g = ctx.clip_seconds, ctx.gravity
        # horizontal unit vectors: camera right (projected on XY) rotated
        right = np.cross(ctx.view, [0.0, 0.0, 1.0])
        right[:, 2] = 0.0
        right = _norm(right)
        ang = np.deg2rad((2.0 * u[:, 4] - 1.0) * self.max_off_plane_deg)
        c, s = _m.cos(ang), _m.sin(ang)
        hx = c * right[:, 0] - s * right[:, 1]
        hy = s * right[:, 0] + c * right[:, 1]
        p0 = _start(u)
        # thrown towards the stage centre, left or right (see Linear)
        side = np.where(hx * p0[:, 0] + hy * p0[:, 1] > 0.0, -1.0, 1.0)
        hx, hy = side * hx, side * hy
        speed = lerp(u[:, 3], self.horizontal_travel) / T
        lo, hi = self.apex_fraction_range(ctx)
        if hi > 1.0:
            # fixed proportions of falling-only, apex and rising-only clips
            w_fall, w_apex, _ = self.regime_weights
            k = u[:, 7]
            frac = np.where(k < w_fall, lerp(u[:, 6], (lo, 0.0)),
                            np.where(k < w_fall + w_apex, u[:, 6], lerp(u[:, 6], (1.0, hi))))
        else:
            # all throws pass the apex; a high start tends to an early apex
            # (mostly falling), a low one to a late apex (mostly rising), so
            # the throw stays in the frame wherever it starts
            low = 0.5 - 0.5 * np.clip(p0[:, 2] / START_JITTER, -1.0, 1.0)
            frac = lerp(0.5 * (u[:, 6] + low), (lo, hi))
        vz = frac * g * T
        v0 = np.stack([speed * hx, speed * hy, vz], axis=-1)
        gvec = np.broadcast_to(np.array([0.0, 0.0, -g]), (n, 3)).copy()
        return {"p0": p0, "v0": v0, "g": gvec}

    def positions(self, params, t):
        t = np.asarray(t, dtype=np.float64)[:, None]
        return _row(params, "p0") + t * _row(params, "v0") + (0.5 * t * t) * _row(params, "g")

    def equation(self, p):
        return (f"p(t) = p0 + t·v0 + ½·t²·g; p0 = {_vec(p['p0'])}, "
                f"v0 = {_vec(p['v0'])}, g = {_vec(p['g'])}")

    def description(self, p, clip_seconds):
        vz = p["v0"][2]
        g = -p["g"][2]
        t_apex = vz / g
        if t_apex <= 0.0:
            part = f"falling throughout (apex at t = {t_apex:.2f} s, before the clip)"
        elif t_apex >= clip_seconds:
            part = f"rising throughout (apex at t = {t_apex:.2f} s, after the clip)"
        else:
            part = f"apex at t = {t_apex:.2f} s"
        return (f"Parabolic throw under gravity {g:.2f} m/s², moving at "
                f"{_length(p['v0']):.2f} m/s (upward {vz:.2f} m/s) at the start, {part}, "
                f"over {clip_seconds:.2f} s.")


#: Registry of trajectory classes by name (the label order of a spec is its
#: ``classes`` tuple, not this order).
REGISTRY = {cls.name: cls() for cls in (Linear, Circular, Helical, Parabolic)}


def get_class(name):
    """Return the registered trajectory class ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown trajectory class {name!r}; valid classes are {sorted(REGISTRY)}."
        ) from None
