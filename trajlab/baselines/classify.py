"""Classification baseline and shortcut probes.

* :func:`train_classifier` — a small CNN over the stacked frames of a clip
  (time folded into channels, so the first layer sees the whole path),
  trained on the train split and evaluated on the test split.
* Shortcut probes, diagnostics of the data rather than models to beat:
  :func:`probe_frame0` (the same CNN on frame 0 only: where and how big the
  dot is at the start), :func:`probe_brightness` (an MLP on the per-frame
  foreground brightness series: the dot's size follows 1/depth^2, so this
  series carries depth over time without the path's shape) and
  :func:`probe_colour` (an MLP on per-channel colour statistics of the
  clip) and :func:`probe_speed` (an MLP on statistics of the dot's
  measured on-screen speed).

Every function is deterministic for its ``seed`` (torch's global generator
is forked, see :func:`~trajlab.baselines._common.seeded`) and shows its
progress through ``tqdm.auto``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import _validation as v
from ._common import batches, confusion_matrix, require_videos, seeded, train_loop

__all__ = ["ClassifyResult", "StackedFrameCNN", "MLP", "fit_classifier", "train_classifier",
           "probe_frame0", "probe_brightness", "probe_colour", "probe_speed", "run_probes",
           "video_input", "brightness_series", "colour_statistics", "speed_statistics",
           "accuracies", "report", "targets"]


@dataclass
class ClassifyResult:
    """Test-split result of one classifier.

    Attributes
    ----------
    name : str
    accuracy : float
        Fraction of test clips classified correctly.
    confusion : ndarray of shape (C, C), int64
        ``confusion[i, j]``: test clips of class ``i`` predicted as ``j``.
    predictions : ndarray of shape (n_test,), int64
    losses : list of float
        Training loss per step.
    train_seconds : float
    steps : int
    stopped_early : bool
        True if ``max_seconds`` cut the training short.
    n_train, n_test, n_params : int
    class_names : tuple of str
    """

    name: str
    accuracy: float
    confusion: np.ndarray
    predictions: np.ndarray
    losses: list
    train_seconds: float
    steps: int
    stopped_early: bool
    n_train: int
    n_test: int
    n_params: int
    class_names: tuple = field(default=())

    def summary(self):
        return (f"{self.name}: test accuracy {self.accuracy:.2%} ({self.n_test} clips), "
                f"{self.steps} steps in {self.train_seconds:.1f} s, {self.n_params:,} parameters")


# ------------------------------------------------------------------ models
class StackedFrameCNN(nn.Module):
    """2D CNN over the frames of a clip stacked as channels.

    Input (B, T*3, S, S) float. Frames larger than ``max_size`` are first
    average-pooled down to it (an anti-aliased dot keeps its centroid in the
    pooled intensities, and the cost no longer grows with S). Two coordinate
    channels are added (where the dot is matters, not only how the path
    looks). Each stage is a 3x3 convolution, batch norm, ReLU and a 2x2
    max-pool, until 4x4; then two linear layers.
    """

    def __init__(self, n_frames, image_size, n_classes, width=32, max_size=32):
        super().__init__()
        self.pool = 1
        while image_size // self.pool > max_size:
            self.pool *= 2
        layers, ch, size = [], 3 * n_frames + 2, image_size // self.pool
        out = width
        while size > 4:
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            ch, size = out, size // 2
            out = min(2 * out, 4 * width)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * size * size, 128), nn.ReLU(),
                                  nn.Linear(128, n_classes))

    def forward(self, x):
        if self.pool > 1:
            x = nn.functional.avg_pool2d(x, self.pool)
        B, _, H, W = x.shape
        ys = torch.linspace(-1, 1, H, dtype=x.dtype).view(1, 1, H, 1).expand(B, 1, H, W)
        xs = torch.linspace(-1, 1, W, dtype=x.dtype).view(1, 1, 1, W).expand(B, 1, H, W)
        return self.head(self.features(torch.cat([x, xs, ys], dim=1)))


class MLP(nn.Module):
    """Standardised features -> two hidden layers -> classes."""

    def __init__(self, n_in, n_out, hidden=64, mean=None, std=None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in) if mean is None else mean)
        self.register_buffer("std", torch.ones(n_in) if std is None else std)
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, n_out))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


# ---------------------------------------------------------------- features
def _float_videos(videos):
    """uint8 (B, T, 3, H, W) array -> float tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(videos)).float().div_(255.0)


