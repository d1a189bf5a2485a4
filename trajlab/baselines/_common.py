"""Shared parts of the baselines: split arrays, seeding, training loop, target tables."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import _validation as v
from ..generator import SPLITS

__all__ = ["Split", "load_split", "require_videos", "seeded", "torch_threads", "batches", "train_loop",
           "TargetTable", "confusion_matrix"]


@dataclass
class Split:
    """The arrays of one split of a dataset, in memory.

    Attributes
    ----------
    videos : ndarray of shape (n, T, 3, H, W), uint8, or None
        None when loaded with ``videos=False`` (positions only).
    labels : ndarray of shape (n,), int64
    pixels : ndarray of shape (n, T, 2), float64
        Stored sub-pixel dot centres ``(u, v)``.
    radius : ndarray of shape (n, T), float64
        Stored pixel radius of the dot.
    indices : ndarray of shape (n,), int64
        Sample indices in the dataset.
    class_names : tuple of str
    image_size : int
    name : str
        The split's name.
    """

    videos: np.ndarray
    labels: np.ndarray
    pixels: np.ndarray
    radius: np.ndarray
    indices: np.ndarray
    class_names: tuple
    image_size: int
    name: str = "all"

    def __len__(self):
        return len(self.labels)

    @property
    def n_frames(self):
        return self.pixels.shape[1]

    @property
    def n_classes(self):
        return len(self.class_names)

    def head(self, n):
        """The first ``n`` samples (all if ``n`` is None or larger)."""
        if n is None or n >= len(self):
            return self
        return Split(None if self.videos is None else self.videos[:n], self.labels[:n],
                     self.pixels[:n], self.radius[:n], self.indices[:n], self.class_names,
                     self.image_size, self.name)


def load_split(source, split, *, max_samples=None, videos=True):
    """Read one split of a dataset into memory.

    Parameters
    ----------
    source : str, os.PathLike, TrajectoryData or tuple
        A run dir, an opened dataset (:func:`trajlab.open_dataset`), or the
        ``(videos, labels, annotations)`` returned by
        ``make_trajectories(..., return_annotations=True)``.
    split : {'train', 'val', 'test'} or None
    max_samples : int, optional
        Keep only the first ``max_samples`` of the split.
    videos : bool, default=True
        False: leave the clips on disk (``Split.videos`` is None), for
        models of positions only.

    Returns
    -------
    Split
    """
    from ..dataset import TrajectoryData, open_dataset

    own = "load_split"
    v.check_choice(split, "split", own, SPLITS + (None,))
    if max_samples is not None:
        v.check_int(max_samples, "max_samples", own, 1)
    if isinstance(source, (str, os.PathLike)):
        # checksums are checked once, up front: the arrays are read whole
        source = open_dataset(source, verify="full")
    if isinstance(source, TrajectoryData):
        idx = source.indices(split)[:max_samples]
        arrays = {k: np.asarray(getattr(source, k)[idx]) for k in ("labels", "pixels", "radius")}
        arrays["videos"] = np.asarray(source.videos[idx]) if videos else None
        names, size = tuple(source.class_names), source.spec.image_size
    elif isinstance(source, tuple) and len(source) == 3 and isinstance(source[2], dict):
        clips, labels, ann = source
        codes = np.asarray(ann["splits"])
        idx = (np.arange(len(labels)) if split is None
               else np.flatnonzero(codes == SPLITS.index(split)))[:max_samples]
        arrays = {"videos": np.asarray(clips[idx]) if videos else None,
                  "labels": np.asarray(labels[idx]), "pixels": np.asarray(ann["pixels"][idx]),
                  "radius": np.asarray(ann["radius"][idx])}
        names, size = tuple(ann["spec"].classes), ann["spec"].image_size
    else:
        v.fail("source", own, "a run dir, a TrajectoryData or the (videos, labels, annotations) "
               "of make_trajectories(..., return_annotations=True)", type(source).__name__,
               TypeError)
    if len(idx) == 0:
        raise ValueError(f"The 'split' parameter of {own} must select at least one sample. "
                         f"Got {split!r} instead (it holds none).")
    return Split(arrays["videos"], arrays["labels"].astype(np.int64), arrays["pixels"],
                 arrays["radius"], np.asarray(idx, dtype=np.int64), names, int(size),
                 "all" if split is None else split)


def require_videos(split, name, owner):
    """Raise if ``split`` is not a :class:`Split` with its clips loaded."""
    if not isinstance(split, Split):
        v.fail(name, owner, "a Split (see trajlab.baselines.load_split)", type(split).__name__,
               TypeError)
    if split.videos is None:
        v.fail(name, owner, "a Split with its clips (load_split(..., videos=True))",
               "a Split loaded with videos=False")
    return split


@contextlib.contextmanager
def seeded(seed):
    """Run the block with torch's global CPU generator seeded, then restore it.

    Layer initialisation draws from the global generator; forking it keeps
    a baseline deterministic for its seed without changing anyone else's
    random state.
    """
    seed = v.check_int(seed, "seed", "seeded", 0, 2**63 - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed + 1)


@contextlib.contextmanager
def torch_threads(n):
    """Run the block with ``n`` intra-op torch threads (None: unchanged), then restore.

    Small models on a shared CPU are often fastest single-threaded: with
    other processes busy, threads that wait on each other cost more than
    they gain.
    """
    if n is None:
        yield
        return
    n = v.check_int(n, "n", "torch_threads", 1)
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def batches(n, batch_size, gen):
    """Endless stream of index batches: a new permutation every epoch."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for a in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[a:a + batch_size]


