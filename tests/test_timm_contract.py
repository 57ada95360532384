"""timm's model contract for bin_resnet18/34, and the compilers (TorchScript, FX, dynamo, export).

The same checks as timm's own ``tests/test_models.py`` (which the project runs unmodified
against its models), at small widths, plus the parts that file covers only for timm's own
modules (``forward_intermediates``) and every binarizer where the file builds only the default.
"""

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor

import cmim_dense  # noqa: F401  (registers the models)
from cmim_dense.binary import BinaryConv2d, list_binarizers
from cmim_dense.models import BinaryImageClassifier, BinaryResNet
from cmim_dense.models.backbones import TimmBinaryResNet
from cmim_dense.models.backbones.bin_resnet import BinaryConvUnit
from cmim_dense.utils.errors import InputError

BLOCKS = {"react": "react", "adabin": "adabin"}
# What timm's own FX tests trace with: its registered leaf modules and wrapped functions.
TIMM_TRACER = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


def _timm(**kwargs) -> TimmBinaryResNet:
    torch.manual_seed(0)
    return timm.create_model("bin_resnet18", base_channels=8, **kwargs)


def test_default_cfg_and_head_sizes():
    model = _timm(num_classes=5).eval()
    assert model.num_features == model.head_hidden_size == 64
    assert model.pretrained_cfg["classifier"] == "fc"
    for variant in ("bin_resnet18", "bin_resnet34"):  # the slots a checkpoint fills
        pretrained_cfg = timm.models.get_pretrained_cfg(variant)
        assert pretrained_cfg.file is None and pretrained_cfg.hf_hub_id is None
    assert "stem.0.weight" in model.state_dict() and "fc.weight" in model.state_dict()


def test_num_classes_zero_gives_pooled_features_and_global_pool_off_the_map():
    x = torch.randn(2, 3, 64, 64)
    model = _timm(num_classes=5).eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        headless = _timm(num_classes=0).eval()
        torch.testing.assert_close(headless(x), pooled, rtol=0, atol=0)
        model.reset_classifier(0)
        assert model.num_classes == 0
        torch.testing.assert_close(model(x), pooled, rtol=0, atol=0)
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(x), feats, rtol=0, atol=0)
        model.reset_classifier(3, "avg")
        assert model(x).shape == (2, 3)
        unpooled = _timm(num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == (2, 64, 2, 2)


def test_features_only_has_timm_five_levels_with_the_stem():
    model = _timm(features_only=True).eval()
    assert model.feature_info.channels() == [8, 8, 16, 32, 64]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (8, 32, 32),
        (8, 16, 16),
        (16, 8, 8),
        (32, 4, 4),
        (64, 2, 2),
    ]
    cifar = _timm(features_only=True, stem="cifar", out_indices=(0, 4))
    assert cifar.feature_info.reduction() == [1, 8]


def test_forward_intermediates_matches_forward_features_and_stops_early():
    model = _timm(num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        assert [t.shape[1] for t in inter] == [8, 8, 16, 32, 64]
        early = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert early[0].shape[1:] == (8, 16, 16) and len(early[1]) == 1
        assert len(model.forward_intermediates(x, indices=[-1], intermediates_only=True)) == 1
    with pytest.raises(InputError, match=r"0\.\.4"):
        model.forward_intermediates(x, indices=[5])
    assert model.prune_intermediate_layers([0, 2]) == [0, 2]
    assert len(model.stages) == 2 and model.num_classes == 0


def test_mmseg_backbone_keeps_stage_indices_and_tuple_output():
    backbone = BinaryResNet(base_channels=8, out_indices=(0, 3)).eval()
    assert len(backbone.feature_info) == 4
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 64))
    assert isinstance(outs, tuple) and [o.shape[1] for o in outs] == [8, 64]
    with pytest.raises(InputError, match=r"0\.\.3"):
        BinaryResNet(out_indices=(4,))


def test_grad_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model = _timm(num_classes=3, binarizer="bireal").train()
        model.set_grad_checkpointing(enable)
        model(x).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_group_matcher_covers_every_parameter():
    model = _timm(num_classes=3)
    matcher = model.group_matcher()
    groups = timm.models.group_parameters(model, matcher)
    names = {n for group in groups.values() for n in group}
    assert names == {n for n, _ in model.named_parameters()}
    assert len(timm.models.group_parameters(model, model.group_matcher(coarse=True))) >= 5


