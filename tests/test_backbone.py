"""Binary ResNet backbone: shapes, registries, timm's model contract, strict pretrained loading."""

import pytest
import timm
import torch
from torch import nn

import cmim_dense  # noqa: F401  (registers the backbone)
from cmim_dense.binary import BinaryConv2d
from cmim_dense.models import BinaryImageClassifier, BinaryResNet, MultiTaskDense
from cmim_dense.registry import MODELS
from cmim_dense.utils.checkpoint import CheckpointError

# Expected (channels, spatial size) of the four stages for a 64x64 input.
EXPECTED = {
    32: [(64, 16), (128, 8), (256, 4), (512, 2)],
    16: [(64, 16), (128, 8), (256, 4), (512, 4)],
    8: [(64, 16), (128, 8), (256, 8), (512, 8)],
}


@pytest.mark.parametrize("depth", [18, 34])
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_output_shapes(depth, output_stride):
    model = BinaryResNet(depth=depth, output_stride=output_stride).eval()
    outs = model(torch.randn(2, 3, 64, 64))
    assert [(o.shape[1], o.shape[2]) for o in outs] == EXPECTED[output_stride]
    assert all(o.shape[2] == o.shape[3] and o.shape[0] == 2 for o in outs)
    assert model.channels == (64, 128, 256, 512)


@pytest.mark.parametrize("depth,num_binary", [(18, 16), (34, 32)])
def test_block_counts(depth, num_binary):
    model = BinaryResNet(depth=depth)
    assert len(model.binary_convs()) == num_binary
    assert len(model.tap_layers("stage")) == 4
    assert model.tap_layers("all") == model.binary_convs()


def test_dilation_contracted_in_first_block():
    model = BinaryResNet(output_stride=8)
    last_stage = [m for m in model.stages[3].modules() if isinstance(m, BinaryConv2d)]
    assert [m.dilation[0] for m in last_stage] == [2, 4, 4, 4]
    assert all(m.stride == (1, 1) for m in last_stage)
    uncontracted = BinaryResNet(output_stride=8, contract_dilation=False)
    first = next(m for m in uncontracted.stages[3].modules() if isinstance(m, BinaryConv2d))
    assert first.dilation == (4, 4)


def test_out_indices_and_stems():
    model = BinaryResNet(out_indices=(1, 3), stem="cifar", base_channels=16)
    outs = model(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 16, 16), (1, 128, 4, 4)]


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="depth"):
        BinaryResNet(depth=50)
    with pytest.raises(ValueError, match="output_stride"):
        BinaryResNet(output_stride=4)
    with pytest.raises(ValueError, match="unknown binarizer 'nope'"):
        BinaryResNet(binarizer="nope")


def test_react_block_has_rprelu():
    model = BinaryResNet(block="react", binarizer="react", base_channels=8).eval()
    names = {type(m).__name__ for m in model.modules()}
    assert "RPReLU" in names
    assert model(torch.randn(1, 3, 32, 32))[-1].shape == (1, 64, 1, 1)


def test_built_from_mmseg_config_dict():
    cfg = dict(type="BinaryResNet", depth=18, binarizer="bireal", output_stride=16)
    model = MODELS.build(cfg)
    assert isinstance(model, BinaryResNet)
    assert model.binary_convs()[0].binarizer.__class__.__name__ == "BiRealBinarizer"


def test_built_through_timm():
    model = timm.create_model("bin_resnet18", binarizer="irnet", num_classes=1000)
    assert isinstance(model, BinaryResNet)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    assert model.get_classifier().out_features == 1000
    assert model.pretrained_cfg["classifier"] == "fc"
    model34 = timm.create_model("bin_resnet34", num_classes=10, base_channels=8).eval()
    assert model34(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(CheckpointError, match="no pretrained"):
        timm.create_model("bin_resnet18", pretrained=True)


def test_timm_model_contract():
    torch.manual_seed(0)
    model = timm.create_model("bin_resnet18", num_classes=7, base_channels=8).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert isinstance(feats, torch.Tensor) and feats.shape == (2, 64, 2, 2)
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, 64)
        torch.testing.assert_close(pooled, feats.mean((2, 3)))
        torch.testing.assert_close(model.forward_head(feats), model(x))
        # timm's 5 levels: 0 is the stem (stride 2), 1..4 the stages
        final, inter = model.forward_intermediates(x, indices=(0, 1, 3))
        assert [t.shape[1:] for t in inter] == [(8, 32, 32), (8, 16, 16), (32, 4, 4)]
        torch.testing.assert_close(final, feats)
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pooled)  # headless: the pooled features


def test_timm_features_only():
    torch.manual_seed(0)
    model = timm.create_model(
        "bin_resnet18", features_only=True, out_indices=(2, 3, 4), base_channels=8
    ).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 8, 8), (1, 32, 4, 4), (1, 64, 2, 2)]
    assert model.feature_info.channels() == [16, 32, 64]
    assert model.feature_info.reduction() == [8, 16, 32]


