"""CMIM loss (paper Sec. 3.2): critic, Eq. 13/14 values, gradients, banks, DDP."""

import io
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import cmim_dense  # noqa: F401  (shims before mmseg)
from cmim_dense.losses.cmim import (
    CMIMLoss,
    flip_scores,
    layer_weights,
    mi_lower_bound,
    nce_objective,
)
from cmim_dense.registry import MODELS

# Paper's "activation flip" example: a_F^1, a_F^2 and their binary anchors.
A_F = torch.tensor([[0.3, -0.4, -0.6], [0.6, -0.9, 0.7]], dtype=torch.float64)
A_B = torch.sign(A_F)
TAU = 0.1


def _log_h(s: float, ratio: float) -> float:
    return math.log(math.exp(s) / (math.exp(s) + ratio))


def _log_one_minus_h(s: float, ratio: float) -> float:
    return math.log(1 - math.exp(s) / (math.exp(s) + ratio))


def test_worked_example_inner_products():
    raw = flip_scores(A_B, A_F, TAU) * TAU * 3  # undo the 1 / (tau * D) scaling
    assert raw[0, 0].item() == pytest.approx(0.3 + 0.4 + 0.6)  # positive: 1.3
    assert raw[0, 1].item() == pytest.approx(0.6 + 0.9 - 0.7)  # negative: 0.8, last term flipped
    assert raw[1, 0].item() == pytest.approx(0.3 + 0.4 - 0.6)
    scores = flip_scores(A_B, A_F, TAU)
    l1 = A_F.abs().sum(1)
    torch.testing.assert_close(scores.diagonal(), l1 / (TAU * 3))


def test_worked_example_full_loss():
    # N = 1 negative per anchor, M = N + 1 = 2 candidates, so N/M = 1/2.
    s11, s12, s21, s22 = 1.3 / 0.3, 0.8 / 0.3, 0.1 / 0.3, 2.2 / 0.3
    hand = 0.5 * (
        _log_h(s11, 0.5)
        + _log_one_minus_h(s12, 0.5)
        + _log_h(s22, 0.5)
        + _log_one_minus_h(s21, 0.5)
    )
    assert hand == pytest.approx(-2.3667609601858635, abs=1e-12)
    loss = CMIMLoss([3], tau=TAU, beta=2.0)
    for indices in (None, torch.tensor([7, 3])):
        value = loss([(A_F, A_B)], indices)
        # Eq. 14 with K = 1: the single (deepest) layer weighs beta^-(K-1-K) = beta.
        assert value.item() == pytest.approx(-2.0 * hand, abs=1e-10)
        assert loss.last_layer_terms[0].item() == pytest.approx(hand, abs=1e-10)
    bound = loss.last_mi_bounds[0].item()
    assert bound == pytest.approx(0.5 * (_log_h(s11, 0.5) + _log_h(s22, 0.5)) + math.log(1))


def test_num_data_sets_the_ratio():
    s11, s12, s21, s22 = 1.3 / 0.3, 0.8 / 0.3, 0.1 / 0.3, 2.2 / 0.3
    r = 1 / 100  # N = 1, M = 100
    hand = 0.5 * (
        _log_h(s11, r) + _log_one_minus_h(s12, r) + _log_h(s22, r) + _log_one_minus_h(s21, r)
    )
    value = CMIMLoss([3], tau=TAU, beta=2.0, num_data=100)([(A_F, A_B)])
    assert value.item() == pytest.approx(-2.0 * hand, abs=1e-10)


def test_layer_weights_eq14():
    # k = 1..K as printed: 1 / beta^(K-1-k) = beta^-1, beta^0, beta^1 for K = 3.
    assert layer_weights(3, 2.0) == [0.5, 1.0, 2.0]
    single = CMIMLoss([3], tau=TAU)([(A_F, A_B)])
    triple = CMIMLoss([3, 3, 3], tau=TAU, beta=2.0)([(A_F, A_B)] * 3)
    assert triple.item() == pytest.approx(1.75 * single.item())


def test_registered_and_validates():
    loss = MODELS.build(dict(type="CMIMLoss", in_dims=[4, 8], critic="embed", n_nce=32))
    assert isinstance(loss, CMIMLoss) and loss.n_nce == 32
    assert CMIMLoss([4]).n_nce == 0 and CMIMLoss([4], critic="embed").n_nce == 16384
    with pytest.raises(ValueError, match="critic"):
        CMIMLoss([4], critic="dot")
    with pytest.raises(ValueError, match="num_data"):
        CMIMLoss([4], critic="embed", bank="momentum")
    with pytest.raises(ValueError, match="needs critic='embed'"):
        CMIMLoss([4], n_nce=8, bank="momentum", num_data=10)
    with pytest.raises(ValueError, match="shape"):
        CMIMLoss([4])([(torch.randn(2, 5), torch.randn(2, 5))])
    with pytest.raises(ValueError, match="indices"):
        CMIMLoss([4], n_nce=8)([(torch.randn(2, 4), torch.randn(2, 4))])


