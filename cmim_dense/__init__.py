"""cmim_dense: binary ResNets, CMIM pretraining and dense-prediction transfer."""

from cmim_dense import compat

compat.apply()

from cmim_dense import binary, datasets, engine, evaluation, losses, models  # noqa: E402
from cmim_dense.binary import list_binarizers  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "binary",
    "datasets",
    "engine",
    "evaluation",
    "list_binarizers",
    "losses",
    "models",
]
