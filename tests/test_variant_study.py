"""The variants study's comparisons and its explanations against the known answer: an oracle model (the planted
atoms as its dictionary, the rule as its head) meets the answer exactly; differences are named only when they
beat both the bootstrap CI and the seed spread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ksae_helpers as kh
from ksae.variant_study import _answer, _centred_head, _known_answer, _recurrence_difference, _verdict

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py
CPU = torch.device("cpu")


def _oracle(planted):
    """An autoencoder whose code is the planted code (encoder: the atoms' left inverse; decoder: the atoms) and a
    head that computes the rule's class scores exactly (ReLU layers pass non-negative scores unchanged)."""
    atoms = planted.atoms.double()
    n = len(atoms)
    k = int((planted.codes_test > 0).sum(1).max())
    sae = kh.KSparseAutoencoder(k=k, d_hidden=n)
    with torch.no_grad():
        sae.W_dec.copy_(atoms.float())
        sae.W_enc.copy_((torch.linalg.solve(atoms @ atoms.T, atoms) / planted.scale).float())
        sae.b_enc.fill_(-1e-4)  # float noise of the inverse stays below 0: inactive atoms are exactly 0
        sae.b_pre.fill_(planted.offset)
    clf = kh.SparseCodeClassifier(d_hidden=n, hidden=(10, 10), n_classes=10, dropout=0.0)
    with torch.no_grad():
        clf.W1.copy_(planted.rule.T.float())
        clf.b1.zero_()
        for layer in clf.rest:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.copy_(torch.eye(10))
                layer.bias.zero_()
    cfg = kh.Config(k=k, d_hidden=n, clf_hidden=(10, 10), ig_steps=8, smoothgrad_samples=2)
    return sae.eval(), clf.eval(), cfg


def test_the_oracle_meets_the_known_answer_exactly():
    planted = kh.planted_dictionary("incoherent", n_atoms=64, mean_l0=6.0, n_train=1000, n_test=400, seed=0)
    sae, clf, cfg = _oracle(planted)
    with torch.no_grad():
        codes = sae.encode(planted.data.x_test)
    torch.testing.assert_close(codes, planted.codes_test, atol=1e-3, rtol=1e-3)  # the oracle's code is the truth
    rec = kh.recovery_scores(planted.atoms, sae.W_dec.detach(), planted.codes_test, codes)
    assert rec["mcc"] == pytest.approx(1.0) and rec["match"] == list(range(64)) and rec["f1_mean"] > 0.99
    ex = _known_answer(sae, clf, planted, np.arange(64), cfg, CPU, n_per_class=6, seed=0)
    assert ex["accuracy"] == 1.0 and ex["n_images"] == 60
    assert ex["code"]["correlation"]["mean"] > 0.999  # decoder-weighted's unit contributions are exact here
    assert ex["pixels"]["decoder"]["correlation"]["mean"] > 0.999  # and drawn with the atoms, the answer
    assert ex["code"]["null"]["mean"] < 0.7 and ex["code"]["excess"]["ci95"][0] > 0.3  # same-class atoms: a high null
    assert set(ex["pixels"]) == {"integrated", "integrated_empty", "simple", "smoothgrad", "input_x_gradient",
                                 "input_x_smoothgrad", "decoder"}
    scrambled = np.random.default_rng(0).permutation(64)  # a wrong matching loses the code-space answer
    wrong = _known_answer(sae, clf, planted, scrambled, cfg, CPU, n_per_class=6, seed=0)
    assert wrong["code"]["correlation"]["mean"] < 0.3


def test_centred_head_keeps_predictions_and_centres_logits():
    torch.manual_seed(0)
    clf = kh.SparseCodeClassifier(d_hidden=32, hidden=(16, 8), n_classes=10).eval()
    z = torch.rand(50, 32)
    centred = _centred_head(clf)
    with torch.no_grad():
        before, after = clf(z), centred(z)
    torch.testing.assert_close(after, before - before.mean(1, keepdim=True), atol=1e-5, rtol=0)
    assert torch.equal(after.argmax(1), before.argmax(1))
    assert not torch.equal(clf.rest[-1].weight, centred.rest[-1].weight)  # a copy: the caller's head unchanged


def test_a_difference_is_named_only_beyond_the_ci_and_the_seed_spread():
    assert _verdict([0.01, 0.05], [0.3, 0.35], [0.2, 0.25]) == "higher"
    assert _verdict([-0.05, -0.01], [0.2, 0.25], [0.3, 0.35]) == "lower"
    assert _verdict([0.01, 0.05], [0.2, 0.31], [0.3, 0.35]) == "no resolvable difference"  # seed ranges overlap
    assert _verdict([-0.01, 0.05], [0.4, 0.5], [0.2, 0.25]) == "no resolvable difference"  # the CI includes 0


def _rows(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, 784))
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _copies(a: np.ndarray, noise: float, seed: int) -> np.ndarray:
    b = a + noise * np.random.default_rng(seed).normal(size=a.shape) / np.sqrt(a.shape[1])
    return b / np.linalg.norm(b, axis=1, keepdims=True)


