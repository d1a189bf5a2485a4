"""moto's S3 server for the tests, with atomic conditional writes.

``python -m moto.server`` serves requests on threads, and its ``PutObject``
checks ``If-Match`` / ``If-None-Match`` and stores the object in separate
steps without a lock: two concurrent requests conditional on the same ETag
can both pass the check and both succeed (seen in CI: two contenders both
took one stale lease over). AWS S3 decides each conditional write
atomically, and that is what trajlab's lease relies on (see
:mod:`trajlab.lease`). This launcher builds the same application as
``moto.server`` and lets one mutating request (PUT, POST, DELETE) run at a
time, so that the server behaves like the store the lease is written for.
Reads still run concurrently.

Usage: ``python tests/_moto_server.py HOST PORT``.
"""

from __future__ import annotations

import io
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

MUTATING = frozenset({"PUT", "POST", "DELETE"})


class SerializedWrites:
    """WSGI middleware: one mutating request at a time. moto builds its
    whole answer inside the call, so the lock covers check and write."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") not in MUTATING:
            return self.app(environ, start_response)
        # The request body is read before the lock is taken: a slow or
        # stalled uploader then holds up no other writer.
        if environ.get("wsgi.input_terminated"):
            data = environ["wsgi.input"].read()
        else:
            data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        with self.lock:
            body = self.app(environ, start_response)
            # The answer is built inside the lock (it is small and complete
            # already; a lazy iterable would escape the lock).
            try:
                return [b"".join(body)]
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()


def main(argv):
    host, port = argv[0], int(argv[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True
    run_simple(host, port, SerializedWrites(app), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1:])
