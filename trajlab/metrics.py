"""Metrics for reconstructed or predicted clips that mean something on sparse frames.

A trajlab frame is about 99 % background, so a model that outputs the blank
background already scores a high PSNR. Every frame metric here is therefore
reported beside the same metric for a **trivial prediction** (the per-video
background, or for forecasting a copy of the last context frame) and the
gain over it, and the dot itself is located:

* :func:`frame_metrics` — PSNR and SSIM (torchmetrics) of a prediction, of
  the trivial prediction, and the gains;
* :func:`dot_centroids` / :func:`localisation` — the centroid of the
  foreground (frame minus its background) against the stored sub-pixel
  ``pixels``: mean error in pixels, fraction of frames within 1 and 2 px.
  This is the metric that catches a collapsed tokenizer;
* :func:`codebook_usage` — used codes / codebook size and perplexity of a
  tokenizer's codes.

Conventions (:mod:`trajlab.camera`): pixel ``(row i, col j)`` covers
``[j, j+1) x [i, i+1)``, so its centre is ``(j + 0.5, i + 0.5)``; positions
are ``(u, v)`` = (column, row). Frames are float in [0, 1] of shape
``(..., 3, H, W)`` (uint8 input is divided by 255).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from . import _validation as v

with warnings.catch_warnings():
    # torchmetrics probes torchvision at import; the CPU torchvision of the
    # test set-up warns that its C image ops are missing, which no metric
    # here uses
    warnings.simplefilter("ignore")
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

__all__ = ["as_float", "background", "psnr", "ssim", "frame_metrics", "dot_centroids",
           "localisation", "codebook_usage"]

#: Peak contrast (mean over channels of |frame - background|, [0, 1] scale)
#: below which a frame is said to show no dot.
MIN_PEAK = 0.25
#: Pixels whose foreground weight is below this fraction of the frame's peak
#: are ignored by the centroid (faint haze far from the dot would pull it).
REL_THRESHOLD = 0.2
#: Frames per chunk: metrics accumulate over chunks, so memory stays flat
#: whatever the size of the split.
CHUNK = 256


def as_float(frames):
    """Frames as a float32 tensor in [0, 1].

    Parameters
    ----------
    frames : ndarray or Tensor of shape (..., 3, H, W)
        uint8 (0..255, divided by 255) or float (taken as [0, 1]).

    Returns
    -------
    Tensor of shape (..., 3, H, W), float32
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        v.fail("frames", "trajlab.metrics", "an ndarray or Tensor of shape (..., 3, H, W)",
               type(frames).__name__, TypeError)
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError("The 'frames' parameter of trajlab.metrics must be an array of shape "
                         f"(..., 3, H, W). Got shape {tuple(frames.shape)} instead.")
    if frames.dtype == torch.uint8:
        return frames.float() / 255.0
    return frames.float()


def background(videos):
    """Per-video background: the per-channel median of every pixel of the clip.

    A dot covers about 1 % of the pixels, so the median is the background
    colour (also under pixel noise); this is the **trivial reconstruction**
    a tokenizer has to beat.

    Parameters
    ----------
    videos : ndarray or Tensor of shape (N, T, 3, H, W)

    Returns
    -------
    Tensor of shape (N, T, 3, H, W), float32 in [0, 1]
        The constant background frame of each video, repeated.
    """
    x = as_float(videos)
    if x.ndim != 5:
        raise ValueError("The 'videos' parameter of background must be an array of shape "
                         f"(N, T, 3, H, W). Got shape {tuple(x.shape)} instead.")
    flat = x.permute(0, 2, 1, 3, 4).reshape(x.shape[0], 3, -1)
    bg = flat.median(dim=-1).values                       # (N, 3)
    return bg[:, None, :, None, None].expand_as(x).contiguous()


def _pair(pred, target, owner):
    p, t = as_float(pred), as_float(target)
    if p.shape != t.shape:
        raise ValueError(f"The 'pred' parameter of {owner} must have the shape of 'target' "
                         f"{tuple(t.shape)}. Got shape {tuple(p.shape)} instead.")
    return p, t