def test_one_checkpoint_loads_in_the_classifier_timm_and_a_headless_backbone(tmp_path):
    """A pretraining checkpoint (backbone.* with the classifier, plus CMIM keys) loads into
    timm.create_model as it is, and into a headless transfer backbone without its classifier."""
    torch.manual_seed(0)
    arch = dict(type="BinaryResNet", base_channels=8, stem="cifar", binarizer="irnet")
    classifier = BinaryImageClassifier(arch, num_classes=5, cmim_lambda=1.0, tap_size=2).eval()
    path = tmp_path / "epoch_1.pth"
    torch.save({"state_dict": classifier.state_dict(), "meta": {"epoch": 1}}, path)
    assert any(not k.startswith("backbone.") for k in classifier.state_dict())  # tap_seed, ...
    model = timm.create_model(
        "bin_resnet18",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=5),
        num_classes=5,
        base_channels=8,
        stem="cifar",
    ).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), classifier(x), rtol=0, atol=0)
    headless = BinaryResNet(base_channels=8, stem="cifar", pretrained=str(path))
    headless.init_weights()
    own = classifier.backbone.state_dict()
    for key, value in headless.state_dict().items():
        assert torch.equal(value, own[key]), key


def _frozen_setup():
    torch.manual_seed(0)
    model = MultiTaskDense(
        backbone=dict(type="BinaryResNet", base_channels=8, out_indices=(3,)),
        seg_head=dict(
            type="FCNHead", in_channels=64, channels=8, num_convs=1, num_classes=3, in_index=0
        ),
    )
    return model.backbone, model


def test_frozen_backbone_gets_no_gradient_and_keeps_bn_stats():
    backbone, model = _frozen_setup()
    model.train()
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    head_before = model.seg_head.conv_seg.weight.detach().clone()
    feats = model.extract_feat(torch.randn(4, 3, 64, 64))
    assert not feats[0].requires_grad  # the forward kept no graph
    loss = model.seg_head(feats).pow(2).mean()
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in backbone.parameters())
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    assert not torch.equal(model.seg_head.conv_seg.weight, head_before)


def test_train_does_not_unfreeze_after_init_weights():
    backbone, model = _frozen_setup()
    model.init_weights()
    model.train(True)
    assert not backbone.training
    assert all(not m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())


def _save_classifier_checkpoint(path, backbone: nn.Module, extra: dict | None = None):
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state["backbone.fc.weight"] = torch.zeros(3, 64)  # a classifier a headless backbone drops
    state.update(extra or {})
    torch.save({"state_dict": state, "meta": {"epoch": 1}}, path)


def test_pretrained_loads_with_prefix(tmp_path):
    torch.manual_seed(1)
    source = BinaryResNet(base_channels=8)
    for m in source.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_()
    ckpt = tmp_path / "pretrain.pth"
    _save_classifier_checkpoint(ckpt, source)
    target = BinaryResNet(
        base_channels=8,
        init_cfg=dict(type="Pretrained", checkpoint=str(ckpt), prefix="backbone."),
    )
    target.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_pretrained_mismatch_raises_clear_error(tmp_path):
    ckpt = tmp_path / "wrong.pth"
    _save_classifier_checkpoint(ckpt, BinaryResNet(base_channels=16))
    target = BinaryResNet(
        base_channels=8, init_cfg=dict(type="Pretrained", checkpoint=str(ckpt), prefix="backbone.")
    )
    with pytest.raises(CheckpointError, match="wrong shape"):
        target.init_weights()

    ckpt34 = tmp_path / "r34.pth"
    _save_classifier_checkpoint(ckpt34, BinaryResNet(depth=34, base_channels=8))
    with pytest.raises(CheckpointError, match="unexpected"):
        BinaryResNet(base_channels=8).load_pretrained(str(ckpt34))

    partial = tmp_path / "partial.pth"
    state = {f"backbone.{k}": v for k, v in BinaryResNet(base_channels=8).state_dict().items()}
    state.pop("backbone.stem.0.weight")
    torch.save({"state_dict": state}, partial)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\) \[stem.0.weight\]"):
        BinaryResNet(base_channels=8).load_pretrained(str(partial))

    with pytest.raises(CheckpointError, match="no weights under prefix"):
        BinaryResNet(base_channels=8).load_pretrained(str(partial), prefix="encoder.")


def test_adabin_block_applies_maxout_after_each_residual_add():
    from cmim_dense.binary.adabin import Maxout

    torch.manual_seed(0)
    model = BinaryResNet(block="adabin", binarizer="adabin", base_channels=8, stem="cifar").eval()
    units = [m for m in model.modules() if type(m).__name__ == "BinaryConvUnit"]
    assert len(units) == 16 and all(isinstance(u.act, Maxout) for u in units)
    unit = units[4]  # 8 -> 16 channels, stride 2: a real downsample shortcut
    with torch.no_grad():
        unit.act.pos_scale.copy_(torch.linspace(0.5, 2.0, 16))
        unit.act.neg_scale.copy_(torch.linspace(-1.0, 1.0, 16))
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        pre = unit.bn(unit.conv(x)) + unit.shortcut(x)
        pos = unit.act.pos_scale.view(1, -1, 1, 1)
        neg = unit.act.neg_scale.view(1, -1, 1, 1)
        expected = torch.where(pre > 0, pos * pre, neg * pre)
        torch.testing.assert_close(unit(x), expected)
    assert model(torch.randn(1, 3, 32, 32))[-1].shape == (1, 64, 4, 4)
    with pytest.raises(ValueError, match="block must be one of"):
        BinaryResNet(block="maxout")
