"""Convert NYUD-v2's labelled .mat file into the image/annotation/depth tree mmseg reads.

``python tools/prepare_nyud.py ARGS`` runs ``cmim-dense prepare_nyud ARGS``
(cmim_dense/cli/prepare_nyud.py).
"""

import sys

from cmim_dense.cli.prepare_nyud import main, parse_args  # noqa: F401  (parse_args for callers)

if __name__ == "__main__":
    sys.exit(main())
