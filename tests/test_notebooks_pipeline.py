"""The generate (02) and validate (03) notebooks, run the way users run them.

Fast tests read the notebooks (parameters, no ``def``/``class``, the stored
outputs of the checked cells) and exercise the small helpers they use. Slow
tests start kernels through :func:`trajlab.notebook_run.run_notebook` and
``python -m trajlab run``: 02 generates the same bytes as
:func:`trajlab.make_trajectories`, 03 passes on it and fails (exit status 1,
``run.json`` failed) on a corrupted copy, and a generation killed with
SIGKILL mid-run from the notebook resumes to the bytes of an uninterrupted
run.
"""

import ast
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from matplotlib.figure import Figure

import trajlab
from trajlab import DatasetSpec, generate, make_trajectories, open_dataset, plotting
from trajlab.checks import count_table
from trajlab.notebook_cli import cli_run
from trajlab.notebook_params import notebook_parameters
from _util import damage_sample
from trajlab.notebook_run import RUN_JSON, SUCCESS_FILE, run_notebook

REPO = Path(__file__).resolve().parents[1]
NB02 = REPO / "notebooks" / "02_generate_dataset.ipynb"
NB03 = REPO / "notebooks" / "03_validate_dataset.ipynb"
CHECKS = ("shapes and dtypes", "checksums", "class balance", "split stratification",
          "dot inside frame", "reprojection K(RX+t)", "pixel radius f·R/Z", "motion per class",
          "no duplicate videos", "rendered dot at stored pixels")


def _code_cells(path):
    return [c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]


def _cell_text(cell):
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                   for o in cell.get("outputs", []))


def _text_outputs(nb):
    return "".join(_cell_text(c) for c in nb.cells)


def _spec_from_defaults(params):
    """The DatasetSpec a notebook builds from its parameters."""
    fields = ("n_samples", "classes", "n_frames", "image_size", "style", "seed")
    return DatasetSpec(**{k: params[k] for k in fields if k in params})


# ---------------------------------------------------------------- notebooks as files (fast)
@pytest.mark.parametrize("path", [NB02, NB03], ids=["02", "03"])
def test_notebook_is_thin_with_one_typed_parameters_cell(path):
    cells = _code_cells(path)
    tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    params = notebook_parameters(path)
    assert params and all(p["help"] for p in params.values())
    assert all(p["type"] is not None for k, p in params.items() if k != "shard_size")
    # no control flow or definitions: tests/test_notebooks.py checks every notebook
    # source notebooks keep only the outputs nbval checks
    for cell in cells:
        if cell.outputs:
            assert cell.source.startswith("# NBVAL_CHECK_OUTPUT")
            assert cell.execution_count is not None


def test_defaults_are_ci_sized_and_03_generates_what_02_generates():
    p02, p03 = notebook_parameters(NB02), notebook_parameters(NB03)
    d02 = {k: v["default"] for k, v in p02.items()}
    d03 = {k: v["default"] for k, v in p03.items()}
    assert d02["n_samples"] <= 1000 and d02["image_size"] <= 32 and d02["n_frames"] <= 8
    assert d02["run_dir"] == d03["run_dir"] == "data/nb_generate"
    assert d02["shard_size"] == "auto" and d02["backend"] is None and d02["scheduler"] is None
    assert d03["generate_if_missing"] is True
    # a missing default run dir made by 03 must be the dataset 02 makes, or 02 would
    # later refuse it as a different spec; 03 takes it from trajlab, not from a copy
    assert "n_samples" not in d03 and "n_frames" not in d03 and "image_size" not in d03
    assert (DatasetSpec.preset(d03["spec_preset"], seed=d03["seed"])
            == _spec_from_defaults(d02))


def test_checked_outputs_of_02_and_03_match_the_default_dataset(tmp_path):
    """What nbval compares, recomputed in-process (a change of bytes shows here too)."""
    d02 = {k: v["default"] for k, v in notebook_parameters(NB02).items()}
    spec = _spec_from_defaults(d02)
    res = generate(spec, tmp_path / "run", n_jobs=1, progress="none")
    stored02 = [_cell_text(c) for c in _code_cells(NB02) if c.outputs]
    stored03 = [_cell_text(c) for c in _code_cells(NB03) if c.outputs]
    assert len(stored02) == 2 and len(stored03) == 2
    assert f"fingerprint: {spec.fingerprint}\n" in stored02[0]
    after = stored02[1]
    assert f"fingerprint: {spec.fingerprint}\n" in after
    assert f"manifest digest: {res.manifest['digest']}\n" in after
    assert f"videos: {(spec.n_samples, spec.n_frames, 3, spec.image_size, spec.image_size)}" \
        in after
    assert count_table(res.manifest) in after
    assert stored03[0] == (f"fingerprint: {spec.fingerprint}\n"
                           f"manifest digest: {res.manifest['digest']}\n"
                           f"{count_table(res.manifest)}\n")
    assert stored03[1] == "".join(f"PASS {name}\n" for name in CHECKS)


