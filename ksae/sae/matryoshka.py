"""Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK over the whole dictionary, trained so that every
nested prefix of its units reconstructs the images on its own."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .base import TrainingContext, TrainingTerms, _row_offsets, fvu
from .batchtopk import BatchTopKAutoencoder

if TYPE_CHECKING:
    from ..config import Config


class MatryoshkaAutoencoder(BatchTopKAutoencoder):
    """Matryoshka BatchTopK sparse autoencoder, ``kind = "matryoshka"`` (Bussmann, Nabeshima, Karvonen & Nanda
    2025).

    The code is BatchTopK's (``BatchTopKAutoencoder``: top k x B of the batch in training, the EMA threshold at
    inference). The dictionary is read as nested prefixes ``prefixes = (m_1 < m_2 < ... < H)``: the prefix
    reconstruction ``x_hat_g = b_pre + sum_{j < m_g} z_j d_j`` uses only the first ``m_g`` units, and the loss is
    the **mean** over the prefixes of their batch FVUs (dictionary_learning averages; SAELens sums, which is the
    same up to a factor of the number of prefixes) + ``aux_coef`` * AuxK of the whole dictionary's residual. Early
    units so learn the coarse, general directions. ``fvu`` reported per epoch is the whole dictionary's.
    """

    kind = "matryoshka"

    def __init__(self, k: int = 50, d_input: int = 784, d_hidden: int = 1024, threshold_rate: float = 0.01,
                 prefixes: tuple[int, ...] = (32, 128, 512)):
        if (not isinstance(prefixes, (tuple, list)) or not prefixes
                or any(not isinstance(m, int) or isinstance(m, bool) for m in prefixes)
                or list(prefixes) != sorted(set(prefixes)) or not 1 <= prefixes[0] or prefixes[-1] >= d_hidden):
            raise ValueError(f"prefixes must be increasing sizes in [1, d_hidden = {d_hidden}), got {prefixes!r}")
        super().__init__(k, d_input, d_hidden, threshold_rate)
        self.prefixes = (*prefixes, d_hidden)  # the whole dictionary is the last prefix

    @classmethod
    def from_config(cls, cfg: Config) -> MatryoshkaAutoencoder:
        """The autoencoder ``cfg`` describes (``k``, ``d_input``, ``d_hidden``, ``batchtopk_threshold_rate``,
        ``matryoshka_prefixes``)."""
        return cls(cfg.k, cfg.d_input, cfg.d_hidden, cfg.batchtopk_threshold_rate, cfg.matryoshka_prefixes)

    def prefix_reconstructions(self, values: torch.Tensor, rows: torch.Tensor, units: torch.Tensor, n_rows: int,
                               graph_safe: bool = False) -> torch.Tensor:
        """``[n_rows, G, D]``: the reconstruction of each prefix from a batch code (entries ``values, rows, units:
        [n]``, sorted by row then unit). The entries of each (row, prefix group) are one embedding bag (a group's
        bags follow each other because units are sorted), then a cumulative sum over the groups."""
        groups = len(self.prefixes)
        bounds = torch.tensor(self.prefixes[:-1], device=units.device)
        if graph_safe:
            z = torch.zeros(n_rows, self.d_hidden, dtype=values.dtype, device=values.device)
            z = z.index_put((rows, units), values)
            starts = (0, *self.prefixes[:-1])
            parts = torch.stack([z[:, a:b] @ self.W_dec[a:b] for a, b in zip(starts, self.prefixes)], dim=1)
        else:
            bag = rows * groups + torch.bucketize(units, bounds, right=True)
            parts = F.embedding_bag(units, self.W_dec, _row_offsets(bag, n_rows * groups), per_sample_weights=values,
                                    mode="sum").view(n_rows, groups, -1)
        return parts.cumsum(1) + self.b_pre

    def training_terms(self, x: torch.Tensor, dormant: torch.Tensor, ctx: TrainingContext) -> TrainingTerms:
        """Mean of the prefixes' batch FVUs + ``aux_coef`` * AuxK, for ``x: [B, D]``; moves the threshold."""
        pre, values, _, rows, units = self._batch_code(x, ctx)
        recon = self.prefix_reconstructions(values, rows, units, len(x), ctx.graph_safe)  # [B, G, D]
        prefix_fvus = torch.stack([fvu(recon[:, g], x) for g in range(recon.shape[1])])
        return self._terms(x, pre, values, units, recon[:, -1], prefix_fvus.mean(), dormant, ctx)

    def activation_label(self) -> str:
        return (f"Matryoshka BatchTopK's inference threshold {float(self.threshold.clamp_min(0)):.3g} "
                f"(k = {self.k} in training)")
