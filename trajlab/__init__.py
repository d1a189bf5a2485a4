"""trajlab: synthetic videos of objects moving along 3D trajectories.

Main entry points:

* :func:`make_trajectories` — in-memory, sklearn ``make_*`` style;
* :class:`DatasetSpec` — the frozen, validated description of a dataset.
"""

from .generator import make_trajectories
from .spec import CameraSpec, DatasetSpec
from .trajectories import REGISTRY

__version__ = "0.1.0"

__all__ = ["make_trajectories", "DatasetSpec", "CameraSpec", "REGISTRY", "__version__"]
