"""Figures for notebooks (trajlab.plotting): shapes, conventions, no pyplot state."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from trajlab import DatasetSpec, make_trajectories, plotting
from trajlab import camera as cam


@pytest.fixture(scope="module")
def data():
    spec = DatasetSpec(n_samples=12, n_frames=6, image_size=32, seed=1)
    videos, labels, ann = make_trajectories(12, spec=spec, return_annotations=True)
    return spec, videos, labels, ann


def _pyplot_figures():
    import matplotlib.pyplot as plt

    return plt.get_fignums()


def test_tile_lays_frames_out_row_major_with_gaps():
    imgs = np.arange(2 * 3 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 3, 2, 2, 3)
    out = plotting._tile(imgs, gap=1, fill=7)
    assert out.shape == (2 * 3 - 1, 3 * 3 - 1, 3)
    np.testing.assert_array_equal(out[3:5, 6:8], imgs[1, 2])
    assert (out[2] == 7).all() and (out[:, 2] == 7).all()


def test_montage_groups_rows_by_class(data):
    spec, videos, labels, _ = data
    fig = plotting.montage(videos, labels, class_names=spec.classes, n_per_class=2,
                           frames=[0, 5])
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    img = ax.images[0].get_array()
    assert img.shape == (4 * 2 * 33 - 1, 2 * 33 - 1, 3)
    names = [t.get_text().split(" #")[0] for t in ax.get_yticklabels()]
    assert names == [c for c in spec.classes for _ in range(2)]
    first = int(np.flatnonzero(labels == 0)[0])
    np.testing.assert_array_equal(img[:32, 33:65], np.moveaxis(videos[first, 5], 0, -1))


def test_frame_strip_and_bad_shape(data):
    _, videos, _, _ = data
    fig = plotting.frame_strip(videos[0])
    assert fig.axes[0].images[0].get_array().shape == (32, 6 * 33 - 1, 3)
    with pytest.raises(ValueError, match=r"must be an array of shape \(T, 3, H, W\)"):
        plotting.frame_strip(videos)


def test_paths_2d_uses_image_coordinates_with_v_down(data):
    spec, _, labels, ann = data
    fig = plotting.plot_paths_2d(ann["pixels"][:4], spec.image_size, labels=labels[:4],
                                 class_names=spec.classes)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert lo > hi                               # v grows downwards
    assert ax.get_xlim()[0] <= 0 and ax.get_xlim()[1] >= spec.image_size
    segs = ax.collections[0].get_segments()
    np.testing.assert_allclose(segs[2], ann["pixels"][2])


def test_paths_3d_draws_camera_centre_and_frustum_through_image_corners(data):
    spec, _, _, ann = data
    R, t, K = ann["R"][0], ann["t"][0], ann["K"][0]
    fig = plotting.plot_paths_3d(ann["positions"][0], R, t, K=K, image_size=spec.image_size,
                                 frustum_depth=2.0)
    ax = fig.axes[0]
    assert ax.name == "3d"
    # the thick top edge of the frustum projects onto the image's top corners
    top = [c for c in ax.collections if c.get_linewidth()[0] == pytest.approx(2.2)][0]
    seg = np.asarray(top._segments3d)[0]
    pix, depth = cam.project(seg[None], K[None], R[None], t[None])
    np.testing.assert_allclose(pix[0], [[0, 0], [spec.image_size, 0]], atol=1e-9)
    np.testing.assert_allclose(depth[0], 2.0)
    with pytest.raises(ValueError, match="image_size"):
        plotting.plot_paths_3d(ann["positions"][0], R, t, K=K)


def test_animate_is_self_contained_html(data):
    spec, videos, labels, _ = data
    html = plotting.animate(videos[:2], titles=["a", "b"], fps=4)
    assert html.count("data:image/png;base64") == spec.n_frames
    assert "<script" in html
    anim = plotting.animate(videos[0], embed=False)
    assert anim._fig.get_size_inches()[0] * anim._fig.dpi == pytest.approx(32 * 4)
    assert anim.to_jshtml().count("data:image/png;base64") == spec.n_frames


def test_parameter_histograms_one_row_per_class(data):
    spec, _, _, ann = data
    fig = plotting.parameter_histograms(ann["records"], class_names=spec.classes)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert {t.split(":")[0] for t in titles} == set(spec.classes)
    assert "helical: axis_z" in titles and "linear: |v|" in titles
    assert not any(t.endswith((": a_z", ": b_z", ": |g|")) for t in titles)
    with pytest.raises(ValueError, match="non-empty"):
        plotting.parameter_histograms([])


def test_no_pyplot_state_leaks(data):
    spec, videos, labels, ann = data
    before = _pyplot_figures()
    plotting.montage(videos, labels)
    plotting.sample_figure(videos[0], ann["positions"][0], ann["pixels"][0], ann["R"][0],
                           ann["t"][0], ann["K"][0], spec.image_size)
    plotting.animate(videos[0])
    assert _pyplot_figures() == before
    png = plotting.to_png(plotting.frame_strip(videos[0]))
    assert png.startswith(b"\x89PNG")