def test_gradcheck_flip_with_fixed_anchor():
    torch.manual_seed(0)
    a_F = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    a_B = torch.sign(torch.randn(5, 6, dtype=torch.float64))  # fixed input, sign not differentiated
    loss = CMIMLoss([6], tau=0.5)
    assert torch.autograd.gradcheck(lambda f: loss([(f, a_B)]), (a_F,))
    assert torch.autograd.gradcheck(lambda f, b: loss([(f, b)]), (a_F, a_B.requires_grad_()))


def test_gradcheck_flip_with_queue_bank():
    torch.manual_seed(0)
    loss = CMIMLoss([6], tau=0.5, n_nce=8).double()
    loss(
        [(torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6).sign().double())],
        torch.arange(4),
    )
    loss.eval()  # frozen bank: repeated forwards are deterministic
    a_F = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    a_B = torch.sign(torch.randn(4, 6, dtype=torch.float64))
    idx = torch.tensor([1, 2, 5, 6])
    assert torch.autograd.gradcheck(lambda f: loss([(f, a_B)], idx), (a_F,))


def test_gradcheck_embed():
    torch.manual_seed(0)
    loss = CMIMLoss([6, 4], tau=0.5, critic="embed", n_nce=8, embed_dim=5, hidden_dim=7).double()
    pairs = [
        (torch.randn(4, d, dtype=torch.float64), torch.randn(4, d, dtype=torch.float64))
        for d in (6, 4)
    ]
    loss(pairs, torch.arange(4))
    loss.eval()
    inputs = [torch.randn(4, d, dtype=torch.float64, requires_grad=True) for d in (6, 6, 4, 4)]
    idx = torch.tensor([0, 3, 8, 9])
    assert torch.autograd.gradcheck(
        lambda f0, b0, f1, b1: loss([(f0, b0), (f1, b1)], idx), tuple(inputs)
    )
    weight = loss.embed_B[0][0].weight
    assert torch.autograd.gradcheck(
        lambda w: torch.func.functional_call(
            loss, {"embed_B.0.0.weight": w}, ([(inputs[0], inputs[1]), (inputs[2], inputs[3])], idx)
        ),
        (weight.detach().clone().requires_grad_(),),
    )


@pytest.mark.parametrize("critic", ["flip", "embed"])
def test_finite_at_large_scale(critic):
    torch.manual_seed(0)
    a_F = (torch.randn(8, 16) * 1e4).requires_grad_()
    loss_fn = CMIMLoss([16], tau=0.01, critic=critic, n_nce=0, num_data=1000)
    loss = loss_fn([(a_F, torch.sign(a_F))])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a_F.grad).all()


def test_optimisation_raises_mi_bound():
    torch.manual_seed(0)
    a_F = torch.randn(16, 32).mul_(1e-3).requires_grad_()  # starts near chance: s ~ 0
    loss_fn = CMIMLoss([32], tau=0.1)
    opt = torch.optim.Adam([a_F], lr=0.05)
    bounds = []
    for _ in range(60):
        loss = loss_fn([(a_F, torch.sign(a_F).detach())])
        bounds.append(loss_fn.last_mi_bounds[0].item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert bounds[0] < 2.2 and bounds[-1] > bounds[0] + 0.5
    assert bounds[-1] <= math.log(15) + 1e-6  # Eq. 9 estimate never exceeds log(N - 1)
    log_h = torch.full((4,), -0.5)
    assert mi_lower_bound(log_h, 15).item() == pytest.approx(-0.5 + math.log(15))


def test_queue_update_by_hand():
    loss = CMIMLoss([2], n_nce=4)
    x1 = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    loss([(x1, x1.sign())], torch.tensor([10, 11, 12]))
    assert loss.bank_index_0.tolist() == [10, 11, 12, -1] and loss.bank_ptr.item() == 3
    torch.testing.assert_close(loss.bank_0[:3], x1)
    x2 = -x1
    loss([(x2, x2.sign())], torch.tensor([13, 14, 15]))  # wraps around: slots 3, 0, 1
    assert loss.bank_index_0.tolist() == [14, 15, 12, 13] and loss.bank_ptr.item() == 2
    torch.testing.assert_close(loss.bank_0, torch.stack([x2[1], x2[2], x1[2], x2[0]]))
    loss.eval()
    loss([(x1, x1.sign())], torch.tensor([0, 1, 2]))
    assert loss.bank_index_0.tolist() == [14, 15, 12, 13], "eval must not write the bank"


def test_momentum_update_by_hand():
    torch.manual_seed(0)
    loss = CMIMLoss([3], critic="embed", n_nce=4, bank="momentum", num_data=5, embed_dim=2)
    a1, a2 = torch.randn(2, 3), torch.randn(1, 3)
    loss([(a1, a1.sign())], torch.tensor([1, 3]))
    with torch.no_grad():
        k1, k2 = loss.embed_F[0](a1), loss.embed_F[0](a2)
    assert loss.bank_index_0.tolist() == [-1, 1, -1, 3, -1]
    torch.testing.assert_close(loss.bank_0[[1, 3]], k1)  # first write: the key itself
    assert loss.bank_0[[0, 2, 4]].abs().sum() == 0
    loss([(a2, a2.sign())], torch.tensor([1]))
    mixed = 0.5 * k1[0] + 0.5 * k2[0]
    torch.testing.assert_close(loss.bank_0[1], mixed / mixed.norm())
    torch.testing.assert_close(loss.bank_0[3], k1[1])


def test_positive_excluded_from_its_own_negatives():
    torch.manual_seed(0)
    x = torch.randn(4, 5)
    loss = CMIMLoss([5], tau=TAU, n_nce=8)
    loss([(x, x.sign())], torch.arange(4))  # the bank now holds exactly this batch
    loss.eval()
    loss([(x, x.sign())], torch.arange(4))
    scores = flip_scores(x.sign(), x, TAU)
    off = ~torch.eye(4, dtype=torch.bool)
    neg = scores[off].view(4, 3)
    # Negatives: the 3 other in-batch samples and their 3 bank copies, never the anchor itself.
    expected = nce_objective(scores.diagonal(), torch.cat([neg, neg], 1)).objective
    assert loss.last_layer_terms[0].item() == pytest.approx(expected.item(), rel=1e-6)
    with_self = nce_objective(
        scores.diagonal(), torch.cat([neg, neg, scores.diagonal()[:, None]], 1)
    )
    assert with_self.objective.item() != pytest.approx(expected.item(), rel=1e-3)


@pytest.mark.parametrize("bank", ["queue", "momentum"])
def test_bank_state_dict_round_trip(bank):
    torch.manual_seed(0)
    kwargs = dict(in_dims=[6, 4], critic="embed", n_nce=8, bank=bank, num_data=20, embed_dim=3)
    src = CMIMLoss(**kwargs)
    for step in range(3):
        pairs = [(torch.randn(4, d), torch.randn(4, d).sign()) for d in (6, 4)]
        src(pairs, torch.arange(4) + 4 * step)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert {"bank_0", "bank_index_0", "bank_1", "bank_index_1"} <= set(state)
    assert ("bank_ptr" in state) == (bank == "queue")
    dst = CMIMLoss(**kwargs)
    assert not torch.equal(dst.bank_index_0, src.bank_index_0)
    dst.load_state_dict(state)
    for name, value in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[name], value)
    if bank == "queue":  # deterministic negatives: same loss
        src.eval()
        dst.eval()
        pairs = [(torch.randn(4, d), torch.randn(4, d).sign()) for d in (6, 4)]
        idx = torch.tensor([0, 1, 30, 31])
        assert src(pairs, idx).item() == pytest.approx(dst(pairs, idx).item())


