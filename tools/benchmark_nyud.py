"""Speed and peak memory of the NYUD-v2 conversion, on a generated file of the official format.

``python tools/benchmark_nyud.py ARGS`` runs ``cmim-dense benchmark_nyud ARGS``
(cmim_dense/cli/benchmark_nyud.py).
"""

import sys

from cmim_dense.cli.benchmark_nyud import main

if __name__ == "__main__":
    sys.exit(main())
