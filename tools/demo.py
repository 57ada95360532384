"""The one-command demo: synthetic NYUD-format data, CMIM pretraining, frozen-backbone transfer.

    python tools/demo.py --work-dir work_dirs/demo [--check-targets]

Everything it needs is generated on the fly; see cmim_dense/demo.py for the stages.
"""

import argparse
import json
import sys
from pathlib import Path

import cmim_dense  # noqa: F401  (shims and registries)
from cmim_dense.demo import DemoSettings, format_summary, run_demo
from cmim_dense.utils.io import write_json_atomic


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="work_dirs/demo", type=Path)
    parser.add_argument("--data-dir", default="data/synth_nyud", type=Path)
    parser.add_argument("--cmim-lambda", type=float, default=DemoSettings.cmim_lambda)
    parser.add_argument(
        "--check-targets", action="store_true", help="exit 1 if a run misses the targets"
    )
    args = parser.parse_args(argv)
    settings = DemoSettings(
        work_dir=args.work_dir,
        data_dir=args.data_dir,
        cmim_lambda=args.cmim_lambda,
        config_root=Path(__file__).resolve().parents[1],
    )
    try:
        summary = run_demo(settings)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_json_atomic(args.work_dir / "summary.json", summary)
    print(format_summary(summary))
    print(json.dumps(summary["baselines"]))
    missed = [name for name, run in summary["runs"].items() if not run["meets_targets"]]
    return 1 if args.check_targets and missed else 0


if __name__ == "__main__":
    sys.exit(main())
