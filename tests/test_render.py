"""Renderer: anti-aliased disc coverage, windowed renderer vs full-frame
reference, trail style, colours, pixel noise and position jitter."""

from __future__ import annotations

import numpy as np
import pytest

from trajlab import DatasetSpec, make_trajectories
from trajlab import camera as cam
from trajlab.render import coverage, render
from trajlab.trajectories import Linear

SEEDS = range(8)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def _colors(n, rgb):
    return np.tile(np.array(rgb, dtype=np.uint8), (n, 1))


def _random_dots(rng, n, T, S, r_lo=0.3, r_hi=5.0, margin=0.0):
    radius = rng.uniform(r_lo, r_hi, (n, T))
    lo = radius + margin
    pixels = lo[..., None] + rng.random((n, T, 2)) * (S - 2 * lo)[..., None]
    return pixels, radius


def _blend(alpha, colors, background):
    """Expected float image (N, T, 3, H, W) of a coverage map."""
    bg = np.asarray(background, dtype=np.float64)[None, None, :, None, None]
    delta = colors.astype(np.float64)[:, None, :, None, None] - bg
    return bg + alpha.astype(np.float64)[:, :, None] * delta


def _centroid(frames):
    """Intensity centroid (u, v) of (..., H, W) frames, continuous coordinates."""
    H, W = frames.shape[-2:]
    w = frames.astype(np.float64)
    total = w.sum(axis=(-1, -2))
    u = (w * (np.arange(W) + 0.5)).sum(axis=(-1, -2)) / total
    v = (w * (np.arange(H) + 0.5)[:, None]).sum(axis=(-1, -2)) / total
    return np.stack([u, v], axis=-1)


# --------------------------------------------------------------- coverage
def test_coverage_hand_values():
    a = coverage(np.array([5.5, 5.5]), np.array(1.0), 11)
    assert a.shape == (11, 11) and a.dtype == np.float32
    assert a[5, 5] == 1.0                                     # centre pixel fully covered
    assert a[5, 6] == a[5, 4] == a[4, 5] == a[6, 5] == 0.5    # edge crosses neighbours' centres
    assert a[4, 4] == pytest.approx(1.5 - np.sqrt(2), abs=1e-6)
    assert a[5, 7] == 0.0 and a.sum() == pytest.approx(1 + 4 * 0.5 + 4 * (1.5 - np.sqrt(2)),
                                                       abs=1e-5)
    # a sub-pixel shift moves weight continuously (no snapping to integers)
    b = coverage(np.array([5.75, 5.5]), np.array(1.0), 11)
    assert b[5, 6] == pytest.approx(0.75) and b[5, 4] == pytest.approx(0.25)


def test_coverage_area_tracks_disc_area():
    # the one-pixel linear ramp integrates to pi (r^2 + 1/12); sampling it at
    # pixel centres adds a grid error of well under one pixel, zero on average
    rng = np.random.default_rng(0)
    r = rng.uniform(0.5, 6.0, 3000)
    pix = 16 + rng.random((3000, 2))
    err = coverage(pix, r, 32).sum(axis=(-1, -2)) - np.pi * (r**2 + 1 / 12)
    assert np.abs(err).max() < 0.7
    assert abs(err.mean()) < 0.03


# -------------------------------------------------- window vs reference
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("S, T", [(32, 8), (64, 16), (17, 3)])
def test_window_renderer_equals_full_frame_reference(seed, S, T):
    rng = np.random.default_rng([seed, S])
    n = 40
    pixels, radius = _random_dots(rng, n, T, S, r_hi=min(6.0, S / 5))
    colors = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    background = tuple(int(x) for x in rng.integers(0, 256, 3))
    out = render(pixels, radius, colors, background, S)
    assert out.shape == (n, T, 3, S, S) and out.dtype == np.uint8
    expected = _blend(coverage(pixels, radius, S), colors, background)
    # equal up to the final rounding to uint8 (reference coverage is float32)
    assert np.abs(out - expected).max() <= 0.5 + 1e-4
    assert np.mean(out == np.rint(expected)) > 0.9999


def _exact(pixels, radius, colors, background):
    """Full-frame blend with the renderer's float64 arithmetic, uint8: the
    windowed renderer must give these bytes exactly, so any pixel it leaves
    out must blend to the background."""
    S = 64
    centres = np.arange(S, dtype=np.float64) + 0.5
    dx = centres - pixels[..., 0, None]
    dy = centres - pixels[..., 1, None]
    d = np.sqrt(dy[..., :, None] * dy[..., :, None] + dx[..., None, :] * dx[..., None, :])
    alpha = np.clip((radius + 0.5)[..., None, None] - d, 0.0, 1.0)
    bg = np.asarray(background, dtype=np.float64)
    delta = colors.astype(np.float64) - bg
    return np.rint(alpha[:, :, None] * delta[:, None, :, None, None]
                   + bg[:, None, None]).astype(np.uint8)


