"""Generation engine: parallel equivalence, resume after SIGKILL, integrity,
bad input. The sequential in-memory generator is the oracle."""

import json
import os
import random
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

from _util import run_cli, snapshot, tree_digest

SMALL = DatasetSpec(n_samples=150, n_frames=8, image_size=16, seed=7)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A sequential (n_jobs=1) run of SMALL."""
    rd = tmp_path_factory.mktemp("ref") / "run"
    res = generate(SMALL, rd, n_jobs=1, shard_size=16, progress="none")
    return rd, res, tree_digest(rd)


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
    layout = RunLayout(SMALL, 16)
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
def _spawn(rd, n, shard, extra=()):
    env = dict(os.environ, TRAJLAB_PROGRESS="none")
    return subprocess.Popen(
        [sys.executable, "-m", "trajlab", "generate", str(rd), "-n", str(n), "--n-frames", "8",
         "--image-size", "32", "--seed", "11", "--shard-size", str(shard), "-j", "2", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


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
def kill_reference(tmp_path_factory):
    rd = tmp_path_factory.mktemp("killref") / "run"
    generate(KILL_SPEC, rd, n_jobs=2, shard_size=50, progress="none")
    return tree_digest(rd)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [0, 5, 40, 80])
def test_sigkill_then_resume_is_byte_identical(tmp_path, kill_reference, kill_after):
    """kill -9 the whole process group after ``kill_after`` shard records
    (0: as soon as spec.json exists), then resume with the same command."""
    rd = tmp_path / "run"
    proc = _spawn(rd, KILL_SPEC.n_samples, 50)
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
    ann = {f.split(".")[0] for f in os.listdir(rd / "annotations")} if kill_after else set()
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
def fresh_run(tmp_path, reference):
    rd = tmp_path / "run"
    generate(SMALL, rd, n_jobs=1, shard_size=16, progress="none")
    return rd


def test_flipped_byte_is_caught_by_verify_loading_and_repaired(fresh_run, reference):
    rd = fresh_run
    _, layout = load_layout(rd)
    offset = layout.arrays()["videos"][3] + 5 * layout.arrays()["videos"][4] + 100  # shard 0
    with open(rd / "videos.npy", "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))
    bad = find_bad_shards(str(rd), layout)
    assert [(s, what) for s, what, _ in bad] == [(0, "videos")]
    proc = run_cli("verify", rd)
    assert proc.returncode == 1 and "first bad shard 0" in proc.stdout
    ds = open_dataset(rd)                      # O(1) open does not read data ...
    ds.sample(40)                              # ... shard 2 is fine
    with pytest.raises(RunDirError, match="Checksum mismatch in videos.npy, shard 0"):
        ds.sample(5)
    with pytest.raises(RunDirError, match="Checksum mismatch"):
        open_dataset(rd, verify="full")
    # repair: drop bad records, resume regenerates exactly that shard
    assert run_cli("verify", rd, "--repair").returncode == 1
    res = generate(SMALL, rd, progress="none")
    assert res.shards_generated == 1
    assert tree_digest(rd) == reference[2]
    assert run_cli("verify", rd).returncode == 0


def test_truncated_file_is_caught_and_resume_regenerates(fresh_run, reference):
    rd = fresh_run
    size = os.path.getsize(rd / "pixels.npy")
    os.truncate(rd / "pixels.npy", size - 1000)
    with pytest.raises(RunDirError, match="truncated"):
        open_dataset(rd)
    rep = trajlab.verify_run(str(rd))
    assert not rep["ok"] and any("truncated" in r for _, _, r in rep["bad"])
    res = generate(SMALL, rd, progress="none")
    assert 1 <= res.shards_generated <= 2      # only the shard(s) whose bytes were cut
    assert tree_digest(rd) == reference[2]


def test_verify_option_regenerates_corrupted_shards_on_resume(fresh_run, reference):
    rd = fresh_run
    with open(rd / "labels.npy", "r+b") as fh:
        fh.seek(-3, os.SEEK_END)
        fh.write(b"\x07")
    res = generate(SMALL, rd, progress="none")        # complete: no-op without verify
    assert res.already_complete
    res = generate(SMALL, rd, progress="none", verify=True)
    assert res.shards_generated == 1
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
    ({"shard_size": 0}, r"'shard_size' parameter of generate must be an int in the range \[1, inf\)"),
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
    ({"spec": SMALL.replace(object_radius=1.5)}, "The spec cannot be generated"),
])
def test_unusable_backend_or_impossible_spec_leave_no_run_dir(tmp_path, kwargs, match):
    spec = kwargs.pop("spec", SMALL)
    with pytest.raises(ValueError, match=match):
        generate(spec, tmp_path / "run", progress="none", **kwargs)
    assert not (tmp_path / "run").exists()


def test_not_enough_disk_space_fails_before_any_work(tmp_path, monkeypatch):
    class Tiny:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(os, "statvfs", lambda p: Tiny())
    with pytest.raises(OSError, match="Not enough disk space .* needs"):
        generate(SMALL, tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()


def test_leftover_spec_tmp_does_not_block_a_new_run(tmp_path, reference):
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "spec.json.tmp-4242").write_text("{")       # killed during the first write
    generate(SMALL, rd, n_jobs=1, shard_size=16, progress="none")
    assert tree_digest(rd) == reference[2]
    assert not list(rd.glob("*.tmp-*"))


def test_repair_then_status_says_incomplete(fresh_run):
    with open(fresh_run / "videos.npy", "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        fh.write(b"\x01")
    bad = trajlab.engine.repair(str(fresh_run))
    assert [s for s, *_ in bad] == [9]
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


def test_resume_removes_temporary_files_of_killed_writers(fresh_run, reference):
    rd = fresh_run
    os.remove(rd / "manifest.json")
    os.remove(rd / "shards" / "00003.json")
    for junk in ("annotations/00003.jsonl.tmp-999", "shards/00003.json.tmp-999"):
        (rd / junk).write_text("half written")
    res = generate(SMALL, rd, progress="none")
    assert res.shards_generated == 1
    assert not [p for p in rd.rglob("*") if ".tmp-" in p.name]
    assert tree_digest(rd) == reference[2]


def test_fsync_mode_syncs_data_records_and_renames(tmp_path, reference, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                  real(fd)))
    generate(SMALL, tmp_path / "run", n_jobs=1, shard_size=16, progress="none", fsync=True)
    assert tree_digest(tmp_path / "run") == reference[2]
    names = [os.path.relpath(p, tmp_path / "run") for p in synced]
    assert sum(n == "videos.npy" for n in names) == 10                 # every shard's bytes
    assert sum(n.startswith("shards/") and ".tmp-" in n for n in names) == 10   # every record
    assert sum(n == "shards" for n in names) == 10                     # ... and its rename
    assert any(n.startswith("manifest.json.tmp-") for n in names)


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
def test_signals_end_the_run_as_interrupted_and_resume(tmp_path, kill_reference, sig):
    rd = tmp_path / "run"
    proc = _spawn(rd, KILL_SPEC.n_samples, 50)
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
