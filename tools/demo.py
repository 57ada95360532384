"""The one-command demo: synthetic NYUD-format data, CMIM pretraining, frozen-backbone transfer.

``python tools/demo.py ARGS`` runs ``cmim-dense demo ARGS``
(cmim_dense/cli/demo.py).
"""

import sys

from cmim_dense.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
