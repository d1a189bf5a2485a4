"""Baselines for the three tasks on trajlab clips: classify, forecast, tokenize.

Small, CPU-friendly models, deterministic for a seed (torch's global
generator is forked and restored, see :func:`seeded`), with progress through
``tqdm.auto``. Data comes in as :class:`Split` arrays read by
:func:`load_split` from a run dir, an opened dataset or the output of
``make_trajectories(..., return_annotations=True)``. Metrics are those of
:mod:`trajlab.metrics`.

* :mod:`trajlab.baselines.classify` — stacked-frame CNN and shortcut probes;
* :mod:`trajlab.baselines.forecast` — extrapolation, position MLP, frame U-Net,
  keypoint frame forecaster;
* :mod:`trajlab.baselines.tokenize` — magvit2-pytorch ``VideoTokenizer``
  (LFQ), foreground-weighted loss, classification from frozen codes
  (needs ``magvit2-pytorch``).
"""

from ._common import Split, TargetTable, confusion_matrix, load_split, seeded, torch_threads

__all__ = ["Split", "TargetTable", "confusion_matrix", "load_split", "seeded", "torch_threads"]
