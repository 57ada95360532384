"""One launch per work dir: an exclusive lock, and the clean-up of what killed runs left.

Two trainings in one work dir would write the same checkpoints, logs and ``metrics.json``;
whichever finishes last wins and the other's results are lost without a word. A launch
therefore takes an exclusive ``fcntl.flock`` on ``<work_dir>/.lock`` (rank 0 only: the other
ranks of a distributed launch share rank 0's work dir) and holds it until the process ends.
The lock is re-entrant within the process, so a chain that trains and then tests in one
process takes it twice. The kernel drops it when the process dies, even from SIGKILL, so a
crashed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import remove_dead_partials

LOCK_FILE = ".lock"

# Work dirs locked by this process: resolved path -> the open lock file (kept open: the lock
# lives as long as the file descriptor).
_held: dict[Path, int] = {}


class WorkDirBusyError(InputError):
    """Another running launch holds the work dir."""


def _launch_rank() -> int:
    """This process's rank in its launch, from the launchers' environment (0 when alone)."""
    for name in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def prepare_work_dir(work_dir: str | os.PathLike) -> Path:
    """Create ``work_dir``, lock it for this launch and remove the staged outputs of runs that
    died (``.partial-<pid>-*``, logged). Ranks other than 0 only check the folder.

    Raises:
        InputError: the work dir is a file or cannot be created.
        WorkDirBusyError: another process holds it (the message names its pid).
    """
    path = Path(work_dir)
    if path.exists() and not path.is_dir():
        raise InputError(f"work dir {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create work dir {path} ({err.strerror or err})") from err
    if _launch_rank() != 0:
        return path
    key = path.resolve()
    if key in _held:
        return path
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise InputError(f"cannot write in work dir {path} ({err.strerror or err})") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise WorkDirBusyError(
            f"work dir {path} is in use by another run (pid {holder}); wait for it to end or "
            "choose another --work-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd
    for removed in remove_dead_partials(path):
        # Not through a logger: the run's logger does not exist yet, and an earlier one of
        # the process may write to a stream that is gone.
        print(f"removed {removed}: staged output of a run that ended", file=sys.stderr)
    return path
