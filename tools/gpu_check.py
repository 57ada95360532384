"""Five-minute GPU check of the real configs: AMP, channels_last, NCCL, throughput, memory.

``python tools/gpu_check.py ARGS`` runs ``cmim-dense gpu_check ARGS``
(cmim_dense/cli/gpu_check.py).
"""

import sys

from cmim_dense.cli.gpu_check import main, parse_args  # noqa: F401  (parse_args for callers)

if __name__ == "__main__":
    sys.exit(main())
