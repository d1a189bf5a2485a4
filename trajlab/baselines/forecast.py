"""Forecasting baselines: given the first frames (or positions), predict the rest.

Positions (the stored sub-pixel ``pixels``, ``(u, v)`` per frame):

* :func:`extrapolate` — hold-last, constant velocity and constant
  acceleration from finite differences of the last context positions;
* :func:`train_position_model` — a small MLP from the context positions and
  dot radii (both visible in the frames) to the future positions.

Frames: :func:`train_frame_model`, a small convolutional encoder-decoder
from the stacked context frames to the future frames, trained with a
foreground-weighted MSE (a plain MSE is minimised by a blank prediction, see
:mod:`trajlab.baselines.tokenize`); it blurs and misplaces the dot.
:func:`train_keypoint_model`, a learned keypoint bottleneck
(:class:`KeypointForecaster`: heatmap CNN and soft-argmax per context
frame, dynamics MLP, differentiable disc renderer), trained end to end on
the same weighted frame loss plus the keypoints' pixel error. Predicted frames are scored with
:mod:`trajlab.metrics` beside the trivial forecast, a copy of the last
context frame.

:func:`cut` splits clips into context and future and checks that the two
never overlap (no frame index in both, no shared memory); every function
here goes through it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _validation as v
from .. import metrics as M
from ._common import Split, batches, require_videos, seeded, train_loop

__all__ = ["cut", "extrapolate", "position_errors", "PositionMLP", "train_position_model",
           "predict_positions", "FrameUNet", "train_frame_model", "predict_frames",
           "KeypointForecaster", "KeypointModel", "train_keypoint_model", "render_discs",
           "evaluate_frames", "measure_dots", "render_forecast", "position_forecasts",
           "position_report", "frame_report", "targets", "METHODS"]

METHODS = ("hold-last", "constant velocity", "constant acceleration")


def cut(array, n_context, n_future=None, *, axis=1):
    """Context and future parts of per-frame arrays, never overlapping.

    Parameters
    ----------
    array : ndarray with frames on ``axis``
    n_context : int
        Frames ``0..n_context-1`` are the input.
    n_future : int, optional
        Frames ``n_context..n_context+n_future-1`` are the target; default
        all remaining frames.

    Returns
    -------
    context, future : ndarray
        Copies (they share no memory with each other or with ``array``).

    Raises
    ------
    AssertionError
        If the two parts would share a frame or memory (an internal
        guarantee; it cannot happen with valid sizes).
    """
    T = array.shape[axis]
    own = "cut"
    n_context = v.check_int(n_context, "n_context", own, 1, T - 1)
    n_future = (T - n_context if n_future is None
                else v.check_int(n_future, "n_future", own, 1, T - n_context))
    ctx_idx = np.arange(n_context)
    fut_idx = np.arange(n_context, n_context + n_future)
    context = np.take(array, ctx_idx, axis=axis)
    future = np.take(array, fut_idx, axis=axis)
    # a forecast that sees its target measures nothing: make the guarantee explicit
    assert np.intersect1d(ctx_idx, fut_idx).size == 0, "context and future frames overlap"
    assert not np.shares_memory(context, future), "context and future share memory"
    return context, future


def extrapolate(context, n_future, method):
    """Classical extrapolation of positions.

    Parameters
    ----------
    context : ndarray of shape (N, c, 2)
        Context positions (``c >= 3`` for constant acceleration).
    n_future : int
    method : {'hold-last', 'constant velocity', 'constant acceleration'}
        Last position held; last velocity ``p[-1] - p[-2]`` continued; last
        velocity and acceleration ``p[-1] - 2 p[-2] + p[-3]`` continued.

    Returns
    -------
    ndarray of shape (N, n_future, 2)
    """
    own = "extrapolate"
    v.check_choice(method, "method", own, METHODS)
    n_future = v.check_int(n_future, "n_future", own, 1)
    need = {"hold-last": 1, "constant velocity": 2, "constant acceleration": 3}[method]
    if context.shape[1] < need:
        v.fail("context", own, f"positions of at least {need} context frames for {method!r}",
               context.shape[1])
    k = np.arange(1, n_future + 1, dtype=np.float64)[None, :, None]
    last = context[:, -1:]
    if method == "hold-last":
        return np.repeat(last, n_future, axis=1)
    vel = context[:, -1:] - context[:, -2:-1]
    if method == "constant velocity":
        return last + k * vel
    acc = context[:, -1:] - 2 * context[:, -2:-1] + context[:, -3:-2]
    return last + k * vel + 0.5 * k * (k + 1) * acc


def position_errors(pred, future):
    """Euclidean error in pixels per future frame, shape (N, f)."""
    return np.sqrt(((np.asarray(pred) - np.asarray(future)) ** 2).sum(-1))


# -------------------------------------------------------- learned positions
class PositionMLP(nn.Module):
    """Context (positions relative to the last one, radii), scaled by the
    image size -> future positions relative to the last context position."""

    def __init__(self, n_context, n_future, hidden=256):
        super().__init__()
        self.n_future = n_future
        self.net = nn.Sequential(nn.Linear(3 * n_context, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2 * n_future))

    def forward(self, x):
        return self.net(x).view(x.shape[0], self.n_future, 2)


def _position_input(ctx_pix, ctx_rad, scale):
    rel = (ctx_pix - ctx_pix[:, -1:]) / scale
    return torch.cat([torch.as_tensor(rel, dtype=torch.float32).flatten(1),
                      torch.as_tensor(ctx_rad / scale, dtype=torch.float32)], dim=1)


@dataclass
class PositionModel:
    """A trained :class:`PositionMLP` and its training record."""

    net: nn.Module
    n_context: int
    n_future: int
    image_size: int
    losses: list
    seconds: float
    steps: int


def train_position_model(train, n_context, *, n_future=None, n_steps=3000, batch_size=256,
                         lr=2e-3, hidden=256, flip=True, seed=0, progress=True):
    """Train :class:`PositionMLP` on the stored pixels and radii of ``train``.

    Parameters
    ----------
    train : Split
    n_context : int
    n_future : int, optional
    n_steps, batch_size, hidden : int
    lr : float
    flip : bool
        Also train on left-right mirrored paths (``u -> S - u``), which
        are paths of the same classes.
    seed : int
    progress : bool

    Returns
    -------
    PositionModel
    """
    if not isinstance(train, Split):
        v.fail("train", "train_position_model", "a Split", type(train).__name__, TypeError)
    S = train.image_size
    ctx, fut = cut(train.pixels, n_context, n_future)
    ctx_r, _ = cut(train.radius, n_context, n_future)
    f = fut.shape[1]
    if flip:
        mirror = np.array([-1.0, 1.0])
        ctx = np.concatenate([ctx, S * np.array([1.0, 0.0]) + ctx * mirror])
        fut = np.concatenate([fut, S * np.array([1.0, 0.0]) + fut * mirror])
        ctx_r = np.concatenate([ctx_r, ctx_r])
    x = _position_input(ctx, ctx_r, S)
    y = torch.as_tensor((fut - ctx[:, -1:]) / S, dtype=torch.float32)
    with seeded(seed) as gen:
        net = PositionMLP(n_context, f, hidden)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_steps)
        stream = batches(len(x), min(batch_size, len(x)), gen)

        def step(_):
            idx = next(stream)
            # squared error in pixels (what is reported), not in image fractions
            loss = (((net(x[idx]) - y[idx]) * S) ** 2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            return loss.item()

        hist = train_loop(step, n_steps, desc="position MLP", progress=progress)
    net.eval()
    return PositionModel(net, n_context, f, S, hist["losses"], hist["seconds"], hist["steps"])


@torch.no_grad()
def predict_positions(model, split):
    """Future positions (N, f, 2) predicted by a :class:`PositionModel`."""
    ctx, _ = cut(split.pixels, model.n_context, model.n_future)
    ctx_r, _ = cut(split.radius, model.n_context, model.n_future)
    rel = model.net(_position_input(ctx, ctx_r, model.image_size)).double().numpy()
    return ctx[:, -1:] + rel * model.image_size


# ------------------------------------------------------------ learned frames
class FrameUNet(nn.Module):
    """Context frames stacked as channels (plus two coordinate channels) ->
    future frames, as a change from the background; a small U-Net."""

    def __init__(self, n_context, n_future, width=32):
        super().__init__()
        c_in, w = 3 * n_context + 2, width
        block = lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(),  # noqa: E731
                                           nn.Conv2d(b, b, 3, padding=1), nn.ReLU())
        self.n_future = n_future
        self.e1, self.e2, self.e3 = block(c_in, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.d2, self.d1 = block(6 * w, 2 * w), block(3 * w, w)
        self.out = nn.Conv2d(w, 3 * n_future, 1)

    def forward(self, x):
        B, _, H, W = x.shape
        ys = torch.linspace(-1, 1, H).view(1, 1, H, 1).expand(B, 1, H, W)
        xs = torch.linspace(-1, 1, W).view(1, 1, 1, W).expand(B, 1, H, W)
        e1 = self.e1(torch.cat([x, xs, ys], 1))
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([F.interpolate(e3, scale_factor=2), e2], 1))
        d1 = self.d1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1))
        return self.out(d1).view(B, self.n_future, 3, H, W)


@dataclass
class FrameModel:
    """A trained :class:`FrameUNet` and its training record."""

    net: nn.Module
    n_context: int
    n_future: int
    losses: list
    seconds: float
    steps: int
    stopped_early: bool

    def summary(self):
        return (f"frame U-Net ({self.n_context} -> {self.n_future} frames): {self.steps} steps in "
                f"{self.seconds:.0f} s" + (" (stopped at the time cap)" if self.stopped_early
                                           else ""))


def _frame_batch(videos, n_context, n_future):
    """Context input, future target and background of uint8 clips (float)."""
    x = M.as_float(videos)
    bg = M.background(videos)[:, :1]                       # (B, 1, 3, H, W)
    ctx, fut = x[:, :n_context], x[:, n_context:n_context + n_future]
    return (ctx - bg).flatten(1, 2), fut, bg


def train_frame_model(train, n_context, *, n_future=None, n_steps=500, batch_size=16, lr=1e-3,
                      width=32, fg_weight=50.0, seed=0, progress=True, max_seconds=None):
    """Train :class:`FrameUNet` with a foreground-weighted MSE.

    Parameters
    ----------
    train : Split
    n_context : int
    n_future : int, optional
    n_steps, batch_size, width : int
    lr, fg_weight : float
        ``fg_weight``: extra weight of the pixels on and next to the true
        future dot (see :func:`trajlab.baselines.tokenize.foreground_weights`).
    seed : int
    progress : bool
    max_seconds : float, optional

    Returns
    -------
    FrameModel
    """
    from .tokenize import foreground_weights

    require_videos(train, "train", "train_frame_model")
    T = train.n_frames
    n_context = v.check_int(n_context, "n_context", "train_frame_model", 1, T - 1)
    f = T - n_context if n_future is None else n_future
    cut(train.pixels[:1], n_context, f)                    # checks the sizes and the overlap
    with seeded(seed) as gen:
        net = FrameUNet(n_context, f, width)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=n_steps,
                                                    pct_start=0.05)
        stream = batches(len(train), min(batch_size, len(train)), gen)

        def step(_):
            x, fut, bg = _frame_batch(train.videos[next(stream).numpy()], n_context, f)
            net.train()
            pred = bg + net(x)
            w = foreground_weights(fut.transpose(1, 2), fg_weight).transpose(1, 2)
            loss = (w * (pred - fut) ** 2).sum() / (w.sum() * 3)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            return loss.item()

        hist = train_loop(step, n_steps, desc="frame U-Net", progress=progress,
                          max_seconds=max_seconds)
    net.eval()
    return FrameModel(net, n_context, f, hist["losses"], hist["seconds"], hist["steps"],
                      hist["stopped_early"])


@torch.no_grad()
def predict_frames(model, videos, *, batch_size=64):
    """Future frames (N, f, 3, H, W), float in [0, 1], from the context of clips
    (``model``: a :class:`FrameModel` or a :class:`KeypointModel`)."""
    out = []
    for a in range(0, len(videos), batch_size):
        if isinstance(model, KeypointModel):
            ctx, rad, col, bg, _ = _keypoint_batch(videos[a:a + batch_size], model.n_context,
                                                   model.n_future)
            out.append(model.net(ctx, rad, col, bg)[2].clamp(0, 1))
            continue
        x, _, bg = _frame_batch(videos[a:a + batch_size], model.n_context, model.n_future)
        out.append((bg + model.net(x)).clamp(0, 1))
    return torch.cat(out)


def evaluate_frames(model, split):
    """Frame metrics of a :class:`FrameModel` or :class:`KeypointModel` on a split.

    Returns
    -------
    dict
        ``frames`` (:func:`~trajlab.metrics.frame_metrics` against the
        last context frame repeated), ``dot`` (:func:`~trajlab.metrics.localisation`
        of the predicted dot against the true future pixels), ``dot_trivial``
        (the same for the copied last frame), ``pred`` (N, f, 3, H, W).
    """
    require_videos(split, "split", "evaluate_frames")
    c, f = model.n_context, model.n_future
    ctx_v, fut_v = cut(split.videos, c, f)
    _, fut_pix = cut(split.pixels, c, f)
    pred = predict_frames(model, split.videos)
    target = M.as_float(fut_v)
    trivial = M.as_float(ctx_v[:, -1:]).expand_as(target)
    bg = M.background(split.videos)[:, :f]
    return {"frames": M.frame_metrics(pred, target, trivial),
            "dot": M.localisation(pred, fut_pix, bg),
            "dot_trivial": M.localisation(trivial, fut_pix, bg), "pred": pred}


def position_forecasts(train, test, n_context, *, n_future=None, mlp_steps=3000, hidden=256,
                       lr=2e-3, seed=0, progress=True):
    """Every position forecaster on the test split.

    Returns
    -------
    dict
        ``context`` (N, c, 2) and ``future`` (N, f, 2) test pixels,
        ``predictions`` and ``errors`` (name -> (N, f, 2) and (N, f) px)
        for the three extrapolations and the position MLP, and ``model``.
    """
    ctx, fut = cut(test.pixels, n_context, n_future)
    f = fut.shape[1]
    preds = {m: extrapolate(ctx, f, m) for m in METHODS}
    model = train_position_model(train, n_context, n_future=f, n_steps=mlp_steps, hidden=hidden,
                                 lr=lr, seed=seed, progress=progress)
    preds["position MLP"] = predict_positions(model, test)
    return {"context": ctx, "future": fut, "predictions": preds,
            "errors": {k: position_errors(p, fut) for k, p in preds.items()}, "model": model}


def position_report(result, labels, class_names):
    """Text table: mean future-position error (px) per method, overall and per class."""
    labels = np.asarray(labels)
    names = list(result["errors"])
    w = max(len(n) for n in names)
    head = f"{'method':<{w}}  {'all':>7}" + "".join(f"  {c:>10}" for c in class_names)
    lines = ["mean error over the future frames (px), test split", head]
    for n in names:
        e = result["errors"][n]
        per = [e[labels == k].mean() if (labels == k).any() else float("nan")
               for k in range(len(class_names))]
        lines.append(f"{n:<{w}}  {e.mean():>7.3f}" + "".join(f"  {x:>10.3f}" for x in per))
    return "\n".join(lines)


def frame_report(evaluations):
    """Text table of frame forecasters (name -> output of :func:`evaluate_frames` or
    :func:`render_forecast`) beside the copied last frame."""
    names = list(evaluations)
    first = evaluations[names[0]]
    cols = [(n, evaluations[n]["frames"], evaluations[n]["dot"]) for n in names]
    cols.append(("copy last", {"psnr": first["frames"]["psnr_trivial"],
                               "ssim": first["frames"]["ssim_trivial"]}, first["dot_trivial"]))
    rows = [("PSNR (dB)", lambda fm, d: fm["psnr"]), ("SSIM", lambda fm, d: fm["ssim"]),
            ("dot found (fraction of frames)", lambda fm, d: d["found"]),
            ("dot mean error (px, where found)", lambda fm, d: d["mean_px"]),
            ("dot within 1 px", lambda fm, d: d["within_1px"]),
            ("dot within 2 px", lambda fm, d: d["within_2px"])]
    w = max(12, *(len(c[0]) for c in cols))
    lines = [f"{'future frames, test split':<34}" + "".join(f"  {c[0]:>{w}}" for c in cols)]
    lines += [f"{label:<34}" + "".join(f"  {fn(fm, d):>{w}.4f}" for _, fm, d in cols)
              for label, fn in rows]
    return "\n".join(lines)


def targets(positions, frames, *, max_mlp_px, min_within_2px, frame_targets=None, title=None):
    """The pass/fail table of the forecasting task.

    Parameters
    ----------
    positions : dict
        Output of :func:`position_forecasts`.
    frames : dict
        name -> output of :func:`evaluate_frames` or :func:`render_forecast`.
    max_mlp_px : float
        Highest acceptable mean future-position error of the position MLP.
    min_within_2px : float
        Required fraction of future frames whose predicted dot is within 2 px.
    frame_targets : sequence of str, optional
        The names in ``frames`` held to ``min_within_2px`` (default all);
        the others are compared in :func:`frame_report` only.
    """
    from ._common import TargetTable

    t = TargetTable(title or "forecasting targets")
    t.add("position MLP mean error", float(positions["errors"]["position MLP"].mean()), "<=",
          max_mlp_px, " px")
    names = list(frames) if frame_targets is None else list(frame_targets)
    unknown = [n for n in names if n not in frames]
    if unknown:
        v.fail("frame_targets", "targets", f"names among {sorted(frames)}", unknown)
    for name in names:
        ev = frames[name]
        t.add(f"{name}: dot within 2 px", ev["dot"]["within_2px"], ">=", min_within_2px)
    return t


# ------------------------------------------------- measured, extrapolated, rendered
def measure_dots(videos):
    """Dot centres, radii and colours measured in frames (no stored ground truth).

    Centres are :func:`trajlab.metrics.dot_centroids`; the radius follows
    from the foreground area (coverage summed over the frame, ``pi r^2``);
    the colour is the clip's most contrasted pixel.

    Parameters
    ----------
    videos : ndarray of shape (N, T, 3, H, W), uint8

    Returns
    -------
    pixels : ndarray of shape (N, T, 2)
    radius : ndarray of shape (N, T)
    colors : ndarray of shape (N, 3), uint8
    background : ndarray of shape (N, 3), uint8
    """
    x = M.as_float(videos).double()
    bg = M.background(videos).double()
    w = (x - bg).abs().mean(dim=2)                                  # (N, T, H, W)
    N, T = w.shape[:2]
    flat = w.reshape(N, -1)
    peak = flat.argmax(dim=1)
    t, rest = peak // (w.shape[2] * w.shape[3]), peak % (w.shape[2] * w.shape[3])
    i, j = rest // w.shape[3], rest % w.shape[3]
    colors = x[torch.arange(N), t, :, i, j]                         # (N, 3)
    contrast = (colors - bg[:, 0, :, 0, 0]).abs().mean(dim=1).clamp_min(1e-6)
    area = w.sum(dim=(-1, -2)) / contrast[:, None]
    radius = torch.sqrt(area / np.pi).numpy()
    pixels = M.dot_centroids(videos, bg)
    to8 = lambda a: np.rint(a.numpy() * 255).astype(np.uint8)  # noqa: E731
    return pixels, radius, to8(colors), to8(bg[:, 0, :, 0, 0])


def render_forecast(model, split):
    """Frame forecaster without a learned renderer: measure the dot in the
    context frames (:func:`measure_dots`), predict its future positions with
    a trained :class:`PositionModel`, hold the last measured radius and
    render the future frames with :func:`trajlab.render.render`.

    Returns
    -------
    dict
        As :func:`evaluate_frames` (``frames``, ``dot``, ``dot_trivial``,
        ``pred``), plus ``measured_error`` (mean px error of the measured
        context centres against the stored ones).
    """
    from ..render import render

    require_videos(split, "split", "render_forecast")
    c, f = model.n_context, model.n_future
    ctx_v, fut_v = cut(split.videos, c, f)
    ctx_pix_true, fut_pix = cut(split.pixels, c, f)
    pix, rad, colors, bgs = measure_dots(ctx_v)
    with torch.no_grad():
        rel = model.net(_position_input(pix, rad, model.image_size)).double().numpy()
    pred_pix = pix[:, -1:] + rel * model.image_size
    pred_rad = np.repeat(rad[:, -1:], f, axis=1)
    S = model.image_size
    frames = np.empty(fut_v.shape, dtype=np.uint8)
    for k in range(len(frames)):        # per clip: each has its own background colour
        frames[k] = render(pred_pix[k:k + 1], pred_rad[k:k + 1], colors[k:k + 1],
                           tuple(int(b) for b in bgs[k]), S)[0]
    pred = M.as_float(frames)
    target = M.as_float(fut_v)
    trivial = M.as_float(ctx_v[:, -1:]).expand_as(target)
    bg = M.background(split.videos)[:, :f]
    return {"frames": M.frame_metrics(pred, target, trivial), "dot": M.localisation(pred, fut_pix, bg),
            "dot_trivial": M.localisation(trivial, fut_pix, bg), "pred": pred,
            "measured_error": float(np.sqrt(((pix - ctx_pix_true) ** 2).sum(-1)).mean())}


# ------------------------------------------------- learned keypoints, rendered frames
def render_discs(pixels, radius, colors, background, image_size):
    """Differentiable twin of :func:`trajlab.render.render` (float, not rounded).

    Coverage ``clamp(r + 0.5 - d, 0, 1)`` at pixel centres, blended as
    ``background + coverage * (colour - background)``.

    Parameters
    ----------
    pixels : Tensor of shape (B, T, 2)
    radius : Tensor of shape (B, T)
    colors, background : Tensor of shape (B, 3), in [0, 1]
    image_size : int

    Returns
    -------
    Tensor of shape (B, T, 3, H, W), in [0, 1]
    """
    c = torch.arange(image_size, dtype=pixels.dtype) + 0.5
    dx = c - pixels[..., 0, None]                                   # (B, T, W)
    dy = c - pixels[..., 1, None]                                   # (B, T, H)
    d = torch.sqrt(dy[..., :, None] ** 2 + dx[..., None, :] ** 2 + 1e-12)
    alpha = (radius[..., None, None] + 0.5 - d).clamp(0.0, 1.0)     # (B, T, H, W)
    bg = background[:, None, :, None, None]
    return bg + alpha[:, :, None] * (colors - background)[:, None, :, None, None]


class KeypointForecaster(nn.Module):
    """Learned keypoint bottleneck: context frames -> dot keypoints -> future
    keypoints -> future frames.

    * encoder: a small fully convolutional CNN (with two coordinate
      channels) on each context frame minus its background (average-pooled
      to at most ``max_size`` pixels) gives a heatmap;
      a spatial soft-argmax (learned temperature) turns it into a sub-pixel
      keypoint ``(u, v)``;
    * dynamics: a :class:`PositionMLP` from the context keypoints and the dot
      radii to the future keypoints;
    * decoder: :func:`render_discs`, a fixed differentiable renderer, draws a
      disc of the last context radius and the clip's dot colour at each
      future keypoint.

    Radii and colours are read from the context frames (:func:`measure_dots`),
    not learned.
    """

    def __init__(self, n_context, n_future, image_size, width=16, hidden=256, max_size=32):
        super().__init__()
        self.n_context, self.n_future, self.image_size = n_context, n_future, image_size
        # frames larger than max_size are average-pooled first (an anti-aliased
        # dot keeps its centroid in the pooled intensities; the cost stays flat)
        self.pool = 1
        while image_size // self.pool > max_size:
            self.pool *= 2
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(5, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 1, 3, padding=1))
        self.log_temperature = nn.Parameter(torch.tensor(2.0))
        self.dynamics = PositionMLP(n_context, n_future, hidden)

    def keypoints(self, frames):
        """Soft-argmax keypoints (B, T, 2) in pixels of frames (B, T, 3, H, W) minus background."""
        B, T = frames.shape[:2]
        x = frames.flatten(0, 1)
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        H, W = x.shape[-2:]
        ys = torch.linspace(-1, 1, H).view(1, 1, H, 1).expand(B * T, 1, H, W)
        xs = torch.linspace(-1, 1, W).view(1, 1, 1, W).expand(B * T, 1, H, W)
        logits = self.encoder(torch.cat([x, xs, ys], 1)).flatten(1) * self.log_temperature.exp()
        p = torch.softmax(logits, dim=1).view(B * T, H, W)
        # pooled pixel j spans [j p, (j + 1) p): its centre is (j + 0.5) p
        u = (p.sum(1) * (torch.arange(W, dtype=p.dtype) + 0.5)).sum(-1) * self.pool
        v_ = (p.sum(2) * (torch.arange(H, dtype=p.dtype) + 0.5)).sum(-1) * self.pool
        return torch.stack([u, v_], -1).view(B, T, 2)

    def forward(self, context, radius, colors, background):
        """Context keypoints (B, c, 2), future keypoints (B, f, 2) and future frames.

        ``context``: (B, c, 3, H, W) minus background; ``radius``: (B, c)
        measured context radii; ``colors``, ``background``: (B, 3) in [0, 1].
        """
        S = self.image_size
        kp = self.keypoints(context)
        rel = (kp - kp[:, -1:]) / S
        x = torch.cat([rel.flatten(1), radius / S], 1)
        future = kp[:, -1:] + self.dynamics(x) * S
        r = radius[:, -1:].expand(-1, self.n_future)
        return kp, future, render_discs(future, r, colors, background, S)


@dataclass
class KeypointModel(FrameModel):
    """A trained :class:`KeypointForecaster` and its training record (the
    fields of :class:`FrameModel`, and the losses of the dynamics MLP's
    pre-fit)."""

    dynamics_losses: list = None

    def summary(self):
        return (f"keypoint forecaster ({self.n_context} -> {self.n_future} frames): {self.steps} "
                f"steps in {self.seconds:.0f} s" + (" (stopped at the time cap)"
                                                    if self.stopped_early else ""))


def _keypoint_batch(videos, n_context, n_future):
    """Inputs of :class:`KeypointForecaster` from uint8 clips: context minus
    background, measured context radii, dot colour and background (float),
    and the future frames."""
    x = M.as_float(videos)
    ctx_v = videos[:, :n_context]
    _, rad, colors, bgs = measure_dots(ctx_v)
    bg = torch.as_tensor(bgs, dtype=torch.float32) / 255.0
    ctx = x[:, :n_context] - bg[:, None, :, None, None]
    return (ctx, torch.as_tensor(rad, dtype=torch.float32),
            torch.as_tensor(colors, dtype=torch.float32) / 255.0, bg,
            x[:, n_context:n_context + n_future])


def train_keypoint_model(train, n_context, *, n_future=None, n_steps=1000, batch_size=32,
                         lr=2e-3, width=16, hidden=256, fg_weight=50.0, position_weight=1.0,
                         dynamics_steps=0, dynamics_batch=256, positions=None, seed=0,
                         progress=True, max_seconds=None):
    """Train :class:`KeypointForecaster` end to end.

    The loss is the foreground-weighted MSE of the rendered future frames
    (as :func:`train_frame_model`) plus ``position_weight`` times the mean
    squared error in pixels of the context and future keypoints against the
    stored ``pixels`` of the train split (supervision in training only: at
    test time the model sees the context frames alone). The dynamics MLP
    is cheap to train on positions: it is first fitted for
    ``dynamics_steps`` steps on the stored positions and radii alone (as
    :func:`train_position_model`, mirrored paths included), and every
    end-to-end step adds that position loss on a batch of
    ``dynamics_batch`` stored paths.

    Parameters
    ----------
    train : Split
    n_context : int
    n_future : int, optional
    n_steps, batch_size, width, hidden : int
    lr, fg_weight, position_weight : float
    dynamics_steps, dynamics_batch : int
        Position-only steps before the end-to-end ones, and the batch of
        stored paths added to each step (0: none).
    positions : Split, optional
        Where the stored paths for the dynamics come from (default
        ``train``; e.g. the whole train split loaded with ``videos=False``
        when ``train`` holds fewer clips).
    seed : int
    progress : bool
    max_seconds : float, optional
        Cap on the whole training time (both phases).

    Returns
    -------
    KeypointModel
    """
    from .tokenize import foreground_weights

    own = "train_keypoint_model"
    require_videos(train, "train", own)
    T = train.n_frames
    n_context = v.check_int(n_context, "n_context", own, 1, T - 1)
    n_steps = v.check_int(n_steps, "n_steps", own, 1)
    batch_size = v.check_int(batch_size, "batch_size", own, 1)
    width = v.check_int(width, "width", own, 1)
    hidden = v.check_int(hidden, "hidden", own, 1)
    fg_weight = v.check_float(fg_weight, "fg_weight", own, 0.0)
    position_weight = v.check_float(position_weight, "position_weight", own, 0.0)
    dynamics_steps = v.check_int(dynamics_steps, "dynamics_steps", own, 0)
    dynamics_batch = v.check_int(dynamics_batch, "dynamics_batch", own, 0)
    f = T - n_context if n_future is None else n_future
    ctx_pix, fut_pix = cut(train.pixels, n_context, f)     # checks the sizes and the overlap
    paths = train if positions is None else positions
    if not isinstance(paths, Split) or paths.pixels.shape[1:] != train.pixels.shape[1:] or \
            paths.image_size != train.image_size:
        v.fail("positions", own, f"a Split of paths of the train shape "
               f"{train.pixels.shape[1:]} at {train.image_size}^2", getattr(
                   getattr(paths, "pixels", None), "shape", type(paths).__name__))
    S = train.image_size
    pc, pf = cut(paths.pixels, n_context, f)
    pr, _ = cut(paths.radius, n_context, f)
    mirror = np.array([-1.0, 1.0])
    pc = np.concatenate([pc, S * np.array([1.0, 0.0]) + pc * mirror])
    pf = np.concatenate([pf, S * np.array([1.0, 0.0]) + pf * mirror])
    px = _position_input(pc, np.concatenate([pr, pr]), S)
    py = torch.as_tensor((pf - pc[:, -1:]) / S, dtype=torch.float32)
    start = time.perf_counter()
    with seeded(seed) as gen:
        net = KeypointForecaster(n_context, f, S, width, hidden)
        path_stream = batches(len(px), max(1, min(dynamics_batch, len(px))), gen)

        def path_loss():
            idx = next(path_stream)
            return (((net.dynamics(px[idx]) - py[idx]) * S) ** 2).sum(-1).mean()

        pre = {"losses": []}
        if dynamics_steps:
            dopt = torch.optim.Adam(net.dynamics.parameters(), lr=lr)
            dsched = torch.optim.lr_scheduler.CosineAnnealingLR(dopt, dynamics_steps)

            def dstep(_):
                loss = path_loss()
                dopt.zero_grad(set_to_none=True)
                loss.backward()
                dopt.step()
                dsched.step()
                return loss.item()

            pre = train_loop(dstep, dynamics_steps, desc="keypoint dynamics (paths)",
                             progress=progress, max_seconds=max_seconds)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=n_steps,
                                                    pct_start=0.05)
        stream = batches(len(train), min(batch_size, len(train)), gen)

        def step(_):
            idx = next(stream).numpy()
            ctx, rad, col, bg, fut = _keypoint_batch(train.videos[idx], n_context, f)
            net.train()
            kp, future, pred = net(ctx, rad, col, bg)
            w = foreground_weights(fut.transpose(1, 2), fg_weight).transpose(1, 2)
            loss = (w * (pred - fut) ** 2).sum() / (w.sum() * 3)
            if position_weight:
                pos = (((kp - torch.as_tensor(ctx_pix[idx], dtype=torch.float32)) ** 2).sum(-1).mean()
                       + ((future - torch.as_tensor(fut_pix[idx], dtype=torch.float32)) ** 2
                          ).sum(-1).mean())
                loss = loss + position_weight * pos
            if dynamics_batch:
                loss = loss + path_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            return loss.item()

        left = None if max_seconds is None else max(max_seconds - (time.perf_counter() - start),
                                                     1e-3)
        hist = train_loop(step, n_steps, desc="keypoint forecaster", progress=progress,
                          max_seconds=left)
    net.eval()
    return KeypointModel(net, n_context, f, hist["losses"], time.perf_counter() - start,
                         hist["steps"], hist["stopped_early"], pre["losses"])
