"""Trajectory classes: geometry of positions(params, t), the documented
orientation constraints, hand-made parameters, purity and batching."""

from __future__ import annotations

import re

import numpy as np
import pytest

from trajlab import camera as cam
from trajlab import make_trajectories
from trajlab.spec import CameraSpec, DatasetSpec
from trajlab.trajectories import (MIN_FRAMES_PER_TURN, N_UNIFORMS, REGISTRY, START_JITTER,
                                  Circular, Context, Helical, Linear, Parabolic, get_class)

SEEDS = range(12)
N = 400                     # samples per seed
Z = np.array([0.0, 0.0, 1.0])
# the constraints documented in trajlab/trajectories.py (degrees)
LINEAR_MIN_DEG = 35.0      # linear direction vs optical axis, at least
CIRCLE_MAX_DEG = 55.0      # circle normal vs direction to the camera, at most
HELIX_TILT_DEG = 20.0      # helix axis vs world Z, at most
THROW_MAX_DEG = 45.0       # horizontal launch velocity vs image plane, at most


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _views(rng, n, camspec=CameraSpec()):
    """Optical axes of cameras drawn like the generator draws them."""
    lerp = lambda u, p: p[0] + u * (p[1] - p[0])  # noqa: E731
    u = rng.random((n, 3))
    eye = cam.orbit_eye(lerp(u[:, 0], camspec.distance), lerp(u[:, 1], camspec.azimuth_deg),
                        lerp(u[:, 2], camspec.elevation_deg))
    R, _ = cam.look_at(eye)
    return R[:, 2]


def draw(name, seed, n=N, n_frames=16, clip_seconds=1.0, gravity=9.81):
    """(params, ctx, times, positions) for ``n`` samples of class ``name``."""
    rng = np.random.default_rng([seed, 7])
    ctx = Context(_views(rng, n), clip_seconds, n_frames, gravity)
    params = REGISTRY[name].params_from_uniforms(rng.random((n, N_UNIFORMS)), ctx)
    t = np.arange(n_frames) * (clip_seconds / (n_frames - 1))
    return params, ctx, t, REGISTRY[name].positions(params, t)


def _angle_deg(a, b):
    """Angle between unit vectors (rows)."""
    return np.rad2deg(np.arccos(np.clip(np.sum(a * b, axis=-1), -1.0, 1.0)))


def _line_angle_deg(a, b):
    """Angle between the lines spanned by unit vectors, in [0, 90]."""
    return np.rad2deg(np.arccos(np.clip(np.abs(np.sum(a * b, axis=-1)), 0.0, 1.0)))


# ------------------------------------------------------------------ linear
@pytest.mark.parametrize("seed", SEEDS)
def test_linear_constant_velocity(seed):
    p, ctx, t, pos = draw("linear", seed)
    dt = t[1]
    d = np.diff(pos, axis=1)
    np.testing.assert_allclose(d, np.broadcast_to(p["v"][:, None] * dt, d.shape), atol=1e-12)
    # constant first difference: every step equals the first
    np.testing.assert_allclose(d, np.broadcast_to(d[:, :1], d.shape), atol=1e-12)
    travel = np.linalg.norm(p["v"], axis=-1) * ctx.clip_seconds
    assert travel.min() >= Linear.travel[0] - 1e-9 and travel.max() <= Linear.travel[1] + 1e-9
    # the clip starts at p0, inside the start box
    np.testing.assert_array_equal(pos[:, 0], p["p0"])
    assert np.abs(p["p0"]).max() <= START_JITTER + 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_linear_direction_far_from_optical_axis(seed):
    p, ctx, _, _ = draw("linear", seed)
    ang = _line_angle_deg(_unit(p["v"]), ctx.view)
    assert ang.min() >= LINEAR_MIN_DEG - 1e-9
    # the band is actually used: some directions come close to the limit
    assert ang.min() < LINEAR_MIN_DEG + 5


