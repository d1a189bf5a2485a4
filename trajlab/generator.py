"""Deterministic sample generation: sample ``i`` = f(spec, i).

Randomness
----------
* Sample ``i`` draws from its own stream
  ``Generator(PCG64(SeedSequence(spec.seed, spawn_key=(i,))))``: camera,
  colour and class parameters (19 uniforms per attempt), then position
  jitter if enabled. A sample that fails the framing or motion checks is
  redrawn from the *same* stream (next attempt), so the result never
  depends on any other sample.
* Labels come in blocks of ``C = len(classes)`` consecutive samples; each
  block is a random permutation of the classes drawn from
  ``SeedSequence(seed, spawn_key=(LABEL_KEY, block))``. Any prefix of a
  dataset is thus balanced to within one sample per class, and the j-th
  sample of each class lies in block j.
* Splits are stratified per class by two nested Bresenham (floor) sequences
  over the within-class index ``j``, with random phases per class: sample
  ``j`` is train when ``floor((j+1) f_train + o) > floor(j f_train + o)``,
  and the non-train samples are divided between val and test the same way.
  Every prefix of every class then holds its train count within one sample
  and its val and test counts within two samples of the expected fractions
  (a golden-ratio sequence, used before, drifted by up to ~3.5).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from . import camera as cam
from .render import render
from ._validation import check_int, fail
from .spec import DatasetSpec, check_fields
from .trajectories import N_UNIFORMS, REGISTRY, Context, lerp

__all__ = ["make_trajectories", "generate_block", "generate_samples", "probe_digest", "Block",
           "render_rows", "param_columns", "n_param_columns", "annotation_records",
           "sample_rng", "sample_rngs", "labels_for", "labels_at", "splits_for", "splits_at",
           "split_phases", "SPLITS", "NEAR_PLANE"]

LABEL_KEY = 0x4C41424C   # "LABL": spawn-key domain of the label permutations
SPLIT_KEY = 0x53504C54   # "SPLT": spawn-key domain of the split offsets
SPLITS = ("train", "val", "test")
#: Nearest allowed depth (metres) of the object centre.
NEAR_PLANE = 0.5
#: Attempts before a sample is declared impossible under the spec.
MAX_ATTEMPTS = 1000
_N_CAMERA, _N_COLOR = 4, 3
_N_DRAW = _N_CAMERA + _N_COLOR + N_UNIFORMS


def sample_rng(seed, index):
    """The random stream of sample ``index``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(int(index),))))


# --------------------------------------------------------------------------
# Streams of many samples at once. ``SeedSequence(seed, spawn_key=key)`` and
# seeding PCG64 from it cost ~7 us a sample (numpy 2.4, this machine), a
# quarter of generate_block's CPU at 8x32^2. SeedSequence's hash (O'Neill's seed_seq
# variant, bit_generator.pyx) is only uint32 arithmetic whose constants
# do not depend on the data, so it vectorises over samples; PCG64 is then
# seeded from the same words through the ISeedSequence interface (~2 us).
# Every batch checks one sample against numpy's own SeedSequence, so a
# numpy whose algorithm differed would fail loudly instead of changing bytes.
_POOL = 4                  # SeedSequence's default pool_size
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_M32 = 0xFFFFFFFF


def _uint32_words(x):
    """Little-endian 32-bit words of a non-negative int (0 is one word)."""
    words = [x & _M32]
    while x > _M32:
        x >>= 32
        words.append(x & _M32)
    return words


class _Hasher:
    """The hash-constant sequence of one SeedSequence pass (data independent)."""

    def __init__(self, init, mult):
        self.const, self.mult = init, mult

    def __call__(self, value):
        value = value ^ np.uint32(self.const)
        self.const = (self.const * self.mult) & _M32
        value = value * np.uint32(self.const)
        return value ^ (value >> np.uint32(16))


def _mix(x, y):
    r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
    return r ^ (r >> np.uint32(16))


