"""The dask path (trajlab.cluster): same bytes as loky and as the in-memory
generator, a killed worker, a killed parent + resume, an unreachable
scheduler, storage checks, and the docs/CLUSTER.md recipe run verbatim on
127.0.0.1. Everything runs on this machine (LocalCluster / local processes
with 2 workers)."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

distributed = pytest.importorskip("distributed")

from trajlab import (DatasetSpec, RunDirError, generate, make_trajectories,  # noqa: E402
                     open_dataset)
from trajlab.cluster import (SchedulerError, check_scheduler, check_shared_storage,  # noqa: E402
                             dask_backend)

from _util import REPO, run_cli, snapshot, tree_digest  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.timeout(180)]

SPEC = DatasetSpec(n_samples=600, n_frames=8, image_size=32, seed=5)
SHARD = 40                                                  # 15 shards
KILL_SPEC = DatasetSpec(n_samples=1440, n_frames=16, image_size=64, seed=9)
KILL_SHARD = 24                                             # 60 shards of ~15 ms


def _worker_env(client, name):
    """``name`` in each worker's own environment. (Not ``client.run(os.environ.get,
    name)``: that pickles this process's ``os.environ`` along with the method.)"""
    return set(client.run(lambda: os.environ.get(name)).values())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(cond, timeout=60, what="condition"):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        time.sleep(0.005)


def _records(rd):
    d = os.path.join(rd, "shards")
    return sorted(f for f in os.listdir(d) if f.endswith(".json")) if os.path.isdir(d) else []


