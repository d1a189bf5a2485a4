"""Parameter checks shared by every public entry point.

All messages follow one template, so users (and tests) can rely on it::

    The 'n_frames' parameter of DatasetSpec must be an int in the range
    [2, inf). Got 0 instead.
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "check_int",
    "check_float",
    "check_bool",
    "check_choice",
    "check_range_pair",
    "check_rgb",
    "check_index",
    "check_path",
    "fail",
    "fail_file",
    "MAX_N_SAMPLES",
    "MAX_N_FRAMES",
    "MAX_IMAGE_SIZE",
    "MAX_SHARD_SIZE",
    "MAX_N_SHARDS",
    "MAX_N_JOBS",
    "MAX_JSON_BYTES",
]

# Upper bounds of every count (documented in docs/FORMAT.md, "Bounds").
# They keep a typo (an extra digit, a stray exponent) from starting hours of
# work or a MemoryError; memory and disk are checked separately before any
# work starts.
#: Samples in one dataset (the design target is 20K-300K).
MAX_N_SAMPLES = 100_000_000
#: Frames per clip (clips are 8-16 frames).
MAX_N_FRAMES = 1024
#: Height and width of the frames, pixels.
MAX_IMAGE_SIZE = 1024
#: Samples per shard ('auto' stays within [16, 4096]).
MAX_SHARD_SIZE = 2**20
#: Shards (completion records) in one run dir.
MAX_N_SHARDS = 1_000_000
#: Parallel workers (either sign).
MAX_N_JOBS = 1024
#: Largest JSON file trajlab reads (spec.json, manifest, records, progress).
MAX_JSON_BYTES = 2**20


def _fmt(value):
    try:
        return repr(value)
    except ValueError:          # an int beyond Python's digit limit for str()
        return f"an int of {value.bit_length()} bits"


def fail(name, owner, expected, value, exc=ValueError):
    """Raise ``exc`` with the project-wide message template."""
    raise exc(
        f"The {name!r} parameter of {owner} must be {expected}. "
        f"Got {_fmt(value)} instead."
    )


def fail_file(fname, run_dir, expected, got, exc):
    """Raise ``exc`` with the template, for a file of a run directory."""
    raise exc(f"The {fname!r} file of run directory {run_dir!r} must be {expected}. "
              f"Got {got} instead.")


def _interval(low, high, closed_low=True, closed_high=True):
    lo = "-inf" if low is None else f"{low:g}" if isinstance(low, float) else str(low)
    hi = "inf" if high is None else f"{high:g}" if isinstance(high, float) else str(high)
    left = "[" if (closed_low and low is not None) else "("
    right = "]" if (closed_high and high is not None) else ")"
    return f"{left}{lo}, {hi}{right}"


def check_int(value, name, owner, low=None, high=None):
    """Return ``value`` as int if it is an integer (not bool) in [low, high]."""
    expected = f"an int in the range {_interval(low, high)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(name, owner, expected, value, TypeError)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        fail(name, owner, expected, value)
    return value


def check_float(value, name, owner, low=None, high=None, closed_low=True,
                closed_high=True):
    """Return ``value`` as float if it is a finite real number in the interval."""
    expected = (
        f"a finite float in the range "
        f"{_interval(low, high, closed_low, closed_high)}"
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(name, owner, expected, value, TypeError)
    try:
        value = float(value)
    except OverflowError:       # an int beyond the float range
        fail(name, owner, expected, value)
    if not math.isfinite(value):
        fail(name, owner, expected, value)
    if low is not None and (value < low or (not closed_low and value == low)):
        fail(name, owner, expected, value)
    if high is not None and (value > high or (not closed_high and value == high)):
        fail(name, owner, expected, value)
    return value


def check_choice(value, name, owner, choices):
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        fail(name, owner, f"one of {{{listed}}}", value)
    return value


def check_range_pair(value, name, owner, low=None, high=None):
    """Return a ``(lo, hi)`` tuple of finite floats with low <= lo <= hi <= high."""
    expected = (
        f"a pair (min, max) of finite floats with min <= max in the range "
        f"{_interval(low, high)}"
    )
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        fail(name, owner, expected, value, TypeError)
    pair = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            fail(name, owner, expected, value, TypeError)
        v = float(v)
        if not math.isfinite(v):
            fail(name, owner, expected, value)
        pair.append(v)
    lo, hi = pair
    if lo > hi or (low is not None and lo < low) or (high is not None and hi > high):
        fail(name, owner, expected, value)
    return (lo, hi)


def check_rgb(value, name, owner, allow_random=False):
    """Return an ``(r, g, b)`` tuple of ints in [0, 255] (or ``"random"``)."""
    expected = "an (r, g, b) triple of ints in the range [0, 255]"
    if allow_random:
        expected += " or 'random'"
        if isinstance(value, str) and value == "random":
            return value
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
        fail(name, owner, expected, value, TypeError)
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v <= 255:
            fail(name, owner, expected, value)
        out.append(int(v))
    return tuple(out)


def check_bool(value, name, owner):
    """Return ``value`` if it is a bool (not 0/1, not a string)."""
    if not isinstance(value, bool):
        fail(name, owner, "a bool", value, TypeError)
    return value


def check_index(i, n, name, owner):
    """Return sample index ``i`` in [0, n) (negative counts from the end).

    Only integers (``int``, numpy integers) are indices: a float, a bool or
    a string raises TypeError instead of being truncated.
    """
    import operator

    expected = f"an int in the range [{-n}, {n - 1}]"
    if isinstance(i, bool) or isinstance(i, (str, bytes)):
        fail(name, owner, expected, i, TypeError)
    try:
        k = operator.index(i)
    except TypeError:
        fail(name, owner, expected, i, TypeError)
    if not -n <= k < n:
        fail(name, owner, expected, i, IndexError)
    return k % n


def check_path(value, name, owner):
    """Return ``value`` as str if it is a path (str or os.PathLike of str)."""
    import os

    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        fail(name, owner, "a path (str or os.PathLike)", value, TypeError)
    path = os.fspath(value)
    if not isinstance(path, str):
        fail(name, owner, "a path (str or os.PathLike)", value, TypeError)
    return path
