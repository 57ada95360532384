"""What the command-line tools share: common options and one-line input errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mmengine.config import DictAction

from cmim_dense.utils.errors import InputError


def add_cfg_options(parser: argparse.ArgumentParser, name: str = "--cfg-options") -> None:
    """``--cfg-options key=value ...``: config keys to override (mmengine's syntax)."""
    parser.add_argument(name, nargs="+", action=DictAction, default={}, help="override config keys")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options that ``tools/train.py`` and ``tools/test.py`` share."""
    add_cfg_options(parser)
    parser.add_argument("--launcher", default="none", choices=["none", "pytorch", "slurm", "mpi"])
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0)


def run_tool(job: Callable[[], int | None]) -> int:
    """Run a tool's job; the project's input errors become one ``error:`` line and exit 2.

    Anything else is a bug and keeps its traceback.
    """
    try:
        return job() or 0
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
