"""Progress: one source, three views.

:class:`Progress` is fed by the parent process of a generation run. It
shows

* a bar — ``tqdm``'s widget under Jupyter, its text bar in a terminal;
* plain periodic lines when output is not a terminal (headless notebooks,
  logs, ``nohup``), every ``text_interval`` seconds;
* ``progress.json`` and ``PROGRESS.txt`` in the run dir, written
  atomically on updates (throttled) and by a heartbeat thread at least every
  ``heartbeat`` seconds, so a stale file reveals a dead job.

:func:`read_status` interprets those files for ``trajlab status``.

The view is chosen by ``mode``: ``'auto'`` (default) honours the
``TRAJLAB_PROGRESS`` environment variable (``bar``, ``widget``, ``text``,
``none``), then picks the widget under a Jupyter kernel, the bar on a
terminal and text otherwise.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time

from . import _validation as v
from .storage import (RunDirError, is_remote, overwrite_in_place, path_lexists, pid_alive,
                      read_json_file, utcnow, write_bytes_atomic)

__all__ = ["Progress", "read_status", "format_status", "MODES", "STALE_HEARTBEATS",
           "check_intervals"]

MODES = ("auto", "bar", "widget", "text", "none")
PROGRESS_JSON = "progress.json"
PROGRESS_TXT = "PROGRESS.txt"
#: progress.json is rewritten at least every heartbeat (15 s by default): a
#: running job whose file is older than this many heartbeats (45 s by
#: default) has stopped refreshing it and is reported stalled.
STALE_HEARTBEATS = 3
#: ... but never sooner than this many seconds (tiny heartbeats, busy hosts).
STALE_MIN_SECONDS = 2.0
#: Allowed heartbeat and text interval, seconds.
HEARTBEAT_RANGE = (0.1, 3600.0)
TEXT_INTERVAL_RANGE = (0.0, 86400.0)


def check_intervals(heartbeat, text_interval, owner):
    """Check ``heartbeat`` and ``text_interval`` with the template."""
    hb = v.check_float(heartbeat, "heartbeat", owner, *HEARTBEAT_RANGE)
    ti = v.check_float(text_interval, "text_interval", owner, *TEXT_INTERVAL_RANGE)
    return hb, ti
#: A running job with no completed shard for this long (or 20 times the mean
#: time between shards, if longer) is reported stalled even if it is alive.
STALL_AFTER = 600.0
#: A writer whose clock differs from its object store's by more than this
#: many seconds gets a warning in ``status`` (S3 times are whole seconds and
#: an upload takes a moment, so a few seconds are noise).
CLOCK_WARN_SECONDS = 30.0


def _in_jupyter():
    # A Jupyter kernel has imported IPython long before trajlab runs; where
    # it is not imported this is no kernel, and importing it only to learn
    # that cost each `trajlab generate` 0.13 s (python -X importtime).
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def resolve_mode(mode):
    if mode == "auto":
        mode = os.environ.get("TRAJLAB_PROGRESS", "auto").strip().lower() or "auto"
        if mode not in MODES:
            mode = "auto"
    if mode == "auto":
        if _in_jupyter():
            mode = "widget"
        elif hasattr(sys.stderr, "isatty") and sys.stderr.isatty():
            mode = "bar"
        else:
            mode = "text"
    return mode


def _shown(run_dir):
    return run_dir if is_remote(run_dir) else os.path.abspath(run_dir)


def _fmt_seconds(s):
    if s is None:
        return "unknown"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h {m:02d}m {sec:02d}s"
    if m:
        return f"{m}m {sec:02d}s"
    return f"{sec}s"


class Progress:
    """Progress of one generation run (parent process only).

    Parameters
    ----------
    run_dir : str or None
        Where ``progress.json`` and ``PROGRESS.txt`` go (None: no files).
    total : int
        Samples in the dataset.
    done : int
        Samples already complete (resumed runs).
    mode : {'auto', 'bar', 'widget', 'text', 'none'}
    heartbeat : float
        Maximum seconds between two writes of the progress files.
    text_interval : float
        Seconds between two plain-text lines.
    info : dict
        Extra fields for progress.json (e.g. fingerprint, shards).
    stream : file, default sys.stdout
        Where plain-text lines go.
    """

    def __init__(self, run_dir, total, done=0, *, mode="auto", heartbeat=15.0,
                 text_interval=30.0, file_interval=2.0, info=None, stream=None,
                 title="trajlab"):
        self.run_dir = run_dir
        self.total = v.check_int(total, "total", "Progress", 0)
        self.initial = v.check_int(done, "done", "Progress", 0)
        self.done = self.initial
        self.mode = resolve_mode(v.check_choice(mode, "mode", "Progress", MODES))
        self.heartbeat, self.text_interval = check_intervals(heartbeat, text_interval, "Progress")
        self.file_interval = v.check_float(file_interval, "file_interval", "Progress", 0.0, 3600.0)
        self.info = dict(info or {})
        self.stream = stream if stream is not None else sys.stdout
        self.title = title
        self.state = "running"
        self.message = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._bar = None
        self._t0 = None
        self._started_at = None
        self._last_file = 0.0
        self._last_text = 0.0
        self._checkpoints = 0
        self._last_checkpoint = None

    # ----------------------------------------------------------- numbers
    def snapshot(self):
        now = time.time()
        elapsed = now - self._t0 if self._t0 else 0.0
        new = self.done - self.initial
        rate = new / elapsed if elapsed > 0 and new > 0 else None
        remaining = self.total - self.done
        eta = remaining / rate if rate else (0.0 if remaining == 0 else None)
        snap = {
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "percent": round(100.0 * self.done / self.total, 2) if self.total else 100.0,
            "resumed_from": self.initial,
            "elapsed_seconds": round(elapsed, 2),
            "rate_samples_per_second": round(rate, 2) if rate else None,
            "eta_seconds": round(eta, 1) if eta is not None else None,
            "started_at": self._started_at,
            "updated_at": utcnow(),
            "updated_unix": round(now, 3),
            "heartbeat_seconds": self.heartbeat,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "message": self.message,
            "checkpoints": self._checkpoints,
            "last_checkpoint_unix": round(self._last_checkpoint or self._t0 or now, 3),
            "mean_checkpoint_seconds": (round(elapsed / self._checkpoints, 3)
                                        if self._checkpoints else None),
        }
        snap.update(self.info)
        return snap

    def text_line(self, snap=None):
        s = snap or self.snapshot()
        rate = s["rate_samples_per_second"]
        return (f"[{self.title}] {s['state']}: {s['done']:,} / {s['total']:,} "
                f"({s['percent']:.1f}%), elapsed {_fmt_seconds(s['elapsed_seconds'])}, "
                f"rate {rate if rate is not None else '-'} samples/s, "
                f"ETA {_fmt_seconds(s['eta_seconds'])}")

    # ------------------------------------------------------------- views
    def _write_files(self, snap, final=False):
        """Write both files atomically. The final state must get through even
        on a full disk: then each file is overwritten in place (it fits in
        the blocks the file already has) and nothing is left behind."""
        if not self.run_dir:
            return
        files = [(PROGRESS_JSON, (json.dumps(snap, indent=2, sort_keys=True) + "\n").encode()),
                 (PROGRESS_TXT, self._text(snap).encode())]
        for name, data in files:
            path = os.path.join(self.run_dir, name)
            try:
                write_bytes_atomic(path, data)
            except (OSError, RunDirError):
                if not final:
                    raise
                if not overwrite_in_place(path, data) and name == PROGRESS_JSON:
                    # shorter: drop the message detail until it fits
                    small = dict(snap, message=str(snap.get("message", ""))[:120])
                    overwrite_in_place(path, json.dumps(small, sort_keys=True).encode())
        self._last_file = time.time()

    def _text(self, snap):
        rate = snap["rate_samples_per_second"]
        text = (
            f"trajlab dataset generation progress\n"
            f"====================================\n"
            f"Run dir:     {_shown(self.run_dir)}\n"
            f"Fingerprint: {snap.get('fingerprint', '-')}\n"
            f"State:       {snap['state']}\n"
            f"Completed:   {snap['done']:,} / {snap['total']:,} ({snap['percent']:.1f}%)\n"
            f"Elapsed:     {_fmt_seconds(snap['elapsed_seconds'])}\n"
            f"Rate:        {rate if rate is not None else '-'} samples/s\n"
            f"ETA:         {_fmt_seconds(snap['eta_seconds'])}\n"
            f"Last update: {snap['updated_at']}\n"
            f"Process:     pid {snap['pid']} on {snap['host']}\n"
        )
        if snap.get("message"):
            text += f"Message:     {snap['message']}\n"
        return text

    def _emit_text(self, snap, force=False):
        now = time.time()
        if force or now - self._last_text >= self.text_interval:
            print(self.text_line(snap), file=self.stream, flush=True)
            self._last_text = now

    def _open_bar(self):
        if self.mode == "widget":
            try:
                from tqdm.notebook import tqdm as bar_cls
                import ipywidgets  # noqa: F401
            except ImportError:
                from tqdm import tqdm as bar_cls
        else:
            from tqdm import tqdm as bar_cls
        self._bar = bar_cls(total=self.total, initial=self.initial, unit="sample",
                            desc=self.title, dynamic_ncols=True, smoothing=0.1)

    def _heartbeat_loop(self):
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                snap = self.snapshot()
                try:
                    self._write_files(snap)
                except (OSError, RunDirError):
                    pass        # e.g. a full disk: keep beating, the run decides its fate
                if self.mode == "text":
                    self._emit_text(snap)

    # --------------------------------------------------------------- API
    def start(self, message=""):
        self._t0 = time.time()
        self._started_at = utcnow()
        self.message = message
        with self._lock:
            snap = self.snapshot()
            self._write_files(snap)
            if self.mode in ("bar", "widget"):
                self._open_bar()
            elif self.mode == "text":
                self._emit_text(snap, force=True)
        self._thread = threading.Thread(target=self._heartbeat_loop, name="trajlab-progress",
                                        daemon=True)
        self._thread.start()
        return self

    def update(self, n):
        """Record ``n`` more completed samples."""
        with self._lock:
            self.done += int(n)
            self._checkpoints += 1
            self._last_checkpoint = time.time()
            if self._bar is not None:
                self._bar.update(int(n))
            now = time.time()
            if now - self._last_file >= self.file_interval or self.done >= self.total:
                snap = self.snapshot()
                self._write_files(snap)
                if self.mode == "text":
                    self._emit_text(snap)
            elif self.mode == "text" and now - self._last_text >= self.text_interval:
                self._emit_text(self.snapshot())

    def close(self, state="finished", message=""):
        """Final state: 'finished', 'failed' or 'interrupted'."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self.state = state
            if message:
                self.message = message
            snap = self.snapshot()
            self._write_files(snap, final=True)
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if self.mode != "none":
                print(self.text_line(snap), file=self.stream, flush=True)
        return snap


