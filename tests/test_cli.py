"""Command line: generate/status/verify/info through `python -m trajlab`."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from trajlab import DatasetSpec, make_trajectories, open_dataset

from _util import run_cli, snapshot
from trajlab.storage import read_json


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    rd = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli("generate", rd, "-n", 50, "--n-frames", 8, "--image-size", 16, "--seed", 3,
                   "--classes", "linear,helical", "--shard-size", 8, "-j", 2, check=True)
    return rd, proc


def test_generate_writes_the_spec_it_was_given(cli_run):
    rd, proc = cli_run
    assert "Samples:      50 in 7 shards (7 generated now, 0 reused)" in proc.stdout
    spec = DatasetSpec(n_samples=50, n_frames=8, image_size=16, seed=3,
                       classes=("linear", "helical"))
    ds = open_dataset(rd)
    assert ds.spec == spec
    videos, labels = make_trajectories(50, spec=spec)
    np.testing.assert_array_equal(ds.videos, videos)


def test_rerun_without_spec_arguments_resumes_and_reports_complete(cli_run):
    rd, _ = cli_run
    proc = run_cli("generate", rd, check=True)
    assert "already complete - nothing to do" in proc.stdout


def test_info_and_status(cli_run):
    rd, _ = cli_run
    out = run_cli("info", rd, check=True).stdout
    assert "Classes:      linear, helical" in out
    assert "Class counts: linear=25, helical=25" in out
    assert "Shards:       7 of 8 samples" in out
    info = json.loads(run_cli("info", rd, "--json", check=True).stdout)
    assert info["manifest"]["class_counts"] == {"linear": 25, "helical": 25}
    # bytes on disk: the manifest's count is what the objects take
    objects = [p for p in Path(rd).rglob("*") if p.is_file()
               and (p.name.startswith("c.") or p.name.endswith(".jsonl.zst"))]
    stored = info["manifest"]["stored_bytes"]
    assert stored["total"] == sum(p.stat().st_size for p in objects) > 0
    raw = info["manifest"]["raw_bytes"]
    assert raw == 50 * sum(int(np.prod(a["shape"][1:])) * np.dtype(a["dtype"]).itemsize
                           for a in info["spec"]["layout"]["arrays"].values())
    assert info["manifest"]["compression_ratio"] == round(raw / stored["total"], 1) > 2
    assert (f"On disk:      {stored['total'] / 1e3:,.1f} kB ({info['manifest']['codec']}, zarr-v3), "
            f"{raw / 1e6:,.1f} MB decoded: {info['manifest']['compression_ratio']}x smaller") \
        in out
    st = run_cli("status", rd)
    assert st.returncode == 0 and "FINISHED" in st.stdout and "50 / 50" in st.stdout


def test_status_of_a_directory_without_progress(tmp_path):
    proc = run_cli("status", tmp_path)
    assert proc.returncode == 1 and "MISSING" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["-n", "0"], "The 'n_samples' parameter of DatasetSpec must be an int in the range [1, 100000000]. Got 0 instead."),
    (["--image-size", "4"], "The 'image_size' parameter of DatasetSpec must be an int in the range [16, 1024]. Got 4 instead."),
    (["--classes", "linear,zigzag"], "'zigzag'"),
    (["--splits", "0.5,0.5,0.5"], "The 'splits' parameter of DatasetSpec"),
    (["--style", "smear"], "The 'style' parameter of DatasetSpec must be one of {'dot', 'trail'}. Got 'smear' instead."),
    (["--shard-size", "many"], "The 'shard_size' parameter of generate must be an int"),
    (["-j", "0"], "The 'n_jobs' parameter of generate must be a non-zero int"),
])
def test_invalid_arguments_exit_2_and_leave_run_dir_unchanged(cli_run, args, message):
    rd, _ = cli_run
    before = snapshot(rd)
    proc = run_cli("generate", rd, *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert snapshot(rd) == before


def test_unknown_class_lists_valid_ones(tmp_path):
    proc = run_cli("generate", tmp_path / "r", "--classes", "zigzag")
    assert proc.returncode == 2
    assert "circular" in proc.stderr and "parabolic" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_missing_parent_directory(tmp_path):
    proc = run_cli("generate", tmp_path / "a" / "b", "-n", 5)
    assert proc.returncode == 2 and "parent directory exists" in proc.stderr


def test_spec_mismatch_via_cli(cli_run):
    rd, _ = cli_run
    before = snapshot(rd)
    proc = run_cli("generate", rd, "-n", 60)
    assert proc.returncode == 2 and "differing spec keys: classes, image_size, n_frames, n_samples, seed" in proc.stderr
    assert snapshot(rd) == before


def test_spec_file_argument(tmp_path, cli_run):
    rd, _ = cli_run
    proc = run_cli("generate", tmp_path / "copy", "--spec", os.path.join(rd, "spec.json"), "-j", 1,
                   check=True)
    assert "Samples:      50" in proc.stdout
    assert open_dataset(tmp_path / "copy").spec == open_dataset(rd).spec


def test_verify_on_a_non_run_dir(tmp_path):
    proc = run_cli("verify", tmp_path)
    assert proc.returncode == 1 and "BAD - " in proc.stdout
    assert "not a trajlab run directory" in proc.stdout


def test_status_of_notebook_run_folders(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rec = {"status": "running", "success": False, "notebook": "notebooks/02.ipynb",
           "command": "trajlab run notebooks/02.ipynb",
           "host": {"hostname": socket.gethostname(), "pid": dead.pid}}
    (tmp_path / "run.json").write_text(json.dumps(rec))
    proc = run_cli("status", tmp_path)
    assert proc.returncode == 1 and "STALLED" in proc.stdout and "re-run: trajlab run" in proc.stdout
    rec.update(status="failed", error={"summary": "ZeroDivisionError: boom"})
    (tmp_path / "run.json").write_text(json.dumps(rec))
    proc = run_cli("status", tmp_path)
    assert proc.returncode == 1 and "FAILED (ZeroDivisionError: boom)" in proc.stdout
    rec.update(status="succeeded", success=True, duration_seconds=3.5)
    (tmp_path / "run.json").write_text(json.dumps(rec))
    proc = run_cli("status", tmp_path)
    assert proc.returncode == 0 and "FINISHED (succeeded in 3.5 s)" in proc.stdout


# ------------------------------------------------ a plain resume never starts a dataset
def test_plain_resume_without_spec_json_refuses_to_start_a_dataset(tmp_path):
    rd = tmp_path / "typo"
    proc = run_cli("generate", rd)
    assert proc.returncode == 2
    assert "no spec.json" in proc.stderr and "--new" in proc.stderr
    assert "spec arguments" in proc.stderr
    assert not rd.exists()


def test_plain_resume_after_a_kill_before_spec_json_refuses(tmp_path):
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / ".lock").write_text(json.dumps({"program": "trajlab", "pid": 1, "host": "h",
                                          "since": "2024-01-01T00:00:00Z"}))
    before = snapshot(rd)
    proc = run_cli("generate", rd)
    assert proc.returncode == 2 and "no spec.json" in proc.stderr
    assert snapshot(rd) == before


def test_new_flag_starts_the_default_dataset(tmp_path, monkeypatch):
    import trajlab.cli as cli
    import trajlab.engine as eng

    seen = {}

    class Done:
        def summary(self):
            return "ok"

    monkeypatch.setattr(eng, "generate", lambda spec, run_dir, **kw: seen.update(spec=spec) or Done())
    assert cli.main(["generate", str(tmp_path / "new"), "--new", "--progress", "none"]) == 0
    assert seen["spec"] == DatasetSpec()


# ------------------------------------------------------------------ bounds
@pytest.mark.parametrize("args,message", [
    (["--n-frames", "10000000", "-n", "1"],
     "The 'n_frames' parameter of DatasetSpec must be an int in the range [2, 1024]. "
     "Got 10000000 instead."),
    (["--n-frames", str(10**9), "-n", "1"],
     "The 'n_frames' parameter of DatasetSpec must be an int in the range [2, 1024]. "
     "Got 1000000000 instead."),
    (["--classes", ""], "The 'classes' parameter of DatasetSpec must be a non-empty sequence"),
    (["--splits", ""], "The 'splits' parameter of generate must be three comma-separated"),
    (["--object-color", "0,0,0", "-n", "4"],
     "The 'object_color' parameter of DatasetSpec must be"),
])
def test_unbounded_or_empty_arguments_exit_2_quickly(tmp_path, args, message):
    proc = run_cli("generate", tmp_path / "r", *args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_spec_file_that_never_ends_is_refused(tmp_path):
    import resource

    def limit():       # today's code reads /dev/zero until memory runs out
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    proc = run_cli("generate", tmp_path / "r", "--spec", "/dev/zero", timeout=60,
                   preexec_fn=limit)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "The 'spec' parameter of generate must be a JSON file" in proc.stderr
    assert "not a regular file" in proc.stderr


# ----------------------------------------------------- damaged manifest counts
def test_info_does_not_print_counts_the_data_contradicts(cli_run, tmp_path):
    import shutil

    rd = tmp_path / "run"
    shutil.copytree(cli_run[0], rd)
    m = json.loads((rd / "manifest.json").read_text())
    m["class_counts"]["linear"] = 1001
    (rd / "manifest.json").write_text(json.dumps(m))
    proc = run_cli("info", rd)
    assert "linear=1001" not in proc.stdout and "Class counts:" not in proc.stdout
    assert proc.returncode == 1 and "Status:       DAMAGED" in proc.stdout
    assert "class_counts" in proc.stdout and "manifest.json" in proc.stdout
    proc = run_cli("verify", rd)
    assert proc.returncode == 1 and "class_counts" in proc.stdout


# ------------------------------------------------------- flags from the tables
def test_every_flag_of_the_parameter_tables_is_offered_and_reaches_its_owner(tmp_path,
                                                                           monkeypatch):
    import trajlab.cli as cli
    import trajlab.engine as eng
    from trajlab.spec import PARAMS

    seen = {}

    class Done:
        def summary(self):
            return "ok"

    monkeypatch.setattr(eng, "generate",
                        lambda spec, run_dir, **kw: seen.update(spec=spec, kw=kw) or Done())
    flags = {p.flag for p in {**PARAMS, **eng.GENERATE_PARAMS}.values() if p.flag}
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    assert all(f in help_text for f in flags)
    argv = ["generate", str(tmp_path / "r"), "--trail-length", "5", "--gravity", "3.5",
            "--background-color", "1,2,3", "--radius-mode", "constant", "-j", "2",
            "--heartbeat", "2", "--fsync", "--shard-size", "auto"]
    assert cli.main(argv) == 0
    assert seen["spec"] == DatasetSpec(trail_length=5, gravity=3.5, background_color=(1, 2, 3),
                                       radius_mode="constant")
    assert seen["kw"] == {"n_jobs": 2, "heartbeat": 2.0, "fsync": True, "shard_size": "auto"}


def test_a_bad_generate_parameter_in_the_table_form_exits_2(tmp_path, capsys):
    from trajlab.cli import main

    assert main(["generate", str(tmp_path / "r"), "--background-color", "1,2"]) == 2
    assert "The 'background_color' parameter of DatasetSpec" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:      # not three ints: refused while parsing
        main(["generate", str(tmp_path / "r"), "--background-color", "1,x,3"])
    assert info.value.code == 2
    assert ("The 'background_color' parameter of generate must be three comma-separated ints "
            "r,g,b. Got '1,x,3' instead.") in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "r"), "--new", "--heartbeat", "0"]) == 2
    assert ("The 'heartbeat' parameter of generate must be a finite float in the range "
            "[0.1, 3600]. Got 0.0 instead.") in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_command_line_uses_every_cpu_unless_j_is_given(tmp_path):
    # no joblib.parallel_config can be active around a command: None would mean 1 worker
    base = ["-n", 8, "--n-frames", 4, "--image-size", 16, "--shard-size", 4]
    run_cli("generate", tmp_path / "a", *base, check=True)
    run_cli("generate", tmp_path / "b", *base, "-j", 1, check=True)
    assert read_json(os.path.join(tmp_path / "a", "progress.json"))["n_jobs"] == -1
    assert read_json(os.path.join(tmp_path / "b", "progress.json"))["n_jobs"] == 1