def _over_chunks(metric, pred, target, name):
    """Feed a torchmetrics metric frame chunk by frame chunk (bounded memory)."""
    p, t = _pair(pred, target, name)
    H, W = t.shape[-2:]
    p, t = p.reshape(-1, 3, H, W), t.reshape(-1, 3, H, W)
    for a in range(0, len(t), CHUNK):
        metric.update(p[a:a + CHUNK].clamp(0, 1), t[a:a + CHUNK])
    return float(metric.compute())


def psnr(pred, target):
    """PSNR (dB, data range 1) of the whole set: ``10 log10(1 / MSE)`` over
    every value (torchmetrics). ``inf`` for a perfect prediction.

    Parameters
    ----------
    pred, target : ndarray or Tensor of shape (..., 3, H, W)

    Returns
    -------
    float
    """
    # torchmetrics accumulates the squared error over updates: PSNR of the whole set
    return _over_chunks(PeakSignalNoiseRatio(data_range=1.0), pred, target, "psnr")


def ssim(pred, target):
    """Mean SSIM over frames (torchmetrics, Gaussian window 11, sigma 1.5,
    data range 1).

    Parameters
    ----------
    pred, target : ndarray or Tensor of shape (..., 3, H, W)

    Returns
    -------
    float
    """
    return _over_chunks(StructuralSimilarityIndexMeasure(data_range=1.0), pred, target, "ssim")


def frame_metrics(pred, target, trivial):
    """PSNR and SSIM of a prediction beside the same metrics of a trivial one.

    Parameters
    ----------
    pred, target, trivial : ndarray or Tensor of shape (..., 3, H, W)
        ``trivial`` is e.g. :func:`background` (reconstruction) or the last
        context frame repeated (forecasting).

    Returns
    -------
    dict
        ``psnr``, ``psnr_trivial``, ``psnr_gain`` (dB) and ``ssim``,
        ``ssim_trivial``, ``ssim_gain``.
    """
    out = {"psnr": psnr(pred, target), "psnr_trivial": psnr(trivial, target)}
    out["psnr_gain"] = out["psnr"] - out["psnr_trivial"]
    out["ssim"], out["ssim_trivial"] = ssim(pred, target), ssim(trivial, target)
    out["ssim_gain"] = out["ssim"] - out["ssim_trivial"]
    return out


def dot_centroids(frames, bg, *, min_peak=MIN_PEAK, rel_threshold=REL_THRESHOLD):
    """Sub-pixel centre ``(u, v)`` of the dot in each frame.

    The foreground weight of a pixel is the mean over channels of
    ``|frame - bg|``. Pixels below ``rel_threshold`` times the frame's peak
    weight are ignored, and the centroid of the rest is taken at pixel
    centres ``(j + 0.5, i + 0.5)`` (trajlab's convention, so a rendered dot
    gives its stored ``pixels``). A frame whose peak weight is below
    ``min_peak`` shows no dot: its centroid is NaN.

    Parameters
    ----------
    frames : ndarray or Tensor of shape (..., 3, H, W)
    bg : ndarray or Tensor broadcastable to ``frames``
        Background (e.g. :func:`background`).
    min_peak : float, default=0.25
    rel_threshold : float, default=0.2

    Returns
    -------
    ndarray of shape (..., 2), float64
    """
    v.check_float(min_peak, "min_peak", "dot_centroids", 0.0, 1.0)
    v.check_float(rel_threshold, "rel_threshold", "dot_centroids", 0.0, 1.0, closed_high=False)
    x = as_float(frames)
    b = as_float(bg) if not isinstance(bg, (int, float)) else torch.tensor(float(bg))
    b = b.expand_as(x)
    lead = x.shape[:-3]
    x, b = x.reshape(-1, *x.shape[-3:]), b.reshape(-1, *x.shape[-3:])
    out = np.concatenate([_centroids(x[a:a + CHUNK], b[a:a + CHUNK], min_peak, rel_threshold)
                          for a in range(0, max(len(x), 1), CHUNK)]) if len(x) else \
        np.zeros((0, 2))
    return out.reshape(*lead, 2)


