"""trajlab.objstore: the same Store contract on a local folder and on S3 (moto)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import threading
import time

import numpy as np
import pytest

from _s3 import s3  # noqa: F401  (session fixture: moto server on 127.0.0.1)
from trajlab import objstore
from trajlab.objstore import (LocalStore, ObjectInfo, ObjectTooLargeError, S3Store,
                              TruncatedObjectError, open_store)
from trajlab.storage import RunDirError, TooLargeError


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return open_store(request.getfixturevalue("s3").new_url())


def tree(path):
    """{relative path: bytes} of every file below ``path`` (links as 'link->target')."""
    out = {}
    for d, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, path)
            if os.path.islink(p):
                out[rel] = "link->" + os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as fh:
                    out[rel] = fh.read()
    return out


# ------------------------------------------------------------ round trips
def test_round_trip_and_overwrite(store):
    payload = bytes(range(256)) * 40
    etag = store.put("data/videos/c/0/0", payload)
    assert store.get("data/videos/c/0/0", len(payload)) == payload
    assert store.size("data/videos/c/0/0") == len(payload)
    assert store.exists("data/videos/c/0/0")
    info = store.head("data/videos/c/0/0")
    assert isinstance(info, ObjectInfo) and info.etag == etag and info.size == len(payload)
    # a rewrite with other bytes changes content, size and ETag
    etag2 = store.put("data/videos/c/0/0", b"short")
    assert etag2 != etag and store.head("data/videos/c/0/0").etag == etag2
    assert store.get("data/videos/c/0/0", 5) == b"short"
    assert store.size("data/videos/c/0/0") == 5


@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "numpy", "structured", "empty"])
def test_put_accepts_bytes_like(store, kind):
    arr = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    rec = np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")])
    data = {"bytearray": bytearray(b"abc" * 5), "memoryview": memoryview(b"xyz" * 7),
            "numpy": arr, "structured": rec, "empty": b""}[kind]
    store.put("k", data)
    expect = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    assert store.get("k", len(expect)) == expect
    assert store.size("k") == len(expect)


def test_put_refuses_non_bytes(store):
    with pytest.raises(TypeError, match=r"The 'data' parameter of \w+Store.put must be a "
                                        r"bytes-like object"):
        store.put("k", "text")
    with pytest.raises(ValueError, match="C-contiguous"):
        store.put("k", np.zeros((4, 4), np.uint8)[:, ::2])
    assert not store.exists("k")


def test_get_bounded(store):
    store.put("a.json", b"x" * 100)
    assert store.get("a.json", 100) == b"x" * 100
    with pytest.raises(ObjectTooLargeError) as ei:
        store.get("a.json", 99)
    assert ei.value.size == 100 and ei.value.max_bytes == 99
    assert isinstance(ei.value, TooLargeError)       # what trajlab.storage callers catch
    assert "a.json holds 100 bytes, more than the 99 bytes" in str(ei.value)
    with pytest.raises(ValueError, match=r"'max_bytes' parameter .* Got -1 instead"):
        store.get("a.json", -1)


def test_ranged_reads(store):
    payload = os.urandom(5000)
    store.put("s/obj", payload)
    for start, length in [(0, 1), (0, 5000), (1234, 100), (4999, 1), (5000, 0), (17, 0)]:
        assert store.get_range("s/obj", start, length) == payload[start:start + length]
    for start, length in [(4990, 20), (5000, 1), (9000, 10), (5001, 0)]:
        with pytest.raises(TruncatedObjectError, match=r"s/obj is truncated") as ei:
            store.get_range("s/obj", start, length)
        assert ei.value.got == max(0, min(length, 5000 - start))
    with pytest.raises(ValueError, match=r"'start' parameter .* Got -1 instead"):
        store.get_range("s/obj", -1, 4)


def test_many_ranges(store):
    payload = os.urandom(3000)
    store.put("s/obj", payload)
    ranges = [(i * 97 % 2900, 1 + i % 90) for i in range(40)]
    assert store.get_ranges("s/obj", ranges) == [payload[a:a + n] for a, n in ranges]
    assert store.get_ranges("s/obj", [(5, 0), (0, 3)]) == [b"", payload[:3]]
    assert store.get_ranges("s/obj", []) == []
    with pytest.raises(TruncatedObjectError, match="s/obj is truncated"):
        store.get_ranges("s/obj", [(0, 10), (2995, 10)])
    with pytest.raises(FileNotFoundError):
        store.get_ranges("absent", [(0, 1)])
    with pytest.raises(TypeError, match=r"The 'ranges' parameter of \w+Store.get_ranges"):
        store.get_ranges("s/obj", [(0, 1, 2)])
    with pytest.raises(ValueError, match=r"The 'length' parameter of \w+Store.get_ranges"):
        store.get_ranges("s/obj", [(0, -1)])


def test_absent_keys(store):
    store.put("present", b"1")
    with pytest.raises(FileNotFoundError, match="absent"):
        store.get("absent", 10)
    with pytest.raises(FileNotFoundError, match="nested/absent"):
        store.get_range("nested/absent", 0, 1)
    with pytest.raises(FileNotFoundError):
        store.get_range("absent", 0, 0)
    assert store.size("absent") is None
    assert store.head("nested/absent") is None
    assert not store.exists("absent")
    store.put("folder/obj", b"1")
    with pytest.raises(FileNotFoundError, match="folder"):   # a prefix is no object
        store.get("folder", 10)
    with pytest.raises(FileNotFoundError, match="folder"):
        store.get_range("folder", 0, 1)
    assert store.size("folder") is None and store.head("folder") is None
    store.delete("folder/obj")
    store.delete("absent")              # no error
    store.delete("nested/absent")
    assert store.list() == ["present"]


def test_list_and_delete(store):
    keys = ["shards/00001.json", "shards/00000.json", "data/zarr.json", "data/videos/c/1/0",
            "data/videos/c/0/0", "spec.json", ".lease.json"]
    for k in keys:
        store.put(k, k.encode())
    assert store.list() == sorted(keys)
    assert store.list("") == sorted(keys)
    assert store.list("shards") == ["shards/00000.json", "shards/00001.json"]
    assert store.list("shards/") == store.list("shards")
    assert store.list("data/videos") == ["data/videos/c/0/0", "data/videos/c/1/0"]
    assert store.list("nothing") == []
    assert store.list("spec.json") == []        # an object, not a folder
    assert store.list("shard") == []            # folder-like prefixes, not string prefixes
    store.delete("shards/00000.json")
    assert store.list("shards") == ["shards/00001.json"]
    assert store.get("shards/00001.json", 100) == b"shards/00001.json"


def test_list_skips_names_that_are_not_keys(store, request):
    store.put("ok/a", b"1")
    if isinstance(store, LocalStore):
        with open(os.path.join(store.root, "ok", "with space"), "wb") as fh:
            fh.write(b"x")
        # a temporary file of a writer (see trajlab.storage.temp_path)
        with open(os.path.join(store.root, "ok", ".b.trajlab-tmp.host.123.0123abcd"), "wb"):
            pass
    else:
        c = request.getfixturevalue("s3").client()
        c.put_object(Bucket=store.bucket, Key=store.prefix + "/ok/with space", Body=b"x")
        c.put_object(Bucket=store.bucket, Key=store.prefix + "/ok//double", Body=b"x")
        c.put_object(Bucket=store.bucket, Key=store.prefix + "/ok/dir/", Body=b"")
    assert store.list("ok") == ["ok/a"]


# --------------------------------------------------------------- bad keys
BAD_KEYS = ["", "/abs", "trailing/", "a//b", "..", "../up", "a/../b", "./a", "a/.", "a\\b",
            "a\x00b", "a b", "caf\u00e9", "a?b", "a*", "x" * 256, "/".join(["abcdefgh"] * 120)]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_refused(store, key, tmp_path):
    before = tree(tmp_path)
    calls = [("get", (key, 10)), ("get_range", (key, 0, 1)), ("size", (key,)),
             ("exists", (key,)), ("head", (key,)), ("put", (key, b"x")),
             ("put_if_absent", (key, b"x")), ("put_if_match", (key, b"x", "e")),
             ("delete", (key,)), ("delete_if_match", (key, "e"))]
    for method, args in calls:
        with pytest.raises(ValueError) as ei:
            getattr(store, method)(*args)
        msg = str(ei.value)
        assert msg.startswith(f"The 'key' parameter of {type(store).__name__}.") \
            or msg.startswith(f"The 'key' parameter of Store"), msg
        assert "[A-Za-z0-9._-]" in msg and f"Got {key!r} instead." in msg
    assert tree(tmp_path) == before
    assert store.list() == []


@pytest.mark.parametrize("key", [None, 3, b"a", ["a"]])
def test_non_str_keys_refused(store, key):
    with pytest.raises(TypeError, match=r"The 'key' parameter of \w+Store\.get must be"):
        store.get(key, 10)


@pytest.mark.parametrize("prefix", ["/", "/a", "a//b", "../x", "a b"])
def test_bad_list_prefix_refused(store, prefix):
    with pytest.raises(ValueError, match=r"The 'prefix' parameter of \w+Store\.list"):
        store.list(prefix)


# ------------------------------------------------------ conditional writes
def test_conditional_writes(store):
    e1 = store.put_if_absent("lease", b"one")
    assert e1 is not None and store.head("lease").etag == e1
    assert store.put_if_absent("lease", b"two") is None
    assert store.get("lease", 10) == b"one"
    assert store.put_if_match("lease", b"three", '"00000000000000000000000000000000"') is None
    assert store.get("lease", 10) == b"one"
    e2 = store.put_if_match("lease", b"four", e1)
    assert e2 is not None and e2 != e1 and store.get("lease", 10) == b"four"
    assert store.head("lease").etag == e2
    assert store.put_if_match("lease", b"five", e1) is None           # stale ETag
    assert store.get("lease", 10) == b"four"
    assert store.put_if_match("absent", b"x", e2) is None
    assert not store.exists("absent")
    assert store.delete_if_match("lease", e1) is False
    assert store.get("lease", 10) == b"four"
    assert store.delete_if_match("lease", e2) is True
    assert not store.exists("lease")
    assert store.delete_if_match("lease", e2) is False
    assert store.put_if_absent("lease", b"again") is not None       # free again


def test_same_bytes_rewritten_keeps_condition_semantics(store):
    """Rewriting identical bytes: the ETag may stay (S3: MD5 of the body) but
    it must still match what head() reports."""
    e1 = store.put("k", b"same")
    e2 = store.put_if_match("k", b"same", e1)
    assert e2 is not None and store.head("k").etag == e2


def test_s3_conditions_are_real_412(s3):
    """The None/False results map the server's own 412 answers: the same
    requests through a plain botocore client fail with PreconditionFailed."""
    from botocore.exceptions import ClientError

    store = open_store(s3.new_url())
    e1 = store.put("lease", b"one")
    store.put("lease", b"two")                  # e1 is now stale
    c, key = s3.client(), store.prefix + "/lease"
    for call in (lambda: c.put_object(Bucket=s3.bucket, Key=key, Body=b"x", IfNoneMatch="*"),
                 lambda: c.put_object(Bucket=s3.bucket, Key=key, Body=b"x", IfMatch=e1),
                 lambda: c.delete_object(Bucket=s3.bucket, Key=key, IfMatch=e1)):
        with pytest.raises(ClientError) as ei:
            call()
        assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert store.put_if_absent("lease", b"x") is None
    assert store.put_if_match("lease", b"x", e1) is None
    assert store.delete_if_match("lease", e1) is False
    assert store.get("lease", 10) == b"two"


def _race(write, n=8):
    """Run ``write(i)`` for i < n in n threads released at once; the results."""
    barrier = threading.Barrier(n)
    results = [None] * n

    def contend(i):
        barrier.wait()
        results[i] = write(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_put_if_absent_race_has_one_winner(store):
    results = _race(lambda i: store.put_if_absent("race", f"writer {i}".encode()))
    winners = [i for i, r in enumerate(results) if r is not None]
    assert len(winners) == 1
    assert store.get("race", 100) == f"writer {winners[0]}".encode()
    assert store.head("race").etag == results[winners[0]]


def test_put_if_match_race_has_one_winner(store):
    # rounds: moto's own server let two contenders win in 1-3 % of rounds
    # under load (tests/_moto_server.py makes it atomic, as S3 is)
    for r in range(20):
        key = f"race{r}"
        etag = store.put(key, b"start")
        results = _race(lambda i: store.put_if_match(key, f"writer {i}".encode(), etag))
        winners = [i for i, res in enumerate(results) if res is not None]
        assert len(winners) == 1, (r, results)
        assert store.get(key, 100) == f"writer {winners[0]}".encode()


def test_server_time(store):
    t0 = time.time()
    store.put("t", b"x")
    info = store.head("t")
    now = store.server_time()
    assert store.server_time("t") >= info.last_modified - 1e-3
    # the test server runs on this host: its clock is this clock (S3: whole seconds)
    assert abs(now - t0) < 5 and abs(info.last_modified - t0) < 5
    assert now >= info.last_modified - 1e-3


def test_s3_server_time_from_any_answer(s3):
    store = open_store(s3.new_url())
    # a HEAD of a missing key (404, or 403 without s3:ListBucket) still carries a Date
    assert abs(store.server_time("never/written") - time.time()) < 5


# ------------------------------------------------------------------ pickling
def _child_put(store, key, data, q):
    try:
        store.put(key, data)
        q.put(store.get(key, 100))
    except BaseException as exc:       # pragma: no cover - reported to the parent
        q.put(repr(exc))


def test_store_crosses_processes(store):
    """Fork: the child makes its own client (the parent's belongs to its event loop)."""
    _cross_processes(store, "fork")


@pytest.mark.slow
def test_s3_store_reaches_spawned_workers(s3):
    """Spawn (as loky and dask workers start): only the pickled URL travels."""
    _cross_processes(open_store(s3.new_url()), "spawn")


def _cross_processes(store, method):
    store.put("parent", b"from the parent")          # the parent's client exists (fork case)
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store and clone.url == store.url and type(clone) is type(store)
    assert clone.get("parent", 100) == b"from the parent"
    ctx = multiprocessing.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_child_put, args=(store, "child/obj", b"from a worker", q))
    p.start()
    try:
        got = q.get(timeout=60)
    finally:
        p.join(30)
    assert got == b"from a worker"
    assert store.get("child/obj", 100) == b"from a worker"


