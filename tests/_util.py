"""Shared helpers for the engine tests."""

import hashlib
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_digest(run_dir, include_json=False):
    """sha256 of every data file of a run dir (arrays + annotations)."""
    out = {}
    for root, _dirs, files in os.walk(run_dir):
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(root, f), run_dir)
            if f.endswith(".npy") or f.endswith(".jsonl") or (include_json and f.endswith(".json")):
                with open(os.path.join(root, f), "rb") as fh:
                    out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out


def snapshot(run_dir):
    """Everything observable about a directory: names, sizes, mtimes, bytes."""
    out = {}
    for root, _dirs, files in os.walk(run_dir):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, run_dir)] = (st.st_size, st.st_mtime_ns,
                                                     hashlib.sha256(fh.read()).hexdigest())
    return out


def default_sigint():
    """preexec_fn for children that a test interrupts with SIGINT: a process
    started in the background by a shell inherits SIGINT ignored, and Python
    then never raises KeyboardInterrupt (the CI harness must not decide that)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args, check=False, timeout=300, **kw):
    """Run ``python -m trajlab ARGS`` and return the CompletedProcess."""
    env = dict(os.environ, TRAJLAB_PROGRESS="none")
    proc = subprocess.run([sys.executable, "-m", "trajlab", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"trajlab {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def small_run(tmp_path_factory, name, seed, n=40, frames=8, size=16, shard=8):
    """A finished run dir (n samples in shards of ``shard``) and the
    in-memory oracle for it, as a dict (dir, spec, videos, labels, ann)."""
    import trajlab

    spec = trajlab.DatasetSpec(n_samples=n, n_frames=frames, image_size=size, seed=seed)
    run_dir = tmp_path_factory.mktemp(name) / "run"
    trajlab.generate(spec, run_dir, n_jobs=1, shard_size=shard, progress="none")
    videos, labels, ann = trajlab.make_trajectories(n, spec=spec, return_annotations=True)
    return {"dir": str(run_dir), "spec": spec, "videos": videos, "labels": labels, "ann": ann}


def descendants(pid):
    """Process ids below ``pid`` (one scan of /proc)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    parent[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def alive(pid):
    """True while ``pid`` exists and is neither a zombie nor dead."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