def test_z_norm_constant_measured_once():
    torch.manual_seed(0)
    x = torch.randn(4, 5)
    loss = CMIMLoss([5], tau=TAU, z_norm=True, num_data=100)
    loss([(x, x.sign())], torch.arange(4))
    scores = flip_scores(x.sign(), x, TAU)
    hand = math.log(scores.exp().mean().item() * 100)  # CRD: Z = M * mean exp(s)
    assert loss.log_z[0].item() == pytest.approx(hand, rel=1e-5)
    loss([(2 * x, x.sign())], torch.arange(4))
    assert loss.log_z[0].item() == pytest.approx(hand, rel=1e-5)
    assert "log_z" in loss.state_dict()


_DDP_WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    import torch.distributed as dist
    import cmim_dense  # noqa: F401
    from cmim_dense.losses.cmim import CMIMLoss

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method="env://")
    torch.manual_seed(0)
    a_F, a_B = torch.randn(7, 6), torch.randn(7, 6).sign()
    rows = slice(0, 4) if rank == 0 else slice(4, 7)  # unequal local batches: 4 and 3
    f = a_F[rows].clone().requires_grad_()
    loss_fn = CMIMLoss([6], tau=0.5, n_nce=16)
    loss = loss_fn([(f, a_B[rows])], torch.arange(7)[rows] + 100)
    loss.backward()
    torch.save(
        dict(loss=loss.detach(), index=loss_fn.bank_index_0, bank=loss_fn.bank_0,
             ptr=loss_fn.bank_ptr, grad=f.grad),
        sys.argv[1],
    )
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_ranks_share_negatives_and_bank(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"rank{r}.pt")],
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out.decode()[-2000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    # The bank holds both ranks' samples, identically on both ranks.
    assert sorted(r0["index"][:7].tolist()) == list(range(100, 107))
    assert torch.equal(r0["index"], r1["index"]) and torch.equal(r0["bank"], r1["bank"])
    assert r0["ptr"].item() == r1["ptr"].item() == 7
    # Each rank's anchors saw all 6 other samples as negatives: the anchor-weighted mean of the
    # two rank losses is the single-process loss of the full batch of 7.
    torch.manual_seed(0)
    a_F, a_B = torch.randn(7, 6), torch.randn(7, 6).sign()
    full = CMIMLoss([6], tau=0.5)([(a_F, a_B)]).item()
    assert (4 * r0["loss"].item() + 3 * r1["loss"].item()) / 7 == pytest.approx(full, rel=1e-5)
    assert r0["grad"].abs().sum() > 0 and r1["grad"].abs().sum() > 0