def test_pickle_is_url_and_options(s3, monkeypatch):
    url = s3.new_url()
    store = open_store(url, {"endpoint_url": s3.endpoint})
    state = pickle.dumps(store)
    assert b"_fs" not in state and b"S3FileSystem" not in state
    assert pickle.loads(state).storage_options == {"endpoint_url": s3.endpoint}
    # the storage options, not the environment, carry the endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")      # nothing listens
    clone = pickle.loads(state)
    clone.put("x", b"1")
    assert clone.get("x", 1) == b"1"


# ------------------------------------------------------------- open_store
def test_open_store_dispatch(tmp_path, s3):
    local = open_store(tmp_path / "run")
    assert isinstance(local, LocalStore) and local.url == str(tmp_path / "run")
    assert open_store(local) is local
    rel = open_store("relative/dir")
    assert rel.root == os.path.abspath("relative/dir")
    remote = open_store(f"s3://{s3.bucket}/some/prefix/")
    assert isinstance(remote, S3Store)
    assert (remote.bucket, remote.prefix, remote.url) == (s3.bucket, "some/prefix",
                                                          f"s3://{s3.bucket}/some/prefix")
    bucket_root = open_store(f"s3://{s3.bucket}")
    assert bucket_root.prefix == "" and bucket_root.url == f"s3://{s3.bucket}"