def test_pretrained_loads_a_cmim_pretraining_checkpoint(tmp_path):
    torch.manual_seed(0)
    arch = dict(type="BinaryResNet", base_channels=8, binarizer="irnet")
    classifier = BinaryImageClassifier(arch, num_classes=4, cmim_lambda=1.0, tap_size=2).eval()
    path = tmp_path / "cmim.pth"
    torch.save({"state_dict": classifier.state_dict(), "meta": {"epoch": 3}}, path)
    model = timm.create_model(
        "bin_resnet18",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=4),
        num_classes=4,
        base_channels=8,
    ).eval()
    assert model.pretrained_cfg["file"] == str(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), classifier(x), rtol=0, atol=0)


def _unit(name: str) -> torch.nn.Module:
    """One binary conv of ``name`` between two float layers, with perturbed parameters."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1), BinaryConv2d(4, 6, 3, padding=1, binarizer=name)
    )
    with torch.no_grad():
        for p in net[1].binarizer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("name", list_binarizers())
def test_every_binarizer_scripts_and_traces(name):
    """TorchScript and FX give the eager eval output; FX keeps the surrogate gradients."""
    net = _unit(name).eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        eager = net(x)
        torch.testing.assert_close(torch.jit.script(net)(x), eager, rtol=0, atol=0)
    traced = create_feature_extractor(net, return_nodes=["1"], tracer_kwargs=TIMM_TRACER)
    net.train()
    traced.train()
    xg = x.clone().requires_grad_()
    net(xg).sum().backward()
    expected = xg.grad
    xg.grad = None
    traced(xg)["1"].sum().backward()
    torch.testing.assert_close(xg.grad, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", list_binarizers())
def test_every_scripted_binarizer_runs_backward(name):
    """TorchScript runs the plain formulas, without the surrogate gradients (docs/binarizers.md),
    but a scripted model's backward runs: IR-Net's and RBNN's standardisation divided in place
    a tensor its norm's backward reads."""
    net = torch.jit.script(_unit(name).train())
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    weight = net[1].weight.grad
    assert weight is not None and torch.isfinite(weight).all()


def test_default_model_scripts_whole():
    model = _timm(num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x), rtol=0, atol=0)


def _resnet(name: str, **kwargs) -> BinaryResNet:
    torch.manual_seed(0)
    block = BLOCKS.get(name, "basic")
    return BinaryResNet(binarizer=name, block=block, base_channels=8, num_classes=3, **kwargs)


def _one_graph(module: torch.nn.Module, x: torch.Tensor) -> None:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(module)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [
        str(b.reason) for b in explained.break_reasons
    ]


@pytest.mark.parametrize("name", list_binarizers())
def test_binary_unit_training_forward_is_one_dynamo_graph(name):
    torch.manual_seed(0)
    unit = BinaryConvUnit(4, 8, 2, 1, name, BLOCKS.get(name, "basic")).train()
    _one_graph(unit, torch.randn(2, 4, 8, 8))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_binarizers())
def test_resnet18_training_forward_is_one_dynamo_graph(name):
    _one_graph(_resnet(name).train(), torch.randn(2, 3, 32, 32))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_binarizers())
def test_compiled_training_step_matches_eager(name):
    """Inductor's fused kernels give the eager loss and gradients to float tolerance.

    In float64: in float32 a fused kernel's different rounding can move a value across a sign
    threshold, and a binary network amplifies one flip through every later layer (seen for
    IR-Net and RBNN), which says nothing about whether the compiled graph is right.
    """
    torch._dynamo.reset()
    eager = _resnet(name, stem="cifar").double().train()
    compiled = _resnet(name, stem="cifar").double().train()
    compiled.load_state_dict(eager.state_dict())
    step = torch.compile(lambda m, x: m(x).logsumexp(1).mean(), fullgraph=True)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    losses = [eager(x).logsumexp(1).mean(), step(compiled, x)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (key, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", list_binarizers())
def test_eval_forward_exports(name):
    model = _resnet(name, stem="cifar").eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=0)