def _seed_words(seed, key_prefix, last):
    """``SeedSequence(seed, spawn_key=key_prefix + (i,)).generate_state(4, np.uint64)``
    for every ``i`` in ``last`` (int64 array), shape (n, 4) uint64."""
    last = np.asarray(last, dtype=np.int64).reshape(-1)
    out = np.empty((last.size, 4), dtype=np.uint64)
    run = _uint32_words(int(seed))
    run += [0] * (_POOL - len(run))        # padded so spawn keys cannot alias entropy
    prefix = [w for k in key_prefix for w in _uint32_words(int(k))]
    two = last > _M32                      # indices of two 32-bit words
    for sel, n_words in ((~two, 1), (two, 2)):
        if not sel.any():
            continue
        i = last[sel].astype(np.uint64)
        words = [(i & np.uint64(_M32)).astype(np.uint32)]
        if n_words == 2:
            words.append((i >> np.uint64(32)).astype(np.uint32))
        entropy = [np.full(i.shape, w, dtype=np.uint32) for w in run + prefix] + words
        # SeedSequence.mix_entropy (len(entropy) > pool size here)
        hashmix = _Hasher(_INIT_A, _MULT_A)
        pool = [hashmix(entropy[k]) for k in range(_POOL)]
        for src in range(_POOL):
            for dst in range(_POOL):
                if src != dst:
                    pool[dst] = _mix(pool[dst], hashmix(pool[src]))
        for src in range(_POOL, len(entropy)):
            for dst in range(_POOL):
                pool[dst] = _mix(pool[dst], hashmix(entropy[src]))
        # SeedSequence.generate_state(4, np.uint64): 8 words, paired little-endian
        hashout = _Hasher(_INIT_B, _MULT_B)
        state = np.stack([hashout(pool[k % _POOL]) for k in range(8)], axis=-1)
        out[sel] = state.astype("<u4").view("<u8").astype(np.uint64)
    return out


class _PCG64Words(np.random.bit_generator.ISeedSequence):
    """Hands PCG64 precomputed seed words (it asks for 4 uint64 only)."""

    __slots__ = ("words",)

    def __init__(self, words):
        self.words = words

    def generate_state(self, n_words, dtype=np.uint32):
        if n_words != 4 or np.dtype(dtype) != np.uint64:
            raise ValueError("only PCG64's request (4, uint64) is precomputed")
        return self.words


def _streams(seed, key_prefix, last):
    """``Generator(PCG64(SeedSequence(seed, spawn_key=key_prefix + (i,))))`` for
    every ``i`` in ``last``, as a list; the same streams as one at a time."""
    words = _seed_words(seed, key_prefix, last)
    if words.size:
        check = np.random.SeedSequence(seed, spawn_key=tuple(key_prefix) + (int(last[0]),))
        if not np.array_equal(check.generate_state(4, np.uint64), words[0]):
            raise RuntimeError("this numpy's SeedSequence differs from the algorithm "
                               "trajlab.generator vectorises; sample streams would change")
    return [np.random.Generator(np.random.PCG64(_PCG64Words(w))) for w in words]


# PCG64 (XSL-RR 128/64, numpy's default bit generator) run in lanes, one
# lane per sample. Building one ``Generator(PCG64(...))`` per sample costs
# ~15 us (numpy 2.4, this machine: every BitGenerator allocates a lock and
# a capsule), a third of generate_block at 8x32^2, and drawing 19 uniforms
# from each of them one by one another ~2 us. The uniforms are only
# ``(next64 >> 11) * 2**-53``, and next64 is a 128-bit LCG step followed by
# an xor-shift and a rotation: uint64 arithmetic that vectorises over
# samples. Every batch checks its first lane against numpy's own PCG64, so
# a numpy whose algorithm differed would fail loudly instead of changing
# bytes.
_PCG_MULT_HI, _PCG_MULT_LO = 2549297995355413924, 4865540595714422341
_U64 = np.uint64
_LO32 = _U64(_M32)


def _mul_hi64(a, b_lo, b_hi):
    """High 64 bits of ``a * b`` (uint64 array times a constant split in
    32-bit halves ``b_lo``, ``b_hi``), exact with 64-bit products only."""
    a_lo, a_hi = a & _LO32, a >> _U64(32)
    p00, p01 = a_lo * b_lo, a_lo * b_hi
    p10, p11 = a_hi * b_lo, a_hi * b_hi
    mid = (p00 >> _U64(32)) + (p01 & _LO32) + (p10 & _LO32)
    return p11 + (p01 >> _U64(32)) + (p10 >> _U64(32)) + (mid >> _U64(32))


