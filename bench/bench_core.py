"""In-memory throughput of the core generator, on one core.

Measures ``make_trajectories`` (sampling, projection, rejection and
rendering; no disk) in samples per second at the two standard sizes, best
of ``--repeat`` runs, and prints a small table with per-class rejection
rates. BLAS threads are pinned to one so the figure is per core.

    python bench/bench_core.py                  # table
    python bench/bench_core.py --montage        # also /tmp/montage_*.png

The montage shows, per class, a few samples and several frames at 8x32x32
and 16x64x64, for eyeballing: classes distinct, dot anti-aliased, nothing
clipped, motion visible.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from trajlab import DatasetSpec, make_trajectories  # noqa: E402

CONFIGS = [
    # (label, n_frames, image_size, n_samples)
    ("8x3x32x32", 8, 32, 8000),
    ("16x3x64x64", 16, 64, 3000),
]


def _pin_one_core():
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        return True
    except (AttributeError, OSError):
        return False


def bench(n_frames, image_size, n_samples, repeat=3, style="dot", seed=0):
    """Best wall time of ``repeat`` runs (videos + labels only), the time of
    one run that also builds the annotations, and that run's annotations."""
    spec = DatasetSpec(n_samples=n_samples, n_frames=n_frames, image_size=image_size,
                       style=style, seed=seed)
    make_trajectories(256, spec=spec)                    # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        videos, labels = make_trajectories(n_samples, spec=spec)
        best = min(best, time.perf_counter() - t0)
        nbytes = videos.nbytes
        del videos, labels
    t0 = time.perf_counter()
    ann = make_trajectories(n_samples, spec=spec, return_annotations=True)[2]
    with_ann = time.perf_counter() - t0
    return best, with_ann, nbytes, ann


def montage(path, n_frames, image_size, per_class=3, n_show=None, seed=0, style="dot"):
    """Save a grid: rows = class x sample, columns = frames."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = DatasetSpec(n_samples=64, n_frames=n_frames, image_size=image_size, seed=seed,
                       style=style)
    videos, labels, ann = make_trajectories(64, spec=spec, return_annotations=True)
    frames = np.arange(n_frames) if n_show is None else np.linspace(
        0, n_frames - 1, n_show).round().astype(int)
    rows = [(c, i) for c in range(spec.n_classes)
            for i in np.flatnonzero(labels == c)[:per_class]]
    # last column: all frames overlaid (max) plus the stored sub-pixel path
    ncol = len(frames) + 1
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.1 * ncol, 1.1 * len(rows)),
                             squeeze=False)
    for r, (c, i) in enumerate(rows):
        for k, f in enumerate(frames):
            ax = axes[r, k]
            ax.imshow(videos[i, f].transpose(1, 2, 0), interpolation="nearest")
            if r == 0:
                ax.set_title(f"t{f}", fontsize=7)
        ax = axes[r, -1]
        ax.imshow(videos[i].max(axis=0).transpose(1, 2, 0), interpolation="nearest")
        # pixel (row i, col j) covers [j, j+1): imshow centres it on j, so
        # continuous coordinates are shifted by -0.5
        px = ann["pixels"][i]
        ax.plot(px[:, 0] - 0.5, px[:, 1] - 0.5, "r-", lw=0.6)
        axes[r, 0].set_ylabel(f"{spec.classes[c]}\n#{i}", fontsize=7)
        if r == 0:
            ax.set_title("all+path", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{n_frames}x3x{image_size}x{image_size}, style={style}, seed={seed}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the sample counts (e.g. 0.1 for a smoke run)")
    ap.add_argument("--montage", action="store_true", help="also write /tmp/montage_*.png")
    args = ap.parse_args(argv)

    pinned = _pin_one_core()
    print(f"trajlab core benchmark: make_trajectories in memory, best of {args.repeat}, "
          f"{'1 core (affinity pinned)' if pinned else 'affinity not pinned'}, "
          f"numpy {np.__version__}, {platform.python_implementation()} "
          f"{platform.python_version()}")
    header = (f"{'config':<12} {'n':>6} {'style':<6} {'best s':>7} {'samples/s':>10} "
              f"{'MB/s':>7} {'+ann s/s':>9}  rejections per class (% of samples)")
    print(header)
    print("-" * len(header))
    for label, T, S, n in CONFIGS:
        n = max(16, int(n * args.scale))
        for style in ("dot", "trail"):
            best, with_ann, nbytes, ann = bench(T, S, n, repeat=args.repeat, style=style)
            per_class = n / len(ann["spec"].classes)     # labels are balanced
            rej = ", ".join(f"{k} {100.0 * v / per_class:.1f}"
                            for k, v in ann["rejections"].items())
            print(f"{label:<12} {n:>6} {style:<6} {best:>7.3f} {n / best:>10.0f} "
                  f"{nbytes / best / 1e6:>7.0f} {n / with_ann:>9.0f}  {rej}")
    print("samples/s: videos + labels, best of runs; +ann: one run that also builds "
          "the annotations (records with equations).")
    if args.montage:
        paths = [
            montage("/tmp/montage_8x32.png", 8, 32),
            montage("/tmp/montage_16x64.png", 16, 64, n_show=8),
            montage("/tmp/montage_16x64_trail.png", 16, 64, n_show=8, style="trail", seed=1),
        ]
        print("montages:", " ".join(paths))


if __name__ == "__main__":
    main()