def train_loop(step_fn, n_steps, *, desc, progress=True, max_seconds=None, log_every=None):
    """Run ``step_fn(step) -> loss (float)`` for ``n_steps`` steps.

    Parameters
    ----------
    step_fn : callable
    n_steps : int
    desc : str
        Progress bar label.
    progress : bool
        Show progress: a ``tqdm.auto`` bar, or text lines every 30 s on
        stdout when ``TRAJLAB_PROGRESS=text`` (headless ``trajlab run``).
    max_seconds : float, optional
        Stop early, before the training time would exceed this (the mean
        step time so far predicts the next step; recorded in the result;
        results are then no longer a function of the seed alone).

    Returns
    -------
    dict
        ``losses`` (list of float per step), ``steps`` done, ``seconds``,
        ``stopped_early`` (bool).
    """
    from ..progress import resolve_mode

    losses = []
    start = time.perf_counter()
    stopped = False
    mode = resolve_mode("auto") if progress else "none"
    # headless runs (`trajlab run` sets TRAJLAB_PROGRESS=text): plain lines on
    # stdout every 30 s, which reach the run's log and the notebook
    text = mode == "text"
    bar = tqdm(total=n_steps, desc=desc, disable=mode in ("none", "text"), mininterval=2.0,
               leave=False)
    last_line = start
    log_every = log_every or max(1, n_steps // 50)
    try:
        for step in range(n_steps):
            losses.append(float(step_fn(step)))
            bar.update(1)
            if step % log_every == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.4g}", refresh=False)
            now = time.perf_counter()
            if text and (now - last_line >= 30.0 or step + 1 == n_steps):
                last_line = now
                print(f"{desc}: step {step + 1}/{n_steps}, loss {np.mean(losses[-log_every:]):.4g}"
                      f", {now - start:.0f} s", flush=True)
            # stop before a step would end past the cap (a budget is a ceiling)
            spent = now - start
            if max_seconds is not None and spent + spent / (step + 1) > max_seconds:
                stopped = step + 1 < n_steps
                break
    finally:
        bar.close()
    return {"losses": losses, "steps": len(losses), "seconds": time.perf_counter() - start,
            "stopped_early": stopped}


def confusion_matrix(labels, predictions, n_classes):
    """Counts ``C[i, j]`` of samples of true class ``i`` predicted as ``j``."""
    c = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(c, (np.asarray(labels), np.asarray(predictions)), 1)
    return c


@dataclass
class TargetTable:
    """Pass/fail table of measured values against stated thresholds.

    Rows are added with :meth:`add`; :meth:`check` raises when
    ``enforce`` is set and any row fails, so an evidence run fails loudly
    while a CI-sized run still reports honestly.
    """

    title: str = "targets"
    rows: list = field(default_factory=list)

    _OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}

    def add(self, name, measured, op, threshold, unit=""):
        v.check_choice(op, "op", "TargetTable.add", tuple(self._OPS))
        ok = (measured is not None and not (isinstance(measured, float) and math.isnan(measured))
              and self._OPS[op](measured, threshold))
        self.rows.append({"target": name, "measured": measured, "op": op,
                          "threshold": threshold, "unit": unit, "passed": bool(ok)})
        return ok

    @property
    def all_passed(self):
        return all(r["passed"] for r in self.rows)

    def __str__(self):
        w = max([len(r["target"]) for r in self.rows] + [6])
        lines = [self.title, f"{'target':<{w}}  {'measured':>10}  {'needs':>12}  result"]
        for r in self.rows:
            m = r["measured"]
            ms = "n/a" if m is None else f"{m:.4g}" if isinstance(m, float) else str(m)
            need = f"{r['op']} {r['threshold']:g}{r['unit']}"
            lines.append(f"{r['target']:<{w}}  {ms + r['unit']:>10}  {need:>12}  "
                         f"{'PASS' if r['passed'] else 'FAIL'}")
        n_ok = sum(r["passed"] for r in self.rows)
        lines.append(f"{n_ok}/{len(self.rows)} targets met")
        return "\n".join(lines)

    def _repr_html_(self):
        head = "".join(f"<th>{h}</th>" for h in ("target", "measured", "needs", "result"))
        body = []
        for r in self.rows:
            m = r["measured"]
            ms = "n/a" if m is None else f"{m:.4g}" if isinstance(m, float) else str(m)
            colour = "#c8f0c8" if r["passed"] else "#f6c6c6"
            body.append(f"<tr style='background:{colour}'><td>{r['target']}</td><td>{ms}"
                        f"{r['unit']}</td><td>{r['op']} {r['threshold']:g}{r['unit']}</td>"
                        f"<td>{'PASS' if r['passed'] else 'FAIL'}</td></tr>")
        n_ok = sum(r["passed"] for r in self.rows)
        return (f"<b>{self.title}</b>: {n_ok}/{len(self.rows)} targets met<table><tr>{head}</tr>"
                + "".join(body) + "</table>")

    def check(self, enforce):
        """Return the table; raise RuntimeError if ``enforce`` and a target failed."""
        if enforce and not self.all_passed:
            failed = [r["target"] for r in self.rows if not r["passed"]]
            raise RuntimeError(f"{len(failed)} target(s) not met: {failed}\n{self}")
        return self
