"""The dask path against loky, on this machine, in one run.

Runs :func:`trajlab.generate` end to end (bytes on disk, records, manifest)
with ``backend='loky', n_jobs=2`` and with ``backend='dask'`` on a
``distributed.LocalCluster`` of 2 single-threaded worker processes, and
prints

1. throughput at the two standard sizes (best of ``--repeat``), both
   backends warm: loky's reusable executor is started by a warm-up run, and
   the dask cluster is already running (``scheduler=ADDRESS``), as on a
   real cluster;
2. the overhead per shard: with tiny shards, the marginal cost of one
   more shard, ``(d wall x workers - d busy) / d shards`` between runs of
   100 and 1000 shards, where *busy* is the workers' own time in
   ``write_shard`` (the ``seconds`` of each completion record). This is
   what scheduling, transport and the parent's bookkeeping cost per shard,
   without the fixed cost per run; the difference between the backends is
   what the dask path adds;
3. fixed costs per run: starting and closing a local cluster
   (``scheduler=None``) and connecting to a running one.

Both backends must write the same bytes: the manifest digests are compared.

    python bench/bench_dask.py               # full sizes (about 2 minutes on 2 cores)
    python bench/bench_dask.py --scale 0.1   # quick look
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from trajlab import DatasetSpec, generate  # noqa: E402

N_WORKERS = 2
THROUGHPUT = [
    # (label, n_frames, image_size, n_samples)
    ("8x3x32x32", 8, 32, 20_000),
    ("16x3x64x64", 16, 64, 3_000),
]
#: tiny samples, so that a shard costs little more than its dispatch
OVERHEAD_SPEC = dict(n_frames=2, image_size=16)
OVERHEAD_SHARD_SIZES = (1, 8, 64)          # samples per shard
OVERHEAD_COUNTS = (100, 1000)               # shards per run


def run(spec, base, backend, scheduler=None, shard_size="auto"):
    """One generate() into a fresh run dir: (wall s, busy s, shards, digest)."""
    rd = tempfile.mkdtemp(dir=base)
    try:
        t0 = time.perf_counter()
        res = generate(spec, os.path.join(rd, "run"), n_jobs=N_WORKERS, shard_size=shard_size,
                       backend=backend, scheduler=scheduler, progress="none")
        wall = time.perf_counter() - t0
        busy = 0.0
        for f in glob.glob(os.path.join(rd, "run", "shards", "*.json")):
            with open(f) as fh:
                busy += json.load(fh)["seconds"]
        return wall, busy, res.shards_total, res.manifest["digest"]
    finally:
        shutil.rmtree(rd, ignore_errors=True)


def best_of(repeat, fn):
    runs = [fn() for _ in range(repeat)]
    best = min(runs, key=lambda r: r[0])
    assert len({r[3] for r in runs}) == 1
    return best


def paired(repeat, fa, fb):
    """Best of ``repeat`` runs of each, alternating a/b so that both see the
    same background load; checks both wrote the same bytes."""
    ra, rb = [], []
    for _ in range(repeat):
        ra.append(fa())
        rb.append(fb())
    assert len({r[3] for r in ra + rb}) == 1, "dask and loky wrote different bytes"
    return min(ra, key=lambda r: r[0]), min(rb, key=lambda r: r[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every n_samples")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where run dirs go (default: system temp)")
    args = ap.parse_args()

    import distributed
    import joblib

    base = tempfile.mkdtemp(prefix="bench_dask_", dir=args.dir)
    cpu = platform.processor() or platform.machine()
    print(f"trajlab dask vs loky, {N_WORKERS} workers each | {cpu}, {os.cpu_count()} CPUs, "
          f"joblib {joblib.__version__}, distributed {distributed.__version__} | "
          f"run dirs in {base}")
    try:
        from trajlab.cluster import _restore_env, _start_local_cluster

        tiny = DatasetSpec(n_samples=4, **OVERHEAD_SPEC)
        run(tiny, base, "loky")               # start loky's workers before dask touches os.environ
        # the cluster trajlab starts for scheduler=None (dask's MALLOC_TRIM_THRESHOLD_ dropped)
        t0 = time.perf_counter()
        cluster, saved = _start_local_cluster(N_WORKERS, dashboard=False)
        t_cluster = time.perf_counter() - t0
        _restore_env(saved)
        addr = cluster.scheduler_address
        # a LocalCluster with dask's defaults, for comparison
        saved = {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS",
                                                 "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                 "PYTHONHASHSEED")}
        plain = distributed.LocalCluster(n_workers=N_WORKERS, threads_per_worker=1,
                                         processes=True, host="127.0.0.1",
                                         dashboard_address="127.0.0.1:0",
                                         silence_logs=logging.ERROR)
        _restore_env(saved)
        fixed = {
            "loky, executor warm": best_of(args.repeat, lambda: run(tiny, base, "loky"))[0],
            "dask, running cluster (connect per run)":
                best_of(args.repeat, lambda: run(tiny, base, "dask", addr))[0],
            "dask, local cluster started and closed per run":
                best_of(1, lambda: run(tiny, base, "dask", None))[0],
        }

        print("\n1. Throughput, end to end to disk (best of %d)" % args.repeat)
        print("   dask: trajlab's local cluster; dask*: LocalCluster with dask's default "
              "MALLOC_TRIM_THRESHOLD_=65536")
        print("   busy = share of the workers' wall time spent inside write_shard (1.0 = no "
              "overhead; robust to background load)")
        print(f"{'workload':<12}{'n':>7}{'shards':>7}{'loky s':>8}{'dask s':>8}{'dask* s':>8}"
              f"{'loky /s':>9}{'dask /s':>9}{'dask/loky':>10}{'busy loky/dask/dask*':>22}")
        for label, T, S, n in THROUGHPUT:
            n = max(16, int(n * args.scale))
            spec = DatasetSpec(n_samples=n, n_frames=T, image_size=S, seed=0)
            lk, dk = paired(args.repeat, lambda: run(spec, base, "loky"),
                            lambda: run(spec, base, "dask", addr))
            dp = best_of(args.repeat, lambda: run(spec, base, "dask", plain.scheduler_address))
            assert dp[3] == lk[3], "dask and loky wrote different bytes"
            eff = "/".join(f"{r[1] / (N_WORKERS * r[0]):.2f}" for r in (lk, dk, dp))
            print(f"{label:<12}{n:>7,}{lk[2]:>7}{lk[0]:>8.2f}{dk[0]:>8.2f}{dp[0]:>8.2f}"
                  f"{n / lk[0]:>9,.0f}{n / dk[0]:>9,.0f}{lk[0] / dk[0]:>9.2f}x{eff:>22}")
        plain.close()

        print("\n2. Overhead per shard, tiny shards (2x3x16x16 samples; best of %d)" % args.repeat)
        print("   marginal cost of one more shard: from runs of %d and %d shards,"
              % OVERHEAD_COUNTS)
        print("   (d wall x %d workers - d workers' busy time) / d shards" % N_WORKERS)
        print(f"{'shard size':>10}{'shards':>12}{'loky s':>13}{'dask s':>13}"
              f"{'loky ms/shard':>15}{'dask ms/shard':>15}{'added ms':>10}")
        k1, k2 = OVERHEAD_COUNTS
        for shard in OVERHEAD_SHARD_SIZES:
            per, walls, res = {}, {}, {}
            for k in (k1, k2):
                spec = DatasetSpec(n_samples=k * shard, seed=0, **OVERHEAD_SPEC)
                res["loky", k], res["dask", k] = paired(
                    args.repeat, lambda: run(spec, base, "loky", shard_size=shard),
                    lambda: run(spec, base, "dask", addr, shard_size=shard))
            for backend in ("loky", "dask"):
                r1, r2 = res[backend, k1], res[backend, k2]
                assert (r1[2], r2[2]) == (k1, k2)
                per[backend] = ((r2[0] - r1[0]) * N_WORKERS - (r2[1] - r1[1])) / (k2 - k1) * 1e3
                walls[backend] = f"{r1[0]:.2f}/{r2[0]:.2f}"
            print(f"{shard:>10}{f'{k1}/{k2}':>12}{walls['loky']:>13}{walls['dask']:>13}"
                  f"{per['loky']:>15.2f}{per['dask']:>15.2f}{per['dask'] - per['loky']:>10.2f}")

        print("\n3. Fixed cost per run (a 4-sample run, wall s)")
        print(f"   starting a {N_WORKERS}-worker LocalCluster (bench's own): {t_cluster:.2f} s")
        for k, v in fixed.items():
            print(f"   {k:<50}{v:>6.2f} s")
        cluster.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":      # dask starts workers with 'spawn': guard required
    main()
