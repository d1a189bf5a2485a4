"""A local S3 server for the tests: moto's server mode on 127.0.0.1.

Import the fixture into a test module (``from _s3 import s3  # noqa: F401``).
``s3`` starts moto's server (``_moto_server.py``: conditional writes made
atomic, as on AWS S3) once per test session on a free
loopback port, points the environment at it (dummy credentials,
``AWS_ENDPOINT_URL``; child processes such as joblib and dask workers
inherit it), creates the bucket :data:`BUCKET`, and stops the server at the
end. Each test gets a fresh prefix: ``s3.new_url()`` ->
``s3://trajlab-test/<random>``. Without moto or s3fs installed the tests
that use it are skipped with the reason.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest

BUCKET = "trajlab-test"
#: How long moto_server may take to answer (it takes 1-4 s here).
START_TIMEOUT = 60.0
#: The launcher: moto's server with atomic conditional writes (see its docstring).
SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_moto_server.py")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(endpoint):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(endpoint + "/moto-api/", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class S3Server:
    """A running moto server; ``new_url()`` gives a fresh prefix URL."""

    def __init__(self, endpoint, proc):
        self.endpoint, self.proc, self.bucket = endpoint, proc, BUCKET

    def new_url(self, name="t"):
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:12]}"

    def client(self):
        """A plain botocore client on the server (for set-up and inspection)."""
        import botocore.session

        return botocore.session.get_session().create_client("s3", endpoint_url=self.endpoint,
                                                            region_name="us-east-1")


def _start():
    last = None
    for _ in range(3):          # the free port may be taken before moto binds it
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        # The server logs every request on stderr. It goes to a file, not to
        # a pipe: nobody reads a pipe while the tests run, and once its 64 KB
        # buffer is full (about 600 requests) the server blocks on the write
        # and every later request hangs.
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, SERVER, "127.0.0.1", str(port)],
                                stdout=subprocess.DEVNULL,
                                stderr=log, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        proc.log = log
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _answers(endpoint):
                return endpoint, proc
            time.sleep(0.1)
        if proc.poll() is not None:
            log.seek(0)
            last = log.read().decode(errors="replace")[-2000:]
        else:
            last = "no answer"
        _stop(proc)
    raise RuntimeError(f"moto_server did not start on 127.0.0.1: {last}")


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    proc.log.close()


#: The one server of this test session, shared by every module that imports
#: the fixture (pytest registers an imported fixture once per module, so each
#: module's session fixture would otherwise start its own server).
_SHARED = {"server": None, "users": 0, "undo": None}


def _environment(endpoint):
    mp = pytest.MonkeyPatch()
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        # no user configuration, profile or session token leaks into the tests
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"])),
    }
    for k, val in env.items():
        mp.setenv(k, val)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
              "AWS_ENDPOINT_URL_S3"):
        mp.delenv(k, raising=False)
    return mp


@pytest.fixture(scope="session")
def s3():
    """The session's moto S3 server (:class:`S3Server`), environment set."""
    for mod in ("moto.server", "s3fs", "botocore"):
        pytest.importorskip(mod, reason=f"the S3 tests need {mod} (pip install -e '.[dev]')")
    if _SHARED["server"] is None:
        endpoint, proc = _start()
        mp = _environment(endpoint)
        server = S3Server(endpoint, proc)
        try:
            server.client().create_bucket(Bucket=BUCKET)
        except BaseException:
            mp.undo()
            _stop(proc)
            raise
        _SHARED.update(server=server, undo=mp)
    _SHARED["users"] += 1
    try:
        yield _SHARED["server"]
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            server, mp = _SHARED["server"], _SHARED["undo"]
            _SHARED.update(server=None, undo=None)
            mp.undo()
            _stop(server.proc)
