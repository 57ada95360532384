"""The one-command demo: synthetic NYUD-format data, CMIM pretraining, frozen-backbone transfer.

cmim-dense demo --work-dir work_dirs/demo [--data-dir data/synth_nyud] [--check-targets]

Everything it needs is generated on the fly; see cmim_dense/pipelines/demo.py for the stages.
It ends with a per-stage time table, also written to ``<work dir>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cmim_dense.cli.common import ToolParser, run_tool
from cmim_dense.cli.common import parse_args as parse


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="cmim-dense demo", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="work_dirs/demo", type=Path)
    parser.add_argument("--data-dir", default="data/synth_nyud", type=Path)
    parser.add_argument(
        "--cmim-lambda", type=float, default=None, help="CMIM's lambda (default: 1e-4)"
    )
    parser.add_argument(
        "--check-targets", action="store_true", help="exit 1 if the CMIM run misses the targets"
    )
    return parser


def main(argv=None) -> int:
    args = parse(build_parser(), argv)
    result = {}

    def job() -> None:
        from cmim_dense.pipelines.demo import DemoSettings, run_demo

        chosen = {} if args.cmim_lambda is None else dict(cmim_lambda=args.cmim_lambda)
        settings = DemoSettings(work_dir=args.work_dir, data_dir=args.data_dir, **chosen)
        result["summary"] = run_demo(settings)

    code = run_tool(job)
    if code:
        return code
    from cmim_dense.pipelines.demo import format_summary
    from cmim_dense.utils.io import write_json_atomic

    summary = result["summary"]
    write_json_atomic(args.work_dir / "summary.json", summary)
    print(format_summary(summary))
    print(json.dumps(summary["baselines"]))
    return 1 if args.check_targets and not summary["runs"]["cmim"]["meets_targets"] else 0


if __name__ == "__main__":
    sys.exit(main())
