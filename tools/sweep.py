"""Run a grid of settings x seeds and aggregate them: sweep.json, sweep.md, sweep.png.

``python tools/sweep.py ARGS`` runs ``cmim-dense sweep ARGS``
(cmim_dense/cli/sweep.py).
"""

import sys

from cmim_dense.cli.sweep import main, parse_args  # noqa: F401  (parse_args for callers)

if __name__ == "__main__":
    sys.exit(main())
