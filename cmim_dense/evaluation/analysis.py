"""Analysis figures of the CMIM paper (Shang et al., ECCV 2022, Sec. 4): Fig. 3 and Fig. 4.

For one config and one or more checkpoints, on the config's *test* split (the classification
``test_dataloader`` of a pretraining config):

* ``tsne.png`` (Fig. 3): t-SNE of the last stage's binary activations, coloured by class, one
  panel per checkpoint.
* ``similarity.png`` (Fig. 4 a-d): the (N, N) cosine-similarity matrix of those activations
  over the test images sorted by class, one panel per checkpoint, one colour scale.
* ``layers.png``: per tapped layer (the last binary conv of each stage), per checkpoint, the
  information per binary entry (bits), the gap of the Eq. 9 MI lower bound to its ceiling, the
  fraction of +1 activations and, between consecutive checkpoints of one run (files of one
  folder, e.g. epoch_1.pth, epoch_2.pth, ... in training order), the sign-flip rate.
* ``analysis.json``: every number plotted (t-SNE coordinates, labels, matrices, statistics).

What is measured (see :func:`collect_activations`):

* a_F = u is the real tensor each tapped binarizer takes the sign of, a_B = sign(u) in
  {-1, +1} (sign(0) = -1), as :class:`~cmim_dense.binary.ActivationTaps` records them.
* Fraction of +1 and flip rate: over *every* entry of a_B at full resolution (C * H * W per
  image). The flip rate between checkpoints A and B is the fraction of entries, on the same
  test images, where sign_A != sign_B. It is a training dynamic only for checkpoints of one run
  given in training order, so it is measured only between consecutive checkpoints in the same
  folder (a run's work dir); checkpoints of different runs are never compared.
* Information per binary entry (``layers.png`` (a)): a_B^d = sign(a_F^d) is a function of a_F^d,
  so I(a_B^d; a_F^d) = H(a_B^d), the binary entropy of entry d's fraction of +1 over the test
  images (plug-in, bits, at most 1), averaged over the D entries; sum_d H(a_B^d) is an upper
  bound of I(a_B; a_F). Unlike the Eq. 9 bound it is below its ceiling (1 bit) wherever an
  entry is unbalanced, so it shows how checkpoints differ.
* t-SNE and similarity: the last stage's a_B flattened, at full resolution when its map has at
  most ``FEATURE_SIZE``^2 positions (the demo's 32x32 crops give 1x1), otherwise average-pooled
  to ``FEATURE_SIZE`` x ``FEATURE_SIZE`` first (entries are then local fractions of +1 in
  [-1, 1]), which keeps D = C * 16 at ImageNet resolution instead of C * 49.
* MI lower bound (Eq. 9, nats): :class:`~cmim_dense.losses.CMIMLoss` with the parameter-free
  flip critic (Eq. 12, ``tau`` 0.1 as in ``configs/_base_/models/bin_r18_cls.py``, no memory
  bank) on the pairs of the ``'sample'`` tap reduction (``MI_TAP_SIZE``^2 positions per
  channel, drawn from a fixed seed and the batch number, so every checkpoint sees the same
  positions); its ``last_mi_bounds`` E_pos[log h] + log(N - 1) are averaged over the test
  batches, weighted by batch size. With in-batch negatives the bound cannot exceed
  log(N - 1), N the batch size (``analysis.json`` records that ceiling), and h of Eq. 10 sees
  only the positive score ||a_F||_1 / (tau * D) = mean |u| / tau, so the estimate sits close
  to the ceiling (within 1e-5 nats for the demo network, trained or not). No estimate from N
  images can do better: I(a_B; a_F) = H(a_B) since a_B is a function of a_F, and that is log N
  on N images whose codes all differ (``analysis.json`` records the distinct codes per layer),
  above any N-sample contrastive bound's ceiling. It is computed in float64, and ``layers.png``
  (b) draws the gap log(N - 1) - bound = -E_pos[log h] on a log scale, which is where
  checkpoints differ.

Checkpoints are loaded strictly *into the backbone* (their ``backbone.*`` tensors, every key
and shape checked): the analysis reads only the backbone, and so one config serves both a CMIM
checkpoint and its baseline (whose classifier lacks CMIM's ``tap_seed`` / ``tap_step`` buffers).
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor, nn
from torch.utils.data import Dataset

from cmim_dense.binary import ActivationTaps, BinaryConv2d
from cmim_dense.losses.cmim import CMIMLoss
from cmim_dense.utils.errors import InputError
from cmim_dense.utils.io import save_figure_atomic, write_json_atomic
from cmim_dense.utils.progress import progress_bar

FEATURE_SIZE = 4  # t-SNE / similarity: a_B maps larger than 4x4 are average-pooled to 4x4
MI_TAP_SIZE = 4  # Eq. 9 estimate: 4 x 4 sampled positions per channel
MI_TAU = 0.1  # flip-critic temperature of the project's CMIM configs
SEED = 0
PANELS_PER_ROW = 3  # tsne.png / similarity.png wrap after 3 checkpoints
GAP_FLOOR = 1e-15  # layers.png: gaps to the Eq. 9 ceiling below this are drawn at it
BATCH_SIZE = 64
FILES = ("tsne.png", "similarity.png", "layers.png", "analysis.json")
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # bits of a byte


# -- test images ---------------------------------------------------------------------------------
def dataset_labels(dataset: Dataset) -> list[int]:
    """The class label of every sample of a classification dataset, without decoding images
    when the dataset lists them (``samples`` of ImageFolder, ``labels`` of CIFAR)."""
    if hasattr(dataset, "samples"):
        return [int(label) for _, label in dataset.samples]
    for attr in ("labels", "targets"):
        if hasattr(dataset, attr):
            return [int(label) for label in getattr(dataset, attr)]
    items = progress_bar(range(len(dataset)), desc="labels", unit="img")
    return [int(_sample(dataset, i)["label"]) for i in items]


def select_images(labels: Sequence[int], num_images: int, num_classes: int) -> np.ndarray:
    """Deterministic, class-balanced choice of test images, sorted by class.

    Keeps the ``num_classes`` smallest labels present and takes images from them in turn (the
    first image of every class, then the second, ... in dataset order) until ``num_images``.

    Args:
        labels: (M,) label of every dataset sample.

    Returns:
        (N,) int64 dataset indices, N <= num_images, sorted by (label, index).
    """
    labels = np.asarray(labels, dtype=np.int64)
    kept = np.unique(labels)[:num_classes]
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each sample within its class
    candidates = []
    for c in kept:
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
        candidates.append(members)
    candidates = np.concatenate(candidates) if candidates else np.zeros(0, np.int64)
    order = np.lexsort((labels[candidates], rank[candidates]))  # by rank, then class
    chosen = candidates[order[:num_images]]
    return chosen[np.lexsort((chosen, labels[chosen]))]


def _sample(dataset, index: int) -> dict:
    item = dataset[index]
    if not (isinstance(item, dict) and "inputs" in item and "label" in item):
        raise InputError(
            f"{type(dataset).__name__} is not a classification dataset: its samples need "
            "'inputs' and 'label' (see cmim_dense/datasets/classification.py)"
        )
    return item


def load_images(dataset: Dataset, indices: Sequence[int]) -> Tensor:
    """(N, 3, H, W) float: the test-transformed images at ``indices``."""
    images = [_sample(dataset, int(i))["inputs"] for i in progress_bar(indices, "images", "img")]
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) != 1:
        raise InputError(f"test images differ in shape ({sorted(shapes)[:3]}); need one size")
    return torch.stack(images)


def batch_slices(num: int, batch_size: int) -> list[slice]:
    """``num`` items in ceil(num / batch_size) near-equal contiguous batches.

    Near-equal (not full batches and a remainder) so that with ``batch_size >= 4`` and
    ``num >= 2`` every batch has at least 2 images, which Eq. 9's in-batch negatives need.
    """
    if batch_size < 4:
        raise ValueError(f"batch_size must be >= 4, got {batch_size}")
    chunks = np.array_split(np.arange(num), -(-num // batch_size))
    bounds = np.cumsum([0, *(len(c) for c in chunks)])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


# -- activations ---------------------------------------------------------------------------------
class _FanOut:
    """One tap for several :class:`ActivationTaps` (a BinaryConv2d holds a single tap), so one
    forward fills all of them; also keeps each layer's a_B shape (N, C, H, W)."""

    def __init__(self, layers: Sequence[BinaryConv2d], *taps: ActivationTaps):
        self.layers = list(layers)
        self.taps = taps
        self.shapes: dict[int, torch.Size] = {}

    def __call__(self, layer: BinaryConv2d, a_real: Tensor, a_bin: Tensor) -> None:
        self.shapes[id(layer)] = a_bin.shape
        for tap in self.taps:
            tap(layer, a_real, a_bin)

    def __enter__(self) -> _FanOut:
        for layer in self.layers:
            layer.tap = self
        return self

    def __exit__(self, *exc) -> None:
        for layer in self.layers:
            layer.tap = None
        for tap in self.taps:
            tap.detach()


