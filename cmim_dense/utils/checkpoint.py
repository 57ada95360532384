"""Reading checkpoints safely and loading them strictly, with one-line errors.

Every checkpoint is read with ``torch.load(weights_only=True)``, passed explicitly so that no
environment setting can turn it off: a file can never run code. A file that is not a readable
checkpoint, whose tensors do not fit the model key by key and shape by shape, or that holds a
NaN or infinite value, raises :class:`CheckpointError` naming the problem.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from cmim_dense.utils.errors import InputError

_SHOWN_KEYS = 5


class CheckpointError(InputError):
    """A checkpoint that cannot be read, or that does not fit the model it is loaded into."""


class NonFiniteWeightError(CheckpointError):
    """A checkpoint holds a NaN or infinite parameter or buffer (a diverged or broken model)."""


# A module lists in this class attribute the buffers that may hold NaN by design, as a marker
# ("not measured yet"): e.g. CMIMLoss's ``log_z``.
NONFINITE_OK = "nonfinite_buffers"


def nonfinite_ok_keys(module: nn.Module) -> set[str]:
    """State-dict keys of ``module`` whose NaN/inf values are markers, not broken weights."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules()
        for name in getattr(type(sub), NONFINITE_OK, ())
    }


def check_finite(state: Mapping[str, Tensor], source: str, allowed: Iterable[str] = ()) -> None:
    """Raise :class:`NonFiniteWeightError` naming the first floating-point tensor of ``state``
    (a state dict: parameters and buffers, binarizers' learnable thresholds and scales included)
    that holds a NaN or an infinity, with its counts; keys in ``allowed`` are skipped."""
    allowed = set(allowed)
    for key, value in state.items():
        if key in allowed or not (value.is_floating_point() or value.is_complex()):
            continue
        finite = torch.isfinite(value)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(value).sum())
        inf = value.numel() - int(finite.sum()) - nan
        raise NonFiniteWeightError(
            f"{source}: {key} holds {nan} NaN and {inf} inf of {value.numel()} values; "
            "the weights are not usable (diverged training or a damaged file)"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def read_state_dict(path: str | os.PathLike, prefix: str | None = None) -> dict[str, Tensor]:
    """The tensors of a local checkpoint: its ``state_dict`` (or the file itself if it is one).

    Args:
        path: a file written by ``torch.save`` (e.g. an mmengine checkpoint).
        prefix: keep only the keys under this prefix (``'backbone.'``), with it removed.

    Raises:
        CheckpointError: the file is missing, unreadable (truncated, not a checkpoint, or a
            pickle that would need code to load), holds no tensors under ``prefix``, or holds
            something other than tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    # Not mmengine's loaders: they call torch.load without weights_only, which
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 would turn into a loader that runs code.
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(err)})") from err
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else ckpt
    if prefix and isinstance(state, Mapping):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{path}: no weights under prefix {prefix!r}")
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: holds no state dict")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {_keys(bad)}")
    return dict(state)


def read_checkpoint_meta(path: str | os.PathLike, part: str = "meta") -> dict:
    """A dict of an mmengine checkpoint: its ``meta`` (``epoch``, ``iter``, ...) or another
    ``part`` (``optimizer``); ``{}`` when absent.

    Memory-maps the file, so the tensors are not read. Raises :class:`CheckpointError` for a
    file that is not a readable checkpoint.
    """
    path = os.fspath(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(err)})") from err
    meta = ckpt.get(part) if isinstance(ckpt, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def _keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return f"[{shown}{', ...' if len(keys) > _SHOWN_KEYS else ''}]"


def check_state_dict(
    expected: Mapping[str, Tensor], given: Mapping[str, Tensor], source: str, target: str
) -> None:
    """Raise :class:`CheckpointError` unless ``given`` has exactly the keys and shapes of
    ``expected``; the message names the missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if expected[k].shape != given[k].shape)
    if not (missing or unexpected or wrong):
        return
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            detail = _keys(keys)
            if what == "wrong shape":
                k = keys[0]
                detail += f" (e.g. {k}: {tuple(given[k].shape)} vs {tuple(expected[k].shape)})"
            parts.append(f"{len(keys)} {what} key(s) {detail}")
    raise CheckpointError(f"{source} does not fit {target}: " + "; ".join(parts))


def load_state_dict_strict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    target: str | None = None,
    ignore: Iterable[str] = (),
) -> None:
    """Check ``state`` against ``module`` with :func:`check_state_dict` and
    :func:`check_finite`, then load it (a refused state leaves ``module`` as it was).

    ``ignore``: key prefixes of ``state`` that are dropped first (e.g. a classifier that a
    headless backbone does not have).
    """
    ignore = tuple(ignore)
    state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    check_state_dict(module.state_dict(), state, source, target or type(module).__name__)
    check_finite(state, source, nonfinite_ok_keys(module))
    with torch.no_grad():
        module.load_state_dict(state, strict=True)
