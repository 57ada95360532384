"""cmim_dense: binary ResNets, CMIM pretraining and dense-prediction transfer.

Importing the package is cheap: it imports neither torch nor the OpenMMLab stack. Modules
register themselves lazily through :mod:`cmim_dense.registry` (under the scope
``'cmim_dense'``) the first time a config is built. Two things happen here:

- a stand-in for mmcv's compiled extension is installed when only mmcv-lite is present
  (:func:`cmim_dense.compat.install_mmcv_ext_stub`), so that ``mmseg`` can be imported after
  ``cmim_dense``, as mmseg's ``init_model`` and ``MMSegInferencer`` do;
- when timm is already imported, the ``bin_*`` models are registered in timm, so that
  ``import timm, cmim_dense`` is enough for ``timm.create_model('bin_resnet18')`` (without timm,
  ``import cmim_dense.models`` registers them).
"""

import sys

from cmim_dense.compat import install_mmcv_ext_stub

install_mmcv_ext_stub()
if "timm" in sys.modules:
    import cmim_dense.models.backbones  # noqa: F401  (registers bin_* in timm)

__version__ = "0.1.0"
