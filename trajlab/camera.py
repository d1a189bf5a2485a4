"""Pinhole camera: the one place where trajlab's conventions are defined.

Conventions
-----------
World
    Right-handed, metres, **Z up**; gravity points along **-Z**. The stage
    (where objects move) is centred on the world origin.
Camera (OpenCV)
    Camera frame x to the right of the image, y **down** the image, z
    **forward** along the optical axis. A world point ``X`` (shape ``(3,)``)
    has camera coordinates ``Xc = R @ X + t`` (``R``: world-to-camera
    rotation, ``t``: translation, so the camera centre is ``C = -R.T @ t``).
    ``depth = Xc[2]`` (metres along the optical axis, positive in front).
Pixels
    ``[u, v, 1]^T ~ K @ Xc`` with ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]``;
    ``u`` grows to the right (column), ``v`` downwards (row). Coordinates
    are continuous: pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``,
    so its **centre is at (j + 0.5, i + 0.5)**. ``cx = cy = image_size / 2``
    is the image centre. Stored pixel positions are never clipped.
Image arrays
    ``videos[n, t, c, i, j]``: sample, frame, RGB channel, row, column.

All functions are vectorised over leading batch dimensions and use only
element-wise arithmetic (no BLAS), so a sample's values do not depend on the
batch it was computed in.
"""

from __future__ import annotations

import numpy as np

from . import _math as _m

__all__ = ["look_at", "intrinsics", "project", "unproject", "camera_centre",
           "orbit_eye"]


def orbit_eye(distance, azimuth_deg, elevation_deg):
    """Camera centre on a sphere around the origin.

    Parameters
    ----------
    distance, azimuth_deg, elevation_deg : ndarray of shape (...)

    Returns
    -------
    eye : ndarray of shape (..., 3)
    """
    az = np.deg2rad(azimuth_deg)
    el = np.deg2rad(elevation_deg)
    ce = _m.cos(el)
    return np.stack([distance * ce * _m.cos(az), distance * ce * _m.sin(az),
                     distance * _m.sin(el)], axis=-1)


def _cross(a, b):
    return np.stack([
        a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
        a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
        a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0],
    ], axis=-1)


def _normalize(a):
    return a / np.sqrt(a[..., 0] ** 2 + a[..., 1] ** 2 + a[..., 2] ** 2)[..., None]


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """World-to-camera rotation and translation of a camera at ``eye``
    looking at ``target``, with image "up" towards world ``up``.

    Parameters
    ----------
    eye : array-like of shape (..., 3)
    target : array-like of shape (..., 3)
    up : array-like of shape (3,)
        Must not be parallel to the viewing direction.

    Returns
    -------
    R : ndarray of shape (..., 3, 3)
        Rows are the camera's x (right), y (down) and z (forward) axes
        expressed in world coordinates.
    t : ndarray of shape (..., 3)
        ``-R @ eye``.
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.broadcast_to(np.asarray(target, dtype=np.float64), eye.shape)
    up = np.broadcast_to(np.asarray(up, dtype=np.float64), eye.shape)
    forward = _normalize(target - eye)
    right = _normalize(_cross(forward, up))
    down = _cross(forward, right)
    R = np.stack([right, down, forward], axis=-2)
    t = -(R[..., 0] * eye[..., 0:1] + R[..., 1] * eye[..., 1:2] + R[..., 2] * eye[..., 2:3])
    return R, t


def intrinsics(image_size, fov_deg):
    """Intrinsic matrix of a square image with the given full field of view.

    Parameters
    ----------
    image_size : int
    fov_deg : ndarray of shape (...)

    Returns
    -------
    K : ndarray of shape (..., 3, 3)
    """
    fov = np.asarray(fov_deg, dtype=np.float64)
    f = (image_size / 2.0) / _m.tan(np.deg2rad(fov) / 2.0)
    K = np.zeros(fov.shape + (3, 3))
    K[..., 0, 0] = f
    K[..., 1, 1] = f
    K[..., 0, 2] = image_size / 2.0
    K[..., 1, 2] = image_size / 2.0
    K[..., 2, 2] = 1.0
    return K


def to_camera(points, R, t):
    """``R @ X + t`` for points of shape (..., P, 3) and R (..., 3, 3)."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    R = R[..., None, :, :]
    t = t[..., None, :]
    return np.stack([R[..., i, 0] * x + R[..., i, 1] * y + R[..., i, 2] * z + t[..., i]
                     for i in range(3)], axis=-1)


def project(points, K, R, t):
    """Project world points to sub-pixel image coordinates.

    Parameters
    ----------
    points : ndarray of shape (..., P, 3)
        World points; ``...`` are batch dimensions shared with the camera.
    K, R : ndarray of shape (..., 3, 3)
    t : ndarray of shape (..., 3)

    Returns
    -------
    pixels : ndarray of shape (..., P, 2)
        ``(u, v)`` = (column, row) in continuous pixel coordinates, unclipped.
    depth : ndarray of shape (..., P)
        Camera z of each point (metres); <= 0 means behind the camera.
    """
    cam = to_camera(points, R, t)
    depth = cam[..., 2]
    K = K[..., None, :, :]
    u = K[..., 0, 0] * cam[..., 0] / depth + K[..., 0, 2]
    v = K[..., 1, 1] * cam[..., 1] / depth + K[..., 1, 2]
    return np.stack([u, v], axis=-1), depth


def unproject(pixels, depth, K, R, t):
    """Inverse of :func:`project`: world points from pixels and depth."""
    K = K[..., None, :, :]
    x = (pixels[..., 0] - K[..., 0, 2]) / K[..., 0, 0] * depth
    y = (pixels[..., 1] - K[..., 1, 2]) / K[..., 1, 1] * depth
    cam = np.stack([x, y, depth], axis=-1) - t[..., None, :]
    # R is orthonormal: X = R^T (Xc - t)
    Rt = np.swapaxes(R, -1, -2)
    return to_camera(cam, Rt, np.zeros_like(t))


def camera_centre(R, t):
    """Camera centre in world coordinates, ``-R^T t``, shape (..., 3)."""
    Rt = np.swapaxes(R, -1, -2)
    return -(Rt[..., 0] * t[..., 0:1] + Rt[..., 1] * t[..., 1:2] + Rt[..., 2] * t[..., 2:3])
