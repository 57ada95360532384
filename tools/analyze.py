"""Analysis figures of the CMIM paper (Fig. 3 and 4): t-SNE, class-sorted similarity, per layer.

``python tools/analyze.py ARGS`` runs ``cmim-dense analyze ARGS``
(cmim_dense/cli/analyze.py).
"""

import sys

from cmim_dense.cli.analyze import main, parse_args  # noqa: F401  (parse_args for callers)

if __name__ == "__main__":
    sys.exit(main())
