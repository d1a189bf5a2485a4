"""trajlab.lease: one writer per run dir through conditional writes (local and S3)."""

from __future__ import annotations

import json
import os
import pickle
import threading
import time

import pytest

from _s3 import s3  # noqa: F401  (session fixture: moto server on 127.0.0.1)
from trajlab.lease import CLOCK_RESOLUTION, LEASE_KEY, Lease, LeaseLost
from trajlab.objstore import LocalStore, Store, open_store
from trajlab.storage import HOST, RunDirError

#: A TTL short enough to let a lease lapse within a test.
TTL = 0.5
#: Sleep after which a lease of TTL counts as stale on every store (S3 times
#: are whole seconds, so a margin of one more second).
LAPSE = TTL + CLOCK_RESOLUTION + 1.1


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "run")
    return open_store(request.getfixturevalue("s3").new_url())


def record(store, key=LEASE_KEY):
    return json.loads(store.get(key, 4096))


class Wrapped(Store):
    """Delegates everything to ``inner``; tests override single methods."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def url(self):
        return self.inner.url

    def __reduce__(self):
        return (type(self), (self.inner,))

    def get(self, key, max_bytes):
        return self.inner.get(key, max_bytes)

    def get_range(self, key, start, length):
        return self.inner.get_range(key, start, length)

    def size(self, key):
        return self.inner.size(key)

    def head(self, key):
        return self.inner.head(key)

    def server_time(self, key=None):
        return self.inner.server_time(key)

    def put(self, key, data, fsync=False):
        return self.inner.put(key, data, fsync)

    def put_if_absent(self, key, data):
        return self.inner.put_if_absent(key, data)

    def put_if_match(self, key, data, etag):
        return self.inner.put_if_match(key, data, etag)

    def delete(self, key):
        return self.inner.delete(key)

    def delete_if_match(self, key, etag):
        return self.inner.delete_if_match(key, etag)

    def list(self, prefix=""):
        return self.inner.list(prefix)


# ------------------------------------------------------------------ acquire
def test_acquire_writes_the_record_and_refuses_a_second_writer(store):
    first = Lease(store).acquire()
    rec = record(store)
    assert set(rec) == {"program", "token", "pid", "host", "since", "heartbeat_unix",
                        "ttl_seconds"}
    assert rec["program"] == "trajlab" and rec["token"] == first.token
    assert rec["pid"] == os.getpid() and rec["host"] == HOST and rec["ttl_seconds"] == 60
    assert abs(rec["heartbeat_unix"] - time.time()) < 30
    assert first.held and first.etag == store.head(LEASE_KEY).etag
    second = Lease(store)
    with pytest.raises(RunDirError) as ei:
        second.acquire()
    msg = str(ei.value)
    assert msg.startswith(f"Run directory {store.url!r} is being written by another process")
    assert f"host {HOST}, pid {os.getpid()}, since {rec['since']}" in msg
    assert "Wait for it to finish or stop it" in msg and "lapses after 60 s" in msg
    assert not second.held and record(store) == rec        # the holder's lease untouched
    first.check()
    assert first.release() is True
    assert not store.exists(LEASE_KEY)
    assert Lease(store).acquire().held                     # free again


def test_lease_lost_is_a_run_dir_error():
    assert issubclass(LeaseLost, RunDirError)


def test_stale_lease_taken_over_and_old_holder_stops(store):
    """By the store's clock: after the TTL without renewal, a new writer takes
    the lease; the old holder's renewal, check and release then fail."""
    old = Lease(store, ttl_seconds=TTL, heartbeat_seconds=0.1).acquire()
    old_rec = record(store)
    time.sleep(LAPSE)
    new = Lease(store, ttl_seconds=60).acquire()
    assert new.took_over == old_rec
    assert record(store)["token"] == new.token
    with pytest.raises(LeaseLost, match=r"lost the lease of run directory .* it is now held "
                                        rf"by trajlab, host {HOST}, pid {os.getpid()}"):
        old.renew()
    assert old.lost and not old.held
    with pytest.raises(LeaseLost):
        old.check()
    assert old.release() is False
    assert record(store)["token"] == new.token              # the new holder's lease stays
    new.check()
    new.renew()
    assert new.release() is True


