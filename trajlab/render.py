"""Anti-aliased rendering of a moving dot, vectorised over samples and frames.

The dot is a disc at a sub-pixel centre ``(u, v)`` with pixel radius ``r``.
A pixel's coverage is ``clip(r + 0.5 - d, 0, 1)``, where ``d`` is the
distance from the pixel centre (``j + 0.5, i + 0.5``, see
:mod:`trajlab.camera`) to the dot centre: a one-pixel linear ramp across
the edge, which approximates the area of the pixel inside the disc.
Colours are blended as ``background + coverage * (object - background)``
and rounded to uint8.

Only a small window around each dot is computed; the rest of the frame is
a plain fill, which keeps rendering near the cost of writing the bytes.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["coverage", "render"]

#: Upper bound of the trail renderer's float64 accumulator, bytes.
TRAIL_ACC_BYTES = 16 * 2**20


def coverage(pixels, radius, image_size):
    """Full-frame coverage of one dot per frame (reference implementation).

    Parameters
    ----------
    pixels : ndarray of shape (..., 2)
        Dot centres ``(u, v)``.
    radius : ndarray of shape (...)
        Pixel radii.
    image_size : int

    Returns
    -------
    alpha : ndarray of shape (..., image_size, image_size), float32 in [0, 1]
    """
    centres = np.arange(image_size, dtype=np.float64) + 0.5
    dx = centres - pixels[..., 0, None]
    dy = centres - pixels[..., 1, None]
    d = np.sqrt(dy[..., :, None] ** 2 + dx[..., None, :] ** 2)
    return np.clip(radius[..., None, None] + 0.5 - d, 0.0, 1.0).astype(np.float32)


def _window(pixels, radius, image_size):
    """Top-left corners and size of square windows that hold every dot."""
    size = min(image_size, int(math.ceil(2.0 * float(radius.max()))) + 4)
    corner = np.floor(pixels - radius[..., None] - 1.0).astype(np.int64)
    np.clip(corner, 0, image_size - size, out=corner)
    return corner, size


def _window_alpha(pixels, radius, corner, size):
    """Coverage inside each window, shape (..., size, size)."""
    offs = np.arange(size, dtype=np.float64) + 0.5
    dx = corner[..., 0, None] + offs - pixels[..., 0, None]
    dy = corner[..., 1, None] + offs - pixels[..., 1, None]
    d = np.sqrt(dy[..., :, None] ** 2 + dx[..., None, :] ** 2)
    return np.clip(radius[..., None, None] + 0.5 - d, 0.0, 1.0)


def _scatter(out, alpha, corner, size, bg, delta):
    """Blend window coverages into ``out`` (N, T, 3, H, W) in place.

    One 1-D scatter per channel through flat indices is much cheaper than
    4-D fancy indexing; windows of one frame never overlap themselves.
    """
    n, t, _, H, W = out.shape
    frame0 = (np.arange(n)[:, None] * t + np.arange(t)) * (3 * H * W)        # (N, T)
    idx = (frame0[..., None, None] + corner[..., 1, None, None] * W
           + corner[..., 0, None, None]
           + (np.arange(size)[:, None] * W + np.arange(size)[None, :]))
    flat = out.reshape(-1)   # a view: render() works on a C-contiguous buffer
    for c in range(3):
        flat[idx + c * H * W] = np.rint(bg[c] + alpha * delta[:, c, None, None, None]
                                        ).astype(np.uint8)


def render(pixels, radius, colors, background, image_size, style="dot",
           trail_length=4, trail_decay=0.5, out=None):
    """Render clips of one moving dot.

    Parameters
    ----------
    pixels : ndarray of shape (N, T, 2)
        Sub-pixel dot centres ``(u, v)`` per frame; the dot must lie inside
        the image (trajlab rejects samples that do not, never clips).
    radius : ndarray of shape (N, T)
        Pixel radius per frame.
    colors : ndarray of shape (N, 3), uint8
        Object RGB per sample.
    background : (int, int, int)
        Background RGB.
    image_size : int
    style : {'dot', 'trail'}
        ``'trail'`` also draws the ``trail_length - 1`` previous positions
        with coverage scaled by ``trail_decay ** lag``; overlapping dots
        take the maximum coverage.
    out : ndarray of shape (N, T, 3, H, W), uint8, optional
        Written in place when given.

    Returns
    -------
    videos : ndarray of shape (N, T, 3, image_size, image_size), uint8
    """
    n, t = pixels.shape[:2]
    H = W = image_size
    if out is None:
        out = np.empty((n, t, 3, H, W), dtype=np.uint8)
    elif not out.flags.c_contiguous:
        # the scatters below write through a flat view, which only exists
        # for C-contiguous buffers
        out[...] = render(pixels, radius, colors, background, image_size, style,
                          trail_length, trail_decay)
        return out
    bg = np.asarray(background, dtype=np.float64)
    if len(set(background)) == 1:
        out.fill(background[0])
    else:
        out[...] = np.asarray(background, dtype=np.uint8)[:, None, None]
    if n == 0:
        return out
    delta = colors.astype(np.float64) - bg            # (N, 3)
    corner, size = _window(pixels, radius, image_size)
    if style == "dot":
        _scatter(out, _window_alpha(pixels, radius, corner, size), corner, size, bg, delta)
        return out
    # trail: accumulate the max coverage over lags (dots of different lags
    # may overlap) in zeroed full frames, then blend only inside the windows
    # that were touched; everything else is already the background. The
    # blend is the same element-wise arithmetic as a full-frame blend, so the
    # bytes are identical at a fraction of the cost. Samples go in chunks so
    # the float64 accumulator stays below ~16 MiB whatever the shard size.
    chunk = max(1, TRAIL_ACC_BYTES // (8 * t * H * W))
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        _trail(out[a:b], pixels[a:b], radius[a:b], corner[a:b], size, trail_length,
               trail_decay, bg, delta[a:b])
    return out


def _trail(out, pixels, radius, corner, size, trail_length, trail_decay, bg, delta):
    n, t, _, H, W = out.shape
    acc = np.zeros(n * t * H * W, dtype=np.float64)
    offs = np.arange(size)[:, None] * W + np.arange(size)[None, :]          # (S, S)
    windows = []
    for lag in range(min(trail_length, t)):
        weight = trail_decay ** lag
        src = slice(0, t - lag)
        alpha = weight * _window_alpha(pixels[:, src], radius[:, src], corner[:, src], size)
        frame = np.arange(n)[:, None] * t + np.arange(lag, t)                # target frames
        pix = (corner[:, src, 1, None, None] * W + corner[:, src, 0, None, None] + offs)
        ia = frame[..., None, None] * (H * W) + pix
        acc[ia] = np.maximum(acc[ia], alpha)
        windows.append((ia, frame[..., None, None] * (3 * H * W) + pix))
    flat = out.reshape(-1)
    for ia, io in windows:
        a = acc[ia]
        for c in range(3):
            flat[io + c * H * W] = np.rint(
                bg[c] + a * delta[:, c, None, None, None]).astype(np.uint8)
