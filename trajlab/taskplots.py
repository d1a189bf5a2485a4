"""Figures of the task notebooks (classify, forecast, tokenize).

Like :mod:`trajlab.plotting`, every function builds its own
:class:`matplotlib.figure.Figure` (never through pyplot) and returns it, so
a notebook shows it as a cell's last expression. Pixel conventions are those
of :mod:`trajlab.camera`: ``(u, v)`` with ``v`` down, image extent
``[0, S] x [0, S]``.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .plotting import class_colors

__all__ = ["confusion_figure", "accuracy_bars", "loss_curves", "reconstruction_figure",
           "dot_paths_figure", "forecast_paths_figure", "codebook_histogram",
           "error_by_horizon"]

#: Figure resolution of the notebooks (small files in git).
DPI = 72


def _name(labels, class_names, k):
    """Display name of clip ``k``'s label ('' without labels)."""
    if labels is None:
        return ""
    lab = labels[k]
    return str(class_names[int(lab)]) if class_names is not None else str(lab)


def _fig(w, h):
    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def confusion_figure(confusion, class_names, *, title="confusion matrix (test split)"):
    """Counts of test clips per (true, predicted) class, with accuracy per row."""
    c = np.asarray(confusion)
    n = len(class_names)
    fig = _fig(1.2 + 0.9 * n, 1.0 + 0.8 * n)
    ax = fig.add_subplot()
    ax.imshow(c, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(c[i, j]), ha="center", va="center",
                    color="white" if c[i, j] > c.max() / 2 else "black")
    ax.set_xticks(range(n), class_names, rotation=30, ha="right")
    row = c.sum(1)
    ax.set_yticks(range(n), [f"{name} ({c[i, i] / max(row[i], 1):.0%})"
                             for i, name in enumerate(class_names)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (recall)")
    ax.set_title(title)
    return fig


def accuracy_bars(results, *, chance=None, title="test accuracy"):
    """Horizontal bars of accuracy per classifier; ``results``: name -> accuracy."""
    names, acc = list(results), [results[k] for k in results]
    fig = _fig(6.0, 0.5 + 0.45 * len(names))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), acc, color=class_colors(len(names)))
    for i, a in enumerate(acc):
        ax.text(min(a, 0.98), i, f"{a:.1%}", va="center", ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    if chance is not None:
        ax.axvline(chance, color="k", ls="--", lw=1)
        ax.text(chance, len(names) - 0.5, " chance", va="bottom")
    ax.set_title(title)
    return fig


def loss_curves(curves, *, title="training loss", logy=True, smooth=20):
    """Training curves (name -> list of per-step losses), moving-averaged."""
    fig = _fig(6.0, 3.0)
    ax = fig.add_subplot()
    for name, losses in curves.items():
        y = np.asarray(losses, dtype=np.float64)
        k = max(1, min(smooth, len(y) // 5))
        if k > 1:
            y = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(y)) + k, y, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    ax.set_title(title)
    return fig


def _hwc(frame):
    f = np.asarray(frame, dtype=np.float64)
    if f.max() > 1.0 + 1e-6:
        f = f / 255.0
    return np.clip(np.moveaxis(f, 0, -1), 0, 1)


def reconstruction_figure(originals, recons, *, frames=None, n=4, labels=None, class_names=None,
                          title=None, gain=1.0):
    """Originals (top row of each pair) beside reconstructions (below).

    Parameters
    ----------
    originals : ndarray of shape (N, T, 3, H, W), uint8 or float in [0, 1]
    recons : dict of name -> array of the same shape, or one array
    frames : sequence of int, optional
        Frames shown (default: up to 6 spread over the clip).
    n : int
        Clips shown.
    labels, class_names : optional
        Integer labels of the clips and the class names, shown beside them.
    gain : float
        Brightness gain of every panel (1: as is), to show faint output.
    """
    if not isinstance(recons, dict):
        recons = {"reconstruction": recons}
    T = np.asarray(originals).shape[1]
    frames = list(frames) if frames is not None else sorted(set(np.linspace(0, T - 1, min(T, 6))
                                                                .astype(int).tolist()))
    order = []
    for k in range(n):
        tag = _name(labels, class_names, k)
        order.append((f"clip {k}" + (f" ({tag})" if tag else "") + ": original", originals[k]))
        order += [(f"{name}", r[k]) for name, r in recons.items()]
    rows = order
    fig = _fig(1.0 * len(frames) + 1.6, 1.0 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), len(frames), squeeze=False)
    for i, (name, clip) in enumerate(rows):
        for j, t in enumerate(frames):
            ax = axes[i, j]
            ax.imshow(np.clip(_hwc(np.asarray(clip[t])) * gain, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t={t}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    return fig


def _panel_grid(n, cols=4):
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig = _fig(2.2 * cols, 2.2 * rows + 0.4)
    return fig, fig.subplots(rows, cols, squeeze=False).ravel()


def _frame_axes(ax, S, title):
    ax.set_xlim(0, S)
    ax.set_ylim(S, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def dot_paths_figure(true_pixels, found_pixels, image_size, *, n=8, labels=None, class_names=None,
                     title="decoded dot (red) over the true path (black)"):
    """Paths of the dot found in decoded frames over the stored true paths.

    Parameters
    ----------
    true_pixels, found_pixels : ndarray of shape (N, T, 2)
        ``found_pixels`` may hold NaN where no dot was found (shown as gaps).
    """
    fig, axes = _panel_grid(n)
    for k, ax in enumerate(axes):
        if k >= n:
            ax.set_axis_off()
            continue
        tp, fp = np.asarray(true_pixels[k]), np.asarray(found_pixels[k])
        ax.plot(tp[:, 0], tp[:, 1], "k.-", lw=1, ms=3)
        ax.plot(fp[:, 0], fp[:, 1], "r.-", lw=1, ms=3, alpha=0.8)
        missing = int(np.isnan(fp[:, 0]).sum())
        tag = _name(labels, class_names, k)
        _frame_axes(ax, image_size, f"clip {k}" + (f" ({tag})" if tag else "")
                    + (f", {missing} frames without dot" if missing else ""))
    fig.suptitle(title)
    return fig


def forecast_paths_figure(context, future, predictions, image_size, *, n=8, labels=None,
                          class_names=None, title="forecast paths (context black, truth green)"):
    """Context path, true future and each method's forecast, per clip.

    Parameters
    ----------
    context : ndarray of shape (N, c, 2)
    future : ndarray of shape (N, f, 2)
    predictions : dict of name -> ndarray of shape (N, f, 2)
    """
    fig, axes = _panel_grid(n)
    colors = class_colors(len(predictions) + 3)[3:]
    for k, ax in enumerate(axes):
        if k >= n:
            ax.set_axis_off()
            continue
        c, f = np.asarray(context[k]), np.asarray(future[k])
        ax.plot(c[:, 0], c[:, 1], "k.-", lw=1, ms=3)
        ax.plot(np.r_[c[-1:, 0], f[:, 0]], np.r_[c[-1:, 1], f[:, 1]], "g.-", lw=2, ms=4)
        for (name, p), col in zip(predictions.items(), colors):
            p = np.asarray(p[k])
            ax.plot(np.r_[c[-1:, 0], p[:, 0]], np.r_[c[-1:, 1], p[:, 1]], ".--", color=col,
                    lw=1, ms=3, label=name if k == 0 else None)
        tag = _name(labels, class_names, k)
        _frame_axes(ax, image_size, f"clip {k}" + (f" ({tag})" if tag else ""))
    fig.legend(loc="outside lower center", ncol=min(4, len(predictions)), fontsize=8)
    fig.suptitle(title)
    return fig


def error_by_horizon(errors, *, title="forecast error by horizon (test split)"):
    """Mean position error (px) per future frame; ``errors``: name -> (N, f)."""
    fig = _fig(6.0, 3.0)
    ax = fig.add_subplot()
    for name, e in errors.items():
        e = np.asarray(e, dtype=np.float64)
        e = np.where(np.isfinite(e), e, np.nan)
        ax.plot(np.arange(1, e.shape[1] + 1), np.nanmean(e, axis=0), "o-", label=name)
    ax.set_xlabel("frames ahead")
    ax.set_ylabel("mean error (px)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def codebook_histogram(usages, *, title="codebook usage on the test split"):
    """Token counts per code, most used first; ``usages``: name -> output of
    :func:`trajlab.metrics.codebook_usage` (or one such dict)."""
    if "counts" in usages:
        usages = {"tokenizer": usages}
    fig = _fig(6.0, 1.0 + 1.6 * len(usages))
    axes = fig.subplots(len(usages), 1, squeeze=False).ravel()
    for ax, (name, u) in zip(axes, usages.items()):
        counts = np.sort(np.asarray(u["counts"]))[::-1]
        ax.bar(np.arange(len(counts)), np.maximum(counts, 0.5), width=1.0)
        ax.set_yscale("log")
        ax.set_xlim(-0.5, len(counts) - 0.5)
        ax.set_ylabel("tokens")
        ax.set_title(f"{name}: {u['used']}/{u['codebook_size']} codes used "
                     f"({u['utilisation']:.0%}), perplexity {u['perplexity']:.1f}", fontsize=9)
    axes[-1].set_xlabel("code rank")
    fig.suptitle(title)
    return fig
