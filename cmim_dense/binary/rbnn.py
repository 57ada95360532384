"""RBNN (Lin et al. NeurIPS 2020): bi-rotated weights and a training-aware sign gradient.

Each layer owns two orthogonal matrices R1 (n1 x n1) and R2 (n2 x n2) with
n1 * n2 = n = C_in * kh * kw. They are not learned by gradient descent: between updates
they are constants (buffers), and :class:`~cmim_dense.engine.RBNNRotationHook` re-solves
them on a schedule by the paper's alternating optimisation (:meth:`update_rotation`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cmim_dense.binary.functions import channel_mean_abs, hard_sign, rbnn_sign
from cmim_dense.binary.fused import standardize_per_channel
from cmim_dense.binary.irnet import EDEScheduledBinarizer
from cmim_dense.binary.registry import BINARIZERS


def factorize(n: int) -> tuple[int, int]:
    """n = n1 * n2 with n1 <= n2 as close as possible (n1 the largest divisor <= sqrt(n))."""
    if n < 1:
        raise ValueError(f"cannot factorize n={n}; it must be a positive integer")
    n1 = next(i for i in range(math.isqrt(n), 0, -1) if n % i == 0)
    return n1, n // n1


def random_orthogonal(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A Haar-random orthogonal (n, n) matrix: QR of a Gaussian matrix, signs fixed by diag(R)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


@BINARIZERS.register_module(name="rbnn")
class RBNNBinarizer(EDEScheduledBinarizer):
    """Rotated weights W~, binarized as ``scale * sign(W~)``; a_B = sign(a).

    Forward, per output channel i (W_i is the (n1, n2) reshape of the channel's n weights):
        W_std  = (W - mean) / std per output channel (as the public RBNN code does),
        W_rot  = R1^T W_std,i R2,
        W~     = W_std + |sin(theta_i)| * (W_rot - W_std)   (adjustable rotation, alpha in [0, 1]),
        W_B    = scale_i * sign(W~).
    theta (C_out, 1, 1, 1) is learnable, initialised U(0, pi/2) as in the public code; scale
    (C_out, 1, 1, 1) is learnable and set to mean(|W|) per channel at the first forward (the
    public code initialises its output scale the same way).
    Backward, for weights and activations: F'(x) = k max(0, sqrt(2) t - t^2 |x|) with (t, k)
    from IR-Net's :func:`~cmim_dense.binary.irnet.ede_schedule` (Tmin = 1e-2, Tmax = 10, the
    paper's defaults), driven by :class:`~cmim_dense.engine.BinarizerProgressHook`. R1 and R2
    are constants for autograd, so dW~/dW_std = (1 - alpha) I + alpha * (rotation by R1, R2):
    the exact gradient of the formula above (the public code instead detaches W_rot).

    Reference: Lin, Ji, Xu, Zhang, Wang, Wu, Huang, Lin, *Rotated Binary Neural Network*,
    NeurIPS 2020.

    Args:
        t_min, t_max: range of t over training.
        seed: seed of the random orthogonal initialisation of R1 and R2 (None: global RNG).
    Requires groups=1 (the weight has C_in * kh * kw entries per output channel).
    """

    def __init__(
        self, *args, t_min: float = 1e-2, t_max: float = 10.0, seed: int | None = None, **kwargs
    ):
        super().__init__(*args, t_min=t_min, t_max=t_max, **kwargs)
        self.n1, self.n2 = factorize(self.in_channels * math.prod(self.kernel_size))
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.register_buffer("R1", random_orthogonal(self.n1, generator))
        self.register_buffer("R2", random_orthogonal(self.n2, generator))
        self.theta = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) * (math.pi / 2))
        self.scale = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))
        self.register_buffer("scale_initialized", torch.tensor(False))
        self._scale_checked = False  # reads the buffer once, not one device sync per forward
        self._last_weight: Tensor | None = None

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._scale_checked = False  # the loaded flag decides again

    def _standardize(self, w: Tensor) -> Tensor:
        """(C_out, C_in, kh, kw) -> (C_out, n1, n2), zero mean and unit std per output channel."""
        if w[0].numel() != self.n1 * self.n2:
            raise ValueError(
                "RBNN expects C_in * kh * kw = n1 * n2 weights per output channel (groups=1)"
            )
        return standardize_per_channel(w).view(-1, self.n1, self.n2)

    def rotated_weight(self, w: Tensor) -> Tensor:
        """The adjusted rotated weight W~, same shape as ``w`` (differentiable in w and theta)."""
        x = self._standardize(w)
        rotated = self.R1.t() @ x @ self.R2
        alpha = torch.sin(self.theta).abs().view(-1, 1, 1)
        return (x + alpha * (rotated - x)).view_as(w)

    def activation_sign(self, u: Tensor) -> Tensor:
        return rbnn_sign(u, self.t, self.k)

    def binarize_weight(self, w: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            self._remember(w)
        return self.scale * rbnn_sign(self.rotated_weight(w), self.t, self.k)

    @torch.jit.unused
    def _remember(self, w: Tensor) -> None:
        """Keep the weight for :meth:`flip_ratio`; set the scale to mean(|W|) the first time.

        The first forward (after a build or a load) writes the scale only where the loaded
        flag says it was never set, without reading the flag back (no host sync, and no
        data-dependent branch for ``torch.compile``).
        """
        if not self._scale_checked:
            with torch.no_grad():
                fresh = channel_mean_abs(w)
                self.scale.copy_(torch.where(self.scale_initialized, self.scale, fresh))
                self.scale_initialized.fill_(True)
            self._scale_checked = True
        self._last_weight = w.detach()

    @torch.no_grad()
    def update_rotation(self, w: Tensor, num_steps: int = 3) -> None:
        """Re-solve R1, R2 by alternating maximisation of sum_i tr(B_i^T R1^T W_i R2).

        Each step: B = sign(R1^T W_i R2); R1 = U V^T from the SVD of sum_i W_i R2 B_i^T;
        R2 = U V^T from the SVD of sum_i W_i^T R1 B_i (orthogonal Procrustes). Computed in
        float64 so R1, R2 stay orthogonal to ~1e-12 before the cast. ``w`` is the layer's
        latent weight (C_out, C_in, kh, kw); W_i are its standardised channels.
        """
        x = self._standardize(w.detach()).double()
        r1, r2 = self.R1.double(), self.R2.double()
        for _ in range(num_steps):
            b = hard_sign(r1.t() @ x @ r2)
            u, _, vh = torch.linalg.svd((x @ r2 @ b.transpose(1, 2)).sum(0))
            r1 = u @ vh
            u, _, vh = torch.linalg.svd((x.transpose(1, 2) @ r1 @ b).sum(0))
            r2 = u @ vh
        self.R1.copy_(r1)
        self.R2.copy_(r2)

    @torch.no_grad()
    def flip_ratio(self, w: Tensor | None = None) -> float:
        """Fraction of weights with sign(W) != sign(W~) (the paper reports about 50%).

        ``w``: the latent weight; None uses the weight of the last :meth:`binarize_weight`.
        """
        if w is None:
            if self._last_weight is None:
                raise RuntimeError("flip_ratio() needs a weight: pass w or run a forward first")
            w = self._last_weight
        return (hard_sign(w) != hard_sign(self.rotated_weight(w))).float().mean().item()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n1={self.n1}, n2={self.n2}"
