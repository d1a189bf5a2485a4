"""Run a notebook headlessly with papermill and keep the run as evidence.

:func:`run_notebook` (and ``trajlab run``, :mod:`trajlab.notebook_cli`)
execute a parameterised notebook and write::

    runs/<UTC start YYYYmmddTHHMMSSZ>_<notebook stem>_<git sha7 or 'nogit'>[-dirty]/
        <notebook name>   the executed notebook (autosaved while it runs)
        run.json          parameters, git, versions, host, timing, status, fingerprint
        SUCCESS           empty; only when the run succeeded

Conventions
-----------
Root and working directory
    The *root* of a notebook is the parent of its folder when that folder
    is called ``notebooks`` (the repository layout: ``<repo>/notebooks/x.ipynb``
    has root ``<repo>``), otherwise the notebook's own folder. The kernel
    runs with the root as its working directory, so relative paths in
    notebooks (``runs/...``, ``data/...``) mean the same thing whoever
    launches the run and from wherever. A relative ``runs_dir`` is taken
    relative to the root too.
Parameters
    Checked before anything runs against the notebook's cell tagged
    ``parameters`` (names, annotated types, defaults, via
    :func:`papermill.inspect_notebook`): an unknown name or a value of the
    wrong type raises and creates no run folder. ``run.json`` records all
    parameters (defaults merged with the overrides) and the overrides alone.
Paths
    ``run.json`` and the executed notebook's metadata hold paths relative
    to the root (``notebooks/01_explore_trajectories.ipynb``); a run
    folder outside the root is named relative to the parent of
    ``runs_dir``. Absolute prefixes of the root, of ``sys.prefix`` and of
    the home directory are also scrubbed from the notebook's text outputs
    (tracebacks, warnings).
Progress
    The kernel gets ``TRAJLAB_PROGRESS=text`` (the generation engine then
    prints plain text progress lines), and papermill saves the output
    notebook at most every ``autosave_seconds`` while cells produce output,
    so a long run can be watched by reading that file. ``run.json`` is
    written with ``"status": "running"`` when the run starts.
Success
    A run succeeded when every cell ran without error. Then ``run.json``
    has ``"success": true`` and ``"status": "succeeded"``, the run folder
    holds an empty ``SUCCESS`` file, and the executed notebook ends with a
    markdown cell saying so and carries ``metadata.trajlab.success = true``.
    Failures get ``false``/``"failed"``, an error summary, no ``SUCCESS``
    file, and a non-zero exit status from :func:`cli_run`.
Dataset fingerprint
    Taken from ``<run_dir>/spec.json`` (key ``"fingerprint"``) when the
    notebook has a ``run_dir`` parameter (or any ``*_dir`` parameter)
    pointing at a dataset, otherwise from a ``fingerprint: <hex>`` line in
    the notebook's outputs; ``null`` if neither exists.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ._validation import fail
from .storage import pid_alive, write_text_atomic
from .notebook_params import notebook_parameters, validate_parameters

__all__ = ["RunResult", "run_notebook", "read_run_status", "notebook_root", "notebook_setup",
           "git_state", "RUN_JSON", "SUCCESS_FILE"]

RUN_JSON = "run.json"
SUCCESS_FILE = "SUCCESS"
#: Version of the run.json layout.
RUN_SCHEMA = 1
#: Environment given to the kernel (on top of the parent's).
KERNEL_ENV = {"TRAJLAB_PROGRESS": "text"}
_VERSIONED = ("trajlab", "numpy", "joblib", "matplotlib", "ipywidgets", "papermill",
              "nbclient", "nbformat", "ipykernel", "torch")
_FINGERPRINT_RE = re.compile(r"fingerprint\W{0,3}\s*([0-9a-f]{16,64})\b", re.IGNORECASE)


# ---------------------------------------------------------------- result
@dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`run_notebook`.

    Attributes
    ----------
    run_dir : pathlib.Path
        The run folder (absolute).
    output : pathlib.Path
        The executed notebook inside it.
    record : dict
        The content of ``run.json``.
    """

    run_dir: Path
    output: Path
    record: dict = field(repr=False)

    @property
    def success(self):
        """True when every cell ran without error."""
        return bool(self.record.get("success"))

    @property
    def exit_code(self):
        """0 on success, 1 otherwise."""
        return 0 if self.success else 1


