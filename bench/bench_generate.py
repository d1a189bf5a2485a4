"""End-to-end generation benchmark: trajlab.generate vs the disk floor.

Storage format 1 (raw .npy), whose bytes are those np.save writes; the
formats side by side, to the disk: bench_formats.py.

For each configuration, in one run on this machine:

* ``floor``: seconds numpy needs to write the same bytes (every array of the
  dataset, ready in memory) with ``np.save`` to the same disk;
* ``generate``: seconds ``trajlab.generate(spec, run_dir, n_jobs=N)`` needs,
  end to end in a fresh process, to a complete dataset on disk (manifest
  written);
* peak RSS of the whole process tree (parent + workers, sampled from /proc
  every 50 ms) and of the largest single process, for ``n`` and ``10 n``
  samples, to show that memory is flat in ``n``.

Usage::

    python bench/bench_generate.py              # the issue's sizes
    python bench/bench_generate.py --quick      # 10x smaller, for a smoke run
    python bench/bench_generate.py --dir /mnt/fast/tmp --n-jobs 2

Figures quoted for the earlier generator (measured on this machine class,
in memory only, not re-run here): ~1,600 samples/s at 8x32x32 and ~128
samples/s at 16x64x64.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

EARLIER = {(8, 32): 1600.0, (16, 64): 128.0}


def _tree_rss(pid):
    """(total RSS of pid and its descendants, largest single RSS), bytes."""
    total, largest = 0, 0
    stack = [pid]
    seen = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                        total += rss
                        largest = max(largest, rss)
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total, largest


def run_generate(n, frames, size, n_jobs, workdir):
    rd = os.path.join(workdir, f"run_{n}_{frames}_{size}")
    shutil.rmtree(rd, ignore_errors=True)
    code = (
        "import trajlab;"
        f"trajlab.generate(trajlab.DatasetSpec(n_samples={n}, n_frames={frames}, "
        f"image_size={size}, seed=1), {rd!r}, n_jobs={n_jobs}, progress='none', "
        "format_version=1)"
    )
    peak = [0, 0]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code])
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            tot, big = _tree_rss(proc.pid)
            peak[0], peak[1] = max(peak[0], tot), max(peak[1], big)
            stop.wait(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    if rc != 0:
        raise SystemExit(f"generation failed with exit code {rc}")
    nbytes = sum(os.path.getsize(os.path.join(rd, f)) for f in os.listdir(rd) if f.endswith(".npy"))
    shutil.rmtree(rd, ignore_errors=True)
    return secs, peak[0], peak[1], nbytes


def run_floor(n, frames, size, workdir):
    """np.save of ready arrays with the dataset's shapes and dtypes."""
    from trajlab.generator import array_layout
    from trajlab.spec import DatasetSpec

    spec = DatasetSpec(n_samples=n, n_frames=frames, image_size=size)
    arrays = {k: np.ones(shape, dtype=dt) for k, (shape, dt) in array_layout(spec, n).items()}
    d = os.path.join(workdir, "floor")
    os.makedirs(d, exist_ok=True)
    t0 = time.perf_counter()
    for k, a in arrays.items():
        np.save(os.path.join(d, k + ".npy"), a)
    secs = time.perf_counter() - t0
    shutil.rmtree(d, ignore_errors=True)
    return secs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10x fewer samples")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats (medians)")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    configs = [(100_000 // scale, 8, 32), (10_000 // scale, 16, 64)]
    workdir = tempfile.mkdtemp(prefix="trajlab-bench-", dir=args.dir)
    print(f"trajlab generate benchmark, n_jobs={args.n_jobs}, {os.cpu_count()} CPUs, dir {workdir}")
    rows = []
    try:
        for n, frames, size in configs:
            # interleaved repeats, medians: the disk's write-back state makes
            # single timings of multi-GB writes noisy
            floors, gens, trees, singles = [], [], [], []
            for _ in range(args.repeat):
                floors.append(run_floor(n, frames, size, workdir))
                gen, tree, single, nbytes = run_generate(n, frames, size, args.n_jobs, workdir)
                gens.append(gen)
                trees.append(tree)
                singles.append(single)
            _, tree_small, single_small, _ = run_generate(n // 10, frames, size, args.n_jobs, workdir)
            rows.append((n, frames, size, nbytes, float(np.median(floors)), float(np.median(gens)),
                         max(trees), max(singles), tree_small, single_small))
            print(f"  {n:,} x {frames}x{size}: floor s {[round(x, 2) for x in floors]}, "
                  f"generate s {[round(x, 2) for x in gens]}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    mib = 2**20
    print()
    print(f"{'config':>22} {'GB':>6} {'floor s':>8} {'gen s':>7} {'gen/floor':>9} "
          f"{'samples/s':>10} {'vs earlier':>10} {'RSS n/10':>9} {'RSS n':>8} {'n/(n/10)':>8}")
    for n, frames, size, nbytes, floor, gen, tree, single, tree_s, single_s in rows:
        rate = n / gen
        print(f"{n:>8,} x {frames}x3x{size}x{size:<3} {nbytes / 1e9:6.2f} {floor:8.2f} {gen:7.2f} "
              f"{gen / floor:9.2f} {rate:10,.0f} {rate / EARLIER[(frames, size)]:9.1f}x "
              f"{tree_s / mib:8.0f}M {tree / mib:7.0f}M {tree / tree_s:8.2f}")
    print()
    print("gen/floor: median time to a complete dataset / median time np.save needs for the "
          "same bytes (target <= 3).")
    print("RSS: peak resident memory of the whole process tree (parent + workers) for n/10 "
          "and n samples; n/(n/10) ~ 1 means memory is flat in n (target within 10 %).")
    print("vs earlier: samples/s divided by the earlier generator's quoted in-memory rate "
          "(target >= 30x).")


if __name__ == "__main__":
    main()
