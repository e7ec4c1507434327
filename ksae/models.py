"""The classifier on the sparse codes and the end-to-end pipeline; the autoencoders themselves are in ``ksae.sae``
(re-exported here: ``KSparseAutoencoder``, ``densify``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._util import _check_float
from .sae import KSparseAutoencoder, SparseAutoencoder, densify

__all__ = ["KSparseAutoencoder", "SparseAutoencoder", "SparseCodeClassifier", "SparseCodePipeline", "densify"]

if TYPE_CHECKING:
    from .config import Config


class SparseCodeClassifier(nn.Module):
    """MLP on sparse codes: ``z: [B, H]`` -> logits ``[B, C]``.

    ``H -> 512 -> 256 -> C`` with ReLU and dropout after each hidden layer (widths from the config).
    ``forward_sparse`` computes the same function from the k active units only (used in training).
    """

    def __init__(self, d_hidden: int = 1024, hidden: Sequence[int] = (512, 256), n_classes: int = 10,
                 dropout: float = 0.3):
        super().__init__()
        _check_float("dropout", dropout, low=0.0, high=1.0, high_open=True)
        first = nn.Linear(d_hidden, hidden[0])  # for PyTorch's default initialisation
        self.W1 = nn.Parameter(first.weight.detach().T.contiguous())  # [H, hidden0], row j = unit j's fan-out
        self.b1 = nn.Parameter(first.bias.detach().clone())  # [hidden0]
        layers: list[nn.Module] = [nn.ReLU(), nn.Dropout(dropout)]
        for w_in, w_out in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden[-1], n_classes))
        self.rest = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg: Config) -> SparseCodeClassifier:
        """The classifier ``cfg`` describes (``d_hidden``, ``clf_hidden``, ``n_classes``, ``dropout``)."""
        return cls(cfg.d_hidden, cfg.clf_hidden, cfg.n_classes, cfg.dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z: [B, H]`` -> logits ``[B, C]``."""
        return self.rest(z @ self.W1 + self.b1)

    def affine_split(self):
        """``(A: [hidden0, H], c: [hidden0], head)`` with ``forward(z) = head(z A^T + c)`` (see attribution)."""
        return self.W1.T, self.b1, self.rest

    def first_layer_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``values, indices: [B, k]`` (the active units) -> first-layer pre-activations ``[B, hidden0]``."""
        return F.embedding_bag(indices, self.W1, per_sample_weights=values, mode="sum") + self.b1

    def forward_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``values, indices: [B, k]`` (the active units) -> logits ``[B, C]``; equals ``forward``."""
        return self.rest(self.first_layer_sparse(values, indices))


class SparseCodePipeline(nn.Module):
    """The model being explained: pixels -> encoder -> the autoencoder's activation -> classifier -> logits.

    ``forward(x: [B, 784]) -> logits: [B, C]``; ``F(x)`` in the attribution docs is one of these logits.
    """

    def __init__(self, sae: SparseAutoencoder, clf: SparseCodeClassifier):
        if not isinstance(sae, SparseAutoencoder) or not isinstance(clf, SparseCodeClassifier):
            raise ValueError(f"SparseCodePipeline(sae, clf) needs a sparse autoencoder (a SparseAutoencoder, e.g. "
                             f"KSparseAutoencoder) and a SparseCodeClassifier, "
                             f"got {type(sae).__name__} and {type(clf).__name__}")
        if clf.W1.shape[0] != sae.d_hidden:
            raise ValueError(f"clf must read the autoencoder's {sae.d_hidden} code units, got a classifier of "
                             f"{clf.W1.shape[0]} inputs (models trained with different d_hidden?)")
        super().__init__()
        self.sae, self.clf = sae, clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_pre(self.sae.pre_activations(x))

    def logits_from_pre(self, pre: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``pre: [B, H]`` -> logits ``[B, C]`` (the autoencoder's activation, then the
        classifier)."""
        return self.clf.forward_sparse(*self.sae.activation(pre))

    def affine_split(self):
        """``(A: [H, D], c: [H], head)`` with ``forward(x) = head(x A^T + c)``: the encoder is affine, so
        attribution along a straight path can move through code space instead of pixel space."""
        return self.sae.W_enc, self.sae.encoder_bias(), self.logits_from_pre
