"""trajlab.export: the earlier system's dict as .npz (no pickle, streamed) or .pt."""

from __future__ import annotations

import os
import re
import shutil
import tracemalloc

import numpy as np
import pytest
from _util import (FORMATS, array_file, damage_sample, default_sigint, layout_of, read_annotation_text,
                   small_run, write_annotation_text)

import trajlab
import trajlab.export as ex
from trajlab.cli import main as cli_main
from trajlab.export import ExportMemoryError, export
from trajlab.generator import SPLITS
from trajlab.storage import RunDirError

N, T, S, SHARD = 40, 8, 16, 8
KEYS = {"videos", "labels", "trajectory_3d", "equations", "descriptions", "class_names",
        "indices", "fingerprint"}


@pytest.fixture(scope="session", params=FORMATS, ids=lambda f: f"format{f}")
def run(tmp_path_factory, request):
    """A finished run dir (5 shards of 8) and the in-memory oracle; export
    reads both storage formats through the same code."""
    return small_run(tmp_path_factory, "export", seed=11, n=N, frames=T, size=S, shard=SHARD,
                     fmt=request.param)


def _expected(run, split=None):
    ann = run["ann"]
    idx = (np.arange(N) if split is None
           else np.flatnonzero(ann["splits"] == SPLITS.index(split)))
    return {
        "indices": idx,
        "videos": run["videos"][idx].astype(np.float32) / np.float32(255),
        "labels": run["labels"][idx],
        "trajectory_3d": ann["positions"][idx].astype(np.float32),
        "equations": [ann["records"][i]["equation"] for i in idx],
        "descriptions": [ann["records"][i]["description"] for i in idx],
        "class_names": list(run["spec"].classes),
    }


def _check(got, exp, fingerprint):
    """``got``: numpy arrays (npz) or tensors / lists (pt), converted by the caller."""
    assert got["videos"].dtype == np.float32 and got["videos"].shape == exp["videos"].shape
    np.testing.assert_array_equal(got["videos"], exp["videos"])
    assert 0.0 <= got["videos"].min() and got["videos"].max() <= 1.0
    assert got["labels"].dtype == np.int64
    np.testing.assert_array_equal(got["labels"], exp["labels"])
    assert got["trajectory_3d"].shape == (len(exp["indices"]), T, 3)
    np.testing.assert_array_equal(got["trajectory_3d"], exp["trajectory_3d"])
    np.testing.assert_array_equal(got["indices"], exp["indices"])
    for key in ("equations", "descriptions", "class_names"):
        assert list(got[key]) == exp[key]
    assert str(got["fingerprint"]) == fingerprint


# ---------------------------------------------------------------- npz
@pytest.mark.parametrize("split", [None, "val"])
def test_npz_round_trips_without_pickle(run, tmp_path, split):
    path = export(run["dir"], tmp_path / "data.npz", split=split)
    assert path == str(tmp_path / "data.npz")
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == KEYS
        got = {k: z[k] for k in z.files}
    for key in ("equations", "descriptions", "class_names", "fingerprint"):
        assert got[key].dtype.kind == "U"
    _check(got, _expected(run, split), run["spec"].fingerprint)
    assert os.listdir(tmp_path) == ["data.npz"]          # no temporary file left


def test_npz_equals_torch_dataset(run, tmp_path):
    torch = pytest.importorskip("torch")
    from trajlab.torchdata import TrajectoryVideoDataset

    ds = TrajectoryVideoDataset(run["dir"], split="train")
    with np.load(export(run["dir"], tmp_path / "t.npz", split="train")) as z:
        videos, labels = z["videos"], z["labels"]
    assert len(ds) == len(videos)
    for k in range(len(ds)):
        video, label = ds[k]
        assert torch.equal(video, torch.from_numpy(videos[k])) and label == labels[k]


