"""Generation engine: parallel equivalence, resume after SIGKILL, integrity,
bad input. The sequential in-memory generator is the oracle."""

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import joblib
import numpy as np
import pytest

import trajlab
from trajlab import DatasetSpec, RunDirError, generate, make_trajectories, open_dataset
from trajlab.engine import _finalize, find_bad_shards
from trajlab.storage import RunLayout, load_layout, write_json_atomic, write_shard

from _util import (FORMATS, alive, array_file, damage_sample, default_sigint, descendants,
                   layout_of, run_cli, snapshot, tree_digest)

SMALL = DatasetSpec(n_samples=150, n_frames=8, image_size=16, seed=7)


@pytest.fixture(scope="module", params=FORMATS, ids=lambda f: f"format{f}")
def fmt(request):
    """The storage format of the guarantee tests (each runs on both)."""
    return request.param


@pytest.fixture(scope="module")
def _reference_run(tmp_path_factory, fmt):
    rd = tmp_path_factory.mktemp(f"ref{fmt}") / "run"
    res = generate(SMALL, rd, n_jobs=1, shard_size=16, progress="none", format_version=fmt)
    return rd, res, tree_digest(rd)


@pytest.fixture()
def reference(_reference_run, fmt, monkeypatch):
    """A sequential (n_jobs=1) run of SMALL in format ``fmt``, which is also
    the format of every new run dir of the test."""
    monkeypatch.setattr(trajlab.storage, "FORMAT_VERSION", fmt)
    return _reference_run


def test_sequential_run_equals_in_memory_generator(reference):
    rd, res, _ = reference
    videos, labels, ann = make_trajectories(SMALL.n_samples, spec=SMALL, return_annotations=True)
    ds = open_dataset(rd, verify="full")
    np.testing.assert_array_equal(ds.videos, videos)
    np.testing.assert_array_equal(ds.labels, labels)
    for key in ("positions", "pixels", "depth", "radius", "K", "R", "t", "splits", "colors"):
        np.testing.assert_array_equal(getattr(ds, key), ann[key], err_msg=key)
    assert [ds.annotation(i) for i in (0, 17, 149)] == [ann["records"][i] for i in (0, 17, 149)]
    assert res.shards_total == 10 and res.shards_generated == 10
    files = [os.path.join(d, f) for d, _, fs in os.walk(rd) for f in fs
             if f.endswith((".npy", ".jsonl.zst")) or f.startswith("c.")]
    on_disk = sum(os.path.getsize(f) for f in files)
    line = next(x for x in res.summary().splitlines() if x.startswith("On disk:"))
    assert f"{on_disk / 1e6:,.1f} MB" in line
    if ds.layout.format_version == 2:
        assert res.manifest["stored_bytes"]["total"] == on_disk
        assert f"{res.manifest['compression_ratio']}x smaller" in line
    assert res.manifest["class_counts"] == {c: int((labels == k).sum())
                                            for k, c in enumerate(SMALL.classes)}


@pytest.mark.parametrize("backend,n_jobs", [("loky", 2), ("threading", 3), ("sequential", 1)])
def test_bytes_do_not_depend_on_backend_or_workers(tmp_path, reference, backend, n_jobs):
    with joblib.parallel_config(backend=backend):
        generate(SMALL, tmp_path / "run", n_jobs=n_jobs, shard_size=16, progress="none")
    assert tree_digest(tmp_path / "run") == reference[2]


def test_bytes_do_not_depend_on_completion_order(tmp_path, reference):
    """Write the shards in a shuffled order, then let generate finalize."""
    rd = str(tmp_path / "run")
    layout = RunLayout(SMALL, 16, reference[1].manifest["format_version"])
    os.makedirs(rd)
    write_json_atomic(os.path.join(rd, "spec.json"), layout.spec_document(trajlab.__version__))
    layout.preallocate(rd)
    order = list(range(layout.n_shards))
    random.Random(3).shuffle(order)
    for s in order:
        write_json_atomic(layout.shard_record_path(rd, s), write_shard(rd, layout, s))
    res = generate(SMALL, rd, progress="none")
    assert res.shards_generated == 0 and res.shards_reused == layout.n_shards
    assert tree_digest(rd) == reference[2]


def test_shard_size_does_not_change_bytes(tmp_path, reference):
    generate(SMALL, tmp_path / "run", n_jobs=1, shard_size=37, progress="none")
    a, b = tree_digest(tmp_path / "run"), reference[2]
    ds, ref = open_dataset(tmp_path / "run", verify="full"), open_dataset(reference[0])
    for name in ref.arrays:
        np.testing.assert_array_equal(np.asarray(ds.arrays[name]), np.asarray(ref.arrays[name]))
    if ref.layout.format_version == 1:
        assert {k: v for k, v in a.items() if k.endswith(".npy")} == \
            {k: v for k, v in b.items() if k.endswith(".npy")}


def test_prefix_dataset_equals_first_samples(tmp_path, reference):
    spec = SMALL.replace(n_samples=61)
    generate(spec, tmp_path / "run", n_jobs=2, shard_size=16, progress="none")
    small, full = open_dataset(tmp_path / "run"), open_dataset(reference[0])
    for key in ("videos", "labels", "splits", "positions", "pixels", "K"):
        np.testing.assert_array_equal(getattr(small, key), getattr(full, key)[:61])


def test_finished_run_is_a_noop(reference):
    rd = reference[0]
    before = snapshot(rd)
    res = generate(SMALL, rd, n_jobs=2, progress="none")
    assert res.already_complete and res.shards_generated == 0
    assert "already complete" in res.summary()
    assert snapshot(rd) == before


# ----------------------------------------------------------- kill + resume
def _spawn(rd, n, shard, extra=(), fmt=None):
    env = dict(os.environ, TRAJLAB_PROGRESS="none")
    extra = (*extra, "--format-version", str(fmt or trajlab.storage.FORMAT_VERSION))
    return subprocess.Popen(
        [sys.executable, "-m", "trajlab", "generate", str(rd), "-n", str(n), "--n-frames", "8",
         "--image-size", "32", "--seed", "11", "--shard-size", str(shard), "-j", "2", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=default_sigint)


def _records(rd):
    d = os.path.join(rd, "shards")
    return sorted(f for f in os.listdir(d) if f.endswith(".json")) if os.path.isdir(d) else []


def _wait_for(cond, timeout=120):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)


