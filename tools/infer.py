"""Segmentation and depth of images, folders and videos with a trained dense model.

``python tools/infer.py ARGS`` runs ``cmim-dense infer ARGS``
(cmim_dense/cli/infer.py).
"""

import sys

from cmim_dense.cli.infer import main, parse_args  # noqa: F401  (parse_args for callers)

if __name__ == "__main__":
    sys.exit(main())