@pytest.mark.parametrize("colour, background", [
    ((255, 255, 255), (0, 0, 0)),          # grey: one channel computed for three
    ((90, 90, 90), (200, 200, 200)),
    ((255, 255, 254), (0, 0, 0)),          # not grey: per channel
    ((255, 255, 255), (0, 0, 1)),
    (None, (10, 20, 30)),                  # random colours
])
def test_window_renderer_is_byte_exact_at_window_edges(monkeypatch, colour, background):
    # dots whose left/top edge u - r or right/bottom edge u + r lands exactly
    # on a pixel boundary (the tight window's limits), and random ones; a
    # tiny chunk size makes the renderer go through many chunks
    import trajlab.render as rd

    rng = np.random.default_rng(11)
    n, T, S = 30, 6, 64
    radius = np.where(rng.random((n, T)) < 0.5, rng.choice([0.5, 1.0, 2.5, 4.0], (n, T)),
                      rng.uniform(0.3, 6.0, (n, T)))
    k = rng.integers(8, 56, (n, T, 2)).astype(np.float64)
    edge = rng.integers(0, 3, (n, T, 2))
    pixels = np.where(edge == 0, k + radius[..., None],
                      np.where(edge == 1, k - radius[..., None], k + rng.random((n, T, 2))))
    colors = (rng.integers(0, 256, (n, 3), dtype=np.uint8) if colour is None
              else _colors(n, colour))
    expected = _exact(pixels, radius, colors, background)
    np.testing.assert_array_equal(render(pixels, radius, colors, background, S), expected)
    monkeypatch.setattr(rd, "DOT_CHUNK_BYTES", 3000)
    np.testing.assert_array_equal(render(pixels, radius, colors, background, S), expected)
    # ... and the edge pixels are really lit, or this tested nothing
    assert ((expected != np.asarray(background, np.uint8)[:, None, None]).sum() > 10 * n * T)


def test_window_renderer_with_mixed_radii_in_one_block():
    # the window is sized by the largest dot of the block; small ones must
    # still be exact, and a huge dot must not be cut
    S = 64
    pixels = np.array([[[10.3, 50.7], [32.0, 32.0]], [[53.2, 9.9], [20.5, 40.25]]])
    radius = np.array([[0.4, 14.0], [1.3, 2.0]])
    out = render(pixels, radius, _colors(2, WHITE), BLACK, S)
    expected = _blend(coverage(pixels, radius, S), _colors(2, WHITE), BLACK)
    assert np.abs(out - expected).max() <= 0.5 + 1e-4
    assert (out[0, 1, 0] == 255).sum() > 0.9 * np.pi * 13.5**2


def test_render_in_place_and_empty():
    pixels, radius = _random_dots(np.random.default_rng(1), 3, 4, 32)
    buf = np.full((3, 4, 3, 32, 32), 7, dtype=np.uint8)
    res = render(pixels, radius, _colors(3, (9, 99, 199)), (1, 2, 3), 32, out=buf)
    assert res is buf
    np.testing.assert_array_equal(buf, render(pixels, radius, _colors(3, (9, 99, 199)),
                                              (1, 2, 3), 32))
    # a non-contiguous buffer (every other sample of a bigger array) works too
    for style in ("dot", "trail"):
        big = np.zeros((6, 4, 3, 32, 32), dtype=np.uint8)
        res = render(pixels, radius, _colors(3, WHITE), BLACK, 32, style=style, out=big[::2])
        np.testing.assert_array_equal(big[::2], render(pixels, radius, _colors(3, WHITE), BLACK,
                                                       32, style=style))
        assert (big[1::2] == 0).all() and res.base is big
    empty = render(np.zeros((0, 4, 2)), np.zeros((0, 4)), np.zeros((0, 3), np.uint8), BLACK, 32)
    assert empty.shape == (0, 4, 3, 32, 32)


def test_dark_object_on_light_background():
    pixels, radius = _random_dots(np.random.default_rng(2), 10, 3, 32, r_lo=1.5, r_hi=3)
    out = render(pixels, radius, _colors(10, (0, 10, 20)), (250, 240, 230), 32)
    expected = _blend(coverage(pixels, radius, 32), _colors(10, (0, 10, 20)), (250, 240, 230))
    assert np.abs(out - expected).max() <= 0.5 + 1e-4
    assert out[:, :, 0].min() == 0 and out[:, :, 2].max() == 230


