"""ReLU with an L1 penalty (the original sparse autoencoder; Anthropic's April 2024 recipe): the penalty weights
each unit's activation by its atom's norm, the decoder is unconstrained, and dormant units are resampled."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .._util import _check_float
from .base import SparseAutoencoder, TrainingContext, TrainingTerms, _warmup, fvu

if TYPE_CHECKING:
    from ..config import Config


_RESAMPLE_UNTIL = 0.5  # dormant units are resampled after each epoch in this first share of training (then settle)


_RESAMPLE_POOL = 8192  # training images scored to draw the resampled units' directions from


_RESAMPLE_ENCODER_SCALE = 0.2  # a resampled encoder row: its direction times this times the live rows' mean norm


class ReLUL1Autoencoder(SparseAutoencoder):
    """ReLU + L1 sparse autoencoder, ``kind = "relu_l1"``.

    Forward maths: ``z = ReLU(pre)``. Training loss = batch FVU + ``l1_coef`` * w(step) * mean over images of
    ``sum_j z_j ||d_j||`` (the L1 penalty weighted by the atoms' norms, with an **unconstrained** decoder:
    dictionary_learning's ``StandardTrainerAprilUpdate``, which we follow rather than ``||z||_1`` with unit-norm
    atoms); ``w`` rises linearly from 0 to 1 over ``sparsity_warmup`` of the steps. Dead-unit handling:
    **resampling** (Bricken et al. 2023): after each epoch in the first ``_RESAMPLE_UNTIL`` of training, every unit
    dormant for ``Config.dead_after`` images gets the direction of a training image's residual ``x - x_hat``, drawn
    with probability proportional to its squared error among ``_RESAMPLE_POOL`` images: unit-norm atom, encoder row
    ``_RESAMPLE_ENCODER_SCALE`` times the live rows' mean norm, encoder bias 0, Adam state of those rows reset.
    L0 follows ``l1_coef``; the default was chosen on the validation split for L0 ~ 50.
    """

    kind = "relu_l1"
    aux_name = "L1 penalty"

    def __init__(self, d_input: int = 784, d_hidden: int = 1024, l1_coef: float = 5.5e-3,
                 sparsity_warmup: float = 0.05):
        super().__init__(d_input, d_hidden)
        _check_float("l1_coef", l1_coef, low=0.0, low_open=True)
        _check_float("sparsity_warmup", sparsity_warmup, low=0.0, high=1.0, high_open=True)
        self.l1_coef, self.sparsity_warmup = float(l1_coef), float(sparsity_warmup)
        self._init_weights_()

    @classmethod
    def from_config(cls, cfg: Config) -> ReLUL1Autoencoder:
        """The autoencoder ``cfg`` describes (``d_input``, ``d_hidden``, ``l1_coef``, ``sparsity_warmup``)."""
        return cls(cfg.d_input, cfg.d_hidden, cfg.l1_coef, cfg.sparsity_warmup)

    def cutoffs(self) -> torch.Tensor:
        return torch.zeros(self.d_hidden, device=self.W_enc.device)

    def constrain_grads_(self) -> None:
        """Unconstrained decoder: nothing to drop."""

    def after_step_(self) -> None:
        """Unconstrained decoder: atoms keep their norms."""

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        """``z: [B, H]`` -> mean over images of ``sum_j z_j ||d_j||`` (unweighted)."""
        return (z * self.W_dec.norm(dim=1)).sum(1).mean()

    def training_terms(self, x: torch.Tensor, dormant: torch.Tensor, ctx: TrainingContext) -> TrainingTerms:
        """Batch FVU + the weighted L1 penalty of ``x: [B, D]`` (``aux``: the unweighted penalty)."""
        pre = self.pre_activations(x)
        z = torch.relu(pre)
        active = pre.detach() > 0
        x_hat = self._sparse_decode(z, active, ctx.graph_safe)
        batch_fvu, aux = fvu(x_hat, x), self.penalty(z)
        fired = active.to(torch.float32).sum(0)
        return TrainingTerms(batch_fvu + self.l1_coef * _warmup(ctx, self.sparsity_warmup) * aux, batch_fvu, aux,
                             fired.sum() / len(x), fired)

    @torch.no_grad()
    def end_epoch_(self, x: torch.Tensor, since_fired: torch.Tensor, opt: torch.optim.Optimizer,
                   ctx: TrainingContext, epoch: int) -> None:
        """Resample the dormant units (see the class docstring) after epochs in the first ``_RESAMPLE_UNTIL``."""
        if epoch + 1 > _RESAMPLE_UNTIL * ctx.cfg.ae_epochs:
            return
        dead = since_fired >= ctx.cfg.dead_after
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        gen = torch.Generator().manual_seed(ctx.cfg.seed * 1_000_003 + epoch)
        pool = x[torch.randperm(len(x), generator=gen)[:_RESAMPLE_POOL].to(x.device)]
        residual = pool - self(pool)
        weights = residual.pow(2).sum(1).double().cpu()
        if not bool((weights > 0).any()):
            return
        pick = torch.multinomial(weights, n_dead, replacement=n_dead > int((weights > 0).sum()), generator=gen)
        directions = residual[pick.to(x.device)]
        directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-8)
        live_norm = self.W_enc[~dead].norm(dim=1).mean() if bool((~dead).any()) else torch.tensor(1.0)
        units = dead.nonzero()[:, 0]
        self.W_dec[units] = directions
        self.W_enc[units] = directions * _RESAMPLE_ENCODER_SCALE * live_norm
        self.b_enc[units] = 0
        for param in (self.W_dec, self.W_enc, self.b_enc):
            for state in opt.state.get(param, {}).values():
                if isinstance(state, torch.Tensor) and state.shape[:1] == param.shape[:1]:
                    state[units] = 0
        since_fired[units] = 0

    def activation_label(self) -> str:
        return f"ReLU (L1 coefficient {self.l1_coef:g})"