def test_recurrence_difference_finds_a_dictionary_that_recurs():
    base = _rows(40, 0)
    recurs = {s: _copies(base, 0.2, s) for s in range(3)}  # every unit comes back in every seed
    new = {s: _rows(40, 10 + s) for s in range(3)}  # nothing comes back
    a, b = kh.recurrence(recurs, recurs, n_boot=200), kh.recurrence(new, new, n_boot=200)
    d = _recurrence_difference(a, b, "shared", seed=0)
    assert d["difference"] == 1.0 and d["verdict"] == "higher" and d["ci95"][0] > 0.9
    assert _recurrence_difference(b, a, "decoder>=0.9", seed=0)["verdict"] == "lower"
    same = _recurrence_difference(a, a, "median_decoder", seed=0)
    assert same["difference"] == 0 and same["verdict"] == "no resolvable difference"


def test_answer_compares_every_variant_with_top_k():
    base = _rows(30, 0)
    rec = kh.recurrence({s: _copies(base, 0.2, s) for s in range(3)}, {s: _copies(base, 0.2, s) for s in range(3)},
                        n_boot=100)
    stability = {"topk": {"trained": rec}, "other": {"trained": rec}}
    rng = np.random.default_rng(0)
    ss = rng.uniform(1, 2, 500)
    raw = {"topk": {"sse": 0.1 * ss, "ss": ss, "correct": rng.random(500) < 0.9, "recovered_correct": np.ones(500)},
           "other": {"sse": 0.2 * ss, "ss": ss, "correct": rng.random(500) < 0.9, "recovered_correct": np.ones(500)}}
    by_seed = {"topk": [{"fvu": f, "pixel_accuracy": 0.9, "accuracy": a} for f, a in ((0.1, 0.9), (0.11, 0.91))],
               "other": [{"fvu": f, "pixel_accuracy": 0.9} for f in (0.2, 0.21)]}
    out = _answer(stability, by_seed, raw)
    assert list(out) == ["other"]
    assert out["other"]["fvu"]["difference"] == pytest.approx(0.1) and out["other"]["fvu"]["verdict"] == "higher"
    assert out["other"]["recurrence"]["shared"]["verdict"] == "no resolvable difference"
    acc = out["other"]["accuracy"]  # a head at seed 0 only: that value is its range; top-k's heads give the spread
    assert acc["range"] == [raw["other"]["correct"].mean()] * 2 and acc["reference_range"] == [0.9, 0.91]


@pytest.mark.parametrize("kwargs, match", [
    (dict(kinds=["sparse"]), "kinds must be autoencoder kinds among"),
    (dict(targets=[20, 20]), "targets must be distinct"),
    (dict(targets=[0]), "targets\\[i\\] must be >= 1"),
    (dict(seeds=[1, 2]), "starting with cfg.seed"),
    (dict(coherences=["noisy"]), "coherences must be among"),
    (dict(data=None), "data must be the FashionMNIST"),
    (dict(cfg={"k": 50}), "cfg must be a Config"),
])
def test_run_variants_refuses_bad_arguments_before_any_work(kwargs, match, tmp_path):
    data = kh.FashionMNIST(torch.zeros(20, 784), torch.arange(20) % 10, torch.zeros(10, 784), torch.arange(10))
    args = {"data": data, "cfg": kh.Config(), **kwargs}
    with pytest.raises(ValueError, match=match):
        kh.run_variants(device=CPU, ckpt_dir=tmp_path, **args)
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written
