"""Synthetic indoor RGB-D scenes in the official NYUD-v2 file formats (see :mod:`.export`)."""

from cmim_dense.nyud_io.synth.export import (
    SynthPaths,
    generate_synth_nyud,
    object_crops,
    split_indices,
)
from cmim_dense.nyud_io.synth.render import SynthFrame, render_frame
from cmim_dense.nyud_io.synth.scene import RAW_IDS, VOID_ID, synth_map_class, synth_names

__all__ = [
    "RAW_IDS",
    "VOID_ID",
    "SynthFrame",
    "SynthPaths",
    "generate_synth_nyud",
    "object_crops",
    "render_frame",
    "split_indices",
    "synth_map_class",
    "synth_names",
]