# ---------------------------------------------------------------- circular
@pytest.mark.parametrize("seed", SEEDS)
def test_circular_constant_radius_and_planar(seed):
    p, ctx, t, pos = draw("circular", seed)
    rel = pos - p["centre"][:, None]
    np.testing.assert_allclose(np.linalg.norm(rel, axis=-1),
                               np.broadcast_to(p["radius"][:, None], rel.shape[:2]), rtol=1e-12)
    # every point lies in the plane with the stored normal
    assert np.abs(np.sum(rel * p["normal"][:, None], axis=-1)).max() < 1e-12
    # (a, b, normal) is a right-handed orthonormal frame
    for k in ("a", "b", "normal"):
        np.testing.assert_allclose(np.linalg.norm(p[k], axis=-1), 1.0, rtol=1e-12)
    assert np.abs(np.sum(p["a"] * p["b"], axis=-1)).max() < 1e-12
    np.testing.assert_allclose(np.cross(p["a"], p["b"]), p["normal"], atol=1e-12)
    assert p["radius"].min() >= Circular.radius[0] and p["radius"].max() <= Circular.radius[1]


@pytest.mark.parametrize("seed", SEEDS)
def test_circular_uniform_angular_speed_and_handedness(seed):
    p, ctx, t, pos = draw("circular", seed)
    rel = pos - p["centre"][:, None]
    # signed angle between consecutive radii, about the normal, equals omega*dt
    cross = np.cross(rel[:, :-1], rel[:, 1:])
    sin = np.sum(cross * p["normal"][:, None], axis=-1)
    cos = np.sum(rel[:, :-1] * rel[:, 1:], axis=-1)
    step = np.arctan2(sin, cos)
    np.testing.assert_allclose(step, np.broadcast_to(p["omega"][:, None] * t[1], step.shape),
                               atol=1e-9)
    turns = np.abs(p["omega"]) * ctx.clip_seconds / (2 * np.pi)
    assert turns.min() >= Circular.turns[0] - 1e-12 and turns.max() <= Circular.turns[1] + 1e-12
    # handedness and phase are random: both senses, phases all round
    assert 0.35 < np.mean(p["omega"] > 0) < 0.65
    assert p["theta0"].min() >= 0 and p["theta0"].max() < 2 * np.pi
    assert np.histogram(p["theta0"], bins=8, range=(0, 2 * np.pi))[0].min() > N / 8 * 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_circular_normal_faces_the_camera(seed):
    p, ctx, _, _ = draw("circular", seed)
    ang = _angle_deg(p["normal"], -ctx.view)
    assert ang.max() <= CIRCLE_MAX_DEG + 1e-9
    assert ang.max() > CIRCLE_MAX_DEG - 5      # the cap is used


