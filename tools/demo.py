"""The one-command demo: synthetic NYUD-format data, CMIM pretraining, frozen-backbone transfer.

    python tools/demo.py --work-dir work_dirs/demo [--check-targets]

Everything it needs is generated on the fly; see cmim_dense/pipelines/demo.py for the stages.
It ends with a per-stage time table, also written to ``<work dir>/summary.json``.
"""

import argparse
import json
import sys
from pathlib import Path

import cmim_dense  # noqa: F401  (shims and registries)
from cmim_dense.engine.cli import run_tool
from cmim_dense.pipelines.demo import DemoSettings, format_summary, run_demo
from cmim_dense.utils.io import write_json_atomic

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="work_dirs/demo", type=Path)
    parser.add_argument("--data-dir", default="data/synth_nyud", type=Path)
    parser.add_argument(
        "--cmim-lambda", type=float, default=DemoSettings.cmim_lambda, help="CMIM's lambda"
    )
    parser.add_argument(
        "--check-targets", action="store_true", help="exit 1 if the CMIM run misses the targets"
    )
    args = parser.parse_args(argv)
    settings = DemoSettings(
        work_dir=args.work_dir,
        data_dir=args.data_dir,
        cmim_lambda=args.cmim_lambda,
        pretrain_config=CONFIGS / "pretrain_crops.py",
        transfer_config=CONFIGS / "nyud_synth.py",
    )
    result = {}

    def job() -> None:
        result["summary"] = run_demo(settings)

    code = run_tool(job)
    if code:
        return code
    summary = result["summary"]
    write_json_atomic(args.work_dir / "summary.json", summary)
    print(format_summary(summary))
    print(json.dumps(summary["baselines"]))
    return 1 if args.check_targets and not summary["runs"]["cmim"]["meets_targets"] else 0


if __name__ == "__main__":
    sys.exit(main())
