"""Export a model as OpenVINO IR with bit-packed binary convolutions.

cmim-dense export CONFIG [CHECKPOINT] --out DIR [--size H W] [--int8-heads [--calib-frames N]]
                  [--cfg-options key=value ...]

CONFIG is a pretraining or a dense config and CHECKPOINT what ``train`` wrote for it (without
one, the config's own initialisation is exported). DIR gets backbone.xml/.bin, for a dense
config model.xml/.bin too, and export.json with the layer counts, sizes, identity, how to
compile, and the error measured against the PyTorch model. The IR's input is static,
(1, 3, H, W) of --size (default: the config's input size). --int8-heads quantizes a dense
model's heads to INT8 (NNCF, calibrated on N frames of the config's train split); the binary
backbone is unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys

from cmim_dense.cli.common import ToolParser, add_cfg_options, height_width, int_at_least, run_tool
from cmim_dense.cli.common import parse_args as parse


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="cmim-dense export", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file, or the name of a config of the package")
    parser.add_argument("checkpoint", nargs="?", help="checkpoint written by train")
    parser.add_argument("--out", required=True, help="output folder of the IR")
    parser.add_argument(
        "--size",
        type=height_width(),
        nargs=2,
        metavar=("H", "W"),
        help="the IR's static input size (default: the config's input size)",
    )
    parser.add_argument(
        "--int8-heads", action="store_true", help="quantize the dense heads to INT8 (NNCF)"
    )
    parser.add_argument(
        "--calib-frames",
        type=int_at_least(1),
        default=8,
        metavar="N",
        help="calibration frames (default 8)",
    )
    add_cfg_options(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parse(build_parser(), argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job() -> None:
        import importlib.util

        from cmim_dense.utils.errors import InputError

        if importlib.util.find_spec("openvino") is None:
            raise InputError("OpenVINO is needed to export: pip install openvino")
        from cmim_dense.engine.export import export_config

        record = export_config(
            args.config,
            args.checkpoint,
            args.out,
            args.size,
            args.cfg_options,
            int8_heads=args.int8_heads,
            calib_frames=args.calib_frames,
        )
        print(json.dumps(record, indent=1))

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
