"""An s3:// run dir against a local one, side by side in one run, on moto's
S3 server started here on 127.0.0.1 (the test server of tests/_s3.py).

Prints, for generate / a no-op resume / verify_run / open_dataset + random
clip reads: wall seconds on the bucket and on a local folder, and the S3
requests this process made (workers' PUTs are counted from the records:
13 objects a shard). moto is a Python server on the same 2 cores, so the
seconds say how the request pattern scales, not what AWS S3 would do; the
request counts are exact and what a real store's latency multiplies.

    .venv/bin/python bench/bench_s3.py                 # 1,200 x 8x32^2, 75 shards
    .venv/bin/python bench/bench_s3.py -n 4800 --shard-size 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))


def _count_requests():
    """Count S3Store's requests in this process (by S3 operation)."""
    from trajlab import objstore

    calls = Counter()
    call, alist = objstore.S3Store._call, objstore.S3Store._alist

    async def counted_call(self, fs, method, key, **kw):
        calls[method] += 1
        return await call(self, fs, method, key, **kw)

    async def counted_list(self, fs, prefix):
        calls["list_objects_v2"] += 1
        return await alist(self, fs, prefix)

    objstore.S3Store._call, objstore.S3Store._alist = counted_call, counted_list
    return calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1200)
    ap.add_argument("--n-frames", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("-j", type=int, default=2)
    ap.add_argument("--reads", type=int, default=300, help="random single clips read")
    args = ap.parse_args()

    import numpy as np

    import _s3
    import trajlab

    endpoint, proc = _s3._start()
    env = _s3._environment(endpoint)
    tmp = tempfile.mkdtemp(prefix="bench_s3_")
    try:
        _s3.S3Server(endpoint, proc).client().create_bucket(Bucket=_s3.BUCKET)
        calls = _count_requests()
        spec = trajlab.DatasetSpec(n_samples=args.n, n_frames=args.n_frames,
                                   image_size=args.image_size, seed=1)
        where = {"bucket": f"s3://{_s3.BUCKET}/bench", "local": os.path.join(tmp, "run")}
        rows = []

        def step(name, fn):
            out = {}
            for kind, rd in where.items():
                calls.clear()
                t0 = time.perf_counter()
                fn(rd)
                out[kind] = (time.perf_counter() - t0, dict(calls))
            rows.append((name, out))

        step("generate", lambda rd: trajlab.generate(spec, rd, n_jobs=args.j,
                                                     shard_size=args.shard_size,
                                                     progress="none"))
        step("no-op resume", lambda rd: trajlab.generate(spec, rd, n_jobs=args.j,
                                                         progress="none"))
        step("verify_run", lambda rd: trajlab.verify_run(rd))
        picks = np.random.default_rng(0).integers(0, args.n, args.reads)

        def reads(rd):
            ds = trajlab.open_dataset(rd, verify="none")
            for i in picks.tolist():
                ds.videos[i]

        step(f"open + {args.reads} random clips", reads)
        n_shards = -(-args.n // args.shard_size)
        print(f"{args.n:,} x {args.n_frames}x{args.image_size}^2 in {n_shards} shards, "
              f"-j {args.j}; moto {endpoint}")
        print(f"{'step':>26} {'bucket s':>9} {'local s':>8} {'ratio':>6}  S3 requests of "
              "this process")
        for name, out in rows:
            (tb, cb), (tl, _cl) = out["bucket"], out["local"]
            req = ", ".join(f"{k} {v:,}" for k, v in sorted(cb.items())) or "-"
            print(f"{name:>26} {tb:9.2f} {tl:8.2f} {tb / tl:6.1f}  {req}")
        print(f"(the workers' PUTs: {13 * n_shards:,}, 13 objects a shard, sent concurrently "
              "per shard)")
    finally:
        env.undo()
        _s3._stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