def _worker_pids_of_records(rd):
    return {int(json.load(open(os.path.join(rd, "shards", f)))["worker"].rsplit(":", 1)[1])
            for f in _records(rd)}


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster with 2 worker processes (one thread each). dask's
    nannies write variables into os.environ: restored afterwards."""
    saved = dict(os.environ)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                  silence_logs=logging.ERROR) as lc, \
            distributed.Client(lc, set_as_default=False) as client:
        yield lc, client
    os.environ.clear()
    os.environ.update(saved)


def _loky(tmp_path_factory, spec, shard, name):
    rd = tmp_path_factory.mktemp(name) / "run"
    generate(spec, rd, n_jobs=2, shard_size=shard, backend="loky", progress="none")
    return rd, tree_digest(rd)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _loky(tmp_path_factory, SPEC, SHARD, "loky")


def _same_as_loky(rd, reference):
    """Bytes, records, manifest and progress match the loky run."""
    ref_rd, ref_digest = reference
    assert tree_digest(rd) == ref_digest
    assert _records(rd) == _records(ref_rd)
    for f in _records(rd):
        a, b = (json.load(open(os.path.join(d, "shards", f))) for d in (rd, ref_rd))
        assert {k: a[k] for k in ("xxh3_128", "rejections", "class_counts", "start", "stop")} == \
            {k: b[k] for k in ("xxh3_128", "rejections", "class_counts", "start", "stop")}
    m, mref = (json.load(open(os.path.join(d, "manifest.json"))) for d in (rd, ref_rd))
    m.pop("finished_at"), mref.pop("finished_at")
    assert m == mref and m["complete"]
    prog = json.load(open(os.path.join(rd, "progress.json")))
    assert prog["state"] == "finished" and prog["done"] == prog["total"] == SPEC.n_samples
    assert prog["backend"] == "dask"
    assert "State:       finished" in open(os.path.join(rd, "PROGRESS.txt")).read()


# ------------------------------------------------------------ equivalence
def test_dask_equals_loky_and_in_memory_generator(tmp_path, cluster, reference):
    lc, client = cluster
    rd = tmp_path / "run"
    res = generate(SPEC, rd, backend="dask", scheduler=lc.scheduler_address, shard_size=SHARD,
                   progress="none")
    assert res.shards_generated == 15 and not res.already_complete
    _same_as_loky(rd, reference)
    # the shards really ran on the dask workers, not in this process
    assert _worker_pids_of_records(rd) <= set(client.run(os.getpid).values())
    # ... and equal the sequential in-memory generator (the oracle)
    videos, labels, ann = make_trajectories(SPEC.n_samples, spec=SPEC, return_annotations=True)
    ds = open_dataset(rd, verify="full")
    np.testing.assert_array_equal(ds.videos, videos)
    np.testing.assert_array_equal(ds.labels, labels)
    for key in ("positions", "pixels", "depth", "radius", "K", "R", "t", "splits", "colors",
                "attempts"):
        np.testing.assert_array_equal(getattr(ds, key), ann[key], err_msg=key)
    assert list(ds.annotations()) == ann["records"]


def test_local_cluster_without_scheduler_is_started_and_closed(tmp_path, reference,
                                                             monkeypatch):
    # (the `cluster` fixture's nannies have set these in os.environ)
    for var in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "PYTHONHASHSEED"):
        monkeypatch.delenv(var, raising=False)
    with dask_backend(None, n_jobs=2) as client:
        assert sorted(client.ncores().values()) == [1, 1]
        assert all(a.startswith("tcp://127.0.0.1:") for a in client.ncores())
        assert _worker_env(client, "MALLOC_TRIM_THRESHOLD_") == {None}
    assert client.status == "closed"
    assert not {"MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "PYTHONHASHSEED"} & set(os.environ)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    rd = tmp_path / "run"
    generate(SPEC, rd, backend="dask", n_jobs=2, shard_size=SHARD, progress="none")
    _same_as_loky(rd, reference)
    used = _worker_pids_of_records(rd)
    assert os.getpid() not in used and not used & before     # ran in the new local workers
    _wait_for(lambda: {p.pid for p in me.children(recursive=True)} <= before, timeout=30,
              what="local cluster shut down")
    with pytest.raises(ValueError):
        distributed.default_client()                           # no client left behind


def test_dask_backend_context_and_existing_client(tmp_path, cluster, reference):
    lc, client = cluster
    with dask_backend(lc.scheduler_address) as c:             # by address: closed on exit
        assert sum(c.ncores().values()) == 2
        generate(SPEC, tmp_path / "a", shard_size=SHARD, progress="none")   # backend=None
    assert c.status == "closed"
    with dask_backend(client):                                 # a Client: used, not closed
        generate(SPEC, tmp_path / "b", shard_size=SHARD, progress="none")
    assert client.status == "running"
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b") == reference[1]


def test_local_workers_follow_n_jobs():
    from joblib import cpu_count

    from trajlab.cluster import _local_workers

    import joblib

    assert _local_workers(3) == 3
    assert _local_workers(-1) == cpu_count()
    assert _local_workers(None) == 1          # joblib's default outside a parallel_config
    with joblib.parallel_config(n_jobs=3):
        assert _local_workers(None) == 3
    assert _local_workers(-1000) == 1


# ------------------------------------------------------------ failures
@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory):
    return _loky(tmp_path_factory, KILL_SPEC, KILL_SHARD, "killref")[1]


@pytest.mark.slow
def test_worker_killed_mid_run_still_completes_identically(tmp_path, cluster, kill_reference):
    """SIGKILL one worker process while it is processing a shard; dask
    reschedules its task and the nanny restarts it."""
    lc, client = cluster
    client.wait_for_workers(2, timeout=30)
    pids = client.run(os.getpid)
    victim_addr = sorted(pids)[0]
    rd = str(tmp_path / "run")
    seen = {}

    def killer():
        t0 = time.time()
        while time.time() - t0 < 60:
            n = len(_records(rd))
            if n >= 3:
                busy = client.processing().get(victim_addr, ())
                if busy:
                    seen.update(records=n, busy=len(busy))
                    os.kill(pids[victim_addr], signal.SIGKILL)
                    return
            time.sleep(0.002)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    res = generate(KILL_SPEC, rd, backend="dask", scheduler=lc.scheduler_address,
                   shard_size=KILL_SHARD, progress="none")
    th.join(5)
    assert seen, "the worker was not killed"
    assert seen["records"] < 60 and seen["busy"] >= 1           # killed mid-run, mid-task
    assert res.shards_generated == 60
    _wait_for(lambda: not psutil.pid_exists(pids[victim_addr]), timeout=10, what="victim gone")
    assert tree_digest(rd) == kill_reference
    prog = json.load(open(os.path.join(rd, "progress.json")))
    assert prog["state"] == "finished" and prog["done"] == KILL_SPEC.n_samples
    client.wait_for_workers(2, timeout=30)                       # restarted by its nanny
    assert pids[victim_addr] not in client.run(os.getpid).values()


def test_unreachable_scheduler_fails_before_any_work(tmp_path, reference):
    addr = f"tcp://127.0.0.1:{_free_port()}"                     # nothing listens there
    rd = tmp_path / "run"
    t0 = time.time()
    with pytest.raises(SchedulerError, match=re.escape(
            f"Cannot reach the dask scheduler at {addr!r} (timeout 10 s)")) as info:
        generate(SPEC, rd, backend="dask", scheduler=addr, progress="none")
    assert time.time() - t0 < 5
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, ValueError)
    assert "'scheduler' parameter" in str(info.value) and "dask scheduler" in str(info.value)
    assert not rd.exists()                                       # not created
    # an existing (finished or partial) run dir is not changed at all
    partial = tmp_path / "partial"
    generate(SPEC.replace(n_samples=80), partial, n_jobs=1, shard_size=SHARD, progress="none")
    os.remove(partial / "manifest.json")
    os.remove(partial / "shards" / "00001.json")
    before = snapshot(partial)
    with pytest.raises(SchedulerError):
        generate(SPEC.replace(n_samples=80), partial, backend="dask", scheduler=addr,
                 progress="none")
    assert snapshot(partial) == before
    # the CLI: exit code 2, the message, nothing created
    proc = run_cli("generate", tmp_path / "cli", "-n", 10, "--backend", "dask",
                   "--scheduler", addr)
    assert proc.returncode == 2, proc.stderr
    assert "Cannot reach the dask scheduler" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cli").exists()


def test_silent_scheduler_times_out_and_scheduler_without_workers():
    # a port that accepts TCP connections but never speaks dask
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        addr = "tcp://127.0.0.1:%d" % srv.getsockname()[1]
        t0 = time.time()
        with pytest.raises(SchedulerError, match=r"Cannot reach .* \(timeout 1 s\)"):
            check_scheduler(addr, timeout=1)
        assert time.time() - t0 < 8
    with distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0",
                                  silence_logs=logging.ERROR) as empty:
        with pytest.raises(SchedulerError, match="has no workers .* `dask worker "):
            check_scheduler(empty.scheduler_address, timeout=1)


@pytest.mark.parametrize("bad,exc", [("", TypeError), (8786, TypeError)])
def test_bad_scheduler_argument(bad, exc):
    with pytest.raises(exc, match="'scheduler' parameter of generate must be a dask scheduler"):
        check_scheduler(bad)


def test_workers_must_see_the_same_run_dir(tmp_path, cluster, monkeypatch):
    """Pretend the workers mount another filesystem: they look at a sibling
    directory instead of the parent's run dir."""
    lc, client = cluster
    here, there = tmp_path / "run", tmp_path / "run-elsewhere"
    spec = SPEC.replace(n_samples=40)
    generate(spec, here, n_jobs=1, progress="none")
    check_shared_storage(client, here)                           # the real set-up passes

    def redirect(suffix):
        import trajlab.cluster as tc

        if not hasattr(tc, "_orig_probe"):
            tc._orig_probe = tc._probe_run_dir
        tc._probe_run_dir = (lambda p: tc._orig_probe(p + suffix)) if suffix else tc._orig_probe

    try:
        client.run(redirect, "-elsewhere")
        with pytest.raises(RunDirError, match=r"2 of 2 workers fail:\n.*cannot read .*spec.json"):
            check_shared_storage(client, here, timeout=0.5)
        # through generate: stopped before any shard is scheduled, reported as failed
        monkeypatch.setenv("TRAJLAB_DASK_TIMEOUT", "1")
        new = tmp_path / "new"
        with pytest.raises(RunDirError, match="must be on storage that every dask worker"):
            generate(spec, new, backend="dask", scheduler=lc.scheduler_address, progress="none")
        assert _records(new) == [] and not [f for f in os.listdir(new / "data" / "params")
                                            if f.startswith("c.")]
        assert json.load(open(new / "progress.json"))["state"] == "failed"
        time.sleep(1.1)                  # another run of the same spec, another created_at
        generate(spec, there, n_jobs=1, progress="none")
        with pytest.raises(RunDirError, match="sees a different .*spec.json"):
            check_shared_storage(client, here, timeout=0.5)
    finally:
        client.run(redirect, "")


