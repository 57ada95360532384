"""tools/analyze.py: the CMIM paper's analysis figures (t-SNE, class-sorted similarity, per-layer
MI bound, fraction of +1 and sign flips) on tiny checkpoints of the demo config."""

import json
import runpy
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from _data_writers import write_pattern_folder
from torch import nn

from cmim_dense.binary import ActivationTaps, BinaryConv2d
from cmim_dense.binary.functions import hard_sign
from cmim_dense.engine.config import load_config
from cmim_dense.evaluation.analysis import (
    FILES,
    Activations,
    checkpoint_names,
    collect_activations,
    cosine_similarity,
    flip_rate,
    select_images,
)
from cmim_dense.evaluation.analysis_figures import layers_figure
from cmim_dense.registry import DATASETS, MODELS

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "demo" / "pretrain_crops.py")
NUM_CLASSES = 3
PER_CLASS = 6


def _options(data_root: Path, width: int = 8) -> dict:
    return {
        "model.backbone.base_channels": width,
        "test_dataloader.dataset.data_root": str(data_root),
    }


def _main():
    return runpy.run_path(str(REPO / "tools" / "analyze.py"), run_name="tools_analyze")["main"]


def _cli_options(data_root: Path, width: int = 8) -> list[str]:
    return ["--cfg-options", *(f"{k}={v}" for k, v in _options(data_root, width).items())]


def _save_checkpoint(path: Path, data_root: Path, width: int, seed: int) -> Path:
    torch.manual_seed(seed)
    model = MODELS.build(load_config(CONFIG, _options(data_root, width)).model)
    torch.save({"state_dict": model.state_dict(), "meta": {"seed": seed}}, path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, torch_one_thread) -> dict:
    """A 3-class ImageFolder test set (6 val images per class, 32x32), two base-width-8
    checkpoints with different random weights and one of width 16."""
    root = tmp_path_factory.mktemp("analyze")
    data = root / "data"
    write_pattern_folder(data, num_classes=NUM_CLASSES, per_class=dict(val=PER_CLASS))
    ckpts = root / "ckpts"
    ckpts.mkdir()
    return dict(
        root=root,
        data=data,
        a=_save_checkpoint(ckpts / "a.pth", data, 8, seed=0),
        b=_save_checkpoint(ckpts / "b.pth", data, 8, seed=1),
        wide=_save_checkpoint(ckpts / "wide.pth", data, 16, seed=2),
    )


@pytest.fixture(scope="module")
def analysed(workspace) -> dict:
    """tools/analyze.py on checkpoints a, a, b (names A, A2, B): its rc, out dir and record."""
    out = workspace["root"] / "out"
    args = [CONFIG, str(workspace["a"]), str(workspace["a"]), str(workspace["b"])]
    args += ["--out", str(out), "--names", "A", "A2", "B", "--num-images", "16"]
    rc = _main()(args + _cli_options(workspace["data"]))
    record = json.loads((out / "analysis.json").read_text()) if rc == 0 else None
    return dict(rc=rc, out=out, record=record)