# ---------------------------------------------------------------- paths, git, versions
def notebook_setup():
    """Make relative paths in a notebook mean its root, however it was started.

    ``trajlab run`` starts the kernel in the root (the parent of
    ``notebooks/``); JupyterLab and nbval start it in the notebook's own
    folder. Called in a notebook's first cell, this changes the working
    directory from a folder named ``notebooks`` to its parent, so
    ``runs/...`` and ``data/...`` mean the same place either way; elsewhere
    it does nothing. Returns None (a first cell shows no output).
    """
    cwd = Path.cwd()
    if cwd.name == "notebooks":
        os.chdir(cwd.parent)


def notebook_root(notebook):
    """Root directory of a notebook: the parent of a ``notebooks/`` folder,
    else the notebook's folder (absolute)."""
    parent = Path(notebook).resolve().parent
    return parent.parent if parent.name == "notebooks" else parent


def _rel(path, root, runs_dir=None):
    """``path`` relative to ``root``; outside it, relative to ``runs_dir``'s
    parent; never absolute."""
    path = Path(path).resolve()
    for base in (root, None if runs_dir is None else Path(runs_dir).resolve().parent):
        if base is not None:
            try:
                return path.relative_to(base).as_posix() or "."
            except ValueError:
                pass
    return path.name


def _git(root, *args):
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(root, ignore=None):
    """Commit and dirty flag of the git work tree holding ``root``.

    Parameters
    ----------
    root : path-like
    ignore : path-like, optional
        A folder whose changes do not count as dirty (the runs folder, so
        earlier runs do not make every later one dirty).

    Returns
    -------
    sha : str or None
        Full commit hash; None outside a git work tree, without git, or
        before the first commit.
    dirty : bool or None
        Whether tracked files differ from the commit or untracked files
        exist (outside ``ignore``); None when ``sha`` is None.
    """
    sha = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    if not sha:
        return None, None
    top = (_git(root, "rev-parse", "--show-toplevel") or "").strip()
    status = _git(root, "status", "--porcelain", "-z", "--untracked-files=normal")
    if status is None:
        return sha.strip(), None
    skip = None
    if ignore is not None and top:
        try:
            skip = Path(ignore).resolve().relative_to(Path(top).resolve()).as_posix()
        except ValueError:
            skip = None
    entries = [e for e in status.split("\0") if len(e) > 3]
    changed = [e[3:] for e in entries
               if not (skip and skip != "." and (e[3:] == skip or e[3:].startswith(skip + "/")
                                                 or e[3:] == skip + "/"))]
    return sha.strip(), bool(changed)


def _versions():
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _now():
    return _dt.datetime.now(_dt.timezone.utc)


def _iso(t):
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_json(path, data):
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")

def _check_kernel(name):
    """Fail early (no run folder) when the Jupyter kernel is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    try:
        ksm.get_kernel_spec(name)
    except NoSuchKernel:
        fail("kernel_name", "run_notebook",
             f"an installed Jupyter kernel (one of {sorted(ksm.find_kernel_specs())}; "
             "install one with `python -m ipykernel install --sys-prefix --name python3`)",
             name)



# ---------------------------------------------------------------- execution helpers
@contextlib.contextmanager
def _chdir(path):
    """Temporarily change the process's working directory (the kernel is
    started from it; papermill's ``cwd`` does the same)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _environ(extra):
    """Temporarily set environment variables (the kernel inherits them)."""
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _scrubber(root):
    """Function replacing machine-specific absolute prefixes in text."""
    subs = []
    for prefix, repl in ((str(root), "."), (sys.prefix, "<sys.prefix>"),
                         (sys.base_prefix, "<sys.base_prefix>"),
                         (os.path.expanduser("~"), "~")):
        if prefix and prefix not in ("/", "~") and len(prefix) > 1:
            subs.append((prefix.rstrip("/") + "/", "" if repl == "." else repl + "/"))
            subs.append((prefix.rstrip("/"), repl))
    subs.sort(key=lambda s: -len(s[0]))

    def scrub(text):
        if not isinstance(text, str):
            return text
        for a, b in subs:
            text = text.replace(a, b)
        return text
    return scrub