# ------------------------------------------- the docs/CLUSTER.md recipe
def _recipe(name):
    """The ```bash block after ``<!-- recipe:NAME -->`` in docs/CLUSTER.md."""
    text = open(os.path.join(REPO, "docs", "CLUSTER.md"), encoding="utf-8").read()
    m = re.search(r"<!-- recipe:%s -->\s*```bash\n(.*?)```" % name, text, re.S)
    assert m, f"docs/CLUSTER.md has no recipe:{name} block"
    return m.group(1)


class _Recipe:
    """Runs the recipe's blocks as bash scripts, with the settings of step 1
    pointing at 127.0.0.1 and free ports."""

    def __init__(self, tmp):
        port = _free_port()
        env = {k: v for k, v in os.environ.items()
               if k not in ("MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED", "OMP_NUM_THREADS",
                            "__DASK_PARENT_PID")}   # as in a fresh shell
        self.env = dict(env, SCHED_HOST="127.0.0.1", SCHED_PORT=str(port),
                        DASH_PORT=str(_free_port()), NWORKERS="1", TRAJLAB_PROGRESS="text",
                        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
        self.address = f"tcp://127.0.0.1:{port}"
        self.tmp = tmp
        self.procs = []

    def start(self, name):
        """A long-running block (scheduler, worker), in its own session."""
        log = open(os.path.join(self.tmp, f"{name}-{len(self.procs)}.log"), "w")
        self.procs.append(subprocess.Popen(["bash", "-c", _recipe(name)], env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def run(self, name, **env):
        return subprocess.run(["bash", "-c", _recipe(name)], env=dict(self.env, **env),
                              capture_output=True, text=True, timeout=300)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture(scope="module")
def recipe_cluster(tmp_path_factory):
    """`dask scheduler` + 2 x `dask worker` started with the docs' commands."""
    r = _Recipe(str(tmp_path_factory.mktemp("recipe")))
    try:
        r.start("scheduler")
        _wait_for(lambda: _port_open(int(r.env["SCHED_PORT"])), timeout=60,
                  what="dask scheduler up")
        r.start("worker")                # "on every worker host": two of them
        r.start("worker")
        with distributed.Client(r.address, set_as_default=False, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        yield r
    finally:
        r.stop()


@pytest.mark.slow
def test_recipe_commands_on_localhost(tmp_path, tmp_path_factory, recipe_cluster):
    r = recipe_cluster
    rd = str(tmp_path / "run")
    n = 1000
    proc = r.run("generate", RUN_DIR=rd, N_SAMPLES=str(n))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(2 generated now, 0 reused)" in proc.stdout            # auto shard size: 512 clips
    ref = _loky(tmp_path_factory, DatasetSpec(n_samples=n, n_frames=16, image_size=64, seed=0),
                "auto", "recipe-loky")
    assert tree_digest(rd) == ref[1]
    with distributed.Client(r.address, set_as_default=False) as c:
        assert _worker_pids_of_records(rd) <= set(c.run(os.getpid).values())
        # the recipe's export did unset dask's malloc setting in the workers
        assert _worker_env(c, "MALLOC_TRIM_THRESHOLD_") == {None}
    st = r.run("status", RUN_DIR=rd)
    assert st.returncode == 0 and "FINISHED" in st.stdout, st.stdout + st.stderr
    prog = json.load(open(os.path.join(rd, "progress.json")))
    assert prog["state"] == "finished" and prog["backend"] == "dask"
    assert run_cli("verify", rd).returncode == 0


@pytest.mark.slow
def test_parent_killed_then_resumed_is_byte_identical(tmp_path, recipe_cluster, kill_reference):
    """kill -9 the `trajlab generate` process mid-run, then run the same
    command again: it resumes on the cluster and the bytes are identical."""
    r = recipe_cluster
    rd = str(tmp_path / "run")
    args = ["generate", rd, "-n", str(KILL_SPEC.n_samples), "--n-frames", "16",
            "--image-size", "64", "--seed", "9", "--shard-size", str(KILL_SHARD),
            "--backend", "dask", "--scheduler", r.address]
    env = dict(os.environ, TRAJLAB_PROGRESS="none")
    proc = subprocess.Popen([sys.executable, "-m", "trajlab", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_for(lambda: len(_records(rd)) >= 5 or proc.poll() is not None, timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not os.path.exists(os.path.join(rd, "manifest.json")), "killed too late"
    kept = len(_records(rd))
    st = r.run("status", RUN_DIR=rd)
    assert st.returncode == 1 and "STALLED" in st.stdout, st.stdout
    done = run_cli(*args, check=True)
    m = re.search(r"\((\d+) generated now, (\d+) reused\)", done.stdout)
    assert m and int(m.group(2)) == kept and int(m.group(1)) == 60 - kept
    assert tree_digest(rd) == kill_reference
    assert r.run("status", RUN_DIR=rd).returncode == 0
    assert run_cli("verify", rd).returncode == 0