@dataclass
class Activations:
    """What one checkpoint's backbone gives on the test images; K tapped layers.

    signs: K arrays (N, ceil(D_k / 8)) uint8, a_B > 0 of every entry at full resolution
        (D_k = C_k * H_k * W_k), bit-packed along D by ``np.packbits``.
    dims: (K,) D_k.
    mi_bounds: (K,) Eq. 9 lower bound, nats.
    mi_gaps: (K,) how far the bound is below its ceiling log(N - 1), i.e. -E_pos[log h], nats.
    features: (N, D) float32, the last tapped layer's a_B (average-pooled to
        ``FEATURE_SIZE`` x ``FEATURE_SIZE`` when larger), for t-SNE and similarity.
    feature_shape: (C, H, W) of ``features`` before flattening.
    feature_pooled: whether ``features`` were average-pooled (the map was larger).
    """

    signs: list[np.ndarray]
    dims: list[int]
    mi_bounds: np.ndarray
    mi_gaps: np.ndarray
    features: np.ndarray
    feature_shape: tuple[int, int, int]
    feature_pooled: bool

    @property
    def plus_fraction(self) -> np.ndarray:
        """(K,) fraction of +1 entries of a_B, in [0, 1]."""
        n = self.signs[0].shape[0]
        return np.array([_count_bits(s) / (n * d) for s, d in zip(self.signs, self.dims)])

    @property
    def entry_information(self) -> np.ndarray:
        """(K,) mean over the D_k entries of H(a_B^d) = I(a_B^d; a_F^d), bits in [0, 1]: the
        binary entropy of each entry's fraction of +1 over the N images."""
        n = self.signs[0].shape[0]
        out = []
        for packed, dim in zip(self.signs, self.dims):
            ones = np.zeros(dim, np.int64)
            for start in range(0, n, 256):  # unpacked in slices: N x D bytes can be large
                ones += np.unpackbits(packed[start : start + 256], axis=1, count=dim).sum(
                    0, dtype=np.int64
                )
            p = ones / n
            with np.errstate(divide="ignore", invalid="ignore"):
                h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
            out.append(float(np.nan_to_num(h, nan=0.0).mean()))  # 0 log 0 = 0
        return np.array(out)

    @property
    def distinct_codes(self) -> list[int]:
        """(K,) number of different a_B codes among the N images, per layer."""
        return [len(np.unique(packed, axis=0)) for packed in self.signs]


