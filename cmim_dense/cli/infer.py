"""Segmentation and depth of your images, folders, globs and videos with a trained dense model.

cmim-dense infer CONFIG CHECKPOINT INPUT... --out DIR [--ir DIR] [--backend torch|openvino]
    [--device D] [--threads N] [--overlay] [--cfg-options key=value ...]

Per frame, DIR gets NAME_seg.png (class colours), NAME_depth.png (depth colours with a colour
bar in metres) and NAME.npz (seg: class ids, uint8; depth: float32 metres; at the input's
resolution). NAME keeps each input's path relative to the folder given; the frames of a video
are NAME_000000, NAME_000001, ..., and NAME.mp4 shows image | segmentation | depth. legend.png
names the class colours. An input that cannot be read is named in one line, the others are
still processed, and the exit code is then 2.
"""

from __future__ import annotations

import argparse
import sys

from cmim_dense.cli.common import ToolParser, add_cfg_options, int_at_least, run_tool
from cmim_dense.cli.common import parse_args as parse


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="cmim-dense infer", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="dense config file, or the name of a config of the package")
    parser.add_argument("checkpoint", help="checkpoint written by train for this config")
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders, globs or videos"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--ir", help="folder written by export from this config and checkpoint: runs it whole"
    )
    parser.add_argument(
        "--backend",
        choices=["torch", "openvino"],
        help="where the frozen backbone of the PyTorch model runs, as in test (default: the "
        "config's model.backbone_backend)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the PyTorch model")
    parser.add_argument(
        "--threads", type=int_at_least(1), help="torch and OpenVINO threads (default: torch's)"
    )
    parser.add_argument(
        "--overlay", action="store_true", help="draw the class colours over the image"
    )
    add_cfg_options(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parse(build_parser(), argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job() -> int:
        from cmim_dense.apis import infer_to_folder

        return infer_to_folder(
            args.config,
            args.checkpoint,
            args.inputs,
            args.out,
            ir=args.ir,
            backend=args.backend,
            device=args.device,
            threads=args.threads,
            overlay=args.overlay,
            cfg_options=args.cfg_options,
        )

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