class _PCG64Lanes:
    """The uniform streams of many PCG64 generators at once.

    ``_PCG64Lanes(words).random(rows, k)`` gives, for each lane in ``rows``,
    the next ``k`` values of ``Generator(PCG64(_PCG64Words(words[lane])))
    .random(k)``, bit for bit, and advances those lanes. Only uniform
    doubles are provided; :meth:`generators` hands back numpy Generators at
    the lanes' current positions for anything else (normals).
    """

    _M = (_U64(_PCG_MULT_LO), _U64(_PCG_MULT_HI),
          _U64(_PCG_MULT_LO & _M32), _U64(_PCG_MULT_LO >> 32))

    def __init__(self, words):
        words = np.asarray(words, dtype=np.uint64).reshape(-1, 4)
        self.words = words
        # pcg64_set_seed: state = words[0:2], inc = words[2:4] (high word
        # first); srandom: inc = 2 * initseq + 1, state = 0, step, state +=
        # initstate, step
        self.inc_hi = (words[:, 2] << _U64(1)) | (words[:, 3] >> _U64(63))
        self.inc_lo = (words[:, 3] << _U64(1)) | _U64(1)
        self.hi = np.zeros(len(words), dtype=np.uint64)
        self.lo = np.zeros(len(words), dtype=np.uint64)
        self.drawn = np.zeros(len(words), dtype=np.int64)
        rows = np.arange(len(words))
        hi, lo = self._step(self.hi, self.lo, rows)
        lo2 = lo + words[:, 1]
        hi = hi + words[:, 0] + (lo2 < lo).astype(np.uint64)
        self.hi, self.lo = self._step(hi, lo2, rows)

    def _step(self, hi, lo, rows):
        """``state * M + inc`` mod 2**128 for the lanes ``rows``."""
        m_lo, m_hi, m_lo_lo, m_lo_hi = self._M
        new_hi = _mul_hi64(lo, m_lo_lo, m_lo_hi) + lo * m_hi + hi * m_lo
        new_lo = lo * m_lo
        out_lo = new_lo + self.inc_lo[rows]
        out_hi = new_hi + self.inc_hi[rows] + (out_lo < new_lo).astype(np.uint64)
        return out_hi, out_lo

    def random(self, rows, k):
        """(len(rows), k) float64: the next ``k`` uniforms of each lane in ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        hi, lo = self.hi[rows], self.lo[rows]
        out = np.empty((len(rows), k), dtype=np.uint64)
        for j in range(k):
            hi, lo = self._step(hi, lo, rows)
            value = hi ^ lo
            rot = hi >> _U64(58)
            out[:, j] = (value >> rot) | (value << ((_U64(64) - rot) & _U64(63)))
        self.hi[rows], self.lo[rows] = hi, lo
        self.drawn[rows] += k
        u = (out >> _U64(11)).astype(np.float64)
        u *= 1.0 / 9007199254740992.0
        return u

    def generators(self):
        """numpy Generators at the lanes' current positions, a list."""
        out = []
        for w, drawn in zip(self.words, self.drawn.tolist()):
            bitgen = np.random.PCG64(_PCG64Words(w))
            bitgen.advance(drawn)
            out.append(np.random.Generator(bitgen))
        return out


def _lanes(seed, indices):
    """:class:`_PCG64Lanes` of samples ``indices``; checks lane 0 against numpy."""
    words = _seed_words(seed, (), indices)
    lanes = _PCG64Lanes(words)
    if len(words):
        ref = np.random.Generator(np.random.PCG64(_PCG64Words(words[0]))).random(2)
        probe = _PCG64Lanes(words[:1]).random([0], 2)[0]
        if not np.array_equal(ref, probe) or not np.array_equal(
                words[0], np.random.SeedSequence(seed, spawn_key=(int(indices[0]),))
                .generate_state(4, np.uint64)):
            raise RuntimeError("this numpy's PCG64 or SeedSequence differs from the "
                               "algorithm trajlab.generator vectorises; sample streams "
                               "would change")
    return lanes


def sample_rngs(seed, indices):
    """The random streams of samples ``indices``, a list: ``sample_rng(seed, i)`` each."""
    return _streams(seed, (), np.asarray(indices, dtype=np.int64).reshape(-1))


def labels_for(spec, start, stop):
    """Labels of samples ``start..stop-1``, int64 of shape (stop - start,)."""
    return labels_at(spec, np.arange(start, stop, dtype=np.int64))