@pytest.mark.parametrize("url", ["gs://bucket/x", "http://127.0.0.1/x", "file:///tmp/x",
                                 "S3://bucket/x", "s3a://bucket/x"])
def test_open_store_other_schemes_refused(url):
    with pytest.raises(ValueError) as ei:
        open_store(url, name="run_dir", owner="generate")
    msg = str(ei.value)
    assert msg.startswith("The 'run_dir' parameter of generate must be a local path or an "
                          "'s3://bucket/prefix' URL")
    assert "'s3'" in msg and msg.endswith(f"Got {url!r} instead.")


@pytest.mark.parametrize("url", ["s3://", "s3://Bucket/x", "s3://ab/x", "s3://b_c_d/x",
                                 "s3://bucket//x", "s3://bucket/a/../b", "s3://bucket/a b",
                                 "s3://bucket/x?versionId=3"])
def test_open_store_bad_s3_urls_refused(url):
    with pytest.raises(ValueError, match=r"The 'url_or_path' parameter of open_store must be "
                                         r"an 's3://bucket/prefix' URL .* Got "):
        open_store(url)


def test_open_store_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match=r"'url_or_path' parameter of open_store"):
        open_store(b"/tmp/x")
    with pytest.raises(TypeError, match=r"'url_or_path' parameter of open_store"):
        open_store(None)
    with pytest.raises(ValueError, match=r"'url_or_path' parameter of open_store"):
        open_store("")
    with pytest.raises(ValueError, match=r"'storage_options' parameter of open_store must be "
                                         r"None for a local path"):
        open_store(tmp_path, {"anon": True})
    with pytest.raises(TypeError, match=r"'storage_options' parameter of open_store must be "
                                        r"a dict"):
        open_store("s3://bucket/x", ["anon"])


