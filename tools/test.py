"""Evaluate a checkpoint and write ``<work_dir>/metrics.json``.

python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--name NAME]
                     [--cfg-options key=value ...] [--launcher none|pytorch|slurm]
"""

import argparse
import json
import sys

import cmim_dense  # noqa: F401  (shims and registries)
from cmim_dense.engine.launch import add_common_args, test


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="run directory: metrics.json and predictions/ go here")
    parser.add_argument("--show-dir", help="save a picture of every test image's predictions")
    parser.add_argument("--name", help="run name in metrics.json and reports (default: config)")
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        _, metrics = test(
            args.config,
            args.checkpoint,
            args.work_dir,
            args.cfg_options,
            args.launcher,
            args.show_dir,
            args.name,
        )
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    headline = {k: v for k, v in metrics.items() if "." not in k}
    print(json.dumps(headline, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