# ---------------------------------------------------------------- bad parameters (fast)
@pytest.mark.parametrize("params, exc, match", [
    ({"n_samples": "abc"}, TypeError,
     r"The 'n_samples' parameter of notebook 02_generate_dataset must be an int\. "
     r"Got 'abc' instead\."),
    ({"image_size": 4}, ValueError,
     r"The 'image_size' parameter of notebook 02_generate_dataset must be an int in the "
     r"range \[16, 1024\]\. Got 4 instead\."),
    ({"classes": ["linear", "spiral"]}, ValueError, r"'classes' parameter of notebook "
                                                      r"02_generate_dataset .*'spiral'"),
    ({"n_sample": 10}, ValueError, r"Unknown parameter 'n_sample'.*valid parameters are: "
                                   r"n_samples,"),
    ({"backend": 3}, TypeError, r"'backend' parameter .* must be a str or None\. Got 3"),
    ({"backend": "lokyy"}, ValueError, r"The 'backend' parameter of notebook "
                                       r"02_generate_dataset must be None or one of \{'dask'"),
    ({"n_jobs": 0}, ValueError, r"The 'n_jobs' parameter of notebook 02_generate_dataset "
                                r"must be a non-zero int"),
    ({"shard_size": 0}, ValueError, r"The 'shard_size' parameter of notebook "
                                    r"02_generate_dataset must be an int in the range \[1, 1048576\]"),
    ({"shard_size": 2**21}, ValueError, r"The 'shard_size' parameter of notebook "
                                        r"02_generate_dataset must be an int in the range "
                                        r"\[1, 1048576\] or 'auto'\. Got 2097152 instead\."),
    ({"scheduler": "tcp://127.0.0.1:1"}, ValueError,
     r"The 'scheduler' parameter of notebook 02_generate_dataset must be None unless "
     r"backend='dask'"),
])
def test_invalid_parameters_of_02_fail_before_execution(tmp_path, params, exc, match):
    runs = tmp_path / "runs"
    with pytest.raises(exc, match=match):
        run_notebook(NB02, {**params, "run_dir": str(tmp_path / "data")}, runs_dir=runs,
                     log_output=False)
    assert not runs.exists() and not (tmp_path / "data").exists()