def _minus_background(x):
    """Subtract each clip's per-channel median (its background colour)."""
    B, T, C = x.shape[:3]
    bg = x.permute(0, 2, 1, 3, 4).reshape(B, C, -1).median(dim=-1).values
    return x - bg[:, None, :, None, None]


def video_input(videos, frames=None):
    """CNN input: clips minus their background, frames stacked as channels.

    Parameters
    ----------
    videos : ndarray of shape (B, T, 3, H, W), uint8
    frames : slice or sequence of int, optional
        Frames to keep (e.g. ``[0]`` for the frame-0 probe).

    Returns
    -------
    Tensor of shape (B, T'*3, H, W), float32
    """
    x = _minus_background(_float_videos(videos))
    if frames is not None:
        x = x[:, frames]
    return x.reshape(x.shape[0], -1, *x.shape[-2:])


def brightness_series(videos):
    """Per-frame foreground brightness: the sum over pixels of the mean over
    channels of ``|frame - background|``, shape (B, T), float32."""
    x = _minus_background(_float_videos(videos)).abs().mean(dim=2)
    return x.sum(dim=(-1, -2))


def colour_statistics(videos):
    """Per-channel mean, standard deviation, minimum and maximum over the
    whole clip, shape (B, 12), float32."""
    x = _float_videos(videos).permute(0, 2, 1, 3, 4).flatten(2)
    return torch.cat([x.mean(-1), x.std(-1), x.amin(-1), x.amax(-1)], dim=1)


def speed_statistics(videos):
    """Mean, standard deviation, minimum and maximum of the dot's speed
    (px per frame), shape (B, 4), float32.

    Speeds are the distances between the dot centres measured in
    consecutive frames (:func:`trajlab.metrics.dot_centroids` against the
    clip's background): how fast the dot moves on screen, without where or
    along which path. A frame without a visible dot (none in trajlab data)
    counts as no motion.
    """
    from .. import metrics as M

    c = M.dot_centroids(videos, M.background(videos))               # (B, T, 2)
    speed = np.nan_to_num(np.sqrt((np.diff(c, axis=1) ** 2).sum(-1)))
    stats = np.stack([speed.mean(1), speed.std(1), speed.min(1), speed.max(1)], axis=1)
    return torch.as_tensor(stats, dtype=torch.float32)


def _in_chunks(fn, arr, size=256):
    return torch.cat([fn(arr[a:a + size]) for a in range(0, len(arr), size)])