def test_tool_writes_every_figure_and_the_record(analysed, workspace):
    assert analysed["rc"] == 0
    out = analysed["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # no temporary files left
    for name in ("tsne.png", "similarity.png", "layers.png"):
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 200

    record = analysed["record"]
    dataset = DATASETS.build(
        load_config(CONFIG, _options(workspace["data"])).test_dataloader.dataset
    )
    indices, labels = record["images"]["indices"], record["images"]["labels"]
    # 16 of 18 images, class-balanced (6, 5, 5), in class-sorted order, labels as the dataset's.
    assert record["images"]["num"] == len(indices) == len(labels) == 16
    assert labels == [dataset[i]["label"] for i in indices]
    assert labels == sorted(labels) and np.bincount(labels).tolist() == [6, 5, 5]
    assert record["images"]["class_names"] == {str(c): f"class_{c}" for c in range(3)}
    assert record["layers"]["names"] == [f"stages.{s}.1.1.conv" for s in range(4)]
    assert record["feature"] == dict(layer="stages.3.1.1.conv", shape=[64, 1, 1], pooled=False)

    n, k = 16, 4
    ceiling = record["mi_bound"]["ceiling_nats"]
    assert ceiling == pytest.approx(np.log(n - 1))
    assert [c["name"] for c in record["checkpoints"]] == ["A", "A2", "B"]
    for ckpt in record["checkpoints"]:
        assert len(ckpt["plus_fraction"]) == len(ckpt["mi_bound_nats"]) == k
        assert all(0.0 < f < 1.0 for f in ckpt["plus_fraction"])
        # Eq. 9 with in-batch negatives: at most log(N - 1); the gap is what is missing.
        for bound, gap in zip(ckpt["mi_bound_nats"], ckpt["mi_gap_nats"]):
            assert bound <= ceiling + 1e-9 and gap >= -1e-9
            assert bound + gap == pytest.approx(ceiling, abs=1e-9)
        tsne = np.asarray(ckpt["tsne"])
        assert tsne.shape == (n, 2) and np.isfinite(tsne).all()
        sim = np.asarray(ckpt["similarity"])
        assert sim.shape == (n, n)
        np.testing.assert_array_equal(np.diag(sim), 1.0)
        np.testing.assert_allclose(sim, sim.T, atol=1e-6)
        assert sim.min() >= -1.0 and sim.max() <= 1.0
    # Checkpoint A twice: identical numbers.
    first, again = record["checkpoints"][:2]
    assert first["plus_fraction"] == again["plus_fraction"]
    assert first["similarity"] == again["similarity"]
    for flip in record["flip_rates"]:
        assert len(flip["per_layer"]) == k and all(0.0 <= r <= 1.0 for r in flip["per_layer"])


def test_flip_rate_is_zero_against_itself_and_positive_between_checkpoints(analysed):
    same, different = analysed["record"]["flip_rates"]
    assert (same["before"], same["after"]) == ("A", "A2")
    assert same["per_layer"] == [0.0, 0.0, 0.0, 0.0]
    assert (different["before"], different["after"]) == ("A2", "B")
    assert all(r > 0.0 for r in different["per_layer"])


def test_plus_fraction_is_a_count_of_the_signs_of_the_taps_input():
    """A single tapped conv whose latent a_F is its input (the STE binarizer): the fraction of
    +1 is the fraction of positive input entries, 0 counting as -1 (sign(0) = -1)."""
    conv = BinaryConv2d(2, 2, 3, padding=1, binarizer="ste")
    x = -torch.ones(8, 2, 4, 4)
    x.view(-1)[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:77]] = 0.5
    x[0, 0, 0, 0] = 0.0  # counted as -1 (it was -1 or 0.5: one fewer +1 if it was 0.5)
    expected = (x > 0).sum().item() / x.numel()
    acts = collect_activations(nn.Sequential(conv), [conv], x, batch_size=4)
    assert acts.plus_fraction.tolist() == [expected]
    assert acts.dims == [2 * 4 * 4]
    assert flip_rate(acts, acts).tolist() == [0.0]


def _signs(rows: list[list[int]]) -> Activations:
    """Activations of one layer whose a_B > 0 bits are ``rows`` (N x D)."""
    bits = np.asarray(rows, dtype=np.uint8)
    return Activations(
        signs=[np.packbits(bits, axis=1)],
        dims=[bits.shape[1]],
        mi_bounds=np.zeros(1),
        mi_gaps=np.zeros(1),
        features=np.zeros((len(rows), 1), np.float32),
        feature_shape=(1, 1, 1),
        feature_pooled=False,
    )


def test_entry_information_is_the_binary_entropy_of_each_entry():
    # entry 0: +1 on 2 of 4 images (1 bit); entry 1: always +1 (0 bits); entry 2: 1 of 4
    # (H(1/4) = 2 - 3/4 log2 3 = 0.811278 bits); mean over the 3 entries
    acts = _signs([[1, 1, 0], [1, 1, 1], [0, 1, 0], [0, 1, 0]])
    h_quarter = 2 - 0.75 * np.log2(3)
    assert acts.entry_information == pytest.approx([(1 + 0 + h_quarter) / 3], abs=1e-12)
    assert acts.distinct_codes == [3]
    # 11 entries: unpacking pads to 16 bits, and the padding must not count
    wide = _signs([[1] * 11, [0] * 11])
    assert wide.entry_information == pytest.approx([1.0]) and wide.distinct_codes == [2]