KILL_SPEC = DatasetSpec(n_samples=6000, n_frames=8, image_size=32, seed=11)


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory, fmt):
    rd = tmp_path_factory.mktemp(f"killref{fmt}") / "run"
    generate(KILL_SPEC, rd, n_jobs=2, shard_size=50, progress="none", format_version=fmt)
    return tree_digest(rd)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [0, 5, 40, 80])
def test_sigkill_then_resume_is_byte_identical(tmp_path, kill_reference, kill_after, fmt):
    """kill -9 the whole process group after ``kill_after`` shard records
    (0: as soon as spec.json exists), then resume with the same command."""
    rd = tmp_path / "run"
    proc = _spawn(rd, KILL_SPEC.n_samples, 50, fmt=fmt)
    try:
        if kill_after == 0:
            _wait_for(lambda: os.path.exists(rd / "spec.json"))
        else:
            _wait_for(lambda: len(_records(rd)) >= kill_after or proc.poll() is not None)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not os.path.exists(rd / "manifest.json"), "killed too late to test anything"
    kept = {r: open(rd / "shards" / r).read() for r in _records(rd)}
    # shards whose bytes were (being) written but not recorded: at most those
    # in flight (joblib dispatches 2 * n_jobs ahead, plus the n_jobs running)
    if layout_of(rd).annotations == "jsonl":
        ann = {f.split(".")[0] for f in os.listdir(rd / "annotations")} if kill_after else set()
    else:   # the last object a worker writes for a shard: its parameter matrix
        ann = {f"{int(f.split('.')[1]):05d}" for f in os.listdir(rd / "data" / "params")
               if f.startswith("c.")} if kill_after else set()
    in_flight = ann - {r.split(".")[0] for r in kept}
    assert len(in_flight) <= 3 * 2
    # the killed run is reported as stalled (its pid is gone)
    st = json.loads(run_cli("status", rd, "--json").stdout)
    assert st["verdict"] == ("stalled" if os.path.exists(rd / "progress.json") else "missing")
    if kill_after:
        assert st["verdict"] == "stalled"
    res = generate(KILL_SPEC, rd, n_jobs=2, progress="none")
    # only shards without a record were redone; recorded ones were kept as is
    assert res.shards_reused == len(kept)
    assert res.shards_generated == 120 - len(kept)
    for r, text in kept.items():
        assert open(rd / "shards" / r).read() == text
    assert tree_digest(rd) == kill_reference
    assert run_cli("verify", rd).returncode == 0


# --------------------------------------------------------------- integrity
@pytest.fixture()
def fresh_run(tmp_path, reference, fmt):
    rd = tmp_path / "run"
    generate(SMALL, rd, n_jobs=1, shard_size=16, progress="none", format_version=fmt)
    return rd


def test_flipped_byte_is_caught_by_verify_loading_and_repaired(fresh_run, reference):
    rd = fresh_run
    _, layout = load_layout(rd)
    damage_sample(rd, "videos", 5)                     # shard 0: one decoded byte differs
    bad = find_bad_shards(str(rd), layout)
    assert [(s, what) for s, what, _ in bad] == [(0, "videos")]
    proc = run_cli("verify", rd)
    assert proc.returncode == 1 and "first bad shard 0" in proc.stdout
    ds = open_dataset(rd)                      # O(1) open does not read data ...
    ds.sample(40)                              # ... shard 2 is fine
    with pytest.raises(RunDirError, match=f"Shard 0 of .* checksum mismatch in "
                                          f"{array_file(rd, 'videos')}"):
        ds.sample(5)
    with pytest.raises(RunDirError, match="checksum mismatch"):
        open_dataset(rd, verify="full")
    # repair: drop bad records, resume regenerates exactly that shard
    assert run_cli("verify", rd, "--repair").returncode == 1
    res = generate(SMALL, rd, progress="none")
    assert res.shards_generated == 1
    assert tree_digest(rd) == reference[2]
    assert run_cli("verify", rd).returncode == 0


def test_truncated_file_is_caught_and_resume_regenerates(fresh_run, reference, fmt):
    rd = fresh_run
    damage_sample(rd, "pixels", 149, how="truncate")
    if fmt == 1:       # the file's size is checked at open
        with pytest.raises(RunDirError, match="truncated"):
            open_dataset(rd)
    else:              # each object is checked when its shard is first read (O(1) open)
        ds = open_dataset(rd)
        ds.sample(0)
        with pytest.raises(RunDirError, match=r"Shard 9 .*data/pixels/c\.9\.0\.0 does not "
                                              r"decode"):
            ds.sample(149)
    rep = trajlab.verify_run(str(rd))
    assert not rep["ok"] and any(("truncated" if fmt == 1 else "does not decode") in r
                                 for _, _, r in rep["bad"])
    res = generate(SMALL, rd, progress="none")
    assert 1 <= res.shards_generated <= 2      # only the shard(s) whose bytes were cut
    assert tree_digest(rd) == reference[2]


def test_verify_option_regenerates_corrupted_shards_on_resume(fresh_run, reference, fmt):
    rd = fresh_run
    damage_sample(rd, "videos", 148, how="raw", byte=-3)   # same size: only decoding tells
    res = generate(SMALL, rd, progress="none")        # complete: no-op without verify
    assert res.already_complete
    res = generate(SMALL, rd, progress="none", verify=True)
    assert res.shards_generated == 1
    assert res.repaired[0].startswith("shard 9: checksum mismatch in videos.npy" if fmt == 1 else
                                      "shard 9: data/videos/c.9.0.0.0.0, clip 148 does not decode")
    assert "manifest.json: rebuilt" in res.repaired
    assert tree_digest(rd) == reference[2]


def test_damaged_labels_are_regenerated_even_without_verify(fresh_run, reference, fmt):
    """labels and splits feed the manifest's counts: they are checked on
    every resume (9 bytes a sample), not only with verify=True."""
    rd = fresh_run
    damage_sample(rd, "labels", 149, how="raw", byte=5)    # same size
    res = generate(SMALL, rd, progress="none")
    assert not res.already_complete and res.shards_generated == 1
    if fmt == 1:
        assert res.repaired[0] == ("shard 9: checksum mismatch in labels.npy (samples "
                                   "144..149); regenerated")
    else:      # the chunk's crc32c (zarr's crc32c codec after zstd) fails
        assert res.repaired[0] == ("shard 9: data/labels/c.9 does not decode (its crc32c does "
                                   "not match); regenerated"), res.repaired[0]
    assert tree_digest(rd) == reference[2]


