"""Interactive explorer (trajlab.explore): the chosen sample and the redraws."""

import numpy as np
import pytest

from trajlab import DatasetSpec, explore, make_trajectories

SPEC = DatasetSpec(n_samples=40, n_frames=8, image_size=32, seed=4)


@pytest.mark.parametrize("name", SPEC.classes)
def test_class_sample_is_the_jth_clip_of_its_class_in_the_dataset(name):
    videos, labels, ann = make_trajectories(40, spec=SPEC, return_annotations=True)
    label = SPEC.classes.index(name)
    for j in (0, 3):
        s = explore.class_sample(SPEC, name, j)
        i = int(np.flatnonzero(labels == label)[j])
        assert s["index"] == i and s["label"] == label
        np.testing.assert_array_equal(s["video"], videos[i])
        np.testing.assert_array_equal(s["pixels"], ann["pixels"][i])
        assert s["record"] == ann["records"][i]


def test_class_sample_validates():
    with pytest.raises(ValueError, match=r"The 'class_name' parameter of class_sample must be "
                                         r"one of \{'linear'"):
        explore.class_sample(SPEC, "spiral")
    with pytest.raises(ValueError, match=r"The 'sample' parameter of class_sample"):
        explore.class_sample(SPEC, "linear", -1)


def test_overview_has_3d_2d_and_strip_panels():
    fig = explore.overview(SPEC, "parabolic", 1)
    assert [ax.name for ax in fig.axes] == ["3d", "rectilinear", "rectilinear"]
    assert "parabolic" in fig._suptitle.get_text()


def test_explorer_redraws_when_a_widget_moves():
    pytest.importorskip("ipywidgets")
    ex = explore.explorer(SPEC, class_name="circular")
    c = ex.controls
    assert {"class", "sample", "seed", "n_frames", "image_size", "style", "distance",
            "azimuth", "elevation", "fov", "frame", "play"} <= set(c)
    assert c["sample"].description == "sample" and c["class"].description == "class"
    first = bytes(ex.figure.value)
    assert first.startswith(b"\x89PNG") and ex.n_renders == 1
    c["sample"].value = 2
    assert ex.n_renders == 2 and bytes(ex.figure.value) != first
    assert ex.sample["index"] == explore.class_sample(SPEC, "circular", 2)["index"]
    c["n_frames"].value = 12
    assert c["frame"].max == 11 and len(ex._frames) == 12
    c["frame"].value = 5
    assert bytes(ex.frame_view.value) == ex._frames[5]
    c["style"].value = "trail"
    assert ex.current_spec().style == "trail"


def test_explorer_reports_impossible_settings_and_keeps_last_figure():
    pytest.importorskip("ipywidgets")
    ex = explore.Explorer(SPEC)
    good, n = bytes(ex.figure.value), ex.n_renders
    ex.controls["distance"].value = (1.0, 1.0)     # too close: nothing fits in the frame
    assert ex.n_renders == n and bytes(ex.figure.value) == good
    assert "rejected" in ex.status.value
    ex.controls["distance"].value = (6.0, 6.0)
    assert ex.n_renders == n + 1 and "fingerprint" in ex.status.value
