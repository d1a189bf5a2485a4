"""Shared helpers for the engine tests."""

import hashlib
import os

import numpy as np
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_digest(run_dir, include_json=False):
    """sha256 of every data file of a run dir (arrays + annotations; format
    2: the shard objects, the annotations and with ``include_json`` the
    zarr.json documents)."""
    out = {}
    for root, _dirs, files in os.walk(run_dir):
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(root, f), run_dir)
            if f.endswith((".npy", ".jsonl", ".jsonl.zst")) or (
                    rel.startswith("data" + os.sep) and f.startswith("c.")) or (
                    include_json and f.endswith(".json")):
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


def small_run(tmp_path_factory, name, seed, n=40, frames=8, size=16, shard=8, fmt=None):
    """A finished run dir (n samples in shards of ``shard``, storage format
    ``fmt``) and the in-memory oracle for it, as a dict (dir, spec, videos,
    labels, ann)."""
    import trajlab

    spec = trajlab.DatasetSpec(n_samples=n, n_frames=frames, image_size=size, seed=seed)
    run_dir = tmp_path_factory.mktemp(name) / "run"
    trajlab.generate(spec, run_dir, n_jobs=1, shard_size=shard, progress="none",
                     format_version=fmt)
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


# ---------------------------------------------------------- both formats
#: Storage formats the guarantee tests run on (2 is the default).
FORMATS = (2, 1)


def layout_of(run_dir):
    from trajlab.storage import load_layout

    return load_layout(str(run_dir))[1]


def array_file(run_dir, name):
    """How messages name array ``name``: ``videos.npy`` (format 1) or
    ``data/videos`` (format 2)."""
    return layout_of(run_dir).arrays()[name][0]


def damage_sample(run_dir, name, sample, how="content", byte=100):
    """Change the stored bytes of ``sample`` in array ``name``.

    ``content``: one decoded byte differs, the storage stays well-formed
    (format 1: a flipped byte in the .npy; format 2: the shard's object
    re-encoded with that byte flipped), so only the checksum can tell.
    ``raw``: a stored byte inside the sample's bytes is flipped (format 2:
    inside its compressed clip or its shard's chunk, which no longer
    decodes). ``truncate``: the file or object holding it loses its end.
    """
    from trajlab import zstore

    run_dir = str(run_dir)
    layout = layout_of(run_dir)
    fname, shape, dt, hlen, per = layout.arrays()[name]
    shard = sample // layout.shard_size
    if layout.format_version == 1:
        path = os.path.join(run_dir, fname)
        if how == "truncate":
            os.truncate(path, os.path.getsize(path) - 1000)
            return path
        offset = hlen + sample * per + byte % per
        _flip_at(path, offset)
        return path
    path = zstore.object_path(run_dir, layout, name, shard)
    if how == "truncate":
        os.truncate(path, os.path.getsize(path) - 100)
        return path
    if how == "content":
        rows = zstore.read_shard(run_dir, layout, name, shard).copy()
        flat = rows.reshape(len(rows), -1).view(np.uint8)
        local = sample - shard * layout.shard_size
        flat[local, byte % flat.shape[1]] ^= 0xFF
        with open(path, "wb") as fh:
            fh.write(zstore.encode(layout, name, rows))
        return path
    with open(path, "rb") as fh:
        raw = fh.read()
    if name == "videos":
        tail = raw[-(layout.shard_size * 16 + 4):]
        off, ln = zstore.parse_index(tail, layout, shard, len(raw), path)
        j = sample - shard * layout.shard_size
        offset = int(off[j]) + int(ln[j]) // 2
    else:
        offset = len(raw) // 2
    _flip_at(path, offset)
    return path


def _flip_at(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def read_annotation_text(run_dir, shard):
    """The decoded text of a shard's annotations (either format)."""
    layout = layout_of(run_dir)
    path = layout.annotations_path(str(run_dir), shard)
    with open(path, "rb") as fh:
        raw = fh.read()
    if layout.format_version == 2:
        import zstandard

        from trajlab import zstore

        if zstore.CODECS[layout.codec][1] == "crc32c":    # the frame, then its crc32c
            raw = raw[:-4]
        raw = zstandard.ZstdDecompressor().decompress(raw)
    return raw.decode("utf-8")


def rewrite_params(run_dir, shard, change):
    """Replace a shard's parameter matrix (layout.annotations 'params') by
    ``change(rows)`` of a copy, stored well-formed as trajlab would."""
    from trajlab import zstore

    layout = layout_of(run_dir)
    rows = zstore.read_shard(str(run_dir), layout, "params", shard).copy()
    change(rows)
    with open(zstore.object_path(str(run_dir), layout, "params", shard), "wb") as fh:
        fh.write(zstore.encode(layout, "params", rows))


def write_annotation_text(run_dir, shard, text):
    """Replace a shard's annotations by ``text`` (well-formed storage: format
    2 compresses it as trajlab does)."""
    from trajlab import zstore

    layout = layout_of(run_dir)
    raw = text.encode("utf-8")
    if layout.format_version == 2:
        raw = zstore.compress(raw, layout.codec)
    with open(layout.annotations_path(str(run_dir), shard), "wb") as fh:
        fh.write(raw)
