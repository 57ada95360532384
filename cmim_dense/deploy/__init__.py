"""Real 1-bit inference: binary backbones as bit-packed xnor-popcount convolutions in OpenVINO.

:mod:`.fold` turns each binary conv into bits plus float constants (engine-free),
:mod:`.graph` builds the OpenVINO graph, :mod:`.export` writes IR files (fp32 or INT8 heads) and
measures their exactness, and :mod:`.runtime` compiles every model with the f32 precision hint
and runs a backbone from PyTorch code or an exported folder (:class:`.runtime.ExportedModel`).
Building from a config is :mod:`cmim_dense.engine.export`'s. OpenVINO is imported only when these
modules are, not by ``import cmim_dense``.
"""
