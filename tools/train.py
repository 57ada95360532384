"""Train any config of the project (pretraining or dense transfer).

``python tools/train.py ARGS`` runs ``cmim-dense train ARGS``
(cmim_dense/cli/train.py).
"""

import sys

from cmim_dense.cli.train import main, parse_args  # noqa: F401  (parse_args for callers)

if __name__ == "__main__":
    sys.exit(main())
