"""Validation of a stored dataset, computed from the data on disk.

:func:`validate_dataset` runs every check in bounded memory (chunks of
samples over the memory maps) and returns a :class:`ValidationReport`:
a pass/fail table that renders as text and as HTML in notebooks, and
:meth:`ValidationReport.raise_if_failed` for papermill runs.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass, field

import numpy as np

from .dataset import open_dataset, verify_run
from .generator import SPLITS

__all__ = ["validate_dataset", "ValidationReport", "Check", "count_table"]


@dataclass
class Check:
    name: str
    passed: bool
    value: str
    requirement: str
    detail: str = ""


@dataclass
class ValidationReport:
    run_dir: str
    fingerprint: str
    checks: list = field(default_factory=list)

    @property
    def passed(self):
        return all(c.passed for c in self.checks)

    @property
    def failed(self):
        return [c for c in self.checks if not c.passed]

    def add(self, name, passed, value, requirement, detail=""):
        self.checks.append(Check(name, bool(passed), str(value), requirement, detail))

    def __str__(self):
        w = max(len(c.name) for c in self.checks) if self.checks else 10
        lines = [f"Validation of {self.run_dir} (fingerprint {self.fingerprint}): "
                 f"{'PASSED' if self.passed else 'FAILED'} "
                 f"({len(self.checks) - len(self.failed)}/{len(self.checks)} checks)"]
        for c in self.checks:
            lines.append(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name:<{w}}  {c.value}"
                         f"  (required: {c.requirement})" + (f" - {c.detail}" if c.detail else ""))
        return "\n".join(lines)

    def _repr_html_(self):
        rows = "".join(
            f"<tr><td style='color:{'green' if c.passed else 'red'}'><b>"
            f"{'PASS' if c.passed else 'FAIL'}</b></td><td>{html.escape(c.name)}</td>"
            f"<td>{html.escape(c.value)}</td><td>{html.escape(c.requirement)}</td>"
            f"<td>{html.escape(c.detail)}</td></tr>" for c in self.checks)
        return (f"<p><b>{'PASSED' if self.passed else 'FAILED'}</b> "
                f"{len(self.checks) - len(self.failed)}/{len(self.checks)} checks - "
                f"{html.escape(self.run_dir)} ({self.fingerprint})</p>"
                "<table><tr><th>result</th><th>check</th><th>value</th><th>required</th>"
                f"<th>detail</th></tr>{rows}</table>")

    def summary(self):
        """One ``PASS name`` / ``FAIL name`` line per check, in order."""
        return "\n".join(f"{'PASS' if c.passed else 'FAIL'} {c.name}" for c in self.checks)

    def raise_if_failed(self):
        if not self.passed:
            names = ", ".join(c.name for c in self.failed)
            raise AssertionError(f"dataset validation failed: {names}\n{self}")
        return self


def count_table(manifest):
    """Samples per split and class of a finished run, as a text table.

    Parameters
    ----------
    manifest : dict
        ``TrajectoryData.manifest`` (``class_names`` and ``split_counts``).

    Returns
    -------
    str
        One row per split plus a total row, one column per class plus a
        total column.
    """
    names = list(manifest["class_names"])
    counts = np.array([[manifest["split_counts"][s][c] for c in names] for s in SPLITS],
                      dtype=np.int64)
    w = max(9, *(len(c) + 2 for c in names))
    rows = [f"{'split':<6}" + "".join(f"{c:>{w}}" for c in names) + f"{'total':>{w}}"]
    for label, row in zip(list(SPLITS) + ["total"], list(counts) + [counts.sum(axis=0)]):
        rows.append(f"{label:<6}" + "".join(f"{int(k):>{w},}" for k in row)
                    + f"{int(row.sum()):>{w},}")
    return "\n".join(rows)


def _chunks(n, size):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def validate_dataset(run_dir, *, chunk=2048, centroid_samples=500):
    """Run every check on a finished dataset.

    Checks: files/shapes/dtypes, checksums, class balance, split
    stratification, every dot inside the frame (stored pixels and
    radius), reprojection ``K(RX + t)`` vs stored pixels and depth, the
    rendered dot's centroid vs the stored pixel position, motion per class,
    no duplicate videos.

    Parameters
    ----------
    run_dir : str
    chunk : int
        Samples read at a time (memory bound).
    centroid_samples : int
        Samples (evenly spaced) whose rendered centroid is compared.

    Returns
    -------
    ValidationReport
    """
    ds = open_dataset(run_dir, verify="none")
    spec, n = ds.spec, len(ds)
    T, S, C = spec.n_frames, spec.image_size, spec.n_classes
    rep = ValidationReport(str(run_dir), spec.fingerprint)

    # shapes and dtypes
    expected = {"videos": ((n, T, 3, S, S), np.uint8), "labels": ((n,), np.int64),
                "positions": ((n, T, 3), np.float64), "pixels": ((n, T, 2), np.float64),
                "depth": ((n, T), np.float64), "K": ((n, 3, 3), np.float64)}
    bad = [k for k, (shape, dt) in expected.items()
           if getattr(ds, k).shape != shape or getattr(ds, k).dtype != dt]
    rep.add("shapes and dtypes", not bad, "all as specified" if not bad else f"wrong: {bad}",
            f"videos ({n}, {T}, 3, {S}, {S}) uint8, ...")

    # checksums
    vr = verify_run(run_dir)
    rep.add("checksums", vr["ok"], f"{vr['n_shards'] - len(vr['bad'])}/{vr['n_shards']} shards match",
            "all shards match their records",
            "" if vr["ok"] else f"first bad shard: {vr['bad'][0] if vr['bad'] else 'no manifest'}")

    labels = np.asarray(ds.labels)
    splits = np.asarray(ds.splits)
    counts = np.bincount(labels, minlength=C)
    rep.add("class balance", counts.max() - counts.min() <= 1,
            ", ".join(f"{c}={k}" for c, k in zip(spec.classes, counts)), "max - min <= 1")

    worst = 0.0
    for c in range(C):
        per = np.bincount(splits[labels == c], minlength=3)
        dev = np.abs(per - np.asarray(spec.splits) * counts[c])
        worst = max(worst, float(dev.max()))
    joint = {s: int((splits == j).sum()) for j, s in enumerate(SPLITS)}
    rep.add("split stratification", worst <= 2.0,
            f"{joint}; worst per-class deviation {worst:.2f} samples",
            f"each class within 2 samples of {spec.splits}")

    # geometry, in chunks
    min_clear, max_px_err, max_depth_err, max_rad_err = np.inf, 0.0, 0.0, 0.0
    motion = np.zeros(C)
    motion_min = np.full(C, np.inf)
    hashes = set()
    dup = 0
    for a, b in _chunks(n, chunk):
        pix = np.asarray(ds.pixels[a:b])
        rad = np.asarray(ds.radius[a:b])
        depth = np.asarray(ds.depth[a:b])
        clear = np.minimum.reduce([pix[..., 0] - rad, S - pix[..., 0] - rad,
                                   pix[..., 1] - rad, S - pix[..., 1] - rad])
        min_clear = min(min_clear, float(clear.min()))
        # independent of trajlab.camera: homogeneous K (R X + t) with matmul
        K, R, t = (np.asarray(x[a:b]) for x in (ds.K, ds.R, ds.t))
        cam = np.einsum("nij,ntj->nti", R, np.asarray(ds.positions[a:b])) + t[:, None, :]
        hom = np.einsum("nij,ntj->nti", K, cam)
        rp = hom[..., :2] / hom[..., 2:3]
        rel = np.abs(rp - pix) / np.maximum(1.0, np.abs(pix))
        max_px_err = max(max_px_err, float(rel.max()))
        max_depth_err = max(max_depth_err, float((np.abs(cam[..., 2] - depth)
                                                  / np.abs(depth)).max()))
        # the drawn radius: f R / depth, or its frame-0 value held (radius_mode)
        rad_depth = depth[:, :1] if spec.radius_mode == "constant" else depth
        rad_want = K[:, None, 0, 0] * spec.object_radius / rad_depth
        max_rad_err = max(max_rad_err, float((np.abs(rad_want - rad) / rad_want).max()))
        step = np.sqrt(((pix[:, 1:] - pix[:, :-1]) ** 2).sum(-1)).mean(1)
        lab = labels[a:b]
        for c in range(C):
            if (lab == c).any():
                motion[c] += step[lab == c].sum()
                motion_min[c] = min(motion_min[c], float(step[lab == c].min()))
        vids = ds.videos[a:b]
        for k in range(b - a):
            h = hashlib.blake2b(vids[k].tobytes(), digest_size=16).digest()
            dup += h in hashes
            hashes.add(h)
    rep.add("dot inside frame", min_clear >= spec.margin_px - 1e-9,
            f"min clearance {min_clear:.3f} px", f">= margin {spec.margin_px} px in every frame")
    rep.add("reprojection K(RX+t)", max_px_err < 1e-9 and max_depth_err < 1e-9,
            f"max relative pixel error {max_px_err:.1e}, depth error {max_depth_err:.1e}",
            "< 1e-9 (float64 rounding)")
    rep.add("pixel radius f·R/Z", max_rad_err < 1e-9,
            f"max relative error {max_rad_err:.1e}", "< 1e-9")
    need = spec.min_motion * S
    rep.add("motion per class", bool((motion_min >= need - 1e-9).all()),
            ", ".join(f"{c}: mean {motion[k] / max(1, counts[k]):.2f}, min {motion_min[k]:.2f}"
                      for k, c in enumerate(spec.classes)) + " px/frame",
            f"every sample >= {need:.2f} px/frame")
    rep.add("no duplicate videos", dup == 0, f"{dup} duplicates among {n}", "0")

    # rendered centroid vs stored position (uniform background, dot style)
    if spec.style == "dot" and spec.pixel_noise == 0:
        idx = np.unique(np.linspace(0, n - 1, min(n, centroid_samples)).astype(int))
        bg = np.asarray(spec.background_color, dtype=np.float64)
        centres = np.arange(S) + 0.5
        err = 0.0
        for i in idx:
            v = np.abs(np.asarray(ds.videos[i], dtype=np.float64) - bg[:, None, None]).sum(1)
            w = v.sum((1, 2))
            cu = (v.sum(1) * centres).sum(1) / w
            cv = (v.sum(2) * centres).sum(1) / w
            err = max(err, float(np.abs(np.stack([cu, cv], -1) - ds.pixels[i]).max()))
        rep.add("rendered dot at stored pixels", err < 0.2,
                f"max centroid error {err:.4f} px over {idx.size} samples", "< 0.2 px")
    return rep
