"""Run a grid of settings x seeds and aggregate them: sweep.json, sweep.md, sweep.png.

cmim-dense sweep CONFIG --grid KEY=V1,V2[,...] [--grid ...] --seeds 0 1 2 --work-dir DIR
                 [--cfg-options key=value ...] [--reference KEY=V ...]
cmim-dense sweep --demo --grid model.cmim_lambda=0,0.05 --seeds 0 1 2 --work-dir DIR
                 [--transfer-grid KEY=V1,V2] [--both-grid KEY=V1,V2]
                 [--transfer-options key=value ...] [--data-dir data/synth_nyud]

CONFIG sweeps a pretraining config (top-1). --demo sweeps the demo's pretrain -> transfer chain
(top-1, mIoU, RMSE, -log RMSE) on the demo's data, generated once. --both-grid sets a key in
both stages' configs: a binarizer grid must (--both-grid model.backbone.binarizer=irnet,react),
since the transfer loads the pretrained backbone strictly. --reference model.cmim_lambda=0 pairs
each setting with the one of lambda 0 and the same other values. Finished runs are skipped, so
the same command continues a cut sweep. See cmim_dense/pipelines/sweep.py for the statistics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmim_dense.cli.common import ToolParser, add_cfg_options, run_tool
from cmim_dense.cli.common import parse_args as parse


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="cmim-dense sweep", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="pretraining config (not with --demo)")
    parser.add_argument("--demo", action="store_true", help="sweep the demo's chain")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2")
    parser.add_argument("--transfer-grid", action="append", default=[], metavar="KEY=V1,V2")
    parser.add_argument(
        "--both-grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="keys set in both the pretraining and the transfer config (--demo)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    add_cfg_options(parser)
    add_cfg_options(parser, "--transfer-options")
    parser.add_argument("--reference", action="append", default=[], metavar="KEY=V")
    parser.add_argument("--data-dir", type=Path, default=Path("data/synth_nyud"))
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return parse(build_parser(), argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job() -> None:
        from cmim_dense.pipelines.chain import StageTimer
        from cmim_dense.pipelines.demo import DemoSettings, ensure_data
        from cmim_dense.pipelines.sweep import SweepSpec, markdown, parse_grid, run_sweep
        from cmim_dense.utils.errors import InputError

        if args.demo == bool(args.config):
            raise InputError("give either a CONFIG or --demo")
        if (args.transfer_grid or args.both_grid) and not args.demo:
            raise InputError("--transfer-grid and --both-grid need --demo")
        reference = {k: v[0] for k, v in parse_grid(args.reference).items()} or None
        timer = StageTimer()
        demo = DemoSettings(work_dir=args.work_dir, data_dir=args.data_dir)
        spec = SweepSpec(
            grid=parse_grid(args.grid),
            seeds=args.seeds,
            work_dir=args.work_dir,
            config=Path(args.config) if args.config else demo.pretrain_config,
            cfg_options=args.cfg_options,
            reference=reference,
        )
        if args.demo:
            spec.roots = ensure_data(demo, timer)
            spec.transfer_config = demo.transfer_config
            spec.transfer_grid = parse_grid(args.transfer_grid)
            spec.shared_grid = parse_grid(args.both_grid)
            spec.transfer_options = args.transfer_options
        result = run_sweep(spec, timer)
        print(markdown(result))
        print(f"sweep took {sum(s['seconds'] for s in result['stages']):.0f} s of runs")

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
