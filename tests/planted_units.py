"""A hand-built autoencoder and classifier with planted units, and random images for it: unit A fires only on
images of PLANTED_CLASS (they carry a mark) and feeds that class's logit; unit B never fires. Used by the
unit atlas (``test_units.py``), its figures, its summary rows and the unit browser.
"""

from __future__ import annotations

import torch

import ksae_helpers as kh

N_CLASSES = 10
PLANTED_CLASS = 3  # unit A fires only on images of this class and feeds this class's logit
UNIT_A, UNIT_B = 0, 1  # A: planted; B: never fires (dead)
N_HIDDEN = 12  # code units of the hand-built autoencoder
MARK = slice(0, 10)  # pixels set to 1 in every image of PLANTED_CLASS (0 elsewhere)
NOISE = slice(100, 400)  # pixels holding uniform noise in every image
A_GAIN = 2.0  # logit of PLANTED_CLASS = A_GAIN * z_A
NOISE_WEIGHT = 0.1  # encoder weight of a noise unit on its 30 noise pixels: pre-activations in [0, 3)
MARK_BIAS = -5.0  # unit A's bias: pre_A = 10 - 5 = 5 on planted images, -5 elsewhere


def _planted_data(n_train: int = 300, n_test: int = 400, seed: int = 0) -> kh.FashionMNIST:
    """Random images of 10 classes; images of PLANTED_CLASS carry the mark."""
    gen = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n) % N_CLASSES
        x = torch.zeros(n, 784)
        x[:, NOISE] = torch.rand(n, NOISE.stop - NOISE.start, generator=gen)
        x[y == PLANTED_CLASS, MARK] = 1.0
        return x, y

    (x_tr, y_tr), (x_te, y_te) = split(n_train), split(n_test)
    return kh.FashionMNIST(x_tr, y_tr, x_te, y_te)


def _planted_pipeline(seed: int = 0) -> kh.SparseCodePipeline:
    """Unit A reads the mark; unit B has a zero encoder row and a negative bias (never fires); the other
    units each read their own block of noise (pre-activations in [0, 3): they fire, below A's 5). The
    classifier routes A alone into PLANTED_CLASS's logit through one path of hidden units."""
    gen = torch.Generator().manual_seed(seed)
    sae = kh.KSparseAutoencoder(k=3, d_hidden=N_HIDDEN)
    clf = kh.SparseCodeClassifier(N_HIDDEN, (4, 3), N_CLASSES, dropout=0.0)
    with torch.no_grad():
        for p in list(sae.parameters()) + list(clf.parameters()):
            p.zero_()
        sae.W_enc[UNIT_A, MARK] = 1.0
        sae.b_enc[UNIT_A] = MARK_BIAS
        sae.b_enc[UNIT_B] = -1.0
        width = (NOISE.stop - NOISE.start) // (N_HIDDEN - 2)
        for j in range(2, N_HIDDEN):  # each noise unit reads its own block of noise pixels
            sae.W_enc[j, NOISE.start + width * (j - 2):NOISE.start + width * (j - 1)] = NOISE_WEIGHT
        sae.W_dec.copy_(torch.randn(N_HIDDEN, 784, generator=gen))
        sae.unit_norm_decoder_()
        clf.W1[UNIT_A, 0] = 1.0
        clf.rest[2].weight[0, 0] = 1.0
        clf.rest[5].weight[PLANTED_CLASS, 0] = A_GAIN
    return kh.SparseCodePipeline(sae, clf).eval()