def _scrub_outputs(nb, scrub):
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = scrub(out["text"])
            if "evalue" in out:
                out["evalue"] = scrub(out["evalue"])
            if "traceback" in out:
                out["traceback"] = [scrub(line) for line in out["traceback"]]
            data = out.get("data", {})
            if "text/plain" in data:
                data["text/plain"] = scrub(data["text/plain"])


def _fingerprint_from_outputs(nb):
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts = [out.get("text", "")]
            texts.append(out.get("data", {}).get("text/plain", ""))
            for text in texts:
                if isinstance(text, list):
                    text = "".join(text)
                m = _FINGERPRINT_RE.search(text or "")
                if m:
                    return m.group(1)
    return None


def _fingerprint_from_params(params, root):
    names = sorted((k for k in params if k == "run_dir" or k.endswith("_dir")),
                   key=lambda k: k != "run_dir")
    for name in names:
        value = params[name]
        if not isinstance(value, str) or not value:
            continue
        spec_json = (root / value / "spec.json")
        try:
            fp = json.loads(spec_json.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(fp, str) and fp:
            return fp, f"{name}/spec.json"
    return None, None


def _finalise_notebook(output, record, root, runs_dir):
    """Load the executed notebook and fix it up: relative paths, scrubbed
    outputs, the trajlab metadata and the closing sentinel cell. Returns
    the notebook (None if papermill never wrote one); the caller saves it."""
    import nbformat

    if not output.exists():
        return None
    nb = nbformat.read(str(output), as_version=4)
    pm = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if isinstance(pm.get(key), str):
            pm[key] = _rel(pm[key], root, runs_dir)
    _scrub_outputs(nb, _scrubber(root))
    nb.metadata["trajlab"] = {
        "success": record["success"], "status": record["status"],
        "run_dir": record["run_dir"], "git_sha": record["git_sha"],
        "git_dirty": record["git_dirty"], "dataset_fingerprint": record["dataset_fingerprint"],
    }
    if record["success"]:
        text = (f"**trajlab run succeeded** — finished {record['ended']} after "
                f"{record['duration_seconds']:.1f} s; commit `{record['git_sha'] or 'none'}`"
                f"{' (dirty)' if record['git_dirty'] else ''}; run folder "
                f"`{record['run_dir']}`.")
    else:
        text = (f"**trajlab run FAILED** — {record['error']['summary']} "
                f"(finished {record['ended']}; run folder `{record['run_dir']}`).")
    cell = nbformat.v4.new_markdown_cell(text)
    cell.metadata["tags"] = ["trajlab-sentinel"]
    nb.cells.append(cell)
    return nb


def _write_notebook(nb, output):
    import nbformat

    text = nbformat.writes(nb)
    write_text_atomic(output, text if text.endswith("\n") else text + "\n")


def _error_summary(exc, scrub):
    ename = getattr(exc, "ename", None)
    if ename is not None:     # PapermillExecutionError
        evalue = scrub(str(getattr(exc, "evalue", "")))
        cell = getattr(exc, "cell_index", None)
        count = getattr(exc, "exec_count", None)
        summary = f"{ename}: {evalue}" + (f" (cell In [{count}])" if count is not None else "")
        return {"summary": summary, "ename": ename, "evalue": evalue, "cell_index": cell,
                "execution_count": count}
    msg = scrub(str(exc)).strip().splitlines()
    return {"summary": f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": "),
            "ename": type(exc).__name__, "evalue": "\n".join(msg), "cell_index": None,
            "execution_count": None}


def _make_run_dir(runs_dir, stamp, stem, sha, dirty):
    base = f"{stamp}_{stem}_{sha[:7] if sha else 'nogit'}{'-dirty' if dirty else ''}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        path = runs_dir / (base if k == 1 else f"{base}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"Could not create a run folder {base} in {runs_dir}.")


