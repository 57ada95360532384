"""CMIM: contrastive mutual-information maximisation between binary and real activations.

Paper Sec. 3.2 (Eq. 5-14). For every tapped layer k a batch gives A_F (N, D) and A_B (N, D)
from one forward pass; (a_B^i, a_F^j) is a positive pair when i == j, a negative otherwise.
With score s_ij the critic is (Eq. 10)

    h = exp(s) / (exp(s) + N/M),    N = negatives per anchor,  M = number of data,

the layer objective (Eq. 13, maximised) is

    L_NCE = E_pos[log h] + N * E_neg[log(1 - h)]
          = mean_i ( log h(s_ii) + sum_{j negative for i} log(1 - h(s_ij)) ),

and :class:`CMIMLoss` returns -sum_k L_NCE^k / beta^(K-1-k), k = 1..K shallow to deep, exactly the
weights of Eq. 14 as printed: the deepest layer weighs beta, the one before it 1. The paper adds
L_NCE to the classification loss while calling it a bound to maximise; we subtract it, so
minimising the total loss maximises the bound, and lambda means what the paper's Table 3 means.
Everything is evaluated in log space,
log h = s - logaddexp(s, log(N/M)) and log(1 - h) = log(N/M) - logaddexp(s, log(N/M)),
so it stays finite for any activation scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmim_dense.losses.dist_utils import all_reduce_mean, batch_sizes, gather_cat, rank_offset
from cmim_dense.registry import MODELS
from cmim_dense.utils.errors import InputError

CRITICS = ("flip", "embed")
BANKS = ("queue", "momentum")
NEGATIVES = ("instance", "class")


class NCEResult(NamedTuple):
    """Output of :func:`nce_objective`.

    objective: scalar L_NCE of Eq. 13 (to maximise).
    log_h_pos: (n,) log h of every positive pair.
    num_negatives: (n,) number of negatives of every anchor (float).
    """

    objective: Tensor
    log_h_pos: Tensor
    num_negatives: Tensor


def layer_weights(num_layers: int, beta: float) -> list[float]:
    """Eq. 14 weights 1 / beta^(K-1-k), k = 1..K shallow to deep (the deepest weighs beta)."""
    return [beta ** -(num_layers - 1 - k) for k in range(1, num_layers + 1)]


def flip_scores(a_bin: Tensor, a_real: Tensor, tau: float) -> Tensor:
    """Parameter-free critic scores of Eq. 12: s_ij = <a_B^i, a_F^j> / (tau * D).

    Eq. 12 divides by tau alone; the extra 1 / D keeps exp(s) in range at any layer width, and
    is absorbed by tau (tau here is the paper's tau / D). With a_B = sign(a_F) (Eq. 11, which the
    taps keep for every binarizer and for the ``'sample'`` reduction), the positive score is
    ||a_F^i||_1 / (tau * D).

    Args:
        a_bin: (n, D) binary anchors a_B.
        a_real: (m, D) real candidates a_F.

    Returns:
        (n, m) scores.
    """
    return a_bin @ a_real.T / (tau * a_bin.shape[1])


def nce_objective(
    pos: Tensor, neg: Tensor, neg_mask: Tensor | None = None, num_data: int | None = None
) -> NCEResult:
    """L_NCE of Eq. 13 from critic scores, in log space.

    Args:
        pos: (n,) scores of the positive pairs.
        neg: (n, c) scores of candidate negatives.
        neg_mask: (n, c) bool, True where the candidate is a negative of that anchor
            (None: all are).
        num_data: M of Eq. 10; None uses the number of candidates per anchor (N + 1).

    Returns:
        :class:`NCEResult`; N of Eq. 10/13 is each anchor's own negative count.
    """
    if neg_mask is None:
        num_neg = torch.full_like(pos, neg.shape[1])
    else:
        num_neg = neg_mask.sum(1).to(pos.dtype)
    num_cand = num_neg + 1 if num_data is None else torch.full_like(pos, num_data)
    log_ratio = (num_neg.log() - num_cand.log()).unsqueeze(1)  # log(N/M), (n, 1)
    log_h_pos = pos - torch.logaddexp(pos, log_ratio.squeeze(1))
    log_one_minus_h = log_ratio - torch.logaddexp(neg, log_ratio)
    if neg_mask is not None:
        log_one_minus_h = log_one_minus_h.masked_fill(~neg_mask, 0.0)
    objective = log_h_pos.mean() + log_one_minus_h.sum(1).mean()
    return NCEResult(objective, log_h_pos, num_neg)


def mi_lower_bound(log_h_pos: Tensor, num_negatives: Tensor | float) -> Tensor:
    """Eq. 9 estimate I(a_B; a_F) >= E_pos[log h] + log(N - 1), in nats.

    N - 1 of Eq. 9 is the number of negatives per anchor (N there is the batch size), so pass
    that count (a scalar or one per anchor, as :class:`NCEResult` gives it).
    """
    num_negatives = torch.as_tensor(num_negatives, dtype=log_h_pos.dtype, device=log_h_pos.device)
    return (log_h_pos + num_negatives.log()).mean()


def _full(x: Tensor) -> Tensor:
    """Half-precision input as float32; float32/float64 unchanged (gradcheck runs in double)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _Projection(nn.Sequential):
    """Linear-ReLU-Linear then L2 normalisation: (n, in_dim) -> (n, embed_dim) unit rows."""

    def __init__(self, in_dim: int, hidden_dim: int, embed_dim: int):
        super().__init__(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(super().forward(x), dim=1)


def _refresh_log_z_ready(loss: CMIMLoss, incompatible_keys) -> None:
    """After a checkpoint load: a constant counts as measured when the loaded one is not NaN."""
    loss._log_z_ready = [not bool(v) for v in torch.isnan(loss.log_z)]


def _checked_args(
    in_dims: Sequence[int | tuple[int, int]],
    tau: float,
    beta: float,
    critic: str,
    n_nce: int | None,
    bank: str,
    num_data: int | None,
    negatives: str,
) -> tuple[list[tuple[int, int]], int]:
    """:class:`CMIMLoss`'s arguments checked: the (D_F, D_B) pair of each layer and ``n_nce``
    with its per-critic default. Raises InputError on the first bad argument."""
    dims = [(int(d[0]), int(d[1])) if isinstance(d, Sequence) else (int(d),) * 2 for d in in_dims]
    if not dims or min(min(d) for d in dims) < 1:
        raise InputError(f"in_dims must be a non-empty list of positive ints, got {in_dims}")
    if critic not in CRITICS:
        raise InputError(f"critic must be one of {CRITICS}, got {critic!r}")
    if critic == "flip" and any(d_real != d_bin for d_real, d_bin in dims):
        raise InputError(f"the flip critic needs a_F and a_B of one width, got {in_dims}")
    if negatives not in NEGATIVES:
        raise InputError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    if bank not in BANKS:
        raise InputError(f"bank must be one of {BANKS}, got {bank!r}")
    if tau <= 0 or beta <= 0:
        raise InputError(f"tau and beta must be positive, got tau={tau}, beta={beta}")
    n_nce = (16384 if critic == "embed" else 0) if n_nce is None else int(n_nce)
    if n_nce < 0:
        raise InputError(f"n_nce must be >= 0, got {n_nce}")
    if n_nce and bank == "momentum":
        if critic != "embed":
            raise InputError("bank='momentum' needs critic='embed'; use bank='queue' for flip")
        if num_data is None:
            raise InputError("bank='momentum' needs num_data (the dataset size)")
    if num_data is not None and num_data < 1:
        raise InputError(f"num_data must be >= 1, got {num_data}")
    return dims, n_nce


@MODELS.register_module()
class CMIMLoss(nn.Module):
    """Layer-wise CMIM contrastive loss (Eq. 14 without lambda; to minimise).

    Critics:
        ``'flip'``: the paper's parameter-free critic, s_ij = <a_B^i, a_F^j> / (tau * D)
            (Eq. 12 via :func:`flip_scores`; the tap's a_B = sign(a_F) is the anchor).
        ``'embed'``: the "additional MLP module" / CRD-style critic of the public code:
            s_ij = <g_B(a_B^i), g_F(a_F^j)> / tau with per-layer Linear-ReLU-Linear
            projections to ``embed_dim`` and L2 normalisation.

    Negatives: every other sample of the (all-rank) batch, plus ``n_nce`` detached rows of a
    memory bank when ``n_nce > 0``. The in-batch negatives are always kept: they are the only
    negatives that carry gradient into a_F (the "flip" push of the paper), and they make the
    loss defined on the first step while the bank is empty. With ``negatives='instance'`` (the
    paper) a candidate is a negative of an anchor iff its dataset index differs, so the positive
    (and any duplicate of the same image) is never its own negative; with ``'class'`` (the
    public CMIM code's sampling) only candidates of another class are negatives, which needs
    the labels. Bank rows are the critic's real-side keys: raw a_F rows for
    ``'flip'`` (n_nce x D floats per layer, hence in-batch by default) and g_F(a_F) for
    ``'embed'``.

    Banks (``n_nce > 0``; registered buffers, so they live in checkpoints):
        ``'queue'`` (default): a FIFO of the last ``n_nce`` keys and their dataset indices, as
            MoCo. Memory is n_nce x key_dim per layer whatever the dataset size: 4 layers x
            16384 x 128 floats = 32 MiB at ImageNet scale, and negatives are at most
            n_nce / batch steps old.
        ``'momentum'``: the CRD memory indexed by dataset index (``num_data`` rows, momentum
            0.5): row i <- normalise(m * row_i + (1 - m) * key_i); ``n_nce`` rows are drawn per
            step with one ``randint`` shared by the batch. It costs num_data x embed_dim per
            layer (2.5 GiB for 4 layers on ImageNet) and its rows can be an epoch old, which is
            why the queue is the default. ``'embed'`` critic only (raw a_F rows do not
            average meaningfully).
        Rows never written are skipped (index -1) instead of CRD's random initialisation.

    M (``num_data``): the dataset size when given (the paper's "number of data"); otherwise
    each anchor's number of candidates (negatives + 1), which makes N/M ~ 1 for in-batch use.

    ``z_norm``: CRD divides exp(s) by a constant Z = M * mean(exp(s)) measured on the first
    batch (kept in the ``log_z`` buffer). Without it the Eq. 13 sum over N negatives grows
    linearly with N (about N * log(1 + M/N) at init); with it every score is shifted by -log Z
    and L_NCE stays O(1) for any n_nce. Off by default to follow Eq. 10 literally.

    DDP: negatives and bank updates use the samples of every rank; gradients flow only into the
    local rows (see :mod:`cmim_dense.losses.dist_utils`). Every rank applies the same bank
    update, so banks stay identical without ``broadcast_buffers``.

    Args:
        in_dims: D of each tapped layer, shallow to deep; a pair (D_F, D_B) where a_F and a_B
            differ in width (``'embed'`` only, e.g. a float teacher's feature against the BNN's).
        tau: temperature.
        beta: Eq. 14 layer decay (> 1 weights deep layers more); 2.0 halves the weight per
            step towards the input, so the deepest of 4 layers gets 8x the shallowest.
        critic: ``'flip'`` or ``'embed'``.
        n_nce: bank negatives per step; None gives 16384 for ``'embed'`` (the paper's ImageNet
            value) and 0 (in-batch only) for ``'flip'``.
        embed_dim: projection output size (``'embed'``).
        hidden_dim: projection hidden size (``'embed'``). The first Linear (D x hidden, D up
            to 512 * 4^2 = 8192 with 4x4 taps) dominates the critic's cost; 128 keeps the
            embed critic near 10% of a binary ResNet-18 step at 32x32 on CPU, 512 took ~60%.
        bank: ``'queue'`` or ``'momentum'``.
        num_data: M, the dataset size; required for ``bank='momentum'``.
        momentum: CRD memory momentum.
        z_norm: apply CRD's constant normalisation (see above).
        negatives: ``'instance'`` or ``'class'`` (see above).

    Attributes after each forward (detached, one per layer, shallow to deep):
        last_layer_terms: L_NCE^k (Eq. 13, maximised).
        last_mi_bounds: Eq. 9 estimates E_pos[log h] + log(negatives per anchor) in nats (the
            paper's log(N - 1), N the batch size).
    """

    nonfinite_buffers = ("log_z",)  # NaN marks a layer whose constant is not measured yet

    def __init__(
        self,
        in_dims: Sequence[int | tuple[int, int]],
        tau: float = 0.1,
        beta: float = 2.0,
        critic: str = "flip",
        n_nce: int | None = None,
        embed_dim: int = 128,
        hidden_dim: int = 128,
        bank: str = "queue",
        num_data: int | None = None,
        momentum: float = 0.5,
        z_norm: bool = False,
        negatives: str = "instance",
    ):
        super().__init__()
        dims, n_nce = _checked_args(in_dims, tau, beta, critic, n_nce, bank, num_data, negatives)
        self.dims = dims
        self.tau = float(tau)
        self.beta = float(beta)
        self.critic = critic
        self.n_nce = n_nce
        self.bank = bank
        self.num_data = num_data
        self.momentum = float(momentum)
        self.z_norm = z_norm
        self.negatives = negatives
        self.weights = layer_weights(len(dims), self.beta)
        self.last_layer_terms: list[Tensor] = []
        self.last_mi_bounds: list[Tensor] = []

        if critic == "embed":
            self.embed_B = nn.ModuleList(_Projection(d, hidden_dim, embed_dim) for _, d in dims)
            self.embed_F = nn.ModuleList(_Projection(d, hidden_dim, embed_dim) for d, _ in dims)
        if n_nce:
            self._register_banks(embed_dim)
        if z_norm:
            self.register_buffer("log_z", torch.full((len(dims),), float("nan")))
            # Which constants are measured, kept on the host: no device read per step.
            self._log_z_ready: list[bool] = [False] * len(dims)
            self.register_load_state_dict_post_hook(_refresh_log_z_ready)

    def _register_banks(self, embed_dim: int) -> None:
        """Empty banks per layer: keys (rows, key_dim), dataset indices and, for class
        negatives, labels (rows,) at -1; rows = n_nce for the queue (plus its write pointer),
        num_data for the momentum memory."""
        rows = self.n_nce if self.bank == "queue" else self.num_data
        for k, (d, _) in enumerate(self.dims):
            key_dim = embed_dim if self.critic == "embed" else d
            self.register_buffer(f"bank_{k}", torch.zeros(rows, key_dim))
            self.register_buffer(f"bank_index_{k}", torch.full((rows,), -1, dtype=torch.long))
            if self.negatives == "class":
                self.register_buffer(f"bank_label_{k}", torch.full((rows,), -1, dtype=torch.long))
        if self.bank == "queue":
            self.register_buffer("bank_ptr", torch.zeros((), dtype=torch.long))

    @property
    def num_layers(self) -> int:
        return len(self.dims)

    def extra_repr(self) -> str:
        return (
            f"dims={self.dims}, tau={self.tau}, beta={self.beta}, critic={self.critic!r}, "
            f"n_nce={self.n_nce}, bank={self.bank!r}, num_data={self.num_data}, "
            f"z_norm={self.z_norm}, negatives={self.negatives!r}"
        )

    def forward(
        self,
        pairs: Sequence[tuple[Tensor, Tensor]],
        indices: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """CMIM loss to minimise.

        Args:
            pairs: K pairs (a_F, a_B), each (n, D_k), shallow to deep (ActivationTaps.pop()).
            indices: (n,) dataset indices of the samples; required when ``n_nce > 0``.
            labels: (n,) class labels; required when ``negatives='class'``.

        Returns:
            Scalar -sum_k L_NCE^k / beta^(K-1-k), k = 1..K.
        """
        n = self._check(pairs, indices, labels)
        device = pairs[0][0].device
        sizes = batch_sizes(n, device)
        rows = torch.arange(n, device=device)
        pos_cols = rank_offset(sizes) + rows
        # A candidate is a negative of an anchor iff its key (dataset index or class) differs.
        local_key = all_key = all_idx = all_lab = None
        if indices is not None:
            all_idx = gather_cat(indices.to(device=device, dtype=torch.long), sizes)
        if labels is not None:
            all_lab = gather_cat(labels.to(device=device, dtype=torch.long), sizes)
        if self.negatives == "class":
            local_key, all_key = labels.to(device=device, dtype=torch.long), all_lab
        elif indices is not None:
            local_key, all_key = indices.to(device=device, dtype=torch.long), all_idx
        if all_key is not None:
            batch_mask = all_key.unsqueeze(0) != local_key.unsqueeze(1)
        else:
            batch_mask = torch.ones(n, sum(sizes), dtype=torch.bool, device=device)
            batch_mask[rows, pos_cols] = False
        sample = None
        if self.n_nce and self.bank == "momentum":
            sample = torch.randint(self.num_data, (self.n_nce,), device=device)

        total = 0.0
        terms, bounds, keys_all = [], [], []
        # Contrastive scores need fp32: exp and sums over D overflow in half precision.
        with torch.autocast(device.type, enabled=False):
            for k, (a_F, a_B) in enumerate(pairs):
                anchors, keys = self._critic_inputs(k, _full(a_F), _full(a_B))
                keys = gather_cat(keys, sizes)
                scores = self._scores(anchors, keys)
                pos, neg, neg_mask = scores[rows, pos_cols], scores, batch_mask
                if self.n_nce:
                    bank_keys, bank_key_ids = self._bank_rows(k, sample)
                    bank_mask = (bank_key_ids.unsqueeze(0) >= 0) & (
                        bank_key_ids.unsqueeze(0) != local_key.unsqueeze(1)
                    )
                    neg = torch.cat([neg, self._scores(anchors, bank_keys.to(anchors.dtype))], 1)
                    neg_mask = torch.cat([neg_mask, bank_mask], 1)
                if self.z_norm:
                    shift = self._log_z(k, pos, neg, neg_mask)
                    pos, neg = pos - shift, neg - shift
                result = nce_objective(pos, neg, neg_mask, self.num_data)
                total = total - self.weights[k] * result.objective
                terms.append(result.objective.detach())
                bounds.append(mi_lower_bound(result.log_h_pos.detach(), result.num_negatives))
                keys_all.append(keys.detach())
        if self.n_nce and self.training:
            self._update_banks(keys_all, all_idx, all_lab)
        self.last_layer_terms, self.last_mi_bounds = terms, bounds
        return total

    def _check(
        self,
        pairs: Sequence[tuple[Tensor, Tensor]],
        indices: Tensor | None,
        labels: Tensor | None,
    ) -> int:
        if len(pairs) != self.num_layers:
            raise InputError(
                f"CMIMLoss expects {self.num_layers} (a_F, a_B) pairs, got {len(pairs)}"
            )
        n = pairs[0][0].shape[0]
        for k, ((a_F, a_B), (d_real, d_bin)) in enumerate(zip(pairs, self.dims)):
            if a_F.shape != (n, d_real) or a_B.shape != (n, d_bin):
                raise InputError(
                    f"layer {k}: expected a_F of shape ({n}, {d_real}) and a_B of shape "
                    f"({n}, {d_bin}), got {tuple(a_F.shape)} and {tuple(a_B.shape)}"
                )
        if indices is None and self.n_nce:
            raise InputError("CMIMLoss with a memory bank (n_nce > 0) needs dataset indices")
        if labels is None and self.negatives == "class":
            raise InputError("CMIMLoss with negatives='class' needs the labels")
        for name, value in (("indices", indices), ("labels", labels)):
            if value is not None and value.shape != (n,):
                raise InputError(f"{name} must have shape ({n},), got {tuple(value.shape)}")
        return n

    def _critic_inputs(self, k: int, a_real: Tensor, a_bin: Tensor) -> tuple[Tensor, Tensor]:
        """(anchors (n, E), real-side keys (n, E)) of layer k."""
        if self.critic == "embed":
            return self.embed_B[k](a_bin), self.embed_F[k](a_real)
        return a_bin, a_real

    def _scores(self, anchors: Tensor, keys: Tensor) -> Tensor:
        """Critic scores (n, m) of anchors (n, E) against keys (m, E)."""
        if self.critic == "embed":
            return anchors @ keys.T / self.tau
        return flip_scores(anchors, keys, self.tau)

    def _bank_rows(self, k: int, sample: Tensor | None) -> tuple[Tensor, Tensor]:
        """Bank negatives of layer k: keys (q, E) and their dataset indices (q,), or their labels
        with ``negatives='class'``; -1 = empty."""
        keys = getattr(self, f"bank_{k}")
        index = getattr(self, f"bank_{'label' if self.negatives == 'class' else 'index'}_{k}")
        if sample is None:
            # A copy, as MoCo: the in-place enqueue below must not touch tensors saved for backward.
            return keys.clone(), index.clone()
        return keys[sample], index[sample]

    def _log_z(self, k: int, pos: Tensor, neg: Tensor, neg_mask: Tensor) -> Tensor:
        """CRD's log Z = log(M * mean exp(s)) of layer k, measured once on the first batch."""
        if not self._log_z_ready[k]:
            with torch.no_grad():
                valid = torch.cat([pos.unsqueeze(1), neg.masked_fill(~neg_mask, -math.inf)], 1)
                count = pos.numel() + neg_mask.sum().to(pos.dtype)
                num_data = self.num_data or neg_mask.sum(1).to(pos.dtype).mean() + 1
                log_z = valid.logsumexp((0, 1)) - count.log() + math.log(num_data)
                self.log_z[k] = all_reduce_mean(log_z)
            self._log_z_ready[k] = True
        return self.log_z[k]

    @torch.no_grad()
    def _update_banks(
        self, keys_all: list[Tensor], all_idx: Tensor, all_lab: Tensor | None
    ) -> None:
        """Write this step's real-side keys (all ranks) into every layer's bank."""
        if self.bank == "queue":
            keep = slice(-self.n_nce, None)
            slots = (
                self.bank_ptr + torch.arange(all_idx[keep].numel(), device=all_idx.device)
            ) % self.n_nce
            self._write_bank(keys_all, slots, all_idx[keep], all_lab, keep)
            self.bank_ptr.copy_((self.bank_ptr + slots.numel()) % self.n_nce)
            return
        mixed_keys = []
        for k, keys in enumerate(keys_all):
            bank, index = getattr(self, f"bank_{k}"), getattr(self, f"bank_index_{k}")
            filled = (index[all_idx] >= 0).unsqueeze(1)
            mixed = self.momentum * bank[all_idx] + (1 - self.momentum) * keys.to(bank.dtype)
            mixed_keys.append(F.normalize(torch.where(filled, mixed, keys.to(bank.dtype)), dim=1))
        self._write_bank(mixed_keys, all_idx, all_idx, all_lab, slice(None))

    def _write_bank(
        self, keys_all: list[Tensor], slots: Tensor, idx: Tensor, all_lab: Tensor | None, keep
    ) -> None:
        """bank_k[slots] = keys[keep], with the matching dataset indices (and labels)."""
        for k, keys in enumerate(keys_all):
            bank = getattr(self, f"bank_{k}")
            bank[slots] = keys[keep].to(bank.dtype)
            getattr(self, f"bank_index_{k}")[slots] = idx
            if self.negatives == "class":
                getattr(self, f"bank_label_{k}")[slots] = all_lab[keep]
