"""Start a throw-away JupyterLab server for the browser test.

The server is isolated from the user's Jupyter set-up: its own config,
runtime, settings and workspaces directories under a temporary folder, a
``python3`` kernel spec that points at the current interpreter
(``sys.executable``), token auth with a random token, bound to 127.0.0.1 on a
free port. It runs in its own process group so that stopping it also stops
the kernels it started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# JupyterLab user settings written before the server starts:
# - autoStartDefaultKernel: no "Select Kernel" dialog on opening;
# - windowingMode "none": every cell stays in the DOM (no virtual scrolling),
#   so outputs below the fold can be found and screenshotted;
# - no news / update notifications popping over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "windowingMode": "none",
        "autoStartDefaultKernel": True,
    },
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLabServer:
    """``with JupyterLabServer(root_dir, work_dir) as srv: srv.url(...)``."""

    def __init__(self, root_dir: Path, work_dir: Path, startup_timeout: float = 90.0):
        self.root_dir = Path(root_dir)
        self.work_dir = Path(work_dir)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.work_dir / "jupyter-server.log"

    # -- set-up -------------------------------------------------------------
    def _prepare_dirs(self) -> dict[str, str]:
        d = self.work_dir
        paths = {k: d / k for k in ("config", "runtime", "data", "jpath", "settings", "workspaces")}
        for p in paths.values():
            p.mkdir(parents=True, exist_ok=True)
        # Kernel spec "python3" = this interpreter. JUPYTER_PATH comes first in
        # the search order, so it wins over any other python3 spec.
        kdir = paths["jpath"] / "kernels" / "python3"
        kdir.mkdir(parents=True, exist_ok=True)
        (kdir / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
        }))
        for rel, value in LAB_SETTINGS.items():
            f = paths["settings"] / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        env = dict(os.environ)
        env.update({
            "JUPYTER_CONFIG_DIR": str(paths["config"]),
            "JUPYTER_RUNTIME_DIR": str(paths["runtime"]),
            "JUPYTER_DATA_DIR": str(paths["data"]),
            "JUPYTER_PATH": str(paths["jpath"]),
            "JUPYTER_PLATFORM_DIRS": "1",
            "IPYTHONDIR": str(d / "ipython"),
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PYTHONUNBUFFERED": "1",
        })
        # The kernel must run the interpreter of this venv, also for "python".
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        self._settings_dir = paths["settings"]
        self._workspaces_dir = paths["workspaces"]
        return env

    def start(self) -> JupyterLabServer:
        env = self._prepare_dirs()
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.open_browser=False",
            "--ServerApp.disable_check_xsrf=False",
            "--MappingKernelManager.default_kernel_name=python3",
            f"--LabApp.user_settings_dir={self._settings_dir}",
            f"--LabApp.workspaces_dir={self._workspaces_dir}",
            "--LabApp.news_url=",
            "--LabApp.extension_manager=readonly",
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, cwd=self.root_dir, env=env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.base}/api/status?token={self.token}"
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        # The lab page itself (not just the REST API) must answer.
                        with urllib.request.urlopen(self.url("lab"), timeout=5) as r2:
                            if r2.status == 200:
                                return
            except (urllib.error.URLError, OSError) as e:  # not up yet
                last = e
            time.sleep(0.3)
        raise TimeoutError(
            f"jupyter lab did not answer on {self.base} within {self.startup_timeout}s "
            f"(last error: {last}):\n{self.log_tail()}")

    # -- use ----------------------------------------------------------------
    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}/{path.lstrip('/')}{sep}token={self.token}"

    def log_tail(self, n: int = 4000) -> str:
        try:
            self._log.flush()
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except Exception:  # noqa: BLE001
            return "<no log>"

    # -- tear-down ----------------------------------------------------------
    @staticmethod
    def _stat(pid: int) -> tuple[int, str] | None:
        """(parent pid, start time) of a process, None if it is gone."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[1]), fields[19]
        except (OSError, ValueError, IndexError):
            return None

    def _child_pids(self, pid: int) -> list[tuple[int, str]]:
        """Direct children of ``pid`` with their start times (the kernels,
        which jupyter_client starts in sessions of their own, so killing our
        process group misses them)."""
        kids = []
        for entry in Path("/proc").glob("[0-9]*"):
            st = self._stat(int(entry.name))
            if st and st[0] == pid:
                kids.append((int(entry.name), st[1]))
        return kids

    def _shutdown_kernels(self) -> None:
        try:
            with urllib.request.urlopen(self.url("api/kernels"), timeout=5) as r:
                kernels = json.load(r)
            for k in kernels:
                req = urllib.request.Request(self.url(f"api/kernels/{k['id']}"), method="DELETE")
                urllib.request.urlopen(req, timeout=10).close()
        except Exception:  # noqa: BLE001 - best effort, the kill below follows
            pass

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        kids: list[tuple[int, str]] = []
        if proc.poll() is None:
            self._shutdown_kernels()
            kids = self._child_pids(proc.pid)

            try:
                os.killpg(proc.pid, signal.SIGTERM)  # server + its kernels
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        # Whatever is left of our process group or of the kernels it started.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid, started in kids:
            st = self._stat(pid)
            if st and st[1] == started:  # same process, not a reused pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._log.close()

    def __enter__(self) -> JupyterLabServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def copy_notebooks(src: Path, dst: Path) -> Path:
    """Copy the notebooks folder (without checkpoints / outputs of runs)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    return dst
