"""Trajectory classes: linear, circular, helical, parabolic.

Each class has two steps (as in disentanglement_lib):

* ``params_from_uniforms(u, ctx)`` / ``sample(rng, ctx)`` — the only random
  part: maps uniform draws to physical parameters (vectorised over a batch);
* ``positions(params, t)`` — pure: 3D positions at times ``t``.

So tests and notebooks can render hand-made parameters. Units: metres,
seconds, radians; world Z is up, gravity along -Z (see :mod:`trajlab.camera`).

Randomised per sample: a centre offset, speeds, orientation (direction,
plane normal, axis), starting phase and handedness. Orientations are drawn
relative to the camera's viewing direction so that no sample is seen
end-on: a linear motion is never within 35 degrees of the optical axis, a
circle's normal is within 55 degrees of it (never edge-on), a helix axis is
within 20 degrees of world Z (the camera's elevation keeps it far from the
optical axis) and a throw's horizontal velocity is within 45 degrees of the
image plane. Angular speeds are capped so that a turn spans at least 6
frames (no temporal aliasing).
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
#: Half-size (metres) of the box in which the trajectory centre is drawn.
CENTRE_JITTER = 0.25
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


def _lerp(u, lo_hi):
    lo, hi = lo_hi
    return lo + u * (hi - lo)


def _centre(u):
    return (2.0 * u[..., 0:3] - 1.0) * CENTRE_JITTER


def _turns_range(turns, n_frames):
    """Cap a turns-per-clip range so a turn spans >= MIN_FRAMES_PER_TURN
    frames; the lower end is kept where the cap allows (a helix keeps its
    full turn at 8 frames)."""
    cap = (n_frames - 1) / MIN_FRAMES_PER_TURN
    hi = min(turns[1], cap)
    return (min(turns[0], hi), hi)


def _vec(x):
    x, y, z = (float(c) for c in x)
    return "(%.3f, %.3f, %.3f)" % (x, y, z)


def _length(v):
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

    Parameters drawn: travel per clip in ``travel`` metres, a direction at
    least 35 degrees away from the optical axis, and a centre offset; ``p0``
    is placed so that the path is centred on that offset.
    """

    name = "linear"
    param_shapes = {"p0": (3,), "v": (3,)}
    travel = (1.2, 2.4)
    min_angle_to_view_deg = 35.0

    def params_from_uniforms(self, u, ctx):
        speed = _lerp(u[:, 3], self.travel) / ctx.clip_seconds
        direction = _band(ctx.view, u[:, 4], u[:, 5], self.min_angle_to_view_deg)
        v = speed[:, None] * direction
        p0 = _centre(u) - v * (ctx.clip_seconds / 2.0)
        return {"p0": p0, "v": v}

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
    radius = (0.5, 1.0)
    turns = (0.5, 0.85)
    max_normal_angle_deg = 55.0

    def params_from_uniforms(self, u, ctx):
        turns = _lerp(u[:, 4], _turns_range(self.turns, ctx.n_frames))
        sign = np.where(u[:, 5] < 0.5, 1.0, -1.0)
        omega = sign * 2.0 * np.pi * turns / ctx.clip_seconds
        normal = _cone(-ctx.view, u[:, 7], u[:, 8], self.max_normal_angle_deg)
        a, b = _orthonormal_basis(normal)
        return {"centre": _centre(u), "radius": _lerp(u[:, 3], self.radius),
                "omega": omega, "theta0": 2.0 * np.pi * u[:, 6],
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
    radius = (0.4, 0.8)
    # at least a full turn and a clear rise when the frame count allows it
    # (16 frames), so a helix is not mistaken for a tilted partial circle
    turns = (1.0, 1.6)
    rise = (1.2, 2.0)          # metres along the axis per clip
    max_axis_tilt_deg = 20.0

    def params_from_uniforms(self, u, ctx):
        turns = _lerp(u[:, 4], _turns_range(self.turns, ctx.n_frames))
        sign = np.where(u[:, 5] < 0.5, 1.0, -1.0)
        omega = sign * 2.0 * np.pi * turns / ctx.clip_seconds
        up = np.where(u[:, 9:10] < 0.5, 1.0, -1.0) * np.array([0.0, 0.0, 1.0])
        axis = _cone(up, u[:, 7], u[:, 8], self.max_axis_tilt_deg)
        a, b = _orthonormal_basis(axis)
        h = _lerp(u[:, 10], self.rise) / ctx.clip_seconds
        centre = _centre(u) - axis * (h * ctx.clip_seconds / 2.0)[:, None]
        return {"centre": centre, "radius": _lerp(u[:, 3], self.radius), "omega": omega,
                "theta0": 2.0 * np.pi * u[:, 6], "a": a, "b": b, "axis": axis,
                "axial_speed": h}

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

    The launch has an upward speed of 0.4-0.6 ``g·T`` (``T``: clip
    duration), so the apex falls inside the clip, and a horizontal speed
    within 45 degrees of the image plane, to the left or right at random.
    """

    name = "parabolic"
    param_shapes = {"p0": (3,), "v0": (3,), "g": (3,)}
    horizontal_travel = (0.8, 2.0)   # metres per clip
    vertical_ratio = (0.4, 0.6)      # v_z0 / (g T)
    max_off_plane_deg = 45.0

    def params_from_uniforms(self, u, ctx):
        n = u.shape[0]
        T, g = ctx.clip_seconds, ctx.gravity
        # horizontal unit vectors: camera right (projected on XY) rotated
        right = np.cross(ctx.view, [0.0, 0.0, 1.0])
        right[:, 2] = 0.0
        right = _norm(right)
        ang = np.deg2rad((2.0 * u[:, 4] - 1.0) * self.max_off_plane_deg)
        side = np.where(u[:, 5] < 0.5, 1.0, -1.0)
        c, s = _m.cos(ang), _m.sin(ang)
        hx = side * (c * right[:, 0] - s * right[:, 1])
        hy = side * (s * right[:, 0] + c * right[:, 1])
        speed = _lerp(u[:, 3], self.horizontal_travel) / T
        vz = _lerp(u[:, 6], self.vertical_ratio) * g * T
        v0 = np.stack([speed * hx, speed * hy, vz], axis=-1)
        # centre the path's bounding box (horizontal midpoint, vertical
        # mid-range) on the drawn centre offset
        t_apex = np.clip(vz / g, 0.0, T)
        z_apex = vz * t_apex - 0.5 * g * t_apex**2
        z_end = vz * T - 0.5 * g * T**2
        z_mid = 0.5 * (z_apex + np.minimum(0.0, z_end))
        offset = np.stack([v0[:, 0] * T / 2, v0[:, 1] * T / 2, z_mid], axis=-1)
        gvec = np.broadcast_to(np.array([0.0, 0.0, -g]), (n, 3)).copy()
        return {"p0": _centre(u) - offset, "v0": v0, "g": gvec}

    def positions(self, params, t):
        t = np.asarray(t, dtype=np.float64)[:, None]
        return _row(params, "p0") + t * _row(params, "v0") + (0.5 * t * t) * _row(params, "g")

    def equation(self, p):
        return (f"p(t) = p0 + t·v0 + ½·t²·g; p0 = {_vec(p['p0'])}, "
                f"v0 = {_vec(p['v0'])}, g = {_vec(p['g'])}")

    def description(self, p, clip_seconds):
        vz = p["v0"][2]
        g = -p["g"][2]
        return (f"Parabolic throw under gravity {g:.2f} m/s², launched at "
                f"{_length(p['v0']):.2f} m/s (upward {vz:.2f} m/s), apex at "
                f"t = {vz / g:.2f} s, over {clip_seconds:.2f} s.")


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
