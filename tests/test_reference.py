"""An independent oracle: a naive per-sample reference written from the documented formulas.

Every other "sequential == parallel" oracle in the suite runs the same
vectorised ``generate_block``. This module re-derives each stored value of a
sample with plain Python scalars (``math``, loops over frames and pixels),
from the formulas in README.md, ``trajlab/camera.py`` (conventions),
``trajlab/render.py`` (coverage ramp) and the equation of each class, taking
only the sample's *drawn* parameters (annotation ``params``, colour, camera
``K``, ``R``, ``t``) from the generator:

* the camera is a look-at camera on the stage centre within the spec's
  ranges: ``R`` rows are right, down, forward; ``K`` has ``f = (S/2) /
  tan(fov/2)`` and the principal point at the image centre;
* positions follow the class equation at ``t_k = k * clip_seconds / (T-1)``;
* pixels and depth are ``Xc = R X + t``, ``(u, v) = (f Xc/Zc + cx, f Yc/Zc + cy)``;
* the pixel radius is ``f * object_radius / depth`` (or its frame-0 value
  when ``radius_mode == 'constant'``);
* a pixel (row i, col j) has centre ``(j + 0.5, i + 0.5)`` and coverage
  ``clip(r + 0.5 - d, 0, 1)``; a trail takes the maximum of
  ``decay**lag * coverage`` over the previous positions; values are
  ``round(bg + coverage * (colour - bg))`` (half to even);
* the dot, plus the margin, is inside the frame in every frame and it moves
  at least ``min_motion * S`` pixels per frame on average.

Geometry is compared within float tolerance (the vectorised code sums in
another order); the rendered bytes, computed from the stored sub-pixel
centres and radii, must be identical.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from trajlab import DatasetSpec, make_trajectories

CLASSES = ("linear", "circular", "helical", "parabolic")
N_PER_CLASS = 200


def ref_position(name, p, t):
    """World position (x, y, z) of class ``name`` with params ``p`` at time ``t``."""
    if name == "linear":
        return [p["p0"][k] + t * p["v"][k] for k in range(3)]
    if name == "parabolic":
        return [p["p0"][k] + t * p["v0"][k] + 0.5 * t * t * p["g"][k] for k in range(3)]
    theta = p["theta0"] + p["omega"] * t
    c, s = math.cos(theta), math.sin(theta)
    out = [p["centre"][k] + p["radius"] * (c * p["a"][k] + s * p["b"][k]) for k in range(3)]
    if name == "helical":
        out = [out[k] + t * p["axial_speed"] * p["axis"][k] for k in range(3)]
    return out


def ref_project(X, K, R, t):
    Xc = [sum(R[i][j] * X[j] for j in range(3)) + t[i] for i in range(3)]
    return (K[0][0] * Xc[0] / Xc[2] + K[0][2], K[1][1] * Xc[1] / Xc[2] + K[1][2]), Xc[2]


def ref_frame_alpha(centres, radii, weights, S):
    """Coverage per pixel of the union of weighted dots (max), as a dict {(i, j): a}."""
    alpha = {}
    for (u, v), r, w in zip(centres, radii, weights):
        for i in range(max(0, int(v - r) - 2), min(S, int(v + r) + 3)):
            for j in range(max(0, int(u - r) - 2), min(S, int(u + r) + 3)):
                d = math.sqrt((i + 0.5 - v) ** 2 + (j + 0.5 - u) ** 2)
                a = w * min(1.0, max(0.0, r + 0.5 - d))
                if a > alpha.get((i, j), 0.0):
                    alpha[(i, j)] = a
    return alpha


def ref_video(pixels, radius, color, spec):
    T, S = spec.n_frames, spec.image_size
    bg = [float(x) for x in spec.background_color]
    out = np.empty((T, 3, S, S), dtype=np.uint8)
    for c in range(3):
        out[:, c] = spec.background_color[c]
    lags = range(min(spec.trail_length, T)) if spec.style == "trail" else range(1)
    for k in range(T):
        src = [k - lag for lag in lags if k - lag >= 0]
        alpha = ref_frame_alpha([pixels[f] for f in src], [radius[f] for f in src],
                                [spec.trail_decay ** (k - f) for f in src], S)
        for (i, j), a in alpha.items():
            for c in range(3):
                out[k, c, i, j] = round(bg[c] + a * (float(color[c]) - bg[c]))
    return out


def _check_camera(spec, K, R, t):
    S = spec.image_size
    fov = [math.radians(x) for x in spec.camera.fov_deg]
    f = K[0][0]
    assert K[1][1] == f and K[0][1] == K[1][0] == 0.0
    assert K[0][2] == K[1][2] == S / 2.0 and K[2] == [0.0, 0.0, 1.0]
    lo, hi = (S / 2.0) / math.tan(fov[1] / 2.0), (S / 2.0) / math.tan(fov[0] / 2.0)
    assert lo * (1 - 1e-12) <= f <= hi * (1 + 1e-12)
    eye = [-sum(R[i][k] * t[i] for i in range(3)) for k in range(3)]     # -R^T t
    dist = math.sqrt(sum(x * x for x in eye))
    elev = math.degrees(math.asin(eye[2] / dist))
    lo_d, hi_d = spec.camera.distance
    lo_e, hi_e = spec.camera.elevation_deg
    assert lo_d - 1e-9 <= dist <= hi_d + 1e-9 and lo_e - 1e-9 <= elev <= hi_e + 1e-9
    fwd = [-x / dist for x in eye]                                           # looks at the origin
    right = [fwd[1] * 1.0 - fwd[2] * 0.0, fwd[2] * 0.0 - fwd[0] * 1.0, 0.0]  # fwd x up(+Z)
    n = math.sqrt(sum(x * x for x in right))
    right = [x / n for x in right]
    down = [fwd[1] * right[2] - fwd[2] * right[1], fwd[2] * right[0] - fwd[0] * right[2],
            fwd[0] * right[1] - fwd[1] * right[0]]
    np.testing.assert_allclose(R, [right, down, fwd], rtol=0, atol=1e-12)


@pytest.mark.parametrize("style,size,radius_mode", [
    ("dot", 24, "perspective"), ("trail", 24, "perspective"), ("dot", 32, "perspective"),
    ("trail", 32, "perspective"), ("dot", 32, "constant"), ("trail", 24, "constant")])
def test_generator_matches_the_naive_reference(style, size, radius_mode):
    spec = DatasetSpec(n_samples=N_PER_CLASS * len(CLASSES), n_frames=8, image_size=size,
                       style=style, object_color="random", background_color=(20, 10, 40),
                       radius_mode=radius_mode, seed=97 + size)
    videos, labels, ann = make_trajectories(spec=spec, return_annotations=True)
    T, S = spec.n_frames, spec.image_size
    times = [k * spec.clip_seconds / (T - 1) for k in range(T)]
    constant = spec.radius_mode == "constant"
    for i in range(spec.n_samples):
        rec = ann["records"][i]
        name, p = rec["class"], rec["params"]
        assert name == CLASSES[labels[i]]
        K, R, t = ann["K"][i].tolist(), ann["R"][i].tolist(), ann["t"][i].tolist()
        _check_camera(spec, K, R, t)
        pix, depth, rad = [], [], []
        for k, tk in enumerate(times):
            X = ref_position(name, p, tk)
            np.testing.assert_allclose(ann["positions"][i, k], X, rtol=0, atol=1e-12)
            (u, v), z = ref_project(X, K, R, t)
            pix.append((u, v))
            depth.append(z)
            rad.append(K[0][0] * spec.object_radius / (depth[0] if constant else z))
        np.testing.assert_allclose(ann["pixels"][i], pix, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ann["depth"][i], depth, rtol=1e-12)
        np.testing.assert_allclose(ann["radius"][i], rad, rtol=1e-12)
        # framing: centre +- radius + margin inside the image, in front of the camera
        for (u, v), r, z in zip(pix, rad, depth):
            reach = r + spec.margin_px
            assert z > 0.5 and reach <= u <= S - reach and reach <= v <= S - reach
        step = sum(math.dist(pix[k], pix[k + 1]) for k in range(T - 1)) / (T - 1)
        assert step >= spec.min_motion * S
        # bytes: rendered from the stored sub-pixel centres and radii
        want = ref_video(ann["pixels"][i].tolist(), ann["radius"][i].tolist(),
                         ann["colors"][i].tolist(), spec)
        np.testing.assert_array_equal(videos[i], want, err_msg=f"sample {i} ({name}, {style})")
    assert np.bincount(labels, minlength=4).tolist() == [N_PER_CLASS] * 4
