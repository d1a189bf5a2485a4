"""trajlab: synthetic videos of objects moving along 3D trajectories.

Main entry points:

* :func:`make_trajectories` — in-memory, sklearn ``make_*`` style;
* :func:`generate` — parallel, checkpointed, resumable generation into a
  run directory;
* :func:`open_dataset` — memory-mapped, verified access to a finished run;
* :class:`DatasetSpec` — the frozen, validated description of a dataset;
* :func:`notebook_setup` — first call of a notebook: relative paths mean
  the repository root (see :mod:`trajlab.notebook_run`).

Torch datasets live in :mod:`trajlab.torchdata` (the only module that
imports torch), plots in :mod:`trajlab.plotting`.
"""

from .dataset import TrajectoryData, open_dataset, verify_run
from .engine import GenerationResult, ensure_dataset, generate
from .generator import make_trajectories
from .notebook_run import notebook_setup
from .spec import CameraSpec, DatasetSpec
from .storage import RunDirError
from .trajectories import REGISTRY

__version__ = "0.3.0"

__all__ = ["make_trajectories", "generate", "ensure_dataset", "open_dataset", "verify_run", "DatasetSpec",
           "CameraSpec", "GenerationResult", "TrajectoryData", "RunDirError", "REGISTRY",
           "notebook_setup", "__version__"]