def test_npz_is_streamed_with_bounded_memory(tmp_path, monkeypatch):
    """Peak memory stays near one chunk, far below the float32 videos; chunking
    does not change a byte of the file."""
    n = 400
    spec = trajlab.DatasetSpec(n_samples=n, n_frames=T, image_size=S, seed=5)
    trajlab.generate(spec, tmp_path / "run", n_jobs=1, shard_size=50, progress="none")
    whole = export(tmp_path / "run", tmp_path / "whole.npz")
    per_video = 4 * T * 3 * S * S
    monkeypatch.setattr(ex, "CHUNK_BYTES", 3 * per_video)     # 3 videos per step
    tracemalloc.start()
    try:
        chunked = export(tmp_path / "run", tmp_path / "chunked.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with open(whole, "rb") as a, open(chunked, "rb") as b:
        assert a.read() == b.read()
    with np.load(chunked, allow_pickle=False) as z:
        videos = z["videos"]
    assert videos.shape == (n, T, 3, S, S) and videos.nbytes == n * per_video
    # Strings and small arrays take ~2.5 KB per sample here; the videos 24 KB each.
    assert peak < n * per_video / 4, (peak, n * per_video)


def test_npz_is_reproducible(run, tmp_path):
    a = export(run["dir"], tmp_path / "a.npz")
    b = export(run["dir"], tmp_path / "b.npz")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


def test_npz_compressed(run, tmp_path):
    plain = export(run["dir"], tmp_path / "a.npz")
    packed = export(run["dir"], tmp_path / "b.npz", compress=True)
    assert os.path.getsize(packed) < os.path.getsize(plain) / 2
    with np.load(packed, allow_pickle=False) as z:
        _check({k: z[k] for k in z.files}, _expected(run), run["spec"].fingerprint)


def test_overwrites_atomically(run, tmp_path):
    out = tmp_path / "x.npz"
    out.write_bytes(b"old")
    export(run["dir"], out, split="test")
    with np.load(out) as z:
        assert len(z["labels"]) == len(_expected(run, "test")["labels"])


# ----------------------------------------------------------------- pt
@pytest.mark.parametrize("output,format", [("data.pt", None), ("data.pth", None),
                                           ("data.bin", "pt")])
def test_pt_loads_with_torch_and_equals(run, tmp_path, output, format):
    torch = pytest.importorskip("torch")
    path = export(run["dir"], tmp_path / output, format=format, split="train")
    obj = torch.load(path)                       # weights_only: no arbitrary pickle
    assert set(obj) == KEYS
    assert obj["videos"].dtype == torch.float32 and obj["labels"].dtype == torch.int64
    assert all(isinstance(s, str) for s in obj["equations"] + obj["descriptions"])
    got = {k: (x.numpy() if isinstance(x, torch.Tensor) else x) for k, x in obj.items()}
    _check(got, _expected(run, "train"), run["spec"].fingerprint)


def test_pt_refuses_more_than_available_memory(run, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(ex, "available_memory", lambda: 1000)
    out = tmp_path / "big.pt"
    with pytest.raises(ExportMemoryError, match=r"needs about .* GiB.*\.npz.*force=True"):
        export(run["dir"], out)
    assert not out.exists() and os.listdir(tmp_path) == []
    assert issubclass(ExportMemoryError, MemoryError) and issubclass(ExportMemoryError, ValueError)
    export(run["dir"], out, force=True)
    assert out.exists()


def test_available_memory_reads_memavailable_then_sysconf(monkeypatch):
    import io

    import trajlab.storage as storage

    assert ex.available_memory is storage.available_memory
    meminfo = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    2048 kB\n"
    monkeypatch.setattr(storage, "open", lambda *a, **k: io.StringIO(meminfo), raising=False)
    assert ex.available_memory() == 2048 * 1024          # MemAvailable, not MemFree/Total

    def no_proc(*a, **k):
        raise FileNotFoundError("/proc/meminfo")

    monkeypatch.setattr(storage, "open", no_proc, raising=False)
    pages = {"SC_AVPHYS_PAGES": 300, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(storage.os, "sysconf", pages.__getitem__)
    assert ex.available_memory() == 300 * 4096           # without /proc: sysconf

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(storage.os, "sysconf", no_sysconf)
    assert ex.available_memory() is None                 # unknown: no refusal


# ------------------------------------------------------------ cli
def test_cli_export(run, tmp_path, capsys):
    out = tmp_path / "cli.npz"
    assert cli_main(["export", run["dir"], str(out), "--split", "val"]) == 0
    assert f"Wrote {out}" in capsys.readouterr().out
    with np.load(out, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["indices"], _expected(run, "val")["indices"])
    assert cli_main(["export", run["dir"], str(tmp_path / "x.h5")]) == 2
    assert "The 'output' parameter of export" in capsys.readouterr().err


# ------------------------------------------------------- bad input
@pytest.mark.parametrize("output,kwargs,exc,match", [
    ("x.npz", {"format": "h5"}, ValueError,
     "The 'format' parameter of export must be one of {'npz', 'pt', None}. Got 'h5' instead."),
    ("x.h5", {}, ValueError,
     "The 'output' parameter of export must be a path ending in '.npz', '.pt' or '.pth'"),
    ("x", {}, ValueError, "The 'output' parameter of export must be a path ending in"),
    ("x.pt", {"format": "npz"}, ValueError,
     "The 'output' parameter of export must be a path whose extension matches "
     "format='npz'. Got"),
    ("x.npz", {"split": "training"}, ValueError,
     "The 'split' parameter of export must be one of {'train', 'val', 'test', None}. "
     "Got 'training' instead."),
    ("x.npz", {"force": 1}, TypeError, "The 'force' parameter of export must be a bool."),
    ("x.npz", {"compress": "yes"}, TypeError, "The 'compress' parameter of export"),
    ("missing/x.npz", {}, ValueError,
     "The 'output' parameter of export must be a path whose directory exists."),
])
def test_bad_arguments(run, tmp_path, output, kwargs, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        export(run["dir"], tmp_path / output, **kwargs)
    assert os.listdir(tmp_path) == []


def test_bad_output_type_and_directory(run, tmp_path):
    with pytest.raises(TypeError, match="The 'output' parameter of export must be a path"):
        export(run["dir"], 3)
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(ValueError, match="a file path"):
        export(run["dir"], tmp_path / "d.npz")


# ---------------------------------------------------------- damage
def test_missing_run_dir_raises_runtime_error(tmp_path):
    with pytest.raises(RuntimeError, match="does not exist"):
        export(tmp_path / "nope", tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def run_copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run["dir"], dst)
    return str(dst)


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_corrupted_videos_raise_and_write_nothing(run_copy, tmp_path, fmt):
    if fmt == "pt":
        pytest.importorskip("torch")
    damage_sample(run_copy, "videos", N - 1, byte=-1)          # last byte: last shard
    out = tmp_path / f"x.{fmt}"
    with pytest.raises(RunDirError, match=r"Shard 4 of .* checksum mismatch in "
                                          + re.escape(array_file(run_copy, "videos"))):
        export(run_copy, out)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["run"]


def test_corrupted_annotations_raise(run_copy, tmp_path):
    if layout_of(run_copy).annotations == "jsonl":
        text = read_annotation_text(run_copy, 1)
        text = text[:30] + ("X" if text[30] != "X" else "Y") + text[31:]   # valid UTF-8
        write_annotation_text(run_copy, 1, text)
        where = r"annotations file changed \(checksum mismatch\)"
    else:       # the parameters the annotations are made from
        damage_sample(run_copy, "params", 9, byte=1)
        where = r"checksum mismatch in data/params \(samples 8..15\)"
    with pytest.raises(RunDirError, match=r"Shard 1 of .* " + where):
        export(run_copy, tmp_path / "x.npz")


def test_incomplete_run_dir_raises(run_copy, tmp_path):
    os.remove(os.path.join(run_copy, "manifest.json"))
    with pytest.raises(RuntimeError, match="incomplete"):
        export(run_copy, tmp_path / "x.npz")


# ------------------------------------------------------- killed exports
_SLOW_EXPORT = """
import sys, time
import trajlab.export as ex
ex.CHUNK_BYTES = 8 * 3 * 16 * 16 * 4          # one video per chunk
real = ex._to_float
def slow(v):
    time.sleep(0.2)
    return real(v)
ex._to_float = slow
from trajlab.cli import main
sys.exit(main(["export", sys.argv[1], sys.argv[2]]))
"""


def _start_slow_export(run, out):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", _SLOW_EXPORT, run["dir"], str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)


def _wait_for_file(d, timeout=60):
    import time

    t0 = time.time()
    while not os.listdir(d):
        assert time.time() - t0 < timeout, "export never started writing"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_terminated_export_removes_its_temporary_file(run, tmp_path, sig):
    import signal

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _start_slow_export(run, out_dir / "x.npz")
    try:
        _wait_for_file(out_dir)
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode not in (0, None)
    assert "interrupted" in err and "Traceback" not in err
    assert os.listdir(out_dir) == []


def test_leftover_of_a_killed_export_is_removed_by_the_next_one(run, tmp_path):
    import signal

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "x.npz.tmp-backup").write_text("not ours")     # another program's file
    proc = _start_slow_export(run, out_dir / "x.npz")
    try:
        t0 = len(os.listdir(out_dir))
        import time
        while len(os.listdir(out_dir)) == t0:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    left = sorted(set(os.listdir(out_dir)) - {"x.npz.tmp-backup"})
    assert len(left) == 1                   # SIGKILL cannot be caught ...
    export(run["dir"], out_dir / "x.npz")   # ... the next export of that file cleans up
    assert sorted(os.listdir(out_dir)) == ["x.npz", "x.npz.tmp-backup"]
