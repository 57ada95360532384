"""Training-step cost of each binarizer: a binary ResNet-18 against torchvision's float one.

One SGD step (forward, cross-entropy, backward, momentum update) of a binary ResNet-18 per
binarizer (with its block: RPReLU for ReAct, Maxout for AdaBin; LNS adds its noisy-label
loss, as its configs do) beside torchvision's float ResNet-18, timed interleaved
(:func:`~cmim_dense.bench.timing.median_step_times`), optionally also compiled with
``torch.compile`` (one graph per step, see ``tests/test_timm_contract.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from cmim_dense.bench.timing import median_step_times
from cmim_dense.binary import list_binarizers
from cmim_dense.binary.lns import lns_noisy_label_loss
from cmim_dense.models.backbones import BinaryResNet

BLOCKS = {"react": "react", "adabin": "adabin"}
StepFn = Callable[[], None]


def binary_resnet18(binarizer: str, num_classes: int = 1000) -> BinaryResNet:
    """The binary ResNet-18 of ``binarizer`` with its block, ImageNet stem, a classifier."""
    block = BLOCKS.get(binarizer, "basic")
    return BinaryResNet(depth=18, binarizer=binarizer, block=block, num_classes=num_classes)


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    loss = F.cross_entropy(model(x), y)
    return loss + lns_noisy_label_loss(model)  # 0 for every method but LNS


def sgd_step(model: nn.Module, batch: int, size: int, compiled: bool = False) -> StepFn:
    """One SGD step (lr 0.1, momentum 0.9) on a fixed random batch (N, 3, size, size).

    ``compiled``: the forward and loss under ``torch.compile`` (backward runs the compiled
    backward graph); the optimizer step stays eager, as in the training loop.
    """
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = torch.compile(_loss) if compiled else _loss

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        optimizer.step()

    return step


def binarizer_step_times(
    binarizer: str, batch: int, size: int, iters: int = 10, compiled: bool = False
) -> dict[str, float]:
    """Median seconds of one step: ``float``, ``binary`` and, if asked, ``compiled`` (binary)."""
    steps = {
        "float": sgd_step(torchvision.models.resnet18(), batch, size),
        "binary": sgd_step(binary_resnet18(binarizer), batch, size),
    }
    if compiled:
        # dynamo caches the compiled _loss per code object, across models: without a reset,
        # the 9th model in one process passes torch's recompile limit and runs eager.
        torch.compiler.reset()
        steps["compiled"] = sgd_step(binary_resnet18(binarizer), batch, size, compiled=True)
    return median_step_times(steps, iters)


def run(
    settings: Sequence[tuple[int, int]] = ((224, 16), (32, 32)),
    binarizers: Sequence[str] | None = None,
    iters: int = 10,
    compiled: bool = False,
    threads: int = 2,
    report: Callable[[str], None] = print,
) -> dict[tuple[int, str], dict[str, float]]:
    """Every binarizer at every (size, batch), each timed interleaved with the float step.

    Reports one line per measurement: the float step in ms, the binary step in ms and its
    ratio to float (and the compiled step when asked). Returns {(size, name): times}.
    """
    torch.set_num_threads(threads)
    results = {}
    for size, batch in settings:
        for name in binarizers or list_binarizers():
            times = binarizer_step_times(name, batch, size, iters, compiled)
            results[(size, name)] = times
            line = (
                f"{size}px batch {batch} {name:>15}: float {times['float'] * 1e3:8.1f} ms, "
                f"binary {times['binary'] * 1e3:8.1f} ms ({times['binary'] / times['float']:.2f}x)"
            )
            if compiled:
                ratio = times["compiled"] / times["float"]
                line += f", compiled {times['compiled'] * 1e3:8.1f} ms ({ratio:.2f}x)"
            report(line)
    return results


def profile_step(binarizer: str, batch: int, size: int, rows: int = 25) -> str:
    """torch.profiler table (self CPU time) of 3 steps after 2 warm-up steps."""
    step = sgd_step(binary_resnet18(binarizer), batch, size)
    for _ in range(2):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