def test_missing_s3fs_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)      # import s3fs -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'trajlab\[s3\]'"):
        open_store("s3://bucket/prefix")


# ------------------------------------------------ local: no symbolic links
def test_local_symlinked_folder_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not touch")
    store = LocalStore(tmp_path / "run")
    store.put("data/zarr.json", b"{}")
    os.symlink(outside, tmp_path / "run" / "data" / "videos")
    before = tree(outside)
    for call in (lambda: store.put("data/videos/c/0", b"evil"),
                 lambda: store.put_if_absent("data/videos/c/0", b"evil"),
                 lambda: store.get("data/videos/secret", 100),
                 lambda: store.get_range("data/videos/secret", 0, 1),
                 lambda: store.size("data/videos/secret"),
                 lambda: store.head("data/videos/secret"),
                 lambda: store.delete("data/videos/secret"),
                 lambda: store.put_if_match("data/videos/secret", b"x", "e"),
                 lambda: store.delete_if_match("data/videos/secret", "e"),
                 lambda: store.list("data"),
                 lambda: store.list("data/videos")):
        with pytest.raises(RunDirError, match="is a symbolic link"):
            call()
    assert tree(outside) == before


def test_local_symlinked_object_refused(tmp_path):
    outside = tmp_path / "secret"
    outside.write_bytes(b"do not touch")
    store = LocalStore(tmp_path / "run")
    store.put("shards/00000.json", b"{}")
    os.symlink(outside, tmp_path / "run" / "shards" / "00001.json")
    for call in (lambda: store.get("shards/00001.json", 100),
                 lambda: store.get_range("shards/00001.json", 0, 1),
                 lambda: store.size("shards/00001.json"),
                 lambda: store.head("shards/00001.json"),
                 lambda: store.exists("shards/00001.json"),
                 lambda: store.delete("shards/00001.json"),
                 lambda: store.put_if_absent("shards/00001.json", b"x"),
                 lambda: store.put_if_match("shards/00001.json", b"x", "e"),
                 lambda: store.delete_if_match("shards/00001.json", "e"),
                 lambda: store.list("shards")):
        with pytest.raises(RunDirError, match="is a symbolic link"):
            call()
    assert outside.read_bytes() == b"do not touch"
    # a whole-object put replaces the link itself, never its target
    store.put("shards/00001.json", b"new")
    assert not os.path.islink(tmp_path / "run" / "shards" / "00001.json")
    assert outside.read_bytes() == b"do not touch"
    assert store.get("shards/00001.json", 10) == b"new"