# ---------------------------------------------------------------- training
def fit_classifier(name, make_net, x_train, y_train, x_test, y_test, *, prep, n_classes,
                   n_steps, batch_size=32, lr=1e-3, weight_decay=0.0, seed=0, progress=True,
                   max_seconds=None, class_names=()):
    """Train ``make_net()`` with Adam and cross-entropy; evaluate on test.

    Parameters
    ----------
    name : str
    make_net : callable
        Builds the network (called inside the seeded block).
    x_train, x_test : ndarray or Tensor
        Inputs, indexed by batches of indices; ``prep(x[idx])`` gives the
        network's float input (so uint8 clips are converted batch by batch).
    y_train, y_test : ndarray of shape (n,), int
    prep : callable
    n_classes, n_steps, batch_size : int
    lr, weight_decay : float
    seed : int
    progress : bool
    max_seconds : float, optional
        Training time cap (see :func:`~trajlab.baselines._common.train_loop`).

    Returns
    -------
    ClassifyResult
    """
    own = "fit_classifier"
    n_steps = v.check_int(n_steps, "n_steps", own, 1)
    batch_size = v.check_int(batch_size, "batch_size", own, 1)
    yt = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    with seeded(seed) as gen:
        net = make_net()
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        # cosine decay: the last steps refine instead of bouncing
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_steps)
        stream = batches(len(yt), min(batch_size, len(yt)), gen)
        loss_fn = nn.CrossEntropyLoss()

        def step(_):
            idx = next(stream)
            net.train()
            loss = loss_fn(net(prep(x_train[idx.numpy()])), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            return loss.item()

        hist = train_loop(step, n_steps, desc=name, progress=progress, max_seconds=max_seconds)
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(prep(x_test[a:a + 256])).argmax(-1)
                              for a in range(0, len(y_test), 256)]).numpy()
    y_test = np.asarray(y_test)
    return ClassifyResult(
        name=name, accuracy=float((pred == y_test).mean()),
        confusion=confusion_matrix(y_test, pred, n_classes), predictions=pred,
        losses=hist["losses"], train_seconds=hist["seconds"], steps=hist["steps"],
        stopped_early=hist["stopped_early"], n_train=len(yt), n_test=len(y_test),
        n_params=sum(p.numel() for p in net.parameters()), class_names=tuple(class_names))


def _check_splits(train, test, owner):
    require_videos(train, "train", owner)
    require_videos(test, "test", owner)
    if train.videos.shape[1:] != test.videos.shape[1:]:
        raise ValueError(f"The 'test' parameter of {owner} must hold clips of the train shape "
                         f"{train.videos.shape[1:]}. Got {test.videos.shape[1:]} instead.")


def train_classifier(train, test, *, n_steps=300, batch_size=32, lr=1e-3, width=32, seed=0,
                     progress=True, max_seconds=None):
    """The classification baseline: :class:`StackedFrameCNN` on whole clips.

    Parameters
    ----------
    train, test : Split
    n_steps, batch_size : int
    lr : float
    width : int
        Channels of the first convolution.
    seed : int
    progress : bool
    max_seconds : float, optional

    Returns
    -------
    ClassifyResult
    """
    _check_splits(train, test, "train_classifier")
    T, S = train.n_frames, train.image_size
    return fit_classifier(
        "CNN on stacked frames", lambda: StackedFrameCNN(T, S, train.n_classes, width),
        train.videos, train.labels, test.videos, test.labels, prep=video_input,
        n_classes=train.n_classes, n_steps=n_steps, batch_size=batch_size, lr=lr, seed=seed,
        progress=progress, max_seconds=max_seconds, class_names=train.class_names)


def probe_frame0(train, test, *, n_steps=300, batch_size=32, lr=1e-3, width=32, seed=0,
                 progress=True):
    """Shortcut probe: the same CNN, shown only frame 0 of each clip."""
    _check_splits(train, test, "probe_frame0")
    S = train.image_size
    return fit_classifier(
        "probe: frame 0 only", lambda: StackedFrameCNN(1, S, train.n_classes, width),
        train.videos, train.labels, test.videos, test.labels,
        prep=lambda x: video_input(x, frames=[0]), n_classes=train.n_classes, n_steps=n_steps,
        batch_size=batch_size, lr=lr, seed=seed, progress=progress,
        class_names=train.class_names)


def _feature_probe(name, feats, train, test, n_steps, batch_size, lr, seed, progress):
    f_train, f_test = _in_chunks(feats, train.videos), _in_chunks(feats, test.videos)
    mean, std = f_train.mean(0), f_train.std(0).clamp_min(1e-6)
    return fit_classifier(
        name, lambda: MLP(f_train.shape[1], train.n_classes, mean=mean, std=std),
        f_train, train.labels, f_test, test.labels, prep=lambda x: x,
        n_classes=train.n_classes, n_steps=n_steps, batch_size=batch_size, lr=lr, seed=seed,
        progress=progress, class_names=train.class_names)


