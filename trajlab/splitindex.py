"""Which samples belong to a split, computed without enumerating the dataset.

A stored dataset finds the samples of a split by scanning ``splits.npy``.
An on-the-fly dataset may span up to 2**48 samples, so it cannot. The split
code of a sample (:func:`trajlab.generator.splits_for`) comes from two
nested floor ("Bresenham") sequences over the sample's index within its
class, and labels come in blocks of ``C`` samples that hold each class once.
Both sums telescope, so the number of samples of a split among the first
``b`` blocks has a closed form, evaluated here with exactly the float
expressions :func:`~trajlab.generator.splits_for` uses (so the counts are
exact, not approximate). The ``k``-th sample of a split is then found by a
binary search over blocks plus one look inside the block.

Tests check both functions against :func:`~trajlab.generator.splits_for`
enumerations for several specs.
"""

from __future__ import annotations

import numpy as np

from .generator import SPLITS, split_phases, splits_for

__all__ = ["split_count", "split_sample"]


def _per_class_counts(spec, J):
    """Train/val/test counts among the first ``J`` samples of each class.

    ``J`` is an int64 array of shape (C,). Returns an int64 array (3, C).
    """
    ph = split_phases(spec.seed, spec.n_classes)
    f_train, f_val, f_test = spec.splits
    q = f_val / (f_val + f_test) if f_val + f_test > 0 else 0.0
    Jf = J.astype(np.float64)
    # splits_for marks j as train when floor((j+1)f+o) > floor(jf+o); the sum over
    # j < J telescopes to floor(J f + o) - floor(o), and floor(o) = 0 for o in [0, 1).
    train = np.floor(Jf * f_train + ph[:, 0])
    rest = Jf - train
    val = np.floor(rest * q + ph[:, 1])
    return np.stack([train, val, rest - val]).astype(np.int64)


def _count_in_blocks(spec, code, blocks):
    """Samples of split ``code`` among the first ``blocks`` full label blocks."""
    J = np.full(spec.n_classes, blocks, dtype=np.int64)
    return int(_per_class_counts(spec, J)[code].sum())


def split_count(spec, split, n):
    """Number of samples of ``split`` among samples ``0..n-1`` of ``spec``.

    Parameters
    ----------
    spec : DatasetSpec
    split : {'train', 'val', 'test'}
    n : int
        ``n >= 0``; may exceed ``spec.n_samples``.

    Returns
    -------
    int
    """
    code = SPLITS.index(split)
    C = spec.n_classes
    full, rest = divmod(int(n), C)
    count = _count_in_blocks(spec, code, full)
    if rest:
        codes = splits_for(spec, full * C, full * C + rest)
        count += int(np.count_nonzero(codes == code))
    return count


def split_sample(spec, split, k):
    """Index of the ``k``-th sample (0-based, increasing index order) of ``split``.

    Parameters
    ----------
    spec : DatasetSpec
    split : {'train', 'val', 'test'}
    k : int
        ``k >= 0``.

    Returns
    -------
    int
        The sample index ``i`` such that ``split_count(spec, split, i) == k``
        and sample ``i`` is in ``split``.
    """
    code = SPLITS.index(split)
    C = spec.n_classes
    k = int(k)
    # Smallest number of full blocks holding more than k samples of the split.
    # Each split has a positive fraction or no members at all; in the latter
    # case callers never ask (their length is 0).
    lo, hi = 0, 1
    while _count_in_blocks(spec, code, hi) <= k:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _count_in_blocks(spec, code, mid) <= k:
            lo = mid
        else:
            hi = mid
    block = hi - 1               # the (k+1)-th member lies in this block
    before = _count_in_blocks(spec, code, block)
    members = np.flatnonzero(splits_for(spec, block * C, block * C + C) == code)
    return block * C + int(members[k - before])

