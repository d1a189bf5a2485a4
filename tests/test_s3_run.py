"""Generating straight into an S3 bucket (moto's server on 127.0.0.1): a
complete run, kill + resume, the lease (second writer refused, a dead
writer's lease taken over, a lost lease stopping the writer), status and
info, repair of a damaged object, bad input, and a dask LocalCluster whose
workers write their shards to the bucket. Every run is compared with the
same spec generated into a local folder: the objects must be the same
bytes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import trajlab
from trajlab import DatasetSpec, RunDirError, generate, open_dataset, verify_run
from trajlab.lease import Lease, LeaseLost
from trajlab.objstore import open_store

from _s3 import s3  # noqa: F401  (session fixture: moto server on 127.0.0.1)
from _util import default_sigint, run_cli, tree_digest

SPEC = DatasetSpec(n_samples=96, n_frames=6, image_size=16, seed=21)
SHARD = 8                                       # 12 shards
#: What trajlab keeps in a finished run dir, besides the shard objects.
PARENT_KEYS = {"spec.json", "manifest.json", "progress.json", "PROGRESS.txt"}


def bucket_digest(url):
    """sha256 of every data object under ``url``, keyed as tree_digest keys
    the files of a local run dir (shard objects and annotations)."""
    store = open_store(url)
    return {k: hashlib.sha256(store.get(k, 2**30)).hexdigest() for k in store.list()
            if k.endswith(".jsonl.zst") or (k.startswith("data/") and "/c." in k)}


def records(url):
    store = open_store(url)
    return sorted(k for k in store.list() if k.startswith("shards/"))


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    rd = tmp_path_factory.mktemp("s3ref") / "run"
    generate(SPEC, rd, n_jobs=1, shard_size=SHARD, progress="none")
    return str(rd)


def _same_as_local(url, local):
    assert bucket_digest(url) == tree_digest(local)
    a, b = open_dataset(url, verify="full"), open_dataset(local)
    assert a.manifest["digest"] == b.manifest["digest"]
    for name in b.arrays:
        np.testing.assert_array_equal(np.asarray(a.arrays[name]), np.asarray(b.arrays[name]))
    assert [a.annotation(i) for i in (0, 50, 95)] == [b.annotation(i) for i in (0, 50, 95)]


def test_a_complete_run_into_a_bucket_equals_the_local_one(s3, local):  # noqa: F811
    url = s3.new_url("full")
    res = generate(SPEC, url + "/", n_jobs=2, shard_size=SHARD, progress="none")
    assert res.run_dir == url and res.shards_generated == 12
    _same_as_local(url, local)
    keys = set(open_store(url).list())
    # nothing else is left: no lease (released), no temporary object, no lock file
    assert {k for k in keys if "/" not in k} == PARENT_KEYS
    assert len([k for k in keys if k.startswith("shards/")]) == 12
    manifest = json.loads(open_store(url).get("manifest.json", 2**20))
    assert manifest["compression_ratio"] > 5 and manifest["store"] == "zarr-v3"
    assert verify_run(url)["ok"]
    # a finished run is a read-only no-op: nothing is written again
    before = {k: open_store(url).head(k).etag for k in keys}
    again = generate(SPEC, url, n_jobs=2, progress="none")
    assert again.shards_generated == 0
    assert {k: open_store(url).head(k).etag for k in open_store(url).list()} == before


def test_cli_generate_status_info_and_verify_on_a_bucket(s3, local):  # noqa: F811
    url = s3.new_url("cli")
    run_cli("generate", url, "-n", SPEC.n_samples, "--n-frames", SPEC.n_frames,
            "--image-size", SPEC.image_size, "--seed", SPEC.seed, "--shard-size", SHARD,
            "-j", 2, check=True)
    assert bucket_digest(url) == tree_digest(local)
    out = run_cli("status", url, check=True).stdout
    assert out.startswith(f"{url}: FINISHED") and "96 / 96" in out
    info = run_cli("info", url, check=True).stdout
    assert f"Run dir:      {url}" in info and "On disk:" in info
    assert run_cli("verify", url).returncode == 0
    # a plain resume of the finished run: no spec arguments needed
    assert run_cli("generate", url, check=True).returncode == 0


def test_status_of_a_bucket_judges_age_by_the_store_clock(s3, monkeypatch):  # noqa: F811
    """The writer's host and the reader's host may disagree about the time:
    the age of progress.json is its LastModified against the store's Date,
    and only differences of the writer's own times are used."""
    from trajlab.objstore import S3Store
    from trajlab.progress import format_status, read_status

    url = s3.new_url("clock")
    store = open_store(url)
    writer_now = time.time() - 1000.0           # the writer's clock is 1000 s behind
    snap = {"state": "running", "host": "another-host", "pid": 1, "done": 10, "total": 96,
            "percent": 10.4,
            "heartbeat_seconds": 15.0, "updated_unix": writer_now,
            "last_checkpoint_unix": writer_now - 5.0, "mean_checkpoint_seconds": 1.0}
    store.put("progress.json", json.dumps(snap).encode())
    status = read_status(url)
    assert status["verdict"] == "running", status["reason"]
    assert status["age_seconds"] < 30
    # and says that the writer's clock is off, by how much and which way
    assert -1010 < status["writer_clock_offset_seconds"] < -990
    assert re.search(r"clock of the writer \(another-host\) is 1[67]m \d+s behind the store's",
                     status["warning"]), status["warning"]
    assert "Warning: the clock of the writer" in format_status(url, status)
    # a writer in step with the store gets no warning
    store.put("progress.json", json.dumps(dict(snap, updated_unix=time.time(),
                                               last_checkpoint_unix=time.time())).encode())
    status = read_status(url)
    assert "warning" not in status and "writer_clock_offset_seconds" not in status
    assert "Warning" not in format_status(url, status)
    # no shard for 700 s by the writer's own clock: hung workers
    snap["last_checkpoint_unix"] = writer_now - 700.0
    store.put("progress.json", json.dumps(snap).encode())
    status = read_status(url)
    # 700 s plus the object's age by the store's whole-second clock
    assert status["verdict"] == "stalled"
    assert re.search(r"alive, but no shard completed for 11m 4[0-5]s", status["reason"]), status
    # the same object, seen 1000 s later by the store's clock: the writer is gone
    snap["last_checkpoint_unix"] = writer_now - 5.0
    store.put("progress.json", json.dumps(snap).encode())
    real = S3Store.server_time
    monkeypatch.setattr(S3Store, "server_time", lambda self, key=None: real(self, key) + 1000)
    status = read_status(url)
    assert status["verdict"] == "stalled" and "no update for 16m" in status["reason"]
    # an old object's LastModified (a copy's, a restore's) says nothing of a clock
    assert "warning" not in status
    monkeypatch.setattr(S3Store, "server_time", real)
    # nor does a finished run's, nor a progress.json without a time of its own
    for bad in (dict(snap, state="finished"), {k: v for k, v in snap.items()
                                               if k != "updated_unix"}):
        store.put("progress.json", json.dumps(bad).encode())
        assert "warning" not in read_status(url)
    store.put("progress.json", json.dumps(snap).encode())
    assert "warning" in read_status(url)        # and the clock is still off


