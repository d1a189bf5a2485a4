"""The run directory format: lock, atomic writes, temporary names, spec.json
validation on read, array headers."""

import json
import os
import socket
import subprocess
import sys

import pytest

import trajlab
from trajlab import DatasetSpec, RunDirError, generate
from trajlab import storage
from trajlab.storage import RunLayout, RunLock, load_layout, write_json_atomic

SPEC = DatasetSpec(n_samples=24, n_frames=4, image_size=16, seed=2)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    rd = tmp_path_factory.mktemp("pristine") / "run"
    generate(SPEC, rd, n_jobs=1, shard_size=8, progress="none")
    return rd


@pytest.fixture()
def run(tmp_path, pristine):
    import shutil

    rd = tmp_path / "run"
    shutil.copytree(pristine, rd, symlinks=True)
    return rd


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ lock
def test_lock_refuses_a_symlink_and_leaves_its_target_alone(run, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch\n")
    os.remove(run / ".lock")
    os.symlink(precious, run / ".lock")
    with pytest.raises(RunDirError, match=r"\.lock.*symbolic link"):
        RunLock(str(run)).acquire()
    assert precious.read_text() == "do not touch\n"


def test_lock_records_its_owner(run):
    with RunLock(str(run)):
        rec = json.loads((run / ".lock").read_text())
    assert rec["program"] == "trajlab" and rec["pid"] == os.getpid()
    assert rec["host"] == socket.gethostname()


# ---------------------------------------------------------- atomic writes
def test_atomic_write_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    os.symlink(precious, tmp_path / "progress.json")
    write_json_atomic(tmp_path / "progress.json", {"a": 1})
    assert precious.read_text() == "mine"
    assert not os.path.islink(tmp_path / "progress.json")
    assert json.loads((tmp_path / "progress.json").read_text()) == {"a": 1}


def test_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"bad": object()})
    assert os.listdir(tmp_path) == []


def test_temporary_names_carry_prefix_host_and_pid(tmp_path):
    name = os.path.basename(storage.temp_path(str(tmp_path / "spec.json")))
    owner = storage.temp_owner(name)
    assert owner == ("spec.json", storage.HOST, os.getpid())
    assert storage.temp_owner("draft.tmp-backup") is None
    assert storage.temp_owner("spec.json.tmp-4242") is None