def test_incomplete_dataset_is_refused(tmp_path):
    rd = tmp_path / "run"
    layout = RunLayout(SMALL, 16)
    os.makedirs(rd)
    write_json_atomic(os.path.join(rd, "spec.json"), layout.spec_document(trajlab.__version__))
    layout.preallocate(str(rd))
    write_json_atomic(layout.shard_record_path(str(rd), 0), write_shard(str(rd), layout, 0))
    with pytest.raises(RunDirError, match=r"incomplete \(1 of 10 shards done"):
        open_dataset(rd)
    with pytest.raises(RunDirError, match="no manifest|shard 1 has no completion record"):
        _finalize(str(rd), layout, json.load(open(rd / "spec.json")))


# --------------------------------------------------------------- bad input
def test_spec_mismatch_names_keys_and_leaves_run_dir_unchanged(fresh_run):
    before = snapshot(fresh_run)
    other = SMALL.replace(seed=8, image_size=32)
    with pytest.raises(ValueError, match="differing spec keys: image_size, seed"):
        generate(other, fresh_run, progress="none")
    with pytest.raises(ValueError, match="shard_size=16; got shard_size=20"):
        generate(SMALL, fresh_run, shard_size=20, progress="none")
    assert snapshot(fresh_run) == before


def test_second_writer_is_refused(tmp_path):
    rd = tmp_path / "run"
    generate(SMALL.replace(n_samples=20), rd, n_jobs=1, progress="none")
    os.remove(rd / "manifest.json")       # make it look resumable
    before = snapshot(rd)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from trajlab.storage import RunLock; "
        f"l = RunLock({str(rd)!r}).acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(rd)
        with pytest.raises(RunDirError, match="being written by another process.*pid"):
            generate(SMALL.replace(n_samples=20), rd, n_jobs=1, progress="none")
        assert snapshot(rd) == before
    finally:
        holder.kill()
        holder.wait()
    # the dead owner's lock is taken over
    res = generate(SMALL.replace(n_samples=20), rd, n_jobs=1, progress="none")
    assert not res.already_complete and os.path.exists(rd / "manifest.json")


def test_missing_parent_and_unwritable_directory(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="'run_dir' parameter of generate must be a path whose "
                                         "parent directory exists"):
        generate(SMALL, tmp_path / "nope" / "run", progress="none")
    assert not (tmp_path / "nope").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="not an existing file"):
        generate(SMALL, tmp_path / "afile", progress="none")
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(ro) else real_access(p, m))
    with pytest.raises(PermissionError, match="writable directory"):
        generate(SMALL, ro / "run", progress="none")
    assert list(ro.iterdir()) == []