def _centroids(x, b, min_peak, rel_threshold):
    """:func:`dot_centroids` of frames (n, 3, H, W) in float64."""
    w = (x.double() - b.double()).abs().mean(dim=-3)        # (n, H, W)
    H, W = w.shape[-2:]
    peak = w.flatten(-2).max(dim=-1).values                 # (...,)
    w = torch.where(w >= rel_threshold * peak[..., None, None], w, torch.zeros_like(w))
    mass = w.sum(dim=(-1, -2))
    cu = (w.sum(dim=-2) * (torch.arange(W, dtype=torch.float64) + 0.5)).sum(-1) / mass
    cv = (w.sum(dim=-1) * (torch.arange(H, dtype=torch.float64) + 0.5)).sum(-1) / mass
    out = torch.stack([cu, cv], dim=-1)
    out[peak < max(min_peak, 1e-12)] = float("nan")
    return out.numpy()


def localisation(pred_frames, pixels, bg, **kwargs):
    """How well predicted frames place the dot, against the true ``pixels``.

    Parameters
    ----------
    pred_frames : ndarray or Tensor of shape (N, T, 3, H, W)
    pixels : ndarray of shape (N, T, 2)
        True sub-pixel ``(u, v)`` (the stored ``pixels`` of the frames).
    bg : ndarray or Tensor broadcastable to ``pred_frames``
    **kwargs
        Passed to :func:`dot_centroids`.

    Returns
    -------
    dict
        ``mean_px`` (mean error over frames where a dot was found; NaN if
        none), ``median_px``, ``within_1px`` and ``within_2px`` (fractions
        of **all** frames: a frame without a dot counts as a miss),
        ``found`` (fraction of frames with a dot), ``errors`` (N, T) with
        ``inf`` where no dot was found, and ``centroids`` (N, T, 2).
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    c = dot_centroids(pred_frames, bg, **kwargs)
    if c.shape != pixels.shape:
        raise ValueError("The 'pixels' parameter of localisation must have shape "
                         f"{c.shape} (one (u, v) per frame). Got shape {pixels.shape} instead.")
    err = np.sqrt(((c - pixels) ** 2).sum(-1))
    found = np.isfinite(err)
    err = np.where(found, err, np.inf)
    return {"mean_px": float(err[found].mean()) if found.any() else math.nan,
            "median_px": float(np.median(err)) if err.size else math.nan,
            "within_1px": float((err <= 1.0).mean()), "within_2px": float((err <= 2.0).mean()),
            "found": float(found.mean()), "errors": err, "centroids": c}


def codebook_usage(codes, codebook_size):
    """Utilisation and perplexity of a tokenizer's codes.

    Parameters
    ----------
    codes : ndarray or Tensor of ints
        Code indices, any shape (e.g. every token of the test split).
    codebook_size : int

    Returns
    -------
    dict
        ``used`` (distinct codes), ``codebook_size``, ``utilisation``
        (``used / codebook_size``), ``perplexity`` (``exp`` of the entropy
        of the code histogram, in [1, used]) and ``counts`` (ndarray of
        shape (codebook_size,)).
    """
    codebook_size = v.check_int(codebook_size, "codebook_size", "codebook_usage", 1)
    c = torch.as_tensor(np.asarray(codes)).reshape(-1).long()
    if c.numel() == 0:
        raise ValueError("The 'codes' parameter of codebook_usage must hold at least one code. "
                         "Got an empty array instead.")
    if int(c.min()) < 0 or int(c.max()) >= codebook_size:
        raise ValueError(f"The 'codes' parameter of codebook_usage must hold ints in the range "
                         f"[0, {codebook_size - 1}]. Got values in [{int(c.min())}, "
                         f"{int(c.max())}] instead.")
    counts = torch.bincount(c, minlength=codebook_size).double()
    p = counts[counts > 0] / counts.sum()
    used = int((counts > 0).sum())
    return {"used": used, "codebook_size": codebook_size, "utilisation": used / codebook_size,
            "perplexity": float(torch.exp(-(p * p.log()).sum())),
            "counts": counts.long().numpy()}