def _count_bits(packed: np.ndarray) -> int:
    """Number of set bits of a uint8 array."""
    return int(_POPCOUNT[packed].sum(dtype=np.int64))


def pooled_feature(a_bin: Tensor, size: int = FEATURE_SIZE) -> Tensor:
    """(N, C, H, W) a_B -> (N, C * h * w): full resolution when H * W <= size^2, otherwise
    average-pooled to size x size (local fractions of +1, in [-1, 1])."""
    if a_bin.shape[-2] * a_bin.shape[-1] > size**2:
        a_bin = F.adaptive_avg_pool2d(a_bin, size)
    return a_bin.flatten(1)


@torch.no_grad()
def collect_activations(
    backbone: nn.Module,
    layers: Sequence[BinaryConv2d],
    images: Tensor,
    batch_size: int = BATCH_SIZE,
    tau: float = MI_TAU,
    seed: int = SEED,
    desc: str = "activations",
) -> Activations:
    """Run ``backbone`` (in eval mode) on ``images`` (N, 3, H, W), tapping ``layers``.

    One forward per batch feeds two taps: full resolution (``reduce=None``) for the signs and
    the last layer's features, and ``reduce='sample'`` (``MI_TAP_SIZE``^2 positions, step =
    batch number, seed ``seed``) for the Eq. 9 estimate of a flip-critic :class:`CMIMLoss`.
    """
    full = ActivationTaps(layers, reduce=None)
    sampled = ActivationTaps(layers, reduce="sample", size=MI_TAP_SIZE)
    critic = CMIMLoss(in_dims=sampled.dims(), tau=tau, critic="flip", n_nce=0).eval()
    backbone.eval()
    signs: list[list[np.ndarray]] = [[] for _ in layers]
    bounds, gaps, weights, features = [], [], [], []
    with _FanOut(layers, full, sampled) as fan:
        batches = progress_bar(batch_slices(len(images), batch_size), desc, "batch")
        for step, rows in enumerate(batches):
            sampled.begin_step(seed, step)
            backbone(images[rows])
            pairs = full.pop()
            for k, (_, a_B) in enumerate(pairs):
                signs[k].append(np.packbits((a_B > 0).cpu().numpy(), axis=1))
            last_shape = fan.shapes[id(layers[-1])]
            feature = pooled_feature(pairs[-1][1].reshape(last_shape))
            features.append(feature.float().cpu().numpy())
            # float64: the bound sits within ~1e-6 nats of its log(N - 1) ceiling, below
            # float32 resolution, and the gap is what tells checkpoints apart.
            critic([(a_F.double(), a_B.double()) for a_F, a_B in sampled.pop()])
            n = rows.stop - rows.start
            bounds.append([float(b) for b in critic.last_mi_bounds])
            gaps.append([math.log(n - 1) - float(b) for b in critic.last_mi_bounds])
            weights.append(n)
    c, h, w = last_shape[1:]
    pooled = h * w > FEATURE_SIZE**2
    if pooled:
        h = w = FEATURE_SIZE
    return Activations(
        signs=[np.concatenate(s) for s in signs],
        dims=[int(np.prod(fan.shapes[id(layer)][1:])) for layer in layers],
        mi_bounds=np.average(np.asarray(bounds), axis=0, weights=weights),
        mi_gaps=np.average(np.asarray(gaps), axis=0, weights=weights),
        features=np.concatenate(features),
        feature_shape=(int(c), int(h), int(w)),
        feature_pooled=bool(pooled),
    )


