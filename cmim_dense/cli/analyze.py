"""Analysis figures of the CMIM paper (Fig. 3 and 4): t-SNE, class-sorted similarity, per layer.

cmim-dense analyze CONFIG CKPT [CKPT ...] --out DIR [--names NAME ...] [--num-images N]
                   [--classes K] [--batch-size B] [--cfg-options key=value ...]

On CONFIG's test split (the classification test_dataloader of a pretraining config) writes to
DIR: tsne.png (t-SNE of the last stage's binary activations), similarity.png (cosine
similarities of the test images sorted by class), layers.png (per tapped layer: Eq. 9 MI lower
bound, fraction of +1 and, between consecutive checkpoints of one run, the sign-flip rate) and
analysis.json (every number plotted). See cmim_dense/evaluation/analysis.py.

Bad input (a missing config, an unreadable or mismatched checkpoint, fewer than 2 classes in
the chosen images, a --names count that does not match) prints one ``error: ...`` line, writes
nothing and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from cmim_dense.cli.common import (
    ToolParser,
    add_cfg_options,
    int_at_least,
    run_tool,
)
from cmim_dense.cli.common import (
    parse_args as parse,
)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="cmim-dense analyze", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="pretraining config file")
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--names", nargs="+", help="one name per checkpoint (default: file names)")
    parser.add_argument(
        "--num-images", type=int_at_least(2), default=512, help="test images (default 512)"
    )
    parser.add_argument(
        "--classes", type=int_at_least(2), default=10, help="classes shown (default 10)"
    )
    parser.add_argument(
        "--batch-size",
        type=int_at_least(4),
        help="images per forward and per Eq. 9 estimate (default: analysis.BATCH_SIZE, 64)",
    )
    add_cfg_options(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parse(build_parser(), argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job() -> None:
        from cmim_dense.engine.analysis import analyze
        from cmim_dense.evaluation.analysis import BATCH_SIZE

        analyze(
            args.config,
            args.checkpoints,
            args.out,
            names=args.names,
            num_images=args.num_images,
            classes=args.classes,
            cfg_options=args.cfg_options,
            batch_size=args.batch_size or BATCH_SIZE,
        )
        print(args.out)

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
