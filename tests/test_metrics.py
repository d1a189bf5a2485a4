"""trajlab.metrics on hand-made frames with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")

from trajlab import make_trajectories  # noqa: E402
from trajlab import metrics as M  # noqa: E402
from trajlab.render import render  # noqa: E402

S = 32


def _block_video(rows, cols, T=2, bg=0):
    """uint8 (1, T, 3, S, S) clip: background ``bg``, white where rows x cols."""
    v = np.full((1, T, 3, S, S), bg, dtype=np.uint8)
    v[:, :, :, rows[0]:rows[1], cols[0]:cols[1]] = 255
    return v


def test_perfect_reconstruction():
    target = _block_video((10, 12), (10, 12))
    bg = M.background(target)
    m = M.frame_metrics(target, target, bg)
    assert m["psnr"] == math.inf and m["ssim"] == pytest.approx(1.0)
    # 4 white pixels of 1024, in all channels: MSE 4/1024 -> 10 log10(256) dB
    assert m["psnr_trivial"] == pytest.approx(10 * math.log10(256), abs=1e-4)
    assert m["ssim_trivial"] < 0.99 and m["ssim_gain"] == pytest.approx(1 - m["ssim_trivial"])
    loc = M.localisation(target, np.full((1, 2, 2), 11.0), bg)
    # 2x2 block over rows/cols 10-11: pixel centres 10.5 and 11.5 -> centroid 11.0
    np.testing.assert_allclose(loc["centroids"], 11.0, atol=1e-12)
    assert loc["mean_px"] == pytest.approx(0.0, abs=1e-12)
    assert loc["within_1px"] == 1.0 and loc["within_2px"] == 1.0 and loc["found"] == 1.0


def test_blank_reconstruction_scores_like_the_background_and_finds_no_dot():
    target = _block_video((10, 12), (10, 12))
    blank = np.zeros_like(target)
    bg = M.background(target)
    np.testing.assert_array_equal(bg.numpy(), 0.0)      # the median ignores the dot
    m = M.frame_metrics(blank, target, bg)
    assert m["psnr"] == pytest.approx(24.0824, abs=1e-3)
    assert m["psnr_gain"] == pytest.approx(0.0, abs=1e-9)
    assert m["ssim_gain"] == pytest.approx(0.0, abs=1e-9)
    loc = M.localisation(blank, np.full((1, 2, 2), 11.0), bg)
    assert loc["found"] == 0.0 and loc["within_1px"] == 0.0 and loc["within_2px"] == 0.0
    assert math.isnan(loc["mean_px"]) and np.isinf(loc["errors"]).all()


def test_a_faint_dot_is_not_a_dot():
    target = _block_video((10, 12), (10, 12))
    faint = (target // 255 * 13).astype(np.uint8)        # 0.05 of the contrast
    loc = M.localisation(faint, np.full((1, 2, 2), 11.0), M.background(target))
    assert loc["found"] == 0.0
    loose = M.localisation(faint, np.full((1, 2, 2), 11.0), M.background(target), min_peak=0.01)
    assert loose["within_1px"] == 1.0


def test_dot_shifted_by_exactly_1_5_px():
    video = _block_video((10, 12), (10, 12))            # centroid (11.0, 11.0)
    truth = np.tile([12.5, 11.0], (1, 2, 1))             # 1.5 px to the right
    loc = M.localisation(video, truth, M.background(video))
    np.testing.assert_allclose(loc["errors"], 1.5, atol=1e-12)
    assert loc["mean_px"] == pytest.approx(1.5)
    assert loc["within_1px"] == 0.0 and loc["within_2px"] == 1.0


def test_rendered_dots_are_found_at_their_stored_pixels_and_a_1_5_px_shift_is_measured():
    rng = np.random.default_rng(0)
    pix = rng.uniform(8, 24, size=(4, 5, 2))
    rad = rng.uniform(1.0, 3.0, size=(4, 5))
    colors = np.array([[255, 255, 255], [200, 30, 90], [40, 220, 60], [255, 255, 0]],
                      dtype=np.uint8)
    bgc = (20, 10, 40)
    video = render(pix, rad, colors, bgc, S)
    bg = M.background(video)
    np.testing.assert_allclose(bg[:, 0, :, 0, 0].numpy() * 255, np.tile(bgc, (4, 1)), atol=1e-3)
    loc = M.localisation(video, pix, bg)
    assert loc["found"] == 1.0 and loc["errors"].max() < 0.1
    shifted = render(pix + [1.5, 0.0], rad, colors, bgc, S)
    loc = M.localisation(shifted, pix, bg)
    np.testing.assert_allclose(loc["errors"], 1.5, atol=0.1)
    assert loc["within_1px"] == 0.0 and loc["within_2px"] == 1.0


def test_generated_clips_give_their_stored_pixels():
    videos, _, ann = make_trajectories(8, n_frames=6, image_size=32, seed=4,
                                       return_annotations=True)
    loc = M.localisation(videos, ann["pixels"], M.background(videos))
    assert loc["errors"].max() < 0.15 and loc["within_1px"] == 1.0


def test_copy_of_last_frame_is_the_forecast_trivial_prediction():
    a = _block_video((10, 12), (10, 12), T=1)
    b = _block_video((10, 12), (14, 16), T=1)            # dot moved 4 px
    m = M.frame_metrics(a, b, a)
    assert m["psnr"] == m["psnr_trivial"] and m["psnr_gain"] == 0.0
    # 8 wrong pixels of 1024 -> MSE 8/1024
    assert m["psnr"] == pytest.approx(10 * math.log10(128), abs=1e-4)
    loc = M.localisation(a, np.array([[[15.0, 11.0]]]), M.background(b))
    assert loc["mean_px"] == pytest.approx(4.0)


def test_codebook_usage_known_values():
    u = M.codebook_usage(np.array([0, 0, 1, 1]), 4)
    assert (u["used"], u["utilisation"]) == (2, 0.5)
    assert u["perplexity"] == pytest.approx(2.0)
    np.testing.assert_array_equal(u["counts"], [2, 2, 0, 0])
    assert M.codebook_usage(torch.arange(8), 8)["perplexity"] == pytest.approx(8.0)
    one = M.codebook_usage(np.full((3, 5), 6), 256)
    assert one["used"] == 1 and one["perplexity"] == pytest.approx(1.0)
    assert one["utilisation"] == pytest.approx(1 / 256)
    # skewed: p = (3/4, 1/4) -> exp(H)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert M.codebook_usage([1, 1, 1, 3], 4)["perplexity"] == pytest.approx(math.exp(h))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"The 'codes' parameter of codebook_usage must hold "
                                         r"ints in the range \[0, 3\]. Got values in \[0, 4\]"):
        M.codebook_usage([0, 4], 4)
    with pytest.raises(ValueError, match=r"'codebook_size' parameter of codebook_usage"):
        M.codebook_usage([0], 0)
    with pytest.raises(ValueError, match=r"The 'pred' parameter of psnr must have the shape"):
        M.psnr(np.zeros((1, 3, 8, 8)), np.zeros((1, 3, 9, 9)))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3, H, W\)"):
        M.ssim(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)))
    with pytest.raises(TypeError, match=r"The 'frames' parameter"):
        M.as_float([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"The 'pixels' parameter of localisation must have "
                                         r"shape \(1, 2, 2\)"):
        M.localisation(_block_video((0, 2), (0, 2)), np.zeros((1, 3, 2)), 0.0)


def test_chunked_metrics_equal_one_pass(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (5, 3, 3, 16, 16), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8)
    whole = (M.psnr(a, b), M.ssim(a, b), M.dot_centroids(a, M.background(b)))
    monkeypatch.setattr(M, "CHUNK", 2)          # 15 frames in 8 chunks
    parts = (M.psnr(a, b), M.ssim(a, b), M.dot_centroids(a, M.background(b)))
    assert parts[0] == pytest.approx(whole[0], abs=1e-4)
    assert parts[1] == pytest.approx(whole[1], abs=1e-5)
    np.testing.assert_allclose(parts[2], whole[2], atol=1e-9)
    mse = np.mean((a / 255.0 - b / 255.0) ** 2)
    assert whole[0] == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
