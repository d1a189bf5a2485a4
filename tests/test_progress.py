"""Progress views and status interpretation."""

import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from trajlab.progress import Progress, format_status, read_status, resolve_mode
from trajlab.storage import write_json_atomic


def test_text_mode_prints_periodic_lines_and_writes_files(tmp_path):
    out = io.StringIO()
    p = Progress(str(tmp_path), total=1000, done=200, mode="text", text_interval=0.0,
                 file_interval=0.0, info={"fingerprint": "abc"}, stream=out).start()
    time.sleep(0.05)
    p.update(300)
    snap = json.load(open(tmp_path / "progress.json"))
    assert snap["done"] == 500 and snap["total"] == 1000 and snap["percent"] == 50.0
    assert snap["state"] == "running" and snap["resumed_from"] == 200
    assert snap["rate_samples_per_second"] > 0 and snap["eta_seconds"] > 0
    assert snap["pid"] == os.getpid() and snap["host"] == socket.gethostname()
    assert snap["fingerprint"] == "abc"
    final = p.close("finished")
    assert final["state"] == "finished"
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[trajlab] running: 200 / 1,000 (20.0%)")
    assert "500 / 1,000 (50.0%)" in lines[1]
    assert lines[-1].startswith("[trajlab] finished: 500 / 1,000")
    txt = open(tmp_path / "PROGRESS.txt").read()
    assert "Completed:   500 / 1,000 (50.0%)" in txt and "State:       finished" in txt


def test_heartbeat_refreshes_file_without_updates(tmp_path):
    p = Progress(str(tmp_path), total=10, mode="none", heartbeat=0.1).start()
    t1 = json.load(open(tmp_path / "progress.json"))["updated_unix"]
    time.sleep(0.5)
    t2 = json.load(open(tmp_path / "progress.json"))["updated_unix"]
    p.close("interrupted", message="stopped by user")
    assert t2 > t1
    st = read_status(str(tmp_path))
    assert st["verdict"] == "interrupted" and st["reason"] == "stopped by user"


class _Stream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("env", [None, "bogus", "", "auto"])
def test_mode_resolution_detects_jupyter_then_a_terminal(monkeypatch, env):
    import trajlab.progress as progress

    if env is None:
        monkeypatch.delenv("TRAJLAB_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("TRAJLAB_PROGRESS", env)     # not a mode: detection decides
    monkeypatch.setattr(progress, "_in_jupyter", lambda: False)
    monkeypatch.setattr(progress.sys, "stderr", _Stream(True))
    assert resolve_mode("auto") == "bar"
    monkeypatch.setattr(progress.sys, "stderr", _Stream(False))
    assert resolve_mode("auto") == "text"
    monkeypatch.setattr(progress, "_in_jupyter", lambda: True)
    assert resolve_mode("auto") == "widget"
    assert resolve_mode("none") == "none" and resolve_mode("bar") == "bar"


def test_jupyter_is_detected_from_the_running_kernel_without_importing_ipython(monkeypatch):
    import types

    import trajlab.progress as progress

    class Shell:
        def __init__(self, config):
            self.config = config

    fake = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert progress._in_jupyter() is False                # no get_ipython
    fake.get_ipython = lambda: None                       # plain Python with IPython imported
    assert progress._in_jupyter() is False
    fake.get_ipython = lambda: Shell({"TerminalIPythonApp": {}})    # the IPython terminal
    assert progress._in_jupyter() is False
    fake.get_ipython = lambda: Shell({"IPKernelApp": {"connection_file": "k.json"}})
    assert progress._in_jupyter() is True
    # a process that has not imported IPython is no kernel, and the check
    # does not import it (0.13 s of every command-line run)
    code = ("import sys, trajlab.progress as p; r = p.resolve_mode('auto'); "
            "print(r, 'IPython' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TRAJLAB_PROGRESS": "auto"}, check=True).stdout
    assert out.split() == ["text", "False"]


def test_mode_resolution_follows_the_environment(monkeypatch):
    import trajlab.progress as progress

    monkeypatch.setattr(progress, "_in_jupyter", lambda: True)
    monkeypatch.setattr(progress.sys, "stderr", _Stream(True))
    for env, mode in (("text", "text"), ("  NONE ", "none"), ("bar", "bar")):
        monkeypatch.setenv("TRAJLAB_PROGRESS", env)
        assert resolve_mode("auto") == mode
        assert resolve_mode("widget") == "widget"     # an explicit mode wins


def _fake(tmp_path, **kw):
    snap = {"state": "running", "done": 5, "total": 10, "percent": 50.0,
            "updated_unix": time.time(), "updated_at": "x", "heartbeat_seconds": 15,
            "pid": os.getpid(), "host": socket.gethostname()}
    snap.update(kw)
    write_json_atomic(tmp_path / "progress.json", snap)


def test_status_running_when_fresh_and_owner_alive(tmp_path):
    _fake(tmp_path)
    st = read_status(str(tmp_path))
    assert st["verdict"] == "running"
    assert "RUNNING" in format_status("d", st)


