"""Shared fixtures of the core tests: cached datasets at the two standard sizes.

Generation is deterministic, so a dataset built once per session can be
shared by every test that only reads it.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from trajlab import DatasetSpec, make_trajectories

#: (n_frames, image_size) of the two standard configurations
SIZES = {"8x32": (8, 32), "16x64": (16, 64)}
#: seeds and samples per seed: thousands of samples per size in total
SEEDS = {"8x32": (0, 1, 2, 3, 4), "16x64": (0, 1, 2, 3)}
N_PER_SEED = {"8x32": 1000, "16x64": 500}


@functools.lru_cache(maxsize=None)
def _dataset(n, n_frames, image_size, seed, extra=()):
    spec = DatasetSpec(n_samples=n, n_frames=n_frames, image_size=image_size, seed=seed,
                       **dict(extra))
    videos, labels, ann = make_trajectories(n, spec=spec, return_annotations=True)
    for a in (videos, labels, *[x for x in ann.values() if isinstance(x, np.ndarray)]):
        a.flags.writeable = False          # shared between tests: read-only
    return videos, labels, ann


@pytest.fixture(scope="session")
def make_ds():
    """``make_ds(n, n_frames, image_size, seed, **spec_fields)`` -> (videos,
    labels, annotations), cached for the session (arrays are read-only)."""

    def make(n, n_frames, image_size, seed=0, **fields):
        return _dataset(n, n_frames, image_size, seed, tuple(sorted(fields.items())))

    return make


@pytest.fixture(scope="session", params=sorted(SIZES))
def size_datasets(request, make_ds):
    """All seeds of one standard size: list of (seed, videos, labels, ann)."""
    key = request.param
    T, S = SIZES[key]
    return [(seed, *make_ds(N_PER_SEED[key], T, S, seed)) for seed in SEEDS[key]]
