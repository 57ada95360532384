"""Evaluate a checkpoint and write ``<work_dir>/metrics.json``.

python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--name NAME]
                     [--backend torch|openvino] [--cfg-options key=value ...]
                     [--launcher none|pytorch|slurm]
"""

import argparse
import json
import sys

import cmim_dense  # noqa: F401  (shims and registries)
from cmim_dense.engine.cli import add_common_args, run_tool
from cmim_dense.engine.runs import test


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="run directory: metrics.json and predictions/ go here")
    parser.add_argument("--show-dir", help="save a picture of every test image's predictions")
    parser.add_argument("--name", help="run name in metrics.json and reports (default: config)")
    parser.add_argument(
        "--backend",
        choices=["torch", "openvino"],
        help="run a dense model's frozen binary backbone in PyTorch or bit-packed in OpenVINO "
        "(default: the config's model.backbone_backend)",
    )
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = dict(args.cfg_options or {})
    if args.backend:
        options["model.backbone_backend"] = args.backend

    def job() -> None:
        _, metrics = test(
            args.config,
            args.checkpoint,
            args.work_dir,
            options,
            args.launcher,
            args.show_dir,
            args.name,
        )
        headline = {k: v for k, v in metrics.items() if "." not in k}
        print(json.dumps(headline, indent=1, default=float))

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
