"""The project's registries: children of mmseg's under the scope ``'cmim_dense'``.

This is OpenMMLab's own lazy-registration pattern (``mmseg/registry/registry.py``): each
registry names the modules that fill it (``locations``), and mmengine imports them the first
time something is built in the scope, for example by a config with
``default_scope = 'cmim_dense'`` or by ``mmseg.apis.init_model``. Importing ``cmim_dense``
therefore stays cheap, and no module has to be imported by hand for its classes to register.

Lookups fall back to the parent (mmseg's, then mmengine's) registry, so a config in this scope
builds mmseg's heads, transforms and metrics as well as ours. mmengine looks a missing name up
in the parent's table without importing the parent's locations, so each registry lists mmseg's
locations after the project's.

Importing this module applies the compatibility shims (:mod:`cmim_dense.compat`) once, before
anything imports mmseg's models: mmengine imports ``<scope>.registry`` whenever it switches to
this scope, so every path that builds a project module passes here first.
"""

from __future__ import annotations

from cmim_dense import compat

compat.apply()  # before mmseg is imported anywhere

from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS  # noqa: E402
from mmengine.registry import Registry  # noqa: E402
from mmseg import registry as mmseg  # noqa: E402

SCOPE = "cmim_dense"


def _child(parent: Registry, *locations: str) -> Registry:
    """A registry of the project's scope under ``parent``; ``locations`` are imported lazily."""
    return Registry(parent.name, parent=parent, scope=SCOPE, locations=list(locations))


RUNNERS = _child(mmseg.RUNNERS)
RUNNER_CONSTRUCTORS = _child(mmseg.RUNNER_CONSTRUCTORS)
LOOPS = _child(mmseg.LOOPS)
HOOKS = _child(mmseg.HOOKS, "cmim_dense.engine", "mmseg.engine.hooks")
DATASETS = _child(mmseg.DATASETS, "cmim_dense.datasets", "mmseg.datasets")
DATA_SAMPLERS = _child(mmseg.DATA_SAMPLERS)
TRANSFORMS = _child(mmseg.TRANSFORMS, "cmim_dense.datasets", "mmseg.datasets.transforms")
MODELS = _child(mmseg.MODELS, "cmim_dense.models", "cmim_dense.losses", "mmseg.models")
MODEL_WRAPPERS = _child(mmseg.MODEL_WRAPPERS, "mmseg.models")
WEIGHT_INITIALIZERS = _child(mmseg.WEIGHT_INITIALIZERS, "mmseg.models")
OPTIMIZERS = _child(mmseg.OPTIMIZERS, "mmseg.engine.optimizers")
OPTIM_WRAPPERS = _child(mmseg.OPTIM_WRAPPERS, "mmseg.engine.optimizers")
OPTIM_WRAPPER_CONSTRUCTORS = _child(mmseg.OPTIM_WRAPPER_CONSTRUCTORS, "mmseg.engine.optimizers")
PARAM_SCHEDULERS = _child(mmseg.PARAM_SCHEDULERS, "mmseg.engine.schedulers")
METRICS = _child(mmseg.METRICS, "cmim_dense.evaluation", "mmseg.evaluation")
EVALUATOR = _child(mmseg.EVALUATOR, "mmseg.evaluation")
TASK_UTILS = _child(mmseg.TASK_UTILS, "mmseg.models")
VISUALIZERS = _child(mmseg.VISUALIZERS, "cmim_dense.evaluation", "mmseg.visualization")
VISBACKENDS = _child(mmseg.VISBACKENDS, "mmseg.visualization")
LOG_PROCESSORS = _child(mmseg.LOG_PROCESSORS, "mmseg.visualization")
INFERENCERS = _child(mmseg.INFERENCERS)
FUNCTIONS = _child(MMENGINE_FUNCTIONS)  # mmseg has none; its inferencer searches the scope's

# Where a frozen backbone's forward may run besides PyTorch (``MultiTaskDense``'s
# ``backbone_backend``). The OpenVINO runtime registers itself here when it is imported, so
# the model layer names a backend without importing the deploy layer (or OpenVINO).
BACKBONE_RUNTIMES = Registry(
    "backbone runtime", scope=SCOPE, locations=["cmim_dense.deploy.runtime"]
)


def init_scope() -> None:
    """Make ``'cmim_dense'`` the current default scope (what the configs set)."""
    from mmengine.registry import init_default_scope

    init_default_scope(SCOPE)