def flip_rate(before: Activations, after: Activations) -> np.ndarray:
    """(K,) fraction of a_B entries, in [0, 1], whose sign differs between two checkpoints on
    the same images."""
    if before.dims != after.dims or before.signs[0].shape != after.signs[0].shape:
        raise ValueError("flip rates need the same layers and images for both checkpoints")
    n = before.signs[0].shape[0]
    return np.array(
        [
            _count_bits(np.bitwise_xor(a, b)) / (n * d)
            for a, b, d in zip(before.signs, after.signs, before.dims)
        ]
    )


# -- embeddings ----------------------------------------------------------------------------------
def tsne_embedding(features: np.ndarray, seed: int = SEED) -> np.ndarray:
    """(N, D) -> (N, 2) t-SNE coordinates (scikit-learn, PCA initialisation, Euclidean
    distance, which for +-1 vectors orders pairs as the Hamming distance does).

    Perplexity is 30 (scikit-learn's default) or (N - 1) / 3 for few images, since it must
    stay below N.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(features)
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One OpenMP/BLAS thread: a few hundred points take seconds, while threads that wait on
    # each other (torch's next to scikit-learn's, on a busy machine) were 10-70x slower.
    with threadpool_limits(1):
        coords = tsne.fit_transform(np.asarray(features, dtype=np.float32))
    return coords.astype(np.float64)


def cosine_similarity(features: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, N) cosine similarities in [-1, 1], diagonal 1 (for +-1 rows, <x, y> / D).

    A row of zero norm (possible only for pooled features) is 0 against every other row.
    """
    x = torch.from_numpy(np.asarray(features, dtype=np.float64))
    x = F.normalize(x, dim=1)
    sim = (x @ x.T).clamp_(-1.0, 1.0).numpy()
    np.fill_diagonal(sim, 1.0)
    return sim


# -- figures -------------------------------------------------------------------------------------
def class_colours(num: int) -> np.ndarray:
    """(num, 4) RGBA: tab10 / tab20 for up to 10 / 20 classes, else evenly spaced turbo."""
    for limit, name in ((10, "tab10"), (20, "tab20")):
        if num <= limit:
            return matplotlib.colormaps[name](np.arange(num))
    return matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, num))


