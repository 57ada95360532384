"""Real 1-bit inference: binary backbones as bit-packed xnor-popcount convolutions in OpenVINO.

:mod:`.fold` turns each binary conv into bits plus float constants (engine-free),
:mod:`.graph` builds the OpenVINO graph, :mod:`.export` writes IR files and measures their
exactness, and :mod:`.runtime` runs an exported backbone from PyTorch code. OpenVINO is imported
only when these modules are, not by ``import cmim_dense``.
"""