# ---------------------------------------------------------- anti-aliasing
def test_dots_are_anti_aliased_with_exact_peak(size_datasets):
    for seed, videos, labels, ann in size_datasets:
        S = ann["spec"].image_size
        frames = videos[:, :, 0]                              # white on black: R = G = B
        np.testing.assert_array_equal(videos[:, :, 1], frames)
        # edge pixels take intermediate values in every frame
        partial = ((frames > 0) & (frames < 255)).sum(axis=(-1, -2))
        assert partial.min() >= 4
        # peak = coverage of the pixel centre nearest to the sub-pixel centre
        px, r = ann["pixels"], ann["radius"]
        near = np.floor(px) + 0.5
        d = np.sqrt((near[..., 1] - px[..., 1]) ** 2 + (near[..., 0] - px[..., 0]) ** 2)
        peak = np.rint(np.clip(r + 0.5 - d, 0, 1) * 255.0)
        np.testing.assert_array_equal(frames.max(axis=(-1, -2)), peak)
        # ... which is the object colour whenever the disc covers a full pixel
        big = r >= 0.5 + np.sqrt(0.5)
        assert big.any() if S == 32 else big.all()
        assert (frames.max(axis=(-1, -2))[big] == 255).all()
        # the brightness centroid follows the stored sub-pixel position
        err = np.abs(_centroid(frames[:100]) - px[:100]).max()
        assert err < (0.2 if S == 32 else 0.1), err


def test_hand_made_trajectory_renders_where_projected():
    """Hand-made params -> positions -> hand-made camera -> pixels -> video."""
    p = {"p0": np.array([-1.0, 0.2, 0.5]), "v": np.array([2.0, -0.4, -1.0])}
    t = np.linspace(0.0, 1.0, 9)
    X = Linear().positions(p, t)
    R, tt = cam.look_at(np.array([1.0, -6.0, 2.0]))
    K = cam.intrinsics(64, 40.0)
    pix, depth = cam.project(X[None], K[None], R[None], tt[None])
    radius = K[0, 0] * 0.15 / depth
    video = render(pix, radius, _colors(1, WHITE), BLACK, 64)[0, :, 0]
    np.testing.assert_allclose(_centroid(video), pix[0], atol=0.1)
    # a straight 3D line projects to a straight image line
    d = pix[0] - pix[0, 0]
    cross = d[:, 0] * d[-1, 1] - d[:, 1] * d[-1, 0]
    assert np.abs(cross).max() / np.linalg.norm(d[-1]) < 1e-9


# ---------------------------------------------------------------- trail
def test_trail_hand_made():
    # a dot jumping 10 px right per frame, trail of 3 with decay 0.5
    S, T = 64, 6
    pixels = np.stack([np.arange(T) * 10.0 + 7.5, np.full(T, 30.5)], axis=-1)[None]
    radius = np.full((1, T), 2.0)
    out = render(pixels, radius, _colors(1, WHITE), BLACK, S, style="trail", trail_length=3,
                 trail_decay=0.5)[0, :, 0]
    row = out[5, 30]                                  # row through the dot centres
    cols = (pixels[0, :, 0] - 0.5).astype(int)        # pixel under each centre
    assert row[cols[5]] == 255
    assert row[cols[4]] == 128 and row[cols[3]] == 64  # rint(255 * 0.5), rint(255 * 0.25)
    assert row[cols[:3]].max() == 0                   # older positions are gone
    np.testing.assert_array_equal(out[0], render(pixels[:, :1], radius[:, :1],
                                                 _colors(1, WHITE), BLACK, S)[0, 0, 0])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("length, decay", [(2, 0.9), (4, 0.5), (20, 0.7)])
def test_trail_equals_reference(seed, length, decay):
    rng = np.random.default_rng([seed, length])
    n, T, S = 12, 10, 48
    pixels, radius = _random_dots(rng, n, T, S, r_lo=0.5, r_hi=4.0)
    colors = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    out = render(pixels, radius, colors, (5, 50, 200), S, style="trail", trail_length=length,
                 trail_decay=decay)
    cov = coverage(pixels, radius, S).astype(np.float64)
    ref = np.zeros_like(cov)
    for lag in range(min(length, T)):
        ref[:, lag:] = np.maximum(ref[:, lag:], decay**lag * cov[:, :T - lag])
    assert np.abs(out - _blend(ref, colors, (5, 50, 200))).max() <= 0.5 + 1e-4


