"""trajlab.baselines: each baseline runs on a tiny dataset and is deterministic for a seed."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")

from trajlab import generate, make_trajectories  # noqa: E402
from trajlab.baselines import (Split, TargetTable, confusion_matrix, load_split, seeded,  # noqa: E402
                               torch_threads)
from trajlab.baselines import classify as C  # noqa: E402
from trajlab.baselines import forecast as F  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and the CPU may be shared)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny():
    """48 clips of 6 x 3 x 16 x 16 (train and test splits)."""
    src = make_trajectories(48, n_frames=6, image_size=16, seed=2, return_annotations=True)
    return src, load_split(src, "train"), load_split(src, "test")


def _state():
    return torch.random.get_rng_state().clone()


# ------------------------------------------------------------------ data
def test_load_split_from_memory_and_from_a_run_dir_agree(tiny, tmp_path):
    src, train, test = tiny
    videos, labels, ann = src
    np.testing.assert_array_equal(train.indices, np.flatnonzero(ann["splits"] == 0))
    np.testing.assert_array_equal(train.videos, videos[train.indices])
    np.testing.assert_array_equal(test.pixels, ann["pixels"][test.indices])
    assert (train.n_frames, train.image_size, train.n_classes) == (6, 16, 4)
    generate(ann["spec"], tmp_path / "run", progress="none", n_jobs=1)
    disk = load_split(tmp_path / "run", "test")
    np.testing.assert_array_equal(disk.videos, test.videos)
    np.testing.assert_array_equal(disk.radius, test.radius)
    assert disk.class_names == test.class_names and len(train.head(5)) == 5
    light = load_split(tmp_path / "run", "test", videos=False, max_samples=2)
    assert light.videos is None and light.image_size == 16 and light.n_frames == 6
    np.testing.assert_array_equal(light.pixels, test.pixels[:2])


def test_load_split_bad_input():
    with pytest.raises(TypeError, match=r"The 'source' parameter of load_split must be a run "
                                        r"dir"):
        load_split(42, "train")
    with pytest.raises(ValueError, match=r"The 'split' parameter of load_split must be one of "
                                         r"\{'train', 'val', 'test', None\}. Got 'dev'"):
        load_split("x", "dev")


def test_torch_threads_restores_the_setting():
    n = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == n


def test_seeded_restores_the_global_generator():
    before = _state()
    with seeded(3):
        a = torch.rand(3)
    assert torch.equal(_state(), before)
    with seeded(3):
        b = torch.rand(3)
    assert torch.equal(a, b)


# -------------------------------------------------------------- classify
def test_classifier_and_probes_are_deterministic_and_leave_the_rng_alone(tiny):
    _, train, test = tiny
    before = _state()
    a = C.train_classifier(train, test, n_steps=6, batch_size=8, width=8, progress=False)
    b = C.train_classifier(train, test, n_steps=6, batch_size=8, width=8, progress=False)
    assert torch.equal(_state(), before)
    assert a.losses == b.losses and a.accuracy == b.accuracy
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert a.confusion.sum() == len(test) and a.confusion.shape == (4, 4)
    assert a.accuracy == pytest.approx(np.trace(a.confusion) / len(test))
    c = C.train_classifier(train, test, n_steps=6, batch_size=8, width=8, seed=1,
                           progress=False)
    assert c.losses != a.losses
    p1 = C.run_probes(train, test, cnn_steps=4, mlp_steps=20, progress=False)
    p2 = C.run_probes(train, test, cnn_steps=4, mlp_steps=20, progress=False)
    assert list(p1) == ["frame 0", "brightness", "colour", "speed"]
    for k in p1:
        assert p1[k].losses == p2[k].losses and p1[k].accuracy == p2[k].accuracy


def test_classifier_learns_an_easy_two_class_problem():
    src = make_trajectories(120, classes=("linear", "circular"), n_frames=6, image_size=16,
                            seed=0, return_annotations=True)
    train, test = load_split(src, "train"), load_split(src, "train")
    r = C.train_classifier(train, test, n_steps=120, batch_size=16, width=8, progress=False)
    # accuracy on the training clips: the network can fit them (chance is 0.5)
    assert r.accuracy > 0.9 and r.losses[-1] < r.losses[0]


def test_probe_features():
    v = np.zeros((1, 3, 3, 4, 4), dtype=np.uint8)
    v[0, 0, :, 0, 0] = 255
    v[0, 2, 0, 1:3, 1:3] = 255                  # red 2x2 block in frame 2
    np.testing.assert_allclose(C.brightness_series(v).numpy(), [[1.0, 0.0, 4 / 3]])
    stats = C.colour_statistics(v).numpy()[0]
    np.testing.assert_allclose(stats[:3], [5 / 48, 1 / 48, 1 / 48])     # means per channel
    np.testing.assert_allclose(stats[9:], [1.0, 1.0, 1.0])              # maxima
    assert C.video_input(v).shape == (1, 9, 4, 4)
    # a 2x2 block moving 3 px right, then 4 px down (and a frame with no dot: no motion)
    m = np.zeros((2, 3, 3, 12, 12), dtype=np.uint8)
    m[0, 0, :, 2:4, 2:4] = m[0, 1, :, 2:4, 5:7] = m[0, 2, :, 6:8, 5:7] = 200
    m[1, 0, :, 2:4, 2:4] = m[1, 2, :, 2:4, 3:5] = 200
    np.testing.assert_allclose(C.speed_statistics(m).numpy(),
                               [[3.5, 0.5, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]], atol=1e-6)
    assert C.video_input(v, frames=[0]).shape == (1, 3, 4, 4)


def test_confusion_matrix():
    c = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 0], 3)
    np.testing.assert_array_equal(c, [[1, 1, 0], [0, 1, 0], [1, 0, 0]])


def test_classifier_rejects_mismatched_splits(tiny):
    _, train, _ = tiny
    other = load_split(make_trajectories(8, n_frames=4, image_size=16, return_annotations=True),
                       None)
    with pytest.raises(ValueError, match=r"The 'test' parameter of train_classifier must hold "
                                         r"clips of the train shape"):
        C.train_classifier(train, other, n_steps=1, progress=False)
    with pytest.raises(TypeError, match=r"The 'train' parameter of train_classifier must be a "
                                        r"Split"):
        C.train_classifier(train.videos, other, n_steps=1, progress=False)
    light = load_split(make_trajectories(8, n_frames=6, image_size=16, return_annotations=True),
                       None, videos=False)
    with pytest.raises(ValueError, match=r"The 'test' parameter of train_classifier must be a "
                                         r"Split with its clips"):
        C.train_classifier(train, light, n_steps=1, progress=False)


# -------------------------------------------------------------- forecast
def test_cut_never_overlaps():
    a = np.arange(2 * 6 * 2).reshape(2, 6, 2)
    ctx, fut = F.cut(a, 4)
    np.testing.assert_array_equal(ctx, a[:, :4])
    np.testing.assert_array_equal(fut, a[:, 4:])
    assert not np.shares_memory(ctx, a) and not np.shares_memory(fut, a)
    ctx, fut = F.cut(a, 2, 3)
    assert ctx.shape[1] == 2 and fut.shape[1] == 3 and fut[0, 0, 0] == a[0, 2, 0]
    with pytest.raises(ValueError, match=r"The 'n_future' parameter of cut must be an int in "
                                         r"the range \[1, 4\]. Got 5 instead."):
        F.cut(a, 2, 5)
    with pytest.raises(ValueError, match=r"The 'n_context' parameter of cut"):
        F.cut(a, 6)


def test_extrapolation_is_exact_on_its_own_model():
    t = np.arange(8, dtype=np.float64)
    lin = np.stack([2 + 1.5 * t, 3 - 0.5 * t], -1)[None]
    quad = np.stack([1 + 0.5 * t + 0.25 * t ** 2, 4 - t ** 2 / 8], -1)[None]
    for path, method in ((lin, "constant velocity"), (quad, "constant acceleration")):
        ctx, fut = F.cut(path, 4)
        np.testing.assert_allclose(F.extrapolate(ctx, 4, method), fut, atol=1e-12)
    ctx, fut = F.cut(lin, 4)
    hold = F.extrapolate(ctx, 4, "hold-last")
    np.testing.assert_allclose(F.position_errors(hold, fut)[0],
                               np.hypot(1.5, 0.5) * np.arange(1, 5))
    with pytest.raises(ValueError, match=r"The 'method' parameter of extrapolate must be one "
                                         r"of \{'hold-last', 'constant velocity'"):
        F.extrapolate(ctx, 4, "spline")
    with pytest.raises(ValueError, match=r"positions of at least 3 context frames"):
        F.extrapolate(ctx[:, :2], 4, "constant acceleration")


def test_position_model_is_deterministic_and_learns(tiny):
    _, train, test = tiny
    before = _state()
    a = F.train_position_model(train, 3, n_steps=300, hidden=32, lr=5e-3, progress=False)
    b = F.train_position_model(train, 3, n_steps=300, hidden=32, lr=5e-3, progress=False)
    assert torch.equal(_state(), before)
    assert a.losses == b.losses
    pa, pb = F.predict_positions(a, test), F.predict_positions(b, test)
    np.testing.assert_array_equal(pa, pb)
    assert pa.shape == (len(test), 3, 2)
    assert np.mean(a.losses[-10:]) < np.mean(a.losses[:10]) / 2


def test_frame_model_is_deterministic_and_scored_against_the_last_frame(tiny):
    _, train, test = tiny
    a = F.train_frame_model(train, 3, n_steps=3, batch_size=4, width=4, progress=False)
    b = F.train_frame_model(train, 3, n_steps=3, batch_size=4, width=4, progress=False)
    assert a.losses == b.losses
    ea, eb = F.evaluate_frames(a, test), F.evaluate_frames(b, test)
    assert torch.equal(ea["pred"], eb["pred"]) and ea["frames"] == eb["frames"]
    assert ea["pred"].shape == (len(test), 3, 3, 16, 16)
    # the trivial forecast is the last context frame: its dot is where the dot was at frame 2
    errs = ea["dot_trivial"]["errors"]
    true = np.sqrt(((test.pixels[:, 3:] - test.pixels[:, 2:3]) ** 2).sum(-1))
    np.testing.assert_allclose(errs, true, atol=0.15)



def test_render_discs_is_the_renderer_in_float():
    from trajlab.render import render

    videos, _, ann = make_trajectories(6, n_frames=4, image_size=16, seed=4,
                                       return_annotations=True)
    colors = torch.tensor([[1.0, 0.5, 0.25]] * 6)
    bg = torch.tensor([[0.0, 0.2, 0.4]] * 6)
    ours = F.render_discs(torch.as_tensor(ann["pixels"]), torch.as_tensor(ann["radius"]),
                          colors.double(), bg.double(), 16)
    ref = render(ann["pixels"], ann["radius"], np.array([[255, 128, 64]] * 6, np.uint8),
                 (0, 51, 102), 16)
    # the same coverage; the reference rounds to uint8 (and 128/255, 64/255 are not 0.5, 0.25)
    np.testing.assert_allclose(ours.numpy() * 255, ref, atol=1.0)


def test_keypoint_model_is_deterministic_and_draws_the_dot_at_its_keypoints(tiny):
    _, train, test = tiny
    before = _state()
    kw = dict(n_steps=60, batch_size=8, width=4, hidden=32, lr=5e-3, dynamics_steps=300,
              dynamics_batch=16, progress=False)
    a = F.train_keypoint_model(train, 3, **kw)
    b = F.train_keypoint_model(train, 3, **kw)
    assert torch.equal(_state(), before)
    assert a.losses == b.losses and a.dynamics_losses == b.dynamics_losses
    assert len(a.dynamics_losses) == 300 and a.steps == 60
    # it learns: the paths loss of the dynamics, then the end-to-end loss
    assert np.mean(a.dynamics_losses[-5:]) < np.mean(a.dynamics_losses[:5]) / 2
    assert np.mean(a.losses[-10:]) < np.mean(a.losses[:10])
    ea, eb = F.evaluate_frames(a, test), F.evaluate_frames(b, test)
    assert torch.equal(ea["pred"], eb["pred"]) and ea["pred"].shape == (len(test), 3, 3, 16, 16)
    # the predicted frames show a disc of the last measured radius at the future keypoints
    ctx, rad, col, bg, _ = F._keypoint_batch(test.videos, 3, 3)
    with torch.no_grad():
        _, future, _ = a.net(ctx, rad, col, bg)
    future = future.double().numpy()
    inside = ((future > 3) & (future < 13)).all(-1)
    err = np.sqrt(((ea["dot"]["centroids"] - future) ** 2).sum(-1))
    assert inside.any() and err[inside].max() < 0.3
    with pytest.raises(ValueError, match=r"The 'frame_targets' parameter of targets must be "
                                         r"names among \['k'\]"):
        F.targets({"errors": {"position MLP": np.zeros((2, 3))}}, {"k": ea},
                  max_mlp_px=1.0, min_within_2px=0.8, frame_targets=["U-Net"])
    with pytest.raises(ValueError, match=r"The 'batch_size' parameter of train_keypoint_model "
                                         r"must be"):
        F.train_keypoint_model(train, 3, batch_size=0)
    t = F.targets({"errors": {"position MLP": np.zeros((2, 3))}}, {"k": ea, "other": ea},
                  max_mlp_px=1.0, min_within_2px=0.0, frame_targets=["k"])
    assert [r["target"] for r in t.rows] == ["position MLP mean error", "k: dot within 2 px"]
    assert t.all_passed


# -------------------------------------------------------------- targets
def test_target_table():
    t = TargetTable("demo")
    assert t.add("accuracy", 0.995, ">=", 0.99)
    assert not t.add("error", 1.2, "<=", 1.0, " px")
    assert not t.add("missing", float("nan"), ">=", 0.5)
    text = str(t)
    assert "accuracy" in text and "FAIL" in text and "1/3 targets met" in text
    assert t.check(False) is t
    with pytest.raises(RuntimeError, match=re.escape("2 target(s) not met: ['error', 'missing']")):
        t.check(True)
    assert "<table>" in t._repr_html_()


# -------------------------------------------------------------- tokenize
@pytest.fixture(scope="module")
def tok_data():
    pytest.importorskip("magvit2_pytorch")
    src = make_trajectories(24, n_frames=5, image_size=16, seed=1, return_annotations=True)
    return load_split(src, "train"), load_split(src, "test")


TINY = dict(init_dim=8, codebook_size=16, layers=(("compress_space", 8), ("compress_time", 8)),
            n_steps=3, batch_size=4, progress=False)


@pytest.mark.parametrize("loss", ["mse", "weighted"])
def test_tokenizer_is_deterministic_and_evaluated(tok_data, loss):
    from trajlab.baselines import tokenize as K

    train, test = tok_data
    before = _state()
    a = K.train_tokenizer(train, loss=loss, **TINY)
    b = K.train_tokenizer(train, loss=loss, **TINY)
    assert torch.equal(_state(), before)
    assert a.losses == b.losses and a.recon_mse == b.recon_mse and a.steps == 3
    ea = K.evaluate_tokenizer(a.model, test, codebook_size=16)
    eb = K.evaluate_tokenizer(b.model, test, codebook_size=16)
    assert torch.equal(ea["codes"], eb["codes"]) and ea["frames"] == eb["frames"]
    assert ea["codes"].shape == (len(test), 3, 8, 8)       # 5 frames -> 3, 16^2 -> 8^2
    assert ea["recon"].shape == test.videos.shape
    assert 1 <= ea["codebook"]["used"] <= 16
    tr_codes, _ = K.encode(a.model, train.videos)
    r1 = K.classify_codes(a.model, tr_codes, train.labels, ea["codes"], test.labels,
                          n_classes=4, n_steps=3, progress=False)
    r2 = K.classify_codes(a.model, tr_codes, train.labels, ea["codes"], test.labels,
                          n_classes=4, n_steps=3, progress=False)
    assert r1.losses == r2.losses and r1.n_test == len(test)
    # the default probe trains on the codes of the train clips and of their mirror images
    m = K.code_classification(a, train, test, n_steps=2, progress=False,
                              test_codes=ea["codes"])
    assert m.n_train == 2 * len(train) and m.n_test == len(test)
    old = K.code_classification(a, train, test, n_steps=2, progress=False, mirror=False,
                                probe="3d")
    assert old.n_train == len(train)
    with pytest.raises(ValueError, match=r"The 'probe' parameter of classify_codes must be one "
                                         r"of \{'stacked', '3d'\}. Got 'mlp'"):
        K.classify_codes(a.model, tr_codes, train.labels, ea["codes"], test.labels,
                         n_classes=4, probe="mlp")


def test_stacked_code_probe_finds_a_class_written_where_a_code_appears():
    from trajlab.baselines import tokenize as K

    model = K.make_tokenizer(16, codebook_size=16, init_dim=8,
                             layers=(("compress_space", 8), ("compress_time", 8)))
    g = np.random.default_rng(0)
    codes = np.where(g.random((400, 3, 8, 8)) < 0.05, g.integers(0, 16, (400, 3, 8, 8)), 0)
    labels = np.arange(400) % 4
    # the class is where (row 2k of the middle time step) one rare code shows
    codes[np.arange(400), 1, 2 * labels, 3] = 9
    r = K.classify_codes(model, codes[:300], labels[:300], codes[300:], labels[300:],
                         n_classes=4, n_steps=150, progress=False)
    assert r.accuracy == 1.0
    shuffled = K.classify_codes(model, codes[:300], g.permutation(labels[:300]), codes[300:],
                                labels[300:], n_classes=4, n_steps=150, progress=False)
    assert shuffled.accuracy < 0.5            # nothing to learn from shuffled labels


def test_foreground_weights_mark_the_dot_and_its_rim():
    from trajlab.baselines.tokenize import foreground_weights

    v = torch.zeros(1, 3, 2, 8, 8)
    v[0, :, 1, 4, 4] = 1.0
    w = foreground_weights(v, 9.0)
    assert w.shape == (1, 1, 2, 8, 8)
    assert float(w[0, 0, 0].max()) == 1.0                    # frame without a dot
    np.testing.assert_array_equal(w[0, 0, 1, 3:6, 3:6].numpy(), 10.0)   # dot + 1 px rim
    assert float(w[0, 0, 1].sum()) == 64 + 9 * 9


def test_tokenizer_bad_parameters(tok_data):
    from trajlab.baselines import tokenize as K

    train, _ = tok_data
    with pytest.raises(ValueError, match=r"The 'loss' parameter of train_tokenizer must be one "
                                         r"of \{'mse', 'weighted'\}. Got 'l1' instead."):
        K.train_tokenizer(train, loss="l1")
    with pytest.raises(ValueError, match=r"The 'codebook_size' parameter of make_tokenizer must "
                                         r"be a power of 2"):
        K.make_tokenizer(16, codebook_size=100)
    even = Split(train.videos[:, :4], train.labels, train.pixels[:, :4], train.radius[:, :4],
                 train.indices, train.class_names, train.image_size)
    with pytest.raises(ValueError, match=r"The 'train' parameter of train_tokenizer must be a "
                                         r"Split of clips of 1 \+ k \* 2 frames .* Got '4 frames'"):
        K.train_tokenizer(even, **{**TINY, "n_steps": 1})


def test_measured_dots_match_the_stored_ground_truth():
    videos, _, ann = make_trajectories(12, n_frames=4, image_size=32, seed=5,
                                       return_annotations=True)
    pix, rad, colors, bg = F.measure_dots(videos)
    np.testing.assert_allclose(pix, ann["pixels"], atol=0.2)
    # the area of an anti-aliased disc is pi r^2 to within the rim's rounding
    np.testing.assert_allclose(rad, ann["radius"], rtol=0.1, atol=0.1)
    np.testing.assert_array_equal(colors, 255)          # white dots
    np.testing.assert_array_equal(bg, 0)                # on black


def test_render_forecast_puts_the_dot_where_the_position_model_says(tiny):
    _, train, test = tiny
    model = F.train_position_model(train, 3, n_steps=50, hidden=16, progress=False)
    a, b = F.render_forecast(model, test), F.render_forecast(model, test)
    assert torch.equal(a["pred"], b["pred"])
    assert a["measured_error"] < 0.2
    # the rendered dots sit at the model's forecast from the measured context
    pix, rad, _, _ = F.measure_dots(test.videos[:, :3])
    with torch.no_grad():
        rel = model.net(F._position_input(pix, rad, 16)).double().numpy()
    expected = pix[:, -1:] + rel * 16
    inside = ((expected > 2) & (expected < 14)).all(-1)
    err = np.sqrt(((a["dot"]["centroids"] - expected) ** 2).sum(-1))
    assert inside.any() and err[inside].max() < 0.3      # sub-pixel dots, uint8 rounding
    text = F.frame_report({"rendered": a})
    assert "rendered" in text and "copy last" in text and "dot within 2 px" in text


def test_time_cap_stops_before_the_budget_is_spent():
    import time

    from trajlab.baselines._common import train_loop

    hist = train_loop(lambda s: time.sleep(0.02) or 1.0, 1000, desc="x", progress=False,
                      max_seconds=0.2)
    assert hist["stopped_early"] and 3 <= hist["steps"] < 1000
    assert hist["seconds"] <= 0.2 + 0.02           # at most one step's jitter past the cap
    full = train_loop(lambda s: 0.5, 5, desc="x", progress=False, max_seconds=60)
    assert full["steps"] == 5 and not full["stopped_early"] and full["losses"] == [0.5] * 5
