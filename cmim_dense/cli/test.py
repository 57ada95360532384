"""Evaluate a checkpoint and write ``<work_dir>/metrics.json``.

cmim-dense test CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--name NAME]
                [--backend torch|openvino | --ir DIR] [--cfg-options key=value ...]
                [--launcher none|pytorch|slurm]
"""

from __future__ import annotations

import argparse
import json
import sys

from cmim_dense.cli.common import ToolParser, add_common_args, run_tool
from cmim_dense.cli.common import parse_args as parse


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="cmim-dense test", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file, or the name of a config of the package")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="run directory: metrics.json and predictions/ go here")
    parser.add_argument("--show-dir", help="save a picture of every test image's predictions")
    parser.add_argument("--name", help="run name in metrics.json and reports (default: config)")
    where = parser.add_mutually_exclusive_group()  # an IR holds the backbone and the heads
    where.add_argument(
        "--backend",
        choices=["torch", "openvino"],
        help="run a dense model's frozen binary backbone in PyTorch or bit-packed in OpenVINO "
        "(default: the config's model.backbone_backend)",
    )
    where.add_argument(
        "--ir",
        help="folder written by export from this config and checkpoint: evaluate that whole "
        "exported model in OpenVINO (fp32 or INT8 heads, whichever it holds)",
    )
    add_common_args(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parse(build_parser(), argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = dict(args.cfg_options)
    if args.backend:
        options["model.backbone_backend"] = args.backend

    def job() -> None:
        from cmim_dense.engine.runs import test

        _, metrics = test(
            args.config,
            args.checkpoint,
            args.work_dir,
            options,
            args.launcher,
            args.show_dir,
            args.name,
            args.ir,
        )
        headline = {k: v for k, v in metrics.items() if "." not in k}
        print(json.dumps(headline, indent=1, default=float))

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
