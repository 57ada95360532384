"""The one-file recipe of docs/binarizers.md: a module with one registered class is a method."""

import pkgutil
import sys
import textwrap

import pytest
import torch

import cmim_dense.binary
from cmim_dense.binary import BINARIZERS, BinaryConv2d, discover_binarizers, list_binarizers

FOO = '''
"""A test method: a_B = sign(a - 0.5), W_B = 2 sign(W)."""

from typing import Optional

import torch
from torch import Tensor

from cmim_dense.binary import Binarizer
from cmim_dense.binary.functions import sign_ste
from cmim_dense.binary.registry import BINARIZERS


@BINARIZERS.register_module(name="foo_recipe_test")
class FooBinarizer(Binarizer):
    def activation_threshold(self) -> tuple[Optional[Tensor], Optional[Tensor]]:
        return torch.tensor(0.5), None

    def binarize_weight(self, w: Tensor) -> Tensor:
        return 2 * sign_ste(w)
'''


@pytest.fixture
def foo_package(tmp_path, monkeypatch):
    package = tmp_path / "my_binarizers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "foo.py").write_text(textwrap.dedent(FOO))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_binarizers"
    BINARIZERS.module_dict.pop("foo_recipe_test", None)
    for name in [m for m in sys.modules if m.startswith("my_binarizers")]:
        del sys.modules[name]


def test_a_new_file_with_one_registered_class_is_a_binarizer(foo_package):
    assert "foo_recipe_test" not in list_binarizers()
    assert discover_binarizers(foo_package) == ["my_binarizers.foo"]
    assert "foo_recipe_test" in list_binarizers()
    conv = BinaryConv2d(2, 3, 1, binarizer="foo_recipe_test")
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1).expand(3, 2, 1, 1))
    x = torch.tensor([0.5, 0.6]).view(1, 2, 1, 1).requires_grad_(True)
    out = conv(x)  # sign(x - 0.5) = (-1, +1); 2 * (1 * -1 + -1 * 1) = -4 per channel
    assert torch.equal(out.detach().flatten(), torch.full((3,), -4.0))
    out.sum().backward()
    assert torch.equal(x.grad.flatten(), torch.tensor([6.0, -6.0]))  # STE inside |u| <= 1


def test_every_module_of_the_package_is_discovered():
    modules = {m.name for m in pkgutil.iter_modules(cmim_dense.binary.__path__)}
    assert {f"cmim_dense.binary.{m}" for m in modules} <= set(sys.modules)
    assert len(list_binarizers()) >= 10