def test_two_contenders_for_a_stale_lease_exactly_one_wins(store):
    Lease(store, ttl_seconds=TTL, heartbeat_seconds=0.1).acquire()
    time.sleep(LAPSE)
    n = 6
    leases = [Lease(store) for _ in range(n)]
    barrier = threading.Barrier(n)
    outcome = [None] * n

    def contend(i):
        barrier.wait()
        try:
            leases[i].acquire()
            outcome[i] = "won"
        except RunDirError as exc:
            outcome[i] = str(exc)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i in range(n) if outcome[i] == "won"]
    assert len(winners) == 1, outcome
    assert record(store)["token"] == leases[winners[0]].token
    for i in range(n):
        if i != winners[0]:
            assert "is being written by another process" in outcome[i]
            assert not leases[i].held


def test_staleness_is_judged_by_the_store_clock(tmp_path):
    """This host's clock does not matter: a store whose clock runs 1000 s
    ahead sees a fresh lease as stale; one 1000 s behind never does."""
    inner = LocalStore(tmp_path / "run")
    Lease(inner).acquire()

    class Ahead(Wrapped):
        def server_time(self, key=None):
            return self.inner.server_time(key) + 1000

    class Behind(Wrapped):
        def server_time(self, key=None):
            return self.inner.server_time(key) - 1000

    assert Lease(Ahead(inner)).acquire().took_over is not None
    holder = record(inner)
    time.sleep(0.1)
    with pytest.raises(RunDirError, match="is being written by another process"):
        Lease(Behind(inner), ttl_seconds=0.1, heartbeat_seconds=0.01).acquire()
    assert record(inner) == holder


# ---------------------------------------------------------------- heartbeat
def test_heartbeat_thread_keeps_the_lease_fresh(store):
    lease = Lease(store, ttl_seconds=TTL, heartbeat_seconds=0.1)
    with lease:
        first = record(store)
        etag = lease.etag
        time.sleep(LAPSE)
        lease.check()
        with pytest.raises(RunDirError, match="is being written by another process"):
            Lease(store).acquire()
        now = record(store)
        assert now["token"] == first["token"] and now["since"] == first["since"]
        assert now["heartbeat_unix"] > first["heartbeat_unix"] + 1
        assert lease.etag != etag
    assert not store.exists(LEASE_KEY)
    assert not any(t.name == "trajlab-lease" and t.is_alive() for t in threading.enumerate())


def test_check_fails_without_renewal(tmp_path):
    lease = Lease(LocalStore(tmp_path), ttl_seconds=0.4, heartbeat_seconds=0.1).acquire()
    lease.check()
    time.sleep(0.25)
    with pytest.raises(LeaseLost, match=r"last renewed 0\.\d s ago, more than half its 0\.4 s"):
        lease.check()
    lease.renew()                      # nobody took it over: renewing restores it
    lease.check()
    assert lease.renew_if_due() is False
    time.sleep(0.12)
    assert lease.renew_if_due() is True
    lease.check()


def test_heartbeat_thread_stops_when_the_lease_is_lost(tmp_path):
    store = LocalStore(tmp_path)
    lease = Lease(store, ttl_seconds=0.4, heartbeat_seconds=0.05).acquire().start()
    # another writer replaces the lease behind its back
    store.put(LEASE_KEY, json.dumps({"program": "trajlab", "token": "x" * 32, "pid": 1,
                                     "host": "elsewhere", "since": "2026-01-01T00:00:00Z",
                                     "heartbeat_unix": 1.0, "ttl_seconds": 60}).encode())
    deadline = time.monotonic() + 5
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lease.lost
    with pytest.raises(LeaseLost, match="held by trajlab, host elsewhere, pid 1"):
        lease.check()
    lease.stop()
    assert record(store)["host"] == "elsewhere"
    assert lease.release() is False and store.exists(LEASE_KEY)


def test_heartbeat_survives_transient_errors(tmp_path):
    class Flaky(Wrapped):
        fail = 0

        def put_if_match(self, key, data, etag):
            if self.fail:
                self.fail -= 1
                raise ConnectionError("connection reset")
            return self.inner.put_if_match(key, data, etag)

    store = Flaky(LocalStore(tmp_path))
    lease = Lease(store, ttl_seconds=1.0, heartbeat_seconds=0.1, allow_unsafe_store=True)
    lease.acquire()
    store.fail = 3
    lease.start()
    time.sleep(0.6)
    lease.check()
    assert store.fail == 0
    lease.release()


