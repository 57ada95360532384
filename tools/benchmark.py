"""Step-time benchmarks on this machine's CPU.

``python tools/benchmark.py ARGS`` runs ``cmim-dense benchmark ARGS``
(cmim_dense/cli/benchmark.py).
"""

import sys

from cmim_dense.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
