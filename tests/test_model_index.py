"""model-index.yml, the model zoo in OpenMMLab's metafile format (docs/model_zoo.md): every
config it names exists, builds through the one config->model path, and every config of the
project is listed; measured results carry their seed spread."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import timm
import torch
import yaml

from cmim_dense.cli.export import parse_args as parse_export_args
from cmim_dense.engine.config import build_model, resolve_config

REPO = Path(__file__).resolve().parents[1]
INDEX = yaml.safe_load((REPO / "model-index.yml").read_text(encoding="utf-8"))
MODELS = INDEX["Models"]
CONFIGS = sorted({m["Config"] for m in MODELS})

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_index_has_the_metafile_fields():
    collections = {c["Name"] for c in INDEX["Collections"]}
    assert len(collections) == len(INDEX["Collections"])
    names = [m["Name"] for m in MODELS]
    assert len(set(names)) == len(names)
    for model in MODELS:
        assert model["In Collection"] in collections, model["Name"]
        assert model["Results"], model["Name"]
        for result in model["Results"]:
            assert {"Task", "Dataset", "Metrics"} <= set(result), model["Name"]
    for collection in INDEX["Collections"]:
        assert (REPO / collection["Code"]["URL"]).is_file(), collection["Name"]


def test_every_config_is_listed():
    on_disk = {
        str(p.relative_to(REPO))
        for p in (REPO / "configs").rglob("*.py")
        if "_base_" not in p.parts
    }
    assert set(CONFIGS) == on_disk


def test_measured_results_give_the_seed_spread():
    """A measured metric has its std and, where the README gives them, per-seed values whose
    mean and sample std are the ones stated; an unmeasured model says so."""
    measured = 0
    for model in MODELS:
        metrics = [r["Metrics"] for r in model["Results"]]
        if not any(metrics):
            assert model["Metadata"]["Measured"].startswith("not run here"), model["Name"]
            continue
        measured += 1
        seeds = model["Metadata"]["Seeds"]
        for values in metrics:
            for name in [k for k in values if not k.endswith((" std", " per seed"))]:
                assert f"{name} std" in values, (model["Name"], name)
                per_seed = values.get(f"{name} per seed")
                if per_seed is None:
                    continue
                assert len(per_seed) == len(seeds)
                t = torch.tensor(per_seed, dtype=torch.float64)
                digits = 10 ** -(len(str(values[name]).split(".")[1]))
                assert abs(t.mean().item() - values[name]) <= digits, (model["Name"], name)
                assert abs(t.std().item() - values[f"{name} std"]) <= digits, (model["Name"], name)
    assert measured >= 10  # the demo sweeps: 5 settings x (pretraining, transfer)


def test_export_commands_parse():
    """Each export command is a valid ``cmim-dense export`` command line for its own config."""
    for model in MODELS:
        words = shlex.split(model["Metadata"]["Export"])
        assert words[:2] == ["cmim-dense", "export"], model["Name"]
        args = parse_export_args(words[2:])
        assert resolve_config(args.config) == str(REPO / "cmim_dense" / ".mim" / model["Config"])


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """A random teacher in the layout a config's ``model.teacher`` names: like the datasets,
    the real teacher file is data that is not here."""

    def make(teacher: dict, num_classes: int) -> str:
        net = timm.create_model(teacher["arch"], pretrained=False, num_classes=num_classes)
        if teacher.get("mlp_hidden"):
            net.fc = torch.nn.Sequential(
                torch.nn.Linear(net.num_features, teacher["mlp_hidden"]),
                torch.nn.ReLU(),
                torch.nn.Linear(teacher["mlp_hidden"], num_classes),
            )
        path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
        prefix = teacher.get("prefix", "")
        torch.save({"state_dict": {prefix + k: v for k, v in net.state_dict().items()}}, path)
        return str(path)

    return make


@pytest.mark.parametrize("config", CONFIGS)
def test_config_builds(config: str, teacher_checkpoint):
    from cmim_dense.engine.config import load_config

    cfg = load_config(REPO / config)
    options = {}
    teacher = cfg.model.get("teacher")
    if teacher:
        options["model.teacher.checkpoint"] = teacher_checkpoint(teacher, cfg.model.num_classes)
    model = build_model(cfg, cfg_options=options)
    assert sum(p.numel() for p in model.parameters()) > 0
