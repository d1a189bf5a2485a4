"""trajlab.taskplots: every figure builds, with the panels and titles it promises."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from trajlab import taskplots as P

pytest.importorskip("torch")
from trajlab import metrics as M  # noqa: E402


def test_confusion_figure_shows_counts_and_recall():
    fig = P.confusion_figure(np.array([[3, 1], [0, 4]]), ("a", "b"))
    ax = fig.axes[0]
    assert isinstance(fig, Figure)
    assert [t.get_text() for t in ax.texts] == ["3", "1", "0", "4"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a (75%)", "b (100%)"]


def test_paths_and_reconstructions():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 16, (5, 6, 2))
    found = true + 0.3
    found[0, 2] = np.nan
    fig = P.dot_paths_figure(true, found, 16, n=5, labels=np.array([0, 1, 0, 1, 0]),
                             class_names=("lin", "circ"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "clip 0 (lin), 1 frames without dot" and titles[1] == "clip 1 (circ)"
    videos = rng.integers(0, 255, (3, 6, 3, 16, 16), dtype=np.uint8)
    fig = P.reconstruction_figure(videos, {"a": videos / 255.0, "b": videos / 255.0}, n=2)
    assert len(fig.axes) == 2 * 3 * 6            # (original + 2 reconstructions) x 2 clips x 6 frames
    fig = P.forecast_paths_figure(true[:, :3], true[:, 3:], {"m": true[:, 3:] + 1}, 16, n=3)
    assert sum(bool(ax.get_title()) for ax in fig.axes) == 3


def test_curves_bars_and_codebook():
    assert isinstance(P.loss_curves({"a": list(np.linspace(1, 0.1, 100))}), Figure)
    errs = {"a": np.ones((4, 3)), "b": np.r_[np.ones((1, 3)), np.full((3, 3), np.inf)]}
    assert isinstance(P.error_by_horizon(errs),
                      Figure)
    fig = P.accuracy_bars({"x": 0.5, "y": 1.0}, chance=0.25)
    assert [t.get_text() for t in fig.axes[0].texts][:2] == ["50.0%", "100.0%"]
    u = M.codebook_usage([0, 0, 1, 3], 8)
    fig = P.codebook_histogram({"tok": u})
    assert "3/8 codes used (38%)" in fig.axes[0].get_title()