def _command(notebook_rel, overrides, runs_dir_rel, kernel):
    parts = ["trajlab", "run", notebook_rel]
    for k, v in overrides.items():
        parts += ["-p", k, v if isinstance(v, str) else json.dumps(v)]
    if runs_dir_rel != "runs":
        parts += ["--runs-dir", runs_dir_rel]
    if kernel != "python3":
        parts += ["--kernel", kernel]
    return shlex.join(parts)


# ---------------------------------------------------------------- public API
def run_notebook(notebook, parameters=None, *, runs_dir="runs", kernel_name="python3",
                 autosave_seconds=30, log_output=True):
    """Execute a notebook with papermill into a new run folder.

    Parameters
    ----------
    notebook : path-like
        The source ``.ipynb``.
    parameters : dict of str to object, optional
        Overrides of the notebook's ``parameters`` cell; validated before
        anything runs.
    runs_dir : path-like, default="runs"
        Where run folders go; relative paths are relative to the
        notebook's root (see the module docstring).
    kernel_name : str, default="python3"
    autosave_seconds : float, default=30
        Save the output notebook at most this often while cells print
        (papermill's ``autosave_cell_every``); 0 disables it.
    log_output : bool, default=True
        Stream the notebook's stdout/stderr to this process's.

    Returns
    -------
    RunResult
        Also when the notebook failed (``result.success`` is False); a
        failed run still has its folder, executed notebook and
        ``run.json``.

    Raises
    ------
    ValueError, TypeError
        Bad arguments or parameters, or a kernel that is not installed
        (before any folder is created).
    FileNotFoundError
        The notebook does not exist.
    """
    nb_path = Path(notebook)
    if not isinstance(notebook, (str, os.PathLike)) or nb_path.suffix != ".ipynb":
        fail("notebook", "run_notebook", "a path to a .ipynb file", notebook)
    if not nb_path.is_file():
        raise FileNotFoundError(f"The 'notebook' parameter of run_notebook must be an existing "
                                f".ipynb file. Got {str(notebook)!r}, which does not exist.")
    if parameters is not None and not isinstance(parameters, dict):
        fail("parameters", "run_notebook", "a dict of parameter names to values", parameters,
             TypeError)
    if not isinstance(kernel_name, str) or not kernel_name:
        fail("kernel_name", "run_notebook", "a non-empty str", kernel_name, TypeError)
    if (isinstance(autosave_seconds, bool) or not isinstance(autosave_seconds, (int, float))
            or autosave_seconds < 0):
        fail("autosave_seconds", "run_notebook", "a float in the range [0, inf)",
             autosave_seconds)
    nb_path = nb_path.resolve()
    root = notebook_root(nb_path)
    overrides = dict(parameters or {})
    merged = validate_parameters(nb_path, overrides, notebook_parameters(nb_path))
    _check_kernel(kernel_name)

    import papermill as pm

    runs_dir = Path(runs_dir)
    runs_dir = (runs_dir if runs_dir.is_absolute() else root / runs_dir).resolve()
    started = _now()
    sha, dirty = git_state(root, ignore=runs_dir)
    run_dir = _make_run_dir(runs_dir, started.strftime("%Y%m%dT%H%M%SZ"), nb_path.stem, sha,
                            dirty)
    output = run_dir / nb_path.name
    scrub = _scrubber(root)
    record = {
        "schema": RUN_SCHEMA,
        "notebook": _rel(nb_path, root),
        "output": _rel(output, root, runs_dir),
        "run_dir": _rel(run_dir, root, runs_dir),
        "working_directory": ".",
        "working_directory_is": ("the repository root (parent of notebooks/)"
                                 if nb_path.parent.name == "notebooks"
                                 else "the notebook's folder"),
        "command": _command(_rel(nb_path, root), overrides, _rel(runs_dir, root, runs_dir),
                            kernel_name),
        "parameters": merged,
        "overrides": overrides,
        "kernel": kernel_name,
        "kernel_env": dict(KERNEL_ENV),
        "git_sha": sha,
        "git_dirty": dirty,
        "versions": _versions(),
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                 "machine": platform.machine(), "cpu_count": os.cpu_count(), "pid": os.getpid()},
        "started": _iso(started),
        "ended": None,
        "duration_seconds": None,
        "status": "running",
        "exit_status": None,
        "success": False,
        "error": None,
        "dataset_fingerprint": None,
        "fingerprint_source": None,
    }
    _write_json(run_dir / RUN_JSON, record)
    log = sys.stderr
    if log_output:
        print(f"[trajlab run] {record['notebook']} -> {record['output']} "
              f"(autosaved every {autosave_seconds:g} s while running)", file=log, flush=True)
    t0 = time.monotonic()
    error, interrupted = None, None
    try:
        # Paths are given relative to the root and the process runs from the
        # root, so papermill's metadata never holds absolute paths, even in
        # the autosaved copies written while the notebook runs.
        with _environ(KERNEL_ENV), _chdir(root):
            pm.execute_notebook(
                os.path.relpath(nb_path, root), os.path.relpath(output, root),
                parameters=overrides, kernel_name=kernel_name, cwd=None,
                autosave_cell_every=autosave_seconds, progress_bar=False, log_output=False,
                stdout_file=sys.stdout if log_output else None,
                stderr_file=sys.stderr if log_output else None,
                request_save_on_cell_execute=True)
    except KeyboardInterrupt as exc:
        error, interrupted = exc, exc
    except Exception as exc:  # any failure is recorded, not raised
        error = exc
    ended = _now()
    record.update(ended=_iso(ended), duration_seconds=round(time.monotonic() - t0, 3))
    if error is None:
        record.update(status="succeeded", exit_status=0, success=True)
    else:
        record.update(status="failed", exit_status=1, success=False,
                      error=_error_summary(error, scrub) if interrupted is None else
                      {"summary": "KeyboardInterrupt: interrupted", "ename": "KeyboardInterrupt",
                       "evalue": "", "cell_index": None, "execution_count": None})
    fp, source = _fingerprint_from_params(merged, root)
    nb = None
    try:
        nb = _finalise_notebook(output, record, root, runs_dir)
    except Exception as exc:  # a damaged output notebook must not hide the record
        record["finalise_error"] = scrub(f"{type(exc).__name__}: {exc}")
    if fp is None and nb is not None:
        fp = _fingerprint_from_outputs(nb)
        source = "notebook output" if fp else None
    record.update(dataset_fingerprint=fp, fingerprint_source=source)
    if nb is not None:
        nb.metadata["trajlab"]["dataset_fingerprint"] = fp
        _write_notebook(nb, output)
    _write_json(run_dir / RUN_JSON, record)
    if record["success"]:
        (run_dir / SUCCESS_FILE).touch()
    if log_output:
        if record["success"]:
            print(f"[trajlab run] succeeded in {record['duration_seconds']:.1f} s: "
                  f"{record['run_dir']}", file=log, flush=True)
        else:
            print(f"[trajlab run] FAILED after {record['duration_seconds']:.1f} s: "
                  f"{record['error']['summary']}\n[trajlab run] see {record['output']}",
                  file=log, flush=True)
    if interrupted is not None:
        raise interrupted
    return RunResult(run_dir=run_dir, output=output, record=record)


def read_run_status(run_folder):
    """Status of a notebook run folder (``runs/<...>/``) from its run.json.

    Returns a dict like :func:`trajlab.progress.read_status`: ``verdict``
    is ``'running'``, ``'stalled'`` (run.json says running but its
    ``trajlab run`` process on this host is gone), ``'finished'`` or
    ``'failed'``, with ``reason``.
    """
    with open(os.path.join(run_folder, RUN_JSON), encoding="utf-8") as fh:
        rec = json.load(fh)
    host = rec.get("host", {})
    if rec.get("status") == "running":
        if host.get("hostname") == socket.gethostname() and not pid_alive(host.get("pid")):
            verdict, reason = "stalled", (f"`trajlab run` (pid {host.get('pid')}) is gone; "
                                          f"re-run: {rec.get('command')}")
        else:
            verdict, reason = "running", f"started {rec.get('started')}"
    elif rec.get("success"):
        verdict, reason = "finished", f"succeeded in {rec.get('duration_seconds')} s"
    else:
        verdict = "failed"
        reason = (rec.get("error") or {}).get("summary") or rec.get("status") or "failed"
    rec.update(verdict=verdict, reason=reason)
    return rec
