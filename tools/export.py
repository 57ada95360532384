"""Export a model as OpenVINO IR with bit-packed binary convolutions.

``python tools/export.py ARGS`` runs ``cmim-dense export ARGS``
(cmim_dense/cli/export.py).
"""

import sys

from cmim_dense.cli.export import main, parse_args  # noqa: F401  (parse_args for callers)

if __name__ == "__main__":
    sys.exit(main())