def test_layers_figure_panels_and_caption():
    info = [np.array([0.9, 0.8]), np.array([0.95, 0.7])]
    gaps = [np.array([1e-6, 1e-5])] * 2
    plus = [np.array([0.5, 0.4])] * 2
    fig = layers_figure(
        ["S1", "S2"], ["A", "B"], info, gaps, plus, [], np.log(15), 16, [[16, 16], [16, 12]]
    )
    axes = fig.axes
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), info[0])
    assert axes[0].get_ylim()[1] == pytest.approx(1.02)  # room under the 1-bit ceiling
    caption = fig.get_supxlabel()
    assert "on N = 16 images is log N" in caption and "at least 12 of 16" in caption
    # no pair of checkpoints of one run: panel (d) is off and says why
    assert not axes[3].axison and "of one run" in axes[3].texts[0].get_text()


def test_flips_only_between_checkpoints_of_one_run(workspace, tmp_path):
    """Checkpoints of two folders (two runs): no sign-flip rate between them."""
    other = tmp_path / "run_b"
    other.mkdir()
    b = other / "b.pth"
    b.write_bytes(workspace["b"].read_bytes())
    out = tmp_path / "out"
    args = [CONFIG, str(workspace["a"]), str(b), str(workspace["a"]), "--out", str(out)]
    args += ["--names", "A", "B", "A2", "--num-images", "8"]
    assert _main()(args + _cli_options(workspace["data"])) == 0
    record = json.loads((out / "analysis.json").read_text())
    assert record["flip_rates"] == []
    for ckpt in record["checkpoints"]:
        assert all(0.0 < h <= 1.0 for h in ckpt["entry_information_bits"])
        assert all(1 <= c <= 8 for c in ckpt["distinct_codes"])


def test_plus_fraction_matches_hard_sign_of_the_recorded_latent(workspace):
    model = MODELS.build(load_config(CONFIG, _options(workspace["data"])).model)
    backbone = model.backbone.eval()
    layers = backbone.tap_layers("stage")
    images = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    acts = collect_activations(backbone, layers, images, batch_size=4)

    taps = ActivationTaps(layers, reduce=None)
    with torch.no_grad(), taps:
        backbone(images)
        pairs = taps.pop()
    by_hand = [(hard_sign(a_F) > 0).double().mean().item() for a_F, _ in pairs]
    np.testing.assert_allclose(acts.plus_fraction, by_hand, rtol=0, atol=1e-12)
    # The features are the last stage's a_B (1x1 map at 32x32 input: full resolution).
    np.testing.assert_array_equal(acts.features, pairs[-1][1].numpy())
    sim = cosine_similarity(acts.features)
    np.testing.assert_allclose(sim, acts.features @ acts.features.T / acts.features.shape[1])


def test_select_images_is_class_balanced_and_sorted():
    labels = [2, 0, 0, 1, 0, 2, 1, 0, 3, 2]
    # Classes 0, 1, 2 (the 3 smallest); in turn: 1, 3, 0 | 2, 6, 5 | 4, 9 -> 7 images.
    assert select_images(labels, 7, 3).tolist() == [1, 2, 4, 3, 6, 0, 5]
    assert select_images(labels, 100, 2).tolist() == [1, 2, 4, 7, 3, 6]


@pytest.mark.parametrize("case", ["wide_checkpoint", "names_count", "one_class", "no_config"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, workspace, tmp_path, capsys):
    out = tmp_path / "out"
    data = workspace["data"]
    ckpts = [str(workspace["a"])]
    config = CONFIG
    extra = []
    if case == "wide_checkpoint":
        ckpts.append(str(workspace["wide"]))
    elif case == "names_count":
        extra = ["--names", "A", "B"]
    elif case == "one_class":
        data = tmp_path / "one_class"
        write_pattern_folder(data, num_classes=1, per_class=dict(val=4))
    else:
        config = str(tmp_path / "missing.py")
    rc = _main()([config, *ckpts, "--out", str(out), *extra, *_cli_options(data)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    expected = {
        "wide_checkpoint": "wide.pth does not fit",
        "names_count": "2 names for 1 checkpoints",
        "one_class": "1 class(es); need at least 2",
        "no_config": "config file not found",
    }[case]
    assert expected in err[0]
    assert not out.exists()


def test_default_names_are_file_names_made_unique():
    assert checkpoint_names(["r/epoch_1.pth", "r/epoch_2.pth"]) == ["epoch_1", "epoch_2"]
    assert checkpoint_names(["cmim/e.pth", "base/e.pth"]) == ["cmim/e", "base/e"]
    assert checkpoint_names(["r/e.pth", "r/e.pth"]) == ["r/e #1", "r/e #2"]
    assert checkpoint_names(["a.pth"], ["CMIM"]) == ["CMIM"]
