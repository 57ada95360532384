"""Report evaluated runs: report.md, report.json, fig5.png and qualitative.png.

``python tools/report.py ARGS`` runs ``cmim-dense report ARGS``
(cmim_dense/cli/report.py).
"""

import sys

from cmim_dense.cli.report import main, parse_args  # noqa: F401  (parse_args for callers)

if __name__ == "__main__":
    sys.exit(main())