def read_status(run_dir, stale_after=None):
    """Interpret a run dir's progress for ``trajlab status``.

    Returns
    -------
    status : dict
        The progress.json fields plus ``verdict`` — one of ``'missing'``,
        ``'running'``, ``'stalled'``, ``'finished'``, ``'incomplete'``
        (finished once, manifest since removed), ``'failed'``,
        ``'interrupted'`` — ``reason`` and ``age_seconds``.
    """
    path = os.path.join(run_dir, PROGRESS_JSON)
    complete = path_lexists(os.path.join(run_dir, "manifest.json")) if is_remote(run_dir) \
        else os.path.isfile(os.path.join(run_dir, "manifest.json"))
    try:
        snap = read_json_file(path, run_dir, PROGRESS_JSON)
        updated = _number(snap.get("updated_unix"), 0.0)
        age, slack, offset = time.time() - updated, 0.0, None
        if is_remote(run_dir):
            age, slack, offset = _store_age(path, age, updated)
    except FileNotFoundError:
        verdict = "finished" if complete else "missing"
        return {"verdict": verdict, "reason": f"no {PROGRESS_JSON} in {run_dir!r}",
                "age_seconds": None}
    except (OSError, RunDirError) as exc:
        return {"verdict": "missing", "reason": f"unreadable {PROGRESS_JSON}: {exc}",
                "age_seconds": None}
    snap["age_seconds"] = round(age, 1)
    state = snap.get("state")
    if stale_after is None:
        hb = _number(snap.get("heartbeat_seconds"), 15.0)
        stale_after = max(STALE_MIN_SECONDS, STALE_HEARTBEATS * hb)
    # only a fresh heartbeat of a live writer measures its clock: an old
    # object's LastModified may be a copy's or a restore's, not the upload's
    if offset is not None and abs(offset) > CLOCK_WARN_SECONDS and state == "running" \
            and _number(snap.get("updated_unix"), None) is not None and age <= stale_after:
        snap["writer_clock_offset_seconds"] = round(offset, 1)
        snap["warning"] = (
            f"the clock of the writer ({snap.get('host')}) is {_fmt_seconds(abs(offset))} "
            f"{'ahead of' if offset > 0 else 'behind'} the store's: the times it wrote "
            "(updated_at, started_at) are off by as much; the verdict, the age and the ETA "
            "use the store's clock and differences of the writer's own times")
    # the writer's clock only for a difference of its own times
    since_checkpoint = age + updated - _number(snap.get("last_checkpoint_unix"), updated)
    mean = _number(snap.get("mean_checkpoint_seconds"), 0.0)
    stall_after = max(STALL_AFTER, 20.0 * float(mean))
    if state == "running":
        same_host = snap.get("host") == socket.gethostname()
        if same_host and not pid_alive(snap.get("pid")):
            snap.update(verdict="stalled",
                        reason=f"process {snap.get('pid')} on this host is gone")
        elif age > stale_after + slack:
            snap.update(verdict="stalled",
                        reason=f"no update for {_fmt_seconds(age)} (> {_fmt_seconds(stale_after)})")
        elif since_checkpoint > stall_after:
            # the parent is alive (heartbeat) but no shard has completed for
            # far longer than shards usually take: hung workers
            snap.update(verdict="stalled",
                        reason=f"alive, but no shard completed for {_fmt_seconds(since_checkpoint)} "
                               f"(> {_fmt_seconds(stall_after)})")
        else:
            snap.update(verdict="running", reason="updated recently")
    elif state == "finished" and not complete:
        snap.update(verdict="incomplete",
                    reason="finished earlier, but the manifest is gone (repaired or damaged); "
                           "resume with `trajlab generate`")
    elif state in ("finished", "failed", "interrupted"):
        snap.update(verdict=state, reason=snap.get("message") or state)
    else:
        snap.update(verdict="missing", reason=f"unknown state {state!r}")
    return snap


