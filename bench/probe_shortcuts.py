"""Shortcut probes: how much of the class label leaks through cues that are
not the shape of the path.

For each size, generate ``--n-train + --n-test`` samples (the test samples
use another seed, so they are held out) and train small torch classifiers on:

* ``frame0-cnn``: frame 0 only (a small 2D CNN; 64x64 frames are average-
  pooled to 32x32 first, the dot stays at least 2 px wide);
* ``frame0-feat``: frame-0 features only: stored dot centre ``(u, v)``,
  pixel radius, depth and colour (an MLP);
* ``brightness``: the per-frame sum of foreground intensity (an MLP on the
  series divided by its mean, plus its log mean), i.e. the size-over-time cue.

Chance is ``1 / n_classes`` (25 %). Rejection rates per class (redrawn
attempts per accepted sample) are printed beside them.

Usage::

    python bench/probe_shortcuts.py                       # both default sizes
    python bench/probe_shortcuts.py --sizes 8x32 --n-train 4000
    python bench/probe_shortcuts.py --radius-mode constant
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from trajlab.generator import generate_block
from trajlab.spec import DATA_VERSION, DatasetSpec


def collect(spec, n, chunk=512):
    """Frame 0, frame-0 features and brightness series of ``n`` samples."""
    bg = np.asarray(spec.background_color, dtype=np.float32)[:, None, None]
    frames, feats, bright, labels = [], [], [], []
    rej = {c: 0 for c in spec.classes}
    for a in range(0, n, chunk):
        b = generate_block(spec, a, min(n, a + chunk))
        frames.append(b.videos[:, 0])
        feats.append(np.column_stack([b.pixels[:, 0], b.radius[:, 0], b.depth[:, 0],
                                      b.colors.astype(np.float64)]))
        fg = np.abs(b.videos.astype(np.float32) - bg).sum(axis=(2, 3, 4))
        bright.append(fg)
        labels.append(b.labels)
        for c, k in b.rejections.items():
            rej[c] += k
    labels = np.concatenate(labels)
    counts = {c: int((labels == i).sum()) for i, c in enumerate(spec.classes)}
    rates = {c: rej[c] / max(1, counts[c]) for c in spec.classes}
    return (np.concatenate(frames), np.concatenate(feats), np.concatenate(bright),
            labels, rates)


def _fit(model, xtr, ytr, xte, yte, epochs, lr=3e-3, batch=256, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lossf = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for k in range(0, len(xtr), batch):
            idx = perm[k:k + batch]
            opt.zero_grad()
            lossf(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xte[k:k + 1024]).argmax(1) for k in range(0, len(xte), 1024)])
    return float((pred == yte).float().mean())


def _standardise(tr, te):
    mu, sd = tr.mean(0, keepdims=True), tr.std(0, keepdims=True) + 1e-6
    return (torch.tensor((tr - mu) / sd, dtype=torch.float32),
            torch.tensor((te - mu) / sd, dtype=torch.float32))


def mlp(d, c):
    return nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, c))


def cnn(c):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, c))


def probe(T, S, n_train, n_test, epochs, **spec_kw):
    base = DatasetSpec(n_samples=1, n_frames=T, image_size=S, **spec_kw)
    t0 = time.time()
    tr = collect(base.replace(n_samples=n_train, seed=1000), n_train)
    te = collect(base.replace(n_samples=n_test, seed=2000), n_test)
    gen_s = time.time() - t0
    C = base.n_classes
    ytr, yte = torch.tensor(tr[3]), torch.tensor(te[3])
    out = {}
    # frame 0 image
    f_tr = torch.tensor(tr[0], dtype=torch.float32) / 255.0
    f_te = torch.tensor(te[0], dtype=torch.float32) / 255.0
    if S > 32:
        f_tr = nn.functional.adaptive_avg_pool2d(f_tr, 32)
        f_te = nn.functional.adaptive_avg_pool2d(f_te, 32)
    out["frame0-cnn"] = _fit(cnn(C), f_tr, ytr, f_te, yte, epochs)
    xtr, xte = _standardise(tr[1], te[1])
    out["frame0-feat"] = _fit(mlp(xtr.shape[1], C), xtr, ytr, xte, yte, 3 * epochs)

    def bfeat(b):
        m = b.mean(1, keepdims=True) + 1e-6
        return np.column_stack([b / m, np.log(m)])
    xtr, xte = _standardise(bfeat(tr[2]), bfeat(te[2]))
    out["brightness"] = _fit(mlp(xtr.shape[1], C), xtr, ytr, xte, yte, 3 * epochs)
    return out, tr[4], gen_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8x32,16x64", help="TxS list, e.g. 8x32,16x64,17x32")
    ap.add_argument("--n-train", type=int, default=12000)
    ap.add_argument("--n-test", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--radius-mode", default=None,
                    help="DatasetSpec.radius_mode, when the installed trajlab has it")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw = {} if args.radius_mode is None else {"radius_mode": args.radius_mode}
    print(f"DATA_VERSION {DATA_VERSION}, {args.n_train} train / {args.n_test} test, "
          f"chance 25 %, spec extras {kw}")
    print(f"{'size':>8} {'frame0-cnn':>11} {'frame0-feat':>12} {'brightness':>11}   "
          "rejections per accepted sample")
    for item in args.sizes.split(","):
        T, S = (int(x) for x in item.split("x"))
        acc, rates, gen_s = probe(T, S, args.n_train, args.n_test, args.epochs, **kw)
        rr = ", ".join(f"{c} {r:.2f}" for c, r in rates.items())
        print(f"{T:>3}x{S}x{S} {100 * acc['frame0-cnn']:>10.1f}% "
              f"{100 * acc['frame0-feat']:>11.1f}% {100 * acc['brightness']:>10.1f}%   {rr}"
              f"   (generated in {gen_s:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
