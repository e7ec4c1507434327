"""JumpReLU (Rajamanoharan et al. 2024): a learned threshold per unit, trained through straight-through estimators
with a rectangle kernel, toward a target L0."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .._util import _check_float
from .base import SparseAutoencoder, TrainingContext, TrainingTerms, _warmup, fvu

if TYPE_CHECKING:
    from ..config import Config


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel ``K(u) = 1 if -1/2 < u < 1/2 else 0``."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``z = pre * H(pre - theta)`` (``pre: [B, H]``, ``theta: [H]``). Backward: ``dz/dpre = H(pre - theta)``;
    ``dz/dtheta = -(theta / eps) K((pre - theta) / eps)``, the straight-through estimate of the jump's gradient."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta, eps)
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad):
        pre, theta, eps = ctx.saved_tensors
        grad_theta = -(theta / eps) * _rectangle((pre - theta) / eps) * grad
        return (pre > theta) * grad, grad_theta.sum(0), None


class _Step(torch.autograd.Function):
    """``H(pre - theta)`` (the L0 count). Backward: no gradient to ``pre``; ``d/dtheta = -(1 / eps) K((pre -
    theta) / eps)``."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta, eps)
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta, eps = ctx.saved_tensors
        return None, (-(1 / eps) * _rectangle((pre - theta) / eps) * grad).sum(0), None


_INIT_IMAGES = 8192  # training images whose pre-activations place the thresholds at the start


class JumpReLUAutoencoder(SparseAutoencoder):
    """JumpReLU sparse autoencoder, ``kind = "jumprelu"`` (Rajamanoharan et al. 2024; dictionary_learning's
    trainer for the target-L0 loss).

    Forward maths: ``z_j = pre_j * H(pre_j - theta_j)`` with a learned threshold ``theta: [H]`` per unit (a
    parameter, kept >= 0 after every step), applied to the **pre-activation** (dictionary_learning #55 applied the
    L0 step to the output). Training loss = batch FVU + ``l0_coef`` * w(step) * ``(L0 / target_l0 - 1)^2``, L0 the
    batch's mean count of active units; ``w`` rises from 0 to 1 over ``sparsity_warmup`` of the steps. Both the
    jump and the count pass gradients to ``theta`` through straight-through estimators with a rectangle kernel of
    width ``bandwidth`` (``_JumpReLU``, ``_Step``); ``bandwidth`` is ``relative_bandwidth`` times the training
    images' RMS norm ``sqrt(E||x - b_pre||^2)`` (set by ``prepare_training_``, a buffer), since the published 0.001
    assumes inputs scaled to ``E||x||^2 = 1`` (SAELens #494); ``theta`` is a plain parameter, not a logarithm
    (SAELens #718: log-thresholds stall under Adam), started where each unit fires on ``target_l0 / H`` of the
    images (``prepare_training_``; the recipe starts every threshold at 0.001, i.e. at L0 ~ H / 2). Atoms are
    kept at unit norm. Training decodes sparsely: the entries it reads are the active units and the units
    within half a bandwidth below their threshold, exactly where the dense gradient is non-zero.
    """

    kind = "jumprelu"
    aux_name = "target-L0 loss"

    def __init__(self, d_input: int = 784, d_hidden: int = 1024, target_l0: float = 50.0, l0_coef: float = 1.0,
                 relative_bandwidth: float = 0.001, sparsity_warmup: float = 0.05):
        super().__init__(d_input, d_hidden)
        _check_float("target_l0", target_l0, low=0.0, high=d_hidden, low_open=True)
        _check_float("l0_coef", l0_coef, low=0.0, low_open=True)
        _check_float("relative_bandwidth", relative_bandwidth, low=0.0, low_open=True)
        _check_float("sparsity_warmup", sparsity_warmup, low=0.0, high=1.0, high_open=True)
        self.target_l0, self.l0_coef = float(target_l0), float(l0_coef)
        self.relative_bandwidth, self.sparsity_warmup = float(relative_bandwidth), float(sparsity_warmup)
        self._init_weights_()
        self.register_buffer("bandwidth", torch.tensor(float(relative_bandwidth)))  # []: set by prepare_training_
        self.threshold = nn.Parameter(torch.full((d_hidden,), float(relative_bandwidth)))  # [H]

    @classmethod
    def from_config(cls, cfg: Config) -> JumpReLUAutoencoder:
        """The autoencoder ``cfg`` describes (``d_input``, ``d_hidden``, ``target_l0``, ``jumprelu_l0_coef``,
        ``jumprelu_bandwidth``, ``sparsity_warmup``)."""
        return cls(cfg.d_input, cfg.d_hidden, cfg.target_l0, cfg.jumprelu_l0_coef, cfg.jumprelu_bandwidth,
                   cfg.sparsity_warmup)

    def cutoffs(self) -> torch.Tensor:
        return self.threshold.detach().clamp_min(0)

    @torch.no_grad()
    def prepare_training_(self, x: torch.Tensor) -> None:
        """``b_pre`` at the mean of ``x: [N, D]``, unit-norm atoms, the bandwidth from the images' RMS norm, and
        each unit's threshold at the ``1 - target_l0 / H`` quantile of its pre-activations on the first
        ``_INIT_IMAGES`` images (at least the bandwidth): training starts at the target L0 with every unit firing
        on the same share of images, instead of at L0 ~ H / 2 from dictionary_learning's 0.001."""
        super().prepare_training_(x)
        scale = (x - self.b_pre).pow(2).sum(1).mean().sqrt()
        self.bandwidth.copy_(self.relative_bandwidth * scale)
        pre = self.pre_activations(x[:_INIT_IMAGES])
        start = pre.quantile(1 - self.target_l0 / self.d_hidden, dim=0) if len(pre) else torch.zeros_like(self.b_enc)
        self.threshold.copy_(start.clamp_min(float(self.bandwidth)))

    @torch.no_grad()
    def after_step_(self) -> None:
        super().after_step_()
        self.threshold.clamp_(min=0)

    def training_terms(self, x: torch.Tensor, dormant: torch.Tensor, ctx: TrainingContext) -> TrainingTerms:
        """Batch FVU + the weighted target-L0 loss of ``x: [B, D]`` (``aux``: the unweighted target-L0 loss)."""
        pre = self.pre_activations(x)
        theta, eps = self.threshold, self.bandwidth.to(pre)
        z = _JumpReLU.apply(pre, theta, eps)
        x_hat = self._sparse_decode(z, pre.detach() > theta.detach() - eps / 2, ctx.graph_safe)
        l0 = _Step.apply(pre, theta, eps).sum(1).mean()
        aux = (l0 / self.target_l0 - 1).pow(2)
        batch_fvu = fvu(x_hat, x)
        active = (pre.detach() > theta.detach()).to(torch.float32)
        return TrainingTerms(batch_fvu + self.l0_coef * _warmup(ctx, self.sparsity_warmup) * aux, batch_fvu, aux,
                             l0.detach(), active.sum(0))

    def activation_label(self) -> str:
        return f"JumpReLU's learned thresholds (target L0 {self.target_l0:g})"
