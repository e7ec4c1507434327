"""BatchTopK (Bussmann et al. 2024): the top k x B activations of a whole training batch, so the number of active
units varies per image around k; at inference one threshold, estimated during training, replaces the batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .._util import _check_float, _check_int
from .base import SparseAutoencoder, TrainingContext, TrainingTerms, _row_offsets, fvu
from .topk import auxk_loss

if TYPE_CHECKING:
    from ..config import Config


class BatchTopKAutoencoder(SparseAutoencoder):
    """BatchTopK sparse autoencoder, ``kind = "batchtopk"`` (Bussmann, Leask & Nanda 2024).

    Training, for a batch ``x: [B, D]``: ``pre`` as every kind; the code keeps the ``k * B`` largest entries of
    ``ReLU(pre)`` over the whole batch (``batch_top_k``), so an image may have more or fewer than k; loss = batch
    FVU + ``aux_coef`` * AuxK (as top-k). The inference threshold ``threshold`` (a buffer, saved with the model) is
    an exponential moving average, at rate ``threshold_rate`` per step, of each batch's smallest kept positive
    activation (SAELens' estimator; dictionary_learning's is the same with rate 0.001 from step 1000), started at
    the first batch's value. At inference unit j is active when ``pre_j > threshold`` (and > 0): the number of
    active units per image is measured (``evaluate_autoencoder``'s ``mean_l0``), not k.
    """

    kind = "batchtopk"
    aux_name = "AuxK loss"

    def __init__(self, k: int = 50, d_input: int = 784, d_hidden: int = 1024, threshold_rate: float = 0.01):
        super().__init__(d_input, d_hidden)
        _check_int("k", k, low=1, high=d_hidden, high_name="d_hidden")
        _check_float("threshold_rate", threshold_rate, low=0.0, high=1.0, low_open=True)
        self.k, self.threshold_rate = k, float(threshold_rate)
        self._init_weights_()
        self.register_buffer("threshold", torch.tensor(-1.0))  # []; < 0: not estimated yet (every positive unit passes)

    @classmethod
    def from_config(cls, cfg: Config) -> BatchTopKAutoencoder:
        """The autoencoder ``cfg`` describes (``k``, ``d_input``, ``d_hidden``, ``batchtopk_threshold_rate``)."""
        return cls(cfg.k, cfg.d_input, cfg.d_hidden, cfg.batchtopk_threshold_rate)

    def cutoffs(self) -> torch.Tensor:
        return self.threshold.clamp_min(0).expand(self.d_hidden)

    def batch_top_k(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pre: [B, H]`` -> the ``k * B`` largest entries of ``ReLU(pre)`` over the whole batch: ``(values, flat):
        [k * B]`` with ``flat = row * H + unit``, sorted by ``flat`` (row-major; values may be 0 where fewer than
        ``k * B`` entries are positive)."""
        values, flat = torch.topk(F.relu(pre).flatten(), self.k * len(pre), sorted=False)
        flat, order = flat.sort()
        return values[order], flat

    @torch.no_grad()
    def _update_threshold_(self, values: torch.Tensor) -> None:
        """The EMA step of ``threshold`` from this batch's kept ``values`` (graph-safe: no host sync)."""
        smallest = torch.where(values > 0, values, torch.full_like(values, float("inf"))).min()
        smallest = torch.where(torch.isfinite(smallest), smallest, torch.zeros_like(smallest)).to(self.threshold)
        moved = (1 - self.threshold_rate) * self.threshold + self.threshold_rate * smallest
        self.threshold.copy_(torch.where(self.threshold < 0, smallest, moved))

    def _batch_code(self, x: torch.Tensor, ctx: TrainingContext):
        """Training's shared start: ``(pre: [B, H], values, flat: [k * B], rows, units: [k * B])``; moves the
        threshold."""
        pre = self.pre_activations(x)
        values, flat = self.batch_top_k(pre)
        if self.training:
            self._update_threshold_(values)
        return pre, values, flat, torch.div(flat, self.d_hidden, rounding_mode="floor"), flat % self.d_hidden

    def _decode_flat(self, values: torch.Tensor, flat: torch.Tensor, rows: torch.Tensor, units: torch.Tensor,
                     n_rows: int, graph_safe: bool) -> torch.Tensor:
        """``x_hat: [n_rows, D]`` from the batch code (an embedding-bag sum over the kept entries; dense when
        ``graph_safe``)."""
        if graph_safe:
            z = torch.zeros(n_rows * self.d_hidden, dtype=values.dtype, device=values.device).scatter(0, flat, values)
            return self.decode(z.view(n_rows, self.d_hidden))
        return F.embedding_bag(units, self.W_dec, _row_offsets(rows, n_rows), per_sample_weights=values,
                               mode="sum") + self.b_pre

    def _terms(self, x, pre, values, units, x_hat, losses_fvu, dormant, ctx) -> TrainingTerms:
        """``TrainingTerms`` from the reconstruction loss ``losses_fvu`` and the whole dictionary's ``x_hat``."""
        aux = auxk_loss(self, pre, x - x_hat, dormant, ctx.cfg.aux_k, graph_safe=ctx.graph_safe)
        fired = (values.detach() > 0).to(torch.float32)
        return TrainingTerms(losses_fvu + ctx.cfg.aux_coef * aux, fvu(x_hat, x), aux, fired.sum() / len(x),
                             torch.zeros(self.d_hidden, device=x.device).index_add_(0, units, fired))

    def training_terms(self, x: torch.Tensor, dormant: torch.Tensor, ctx: TrainingContext) -> TrainingTerms:
        """Batch FVU + ``aux_coef`` * AuxK of the batch top-k code of ``x: [B, D]``; moves the threshold."""
        pre, values, flat, rows, units = self._batch_code(x, ctx)
        x_hat = self._decode_flat(values, flat, rows, units, len(x), ctx.graph_safe)
        return self._terms(x, pre, values, units, x_hat, fvu(x_hat, x), dormant, ctx)

    def activation_label(self) -> str:
        return f"BatchTopK's inference threshold {float(self.threshold.clamp_min(0)):.3g} (k = {self.k} in training)"
