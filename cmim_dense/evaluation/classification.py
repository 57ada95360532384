"""Top-k classification accuracy as an mmengine metric."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.evaluator import BaseMetric

from cmim_dense.registry import METRICS


@METRICS.register_module()
class TopKAccuracy(BaseMetric):
    """Top-k accuracy in percent, reported as ``top1``, ``top5``, ... .

    ``data_samples`` of each batch are the model's predict outputs:
    ``dict(pred_logits=Tensor[num_classes], gt_label=Tensor or int)``. A sample is correct at k
    when its label is among the k largest logits; k larger than the number of classes counts
    every class (accuracy 100%).

    Args:
        topk: the k values to report.
        collect_device: see :class:`mmengine.evaluator.BaseMetric`.
        prefix: see :class:`mmengine.evaluator.BaseMetric`.
    """

    default_prefix = None

    def __init__(
        self, topk: Sequence[int] = (1, 5), collect_device: str = "cpu", prefix: str | None = None
    ):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(int(k) for k in topk)
        if not self.topk or min(self.topk) < 1:
            raise ValueError(f"topk must be positive ints, got {topk}")

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Store, per sample, the rank of its label among the logits (0 = the arg max)."""
        for sample in data_samples:
            logits = torch.as_tensor(sample["pred_logits"]).detach().flatten().float()
            label = int(torch.as_tensor(sample["gt_label"]).reshape(-1)[0])
            if not 0 <= label < logits.numel():
                raise ValueError(f"gt_label {label} outside [0, {logits.numel()}) logits")
            # Logits tied with the label's do not push it down: ties count as correct.
            self.results.append(int((logits > logits[label]).sum()))

    def compute_metrics(self, results: list[int]) -> dict[str, float]:
        ranks = torch.tensor(results)
        return {f"top{k}": 100.0 * float((ranks < k).float().mean()) for k in self.topk}
