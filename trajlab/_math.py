"""Transcendental functions whose results do not depend on the CPU.

numpy dispatches some float64 ufuncs (``np.tan`` here; ``np.sin`` and
``np.cos`` in some builds) to SIMD code chosen at run time by the CPU's
features (e.g. AVX-512). Those results can differ in the last bit from the
scalar C library's, so the same spec would give different bytes on
different machines — in a mixed dask cluster, or when a run is resumed on
another instance type. trajlab therefore evaluates them element by element
with the C library (``math``), which is the same on every CPU for a given
libm. The cost, ~0.1 µs per element, is a few µs per sample.
"""

import math

import numpy as np

__all__ = ["sin", "cos", "tan"]


def _wrap(fn):
    ufunc = np.frompyfunc(fn, 1, 1)

    def f(x):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 0:
            return np.float64(fn(float(x)))
        return ufunc(x).astype(np.float64)

    f.__name__ = fn.__name__
    f.__doc__ = f"Element-wise ``math.{fn.__name__}`` of a float64 array (CPU-independent)."
    return f


sin = _wrap(math.sin)
cos = _wrap(math.cos)
tan = _wrap(math.tan)