def labels_at(spec, indices):
    """Labels of the samples ``indices`` (any order, repeats allowed), int64."""
    C = spec.n_classes
    indices = np.asarray(indices, dtype=np.int64)
    blocks, where = np.unique(indices // C, return_inverse=True)
    perms = np.array([rng.permutation(C) for rng in _streams(spec.seed, (LABEL_KEY,), blocks)],
                     dtype=np.int64).reshape(len(blocks), C)
    return perms[where.reshape(-1), indices % C]


@functools.lru_cache(maxsize=64)
def split_phases(seed, n_classes):
    """Per-class offsets ``(o_train, o_val)`` of the split sequences, (C, 2) float64."""
    out = np.array([np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        seed, spawn_key=(SPLIT_KEY, c)))).random(2) for c in range(n_classes)])
    out.flags.writeable = False
    return out.reshape(n_classes, 2)


def splits_for(spec, start, stop, labels=None):
    """Split codes (0 train, 1 val, 2 test) of samples ``start..stop-1``, uint8.

    The split of a sample depends only on the seed, the classes, the split
    fractions and its index (never on ``n_samples``).
    """
    return splits_at(spec, np.arange(start, stop, dtype=np.int64), labels)


def splits_at(spec, indices, labels=None):
    """Split codes of the samples ``indices`` (any order), uint8."""
    indices = np.asarray(indices, dtype=np.int64)
    if labels is None:
        labels = labels_at(spec, indices)
    phases = split_phases(spec.seed, spec.n_classes)
    # index of the sample within its class (labels come in balanced blocks)
    j = indices.astype(np.float64) // spec.n_classes
    f_train, f_val, f_test = spec.splits
    o_train, o_val = phases[labels, 0], phases[labels, 1]
    train_upto = np.floor((j + 1.0) * f_train + o_train)     # train among 0..j
    is_train = train_upto > np.floor(j * f_train + o_train)
    # for a non-train sample, its index among the class's non-train samples
    m = j - train_upto
    q = f_val / (f_val + f_test) if f_val + f_test > 0 else 0.0
    is_val = np.floor((m + 1.0) * q + o_val) > np.floor(m * q + o_val)
    return np.where(is_train, 0, np.where(is_val, 1, 2)).astype(np.uint8)


def _hsv_to_rgb(h, s, v):
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.rint(np.stack([r, g, b], axis=-1) * 255.0).astype(np.uint8)


@dataclass
class Block:
    """Samples ``start..stop-1`` of a dataset, with full ground truth.

    Array attributes have a leading dimension ``n = stop - start``:
    ``videos`` (n, T, 3, H, W) uint8; ``labels`` (n,) int64; ``splits``
    (n,) uint8 (0 train, 1 val, 2 test); ``positions`` (n, T, 3) float64
    world metres; ``pixels`` (n, T, 2) float64 ``(u, v)``; ``depth`` (n, T)
    float64; ``radius`` (n, T) float64 pixel radius as drawn (see
    ``DatasetSpec.radius_mode``); ``K``, ``R`` (n, 3, 3)
    and ``t`` (n, 3) float64; ``colors`` (n, 3) uint8; ``attempts`` (n,)
    int32 (1 = accepted at first draw). ``param_matrix`` (n, P) float64
    holds the class parameters (see :func:`param_columns`) and ``params``
    gives them as a list of per-sample dicts (made from the matrix when
    first asked for); ``rejections`` counts redrawn attempts per class name.
    """

    start: int
    stop: int
    videos: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    positions: np.ndarray
    pixels: np.ndarray
    depth: np.ndarray
    radius: np.ndarray
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    colors: np.ndarray
    attempts: np.ndarray
    rejections: dict = field(default_factory=dict)
    #: sample index of each row (``start..stop-1`` for a contiguous block)
    indices: np.ndarray = None
    #: (n, P) float64: each sample's class parameters laid out by
    #: :func:`param_columns`, NaN in the columns its class does not use
    param_matrix: np.ndarray = None
    #: per label, the ``(name, first column, shape)`` of its parameters
    param_layout: tuple = ()

    #: names of the per-sample numeric arrays, in storage order
    ARRAYS = ("videos", "labels", "splits", "positions", "pixels", "depth", "radius",
              "K", "R", "t", "colors", "attempts")

    @functools.cached_property
    def params(self):
        """Per-sample dicts of the class parameters: Python floats for
        scalars, float64 arrays for vectors (made from ``param_matrix``)."""
        out = []
        for label, row in zip(self.labels.tolist(), self.param_matrix):
            out.append({key: (row[off:off + shape[0]].copy() if shape else float(row[off]))
                        for key, off, shape in self.param_layout[label]})
        return out

    def array(self, name):
        """Stored array ``name``: one of :attr:`ARRAYS`, or ``'params'`` (the
        parameter matrix)."""
        return self.param_matrix if name == "params" else getattr(self, name)

    def annotations(self, spec):
        """Per-sample JSON-ready dicts: class, split, params, equation, description."""
        return annotation_records(spec, self.indices, self.labels, self.splits,
                                  self.param_matrix)


