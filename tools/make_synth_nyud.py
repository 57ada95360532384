"""Write a synthetic NYUD-v2 set in the official file formats, plus object crops.

``python tools/make_synth_nyud.py ARGS`` runs ``cmim-dense make_synth_nyud ARGS``
(cmim_dense/cli/make_synth_nyud.py).
"""

import sys

from cmim_dense.cli.make_synth_nyud import main, parse_args  # noqa: F401  (parse_args for callers)

if __name__ == "__main__":
    sys.exit(main())
