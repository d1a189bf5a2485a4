"""The single writer of a run dir where ``flock`` does not exist (S3).

A lease is one small object, ``<run dir>/.lease.json``::

    {"program": "trajlab", "token": "<uuid4>", "pid": 123, "host": "h",
     "since": "2026-12-02T06:00:00Z", "heartbeat_unix": 1796191200.5,
     "ttl_seconds": 60}

written only with the store's conditional operations
(:mod:`trajlab.objstore`):

* **acquire**: ``put_if_absent`` (S3 ``PUT If-None-Match: *``). If a lease
  is there and its last write is older than its holder's ``ttl_seconds``
  *by the store's own clock* (its ``LastModified`` against the ``Date`` of
  the store's answer, never this host's clock), it is taken over with
  ``put_if_match`` on the ETag that was judged stale: of several
  contenders exactly one wins. Otherwise :class:`trajlab.storage.RunDirError`
  names the holder (host, pid, since).
* **renew** (every ``heartbeat_seconds``, by a background thread with
  :meth:`Lease.start` or by the caller): ``put_if_match`` on the lease's
  own ETag. A failed condition means another writer took the lease over:
  :class:`LeaseLost`, and the writer must stop writing records, progress
  and the manifest.
* **check**: before each record, manifest or repair write the parent calls
  :meth:`Lease.check`, which raises unless the last successful renewal
  started less than ``ttl_seconds / 2`` ago (by this host's monotonic
  clock). A takeover needs more than ``ttl_seconds`` by the store's clock
  since that renewal reached the store, so a write started after a passing
  check has at least ``ttl_seconds / 2`` to land.
* **release**: ``delete_if_match`` on the own ETag.

A stale lease is one whose last write is more than ``ttl_seconds +``
:data:`CLOCK_RESOLUTION` old: S3 reports both times in whole seconds.

**Which stores are safe.** The lease is exactly as safe as the store's
conditional writes: AWS S3 and MinIO releases with conditional writes
decide them atomically; an S3-compatible server that ignores the headers
does not, and neither does moto's server under concurrent requests (it
checks and writes in separate steps; the tests serialize its writes).
:meth:`Lease.acquire` therefore probes the store (a second
``put_if_absent`` of its own lease and a ``put_if_match`` with a wrong ETag
must both fail) and refuses a store that accepts either, unless
``allow_unsafe_store=True`` (only for a single writer on one host). On a
local folder the conditional operations rely on ``os.link`` and ``flock``
(see :mod:`trajlab.objstore`): safe among processes of one host, not across
the hosts of a network filesystem; local run dirs keep
:class:`trajlab.storage.RunLock`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import uuid

from . import _validation as v
from .storage import HOST, RunDirError, parse_json, utcnow

__all__ = ["Lease", "LeaseLost", "LEASE_KEY", "CLOCK_RESOLUTION"]

#: Default key of the lease object in the run dir.
LEASE_KEY = ".lease.json"
#: Seconds added to the TTL before a lease counts as stale (S3 times are whole seconds).
CLOCK_RESOLUTION = 1.0
#: Largest lease record trajlab reads.
MAX_LEASE_BYTES = 4096
#: Longest TTL accepted (a day), in seconds.
MAX_TTL = 86400.0
#: Rounds of acquire (the lease may change between the reads and the write).
_ACQUIRE_ROUNDS = 8
_FIELDS = {"program", "token", "pid", "host", "since", "heartbeat_unix", "ttl_seconds"}


class LeaseLost(RunDirError):
    """The lease was taken over by another writer (or could not be renewed
    in time): stop writing records, progress and the manifest."""


def _holder_record(raw):
    """(record, None) if ``raw`` is a trajlab lease record, else (None, reason)."""
    obj, reason = parse_json(raw)
    if reason is not None:
        return None, reason
    if not isinstance(obj, dict) or obj.get("program") != "trajlab" or set(obj) != _FIELDS:
        return None, "not a trajlab lease record"
    ok = (isinstance(obj["token"], str) and 0 < len(obj["token"]) <= 64
          and isinstance(obj["pid"], int) and not isinstance(obj["pid"], bool)
          and obj["pid"] >= 0
          and isinstance(obj["host"], str) and len(obj["host"]) <= 255
          and isinstance(obj["since"], str) and len(obj["since"]) <= 64
          and all(isinstance(obj[f], (int, float)) and not isinstance(obj[f], bool)
                  and math.isfinite(obj[f]) for f in ("heartbeat_unix", "ttl_seconds"))
          and 0 < obj["ttl_seconds"] <= MAX_TTL)
    return (obj, None) if ok else (None, "a trajlab lease record with invalid fields")


def _encode(rec):
    return (json.dumps(rec, sort_keys=True) + "\n").encode("utf-8")


class Lease:
    """Single-writer lease on ``store`` (a :class:`trajlab.objstore.Store`).

    ``ttl_seconds``: a lease whose holder has not renewed it for that long
    (by the store's clock) may be taken over. ``heartbeat_seconds``: how
    often :meth:`start`'s thread renews it (less than ``ttl_seconds / 2``).
    ``allow_unsafe_store``: skip the conditional-write probe (only for one
    writer on one host). Use as a context manager (acquire, start the
    heartbeat thread, release at the end) or call the methods.
    """

    def __init__(self, store, key=LEASE_KEY, ttl_seconds=60, heartbeat_seconds=15, *,
                 allow_unsafe_store=False):
        from .objstore import Store, check_key

        if not isinstance(store, Store):
            v.fail("store", "Lease", "a trajlab.objstore.Store (see open_store)", store,
                   TypeError)
        self.store = store
        self.key = check_key(key, "Lease")
        self.ttl_seconds = v.check_float(ttl_seconds, "ttl_seconds", "Lease", 0, MAX_TTL,
                                         closed_low=False)
        self.heartbeat_seconds = v.check_float(heartbeat_seconds, "heartbeat_seconds", "Lease",
                                               0, self.ttl_seconds / 2, closed_low=False,
                                               closed_high=False)
        self.allow_unsafe_store = v.check_bool(allow_unsafe_store, "allow_unsafe_store", "Lease")
        self.token = None
        self.etag = None
        self.record = None
        #: The holder record this lease replaced when it took a stale lease over.
        self.took_over = None
        self._renewed = None            # monotonic time at which the last renewal started
        self._lost = None               # message once the lease is known to be lost
        self._last_error = None
        self._lock = threading.RLock()
        self._thread = None
        self._stop = threading.Event()

    def __reduce__(self):
        raise TypeError("a Lease belongs to the process that acquired it; send the store "
                        "(or its URL) to workers instead")

    def __repr__(self):
        state = "lost" if self._lost else "held" if self.held else "not held"
        return f"Lease({self.store.url!r}, key={self.key!r}, {state})"

    @property
    def url(self):
        return self.store.key_url(self.key)

    @property
    def held(self):
        """Whether this object holds the lease (as far as it knows)."""
        return self.etag is not None and self._lost is None

    @property
    def lost(self):
        """Whether the lease was found taken over (or unrenewable)."""
        return self._lost is not None

    # ------------------------------------------------------------- acquire
    def _new_record(self, token, since):
        return {"program": "trajlab", "token": token, "pid": os.getpid(), "host": HOST,
                "since": since, "heartbeat_unix": round(time.time(), 6),
                "ttl_seconds": self.ttl_seconds}

    def _read(self):
        """(ObjectInfo, raw bytes) of the current lease object, or (None, None)."""
        info = self.store.head(self.key)
        if info is None:
            return None, None
        try:
            raw = self.store.get(self.key, MAX_LEASE_BYTES)
        except FileNotFoundError:
            return None, None
        except Exception as exc:
            from .objstore import ObjectTooLargeError

            if isinstance(exc, ObjectTooLargeError):
                raise RunDirError(
                    f"The lease object {self.url} holds {exc.size} bytes, more than a trajlab "
                    "lease record; trajlab does not overwrite it. Remove it if no trajlab "
                    "process writes this run dir.") from None
            raise
        return info, raw

    def _describe(self, rec, info, now):
        age = now - info.last_modified
        left = max(0.0, rec["ttl_seconds"] + CLOCK_RESOLUTION - age)
        return (f"trajlab, host {rec['host']}, pid {rec['pid']}, since {rec['since']}; its "
                f"lease {self.url} was renewed {max(age, 0.0):.0f} s ago by the store's clock "
                f"and lapses after {rec['ttl_seconds']:g} s without renewal, in {left:.0f} s")

    def acquire(self):
        """Take the lease (see the module docstring); returns ``self``.

        Raises :class:`trajlab.storage.RunDirError` if another writer holds
        it, if the key holds something that is not a trajlab lease, or if
        the store does not honour conditional writes.
        """
        with self._lock:
            if self.held:
                raise RunDirError(f"The lease {self.url} is already held by this object.")
            token, since = uuid.uuid4().hex, utcnow()
            for _ in range(_ACQUIRE_ROUNDS):
                rec = self._new_record(token, since)
                data = _encode(rec)
                etag = self.store.put_if_absent(self.key, data)
                if etag is None:
                    etag = self._contend(data)
                if etag is not None:
                    break
            else:
                raise RunDirError(
                    f"The lease {self.url} kept changing while trajlab tried to take it "
                    f"({_ACQUIRE_ROUNDS} rounds): another writer is starting on this run dir. "
                    "Make sure only one process writes it, then run the command again.")
            self.token, self.record, self.etag = token, rec, etag
            self._renewed, self._lost, self._last_error = time.monotonic(), None, None
            if not self.allow_unsafe_store:
                self._probe(data)
            return self

    def _contend(self, data):
        """The key exists: our own write (a retried request), a live holder
        (raise), or a stale one (take it over). Returns our ETag, or None
        to try again."""
        info, raw = self._read()
        if info is None:
            return None                 # released meanwhile
        if raw == data:
            return info.etag            # our own write, answered as a conflict on retry
        holder, reason = _holder_record(raw)
        if holder is None:
            raise RunDirError(
                f"The lease object {self.url} does not hold a trajlab lease record ({reason}); "
                "trajlab does not overwrite it. Remove it if no trajlab process writes this "
                "run dir, then run the command again.")
        now = self.store.server_time(self.key)
        if now - info.last_modified <= holder["ttl_seconds"] + CLOCK_RESOLUTION:
            raise RunDirError(
                f"Run directory {self.store.url!r} is being written by another process "
                f"({self._describe(holder, info, now)}). Wait for it to finish or stop it; "
                "a dead writer's lease is taken over automatically once it lapses.")
        etag = self.store.put_if_match(self.key, data, info.etag)
        if etag is not None:
            self.took_over = holder
            return etag
        info2, raw2 = self._read()
        if info2 is not None and raw2 == data:
            self.took_over = holder
            return info2.etag
        return None                     # another contender won: the next round names it

    def _probe(self, data):
        """The store must refuse a second create and a wrong-ETag replace."""
        wrong = '"' + hashlib.md5(b"trajlab-probe:" + self.token.encode()).hexdigest() + '"'
        again = self.store.put_if_absent(self.key, data)
        mismatch = self.store.put_if_match(self.key, data, wrong)
        if again is None and mismatch is None:
            return
        accepted = " and ".join(w for w, r in (("a second create (If-None-Match: *)", again),
                                               ("a replace with a wrong ETag (If-Match)",
                                                mismatch)) if r is not None)
        try:
            self.store.delete_if_match(self.key, mismatch or again or self.etag)
        except Exception:       # pragma: no cover - best effort on a store found unsafe
            pass
        self.etag = None
        raise RunDirError(
            f"The store {self.store.url!r} does not honour conditional writes: it accepted "
            f"{accepted} on the lease {self.url}. Two writers could then both believe they "
            "hold the run dir, so trajlab does not write it concurrently there. Use a store "
            "with conditional writes (AWS S3, a MinIO release that has them), or, if only "
            "one process on one host ever writes this run dir, pass "
            "allow_unsafe_store=True.")

    # --------------------------------------------------------------- renew
    def renew(self):
        """Rewrite the lease on its own ETag (a new heartbeat). Raises
        :class:`LeaseLost` if another writer took it over."""
        with self._lock:
            self._require_held()
            rec = dict(self.record, heartbeat_unix=round(time.time(), 6))
            data = _encode(rec)
            t0 = time.monotonic()
            etag = self.store.put_if_match(self.key, data, self.etag)
            if etag is None:
                info, raw = self._read()
                if info is not None and raw == data:
                    etag = info.etag    # our own write, answered as a mismatch on retry
                else:
                    self._lose(info, raw)
            self.etag, self.record, self._renewed = etag, rec, t0
            self._last_error = None

    def _lose(self, info, raw):
        holder, _ = _holder_record(raw) if raw is not None else (None, None)
        if holder is not None:
            try:
                now = self.store.server_time(self.key)
            except Exception:           # pragma: no cover - a message detail only
                now = info.last_modified
            who = f"it is now held by {self._describe(holder, info, now)}"
        elif info is None:
            who = "the lease object was deleted"
        else:
            who = "the lease object was overwritten"
        self._lost = (f"This process lost the lease of run directory {self.store.url!r}: {who}. "
                      "It writes no more records, progress or manifest there; run the command "
                      "again once the other writer has finished.")
        raise LeaseLost(self._lost)

    def renew_if_due(self):
        """Renew if the last renewal is ``heartbeat_seconds`` old (for a
        caller without the heartbeat thread); whether it renewed."""
        with self._lock:
            self._require_held()
            if time.monotonic() - self._renewed < self.heartbeat_seconds:
                return False
            self.renew()
            return True

    def _require_held(self):
        if self._lost is not None:
            raise LeaseLost(self._lost)
        if self.etag is None:
            raise RunDirError(f"The lease {self.url} is not held by this process (call "
                              "acquire() first).")

    def check(self):
        """Raise unless the lease is held and its last successful renewal
        started less than ``ttl_seconds / 2`` ago (call it before every
        record, progress, manifest or repair write)."""
        self._require_held()
        age = time.monotonic() - self._renewed
        if age >= self.ttl_seconds / 2:
            why = f" (last error: {self._last_error!r})" if self._last_error is not None else ""
            raise LeaseLost(
                f"The lease {self.url} was last renewed {age:.1f} s ago, more than half its "
                f"{self.ttl_seconds:g} s TTL{why}: another writer may take it over, so this "
                "process writes no record, progress or manifest now. Renew it more often "
                "(start() runs a heartbeat thread) or check the connection to the store.")

    # ------------------------------------------------------------ heartbeat
    def start(self):
        """Start a daemon thread that renews the lease every
        ``heartbeat_seconds`` (retrying sooner after an error); it ends when
        the lease is lost or :meth:`stop` / :meth:`release` is called."""
        with self._lock:
            self._require_held()
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="trajlab-lease",
                                            daemon=True)
            self._thread.start()
            return self

    def _beat(self):
        wait = self.heartbeat_seconds
        while not self._stop.wait(wait):
            try:
                self.renew()
                wait = self.heartbeat_seconds
            except LeaseLost:
                return
            except Exception as exc:    # a network error: try again soon
                self._last_error = exc
                wait = max(0.05, self.heartbeat_seconds / 4)

    def stop(self):
        """Stop the heartbeat thread (the lease stays held until it lapses)."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()
        self._thread = None

    # -------------------------------------------------------------- release
    def release(self):
        """Stop the heartbeat and delete the lease if it is still ours;
        whether it was deleted (False if it was lost or not held)."""
        self.stop()
        with self._lock:
            if self.etag is None:
                return False
            etag, self.etag = self.etag, None
            if self._lost is not None:
                return False
            return self.store.delete_if_match(self.key, etag)

    def __enter__(self):
        self.acquire()
        try:
            self.start()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc):
        self.release()
