"""Write a synthetic NYUD-v2 set in the official file formats, plus object crops.

    python tools/make_synth_nyud.py --out data/synth_nyud_raw --frames 300 --seed 0 --size 240 320
    python tools/prepare_nyud.py --labeled data/synth_nyud_raw/nyu_depth_v2_labeled.mat \\
        --splits data/synth_nyud_raw/splits.mat --mapping data/synth_nyud_raw/classMapping40.mat \\
        --out data/synth_nyud

``--preview PNG`` also saves a few frames as rgb | labels | depth rows.
"""

from __future__ import annotations

import argparse
import sys
import time

from cmim_dense.nyud_io.synth import generate_synth_nyud, save_preview


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--frames", type=int, default=300, help="number of frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--crop-size", type=int, default=64, help="side of the object crops")
    parser.add_argument("--preview", help="also save a preview PNG of the first frames here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.frames < 2 or min(args.size) < 8 or args.crop_size < 1:
        print("error: need --frames >= 2, --size >= 8 8 and --crop-size >= 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    paths = generate_synth_nyud(
        args.out, args.frames, args.seed, tuple(args.size), args.crop_size, not args.quiet
    )
    seconds = time.perf_counter() - start
    print(f"wrote {args.frames} frames to {paths.labeled.parent} in {seconds:.1f} s")
    if args.preview:
        print(f"preview: {save_preview(args.preview, args.seed, size=tuple(args.size))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