def test_cli_rejects_invalid_parameter_of_02_with_exit_2(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = cli_run([str(NB02), "-p", "image_size", "4", "-p", "run_dir", str(tmp_path / "d"),
                    "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert code == 2 and not runs.exists()
    assert "trajlab run: error: The 'image_size' parameter of notebook 02_generate_dataset " \
           "must be an int in the range [16, 1024]. Got 4 instead." in err


# ---------------------------------------------------------------- helpers used by the notebooks
def test_count_table_lists_every_split_and_class_with_totals():
    m = {"class_names": ["linear", "circular"],
         "split_counts": {"train": {"linear": 8, "circular": 7}, "val": {"linear": 1,
                                                                         "circular": 2},
                          "test": {"linear": 1000, "circular": 0}}}
    rows = [r.split() for r in count_table(m).splitlines()]
    assert rows == [["split", "linear", "circular", "total"], ["train", "8", "7", "15"],
                    ["val", "1", "2", "3"], ["test", "1,000", "0", "1,000"],
                    ["total", "1,009", "9", "1,018"]]


def test_plot_paths_by_class_draws_one_panel_per_class_with_at_most_max_paths():
    spec = DatasetSpec(n_samples=24, classes=("linear", "circular", "helical"), n_frames=5,
                       image_size=16, seed=2)
    _v, labels, ann = make_trajectories(24, spec=spec, return_annotations=True)
    fig = plotting.plot_paths_by_class(ann["pixels"], labels, 16, class_names=spec.classes,
                                       max_per_class=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    for k, ax in enumerate(fig.axes):
        assert ax.get_title() == f"{spec.classes[k]}: 3 of 8"
        (paths,) = ax.collections[:1]
        segs = paths.get_segments()
        assert len(segs) == 3
        np.testing.assert_allclose(segs[0], ann["pixels"][np.flatnonzero(labels == k)[0]])
    with pytest.raises(ValueError, match="'labels' parameter of plot_paths_by_class"):
        plotting.plot_paths_by_class(ann["pixels"], labels[:3], 16)
    with pytest.raises(ValueError, match="'max_per_class' parameter"):
        plotting.plot_paths_by_class(ann["pixels"], labels, 16, max_per_class=0)


def test_plot_rejections_bars_are_rates_per_class():
    m = {"class_names": ["linear", "circular"], "class_counts": {"linear": 30, "circular": 10},
         "rejections": {"linear": 10, "circular": 0}}
    fig = plotting.plot_rejections(m)
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([25.0, 0.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["linear", "circular"]
    assert "10 of 40 draws" in [t.get_text() for t in ax.texts]
    with pytest.raises(ValueError, match="'manifest' parameter of plot_rejections"):
        plotting.plot_rejections({"class_names": ["linear"]})


# ---------------------------------------------------------------- kernels (slow)
# image_size >= 32: below, the 0.1 px centroid check of 03 fails on correct data
# (a dot of ~0.5 px radius quantised to uint8)
SMALL = {"n_samples": 60, "n_frames": 6, "image_size": 32, "seed": 3,
         "classes": ["linear", "circular", "helical", "parabolic"], "shard_size": 16,
         "n_jobs": 2, "n_per_class": 2}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Notebook 02 run once with small parameters (shared: the tests only read it)."""
    base = tmp_path_factory.mktemp("nb02")
    run_dir = base / "data" / "small"        # parent missing: the notebook creates it
    params = {**SMALL, "run_dir": str(run_dir)}
    res = run_notebook(NB02, params, runs_dir=base / "runs", log_output=False)
    return base, run_dir, params, res


@pytest.mark.slow
def test_02_generates_the_dataset_make_trajectories_makes(generated):
    base, run_dir, params, res = generated
    assert res.success, res.record["error"]
    rec = json.loads((res.run_dir / RUN_JSON).read_text())
    assert rec["status"] == "succeeded" and rec["exit_status"] == 0 and rec["success"] is True
    assert (res.run_dir / SUCCESS_FILE).exists()
    defaults = {k: v["default"] for k, v in notebook_parameters(NB02).items()}
    assert rec["parameters"] == {**defaults, **params} and rec["overrides"] == params

    spec = _spec_from_defaults(params)
    ds = open_dataset(run_dir, verify="full")
    assert ds.spec == spec and ds.layout.shard_size == 16
    assert rec["dataset_fingerprint"] == spec.fingerprint == ds.manifest["fingerprint"]
    assert rec["fingerprint_source"] == "run_dir/spec.json"

    videos, labels, ann = make_trajectories(spec.n_samples, spec=spec, return_annotations=True)
    expected = {"videos": videos, "labels": labels,
                **{k: v for k, v in ann.items() if isinstance(v, np.ndarray)}}
    assert set(expected) == set(ds.arrays)
    for name, arr in expected.items():
        assert ds.arrays[name].dtype == arr.dtype, name
        # (params: NaN where a class has no such parameter)
        assert np.array_equal(ds.arrays[name], arr, equal_nan=arr.dtype.kind == "f"), name
    assert json.loads(json.dumps(ann["records"])) == list(ds.annotations())

    nb = nbformat.read(str(res.output), as_version=4)
    text = _text_outputs(nb)
    # headless: plain-text progress lines, no widget; the summary and the checked cell
    assert "[trajlab] finished: 60 / 60 (100.0%)" in text
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for c in nb.cells for o in c.get("outputs", []))
    assert "Samples:      60 in 4 shards (4 generated now, 0 reused)" in text
    assert re.search(r"Time: +[\d.]+ s \([\d,]+ samples/s\)", text)
    assert f"fingerprint: {spec.fingerprint}\n" in text
    assert f"manifest digest: {ds.manifest['digest']}\n" in text
    assert count_table(ds.manifest) in text
    assert "PROGRESS.txt" in text
    assert sum("image/png" in o.get("data", {}) for c in nb.cells
               for o in c.get("outputs", [])) == 1          # the montage
    assert nb.metadata.trajlab.success is True


@pytest.mark.slow
def test_02_again_on_the_same_run_dir_is_a_no_op(generated, tmp_path):
    base, run_dir, params, _res = generated
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert len(before) > 20
    res = run_notebook(NB02, params, runs_dir=tmp_path / "runs", log_output=False)
    assert res.success
    text = _text_outputs(nbformat.read(str(res.output), as_version=4))
    assert "Status:       already complete - nothing to do" in text
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_03_passes_on_the_generated_dataset(generated, tmp_path):
    _base, run_dir, _params, _res = generated
    res = run_notebook(NB03, {"run_dir": str(run_dir), "generate_if_missing": False},
                       runs_dir=tmp_path / "runs", log_output=False)
    assert res.success, res.record["error"]
    rec = json.loads((res.run_dir / RUN_JSON).read_text())
    assert rec["status"] == "succeeded" and (res.run_dir / SUCCESS_FILE).exists()
    assert rec["dataset_fingerprint"] == open_dataset(run_dir).spec.fingerprint
    nb = nbformat.read(str(res.output), as_version=4)
    text = _text_outputs(nb)
    assert "".join(f"PASS {name}\n" for name in CHECKS) in text, text[-3000:]
    assert f"PASSED ({len(CHECKS)}/{len(CHECKS)} checks)" in text
    html = [o["data"]["text/html"] for c in nb.cells for o in c.get("outputs", [])
            if "text/html" in o.get("data", {})]
    assert any("<table>" in h and "PASSED" in h for h in html)
    # montage, paths per class, parameter histograms, rejections
    assert sum("image/png" in o.get("data", {}) for c in nb.cells
               for o in c.get("outputs", [])) == 4


@pytest.mark.slow
def test_03_fails_with_exit_1_on_a_corrupted_dataset(generated, tmp_path):
    _base, run_dir, _params, _res = generated
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    damage_sample(bad, "videos", 37, byte=1000)    # one byte of the pixels of sample 37
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "trajlab", "run", str(NB03), "-p", "run_dir", str(bad),
         "-p", "generate_if_missing", "False", "--runs-dir", str(runs), "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr
    (folder,) = [p for p in runs.iterdir() if p.is_dir()]
    rec = json.loads((folder / RUN_JSON).read_text())
    assert rec["status"] == "failed" and rec["success"] is False and rec["exit_status"] == 1
    assert not (folder / SUCCESS_FILE).exists()
    assert rec["error"]["ename"] == "AssertionError"
    assert "dataset validation failed: checksums" in rec["error"]["evalue"]
    text = _text_outputs(nbformat.read(str(folder / NB03.name), as_version=4))
    assert "FAIL checksums\n" in text and "PASS class balance\n" in text


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _data_digests(run_dir):
    """sha256 of every array and annotation file of a run dir."""
    run_dir = Path(run_dir)
    return {p.relative_to(run_dir).as_posix(): _sha256(p)
            for p in sorted(run_dir.rglob("*")) if p.suffix in (".npy", ".jsonl", ".zst")
            or p.name.startswith("c.")}


def _records(run_dir):
    d = Path(run_dir) / "shards"
    return sorted(p.name for p in d.glob("*.json")) if d.is_dir() else []


def _wait_for(cond, timeout, what):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _gone(pid):
    """The process has exited (a zombie not yet reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


@pytest.mark.slow
def test_generation_killed_mid_run_from_the_notebook_resumes_to_the_same_bytes(tmp_path):
    run_dir = tmp_path / "run"
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "trajlab", "run", str(NB02), "-p", "n_samples", "20000",
           "-p", "image_size", "16", "-p", "seed", "5", "-p", "run_dir", str(run_dir),
           "-p", "shard_size", "100", "-p", "n_jobs", "2", "--runs-dir", str(runs), "-q"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    kernel = None
    try:
        _wait_for(lambda: len(_records(run_dir)) >= 3 or proc.poll() is not None, 120,
                  "the first shard records")
        if proc.poll() is None:
            # the kernel runs in its own session (jupyter_client), with the loky workers
            # in its process group: kill that group like a dead machine, then the runner
            kernel = json.loads((run_dir / "progress.json").read_text())["pid"]
            group = os.getpgid(kernel)
            assert group not in (os.getpgrp(), proc.pid)
            os.killpg(group, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if kernel is not None:
        _wait_for(lambda: _gone(kernel), 30, "the killed kernel to disappear")
    assert not (run_dir / "manifest.json").exists(), "killed too late to test anything"
    kept = {r: (run_dir / "shards" / r).read_text() for r in _records(run_dir)}
    assert 3 <= len(kept) < 200
    (killed,) = [p for p in runs.iterdir() if p.is_dir()]
    assert json.loads((killed / RUN_JSON).read_text())["status"] == "running"
    assert not (killed / SUCCESS_FILE).exists()

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    (folder,) = [p for p in runs.iterdir() if p.is_dir() and p != killed]
    rec = json.loads((folder / RUN_JSON).read_text())
    spec = DatasetSpec(n_samples=20000, n_frames=8, image_size=16, seed=5)
    assert rec["success"] is True and rec["dataset_fingerprint"] == spec.fingerprint
    text = _text_outputs(nbformat.read(str(folder / NB02.name), as_version=4))
    m = re.search(r"Samples: +20,000 in 200 shards \((\d+) generated now, (\d+) reused\)", text)
    assert m and int(m[2]) >= len(kept) and int(m[1]) + int(m[2]) == 200, text[-2000:]
    for r, body in kept.items():               # recorded shards were kept as they were
        assert (run_dir / "shards" / r).read_text() == body

    reference = tmp_path / "reference"
    generate(spec, reference, n_jobs=1, shard_size=100, progress="none")
    got, want = _data_digests(run_dir), _data_digests(reference)
    assert len(want) == (12 + 1) * 200 and got == want   # every array and the annotations
    assert trajlab.verify_run(run_dir)["ok"]