#: Lease TTL of the killed writer: long enough that a loaded machine still
#: finds its lease fresh right after the kill. (10 s was not: with the moto
#: server busy, the status call and the listing of the bucket between the
#: kill and the second writer took up to 9 s after the last renewal.)
TTL = 20


def _bucket_kill_run(url, ttl):
    env = dict(os.environ, TRAJLAB_PROGRESS="none", TRAJLAB_LEASE_TTL=str(ttl))
    return subprocess.Popen(
        [sys.executable, "-m", "trajlab", "generate", url, "-n", "1600", "--n-frames", "8",
         "--image-size", "32", "--seed", "4", "--shard-size", "16", "-j", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=default_sigint)


def test_sigkill_then_resume_in_a_bucket(s3, tmp_path):  # noqa: F811
    """kill -9 the writer and its workers; at once, a second writer is
    refused (the dead writer's lease is still fresh) and the bucket is
    untouched; once the lease lapses a resume takes it over, redoes only the
    missing shards and gives the bytes of an uninterrupted local run."""
    spec = DatasetSpec(n_samples=1600, n_frames=8, image_size=32, seed=4)
    url = s3.new_url("kill")
    proc = _bucket_kill_run(url, ttl=TTL)
    try:
        deadline = time.monotonic() + 120
        while len(records(url)) < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        running = run_cli("status", url)
        assert running.returncode == 0 and running.stdout.startswith(f"{url}: RUNNING"), \
            running.stdout + running.stderr
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    store = open_store(url)
    assert "manifest.json" not in store.list(), "killed too late to test anything"
    done = len(records(url))
    assert done >= 10 and store.exists(".lease.json")
    before = {k: store.head(k).etag for k in store.list()}
    with pytest.raises(RunDirError, match=r"being written by another process.*host .*pid "
                                          rf"{proc.pid}"):
        generate(spec, url, n_jobs=2, progress="none")
    assert {k: store.head(k).etag for k in store.list()} == before
    proc_st = run_cli("status", url)
    st = proc_st.stdout
    assert proc_st.returncode != 0 and st.startswith(f"{url}: STALLED") and f"process {proc.pid} on this host is gone" in st
    time.sleep(TTL + 1.5)                        # the lease lapses (TTL + clock resolution)
    res = generate(spec, url, n_jobs=2, progress="none")
    assert res.shards_reused == done and res.shards_generated == 100 - done
    ref = tmp_path / "ref"
    generate(spec, ref, n_jobs=2, shard_size=16, progress="none")
    assert bucket_digest(url) == tree_digest(ref)
    assert open_dataset(url).manifest["digest"] == open_dataset(ref).manifest["digest"]
    assert ".lease.json" not in store.list()


def test_a_live_writer_keeps_a_second_one_out(s3):  # noqa: F811
    url = s3.new_url("second")
    holder = Lease(open_store(url)).acquire()
    try:
        with pytest.raises(RunDirError, match="being written by another process"):
            generate(SPEC, url, n_jobs=1, shard_size=SHARD, progress="none")
        assert open_store(url).list() == [".lease.json"]     # nothing else was written
    finally:
        holder.release()


def test_a_writer_that_loses_its_lease_stops_writing(s3, monkeypatch):  # noqa: F811
    """Another writer takes the lease over in the middle of a run: the
    heartbeat finds out, the next record write raises LeaseLost, no
    manifest is written and the new holder's lease is left alone."""
    from trajlab import engine

    url = s3.new_url("lost")
    store = open_store(url)
    monkeypatch.setenv("TRAJLAB_LEASE_TTL", "4")
    real = engine.write_shard
    foreign = json.dumps({"program": "trajlab", "token": "f" * 32, "pid": 1, "host": "other",
                          "since": "2026-01-01T00:00:00Z", "heartbeat_unix": 0.0,
                          "ttl_seconds": 60.0}).encode()

    def task(run_dir, layout, shard, fsync=False):
        if shard == 3:
            store.put(".lease.json", foreign)    # a takeover, as another host would do it
            time.sleep(2.5)                      # two heartbeats (TTL / 4 = 1 s)
        return real(run_dir, layout, shard, fsync)

    monkeypatch.setattr(engine, "write_shard", task)
    with pytest.raises(LeaseLost, match="lost the lease"):
        generate(SPEC, url, n_jobs=1, backend="sequential", shard_size=SHARD, progress="none")
    keys = store.list()
    assert "manifest.json" not in keys
    assert 3 <= len([k for k in keys if k.startswith("shards/")]) < 12
    assert store.get(".lease.json", 4096) == foreign


def test_a_damaged_object_in_the_bucket_is_repaired_and_regenerated(s3, local):  # noqa: F811
    from trajlab import zstore

    url = s3.new_url("repair")
    generate(SPEC, url, n_jobs=2, shard_size=SHARD, progress="none")
    store = open_store(url)
    layout = trajlab.storage.load_layout(url)[1]
    key = "data/videos/" + zstore.chunk_key(layout, "videos", 5)
    rows = zstore.read_shard(url, layout, "videos", 5).copy()
    rows[2, 1, 0, 3, 3] ^= 0xFF                  # decodes, other bytes: only the checksum tells
    store.put(key, zstore.encode(layout, "videos", rows))
    ds = open_dataset(url)
    ds.video(4 * SHARD)
    with pytest.raises(RunDirError, match="Shard 5 of .* corrupted"):
        ds.video(5 * SHARD + 2)
    store.delete("data/labels/" + zstore.chunk_key(layout, "labels", 7))
    with pytest.raises(RunDirError, match=r"data/labels/c\.7 is missing"):
        open_dataset(url).label(7 * SHARD)
    rep = verify_run(url)
    assert not rep["ok"] and sorted({s for s, *_ in rep["bad"]}) == [5, 7]
    out = trajlab.engine.repair(url)
    assert out["dropped"] == [5, 7] and not out["complete"]
    assert "manifest.json" not in store.list()
    res = generate(SPEC, url, n_jobs=2, progress="none")
    assert res.shards_generated == 2
    _same_as_local(url, local)


def test_bad_s3_run_dirs_are_refused_before_any_work(s3, monkeypatch):  # noqa: F811
    with pytest.raises(ValueError, match=r"'run_dir' parameter of generate must be an "
                                         r"'s3://bucket/prefix' URL with a prefix"):
        generate(SPEC, f"s3://{s3.bucket}", progress="none")
    url = s3.new_url("v1")
    with pytest.raises(ValueError, match=r"'format_version' parameter of generate must be "
                                         r"None or 2 for an s3:// run_dir.*Got 1"):
        generate(SPEC, url, format_version=1, progress="none")
    monkeypatch.setenv("TRAJLAB_LEASE_TTL", "0.5")
    with pytest.raises(ValueError, match=r"TRAJLAB_LEASE_TTL.*\[2, 86400\].*0\.5"):
        generate(SPEC, url, shard_size=SHARD, progress="none")
    monkeypatch.delenv("TRAJLAB_LEASE_TTL")
    open_store(url).put("notes.txt", b"someone else's")
    with pytest.raises(ValueError, match=r"new or empty prefix or a trajlab run directory.*"
                                         r"notes\.txt"):
        generate(SPEC, url, shard_size=SHARD, progress="none")
    assert open_store(url).list() == ["notes.txt"]


@pytest.mark.dask
@pytest.mark.timeout(240)
def test_a_dask_local_cluster_writes_its_shards_to_the_bucket(s3, local):  # noqa: F811
    """The workers get only the URL (and the environment's credentials);
    each PUTs its own shards' objects, the parent writes the rest."""
    distributed = pytest.importorskip("distributed")

    url = s3.new_url("dask")
    saved = dict(os.environ)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                      silence_logs=logging.ERROR) as lc:
            res = generate(SPEC, url, backend="dask", scheduler=lc.scheduler_address,
                           shard_size=SHARD, progress="none")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert res.shards_generated == 12
    workers = {json.loads(open_store(url).get(k, 2**20))["worker"] for k in records(url)}
    assert len(workers) == 2 and all(w.split(":")[1] != str(os.getpid()) for w in workers)
    _same_as_local(url, local)


