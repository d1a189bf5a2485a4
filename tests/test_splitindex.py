"""trajlab.splitindex: closed-form split counts and members, against enumeration."""

import numpy as np
import pytest

import trajlab
from trajlab.generator import SPLITS, splits_for
from trajlab.splitindex import split_count, split_sample

SPECS = [
    trajlab.DatasetSpec(seed=3),
    trajlab.DatasetSpec(seed=7, classes=("linear", "helical", "circular"), splits=(0.5, 0.3, 0.2)),
    trajlab.DatasetSpec(seed=1, splits=(1.0, 0.0, 0.0)),
    trajlab.DatasetSpec(seed=11, classes=("parabolic",), splits=(0.7, 0.0, 0.3)),
    trajlab.DatasetSpec(seed=2**40 + 5, splits=(0.9, 0.05, 0.05)),
]


@pytest.mark.parametrize("spec", SPECS, ids=range(len(SPECS)))
def test_counts_and_members_equal_the_enumeration(spec):
    n = 3001
    codes = splits_for(spec, 0, n)
    for code, name in enumerate(SPLITS):
        members = np.flatnonzero(codes == code)
        for m in (0, 1, 2, 3, 4, 5, 17, 100, 999, 2000, n):
            assert split_count(spec, name, m) == np.count_nonzero(codes[:m] == code)
        got = [split_sample(spec, name, k) for k in range(len(members))]
        np.testing.assert_array_equal(got, members)


def test_far_members_are_in_their_split_and_ordered():
    spec = SPECS[1]
    n = 2**45
    for name in SPLITS:
        count = split_count(spec, name, n)
        frac = spec.splits[SPLITS.index(name)]
        assert abs(count - frac * n) <= 2 * spec.n_classes
        last = split_sample(spec, name, count - 1)
        assert last < n and split_count(spec, name, last) == count - 1
        assert splits_for(spec, last, last + 1)[0] == SPLITS.index(name)
        # the member after the last one lies beyond n
        assert split_sample(spec, name, count) >= n