def _store_age(path, fallback, written):
    """``(age, slack, offset)`` of the object ``path`` by the store's own
    clock (its LastModified against the Date of the store's answer), so
    that neither the writer's nor this host's clock matters; S3 gives whole
    seconds, hence a slack of a second. ``offset``: the writer's clock
    minus the store's, from ``written`` (the writer's time in the object)
    against LastModified (the upload's own seconds included). ``(fallback,
    0, None)`` if the store gives no answer (the object went away between
    the two requests, say)."""
    from .lease import CLOCK_RESOLUTION
    from .storage import _remote

    try:
        store, key = _remote(path)
        info = store.head(key)
        if info is None:
            return fallback, 0.0, None
        return (max(0.0, store.server_time(key) - info.last_modified), CLOCK_RESOLUTION,
                written - info.last_modified)
    except Exception:   # best effort: s3fs passes some botocore errors on as they are
        return fallback, 0.0, None


def _number(x, default):
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return default
    try:
        x = float(x)
    except OverflowError:       # an int beyond the float range
        return default
    return x if math.isfinite(x) else default


def format_status(run_dir, status):
    lines = [f"{run_dir}: {status['verdict'].upper()} ({status.get('reason', '')})"]
    if "done" in status:
        rate = status.get("rate_samples_per_second")
        lines.append(
            f"  Completed: {status['done']:,} / {status['total']:,} ({status['percent']:.1f}%)"
            f"  rate {rate if rate is not None else '-'} samples/s"
            f"  ETA {_fmt_seconds(status.get('eta_seconds'))}")
        lines.append(f"  Last update: {status.get('updated_at')} "
                     f"({_fmt_seconds(status.get('age_seconds'))} ago) by pid {status.get('pid')} "
                     f"on {status.get('host')}")
    if status.get("warning"):
        lines.append(f"  Warning: {status['warning']}")
    return "\n".join(lines)