def _class_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes of class-sorted ``labels`` (C,) and their [start, stop) bounds (C + 1,)."""
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.r_[0, change]
    return labels[starts], np.r_[starts, len(labels)]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _panel_grid(
    num: int, width: float, height: float, extra_width: float = 0.0
) -> tuple[Figure, list]:
    """A figure of ``num`` panels side by side, wrapped after ``PANELS_PER_ROW``; the
    panels' axes in reading order (unused grid cells are hidden)."""
    cols = min(num, PANELS_PER_ROW)
    rows = -(-num // cols)
    fig = _new_figure(width * cols + extra_width, height * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[num:]:
        ax.set_visible(False)
    return fig, list(axes[:num])


def tsne_figure(
    coords: Sequence[np.ndarray],
    labels: np.ndarray,
    names: Sequence[str],
    class_names: Sequence[str],
    feature_note: str,
) -> Figure:
    """Fig. 3: one t-SNE panel per checkpoint, (N, 2) coordinates coloured by class."""
    classes = np.unique(labels)
    colours = class_colours(len(classes))
    colour_of = {c: colours[i] for i, c in enumerate(classes)}
    fig, axes = _panel_grid(len(coords), 3.6, 3.6, extra_width=1.8)
    for ax, xy, name in zip(axes, coords, names):
        for c in classes:
            keep = labels == c
            ax.scatter(*xy[keep].T, s=9, color=colour_of[c], linewidths=0, alpha=0.85)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(f"t-SNE of the last stage's binary activations\n({feature_note})", fontsize=10)
    if len(classes) <= 20:
        handles = [
            Line2D([], [], ls="", marker="o", ms=5, color=colour_of[c], label=class_names[c])
            for c in classes
        ]
        fig.legend(handles=handles, loc="outside right center", fontsize=8, title="class")
    return fig


def similarity_figure(
    matrices: Sequence[np.ndarray], labels: np.ndarray, names: Sequence[str], class_names
) -> Figure:
    """Fig. 4 (a-d): the (N, N) class-sorted cosine similarities, one panel per checkpoint,
    one colour scale, white lines between classes."""
    classes, bounds = _class_runs(labels)
    vmin = min(0.0, float(min(m.min() for m in matrices)))
    fig, axes = _panel_grid(len(matrices), 3.9, 4.0, extra_width=1.0)
    centres = (bounds[:-1] + bounds[1:]) / 2 - 0.5
    tick_labels = [class_names[c] for c in classes] if len(classes) <= 20 else None
    image = None
    for ax, sim, name in zip(axes, matrices, names):
        image = ax.imshow(sim, cmap="viridis", vmin=vmin, vmax=1.0, interpolation="nearest")
        for b in bounds[1:-1]:
            ax.axhline(b - 0.5, color="white", lw=0.7)
            ax.axvline(b - 0.5, color="white", lw=0.7)
        ax.set_title(name, fontsize=10)
        if tick_labels is not None:
            ax.set_xticks(centres, tick_labels, rotation=90, fontsize=7)
            ax.set_yticks(centres, tick_labels, fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.85, label="cosine similarity")
    fig.suptitle(
        f"Cosine similarity of last-stage binary activations\n{len(labels)} test images "
        "sorted by class",
        fontsize=10,
    )
    return fig


def layers_figure(
    layer_labels: Sequence[str],
    names: Sequence[str],
    entry_info: Sequence[np.ndarray],
    mi_gaps: Sequence[np.ndarray],
    plus_fractions: Sequence[np.ndarray],
    flips: Sequence[tuple[str, np.ndarray, int]],
    mi_ceiling: float,
    num_images: int,
    distinct_codes: Sequence[Sequence[int]],
) -> Figure:
    """Per tapped layer (x), one line per checkpoint (each (K,)): (a) the information per
    binary entry, H(a_B^d) = I(a_B^d; a_F^d) in bits, (b) the Eq. 9 bound's gap to its
    log(N - 1) ceiling on a log scale, (c) the fraction of +1 and (d) the sign-flip rate of
    ``flips``: (label, (K,) rates, index of the later checkpoint) between consecutive
    checkpoints of one run. A caption says why the Eq. 9 bound itself is not drawn: with
    ``num_images`` images and ``distinct_codes`` (per checkpoint, (K,)) the whole-vector MI is
    log N, above the ceiling of any N-sample bound."""
    fig = _new_figure(11.5, 7.8)
    axes = fig.subplots(2, 2).ravel()
    x = np.arange(len(layer_labels))
    line_colours = _line_colours(len(names))
    for i, name in enumerate(names):
        style = dict(color=line_colours[i], marker="o", ms=4, label=name)
        axes[0].plot(x, entry_info[i], **style)
        axes[1].plot(x, np.maximum(mi_gaps[i], GAP_FLOOR), **style)
        axes[2].plot(x, plus_fractions[i], **style)
    axes[0].axhline(1.0, color="grey", ls="--", lw=0.8)
    axes[0].set_ylim(top=1.02)
    axes[0].set_ylabel("bits per entry (at most 1)")
    axes[0].set_title("(a) information per binary entry, H(a_B^d) = I(a_B^d; a_F^d)", fontsize=10)
    axes[1].set_yscale("log")
    axes[1].set_ylabel(f"nats (floor {GAP_FLOOR:g})")
    axes[1].set_title("(b) Eq. 9 bound: gap to its log(N-1) ceiling, -E_pos[log h]", fontsize=10)
    axes[2].axhline(0.5, color="grey", ls=":", lw=0.8)
    axes[2].set_ylim(0.0, 1.0)
    axes[2].set_ylabel("fraction")
    axes[2].set_title("(c) fraction of +1 activations", fontsize=10)
    if flips:
        for label, rate, later in flips:  # coloured as the later checkpoint
            axes[3].plot(x, rate, color=line_colours[later], marker="o", ms=4, label=label)
        axes[3].set_ylim(bottom=0.0)
        axes[3].set_ylabel("fraction")
        axes[3].set_title("(d) sign-flip rate, consecutive checkpoints of one run", fontsize=10)
        axes[3].legend(fontsize=7, loc="best")
    else:
        axes[3].set_axis_off()
        axes[3].text(
            0.5,
            0.5,
            "(d) sign flips need 2 or more checkpoints of one run\n"
            "(files of one folder, in training order); runs are not compared",
            ha="center",
            va="center",
            fontsize=9,
        )
    for ax in axes[: 4 if flips else 3]:
        ax.set_xticks(x, layer_labels, fontsize=8)
        ax.set_xlabel("tapped layer: last binary conv of stage", fontsize=8)
        ax.grid(alpha=0.3)
    handles = axes[2].get_lines()[: len(names)]
    fig.legend(handles, names, loc="outside right center", fontsize=8, title="checkpoint")
    fewest = min(min(codes) for codes in distinct_codes)
    fig.supxlabel(  # a caption under the panels, in the space constrained layout keeps for it
        "The Eq. 9 bound is not drawn as a value: a_B = sign(a_F) is a function of a_F, so "
        f"I(a_B; a_F) = H(a_B), which on N = {num_images} images is log N when their codes all "
        f"differ (here at least {fewest} of {num_images} codes differ per layer),\n"
        f"above the log(N-1) = {mi_ceiling:.3f} nats ceiling of any N-sample contrastive bound: "
        "every checkpoint's bound sits at it, and only its gap (b) differs. "
        "(a) is the exact MI per entry, below its 1-bit ceiling where entries are unbalanced.",
        x=0.01,
        ha="left",
        fontsize=7,
    )
    return fig


def _line_colours(num: int) -> list:
    """tab10 for up to 10 lines, else a viridis sequence (e.g. epochs in training order)."""
    if num <= 10:
        return list(matplotlib.colormaps["tab10"].colors[:num])
    return list(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, num)))