def test_status_stalled_when_pid_is_gone(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _fake(tmp_path, pid=dead.pid)
    st = read_status(str(tmp_path))
    assert st["verdict"] == "stalled" and str(dead.pid) in st["reason"]


def test_status_stalled_when_file_is_stale(tmp_path):
    _fake(tmp_path, host="some-other-host", updated_unix=time.time() - 600)
    st = read_status(str(tmp_path))
    assert st["verdict"] == "stalled" and "no update for 10m" in st["reason"]
    _fake(tmp_path, host="some-other-host", updated_unix=time.time() - 30)
    assert read_status(str(tmp_path))["verdict"] == "running"


@pytest.mark.parametrize("state", ["failed", "interrupted"])
def test_status_final_states(tmp_path, state):
    _fake(tmp_path, state=state, message="m")
    assert read_status(str(tmp_path))["verdict"] == state


def test_status_stalled_when_alive_but_no_shard_completes(tmp_path):
    now = time.time()
    _fake(tmp_path, last_checkpoint_unix=now - 700, mean_checkpoint_seconds=2.0)
    st = read_status(str(tmp_path))
    assert st["verdict"] == "stalled" and "no shard completed for 11m" in st["reason"]
    # slow shards (mean 60 s) get 20x that before being called stalled
    _fake(tmp_path, last_checkpoint_unix=now - 700, mean_checkpoint_seconds=60.0)
    assert read_status(str(tmp_path))["verdict"] == "running"


@pytest.mark.parametrize("field", ["updated_unix", "last_checkpoint_unix",
                                   "mean_checkpoint_seconds", "heartbeat_seconds"])
def test_status_takes_an_int_beyond_the_float_range_as_absent(tmp_path, field):
    """A time field holding a 310-digit JSON integer is no number there: the
    status is read as if the field were missing, never an OverflowError."""
    _fake(tmp_path)
    snap = json.loads((tmp_path / "progress.json").read_text())
    snap.pop(field, None)
    write_json_atomic(tmp_path / "progress.json", snap)
    as_missing = read_status(str(tmp_path))
    _fake(tmp_path, **{field: 10 ** 309})
    st = read_status(str(tmp_path))
    assert st["verdict"] == as_missing["verdict"]
    assert st["verdict"] == ("stalled" if field == "updated_unix" else "running")
    assert format_status("d", st).split("\n")[0] == format_status("d", as_missing).split("\n")[0]


def test_status_incomplete_when_finished_run_lost_its_manifest(tmp_path):
    _fake(tmp_path, state="finished", message="dataset complete")
    st = read_status(str(tmp_path))
    assert st["verdict"] == "incomplete" and "manifest is gone" in st["reason"]
    (tmp_path / "manifest.json").write_text("{}")
    assert read_status(str(tmp_path))["verdict"] == "finished"


def test_checkpoint_fields(tmp_path):
    p = Progress(str(tmp_path), total=10, mode="none", file_interval=0.0).start()
    time.sleep(0.02)
    p.update(5)
    snap = json.load(open(tmp_path / "progress.json"))
    p.close()
    assert snap["checkpoints"] == 1 and snap["mean_checkpoint_seconds"] > 0
    assert abs(snap["last_checkpoint_unix"] - time.time()) < 5


def test_status_stale_after_three_missed_heartbeats(tmp_path):
    """progress.json is refreshed at least every heartbeat (15 s): a file
    older than three heartbeats means a stopped or dead writer."""
    _fake(tmp_path, updated_unix=time.time() - 50)
    st = read_status(str(tmp_path))
    assert st["verdict"] == "stalled" and "no update for 50s (> 45s)" in st["reason"]
    _fake(tmp_path, updated_unix=time.time() - 40)
    assert read_status(str(tmp_path))["verdict"] == "running"
    _fake(tmp_path, updated_unix=time.time() - 5, heartbeat_seconds=1.0)
    assert read_status(str(tmp_path))["verdict"] == "stalled"


def test_sigstopped_writer_is_reported_stalled_then_running_again(tmp_path):
    import signal

    code = ("import time; from trajlab.progress import Progress\n"
            f"p = Progress({str(tmp_path)!r}, total=10, mode='none', heartbeat=0.5).start()\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        t0 = time.time()
        while not (tmp_path / "progress.json").exists() and time.time() - t0 < 30:
            time.sleep(0.05)
        assert read_status(str(tmp_path))["verdict"] == "running"
        proc.send_signal(signal.SIGSTOP)
        time.sleep(2.5)
        st = read_status(str(tmp_path))
        assert st["verdict"] == "stalled" and "no update for" in st["reason"]
        proc.send_signal(signal.SIGCONT)
        time.sleep(1.5)
        assert read_status(str(tmp_path))["verdict"] == "running"
    finally:
        proc.kill()
        proc.wait()


def test_final_state_is_recorded_when_the_disk_is_full(tmp_path, monkeypatch):
    """No room for a new file: the final state is written over the old file
    in place (it fits in the blocks it already has), and no temporary file
    is left behind."""
    import errno

    from trajlab import storage

    p = Progress(str(tmp_path), total=10, mode="none").start()
    real = os.fdopen

    class Full:
        """A temporary file on a full disk: every write fails."""

        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            self.fh.flush()

        def fileno(self):
            return self.fh.fileno()

    def fdopen(fd, *args, **kwargs):
        fh = real(fd, *args, **kwargs)
        return Full(fh) if ".trajlab-tmp." in os.readlink(f"/proc/self/fd/{fd}") else fh

    monkeypatch.setattr(storage.os, "fdopen", fdopen)
    p.close("failed", message="OSError: [Errno 28] No space left on device")
    st = read_status(str(tmp_path))
    assert st["verdict"] == "failed" and "No space left" in st["reason"]
    assert "State:       failed" in (tmp_path / "PROGRESS.txt").read_text()
    assert sorted(os.listdir(tmp_path)) == ["PROGRESS.txt", "progress.json"]


@pytest.mark.parametrize("kwargs,match", [
    ({"heartbeat": 0}, r"'heartbeat' parameter of Progress must be a finite float in the range "
                       r"\[0.1, 3600\]\. Got 0.0 instead"),
    ({"text_interval": "x"}, r"'text_interval' parameter of Progress must be a finite float"),
])
def test_progress_intervals_are_checked(tmp_path, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Progress(str(tmp_path), total=10, mode="none", **kwargs)