def test_loky_workers_started_before_the_credentials_still_write(s3, tmp_path, local):  # noqa: F811
    """loky keeps its worker processes between calls: workers started
    while no AWS_* variable was set must still reach the bucket (each task
    carries the parent's AWS_* settings)."""
    saved = {k: val for k, val in os.environ.items() if k.startswith("AWS_")}
    for k in saved:
        del os.environ[k]
    try:
        generate(SPEC.replace(n_samples=16), tmp_path / "warm", n_jobs=2, shard_size=SHARD,
                 progress="none")          # starts (or reuses) the workers, no credentials
    finally:
        os.environ.update(saved)
    url = s3.new_url("warm")
    generate(SPEC, url, n_jobs=2, shard_size=SHARD, progress="none")
    assert bucket_digest(url) == tree_digest(local)


def test_ensure_dataset_generates_a_missing_bucket_run_once(s3, capsys):  # noqa: F811
    url = s3.new_url("ensure")
    res = trajlab.engine.ensure_dataset(url, SPEC, progress="none")
    assert res is not None and res.n_samples == SPEC.n_samples
    assert "does not exist: generating" in capsys.readouterr().out
    assert trajlab.engine.ensure_dataset(url, SPEC.replace(seed=99)) is None   # left as it is
    assert open_dataset(url).spec == SPEC