# -- the analysis --------------------------------------------------------------------------------
def checkpoint_names(checkpoints: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """Panel and legend names: ``names`` (one per checkpoint, all different), or the file
    stems, with the parent folder where stems repeat (``run_a/epoch_6``), then ``#k``."""
    if names is not None:
        if len(names) != len(checkpoints):
            raise InputError(f"--names gives {len(names)} names for {len(checkpoints)} checkpoints")
        if len(set(names)) != len(names):
            raise InputError(f"--names must all differ, got {list(names)}")
        return list(names)
    paths = [Path(c) for c in checkpoints]
    out = [p.stem for p in paths]
    if len(set(out)) != len(out):
        out = [f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem for p in paths]
    counts = Counter(out)
    seen: Counter[str] = Counter()
    for i, name in enumerate(out):
        seen[name] += 1
        if counts[name] > 1:
            out[i] = f"{name} #{seen[name]}"
    return out


def _build_backbone(cfg) -> tuple[nn.Module, list[BinaryConv2d], str]:
    """The config's model's backbone (eval mode), its stage taps and a name for messages."""
    from cmim_dense.engine.config import build_model

    model = build_model(cfg)
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "tap_layers"):
        raise InputError(f"the config's model ({type(model).__name__}) has no binary backbone")
    return backbone.eval(), backbone.tap_layers("stage"), f"{type(backbone).__name__} backbone"


