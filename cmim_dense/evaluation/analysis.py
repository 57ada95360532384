"""What the analysis of the CMIM paper (Shang et al., ECCV 2022, Sec. 4, Fig. 3 and 4) measures.

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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from cmim_dense.binary import ActivationTaps, BinaryConv2d
from cmim_dense.losses.cmim import CMIMLoss
from cmim_dense.utils.errors import InputError
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
