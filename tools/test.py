"""Evaluate a checkpoint and write ``<work_dir>/metrics.json``.

``python tools/test.py ARGS`` runs ``cmim-dense test ARGS``
(cmim_dense/cli/test.py).
"""

import sys

from cmim_dense.cli.test import main, parse_args  # noqa: F401  (parse_args for callers)

if __name__ == "__main__":
    sys.exit(main())
