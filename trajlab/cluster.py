"""Run :func:`trajlab.generate` on a dask.distributed cluster via joblib.

The engine does not know about dask: it runs ``joblib.Parallel`` over
``write_shard`` tasks. :func:`dask_backend` makes joblib send those tasks to
a dask cluster — an existing one (``scheduler='tcp://host:8786'``) or a
local one started for trying it out (``scheduler=None``)::

    from trajlab.cluster import dask_backend
    with dask_backend("tcp://10.0.0.5:8786"):
        trajlab.generate(spec, "/mnt/shared/run")   # backend=None: the active config

which is what ``generate(..., backend='dask', scheduler=...)`` and
``trajlab generate ... --backend dask --scheduler ...`` do.

Workers write their shards straight into the run directory, so the run dir
must be on a filesystem that every worker and the parent process mount at
the same path (see ``docs/CLUSTER.md``); :func:`check_shared_storage`
checks that before any shard is scheduled. The parent alone writes records,
progress and the manifest, exactly as with ``loky``.

Requires the optional dependency group ``trajlab[dask]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time

__all__ = ["dask_backend", "check_scheduler", "check_shared_storage", "SchedulerError",
           "connect_timeout", "CONNECT_TIMEOUT"]

#: Seconds to wait for a scheduler (and for its first worker) before failing.
#: Overridden by the ``TRAJLAB_DASK_TIMEOUT`` environment variable.
CONNECT_TIMEOUT = 10.0
_OWNER = "generate"


class SchedulerError(ConnectionError, ValueError):
    """The dask scheduler cannot be reached or has no workers.

    Both a :class:`ConnectionError` (what it is) and a :class:`ValueError`
    (the ``scheduler`` argument is wrong), so the CLI reports it as a bad
    argument (exit code 2).
    """


def connect_timeout(timeout=None):
    """The connection timeout in seconds: ``timeout``, else
    ``$TRAJLAB_DASK_TIMEOUT``, else :data:`CONNECT_TIMEOUT`."""
    if timeout is None:
        env = os.environ.get("TRAJLAB_DASK_TIMEOUT", "").strip()
        try:
            timeout = float(env) if env else CONNECT_TIMEOUT
        except ValueError:
            timeout = CONNECT_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"The 'timeout' parameter of dask_backend must be a positive number "
                         f"of seconds. Got {timeout!r} instead.")
    return float(timeout)


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            "backend='dask' needs dask.distributed, which is not installed. Install it with "
            "`pip install 'trajlab[dask]'` (or `conda install dask distributed`).") from exc
    return distributed


def _is_client(obj):
    try:
        from distributed import Client
    except ImportError:
        return False
    return isinstance(obj, Client)


def _check_address(scheduler):
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise TypeError(
            f"The 'scheduler' parameter of {_OWNER} must be a dask scheduler address such as "
            f"'tcp://10.0.0.5:8786', a distributed.Client, or None for a local cluster. "
            f"Got {scheduler!r} instead.")
    return scheduler.strip()


def _unreachable(address, timeout, reason):
    return SchedulerError(
        f"Cannot reach the dask scheduler at {address!r} (timeout {timeout:g} s): {reason}. "
        f"Check the 'scheduler' parameter of {_OWNER} (e.g. 'tcp://10.0.0.5:8786'). Start "
        "one with `dask scheduler` and workers with `dask worker ADDRESS`, or omit "
        "--scheduler (scheduler=None) for a local cluster.")


def _probe_socket(address, timeout):
    """Fail fast on a refused or unresolvable TCP address (a Client would
    retry until its timeout)."""
    from distributed.comm import parse_address, parse_host_port

    try:
        proto, loc = parse_address(address)
    except ValueError as exc:
        raise _unreachable(address, timeout, f"not an address ({exc})") from None
    if proto not in ("tcp", "tls"):
        return
    try:
        host, port = parse_host_port(loc, default_port=8786)
    except ValueError as exc:
        raise _unreachable(address, timeout, f"not an address ({exc})") from None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise _unreachable(address, timeout, f"{type(exc).__name__}: {exc}") from None


async def _identity_async(address, timeout):
    from distributed.comm import connect

    comm = await connect(address, timeout=timeout)
    try:
        await comm.write({"op": "identity"})
        return await comm.read()
    finally:
        await comm.close()


def _identity(address, timeout):
    """The scheduler's ``identity`` reply, within ``timeout`` seconds.

    Runs its own event loop in a helper thread (this may be called from a
    notebook whose loop is running). Bounded by ``asyncio.wait_for``: a
    peer that accepts TCP but never answers would make ``Client()`` wait
    forever.
    """
    # Why not the public API alone (Client(address, timeout=...),
    # wait_for_workers, scheduler_info()): reproduced with distributed
    # 2026.8.0 -- a listening socket that accepts and never replies
    # (socket.socket().bind(("127.0.0.1", 0)); .listen(); accept in a
    # thread), then Client(f"tcp://127.0.0.1:{port}", timeout=2): no return
    # and no exception after 40 s (killed by `timeout 40`). Client's timeout
    # bounds the connect, not the handshake that follows it. The identity
    # op below is bounded by wait_for and so fails within `timeout`.
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    async def bounded():
        return await asyncio.wait_for(_identity_async(address, timeout), timeout)

    with ThreadPoolExecutor(1, thread_name_prefix="trajlab-dask-probe") as ex:
        try:
            reply = ex.submit(asyncio.run, bounded()).result()
        except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
            raise _unreachable(address, timeout,
                               f"{type(exc).__name__}: {exc}" if str(exc) else
                               f"no answer from a dask scheduler ({type(exc).__name__})") from None
        except Exception as exc:   # garbled reply: not a dask server
            raise _unreachable(address, timeout, f"not a dask scheduler "
                               f"({type(exc).__name__}: {exc})") from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        kind = reply.get("type") if isinstance(reply, dict) else type(reply).__name__
        raise _unreachable(address, timeout, f"it is a dask {kind}, not a scheduler")
    return reply


def _wait_for_scheduler(scheduler, timeout, min_workers=1):
    """Identity of a reachable scheduler with at least ``min_workers``."""
    address = _check_address(scheduler)
    _probe_socket(address, timeout)
    deadline = time.monotonic() + timeout
    while True:
        info = _identity(address, timeout)
        if info.get("n_workers", len(info.get("workers", {}))) >= min_workers:
            return info
        if time.monotonic() >= deadline:
            raise SchedulerError(
                f"The dask scheduler at {address!r} has no workers (waited {timeout:g} s). "
                f"Start workers with `dask worker {address}` on hosts that mount the run "
                "directory at the same path.")
        time.sleep(0.2)


def _connect(scheduler, timeout, min_workers=1):
    """A Client connected to ``scheduler`` with at least ``min_workers``."""
    from distributed import Client

    _wait_for_scheduler(scheduler, timeout, min_workers)
    address = scheduler.strip()
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise _unreachable(address, timeout, f"{type(exc).__name__}: {exc}") from None


def check_scheduler(scheduler, *, timeout=None, min_workers=1):
    """Check, without doing any work, that ``scheduler`` can run a generation.

    Meant to be called by :func:`trajlab.generate` before it touches the run
    directory, so that a wrong address fails fast and leaves nothing behind.

    Parameters
    ----------
    scheduler : str, distributed.Client or None
        A scheduler address (``'tcp://host:8786'``). ``None`` (a local
        cluster will be started) and a Client only check that
        dask.distributed is installed.
    timeout : float, optional
        Seconds to wait for the connection and for ``min_workers`` workers
        (default :func:`connect_timeout`).
    min_workers : int, default=1

    Returns
    -------
    info : dict
        ``address``, ``workers`` (count) and ``threads`` (total), or
        ``{'address': None}`` when nothing was contacted.

    Raises
    ------
    ImportError
        dask.distributed is missing.
    TypeError
        ``scheduler`` is neither an address, a Client nor None.
    SchedulerError
        (a ConnectionError and a ValueError) the scheduler cannot be reached
        within ``timeout`` or has no worker.
    """
    _import_distributed()
    if scheduler is None or _is_client(scheduler):
        return {"address": None}
    info = _wait_for_scheduler(scheduler, connect_timeout(timeout), min_workers)
    return {"address": info.get("address"), "workers": info.get("n_workers"),
            "threads": info.get("total_threads")}


def _probe_run_dir(path):
    """Runs on each worker: what this host sees at ``path/spec.json``."""
    import trajlab
    from trajlab.spec import DATA_VERSION

    out = {"host": socket.gethostname(), "pid": os.getpid(),
           "trajlab": trajlab.__version__, "data_version": DATA_VERSION}
    from trajlab.storage import is_remote, read_bytes

    try:
        raw = read_bytes(os.path.join(path, "spec.json"), 2**24)
        out["spec_sha256"] = hashlib.sha256(raw).hexdigest()
        from trajlab.generator import probe_digest
        from trajlab.spec import DatasetSpec

        doc = json.loads(raw)
        out["probe_sha256"] = probe_digest(DatasetSpec.from_dict(doc["spec"]))
        # format 1: written in place into videos.npy; format 2: new objects
        # in the array folders
        if is_remote(path):     # an object store: write access shows in the first PUT
            out["writable"] = True
            return out
        ok = (os.access(os.path.join(path, "videos.npy"), os.W_OK)
              if doc.get("format_version") == 1 else
              all(os.access(os.path.join(path, "data", name), os.W_OK | os.X_OK)
                  for name in doc["layout"]["arrays"]))
        # annotation files exist only in run dirs that keep them as JSON lines
        out["writable"] = ok and (doc["layout"].get("annotations", "jsonl") != "jsonl"
                                  or os.access(os.path.join(path, "annotations"),
                                               os.W_OK | os.X_OK))
    except OSError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def check_shared_storage(client, run_dir, *, timeout=None):
    """Check that every worker sees ``run_dir`` as this process does.

    Each worker hashes ``run_dir/spec.json`` (written first, with a creation
    time stamp) and checks it may write the data files; it also reports its
    trajlab and data versions, which must equal ours (another version could
    write other bytes). Retries for up to ``timeout`` seconds, since a
    network filesystem may show a new file to other hosts with a delay.

    Raises
    ------
    RunDirError
        A worker does not see the same run directory, cannot write it, or
        runs another trajlab version.
    """
    import trajlab
    from trajlab.spec import DATA_VERSION
    from trajlab.storage import RunDirError

    from trajlab.storage import is_remote, read_bytes

    run_dir = os.fspath(run_dir)
    if not is_remote(run_dir):
        run_dir = os.path.abspath(run_dir)
    raw = read_bytes(os.path.join(run_dir, "spec.json"), 2**24)
    expected = hashlib.sha256(raw).hexdigest()
    probe = json.loads(raw).get("probe_sha256")
    deadline = time.monotonic() + connect_timeout(timeout)
    while True:
        seen = client.run(_probe_run_dir, run_dir, on_error="return")
        bad, final = {}, False
        for worker, info in seen.items():
            if isinstance(info, BaseException):
                final = True
                bad[f"worker {worker}"] = (f"cannot run trajlab ({type(info).__name__}: {info}); "
                                           "is trajlab installed in the workers' environment?")
                continue
            where = f"worker {worker} (host {info['host']}, pid {info['pid']})"
            if (info["trajlab"], info["data_version"]) != (trajlab.__version__, DATA_VERSION):
                final = True
                bad[where] = (f"runs trajlab {info['trajlab']} (data version "
                              f"{info['data_version']}); this process runs trajlab "
                              f"{trajlab.__version__} (data version {DATA_VERSION})")
            elif "error" in info:
                bad[where] = f"cannot read {run_dir}/spec.json ({info['error']})"
            elif info["spec_sha256"] != expected:
                bad[where] = f"sees a different {run_dir}/spec.json (another filesystem?)"
            elif probe and info.get("probe_sha256") != probe:
                final = True
                bad[where] = ("generates different bytes for the first samples than this "
                              "process (other numpy or C library?)")
            elif not info["writable"]:
                bad[where] = f"cannot write the data files in {run_dir}"
        if not bad:
            return seen
        if final or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    lines = "\n".join(f"  {w}: {why}" for w, why in sorted(bad.items()))
    raise RunDirError(
        f"The run directory {run_dir!r} must be on storage that every dask worker and this "
        f"process mount at the same path, with the same trajlab installed; "
        f"{len(bad)} of {len(seen)} workers fail:\n{lines}\n"
        "See docs/CLUSTER.md (shared filesystem such as NFS/EFS mounted at the same path).")


_NANNY_ENV = "distributed.nanny.pre-spawn-environ"


def _start_local_cluster(n_workers, dashboard):
    """A LocalCluster for trajlab, and the environment to restore after it.

    Two adjustments to dask's defaults. (1) dask sets
    ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers, which turns off
    glibc's adaptive mmap threshold: every large temporary array is then
    mmap'ed and page-faulted afresh, slowing ``write_shard`` by 10-25 %. We
    drop it unless the user chose a value. (2) dask's nannies write their
    variables (that one, ``OMP_NUM_THREADS``..., ``PYTHONHASHSEED``) into
    *this* process's ``os.environ``; we restore them when the cluster closes.
    """
    import dask
    from distributed import LocalCluster

    spawn_env = dask.config.get(_NANNY_ENV, default={}) or {}
    saved = {k: os.environ.get(k) for k in set(spawn_env) | {"PYTHONHASHSEED"}}
    overrides = {}
    if spawn_env.get("MALLOC_TRIM_THRESHOLD_") == 65536 and \
            "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        overrides[f"{_NANNY_ENV}.MALLOC_TRIM_THRESHOLD_"] = None
    try:
        with dask.config.set(overrides):
            # loopback only, and the scheduler's HTTP server (which dask
            # starts even without a dashboard) on a free port, not 8787
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                   scheduler_kwargs={"dashboard": bool(dashboard)},
                                   silence_logs=logging.ERROR)
    except BaseException:
        _restore_env(saved)
        raise
    return cluster, saved


def _restore_env(saved):
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _local_workers(n_jobs):
    """Worker processes of a local cluster: joblib's own count, so that
    ``None`` honours ``joblib.parallel_config(n_jobs=...)`` and -1 means all
    CPUs, as for every other backend."""
    import joblib

    return max(1, joblib.effective_n_jobs(n_jobs))


@contextlib.contextmanager
def dask_backend(scheduler=None, n_jobs=None, *, run_dir=None, timeout=None, dashboard=False):
    """Make joblib run on a dask.distributed cluster inside the ``with``.

    Parameters
    ----------
    scheduler : str, distributed.Client or None
        Address of a running scheduler (``'tcp://10.0.0.5:8786'``); a
        connected Client (used as is, not closed); or None to start a
        ``distributed.LocalCluster`` of worker processes on this machine
        (loopback only), for trying the dask path out; closed on exit.
    n_jobs : int or None, default=None
        Local cluster only: worker processes (one thread each), with joblib
        semantics (``joblib.effective_n_jobs``: None = the active
        ``joblib.parallel_config``'s n_jobs, else 1; -1 = all CPUs, -2 = all
        but one). On an existing cluster
        joblib uses every worker thread and ``n_jobs`` is ignored.
    run_dir : str or os.PathLike, optional
        An existing run directory to check with :func:`check_shared_storage`
        before anything is scheduled.
    timeout : float, optional
        Seconds to wait for the scheduler and its first worker
        (default :func:`connect_timeout`).
    dashboard : bool, default=False
        Local cluster only: serve the dask dashboard on a free port of
        127.0.0.1 (needs ``bokeh``) and print its link.

    Yields
    ------
    client : distributed.Client

    Raises
    ------
    SchedulerError
        The scheduler is unreachable or has no worker (raised before any
        task is submitted).
    """
    _import_distributed()
    import joblib
    from distributed import Client

    timeout = connect_timeout(timeout)
    cluster = None
    owned = True
    if scheduler is None:
        n = _local_workers(n_jobs)
        cluster, saved_env = _start_local_cluster(n, dashboard)
        try:
            client = Client(cluster, set_as_default=False)
            client.wait_for_workers(n, timeout=max(timeout, 60.0))
        except BaseException:
            cluster.close()
            _restore_env(saved_env)
            raise
        if dashboard:
            print(f"[trajlab] dask dashboard: {client.dashboard_link}", flush=True)
    elif _is_client(scheduler):
        client, owned = scheduler, False
    else:
        client = _connect(scheduler, timeout)
    try:
        if run_dir is not None:
            check_shared_storage(client, run_dir, timeout=timeout)
        with joblib.parallel_config(backend="dask", client=client):
            yield client
    finally:
        if owned:
            # Closing the client releases its pending tasks on a shared
            # cluster; a task already running on a worker may still finish
            # its pwrite, which is harmless: it writes the very bytes a
            # resumed run writes, and only the parent writes records.
            with contextlib.suppress(Exception):
                client.close()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close()
                _restore_env(saved_env)
