"""The analysis of checkpoints from a config (``cmim-dense analyze``): the paper's Fig. 3 and 4.

Builds the config's backbone and test set through the one config -> model path, measures every
checkpoint with :mod:`cmim_dense.evaluation.analysis` and draws the figures of
:mod:`cmim_dense.evaluation.analysis_figures`. See the former for what is measured.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from cmim_dense.binary import BinaryConv2d
from cmim_dense.engine.config import build_model, load_config
from cmim_dense.evaluation.analysis import (
    BATCH_SIZE,
    FILES,
    MI_TAP_SIZE,
    MI_TAU,
    SEED,
    batch_slices,
    checkpoint_names,
    collect_activations,
    cosine_similarity,
    dataset_labels,
    flip_rate,
    load_images,
    select_images,
    tsne_embedding,
)
from cmim_dense.evaluation.analysis_figures import layers_figure, similarity_figure, tsne_figure
from cmim_dense.registry import DATASETS
from cmim_dense.utils.checkpoint import check_state_dict, load_state_dict_strict, read_state_dict
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import save_figure_atomic, write_json_atomic


def _build_backbone(cfg) -> tuple[nn.Module, list[BinaryConv2d], str]:
    """The config's model's backbone (eval mode), its stage taps and a name for messages."""

    model = build_model(cfg)
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "tap_layers"):
        raise InputError(f"the config's model ({type(model).__name__}) has no binary backbone")
    return backbone.eval(), backbone.tap_layers("stage"), f"{type(backbone).__name__} backbone"


def _test_dataset(cfg):

    loader = cfg.get("test_dataloader")
    if not isinstance(loader, dict) or not isinstance(loader.get("dataset"), dict):
        raise InputError("the config has no test_dataloader.dataset")
    return DATASETS.build(loader["dataset"])


def _chosen_images(dataset, num_images: int, classes: int) -> tuple[np.ndarray, np.ndarray, list]:
    """(indices, labels, class names) of the class-balanced test images analysed.

    Raises:
        InputError: they span fewer than 2 classes.
    """
    all_labels = np.asarray(dataset_labels(dataset), dtype=np.int64)
    indices = select_images(all_labels, num_images, classes)
    labels = all_labels[indices]
    if len(np.unique(labels)) < 2:
        raise InputError(
            f"the chosen test images span {len(np.unique(labels))} class(es); need at least 2"
        )
    class_names = list(getattr(dataset, "classes", None) or range(int(all_labels.max()) + 1))
    return indices, labels, [str(c) for c in class_names]


def _layer_names(backbone: nn.Module, layers: Sequence[nn.Module]) -> list[str]:
    names = {id(m): n for n, m in backbone.named_modules()}
    return [names[id(layer)] for layer in layers]


def analyze(
    config: str,
    checkpoints: Sequence[str],
    out_dir: str | os.PathLike,
    names: Sequence[str] | None = None,
    num_images: int = 512,
    classes: int = 10,
    cfg_options: dict | None = None,
    batch_size: int = BATCH_SIZE,
) -> dict:
    """Write ``tsne.png``, ``similarity.png``, ``layers.png`` and ``analysis.json`` to
    ``out_dir`` and return the ``analysis.json`` record.

    Everything is computed and drawn before the first file is written, so bad input (a
    missing config, an unreadable or mismatched checkpoint, fewer than 2 classes among the
    chosen images, a ``names`` count that does not match) raises :class:`InputError` and
    leaves ``out_dir`` as it was.

    Memory: the chosen images stay loaded (N x 3 x H x W floats, 300 MiB for 512 images at
    224 x 224) and each checkpoint's signs are kept bit-packed (N * sum_k D_k / 8 bytes, 24 MiB
    for 512 images through a ResNet-18 at 224 x 224). ``analysis.json`` holds every N x N
    similarity matrix (about 5 MiB per checkpoint at N = 512).

    Args:
        config: a pretraining config whose ``test_dataloader`` is a classification set.
        checkpoints: files written by ``tools/train.py``; their ``backbone.*`` tensors are
            loaded strictly. Several checkpoints of one run (one folder) in training order also
            give the sign-flip rates between consecutive ones.
        names: one label per checkpoint (default: file names).
        num_images: N, test images analysed (at most; class-balanced, see
            :func:`select_images`).
        classes: images come from the ``classes`` smallest labels of the test set.
        cfg_options: ``--cfg-options`` overrides.
        batch_size: images per forward, and the N of the Eq. 9 estimate's in-batch negatives.
    """
    if not checkpoints:
        raise InputError("give at least one checkpoint")
    if num_images < 2 or classes < 2:
        raise InputError(f"need >= 2 images and >= 2 classes, got {num_images} and {classes}")
    if batch_size < 4:
        raise InputError(f"batch_size must be >= 4, got {batch_size}")
    names = checkpoint_names(checkpoints, names)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path exists and is not a folder: {out}")
    cfg = load_config(config, cfg_options)
    dataset = _test_dataset(cfg)
    backbone, layers, target = _build_backbone(cfg)
    # Every checkpoint is read and checked before the long work starts.
    states = [read_state_dict(path, prefix="backbone.") for path in checkpoints]
    for path, state in zip(checkpoints, states):
        check_state_dict(backbone.state_dict(), state, str(path), target)
    indices, labels, class_names = _chosen_images(dataset, num_images, classes)
    images = load_images(dataset, indices)

    acts, flips = _measure(backbone, layers, images, batch_size, names, checkpoints, states, target)
    del states
    coords = [tsne_embedding(a.features) for a in acts]
    sims = [cosine_similarity(a.features) for a in acts]
    layer_names = _layer_names(backbone, layers)
    sizes = [s.stop - s.start for s in batch_slices(len(images), batch_size)]
    ceiling = float(np.average(np.log(np.asarray(sizes) - 1.0), weights=sizes))
    runs = [
        dict(name=n, path=str(p), acts=a, tsne=xy, similarity=sim)
        for n, p, a, xy, sim in zip(names, checkpoints, acts, coords, sims)
    ]
    images_record = dict(
        num=len(indices),
        indices=indices,
        labels=labels,
        class_names={int(k): class_names[k] for k in np.unique(labels)},
    )
    record = dict(
        config=str(config),
        split=cfg.test_dataloader.dataset.get("split"),
        images=images_record,
        **_measures_record(runs, layer_names, sizes, ceiling),
        flip_rates=[dict(before=names[i - 1], after=names[i], per_layer=rate) for i, rate in flips],
        files=list(FILES),
    )
    figures = _figures(acts, coords, sims, labels, names, class_names, flips, ceiling, layer_names)
    for file, fig in figures.items():
        save_figure_atomic(fig, out / file, dpi=150)
    write_json_atomic(out / "analysis.json", record)
    return record


def _measure(backbone, layers, images, batch_size, names, checkpoints, states, target):
    """Every checkpoint's activations, and the sign-flip rates (index, per layer) between
    consecutive checkpoints of one folder: a training dynamic only within one run."""
    acts = []
    for name, path, state in zip(names, checkpoints, states):
        load_state_dict_strict(backbone, state, str(path), target)
        acts.append(collect_activations(backbone, layers, images, batch_size, desc=name))
    folders = [Path(c).resolve().parent for c in checkpoints]
    flips = [
        (i, flip_rate(acts[i - 1], acts[i]))
        for i in range(1, len(acts))
        if folders[i] == folders[i - 1]
    ]
    return acts, flips


def _figures(acts, coords, sims, labels, names, class_names, flips, ceiling, layer_names) -> dict:
    """The three figures by file name, from the measured checkpoints."""
    c, h, w = acts[0].feature_shape
    pooled = acts[0].feature_pooled
    feature_note = f"{layer_names[-1]}, {c} x {h} x {w}" + (" avg-pooled" if pooled else "")
    short = [f"S{k + 1}" for k in range(len(layer_names))]
    figures = {
        "tsne.png": tsne_figure(coords, labels, names, class_names, feature_note),
        "similarity.png": similarity_figure(sims, labels, names, class_names),
        "layers.png": layers_figure(
            short,
            names,
            [a.entry_information for a in acts],
            [a.mi_gaps for a in acts],
            [a.plus_fraction for a in acts],
            [(f"{names[i - 1]} -> {names[i]}", rate, i) for i, rate in flips],
            ceiling,
            len(labels),
            [a.distinct_codes for a in acts],
        ),
    }
    return figures


def _measures_record(runs: list[dict], layer_names: list[str], sizes: list, ceiling: float) -> dict:
    """The ``layers``, ``feature``, ``mi_bound`` and ``checkpoints`` parts of analysis.json."""
    first = runs[0]["acts"]
    c, h, w = first.feature_shape
    return dict(
        layers=dict(names=layer_names, dims=first.dims),
        feature=dict(layer=layer_names[-1], shape=[c, h, w], pooled=bool(first.feature_pooled)),
        mi_bound=dict(
            critic="flip",
            tau=MI_TAU,
            tap_size=MI_TAP_SIZE,
            seed=SEED,
            batch_sizes=sizes,
            ceiling_nats=ceiling,
            unit="nats",
        ),
        checkpoints=[
            dict(
                name=run["name"],
                path=run["path"],
                mi_bound_nats=run["acts"].mi_bounds,
                mi_gap_nats=run["acts"].mi_gaps,
                entry_information_bits=run["acts"].entry_information,
                distinct_codes=run["acts"].distinct_codes,
                plus_fraction=run["acts"].plus_fraction,
                tsne=run["tsne"],
                similarity=np.round(run["similarity"], 6),
            )
            for run in runs
        ],
    )