def test_foreign_directory_is_not_touched(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("important")
    with pytest.raises(ValueError, match="holds \\['thesis.tex'\\] and no spec.json"):
        generate(SMALL, d, progress="none")
    assert sorted(os.listdir(d)) == ["thesis.tex"]


@pytest.mark.parametrize("kwargs,match", [
    ({"n_jobs": 0}, "'n_jobs' parameter of generate must be a non-zero int"),
    ({"n_jobs": 1.5}, "'n_jobs' parameter of generate must be an int"),
    ({"shard_size": 0}, r"'shard_size' parameter of generate must be an int in the range \[1, 1048576\]"),
    ({"progress": "loud"}, "'progress' parameter of generate must be one of"),
    ({"backend": 3}, "'backend' parameter of generate"),
    ({"scheduler": "tcp://x:1"}, "'scheduler' parameter of generate must be None unless"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        generate(SMALL, tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs,match", [
    ({"backend": "nosuch"}, "'backend' parameter of generate must be None or one of {'dask', 'loky'"),
    # joblib has it, but it cannot hand results over as they complete
    ({"backend": "multiprocessing"}, r"must be None or one of \{'dask', 'loky', 'sequential', "
                                     r"'threading'\}\. Got 'multiprocessing' instead"),
    ({"spec": SMALL.replace(object_radius=1.5)}, "The spec cannot be generated"),
])
def test_unusable_backend_or_impossible_spec_leave_no_run_dir(tmp_path, kwargs, match):
    spec = kwargs.pop("spec", SMALL)
    with pytest.raises(ValueError, match=match):
        generate(spec, tmp_path / "run", progress="none", **kwargs)
    assert not (tmp_path / "run").exists()


def test_auto_shard_size_targets_96_mib_and_shrinks_when_memory_is_short(tmp_path, monkeypatch):
    from trajlab import engine

    big = DatasetSpec(n_samples=100, n_frames=16, image_size=64)
    small = DatasetSpec(n_samples=100, n_frames=8, image_size=32)
    monkeypatch.setattr(engine, "available_memory", lambda: 64 * 2**30)
    assert engine.auto_shard_size(big, 2) == 512 and engine.auto_shard_size(small, 2) == 4096
    # 64 workers in 4 GiB: each gets at most 32 MiB of working memory
    monkeypatch.setattr(engine, "available_memory", lambda: 4 * 2**30)
    per = engine._sample_memory(big)
    size = engine.auto_shard_size(big, 64)
    assert size == 2 * 2**30 // (64 * per) < 512
    assert engine.auto_shard_size(big, 10**6) == 16              # never below 16
    # generate picks it for a new run dir and records it
    monkeypatch.setattr(engine, "available_memory", lambda: 2 * 40 * engine._sample_memory(SMALL))
    res = generate(SMALL, tmp_path / "run", n_jobs=1, progress="none")
    assert res.manifest["shard_size"] == 40 and res.shards_total == 4
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["layout"]["shard_size"] == 40


def test_not_enough_disk_space_fails_before_any_work(tmp_path, monkeypatch):
    class Tiny:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(os, "statvfs", lambda p: Tiny())
    with pytest.raises(OSError, match="Not enough disk space .* needs"):
        generate(SMALL, tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()




def test_repair_then_status_says_incomplete(fresh_run):
    damage_sample(fresh_run, "videos", 149, how="raw")
    rep = trajlab.engine.repair(str(fresh_run))
    assert [s for s, *_ in rep["bad"]] == [9] and rep["dropped"] == [9]
    assert rep["rebuilt"] == ["shard 9: record dropped (bytes or record damaged)",
                              "manifest.json: removed (1 shard(s) to regenerate)"]
    assert not rep["complete"]
    assert not (fresh_run / "manifest.json").exists()
    st = json.loads(run_cli("status", fresh_run, "--json").stdout)
    assert st["verdict"] == "incomplete"


def test_spec_type_checked(tmp_path):
    with pytest.raises(TypeError, match="'spec' parameter of generate must be a trajlab.DatasetSpec"):
        generate({"n_samples": 3}, tmp_path / "run")


# ---------------------------------------------------------------- progress
def test_progress_files_while_running_and_after(tmp_path):
    rd = tmp_path / "run"
    env = dict(os.environ, TRAJLAB_PROGRESS="none")
    code = ("import trajlab, time\n"
            "import trajlab.storage as s\n"
            "orig = s.write_shard\n"
            "def slow(*a, **k):\n    time.sleep(0.3)\n    return orig(*a, **k)\n"
            "import trajlab.engine as e\n"
            "e.write_shard = slow\n"
            f"trajlab.generate(trajlab.DatasetSpec(n_samples=200, n_frames=8, image_size=16), {str(rd)!r},"
            " n_jobs=1, shard_size=10, heartbeat=0.2, progress='none')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    seen = []
    try:
        _wait_for(lambda: os.path.exists(rd / "progress.json"), timeout=60)
        while proc.poll() is None and len(seen) < 200:
            try:
                seen.append(json.load(open(rd / "progress.json")))
            except ValueError:
                pytest.fail("progress.json must be written atomically")
            time.sleep(0.05)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0
    running = [s for s in seen if s["state"] == "running"]
    assert len({s["updated_unix"] for s in running}) >= 3      # refreshed while running
    assert any(0 < s["done"] < 200 for s in running)
    dones = [s["done"] for s in seen]
    assert dones == sorted(dones)                              # monotone
    final = json.load(open(rd / "progress.json"))
    assert final["state"] == "finished" and final["done"] == final["total"] == 200
    text = open(rd / "PROGRESS.txt").read()
    assert "Completed:   200 / 200 (100.0%)" in text and "Rate:" in text and "ETA:" in text
    st = json.loads(run_cli("status", rd, "--json").stdout)
    assert st["verdict"] == "finished"


def test_failure_is_recorded_in_progress(tmp_path, monkeypatch):
    import trajlab.engine as eng

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(eng, "write_shard", boom)
    with pytest.raises(OSError, match="disk full"):
        generate(SMALL, tmp_path / "run", n_jobs=1, progress="none")
    st = json.load(open(tmp_path / "run" / "progress.json"))
    assert st["state"] == "failed" and "disk full" in st["message"]
    assert run_cli("status", tmp_path / "run").returncode == 1




def test_fsync_mode_syncs_data_records_and_renames(tmp_path, reference, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                  real(fd)))
    generate(SMALL, tmp_path / "run", n_jobs=1, shard_size=16, progress="none", fsync=True)
    assert tree_digest(tmp_path / "run") == reference[2]
    names = [os.path.relpath(p, tmp_path / "run") for p in synced]
    if reference[1].manifest["format_version"] == 1:
        assert sum(n == "videos.npy" for n in names) == 10             # every shard's bytes
    else:                  # every shard's object, written whole, then its rename
        assert sum(n.startswith("data/videos/.c.") and ".trajlab-tmp." in n
                   for n in names) == 10
        assert sum(n == "data/videos" for n in names) == 10
    assert sum(n.startswith("shards/.") and ".trajlab-tmp." in n for n in names) == 10  # records
    assert sum(n == "shards" for n in names) == 10                     # ... and their renames
    assert any(n.startswith(".manifest.json.trajlab-tmp.") for n in names)


def test_resume_refused_where_numerics_differ(fresh_run):
    """spec.json records a probe of the first samples' bytes; a process that
    computes another probe (other numpy/libm) must not add to the run."""
    doc = json.load(open(fresh_run / "spec.json"))
    assert doc["probe_sha256"] == trajlab.generator.probe_digest(SMALL)
    os.remove(fresh_run / "manifest.json")
    doc["probe_sha256"] = "0" * 64        # as if written by a machine computing other bytes
    write_json_atomic(fresh_run / "spec.json", doc)
    before = snapshot(fresh_run)
    with pytest.raises(RunDirError, match="This machine generates different bytes"):
        generate(SMALL, fresh_run, progress="none")
    assert snapshot(fresh_run) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_end_the_run_as_interrupted_and_resume(tmp_path, kill_reference, sig, fmt):
    rd = tmp_path / "run"
    proc = _spawn(rd, KILL_SPEC.n_samples, 50, fmt=fmt)
    try:
        _wait_for(lambda: len(_records(rd)) >= 3 or proc.poll() is not None)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    st = json.load(open(rd / "progress.json"))
    assert st["state"] == "interrupted"
    assert f"interrupted by {'the user' if sig == signal.SIGINT else sig.name}" in st["message"]
    assert "re-run the same command to resume" in st["message"]
    assert json.loads(run_cli("status", rd, "--json").stdout)["verdict"] == "interrupted"
    generate(KILL_SPEC, rd, n_jobs=2, progress="none")
    assert tree_digest(rd) == kill_reference


# ------------------------------------------- writes never follow symlinks
def test_resized_object_is_regenerated_by_a_plain_resume(fresh_run, reference, fmt):
    """Format 2: a resume compares every object's size with its record (as
    format 1 checks its files' sizes), so an object that was rewritten,
    cut or extended is regenerated without verify=True."""
    if fmt == 1:
        pytest.skip("format 1 checks file sizes (test_truncated_file_...)")
    damage_sample(fresh_run, "videos", 40)           # re-encoded: decodes, other size
    res = generate(SMALL, fresh_run, progress="none")
    assert res.shards_generated == 1 and res.repaired[0].startswith(
        "shard 2: data/videos/c.2.0.0.0.0 has ")
    assert tree_digest(fresh_run) == reference[2]


def test_resume_never_writes_through_a_symlinked_array(fresh_run, tmp_path, fmt):
    """labels.npy replaced by a link to a file outside the run dir, one record
    gone: resuming would write shard 3's labels into that file. Format 2:
    the labels folder, or one shard object, replaced by a link."""
    rd = fresh_run
    if fmt == 2:
        import shutil

        outside = tmp_path / "someone-elses"
        shutil.copytree(rd / "data" / "labels", outside)
        shutil.rmtree(rd / "data" / "labels")
        os.symlink(outside, rd / "data" / "labels")
        os.remove(rd / "shards" / "00003.json")
        os.remove(rd / "manifest.json")
        before = snapshot(outside)
        for verify in (False, True):
            with pytest.raises(RunDirError, match=r"symbolic link.*data/labels"):
                generate(SMALL, rd, progress="none", verify=verify)
            assert snapshot(outside) == before
        os.remove(rd / "data" / "labels")
        shutil.copytree(outside, rd / "data" / "labels")
        obj = rd / "data" / "labels" / "c.3"
        os.remove(obj)
        os.symlink(outside / "c.3", obj)
        with pytest.raises(RunDirError, match=r"symbolic link.*data/labels/c\.3"):
            generate(SMALL, rd, progress="none")
        assert snapshot(outside) == before
        return
    _, layout = load_layout(rd)
    fname, shape, dt, hlen, per = layout.arrays()["labels"]
    a, b = layout.shard_range(3)
    data = bytearray((rd / fname).read_bytes())
    data[hlen + a * per:hlen + b * per] = b"\xaa" * ((b - a) * per)
    outside = tmp_path / "someone-elses.npy"
    outside.write_bytes(bytes(data))
    before = outside.read_bytes()
    os.remove(rd / fname)
    os.symlink(outside, rd / fname)
    os.remove(rd / "shards" / "00003.json")
    os.remove(rd / "manifest.json")
    with pytest.raises(RunDirError, match=r"symbolic link.*labels\.npy"):
        generate(SMALL, rd, progress="none")
    assert outside.read_bytes() == before
    with pytest.raises(RunDirError, match=r"symbolic link.*labels\.npy"):
        generate(SMALL, rd, progress="none", verify=True)
    assert outside.read_bytes() == before


@pytest.mark.parametrize("action", ["generate", "repair", "cli verify --repair"])
def test_symlinked_lock_target_is_never_touched(fresh_run, tmp_path, action):
    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch\n")
    os.remove(fresh_run / ".lock")
    os.symlink(precious, fresh_run / ".lock")
    os.remove(fresh_run / "shards" / "00002.json")     # so that there is work to do
    if action == "cli verify --repair":
        proc = run_cli("verify", fresh_run, "--repair")
        assert proc.returncode == 1 and "symbolic link" in proc.stdout + proc.stderr
    else:
        with pytest.raises(RunDirError, match="symbolic link"):
            if action == "generate":
                generate(SMALL, fresh_run, progress="none")
            else:
                trajlab.engine.repair(str(fresh_run))
    assert precious.read_text() == "do not touch\n"


@pytest.mark.parametrize("name", ["manifest.json", ".lock", "PROGRESS.txt", "shards/00002.json",
                                  "object"])
@pytest.mark.parametrize("action", ["generate", "repair", "open_dataset"])
def test_a_folder_in_a_file_s_place_is_refused_before_any_work(fresh_run, fmt, name, action):
    """A folder where trajlab keeps a file (nothing could replace it, and
    trajlab does not remove a folder it did not make) is refused up front,
    naming it, with the folder and every other file untouched."""
    import shutil

    if name == "object":
        if fmt == 1:
            pytest.skip("format 1 keeps no per-shard objects")
        name = "data/labels/" + sorted(f for f in os.listdir(fresh_run / "data" / "labels")
                                       if f.startswith("c."))[2]
    target = fresh_run / name
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        os.remove(target)
    (target / "inner").mkdir(parents=True)
    (target / "inner" / "keep.txt").write_text("not trajlab's\n")
    before = tree_digest(fresh_run, include_json=True)
    with pytest.raises(RunDirError, match=f"folders where trajlab keeps its own files: "
                                          f"{re.escape(name)}"):
        if action == "generate":
            generate(SMALL, fresh_run, n_jobs=1, progress="none")
        elif action == "repair":
            trajlab.engine.repair(str(fresh_run))
        else:
            open_dataset(fresh_run)
    assert (target / "inner" / "keep.txt").read_text() == "not trajlab's\n"
    assert tree_digest(fresh_run, include_json=True) == before


def test_a_folder_that_takes_a_file_s_place_mid_write_is_named():
    """The same, when the folder appears after the check: the replace and
    the removal name the path instead of passing EISDIR on."""
    import tempfile

    from trajlab.storage import open_nofollow, remove_file, write_bytes_atomic

    with tempfile.TemporaryDirectory() as root:
        os.mkdir(os.path.join(root, "f.json"))
        path = os.path.join(root, "f.json")
        for call in (lambda: write_bytes_atomic(path, b"{}", root=root),
                     lambda: remove_file(path, root=root),
                     lambda: open_nofollow(path, os.O_RDWR | os.O_CREAT)):
            with pytest.raises(RunDirError, match=f"{re.escape(repr(path))} is a folder where "
                                                  "trajlab keeps a file"):
                call()
        assert os.listdir(root) == ["f.json"] and os.path.isdir(path)


@pytest.mark.parametrize("folder", ["shards", "annotations"])
def test_symlinked_folder_is_refused(fresh_run, tmp_path, folder):
    import shutil

    if folder == "annotations" and layout_of(fresh_run).annotations == "params":
        folder = "data/params"          # no annotation files: the array they come from
    elsewhere = tmp_path / f"elsewhere-{folder.replace('/', '-')}"
    shutil.move(fresh_run / folder, elsewhere)
    os.symlink(elsewhere, fresh_run / folder)
    os.remove(elsewhere / sorted(os.listdir(elsewhere))[3])
    os.remove(fresh_run / "manifest.json")
    before = snapshot(elsewhere)
    with pytest.raises(RunDirError, match=f"symbolic link.*{folder}"):
        generate(SMALL, fresh_run, progress="none")
    assert snapshot(elsewhere) == before


@pytest.mark.parametrize("folder", ["data", "shards"])
def test_a_folder_swapped_for_a_link_during_the_run_is_not_written_through(
        fresh_run, tmp_path, monkeypatch, fmt, folder):
    """The run dir passed its checks; then, while a shard is being made,
    one of its folders is moved away and a link to it put in its place.
    The shard's objects (format 2: data/<array>/; format 1: annotations/)
    or the parent's record (shards/) must not be written through it."""
    import shutil

    from trajlab import storage

    if folder == "data":
        folder = "data/videos" if fmt == 2 else "annotations"
    elsewhere = tmp_path / "elsewhere"
    os.remove(fresh_run / "shards" / "00002.json")
    os.remove(fresh_run / "manifest.json")
    target = "encode_shard" if fmt == 2 else "generate_block"
    real = getattr(storage, target)
    seen = {}

    def swap_then_make(*args, **kwargs):
        out = real(*args, **kwargs)
        if not seen:
            shutil.move(fresh_run / folder, elsewhere)
            os.symlink(elsewhere, fresh_run / folder)
            seen["before"] = snapshot(elsewhere)
        return out

    monkeypatch.setattr(storage, target, swap_then_make)
    with pytest.raises(RunDirError, match=f"{re.escape(folder)}' became a symbolic link"):
        generate(SMALL, fresh_run, n_jobs=1, progress="none")
    assert snapshot(elsewhere) == seen["before"]
    assert not any(".trajlab-tmp." in f for f in os.listdir(elsewhere))


@pytest.mark.parametrize("what,verify", [("videos", "lazy"), ("videos", "none"),
                                         ("labels", "lazy"), ("annotations", "lazy")])
def test_a_folder_swapped_for_a_link_after_open_is_not_read_through(fresh_run, tmp_path, fmt,
                                                                   what, verify):
    """open_dataset checked the run dir; then the folder holding ``what``
    is swapped for a link to a copy of itself. A shard read after that must
    refuse the link instead of reading whatever it points to (checked or
    unchecked clip reads alike)."""
    import shutil

    if fmt == 1 and what != "annotations":
        pytest.skip("format 1 maps its arrays from the run dir itself at open")
    ds = open_dataset(fresh_run, verify=verify)
    folder = {"videos": "data/videos", "labels": "data/labels"}.get(what) or (
        "annotations" if layout_of(fresh_run).annotations == "jsonl" else "data/params")
    read = {"videos": lambda i: ds.video(i), "labels": lambda i: ds.label(i),
            "annotations": lambda i: ds.annotation(i)}[what]
    first = read(0)                     # shard 0 is read through the real folder
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(fresh_run / folder, elsewhere)
    shutil.rmtree(fresh_run / folder)
    os.symlink(elsewhere, fresh_run / folder)
    with pytest.raises(RunDirError, match=f"{re.escape(folder)}' became a symbolic link "
                                          r"while trajlab was using the run directory \(reading"):
        read(16 * 5)                    # shard 5, not read yet
    # put back, the same reads give the same values
    os.remove(fresh_run / folder)
    shutil.copytree(elsewhere, fresh_run / folder)
    again = open_dataset(fresh_run)
    got = {"videos": again.video, "labels": again.label, "annotations": again.annotation}[what]
    np.testing.assert_equal(got(0), first)
    got(16 * 5)


def test_a_folder_swapped_for_a_link_during_verify_is_reported_not_read(fresh_run, tmp_path,
                                                                       monkeypatch, fmt):
    """verify has checked shards 0 and 1 when data/labels becomes a link to
    a copy of itself: the shards after are reported bad, naming the link,
    and verify carries on to the end instead of aborting."""
    import shutil

    from trajlab import dataset

    if fmt == 1:
        pytest.skip("format 1 maps its arrays from the run dir itself")
    real, elsewhere = dataset.check_shard_data, tmp_path / "elsewhere"

    def swap_at_shard_2(run_dir, layout, shard, rec, skip=()):
        if shard == 2:
            shutil.copytree(fresh_run / "data" / "labels", elsewhere)
            shutil.rmtree(fresh_run / "data" / "labels")
            os.symlink(elsewhere, fresh_run / "data" / "labels")
        return real(run_dir, layout, shard, rec, skip)

    monkeypatch.setattr(dataset, "check_shard_data", swap_at_shard_2)
    rep = trajlab.verify_run(str(fresh_run))
    n = rep["n_shards"]
    assert n > 3 and not rep["ok"]
    by_shard = {b[0]: b for b in rep["bad"]}
    assert 0 not in by_shard and 1 not in by_shard
    assert sorted(s for s in by_shard if s is not None) == list(range(2, n))
    for s in range(2, n):
        assert by_shard[s][1] == "labels"
        assert "data/labels' became a symbolic link" in by_shard[s][2]
    assert "data/labels' became a symbolic link" in by_shard[None][2]   # and the probe


def test_a_folder_swapped_for_a_link_is_not_sized_through(fresh_run, tmp_path, fmt):
    """The size check a resume makes on every object opens the folders
    without following links too: data/videos swapped for a link to an
    exact copy of itself (every size as recorded) is a problem naming the
    link, and the resume that follows writes nothing where it points."""
    import shutil

    from trajlab.storage import read_record, stored_size_problem

    if fmt == 1:
        pytest.skip("format 1 keeps no per-object sizes")
    layout = layout_of(fresh_run)
    rec = read_record(str(fresh_run), layout, 0)
    assert stored_size_problem(str(fresh_run), layout, 0, rec) is None
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(fresh_run / "data" / "videos", elsewhere)
    shutil.rmtree(fresh_run / "data" / "videos")
    os.symlink(elsewhere, fresh_run / "data" / "videos")
    name, reason = stored_size_problem(str(fresh_run), layout, 0, rec)
    assert name == "videos"
    assert "cannot be sized" in reason and "data/videos' became a symbolic link" in reason
    before = snapshot(elsewhere)
    with pytest.raises(RunDirError, match="symbolic link"):
        generate(SMALL, fresh_run, n_jobs=1, progress="none")
    assert snapshot(elsewhere) == before


def test_writes_beneath_a_run_dir(tmp_path):
    """The run dir itself may be a link; a missing folder or a file in a
    folder's place is named by its whole path; a missing folder has no file
    to remove."""
    from trajlab.storage import remove_file, write_bytes_atomic

    root = str(tmp_path)
    with pytest.raises(FileNotFoundError) as exc:
        write_bytes_atomic(os.path.join(root, "no", "f"), b"x", root=root)
    assert exc.value.filename == os.path.join(root, "no")
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError) as exc:
        write_bytes_atomic(os.path.join(root, "afile", "f"), b"x", root=root)
    assert exc.value.filename == os.path.join(root, "afile")
    remove_file(os.path.join(root, "no", "f"), root=root)
    (tmp_path / "real" / "shards").mkdir(parents=True)
    os.symlink(tmp_path / "real", tmp_path / "alias")
    alias = str(tmp_path / "alias")
    write_bytes_atomic(os.path.join(alias, "shards", "r.json"), b"{}", root=alias, fsync=True)
    assert (tmp_path / "real" / "shards" / "r.json").read_bytes() == b"{}"
    assert os.listdir(tmp_path / "real" / "shards") == ["r.json"]      # no temporary left
    remove_file(os.path.join(alias, "shards", "r.json"), root=alias)
    assert not (tmp_path / "real" / "shards" / "r.json").exists()


def test_hard_linked_array_is_not_written(fresh_run, tmp_path, fmt):
    """A second name of the same inode (e.g. a `cp -al` backup) would be
    changed too. Format 2 never writes in place: a shard object is replaced
    by a new file, so a hard-linked backup keeps its bytes."""
    if fmt == 2:
        obj = fresh_run / "data" / "videos" / "c.1.0.0.0.0"
        backup = tmp_path / "backup-object"
        os.link(obj, backup)
        before = backup.read_bytes()
        os.remove(fresh_run / "shards" / "00001.json")
        os.remove(fresh_run / "manifest.json")
        assert generate(SMALL, fresh_run, progress="none").shards_generated == 1
        assert backup.read_bytes() == before
        assert os.stat(obj).st_ino != os.stat(backup).st_ino
        return
    backup = tmp_path / "backup-videos.npy"
    os.link(fresh_run / "videos.npy", backup)
    os.remove(fresh_run / "shards" / "00001.json")
    os.remove(fresh_run / "manifest.json")
    with open(fresh_run / "videos.npy", "r+b") as fh:      # shard 1's bytes lost
        fh.seek(layout_offset(fresh_run, "videos", 1))
        fh.write(b"\x00" * 100)
    before = backup.read_bytes()
    with pytest.raises(RunDirError, match="hard link"):
        generate(SMALL, fresh_run, progress="none")
    assert backup.read_bytes() == before


def layout_offset(rd, name, shard):
    _, layout = load_layout(rd)
    fname, shape, dt, hlen, per = layout.arrays()[name]
    return hlen + per * layout.shard_range(shard)[0]


# ------------------------------- only trajlab's folders, only trajlab's files
def test_folder_of_another_program_is_not_taken_as_a_run_dir(tmp_path):
    d = tmp_path / "other"
    d.mkdir()
    for name, text in {"progress.json": '{"state": "theirs"}', "PROGRESS.txt": "theirs",
                       ".lock": "their lock", "draft.tmp-backup": "draft"}.items():
        (d / name).write_text(text)
    before = snapshot(d)
    with pytest.raises(ValueError, match=r"must be a new or empty directory or a trajlab run "
                                         r"directory.*no spec.json"):
        generate(SMALL, d, progress="none")
    assert snapshot(d) == before
    proc = run_cli("generate", d, "-n", 10, "--n-frames", 4, "--image-size", 16)
    assert proc.returncode == 2 and "no spec.json" in proc.stderr
    assert snapshot(d) == before


def test_foreign_spec_json_is_not_taken_as_a_run_dir(tmp_path):
    d = tmp_path / "other"
    d.mkdir()
    (d / "spec.json").write_text('{"model": "resnet50"}')
    (d / "progress.json").write_text('{"epoch": 3}')
    before = snapshot(d)
    with pytest.raises(RunDirError, match="not a trajlab run"):
        generate(SMALL, d, progress="none")
    assert snapshot(d) == before


def test_start_killed_before_spec_json_can_be_started_again(tmp_path, reference):
    """A kill in the first instant leaves trajlab's lock and a temporary
    spec.json of a dead process: still an empty run dir for trajlab."""
    from trajlab import storage

    rd = tmp_path / "run"
    rd.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (rd / ".lock").write_text(json.dumps({"program": "trajlab", "pid": dead.pid,
                                          "host": storage.HOST, "since": "2024-01-01T00:00:00Z"}))
    leftover = f".spec.json.trajlab-tmp.{storage.HOST}.{dead.pid}.00c0ffee"
    (rd / leftover).write_text("{")
    generate(SMALL, rd, n_jobs=1, shard_size=16, progress="none")
    assert tree_digest(rd) == reference[2]
    assert not (rd / leftover).exists()


def test_resume_removes_only_temporary_files_trajlab_made(fresh_run, reference):
    from trajlab import storage

    rd = fresh_run
    os.remove(rd / "manifest.json")
    os.remove(rd / "shards" / "00003.json")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # the last object a worker writes for a shard: its annotations, or (no
    # annotation files) its parameter matrix
    last = ("annotations/00003.jsonl" if layout_of(rd).annotations == "jsonl"
            else "data/params/c.3.0")
    folder, name = last.rsplit("/", 1)
    ours = [f"{folder}/.{name}.trajlab-tmp.{storage.HOST}.{dead.pid}.0badf00d",
            f"shards/.00003.json.trajlab-tmp.{storage.HOST}.{dead.pid}.0badf00d",
            f".progress.json.trajlab-tmp.{storage.HOST}.{dead.pid}.0badf00d"]
    theirs = ["draft.tmp-backup", f"{last}.tmp-999", "shards/notes.tmp-1",
              "my-notes.txt"]
    for junk in ours + theirs:
        (rd / junk).write_text("half written")
    res = generate(SMALL, rd, progress="none")
    assert res.shards_generated == 1
    for junk in ours:
        assert not (rd / junk).exists(), junk
    for junk in theirs:
        assert (rd / junk).read_text() == "half written", junk
    assert {k: v for k, v in tree_digest(rd).items() if "tmp" not in k} == reference[2]


# ------------------------------------------------------------- bounds
@pytest.mark.parametrize("field,value,match", [
    ("n_frames", 10_000_000, r"The 'n_frames' parameter of DatasetSpec must be an int in the "
                             r"range \[2, 1024\]\. Got 10000000 instead\."),
    ("n_samples", 10**9, r"The 'n_samples' parameter of DatasetSpec must be an int in the "
                         r"range \[1, 100000000\]\. Got 1000000000 instead\."),
])
def test_counts_have_upper_bounds(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):       # refused by the spec itself
        generate(SMALL.replace(**{field: value}), tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()


def test_memory_is_checked_before_the_feasibility_probe(tmp_path, monkeypatch):
    import trajlab.engine as eng
    import trajlab.generator as gen

    calls = []
    monkeypatch.setattr(gen, "generate_block", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(eng, "available_memory", lambda: 50 * 2**20)
    spec = SMALL.replace(n_frames=1024, image_size=256)         # 200 MiB per sample
    with pytest.raises(MemoryError, match=r"needs about .* GiB of memory .* 0\.05 GiB"):
        generate(spec, tmp_path / "run", n_jobs=1, progress="none")
    assert calls == [] and not (tmp_path / "run").exists()


def test_disk_is_checked_before_the_feasibility_probe(tmp_path, monkeypatch):
    import trajlab.generator as gen

    class Tiny:
        f_bavail, f_frsize = 10, 4096

    calls = []
    monkeypatch.setattr(gen, "generate_block", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(os, "statvfs", lambda p: Tiny())
    with pytest.raises(OSError, match="Not enough disk space"):
        generate(SMALL, tmp_path / "run", progress="none")
    assert calls == []


@pytest.mark.parametrize("value", [True, 1.5, 2**21])
def test_shard_size_must_be_a_bounded_int(tmp_path, value):
    exc = TypeError if not isinstance(value, int) or isinstance(value, bool) else ValueError
    with pytest.raises(exc, match=r"'shard_size' parameter of generate must be an int in the "
                                  r"range \[1, 1048576\]"):
        generate(SMALL, tmp_path / "run", shard_size=value, progress="none")


@pytest.mark.parametrize("edit", [0, -1, True, 1.5])
def test_damaged_shard_size_in_spec_json_is_refused_everywhere(fresh_run, edit):
    doc = json.load(open(fresh_run / "spec.json"))
    doc["layout"]["shard_size"] = edit
    write_json_atomic(fresh_run / "spec.json", doc)
    before = snapshot(fresh_run)
    for cmd in (["info"], ["verify"], ["verify", "--repair"], ["generate"]):
        proc = run_cli(*cmd, fresh_run)
        assert proc.returncode == 1, (cmd, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "The 'layout.shard_size' parameter of spec.json" in proc.stdout + proc.stderr
    with pytest.raises(RunDirError, match="'layout.shard_size' parameter of spec.json"):
        open_dataset(fresh_run)
    assert snapshot(fresh_run) == before


# --------------------------------------------------- leftovers and verdicts
def test_finished_read_only_run_is_a_noop(fresh_run, tmp_path):
    """generate on a finished run needs no write access (the README says it
    is a no-op)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(fresh_run), str(ro)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs a read-only bind mount (root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        before = snapshot(ro)
        res = generate(SMALL, ro, progress="none")
        assert res.already_complete
        proc = run_cli("generate", ro)
        assert proc.returncode == 0 and "already complete" in proc.stdout, proc.stderr
        assert snapshot(ro) == before
        # work to do on a read-only run dir: a clear refusal
        with pytest.raises(PermissionError, match="writable directory"):
            generate(SMALL, ro, progress="none", verify=True)
    finally:
        subprocess.run(["umount", str(ro)], check=True)


@pytest.fixture()
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs a small tmpfs (root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.parametrize("fmt,noise", [(1, 0.0), (2, 20.0)])
def test_disk_full_ends_as_failed_and_leaves_no_temporary_files(tiny_disk, fmt, noise):
    """Sparse preallocation passes the space check on tmpfs only because it
    is skipped here; the shards then fill the disk. (Format 2 compresses
    a clean spec below the disk's size: noise makes it incompressible.)"""
    rd = tiny_disk / "run"
    code = ("import trajlab, trajlab.engine as e\n"
            "e._check_disk_space = lambda *a: None\n"
            f"trajlab.generate(trajlab.DatasetSpec(n_samples=400, n_frames=8, image_size=32, "
            f"pixel_noise={noise}), {str(rd)!r}, n_jobs=1, shard_size=16, progress='none', "
            f"format_version={fmt})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "No space left on device" in proc.stderr
    st = json.loads(run_cli("status", rd, "--json").stdout)
    assert st["verdict"] == "failed", st
    assert "No space left on device" in st["reason"]
    leftovers = [p for p in rd.rglob("*") if "tmp" in p.name]
    assert leftovers == []


# ----------------------------------------------------- small validation gaps
@pytest.mark.parametrize("kwargs,exc,match", [
    ({"fsync": "yes"}, TypeError, r"The 'fsync' parameter of generate must be a bool\. Got 'yes'"),
    ({"verify": 1}, TypeError, r"The 'verify' parameter of generate must be a bool\. Got 1"),
    ({"heartbeat": 0}, ValueError, r"The 'heartbeat' parameter of generate must be a finite "
                                   r"float in the range \[0.1, 3600\]\. Got 0"),
    ({"heartbeat": -1}, ValueError, r"'heartbeat' parameter of generate .* Got -1"),
    ({"heartbeat": float("nan")}, ValueError, r"'heartbeat' parameter of generate .* Got nan"),
    ({"text_interval": "x"}, TypeError, r"The 'text_interval' parameter of generate must be a "
                                        r"finite float in the range \[0, 86400\]\. Got 'x'"),
])
def test_flags_and_intervals_are_checked(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        generate(SMALL, tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_object_colour_equal_to_background_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"The 'object_color' parameter of DatasetSpec must be "
                                         r".*different from background_color.*Got \(10, 20, 30\)"):
        generate(SMALL.replace(object_color=(10, 20, 30), background_color=(10, 20, 30)),
                 tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------- orphan workers
def test_workers_exit_within_seconds_of_a_killed_parent(tmp_path):
    rd = tmp_path / "run"
    workers = []
    proc = _spawn(rd, KILL_SPEC.n_samples, 50)
    try:
        _wait_for(lambda: len(_records(rd)) >= 3 or proc.poll() is not None)
        workers = descendants(proc.pid)
        assert len(workers) >= 2
        os.kill(proc.pid, signal.SIGKILL)       # the parent only, not its group
        proc.wait()
        t0 = time.time()
        while any(alive(p) for p in workers) and time.time() - t0 < 10:
            time.sleep(0.1)
        assert [p for p in workers if alive(p)] == [], "workers outlived their parent"
    finally:
        for p in [proc.pid] + workers:      # whatever is left (before the fix: the workers)
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


# ------------------------------------------------------------ joblib conventions
def test_n_jobs_none_honours_joblib_parallel_config(tmp_path, monkeypatch):
    """Like scikit-learn: n_jobs=None (the default) takes the n_jobs of an
    active joblib.parallel_config, and means 1 outside one."""
    import threading

    import joblib

    import trajlab.engine as eng

    seen = set()
    real = eng._shard_task

    def spy(*args):
        seen.add(threading.get_ident())
        time.sleep(0.05)          # so that every thread of the pool gets a shard
        return real(*args)

    monkeypatch.setattr(eng, "_shard_task", spy)
    spec = DatasetSpec(n_samples=48, n_frames=4, image_size=16, seed=1)
    with joblib.parallel_config(backend="threading", n_jobs=3):
        generate(spec, tmp_path / "a", shard_size=4, progress="none")
    assert len(seen) == 3
    seen.clear()
    generate(spec, tmp_path / "b", shard_size=4, progress="none", backend="threading")
    assert len(seen) == 1
    assert eng._workers(None, None, None) == 1
    with joblib.parallel_config(n_jobs=5):
        assert eng._workers(None, None, None) == 5