# ----------------------------------------------------------------- helical
@pytest.mark.parametrize("seed", SEEDS)
def test_helical_constant_radius_about_axis_and_constant_pitch(seed):
    p, ctx, t, pos = draw("helical", seed)
    n = p["axis"][:, None]
    rel = pos - p["centre"][:, None]
    axial = np.sum(rel * n, axis=-1)
    radial = rel - axial[..., None] * n
    np.testing.assert_allclose(np.linalg.norm(radial, axis=-1),
                               np.broadcast_to(p["radius"][:, None], axial.shape), rtol=1e-12)
    # constant axial advance per frame, equal to h * dt
    np.testing.assert_allclose(np.diff(axial, axis=1),
                               np.broadcast_to(p["axial_speed"][:, None] * t[1],
                                               (axial.shape[0], axial.shape[1] - 1)), atol=1e-12)
    # pitch: one full turn later the point has moved 2*pi*h/|omega| along the axis
    period = 2 * np.pi / np.abs(p["omega"])
    for k in range(len(p["omega"])):
        one = {key: val[k] for key, val in p.items()}
        a, b = Helical().positions(one, np.array([0.3, 0.3 + period[k]]))
        np.testing.assert_allclose(b - a, 2 * np.pi * one["axial_speed"] / abs(one["omega"])
                                   * one["axis"], atol=1e-12)
    rise = p["axial_speed"] * ctx.clip_seconds
    assert rise.min() >= Helical.rise[0] - 1e-12 and rise.max() <= Helical.rise[1] + 1e-12
    np.testing.assert_allclose(np.cross(p["a"], p["b"]), p["axis"], atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_helical_axis_near_vertical_and_far_from_optical_axis(seed):
    p, ctx, _, _ = draw("helical", seed)
    tilt = _line_angle_deg(p["axis"], Z)
    assert tilt.max() <= HELIX_TILT_DEG + 1e-9
    assert 0.35 < np.mean(p["axis"][:, 2] > 0) < 0.65       # rising and sinking
    assert 0.35 < np.mean(p["omega"] > 0) < 0.65            # both handednesses
    # default elevations (<= 35 deg) keep the optical axis >= 55 deg from Z
    assert _line_angle_deg(p["axis"], ctx.view).min() >= 55.0 - HELIX_TILT_DEG - 1e-9


def test_helical_description_states_the_pitch():
    p = Helical().sample(np.random.default_rng(3), Context(np.array([0.0, 0.9, -0.43])))
    text = Helical().description(p, 1.0)
    pitch = float(re.search(r"pitch ([0-9.]+) m", text).group(1))
    assert pitch == pytest.approx(2 * np.pi * p["axial_speed"] / abs(p["omega"]), abs=0.006)


# --------------------------------------------------------------- parabolic
@pytest.mark.parametrize("gravity", [9.81, 3.7])
@pytest.mark.parametrize("seed", SEEDS)
def test_parabolic_constant_second_difference(seed, gravity):
    p, ctx, t, pos = draw("parabolic", seed, gravity=gravity, clip_seconds=1.2)
    dt = t[1]
    dd = np.diff(pos, n=2, axis=1)
    expected = np.array([0.0, 0.0, -gravity]) * dt**2
    np.testing.assert_allclose(dd, np.broadcast_to(expected, dd.shape), atol=1e-12)
    np.testing.assert_array_equal(p["g"], np.broadcast_to([0.0, 0.0, -gravity], p["g"].shape))
    # the apex time, as a fraction of the clip, covers the documented range
    lo, hi = Parabolic().apex_fraction_range(ctx)
    frac = p["v0"][:, 2] / gravity / 1.2
    assert frac.min() >= lo - 1e-12 and frac.max() <= hi + 1e-12
    dz = pos[..., 2] - pos[:, :1, 2]
    if gravity * 1.2**2 / 2 * (np.sqrt(2) - 1) ** 2 > Parabolic.vertical_excursion:
        # (9.81 m/s² over 1.2 s) no throw stays within the budget: the one
        # centred on its start, apex at sqrt(2) - 1 of the clip
        np.testing.assert_allclose(frac, np.sqrt(2) - 1, rtol=1e-12)
        np.testing.assert_allclose(dz.max(1), -dz.min(1), rtol=0.05)
        return
    assert frac.min() < lo + 0.1 * (hi - lo) and frac.max() > hi - 0.1 * (hi - lo)
    # and the path never climbs or drops more than the budget from its start
    assert np.abs(dz).max() <= Parabolic.vertical_excursion + 1e-9
    assert np.abs(dz).max() > Parabolic.vertical_excursion * 0.9


@pytest.mark.parametrize("seed", SEEDS)
def test_parabolic_horizontal_velocity_near_image_plane(seed):
    p, ctx, _, _ = draw("parabolic", seed)
    h = p["v0"].copy()
    h[:, 2] = 0
    h = _unit(h)
    right = _unit(np.cross(ctx.view, Z))        # camera x axis (horizontal)
    to_right = _line_angle_deg(h, right)
    assert to_right.max() <= THROW_MAX_DEG + 1e-9
    # angle between the horizontal velocity and the image plane
    off_plane = 90.0 - _line_angle_deg(h, ctx.view)
    assert off_plane.max() <= THROW_MAX_DEG + 1e-9
    side = np.sum(h * right, axis=-1) > 0
    assert 0.35 < side.mean() < 0.65                        # thrown left and right


# ----------------------------------------------------- shared properties
@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("n_frames", [2, 3, 5, 8, 9, 16, 17, 33])
def test_no_temporal_aliasing(name, n_frames):
    p, ctx, t, pos = draw(name, n_frames, n=300, n_frames=n_frames)
    if "omega" in p:
        # a turn spans at least MIN_FRAMES_PER_TURN frame intervals
        assert (np.abs(p["omega"]) * t[1]).max() <= 2 * np.pi / MIN_FRAMES_PER_TURN + 1e-12
    assert np.isfinite(pos).all() and pos.shape == (300, n_frames, 3)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_batch_independence_is_bitwise(name):
    """A sample's parameters and positions do not depend on its batch."""
    tc = REGISTRY[name]
    rng = np.random.default_rng(5)
    n = 37
    ctx = Context(_views(rng, n), 1.0, 16, 9.81)
    u = rng.random((n, N_UNIFORMS))
    t = np.linspace(0, 1, 16)
    full = tc.params_from_uniforms(u, ctx)
    pos = tc.positions(full, t)
    for k in (0, 5, 36):
        ctx1 = Context(ctx.view[k:k + 1], 1.0, 16, 9.81)
        one = tc.params_from_uniforms(u[k:k + 1], ctx1)
        for key in full:
            np.testing.assert_array_equal(one[key][0], full[key][k])
        np.testing.assert_array_equal(tc.positions(one, t)[0], pos[k])


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("seed", range(6))
def test_sample_matches_params_from_uniforms(name, seed):
    tc = REGISTRY[name]
    view = _views(np.random.default_rng(seed), 1)[0]
    ctx = Context(view, 1.0, 16, 9.81)
    p = tc.sample(np.random.default_rng(seed), ctx)
    u = np.random.default_rng(seed).random(N_UNIFORMS)[None]
    batch = tc.params_from_uniforms(u, Context(view[None], 1.0, 16, 9.81))
    assert set(p) == set(tc.param_shapes) == set(batch)
    for key, shape in tc.param_shapes.items():
        assert np.shape(p[key]) == shape
        np.testing.assert_array_equal(p[key], batch[key][0])
    # positions of one sample's dict: shape (T, 3)
    assert tc.positions(p, np.linspace(0, 1, 5)).shape == (5, 3)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_sample_is_pure_function_of_rng(name):
    tc = REGISTRY[name]
    ctx = Context(np.array([-0.5, -0.6, -0.62]) / np.linalg.norm([-0.5, -0.6, -0.62]))
    a = tc.sample(np.random.default_rng(11), ctx)
    b = tc.sample(np.random.default_rng(11), ctx)
    c = tc.sample(np.random.default_rng(12), ctx)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


# -------------------------------------------------------- hand-made params
T3 = np.array([0.0, 1.0, 2.0])


def test_hand_made_linear():
    p = {"p0": np.array([1.0, -2.0, 0.5]), "v": np.array([0.5, 0.0, -1.0])}
    np.testing.assert_allclose(Linear().positions(p, T3),
                               [[1, -2, 0.5], [1.5, -2, -0.5], [2, -2, -1.5]], atol=1e-15)


def _circle(**extra):
    return {"centre": np.array([1.0, 0.0, 0.0]), "radius": 2.0, "omega": np.pi / 2,
            "theta0": 0.0, "a": np.array([1.0, 0.0, 0.0]), "b": np.array([0.0, 1.0, 0.0]),
            "normal": np.array([0.0, 0.0, 1.0]), **extra}


def test_hand_made_circular():
    np.testing.assert_allclose(Circular().positions(_circle(), T3),
                               [[3, 0, 0], [1, 2, 0], [-1, 0, 0]], atol=1e-12)
    # phase and clockwise sense
    p = _circle(theta0=np.pi / 2, omega=-np.pi / 2)
    np.testing.assert_allclose(Circular().positions(p, T3),
                               [[1, 2, 0], [3, 0, 0], [1, -2, 0]], atol=1e-12)


def test_hand_made_helical():
    p = _circle(axis=np.array([0.0, 0.0, 1.0]), axial_speed=0.5)
    del p["normal"]
    np.testing.assert_allclose(Helical().positions(p, T3),
                               [[3, 0, 0], [1, 2, 0.5], [-1, 0, 1.0]], atol=1e-12)


def test_hand_made_parabolic():
    p = {"p0": np.array([0.0, 0.0, 1.0]), "v0": np.array([1.0, 0.0, 5.0]),
         "g": np.array([0.0, 0.0, -10.0])}
    np.testing.assert_allclose(Parabolic().positions(p, np.array([0.0, 0.5, 1.0])),
                               [[0, 0, 1], [0.5, 0, 2.25], [1, 0, 1]], atol=1e-12)


def test_hand_made_batch_of_params():
    p = {"p0": np.array([[0.0, 0, 0], [1, 1, 1]]), "v": np.array([[1.0, 0, 0], [0, 0, 2]])}
    pos = Linear().positions(p, T3)
    assert pos.shape == (2, 3, 3)
    np.testing.assert_allclose(pos[1, 2], [1, 1, 5])
    np.testing.assert_allclose(pos[0, 1], [1, 0, 0])


# ------------------------------------------------- text ground truth
@pytest.mark.parametrize("name, keys", [
    ("linear", ["p0", "v"]),
    ("circular", ["centre", "radius", "a", "b", "theta0", "omega"]),
    ("helical", ["centre", "radius", "a", "b", "axis", "axial_speed", "theta0", "omega"]),
    ("parabolic", ["p0", "v0", "g"]),
])
def test_equation_holds_the_actual_numbers(name, keys):
    tc = REGISTRY[name]
    for seed in range(5):
        p = tc.sample(np.random.default_rng(seed), Context(_views(np.random.default_rng(seed),
                                                                  1)[0]))
        eq = tc.equation(p)
        for key in keys:
            vals = np.atleast_1d(p[key])
            text = ", ".join(f"{x:.3f}" for x in vals)
            assert (f"({text})" if vals.size == 3 else text) in eq, (key, eq)


def test_descriptions_state_the_sense_of_rotation():
    for omega, word in ((2.0, "counter-clockwise"), (-2.0, "clockwise")):
        text = Circular().description(_circle(omega=omega), 1.0)
        assert f" {word} " in text
        assert f"{abs(omega) / (2 * np.pi):.2f} turns" in text


def test_registry_and_get_class():
    assert list(REGISTRY) == ["linear", "circular", "helical", "parabolic"]
    for name, tc in REGISTRY.items():
        assert tc.name == name and get_class(name) is tc
    with pytest.raises(ValueError, match=re.escape(
            "Unknown trajectory class 'spiral'; valid classes are "
            "['circular', 'helical', 'linear', 'parabolic'].")):
        get_class("spiral")


# ------------------------------------- constraints in generated datasets
def test_generated_params_respect_documented_constraints(size_datasets):
    """Stored params of real samples obey the constraints relative to their
    stored camera (linear >= 35 deg off axis, circle normal <= 55 deg from
    the camera direction, helix axis <= 20 deg from Z, throw <= 45 deg off
    the image plane)."""
    seen = set()
    for seed, videos, labels, ann in size_datasets:
        view = ann["R"][:, 2]
        spec = ann["spec"]
        groups = {}
        for k, rec in enumerate(ann["records"]):
            groups.setdefault(rec["class"], []).append(k)
        for name, idx in groups.items():
            idx = np.array(idx)
            p = {key: np.array([ann["records"][k]["params"][key] for k in idx])
                 for key in REGISTRY[name].param_shapes}
            v = view[idx]
            if name == "linear":
                assert _line_angle_deg(_unit(p["v"]), v).min() >= 35.0 - 1e-9
            elif name == "circular":
                assert _angle_deg(p["normal"], -v).max() <= 55.0 + 1e-9
            elif name == "helical":
                assert _line_angle_deg(p["axis"], Z).max() <= 20.0 + 1e-9
                assert _line_angle_deg(p["axis"], v).min() >= 35.0 - 1e-9
            else:
                h = p["v0"].copy()
                h[:, 2] = 0
                assert 90 - _line_angle_deg(_unit(h), v).min() <= 45.0 + 1e-9
            # params reproduce the stored positions (no jitter by default)
            np.testing.assert_allclose(REGISTRY[name].positions(p, spec.times),
                                       ann["positions"][idx], atol=1e-12)
            seen.add(name)
    assert seen == set(REGISTRY)


@pytest.mark.parametrize("n_frames", [8, 16, 17])
def test_helices_make_at_least_one_full_turn_when_frames_allow(n_frames):
    spec = DatasetSpec(n_samples=400, n_frames=n_frames, image_size=32, classes=("helical",))
    _, _, ann = make_trajectories(spec=spec, return_annotations=True)
    turns = np.array([abs(r["params"]["omega"]) * spec.clip_seconds / (2 * np.pi)
                      for r in ann["records"]])
    assert turns.min() >= 1.0 - 1e-12
    # and never more than one turn per MIN_FRAMES_PER_TURN frame intervals
    assert turns.max() <= (n_frames - 1) / MIN_FRAMES_PER_TURN + 1e-12


# -------------------------------------------- which part of the motion shows
@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("seed", SEEDS[:4])
def test_every_class_starts_in_the_start_box(name, seed):
    p, ctx, t, pos = draw(name, seed)
    assert np.abs(pos[:, 0]).max() <= START_JITTER + 1e-12
    # uniform in the box, whatever the class
    assert np.abs(pos[:, 0].mean(axis=0)).max() < 0.1 * START_JITTER
    np.testing.assert_allclose(pos[:, 0].std(axis=0), START_JITTER / np.sqrt(3), rtol=0.12)


@pytest.mark.parametrize("seed", SEEDS)
def test_parabolas_rise_fall_or_pass_the_apex_in_fixed_proportions(seed):
    """Under weak gravity (1 m/s² over 1 s) all three parts of a flight fit
    the vertical budget: a quarter of the throws only fall, a quarter only
    rise and half pass the apex, for any seed."""
    n = 2000
    p, ctx, t, pos = draw("parabolic", seed, n=n, gravity=1.0)
    lo, hi = Parabolic().apex_fraction_range(ctx)
    assert lo < 0.0 and hi > 1.0
    frac = p["v0"][:, 2] / 1.0 / ctx.clip_seconds
    falling, rising = frac <= 0.0, frac >= 1.0
    apex = ~falling & ~rising
    # the frames show it: monotonic down, monotonic up, or up then down
    dz = np.diff(pos[..., 2], axis=1)
    assert (dz[falling] < 0).all() and (dz[rising] > 0).all()
    inside = apex & (frac > 0.1) & (frac < 0.9)      # apex clear of the ends
    assert (dz[inside, 0] > 0).all() and (dz[inside, -1] < 0).all()
    # binomial standard error at n = 2000 is about 0.01: allow 4 of them
    assert abs(falling.mean() - 0.25) < 0.04 and abs(rising.mean() - 0.25) < 0.04
    assert abs(apex.mean() - 0.5) < 0.04
    assert np.abs(pos[..., 2] - pos[:, :1, 2]).max() <= Parabolic.vertical_excursion + 1e-9


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_default_parabolas_pass_the_apex_early_or_late_by_start_height(seed):
    """At 9.81 m/s² over 1 s a throw that only rose would climb 4.9 m: every
    throw passes its apex, within the admissible range; one that starts
    high peaks earlier (mostly falls) than one that starts low."""
    p, ctx, t, pos = draw("parabolic", seed, n=2000)
    lo, hi = Parabolic().apex_fraction_range(ctx)
    assert 0.0 < lo < np.sqrt(2) - 1 < hi < 1.0
    frac = p["v0"][:, 2] / ctx.gravity / ctx.clip_seconds
    assert frac.min() >= lo - 1e-12 and frac.max() <= hi + 1e-12
    high = p["p0"][:, 2] > 0
    assert np.median(frac[high]) < np.median(frac[~high]) - 0.2 * (hi - lo)
    # both ends of the range occur among high and among low starts
    span = hi - lo
    for part in (high, ~high):
        assert frac[part].min() < lo + 0.5 * span < frac[part].max()
    # every path stays within the vertical budget around its start
    assert np.abs(pos[..., 2] - pos[:, :1, 2]).max() <= Parabolic.vertical_excursion + 1e-9


def test_motion_heads_across_the_stage_not_out_of_it():
    """From an off-centre start the path heads towards the stage centre
    (the direction draws stay symmetric, so this is not visible in frame 0):
    a line across the image, a circle's centre, a helix's turn and rise, a
    throw's horizontal speed."""
    v, ctx, _, _ = draw("linear", 3, n=2000)
    across = v["v"] - np.sum(v["v"] * ctx.view, axis=-1)[:, None] * ctx.view
    assert (np.sum(across * v["p0"], axis=-1) <= 0).all()
    for name in ("circular", "helical"):
        p, _, _, pos = draw(name, 3, n=2000)
        assert (np.sum((p["centre"] - pos[:, 0]) * pos[:, 0], axis=-1) <= 1e-12).all()
    p, _, _, pos = draw("helical", 3, n=2000)
    assert (np.sign(p["axis"][:, 2]) == np.where(pos[:, 0, 2] <= 0, 1, -1)).all()
    p, _, _, _ = draw("parabolic", 3, n=2000)
    assert (np.sum(p["v0"][:, :2] * p["p0"][:, :2], axis=-1) <= 0).all()