# ------------------------------------------------------------------ release
def test_release_and_context_manager(store):
    with Lease(store) as lease:
        assert lease.held and store.exists(LEASE_KEY)
        with pytest.raises(RunDirError, match="already held"):
            lease.acquire()
    assert not lease.held and not store.exists(LEASE_KEY)
    assert lease.release() is False                # twice: nothing to do
    with pytest.raises(RunDirError, match="not held by this process"):
        lease.renew()
    with pytest.raises(RunDirError, match="not held by this process"):
        lease.check()


# ------------------------------------------------------------ unsafe stores
class IgnoresConditions(Wrapped):
    """An S3-compatible server that ignores If-None-Match and If-Match."""

    def put_if_absent(self, key, data):
        return self.inner.put(key, data)

    def put_if_match(self, key, data, etag):
        return self.inner.put(key, data)


class IgnoresIfMatch(Wrapped):
    """A server that honours If-None-Match but ignores If-Match."""

    def put_if_match(self, key, data, etag):
        return self.inner.put(key, data)


@pytest.mark.parametrize("cls, accepted", [
    (IgnoresConditions, "a second create (If-None-Match: *) and a replace with a wrong ETag"),
    (IgnoresIfMatch, "a replace with a wrong ETag (If-Match)")])
def test_store_without_conditional_writes_refused(store, cls, accepted):
    unsafe = cls(store)
    lease = Lease(unsafe)
    with pytest.raises(RunDirError) as ei:
        lease.acquire()
    msg = str(ei.value)
    assert f"The store {store.url!r} does not honour conditional writes: it accepted " \
        f"{accepted}" in msg
    assert "allow_unsafe_store=True" in msg
    assert not lease.held and not store.exists(LEASE_KEY)       # nothing left behind
    single = Lease(unsafe, allow_unsafe_store=True).acquire()     # explicit opt-out
    assert single.held and record(store)["token"] == single.token


# -------------------------------------------------- robustness and input
def test_foreign_object_at_the_lease_key_is_not_overwritten(store):
    store.put(LEASE_KEY, b'{"owner": "someone else"}')
    with pytest.raises(RunDirError, match=r"does not hold a trajlab lease record \(not a "
                                          r"trajlab lease record\); trajlab does not "
                                          r"overwrite it"):
        Lease(store).acquire()
    assert store.get(LEASE_KEY, 100) == b'{"owner": "someone else"}'
    store.put(LEASE_KEY, b"x" * 10000)
    with pytest.raises(RunDirError, match="holds 10000 bytes, more than a trajlab lease"):
        Lease(store).acquire()


def test_own_write_answered_as_conflict_is_recognised(tmp_path):
    """A conditional PUT that succeeded but whose answer was lost is retried by
    the client and then fails its condition; the lease sees its own record."""
    class LostAnswer(Wrapped):
        def put_if_absent(self, key, data):
            if not self.inner.exists(key):
                self.inner.put_if_absent(key, data)
                return None                          # as if the retry got 412
            return self.inner.put_if_absent(key, data)

        def put_if_match(self, key, data, etag):
            if self.inner.put_if_match(key, data, etag) is not None:
                return None                          # written, answer lost
            return None

    store = LostAnswer(LocalStore(tmp_path))
    lease = Lease(store, allow_unsafe_store=True).acquire()
    assert lease.held and record(store)["token"] == lease.token
    before = record(store)["heartbeat_unix"]
    time.sleep(0.01)
    lease.renew()
    assert record(store)["heartbeat_unix"] > before
    assert lease.etag == store.head(LEASE_KEY).etag


def test_bad_parameters(tmp_path):
    store = LocalStore(tmp_path)
    with pytest.raises(TypeError, match=r"The 'store' parameter of Lease must be a "
                                        r"trajlab.objstore.Store"):
        Lease(str(tmp_path))
    with pytest.raises(ValueError, match=r"The 'heartbeat_seconds' parameter of Lease must be "
                                         r"a finite float in the range \(0, 30\)\. Got 30"):
        Lease(store, ttl_seconds=60, heartbeat_seconds=30)
    with pytest.raises(ValueError, match=r"The 'ttl_seconds' parameter of Lease"):
        Lease(store, ttl_seconds=0)
    with pytest.raises(ValueError, match=r"The 'key' parameter of Lease"):
        Lease(store, key="../lease.json")
    with pytest.raises(TypeError, match=r"The 'allow_unsafe_store' parameter of Lease"):
        Lease(store, allow_unsafe_store=1)
    assert not os.listdir(tmp_path)


def test_lease_does_not_pickle(tmp_path):
    with pytest.raises(TypeError, match="belongs to the process that acquired it"):
        pickle.dumps(Lease(LocalStore(tmp_path)))
