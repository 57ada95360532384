"""CMIM as the paper writes it: Eq. 11 for every binarizer, taps that keep it, and a literal
float64 implementation of Eq. 10-14 against CMIMLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _binary_helpers import METHODS, block_of, trained_like

from cmim_dense.binary import ActivationTaps, BinaryConv2d, hard_sign
from cmim_dense.losses.cmim import CMIMLoss
from cmim_dense.models import BinaryImageClassifier, BinaryResNet


def _tapped_pairs(name: str, reduce: str | None, size: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    net = BinaryResNet(base_channels=8, binarizer=METHODS[name], block=block_of(name)).eval()
    trained_like(net, seed=seed + 1)
    taps = ActivationTaps(net.tap_layers("all"), reduce=reduce, size=size)
    taps.begin_step(seed=7, step=seed)
    with taps, torch.no_grad():
        net(torch.randn(3, 3, 40, 40))
        return taps.pop()


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("reduce", [None, "sample"])
def test_eq11_holds_for_every_binarizer(name, reduce):
    """a_B in {-1, +1}, a_B = sgn(a_F) and <a_B, a_F> = ||a_F||_1 for every row, at full
    resolution and for the sampled reduction, with non-trivial thresholds, shifts and sets."""
    pairs = _tapped_pairs(name, reduce)
    assert len(pairs) == 16
    for a_F, a_B in pairs:
        assert a_F.shape == a_B.shape and a_F.dim() == 2
        assert bool(((a_B == 1) | (a_B == -1)).all())
        assert torch.equal(a_B, hard_sign(a_F))
        inner = (a_B.double() * a_F.double()).sum(1)
        torch.testing.assert_close(inner, a_F.double().abs().sum(1), rtol=1e-12, atol=0)


def test_average_pooling_breaks_eq11():
    """Pooled, a_B is a local fraction of +1s, no longer sign(a_F): the positive score falls
    below ||a_F||_1 (why 'sample' is offered)."""
    mixed = 0
    for a_F, a_B in _tapped_pairs("irnet", "avgpool"):
        inside = (a_B.abs() < 1).any(1)  # rows with a window of mixed signs
        mixed += int(inside.sum())
        inner, l1 = (a_B * a_F).sum(1), a_F.abs().sum(1)
        assert bool((inner[inside] < l1[inside]).all())
        assert bool((inner <= l1 + 1e-5).all())
    assert mixed > 0


def test_sampled_positions_are_shared_fresh_each_step_and_reproducible():
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 5)  # 30 positions, 9 sampled

    def record(seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        taps = ActivationTaps([conv], reduce="sample", size=3)
        taps.begin_step(seed, step)
        with taps, torch.no_grad():
            conv(x)
            return taps.pop()[0]

    a_F, a_B = record(5, 0)
    assert a_F.shape == (2, 3 * 9)
    rows = x.flatten(2)  # (N, C, 30): every sampled column is one position, the same for all
    cols = a_F.view(2, 3, 9)
    positions = [int((rows[0, 0] == cols[0, 0, k]).nonzero()[0]) for k in range(9)]
    assert len(set(positions)) == 9  # without replacement
    assert torch.equal(cols, rows[:, :, positions])  # same positions for every sample, channel
    assert torch.equal(a_B, hard_sign(a_F))  # and for a_B
    assert torch.equal(record(5, 0)[0], a_F)  # a function of (seed, step) only
    assert not torch.equal(record(5, 1)[0], a_F)  # fresh every step
    small = ActivationTaps([conv], reduce="sample", size=8)  # 64 > 30: with replacement
    with small, torch.no_grad():
        conv(x)
        assert small.pop()[0][0].shape == (2, 3 * 64)


def test_classifier_steps_the_sampled_positions_and_keeps_them_in_checkpoints():
    torch.manual_seed(0)
    arch = dict(type="BinaryResNet", base_channels=8, stem="cifar")
    model = BinaryImageClassifier(arch, num_classes=3, cmim_lambda=1.0, tap_size=2)
    assert model.taps.reduce == "sample" and model.cmim.dims[0] == (8 * 4, 8 * 4)
    x, y, idx = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0]), torch.arange(4)
    model(x, y, idx, mode="loss")
    model(x, y, idx, mode="loss")
    assert int(model.tap_step) == 2 and "tap_step" in model.state_dict()
    model.eval()
    model(x, y, idx, mode="loss")
    assert int(model.tap_step) == 2  # evaluation does not advance the training schedule
    resumed = BinaryImageClassifier(arch, num_classes=3, cmim_lambda=1.0, tap_size=2)
    resumed.load_state_dict(model.state_dict())
    assert (resumed._tap_seed, resumed._tap_step) == (int(model.tap_seed), 2)


def _literal_cmim(pairs, tau: float, beta: float) -> float:
    """Eq. 10-14 with plain floats: s_ij = <a_B^i, a_F^j> / (tau D), h = e^s / (e^s + N/M) with
    N = n - 1 negatives and M = n candidates per anchor, L_NCE^k = mean_i [log h_ii
    + sum_{j != i} log(1 - h_ij)], loss = -sum_{k=1..K} L_NCE^k / beta^(K-1-k)."""
    num_layers = len(pairs)
    total = 0.0
    for k, (a_F, a_B) in enumerate(pairs, start=1):
        rows_F, rows_B = a_F.tolist(), a_B.tolist()
        n, dim = len(rows_F), len(rows_F[0])
        ratio = (n - 1) / n
        objective = 0.0
        for i in range(n):
            for j in range(n):
                s = sum(b * f for b, f in zip(rows_B[i], rows_F[j])) / (tau * dim)
                h = math.exp(s) / (math.exp(s) + ratio)
                objective += math.log(h) if i == j else math.log(1.0 - h)
        total += (objective / n) / beta ** (num_layers - 1 - k)
    return -total


def test_cmim_loss_is_the_literal_eq10_to_14():
    torch.manual_seed(0)
    dims = (6, 10, 4)
    pairs = []
    for d in dims:
        a_F = torch.randn(5, d, dtype=torch.float64)
        pairs.append((a_F, hard_sign(a_F)))
    for beta in (2.0, 1.5):
        loss = CMIMLoss(list(dims), tau=0.5, beta=beta, critic="flip", n_nce=0)
        value = loss(pairs).item()
        assert value == pytest.approx(_literal_cmim(pairs, tau=0.5, beta=beta), rel=1e-12)
    # The deepest of K layers weighs beta, the one before it 1 (k = 1..K as printed).
    assert loss.weights == pytest.approx([1 / 1.5, 1.0, 1.5])


def test_flip_critic_scores_are_the_ones_the_loss_uses():
    """CMIMLoss calls flip_scores: the per-layer terms follow from those scores by Eq. 13."""
    torch.manual_seed(1)
    a_F = torch.randn(4, 8, dtype=torch.float64)
    a_B = hard_sign(a_F)
    loss = CMIMLoss([8], tau=0.3, critic="flip")
    loss([(a_F, a_B)])
    scores = a_B @ a_F.T / (0.3 * 8)
    log_ratio = math.log(3 / 4)
    pos = scores.diagonal() - torch.logaddexp(
        scores.diagonal(), torch.tensor(log_ratio, dtype=torch.float64)
    )
    neg = log_ratio - torch.logaddexp(scores, torch.tensor(log_ratio, dtype=torch.float64))
    neg = neg.masked_fill(torch.eye(4, dtype=torch.bool), 0.0)
    expected = pos.mean() + neg.sum(1).mean()
    assert loss.last_layer_terms[0].item() == pytest.approx(expected.item(), rel=1e-12)


def test_class_negatives_exclude_same_class_candidates():
    """negatives='class' (the public code's sampling): a candidate of the anchor's class is not a
    negative. The mask is the instance mask with labels in place of dataset indices, and a batch
    of one class has no negative at all."""
    torch.manual_seed(2)
    a_F = torch.randn(4, 6, dtype=torch.float64)
    pairs = [(a_F, hard_sign(a_F))]
    labels = torch.tensor([0, 0, 1, 1])
    by_class = CMIMLoss([6], critic="flip", negatives="class")(pairs, labels=labels)
    by_index = CMIMLoss([6], critic="flip")(pairs, indices=labels)
    assert by_class.item() == pytest.approx(by_index.item(), rel=1e-12)
    one_class = CMIMLoss([6], critic="flip", negatives="class")
    one_class(pairs, labels=torch.zeros(4, dtype=torch.long))
    log_h = one_class.last_layer_terms[0].item()  # only the positive term: log h with N = 0
    assert log_h == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="needs the labels"):
        one_class(pairs)


def test_teacher_pairs_need_the_embed_critic_for_two_widths():
    with pytest.raises(ValueError, match="one width"):
        CMIMLoss([(32, 16)], critic="flip")
    loss = CMIMLoss([(32, 16)], critic="embed", n_nce=0)
    value = loss([(torch.randn(3, 32), torch.randn(3, 16))])
    assert torch.isfinite(value)
    assert F.normalize(loss.embed_F[0](torch.randn(2, 32)), dim=1).shape == (2, 128)
