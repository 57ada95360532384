"""The binarizer registry: one small class per method, built per binary conv layer."""

from __future__ import annotations

import importlib
import pkgutil

from mmengine.registry import Registry

from cmim_dense.utils.errors import InputError

BINARIZERS = Registry("binarizer", locations=["cmim_dense.binary"])


def build_binarizer(
    cfg: str | dict, in_channels: int, out_channels: int, kernel_size: tuple[int, int]
):
    """Build the binarizer of one conv layer.

    Args:
        cfg: a registered name (``'irnet'``) or a dict ``dict(type='irnet', **kwargs)``.
        in_channels, out_channels, kernel_size: the layer's shape; methods with
            per-channel parameters size them from it.
    """
    cfg = dict(type=cfg) if isinstance(cfg, str) else dict(cfg)
    name = cfg.get("type")
    if name not in BINARIZERS.module_dict:
        raise InputError(f"unknown binarizer {name!r}; registered: {', '.join(list_binarizers())}")
    # Instantiated directly: the registry is project-local, so building through it under
    # another default scope (mmseg) would only add a scope-switch warning.
    return BINARIZERS.module_dict[cfg.pop("type")](in_channels, out_channels, kernel_size, **cfg)


def discover_binarizers(package: str) -> list[str]:
    """Import every module of ``package`` (not its subpackages), so that their classes register.

    ``cmim_dense.binary`` runs it on itself at import; a project of one's own can run it on
    its package of binarizers. Returns the imported module names.
    """
    root = importlib.import_module(package)
    names = [f"{package}.{info.name}" for info in pkgutil.iter_modules(root.__path__)]
    for name in names:
        importlib.import_module(name)
    return names


def list_binarizers() -> list[str]:
    """Names of all registered binarizers, sorted."""
    return sorted(BINARIZERS.module_dict)
