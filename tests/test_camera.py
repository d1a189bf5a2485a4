"""Pinhole camera: conventions, projection, inverse, and the stored cameras
of generated samples."""

from __future__ import annotations

import numpy as np
import pytest

from trajlab import camera as cam

SEEDS = range(10)


def _random_cameras(rng, n, image_size=64):
    eye = cam.orbit_eye(rng.uniform(2, 10, n), rng.uniform(-180, 180, n), rng.uniform(5, 60, n))
    target = rng.uniform(-0.5, 0.5, (n, 3))
    R, t = cam.look_at(eye, target)
    K = cam.intrinsics(image_size, rng.uniform(20, 90, n))
    return eye, target, K, R, t


# ------------------------------------------------------------ conventions
def test_hand_made_camera_projects_as_documented():
    # camera on -Y looking at the origin: x right = +X, y down = -Z, z forward = +Y
    R, t = cam.look_at(np.array([0.0, -5.0, 0.0]))
    np.testing.assert_allclose(R, [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-15)
    np.testing.assert_allclose(t, [0, 0, 5], atol=1e-15)
    K = cam.intrinsics(64, 90.0)                     # f = 32 / tan(45 deg) = 32
    np.testing.assert_allclose(K, [[32, 0, 32], [0, 32, 32], [0, 0, 1]], atol=1e-12)
    pts = np.array([[[0.0, 0, 0], [1.0, 0, 0.5], [0.0, 5.0, -2.0]]])
    pix, depth = cam.project(pts, K[None], R[None], t[None])
    np.testing.assert_allclose(depth, [[5.0, 5.0, 10.0]], atol=1e-12)
    np.testing.assert_allclose(pix, [[[32, 32], [32 + 32 / 5, 32 - 16 / 5],
                                      [32, 32 + 64 / 10]]], atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_look_at_rotation_is_proper_and_aims_at_target(seed):
    rng = np.random.default_rng(seed)
    eye, target, K, R, t = _random_cameras(rng, 200)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    np.testing.assert_allclose(cam.camera_centre(R, t), eye, atol=1e-12)
    pix, depth = cam.project(target[:, None], K, R, t)
    np.testing.assert_allclose(pix[:, 0], 32.0, atol=1e-9)          # image centre
    np.testing.assert_allclose(depth[:, 0], np.linalg.norm(target - eye, axis=-1), rtol=1e-12)
    # image "up" is world up (v decreases) and the camera x axis is horizontal
    above, _ = cam.project((target + [0, 0, 0.1])[:, None], K, R, t)
    assert (above[:, 0, 1] < 32.0).all()
    assert np.abs(R[:, 0, 2]).max() < 1e-12


def test_intrinsics_match_field_of_view():
    for size, fov in [(32, 40.0), (64, 40.0), (100, 90.0), (17, 10.0)]:
        K = cam.intrinsics(size, fov)
        half = np.tan(np.deg2rad(fov / 2))
        # points on the edge of the field of view land on the image border
        R, t = np.eye(3)[None], np.zeros((1, 3))
        pts = np.array([[[half * 3, 0, 3], [-half * 3, 0, 3], [0, half * 7, 7]]])
        pix, _ = cam.project(pts, K[None], R, t)
        np.testing.assert_allclose(pix[0], [[size, size / 2], [0, size / 2], [size / 2, size]],
                                   atol=1e-9)


def test_orbit_eye_spherical_coordinates():
    eye = cam.orbit_eye(np.array([6.0, 2.0]), np.array([30.0, -120.0]), np.array([25.0, 5.0]))
    np.testing.assert_allclose(np.linalg.norm(eye, axis=-1), [6, 2], rtol=1e-12)
    np.testing.assert_allclose(np.rad2deg(np.arcsin(eye[:, 2] / [6, 2])), [25, 5], atol=1e-9)
    np.testing.assert_allclose(np.rad2deg(np.arctan2(eye[:, 1], eye[:, 0])), [30, -120],
                               atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_project_equals_matrix_form_and_unproject_inverts_it(seed):
    rng = np.random.default_rng(seed)
    eye, target, K, R, t = _random_cameras(rng, 100)
    X = rng.uniform(-2, 2, (100, 9, 3))
    pix, depth = cam.project(X, K, R, t)
    Xc = np.einsum("nij,npj->npi", R, X) + t[:, None]
    h = np.einsum("nij,npj->npi", K, Xc)
    np.testing.assert_allclose(depth, Xc[..., 2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pix, h[..., :2] / h[..., 2:], rtol=1e-12, atol=1e-9)
    back = cam.unproject(pix, depth, K, R, t)
    np.testing.assert_allclose(back, X, atol=1e-9)


def test_project_is_batch_independent_bitwise():
    rng = np.random.default_rng(0)
    eye, target, K, R, t = _random_cameras(rng, 50)
    X = rng.uniform(-2, 2, (50, 7, 3))
    pix, depth = cam.project(X, K, R, t)
    for k in (0, 17, 49):
        p1, d1 = cam.project(X[k:k + 1], K[k:k + 1], R[k:k + 1], t[k:k + 1])
        np.testing.assert_array_equal(p1[0], pix[k])
        np.testing.assert_array_equal(d1[0], depth[k])
    R1, t1 = cam.look_at(eye[3])
    R3, t3 = cam.look_at(eye, np.zeros(3))
    np.testing.assert_array_equal(R1, R3[3])
    np.testing.assert_array_equal(t1, t3[3])


def test_points_behind_camera_have_negative_depth():
    R, t = cam.look_at(np.array([0.0, -5.0, 0.0]))
    _, depth = cam.project(np.array([[[0.0, -6.0, 0.0]]]), cam.intrinsics(32, 40)[None],
                           R[None], t[None])
    assert depth[0, 0] == pytest.approx(-1.0)


# ---------------------------------------------- stored cameras of samples
def test_stored_camera_reproduces_pixels_and_depth(size_datasets):
    """``K (R X + t)`` of the stored positions gives the stored pixels and
    depth to float precision, for every sample and frame."""
    for seed, videos, labels, ann in size_datasets:
        spec = ann["spec"]
        K, R, t, X = ann["K"], ann["R"], ann["t"], ann["positions"]
        Xc = np.einsum("nij,ntj->nti", R, X) + t[:, None]
        h = np.einsum("nij,ntj->nti", K, Xc)
        np.testing.assert_allclose(ann["depth"], Xc[..., 2], rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(ann["pixels"], h[..., :2] / h[..., 2:], rtol=0, atol=1e-10)
        # pixel radius from perspective
        np.testing.assert_allclose(ann["radius"], K[:, None, 0, 0] * spec.object_radius
                                   / ann["depth"], rtol=1e-13)
        # unproject recovers the 3D ground truth
        np.testing.assert_allclose(cam.unproject(ann["pixels"], ann["depth"], K, R, t), X,
                                   atol=1e-10)


def test_stored_cameras_are_valid_and_oblique(size_datasets):
    for seed, videos, labels, ann in size_datasets:
        spec = ann["spec"]
        S, R, K, t = spec.image_size, ann["R"], ann["K"], ann["t"]
        np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2),
                                   np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
        fov = spec.camera.fov_deg[0]                         # default: fixed fov
        f = S / 2 / np.tan(np.deg2rad(fov / 2))
        np.testing.assert_allclose(K, np.broadcast_to(
            [[f, 0, S / 2], [0, f, S / 2], [0, 0, 1]], K.shape), rtol=1e-12)
        # the optical axis is never within 55 degrees of world Z
        cos_z = np.abs(R[:, 2, 2])
        angle = np.rad2deg(np.arccos(np.clip(cos_z, 0, 1)))
        assert angle.min() >= 55.0 - 1e-9
        # the camera orbits inside the default ranges and looks down
        C = cam.camera_centre(R, t)
        dist = np.linalg.norm(C, axis=-1)
        assert dist.min() >= 5.5 - 1e-9 and dist.max() <= 6.5 + 1e-9
        elev = np.rad2deg(np.arcsin(C[:, 2] / dist))
        azim = np.rad2deg(np.arctan2(C[:, 1], C[:, 0]))
        assert elev.min() >= 20 - 1e-9 and elev.max() <= 35 + 1e-9
        assert azim.min() >= 20 - 1e-9 and azim.max() <= 70 + 1e-9
        assert (R[:, 2, 2] < 0).all()
        # cameras really vary between samples
        assert np.ptp(azim) > 40 and np.ptp(elev) > 12 and np.ptp(dist) > 0.8
