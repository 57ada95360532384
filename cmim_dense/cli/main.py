"""``cmim-dense COMMAND [ARGS ...]``: every tool of the project behind one entry point.

``cmim-dense train ...`` is the same as ``python tools/train.py ...``. Each command's module is
imported only when it runs, so ``cmim-dense --help`` and ``cmim-dense COMMAND --help`` answer
without importing torch or the OpenMMLab stack.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module under cmim_dense.cli, one-line summary)
COMMANDS = {
    "train": ("train", "train any config (pretraining or dense transfer)"),
    "test": ("test", "evaluate a checkpoint: metrics.json, predictions, pictures"),
    "infer": ("infer", "segmentation and depth of your images, folders and videos"),
    "export": ("export", "export as OpenVINO IR with bit-packed binary convolutions"),
    "demo": ("demo", "the one-command demo on generated NYUD-format data"),
    "sweep": ("sweep", "a grid of settings x seeds, with paired differences"),
    "analyze": ("analyze", "the CMIM paper's analysis figures of checkpoints"),
    "report": ("report", "tables and pictures of evaluated runs"),
    "benchmark": ("benchmark", "step-time benchmarks (cmim, transfer, deploy)"),
    "gpu_check": ("gpu_check", "the five-minute check of a GPU"),
    "prepare_nyud": ("prepare_nyud", "convert NYUD-v2's labelled .mat to an mmseg tree"),
    "make_synth_nyud": ("make_synth_nyud", "write synthetic NYUD-v2 files"),
    "benchmark_nyud": ("benchmark_nyud", "speed and memory of the NYUD-v2 conversion"),
}


def usage() -> str:
    """The command list printed by ``cmim-dense --help``."""
    lines = ["usage: cmim-dense COMMAND [ARGS ...]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "cmim-dense COMMAND --help describes one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"cmim_dense.cli.{COMMANDS[name][0]}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