@functools.lru_cache(maxsize=64)
def _class_columns(name, clip_seconds, n_frames, gravity):
    tc = REGISTRY[name]
    view = np.array([[0.48, 0.6, -0.64]])
    p = tc.params_from_uniforms(np.full((1, N_UNIFORMS), 0.5), Context(
        view, clip_seconds, n_frames, gravity))
    out, offset = [], 0
    for key, x in p.items():
        x = np.asarray(x)
        if x.dtype != np.float64 or x.ndim > 2:
            raise TypeError(f"parameter {key!r} of class {name!r} is {x.dtype} of {x.ndim} "
                            "dimensions; trajlab stores float64 scalars and vectors")
        # a tuple: the cached answer is shared by every caller
        shape = tuple(x.shape[1:])
        out.append((key, offset, shape))
        offset += shape[0] if shape else 1
    return tuple(out)


def param_columns(spec):
    """``{class: ((name, first column, shape), ...)}``: where each class's
    parameters lie in a row of :attr:`Block.param_matrix` (shape ``()`` a
    scalar, ``(k,)`` a vector of ``k`` columns; spec.json and the zarr
    attributes write it as a JSON list). The matrix has
    :func:`n_param_columns` columns; a class leaves the rest NaN."""
    return {name: _class_columns(name, spec.clip_seconds, spec.n_frames, spec.gravity)
            for name in spec.classes}


def n_param_columns(spec):
    """Columns of :attr:`Block.param_matrix` (the widest class's parameters)."""
    return max(off + (shape[0] if shape else 1)
               for cols in param_columns(spec).values() for _k, off, shape in cols)


def annotation_records(spec, indices, labels, splits, param_matrix):
    """The annotation record of every row: ``index``, ``label``, ``class``,
    ``split``, ``params`` (Python floats and lists), ``equation`` and
    ``description``. One function for the records of generated blocks and
    for those rebuilt from a stored parameter matrix: float64 values come
    back as the same Python floats, so the records (and their JSON) are the
    same."""
    # Python floats up front (tolist) and the equation and description
    # formatted from them: numpy scalars one at a time were most of the
    # annotations' time
    columns = param_columns(spec)
    classes = [(REGISTRY[c], columns[c]) for c in spec.classes]
    rows = np.asarray(param_matrix, dtype=np.float64).tolist()
    out = []
    for index, label, split, row in zip(np.asarray(indices).tolist(),
                                        np.asarray(labels).tolist(),
                                        np.asarray(splits).tolist(), rows):
        tc, cols = classes[label]
        plain = {key: (row[off:off + shape[0]] if shape else row[off])
                 for key, off, shape in cols}
        out.append({
            "index": index,
            "label": label,
            "class": tc.name,
            "split": SPLITS[split],
            "params": plain,
            "equation": tc.equation(plain),
            "description": tc.description(plain, spec.clip_seconds),
        })
    return out


def array_layout(spec, n=None):
    """Shapes (without the leading n) and dtypes of every stored array."""
    T, S = spec.n_frames, spec.image_size
    layout = {
        "videos": ((T, 3, S, S), np.uint8),
        "labels": ((), np.int64),
        "splits": ((), np.uint8),
        "positions": ((T, 3), np.float64),
        "pixels": ((T, 2), np.float64),
        "depth": ((T,), np.float64),
        "radius": ((T,), np.float64),
        "K": ((3, 3), np.float64),
        "R": ((3, 3), np.float64),
        "t": ((3,), np.float64),
        "colors": ((3,), np.uint8),
        "attempts": ((), np.int32),
    }
    if n is None:
        return layout
    return {k: ((n,) + shape, dt) for k, (shape, dt) in layout.items()}