def test_trail_dataset_draws_faded_earlier_positions(make_ds):
    dv, dl, da = make_ds(400, 16, 64, seed=3)
    tv, tl, ta = make_ds(400, 16, 64, seed=3, style="trail")
    np.testing.assert_array_equal(dl, tl)
    np.testing.assert_array_equal(da["pixels"], ta["pixels"])
    np.testing.assert_array_equal(tv[:, 0], dv[:, 0])         # no history in frame 0
    assert (tv >= dv).all()                                   # max of coverages
    lit_dot = (dv[:, 1:, 0] > 0).sum(axis=(-1, -2))
    lit_trail = (tv[:, 1:, 0] > 0).sum(axis=(-1, -2))
    assert (lit_trail >= lit_dot).all() and (lit_trail > lit_dot).mean() > 0.95
    # the previous position shows at about half intensity (default decay 0.5)
    prev = np.floor(da["pixels"][:, :-1]).astype(int)
    n, k = np.meshgrid(np.arange(400), np.arange(15), indexing="ij")
    at_prev = tv[n, k + 1, 0, prev[..., 1], prev[..., 0]].astype(int)
    dot_prev = dv[n, k, 0, prev[..., 1], prev[..., 0]].astype(int)
    assert (at_prev >= np.rint(dot_prev * 0.5) - 1).all()
    assert np.median(at_prev) >= 100


# ---------------------------------------------------------------- colour
def test_random_colour_is_per_sample_and_independent_of_class(make_ds):
    v, labels, ann = make_ds(4000, 8, 32, seed=5, object_color="random")
    colors = ann["colors"].astype(np.float64)
    assert len(np.unique(ann["colors"], axis=0)) > 3500
    overall = colors.mean(axis=0)
    for c in range(4):
        # class means agree within ~5 standard errors
        assert np.abs(colors[labels == c].mean(axis=0) - overall).max() < 10
    # the same stream gives the same colour whatever the class: compare with
    # single-class datasets (samples accepted at the first draw)
    for name in ("linear", "parabolic"):
        _, _, one = make_ds(4000, 8, 32, seed=5, object_color="random", classes=(name,))
        both = (ann["attempts"] == 1) & (one["attempts"] == 1)
        assert both.mean() > 0.9
        np.testing.assert_array_equal(one["colors"][both], ann["colors"][both])


def test_random_colour_is_rendered(make_ds):
    v, labels, ann = make_ds(300, 16, 64, seed=6, object_color="random")
    # at 64 px every dot covers full pixels: the brightest pixel is the colour
    flat = v.reshape(300, 16, 3, -1)
    idx = flat.sum(axis=2).argmax(axis=-1)
    peak = np.take_along_axis(flat, idx[:, :, None, None], axis=-1)[..., 0]
    np.testing.assert_array_equal(peak, np.broadcast_to(ann["colors"][:, None], peak.shape))


# ------------------------------------------------------ noise and jitter
def test_pixel_noise_changes_bytes_deterministically(make_ds):
    clean, cl, ca = make_ds(300, 8, 32, seed=7, background_color=(128, 128, 128))
    noisy, nl, na = make_ds(300, 8, 32, seed=7, background_color=(128, 128, 128),
                            pixel_noise=5.0)
    again, _ = make_trajectories(300, spec=DatasetSpec(n_frames=8, image_size=32, seed=7,
                                                       background_color=(128, 128, 128),
                                                       pixel_noise=5.0))
    np.testing.assert_array_equal(noisy, again)
    np.testing.assert_array_equal(nl, cl)
    np.testing.assert_array_equal(na["pixels"], ca["pixels"])
    diff = noisy.astype(np.float64) - clean
    assert (diff != 0).mean() > 0.9
    assert diff.std() == pytest.approx(5.0, rel=0.03)
    assert abs(diff.mean()) < 0.05
    # independent between samples
    assert abs(np.corrcoef(diff[0].ravel(), diff[1].ravel())[0, 1]) < 0.05


def test_position_jitter_changes_bytes_deterministically(make_ds):
    sigma = 0.01
    clean, cl, ca = make_ds(500, 16, 64, seed=8)
    jit, jl, ja = make_ds(500, 16, 64, seed=8, position_jitter=sigma)
    again = make_trajectories(500, spec=DatasetSpec(n_frames=16, image_size=64, seed=8,
                                                    position_jitter=sigma))[0]
    np.testing.assert_array_equal(jit, again)
    assert not np.array_equal(jit, clean)
    np.testing.assert_array_equal(jl, cl)
    # same stream: for samples accepted at the first draw, the stored
    # positions differ from the clean ones by exactly the Gaussian jitter
    first = (ca["attempts"] == 1) & (ja["attempts"] == 1)
    assert first.mean() > 0.9
    np.testing.assert_array_equal(ja["K"][first], ca["K"][first])
    d = ja["positions"][first] - ca["positions"][first]
    assert d.std() == pytest.approx(sigma, rel=0.03)
    assert np.abs(d.mean()) < sigma / 20
    # stored pixels are the projection of the jittered positions
    pix, depth = cam.project(ja["positions"], ja["K"], ja["R"], ja["t"])
    np.testing.assert_array_equal(pix, ja["pixels"])
    np.testing.assert_array_equal(depth, ja["depth"])