def test_local_file_in_place_of_folder(tmp_path):
    store = LocalStore(tmp_path / "run")
    store.put("data", b"a file")
    with pytest.raises(RunDirError, match="should be a folder"):
        store.put("data/zarr.json", b"{}")
    assert store.get("data", 10) == b"a file"
    store.put("x/y", b"1")
    with pytest.raises(RunDirError, match="is a folder"):
        store.delete("x")
    assert store.get("x/y", 1) == b"1"


def test_local_put_is_atomic_and_leaves_no_temp(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "run")
    store.put("k", b"old", fsync=True)

    def failing_replace(src, dst, **dir_fds):
        raise OSError(28, "No space left on device")

    # a failure at the rename (the last step) leaves the old object and no temporary file
    monkeypatch.setattr(objstore._st.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        store.put("k", b"new" * 1000)
    monkeypatch.undo()
    assert store.get("k", 10) == b"old"
    assert sorted(os.listdir(tmp_path / "run")) == ["k"]


def test_get_tail_gives_the_end_and_the_size(store):
    data = bytes(range(256)) * 3
    store.put("o", data)
    assert store.get_tail("o", 10) == (data[-10:], 768)
    assert store.get_tail("o", 5000) == (data, 768)        # longer than the object: all of it
    store.put("empty", b"")
    assert store.get_tail("empty", 4) == (b"", 0)
    with pytest.raises(FileNotFoundError):
        store.get_tail("missing", 4)
    with pytest.raises(ValueError, match=r"'length' parameter of \w+Store\.get_tail"):
        store.get_tail("o", 0)


def test_many_requests_in_a_row_do_not_stall(store):
    """The test server once blocked after ~600 requests (its log filled a
    pipe nobody read): 1,000 requests must all be answered."""
    store.put("o", b"x" * 100)
    for _ in range(250):
        assert store.size("o") == 100 and store.exists("o")
        assert store.get("o", 1000) == b"x" * 100 and store.get_range("o", 10, 5) == b"xxxxx"