def generate_block(spec, start, stop, videos_out=None):
    """Generate samples ``start..stop-1`` of ``spec``.

    Parameters
    ----------
    spec : DatasetSpec
    start, stop : int
        ``0 <= start <= stop``; ``stop`` may exceed ``spec.n_samples`` only
        when called directly (the bytes of sample ``i`` never depend on n).
    videos_out : ndarray of shape (stop - start, T, 3, H, W), uint8, optional
        Rendered in place when given (e.g. a memory-mapped slice).

    Returns
    -------
    Block
    """
    block = generate_samples(spec, np.arange(start, stop, dtype=np.int64), videos_out)
    block.start, block.stop = start, stop
    return block


def generate_samples(spec, indices, videos_out=None, render_videos=True):
    """Generate the samples ``indices`` of ``spec`` (any order, repeats allowed).

    Row ``k`` of the result is sample ``indices[k]``, byte for byte what
    :func:`generate_block` gives for it: every sample draws only from its
    own stream. The vectorised work is shared by all rows, so a batch of
    scattered indices (a shuffled on-the-fly dataset) costs about as much
    per sample as a contiguous block.

    Parameters
    ----------
    spec : DatasetSpec
    indices : array-like of int
    videos_out : ndarray of shape (len(indices), T, 3, H, W), uint8, optional
    render_videos : bool, default=True
        False: everything but the videos (``Block.videos`` is None), which
        :func:`render_rows` then renders in pieces of any size, byte for
        byte the same (not with ``pixel_noise``, whose draws follow the
        parameters' in each sample's stream).

    Returns
    -------
    Block
        With ``indices`` set; ``start``/``stop`` are the smallest index and
        the largest plus one (informative only when the indices are contiguous).
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and int(indices.min()) < 0:
        raise ValueError(f"sample indices must be >= 0; got {int(indices.min())}")
    start = int(indices.min()) if indices.size else 0
    stop = int(indices.max()) + 1 if indices.size else 0
    n = len(indices)
    T, S = spec.n_frames, spec.image_size
    times = spec.times
    labels = labels_at(spec, indices)
    splits = splits_at(spec, indices, labels)
    shapes = array_layout(spec, n)
    arr = {k: np.zeros(shape, dtype=dt) for k, (shape, dt) in shapes.items()
           if k not in ("videos", "labels", "splits")}
    columns = param_columns(spec)
    param_matrix = np.full((n, n_param_columns(spec)), np.nan)
    rejections = {name: 0 for name in spec.classes}
    # uniforms from PCG64 lanes; numpy Generators only where normals are
    # drawn (position jitter between attempts: all along; pixel noise: at
    # the end, from where the lanes stopped)
    jitter = spec.position_jitter > 0
    if jitter:
        rngs = sample_rngs(spec.seed, indices)
    else:
        lanes = _lanes(spec.seed, indices)
    camspec = spec.camera
    margin = spec.margin_px
    min_step = spec.min_motion * S
    pending = np.arange(n)
    attempt = 0
    while pending.size:
        attempt += 1
        if attempt > MAX_ATTEMPTS:
            bad = [spec.classes[c] for c in np.unique(labels[pending])]
            raise RuntimeError(
                f"{pending.size} sample(s) of class(es) {bad} (first index "
                f"{int(indices[pending[0]])}) were rejected {MAX_ATTEMPTS} times: no "
                "trajectory fits in the frame under this spec. Enlarge the camera "
                "distance or field of view, or reduce object_radius / margin_px / "
                "min_motion.")
        if jitter:
            U = np.stack([rngs[k].random(_N_DRAW) for k in pending])
            J = np.stack([rngs[k].standard_normal((T, 3)) for k in pending])
        else:
            U = lanes.random(pending, _N_DRAW)
        eye = cam.orbit_eye(lerp(U[:, 0], camspec.distance), lerp(U[:, 1], camspec.azimuth_deg),
                            lerp(U[:, 2], camspec.elevation_deg))
        R, t = cam.look_at(eye)
        K = cam.intrinsics(S, lerp(U[:, 3], camspec.fov_deg))
        ok = np.zeros(pending.size, dtype=bool)
        pos = np.empty((pending.size, T, 3))
        for c, name in enumerate(spec.classes):
            sel = np.flatnonzero(labels[pending] == c)
            if sel.size == 0:
                continue
            tc = REGISTRY[name]
            ctx = Context(R[sel, 2], spec.clip_seconds, T, spec.gravity)
            p = tc.params_from_uniforms(U[sel, _N_CAMERA + _N_COLOR:], ctx)
            pos[sel] = tc.positions(p, times)
            keys = list(p)
            if keys != [c[0] for c in columns[name]]:
                raise RuntimeError(f"class {name!r} drew parameters {keys}, not the "
                                   f"{[c[0] for c in columns[name]]} of param_columns")
            rows = pending[sel]
            for key, off, shape in columns[name]:
                x = p[key]
                if shape:
                    param_matrix[rows, off:off + shape[0]] = x
                else:
                    param_matrix[rows, off] = x
        if jitter:
            pos = pos + spec.position_jitter * J
        pix, depth = cam.project(pos, K, R, t)
        with np.errstate(divide="ignore", invalid="ignore"):
            rad = K[:, None, 0, 0] * spec.object_radius / depth
            if spec.radius_mode == "constant":
                # held at frame 0 (see DatasetSpec.radius_mode)
                rad = np.repeat(rad[:, :1], T, axis=1)
            reach = rad + margin
            inside = ((depth > NEAR_PLANE)
                      & (pix[..., 0] - reach >= 0) & (pix[..., 0] + reach <= S)
                      & (pix[..., 1] - reach >= 0) & (pix[..., 1] + reach <= S)).all(axis=1)
            d = pix[:, 1:] - pix[:, :-1]
            dist = np.sqrt(d[..., 0] ** 2 + d[..., 1] ** 2)
            step = np.zeros(len(dist))
            for k in range(T - 1):       # fixed summation order on every CPU
                step += dist[:, k]
            step /= T - 1
        ok = inside & (step >= min_step)
        acc = pending[ok]
        for key, val in (("positions", pos), ("pixels", pix), ("depth", depth),
                         ("radius", rad), ("K", K), ("R", R), ("t", t)):
            arr[key][acc] = val[ok]
        arr["attempts"][acc] = attempt
        if spec.object_color == "random":
            arr["colors"][acc] = _hsv_to_rgb(U[ok, 4], 0.5 + 0.5 * U[ok, 5], 0.75 + 0.25 * U[ok, 6])
        else:
            arr["colors"][acc] = spec.object_color
        for c in labels[pending[~ok]]:
            rejections[spec.classes[c]] += 1
        pending = pending[~ok]
    if not render_videos:
        if spec.pixel_noise > 0:
            raise ValueError("render_videos=False needs pixel_noise == 0 (the noise is drawn "
                             "from each sample's stream after its parameters)")
        return Block(start=start, stop=stop, videos=None, labels=labels, splits=splits,
                     rejections=rejections, indices=indices, param_matrix=param_matrix,
                     param_layout=tuple(columns[c] for c in spec.classes), **arr)
    videos = render(arr["pixels"], arr["radius"], arr["colors"], spec.background_color, S,
                    spec.style, spec.trail_length, spec.trail_decay, out=videos_out)
    if spec.pixel_noise > 0:
        if not jitter:
            rngs = lanes.generators()
        for k in range(n):
            noise = rngs[k].standard_normal(videos.shape[1:], dtype=np.float32)
            noisy = videos[k].astype(np.float32) + np.float32(spec.pixel_noise) * noise
            videos[k] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return Block(start=start, stop=stop, videos=videos, labels=labels, splits=splits,
                 rejections=rejections, indices=indices, param_matrix=param_matrix,
                 param_layout=tuple(columns[c] for c in spec.classes), **arr)


def render_rows(spec, block, a, b, out):
    """Render rows ``a..b-1`` of a block made with ``render_videos=False``
    into ``out`` (b - a, T, 3, H, W): the bytes ``generate_samples`` gives
    them. (A pixel outside every dot blends to exactly the background, so
    the window size, which follows the rows' largest radius, changes no
    byte; the same holds for shard sizes.)"""
    return render(block.pixels[a:b], block.radius[a:b], block.colors[a:b],
                  spec.background_color, spec.image_size, spec.style, spec.trail_length,
                  spec.trail_decay, out=out)


def probe_digest(spec, n=8):
    """sha256 of the first ``n`` samples (all arrays). Stored in spec.json
    when a run starts and recomputed by every process that adds to it: a
    machine whose numerics differ (another libm, a broken install) is
    refused instead of mixing its bytes into the dataset."""
    import hashlib

    block = generate_block(spec, 0, min(n, spec.n_samples))
    h = hashlib.sha256()
    for name in Block.ARRAYS:
        h.update(np.ascontiguousarray(getattr(block, name)).tobytes())
    return h.hexdigest()


def make_trajectories(n_samples=None, *, classes=None, n_frames=None, image_size=None,
                      style=None, seed=None, spec=None, return_annotations=False,
                      chunk_size=256):
    """Generate trajectory clips in memory (sklearn ``make_*`` style).

    Produces exactly the bytes that :func:`trajlab.generate` writes to disk
    for the same spec.

    Parameters
    ----------
    n_samples : int, optional
        Number of clips; default ``spec.n_samples`` when ``spec`` is given,
        else 1000.
    classes, n_frames, image_size, style, seed
        See :class:`~trajlab.spec.DatasetSpec` (its defaults when omitted:
        all four classes, 16 frames of 64x64, ``'dot'``, seed 0). Not
        allowed together with ``spec``, which defines them: that raises a
        ValueError naming both, instead of silently ignoring one.
    spec : DatasetSpec, optional
        Full specification; ``spec.n_samples`` is replaced by ``n_samples``
        when that is given.
    return_annotations : bool, default=False
        Also return the ground truth.
    chunk_size : int, default=256
        Samples generated per vectorised step (memory only; bytes are the same).

    Returns
    -------
    videos : ndarray of shape (n_samples, n_frames, 3, image_size, image_size), uint8
    labels : ndarray of shape (n_samples,), int64
        Index into ``spec.classes``.
    annotations : dict, only if ``return_annotations``
        ``positions``, ``pixels``, ``depth``, ``radius``, ``K``, ``R``,
        ``t``, ``splits``, ``colors``, ``attempts`` arrays (see
        :class:`Block`), ``params`` (the parameter matrix, as stored in
        ``data/params``: see :func:`param_columns`), ``records`` (per-sample dicts with class, split,
        params, equation, description), ``rejections`` per class and
        ``spec``.
    """
    own = "make_trajectories"
    given = {k: x for k, x in (("classes", classes), ("n_frames", n_frames),
                               ("image_size", image_size), ("style", style), ("seed", seed))
             if x is not None}
    if n_samples is not None:
        check_fields({"n_samples": n_samples}, own)
    if spec is None:
        spec = DatasetSpec(**check_fields(
            {"n_samples": 1000 if n_samples is None else n_samples, **given}, own))
    elif not isinstance(spec, DatasetSpec):
        fail("spec", own, "a DatasetSpec or None", spec, TypeError)
    else:
        for name, value in given.items():
            fail(name, own, f"None when 'spec' is given (spec.{name} = "
                 f"{getattr(spec, name)!r} defines it)", value)
        if n_samples is not None:
            spec = spec.replace(n_samples=n_samples)
    chunk_size = check_int(chunk_size, "chunk_size", own, 1)
    n = spec.n_samples
    layout = array_layout(spec, n)
    out = {k: np.empty(shape, dtype=dt) for k, (shape, dt) in layout.items()}
    out["params"] = np.empty((n, n_param_columns(spec)), dtype=np.float64)
    records, rejections = [], {name: 0 for name in spec.classes}
    for a in range(0, n, chunk_size):
        b = min(n, a + chunk_size)
        block = generate_block(spec, a, b, videos_out=out["videos"][a:b])
        for key in (*Block.ARRAYS, "params"):
            if key != "videos":
                out[key][a:b] = block.array(key)
        for name, k in block.rejections.items():
            rejections[name] += k
        if return_annotations:
            records.extend(block.annotations(spec))
    videos, labels = out.pop("videos"), out.pop("labels")
    if not return_annotations:
        return videos, labels
    out.update(records=records, rejections=rejections, spec=spec)
    return videos, labels, out
