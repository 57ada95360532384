"""Write a synthetic NYUD-v2 set in the official file formats, plus object crops.

    cmim-dense make_synth_nyud --out data/synth_nyud_raw --frames 300 --seed 0 --size 240 320
    cmim-dense prepare_nyud --labeled data/synth_nyud_raw/nyu_depth_v2_labeled.mat \\
        --splits data/synth_nyud_raw/splits.mat --mapping data/synth_nyud_raw/classMapping40.mat \\
        --out data/synth_nyud

``--preview PNG`` also saves a few frames as rgb | labels | depth rows.
"""

from __future__ import annotations

import argparse
import sys
import time

from cmim_dense.cli.common import ToolParser, int_at_least, run_tool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ToolParser(prog="cmim-dense make_synth_nyud", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--frames", type=int_at_least(2), default=300, help="number of frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--size", type=int_at_least(8), nargs=2, default=(240, 320), metavar=("H", "W")
    )
    parser.add_argument(
        "--crop-size", type=int_at_least(1), default=64, help="side of the object crops"
    )
    parser.add_argument("--preview", help="also save a preview PNG of the first frames here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        from cmim_dense.evaluation.visualize import save_synth_preview
        from cmim_dense.nyud_io.synth import generate_synth_nyud

        start = time.perf_counter()
        paths = generate_synth_nyud(
            args.out, args.frames, args.seed, tuple(args.size), args.crop_size, not args.quiet
        )
        seconds = time.perf_counter() - start
        print(f"wrote {args.frames} frames to {paths.labeled.parent} in {seconds:.1f} s")
        if args.preview:
            preview = save_synth_preview(args.preview, args.seed, size=tuple(args.size))
            print(f"preview: {preview}")

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
