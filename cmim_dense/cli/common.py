"""The contract every command-line tool follows.

- :func:`run_tool` runs a tool's job, with freed memory kept in the process
  (:func:`~cmim_dense.utils.allocator.retain_freed_memory`: a step's temporaries are not
  page-faulted in again every step): :class:`~cmim_dense.utils.errors.InputError` becomes one
  ``error: ...`` line and exit 2, as does an ``OSError`` of the storage or permissions (a full
  disk, a read-only folder: it names the file); Ctrl-C one line and exit 130; anything else
  is a bug and keeps its traceback.
- :func:`parse_args` parses before anything heavy is imported, then turns ``--cfg-options``
  into a dict with mmengine's own parser.
- :class:`ToolParser` reports a bad argument in one ``error:`` line, exit 2.
- The validators (:func:`int_at_least`, :func:`height_width`) give argparse's one-line usage
  error (exit 2) naming the value and what is accepted.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable, Sequence

from cmim_dense.utils.allocator import retain_freed_memory
from cmim_dense.utils.errors import InputError

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


class ToolParser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: ``error: <what>`` and exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


class _CfgWords(list):
    """The raw ``key=value`` words of a ``--cfg-options``-like option, before parsing."""


class _RawCfgOptions(argparse.Action):
    """Collects ``key=value`` words; :func:`parse_args` parses them with mmengine's
    ``DictAction`` afterwards, so that building the parser imports nothing heavy."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, _CfgWords([*getattr(namespace, self.dest), *values]))


def add_cfg_options(parser: argparse.ArgumentParser, name: str = "--cfg-options") -> None:
    """``--cfg-options key=value ...``: config keys to override (mmengine's syntax)."""
    parser.add_argument(
        name, nargs="+", action=_RawCfgOptions, default=_CfgWords(), metavar="KEY=VALUE",
        help="override config keys (mmengine's syntax: a=1 b.c=x d=[1,2])",
    )  # fmt: skip


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options that ``train`` and ``test`` share."""
    add_cfg_options(parser)
    parser.add_argument("--launcher", default="none", choices=["none", "pytorch", "slurm", "mpi"])
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with every ``--cfg-options``-like option as a dict."""
    args = parser.parse_args(argv)
    for dest, value in vars(args).items():
        if isinstance(value, _CfgWords):
            setattr(args, dest, _parse_cfg_words(value))
    return args


def _parse_cfg_words(words: list[str]) -> dict:
    if not words:
        return {}
    from cmim_dense.engine.config import parse_cfg_options  # imports mmengine

    return parse_cfg_options(words)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def height_width(low: int = 2) -> Callable[[str], int]:
    """An argparse type for one side of ``--size H W``: an integer number of pixels >= ``low``."""
    return int_at_least(low)


# Failures of the machine's storage or permissions, not of the program: one line, exit 2.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
    errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
}  # fmt: skip


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line. An error re-raised from a DataLoader worker carries
    the worker's traceback: its last line is the original ``Type: message``."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def run_tool(job: Callable[[], int | None]) -> int:
    """Run a tool's job and return its exit code (see the module doc)."""
    retain_freed_memory()
    try:
        return job() or 0
    except InputError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = err.filename or "an output file"
        print(f"error: {where}: {err.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return INTERRUPTED