def probe_brightness(train, test, *, n_steps=2000, batch_size=128, lr=3e-3, seed=0,
                     progress=True):
    """Shortcut probe: an MLP on :func:`brightness_series` (no path shape)."""
    _check_splits(train, test, "probe_brightness")
    return _feature_probe("probe: brightness series", brightness_series, train, test, n_steps,
                          batch_size, lr, seed, progress)


def probe_colour(train, test, *, n_steps=2000, batch_size=128, lr=3e-3, seed=0, progress=True):
    """Shortcut probe: an MLP on :func:`colour_statistics` of the clip."""
    _check_splits(train, test, "probe_colour")
    return _feature_probe("probe: colour statistics", colour_statistics, train, test, n_steps,
                          batch_size, lr, seed, progress)


def probe_speed(train, test, *, n_steps=2000, batch_size=128, lr=3e-3, seed=0, progress=True):
    """Shortcut probe: an MLP on :func:`speed_statistics` (no path shape, no position)."""
    _check_splits(train, test, "probe_speed")
    return _feature_probe("probe: speed statistics", speed_statistics, train, test, n_steps,
                          batch_size, lr, seed, progress)


def run_probes(train, test, *, cnn_steps=300, mlp_steps=2000, seed=0, progress=True):
    """The shortcut probes (frame 0, brightness, colour, speed), as a dict
    name -> :class:`ClassifyResult`."""
    return {"frame 0": probe_frame0(train, test, n_steps=cnn_steps, seed=seed,
                                    progress=progress),
            "brightness": probe_brightness(train, test, n_steps=mlp_steps, seed=seed,
                                           progress=progress),
            "colour": probe_colour(train, test, n_steps=mlp_steps, seed=seed,
                                   progress=progress),
            "speed": probe_speed(train, test, n_steps=mlp_steps, seed=seed, progress=progress)}


def accuracies(model, probes):
    """name -> test accuracy of the model and each probe (for bar charts)."""
    out = {model.name: model.accuracy}
    out.update({p.name: p.accuracy for p in probes.values()})
    return out


def report(model, probes):
    """Text table: test accuracy, training steps and time of each classifier."""
    rows = [model, *probes.values()]
    w = max(len(r.name) for r in rows)
    lines = [f"{'classifier':<{w}}  {'accuracy':>8}  {'steps':>6}  {'train s':>7}  {'params':>9}"]
    lines += [f"{r.name:<{w}}  {r.accuracy:>8.2%}  {r.steps:>6}  {r.train_seconds:>7.1f}  "
              f"{r.n_params:>9,}" + ("  (stopped at the time cap)" if r.stopped_early else "")
              for r in rows]
    lines.append(f"chance: {1 / len(model.class_names):.0%} ({len(model.class_names)} classes); "
                 f"test clips: {model.n_test}, train clips: {model.n_train}")
    return "\n".join(lines)


def targets(model, probes, *, min_accuracy, max_frame0, max_train_minutes, title=None):
    """The pass/fail table of the classification task.

    Parameters
    ----------
    model : ClassifyResult
    probes : dict
        Output of :func:`run_probes`.
    min_accuracy : float
        Required test accuracy of the model.
    max_frame0 : float
        Highest acceptable accuracy of the frame-0 probe.
    max_train_minutes : float
        Training time budget of the model.

    Returns
    -------
    TargetTable
    """
    from ._common import TargetTable

    t = TargetTable(title or "classification targets")
    t.add("CNN test accuracy", model.accuracy, ">=", min_accuracy)
    t.add("CNN training minutes", model.train_seconds / 60.0, "<=", max_train_minutes)
    t.add("frame-0 probe accuracy", probes["frame 0"].accuracy, "<=", max_frame0)
    return t
