"""Loading benchmark: clips per second into a training loop, side by side.

For 17x3x32x32 and 17x3x64x64 clips (the magvit preset sizes), in one run:

* items/s through ``DataLoader(batch_size=32, shuffle=True)`` with
  ``num_workers`` 0 and 2, for the stored dataset (uint8 and float views,
  ``layout='CTHW'``), read cold (page cache dropped first, when this process
  may do so: the disk's speed) and warm (pages cached), and for the
  on-the-fly dataset (rendered on access, no disk);
* the same loop with a tiny magvit2-pytorch ``VideoTokenizer`` forward and
  backward per batch, to show whether loading is ever the bottleneck;
* rendering cost per sample in the main process: contiguous blocks,
  scattered batches of 32 (a shuffled on-the-fly loader) and one sample
  per call.

Ratios are printed beside the figures; nothing here is a pass/fail test.

Usage::

    python bench/bench_loading.py            # 4096 clips at 32^2, 2048 at 64^2
    python bench/bench_loading.py --quick    # 8x fewer, for a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import trajlab  # noqa: E402
from trajlab.generator import generate_block, generate_samples  # noqa: E402
from trajlab.torchdata import OnTheFlyVideoDataset, TrajectoryVideoDataset  # noqa: E402

BATCH = 32


def drop_page_cache():
    """Drop the page cache (root on Linux only); True if it worked."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def items_per_s(ds, workers, n_batches, step=None):
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers,
                        drop_last=True, generator=torch.Generator().manual_seed(0),
                        persistent_workers=False)
    it = iter(loader)
    first = next(it)                     # worker start-up is not loading
    if step is not None:
        step(first)
    t0 = time.perf_counter()
    n = 0
    for _ in range(n_batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        if step is not None:
            step(batch)
        n += BATCH
    dt = time.perf_counter() - t0
    del it
    return n / dt


def tokenizer_step(size):
    from magvit2_pytorch import VideoTokenizer

    torch.manual_seed(0)
    model = VideoTokenizer(image_size=size, init_dim=16, max_dim=64, codebook_size=256,
                           layers=("residual", "compress_space", "residual", "compress_time"),
                           use_gan=False, perceptual_loss_weight=0, flash_attn=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(video):
        loss, _ = model(video, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def render_ratio(spec, n):
    """Seconds per sample: contiguous blocks of 256, scattered batches of 32
    (what a shuffled on-the-fly DataLoader asks for), one sample per call."""
    t0 = time.perf_counter()
    for a in range(0, n, 256):
        generate_block(spec, a, min(n, a + 256))
    block = (time.perf_counter() - t0) / n
    idx = np.random.default_rng(0).integers(0, 2**40, n)
    t0 = time.perf_counter()
    for a in range(0, n, BATCH):
        generate_samples(spec, idx[a:a + BATCH])
    scattered = (time.perf_counter() - t0) / n
    m = max(64, n // 8)
    t0 = time.perf_counter()
    for i in idx[:m].tolist():
        generate_samples(spec, [i])
    single = (time.perf_counter() - t0) / m
    return block, scattered, single


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", default=None, help="where to write the stored datasets")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)             # two workers + the main process on 2 cores
    scale = 8 if args.quick else 1
    try:
        import magvit2_pytorch  # noqa: F401
        have_magvit = True
    except ImportError:
        have_magvit = False
    tmp = tempfile.mkdtemp(prefix="trajlab-bench-", dir=args.dir)
    rows = []
    try:
        for size, n in ((32, 4096 // scale), (64, 2048 // scale)):
            spec = trajlab.DatasetSpec(n_samples=n, n_frames=17, image_size=size, seed=0)
            run_dir = os.path.join(tmp, f"s{size}")
            trajlab.generate(spec, run_dir, n_jobs=2, progress="none")
            n_batches = n // BATCH - 2
            views = {
                "stored uint8": lambda: TrajectoryVideoDataset(
                    run_dir, split=None, layout="CTHW", value_range="uint8", item="video"),
                "stored float": lambda: TrajectoryVideoDataset(
                    run_dir, split=None, layout="CTHW", item="video"),
                "on the fly float": lambda: OnTheFlyVideoDataset(
                    spec, split=None, layout="CTHW", item="video"),
            }
            for name, make in views.items():
                for workers in (0, 2):
                    if name.startswith("stored"):
                        cold = drop_page_cache()
                        r_cold = items_per_s(make(), workers, n_batches) if cold else None
                    else:
                        r_cold = None
                    rate = items_per_s(make(), workers, n_batches)
                    rows.append((size, name, workers, r_cold, rate))
                    print(f"17x3x{size}x{size}  {name:17s} workers={workers}  "
                          f"cold {'-' if r_cold is None else f'{r_cold:9,.0f}'}  "
                          f"warm {rate:9,.0f} items/s", flush=True)
            if have_magvit:
                step = tokenizer_step(size)
                n_tok = 2                # a tokenizer step takes seconds on this CPU
                for name in ("stored float", "on the fly float"):
                    for workers in (0, 2):
                        rate = items_per_s(views[name](), workers, n_tok, step)
                        rows.append((size, name + " + tokenizer", workers, None, rate))
                        print(f"17x3x{size}x{size}  {name + ' + tokenizer':28s} "
                              f"workers={workers}  {rate:9,.1f} items/s", flush=True)
            block, scattered, single = render_ratio(spec, min(n, 1024))
            print(f"17x3x{size}x{size}  render per sample (main process): block of 256 "
                  f"{block * 1e6:,.0f} us; scattered batch of 32 {scattered * 1e6:,.0f} us "
                  f"(x{scattered / block:.2f}); one per call {single * 1e6:,.0f} us "
                  f"(x{single / block:.2f})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nsummary (items/s, batch 32; ratios against 'stored float' with the same workers)")
    for size in (32, 64):
        base = {w: r for s, name, w, _c, r in rows if s == size and name == "stored float"}
        for s, name, w, c, r in rows:
            if s == size:
                print(f"  {s:2d}^2  {name:30s} w={w}  {r:10,.1f}  x{r / base[w]:.3f}"
                      + ("" if c is None else f"   cold {c:,.0f}"))


if __name__ == "__main__":
    main()