def _test_dataset(cfg):
    from cmim_dense.registry import DATASETS

    loader = cfg.get("test_dataloader")
    if not isinstance(loader, dict) or not isinstance(loader.get("dataset"), dict):
        raise InputError("the config has no test_dataloader.dataset")
    return DATASETS.build(loader["dataset"])


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
    from cmim_dense.engine.config import load_config
    from cmim_dense.registry import init_scope
    from cmim_dense.utils.checkpoint import (
        check_state_dict,
        load_state_dict_strict,
        read_state_dict,
    )

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
    init_scope()
    cfg = load_config(config, cfg_options)
    dataset = _test_dataset(cfg)
    backbone, layers, target = _build_backbone(cfg)
    # Every checkpoint is read and checked before the long work starts.
    expected = backbone.state_dict()
    states = []
    for path in checkpoints:
        states.append(read_state_dict(path, prefix="backbone."))
        check_state_dict(expected, states[-1], str(path), target)

    all_labels = np.asarray(dataset_labels(dataset), dtype=np.int64)
    indices = select_images(all_labels, num_images, classes)
    labels = all_labels[indices]
    if len(np.unique(labels)) < 2:
        raise InputError(
            f"the chosen test images span {len(np.unique(labels))} class(es); need at least 2"
        )
    class_names = list(getattr(dataset, "classes", None) or range(int(all_labels.max()) + 1))
    class_names = [str(c) for c in class_names]
    images = load_images(dataset, indices)

    acts = []
    for name, path, state in zip(names, checkpoints, states):
        load_state_dict_strict(backbone, state, str(path), target)
        acts.append(collect_activations(backbone, layers, images, batch_size, desc=name))
    del states
    # a training dynamic only within one run: consecutive checkpoints of one folder
    folders = [Path(c).resolve().parent for c in checkpoints]
    flips = [
        (i, flip_rate(acts[i - 1], acts[i]))
        for i in range(1, len(acts))
        if folders[i] == folders[i - 1]
    ]
    coords = [tsne_embedding(a.features) for a in acts]
    sims = [cosine_similarity(a.features) for a in acts]

    layer_names = _layer_names(backbone, layers)
    sizes = [s.stop - s.start for s in batch_slices(len(images), batch_size)]
    ceiling = float(np.average(np.log(np.asarray(sizes) - 1.0), weights=sizes))
    c, h, w = acts[0].feature_shape
    pooled = acts[0].feature_pooled
    feature_note = f"{layer_names[-1]}, {c} x {h} x {w}" + (" avg-pooled" if pooled else "")
    record = dict(
        config=str(config),
        split=cfg.test_dataloader.dataset.get("split"),
        images=dict(
            num=len(indices),
            indices=indices,
            labels=labels,
            class_names={int(k): class_names[k] for k in np.unique(labels)},
        ),
        layers=dict(names=layer_names, dims=acts[0].dims),
        feature=dict(layer=layer_names[-1], shape=[c, h, w], pooled=bool(pooled)),
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
                name=name,
                path=str(path),
                mi_bound_nats=a.mi_bounds,
                mi_gap_nats=a.mi_gaps,
                entry_information_bits=a.entry_information,
                distinct_codes=a.distinct_codes,
                plus_fraction=a.plus_fraction,
                tsne=xy,
                similarity=np.round(sim, 6),
            )
            for name, path, a, xy, sim in zip(names, checkpoints, acts, coords, sims)
        ],
        flip_rates=[dict(before=names[i - 1], after=names[i], per_layer=rate) for i, rate in flips],
        files=list(FILES),
    )
    short = [f"S{k + 1}" for k in range(len(layers))]
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
            len(indices),
            [a.distinct_codes for a in acts],
        ),
    }
    for file, fig in figures.items():
        save_figure_atomic(fig, out / file, dpi=150)
    write_json_atomic(out / "analysis.json", record)
    return record