def test_stale_temporaries_removed_only_when_provably_ours_and_dead(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    token = "0123abcd"
    ours_dead = f".spec.json.trajlab-tmp.{storage.HOST}.{dead}.{token}"
    ours_alive = f".spec.json.trajlab-tmp.{storage.HOST}.{alive}.{token}"
    other_host = f".spec.json.trajlab-tmp.elsewhere-host.{dead}.{token}"
    foreign = ["draft.tmp-backup", "spec.json.tmp-4242", "notes.trajlab-tmp"]
    for n in [ours_dead, ours_alive, other_host, *foreign]:
        (tmp_path / n).write_text("x")
    removed = storage.remove_stale_temps(str(tmp_path))
    assert removed == [ours_dead]
    assert sorted(os.listdir(tmp_path)) == sorted([ours_alive, other_host, *foreign])


# ------------------------------------------------------------ array files
def test_preallocated_headers_are_those_numpy_writes(tmp_path):
    """The files trajlab creates are byte-identical to numpy's open_memmap."""
    from numpy.lib.format import open_memmap

    layout = RunLayout(SPEC, 8, format_version=1)
    os.makedirs(tmp_path / "run")
    layout.preallocate(str(tmp_path / "run"))
    for name, (fname, shape, dt, hlen, per) in layout.arrays().items():
        ref = tmp_path / f"ref-{fname}"
        mm = open_memmap(ref, mode="w+", dtype=dt, shape=shape)
        del mm
        assert (tmp_path / "run" / fname).read_bytes() == ref.read_bytes(), name


@pytest.mark.parametrize("fmt,name", [(1, "videos.npy"), (2, "data"), (2, "data/videos"),
                                      (2, "data/zarr.json"), (2, "data/videos/zarr.json")])
def test_preallocate_refuses_to_write_through_symlinks(tmp_path, fmt, name):
    precious = tmp_path / "precious"
    precious.write_bytes(b"mine")
    rd = tmp_path / "run"
    (rd / os.path.dirname(name)).mkdir(parents=True)
    os.symlink(precious, rd / name)
    with pytest.raises(RunDirError, match="symbolic link"):
        RunLayout(SPEC, 8, format_version=fmt).preallocate(str(rd))
    assert precious.read_bytes() == b"mine"


# ------------------------------------------------- spec.json read checks
def _edit_spec(rd, edit):
    doc = json.loads((rd / "spec.json").read_text())
    edit(doc)
    (rd / "spec.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("value,exc_text", [
    (0, "Got 0 instead"), (-1, "Got -1 instead"), (True, "Got True instead"),
    (1.5, "Got 1.5 instead"), ("8", "Got '8' instead"),
])
def test_bad_shard_size_in_spec_json_is_refused_with_the_template(run, value, exc_text):
    _edit_spec(run, lambda d: d["layout"].__setitem__("shard_size", value))
    with pytest.raises(RunDirError, match=r"The 'layout.shard_size' parameter of spec.json in .* "
                                          r"must be an int in the range \[1, 1048576\]\. "
                                          + exc_text):
        load_layout(str(run))


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["spec"].__setitem__("n_frames", 0),
     r"The 'n_frames' parameter of DatasetSpec must be an int in the range \[2, 1024\]"),
    (lambda d: d["spec"].__setitem__("n_samples", 10**9),
     r"The 'n_samples' parameter of DatasetSpec must be an int in the range \[1, 100000000\]"),
    (lambda d: d["layout"]["arrays"]["videos"].__setitem__("header_bytes", 64),
     r"The 'layout' parameter of spec.json in .* must be the layout trajlab derives from the "
     r"spec.*arrays.videos.header_bytes"),
    (lambda d: d.__setitem__("format_version", True), "version True"),
    (lambda d: d.__setitem__("fingerprint", "0" * 16), "inconsistent"),
    (lambda d: d.__setitem__("probe_sha256", 5),
     "The 'probe_sha256' parameter of spec.json in .* must be"),
])
def test_damaged_spec_json_is_refused_with_the_template(run, edit, match):
    _edit_spec(run, edit)
    with pytest.raises(RunDirError, match=match):
        load_layout(str(run))


@pytest.mark.parametrize("content,match", [
    (b"{not json", r"The 'spec.json' file of run directory .* must be a JSON object.*Got "
                   r"invalid JSON \(Expecting property name"),
    (b"[1, 2]", r"must be a JSON object.*Got a list instead"),
    (b"\xff\xfe", r"Got invalid JSON \(.*utf-8"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b" " * (2 << 20), r"must be a JSON object of at most 1 MiB.*Got 2097152 bytes"),
])
def test_unreadable_spec_json_is_refused_with_the_template(run, content, match):
    (run / "spec.json").write_bytes(content)
    with pytest.raises(RunDirError, match=match):
        load_layout(str(run))


def test_spec_json_that_is_not_a_regular_file_is_refused(run):
    os.remove(run / "spec.json")
    os.mkfifo(run / "spec.json")          # a reader that opened it would block forever
    with pytest.raises(RunDirError, match="not a regular file"):
        load_layout(str(run))


def test_bounds_are_documented_in_one_place():
    from trajlab import _validation as v

    assert (v.MAX_N_SAMPLES, v.MAX_N_FRAMES, v.MAX_IMAGE_SIZE, v.MAX_SHARD_SIZE,
            v.MAX_N_SHARDS) == (10**8, 1024, 1024, 2**20, 10**6)
    fmt = open(os.path.join(os.path.dirname(trajlab.__file__), "..", "docs", "FORMAT.md")).read()
    for text in ("100,000,000", "1,024", "1,048,576", "1,000,000"):
        assert text in fmt


def test_import_trajlab_works_without_fcntl():
    """fcntl exists on POSIX only: it is imported where a run dir's lock is
    taken, so the package (specs, make_trajectories, reading) imports elsewhere."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['fcntl'] = None\n"      # `import fcntl` now fails
            "import trajlab, trajlab.cli, trajlab.notebooks, trajlab.export\n"
            "v, y = trajlab.make_trajectories(4, n_frames=3, image_size=16)\n"
            "print(v.shape, 'fcntl' in sys.modules and sys.modules['fcntl'] is None)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(4, 3, 3, 16, 16) True"
