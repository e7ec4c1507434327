"""Helpers used by more than one test file: constants, hand-built models and images, a hand-made test set
with known predictions and a hand-made validation result. A helper that one file uses stays in that file;
fixtures are in the ``conftest.py`` files.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import ksae_helpers as kh

CPU = torch.device("cpu")
N_TRAIN, N_TEST, D = 60_000, 10_000, 784  # Fashion-MNIST: training images, test images, pixels per image
SIDE = 28
DT = torch.float64
TINY = dict(train_subset=1000, ae_epochs=1, clf_epochs=1, seed=0)  # the smallest training run
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # the pages' browser tests
CHROMEDRIVER = shutil.which("chromedriver")


def require_browser(test: str, chromium: str | None, chromedriver: str | None) -> None:
    """Skip, saying why, unless both the browser and its driver are installed (never pass silently)."""
    if chromium is None or chromedriver is None:
        pytest.skip(f"no browser: {test} needs Debian's `chromium` and `chromium-driver` "
                    f"(found chromium={chromium}, chromedriver={chromedriver}); CI installs them with apt")


def start_chromium(test: str, page_load_timeout: float = 30, script_timeout: float | None = None):
    """A headless Chromium driven by the system chromedriver (Selenium), or a skip naming ``test``."""
    require_browser(test, CHROMIUM, CHROMEDRIVER)
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"{test} needs selenium (requirements-test.txt)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(page_load_timeout)
    if script_timeout is not None:
        driver.set_script_timeout(script_timeout)
    return driver


def state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


SMALL_KNOBS = {"topk": dict(k=8), "batchtopk": dict(k=8), "matryoshka": dict(k=8, matryoshka_prefixes=(8, 32)),
               "jumprelu": dict(target_l0=8.0), "relu_l1": {}}  # each kind's sparsity knobs for d_hidden = 64


def kind_config(kind: str, **over) -> kh.Config:
    """A valid small configuration of autoencoder ``kind``: 64 units, the kind's knobs for ~8 active units."""
    return kh.Config(**{"sae_kind": kind, "d_hidden": 64, "clf_hidden": (32, 16), **SMALL_KNOBS[kind], **over})


def kind_pipeline(kind: str, seed: int = 0, dtype=torch.float32) -> kh.SparseCodePipeline:
    """A small untrained pipeline of autoencoder ``kind`` (``kind_config``) whose inference state is set as
    training would leave it: BatchTopK's threshold and JumpReLU's thresholds at values that keep ~8 of 64 units
    active on object images, so the threshold rules really cut."""
    torch.manual_seed(seed)
    cfg = kind_config(kind)
    sae, clf = kh.autoencoder_from_config(cfg), kh.SparseCodeClassifier.from_config(cfg)
    pipe = kh.SparseCodePipeline(sae, clf).to(dtype).eval()
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(64, generator=torch.Generator().manual_seed(seed)))
        pre = sae.pre_activations(object_images(64, seed=seed, dtype=dtype))
        if hasattr(sae, "threshold") and sae.threshold.ndim == 0:  # one threshold for every unit
            sae.threshold.fill_(float(pre.flatten().quantile(1 - 8 / 64)))
        elif hasattr(sae, "threshold"):  # one per unit
            sae.threshold.copy_(pre.quantile(1 - 8 / 64, dim=0).clamp_min(0.01))
    return pipe


def fresh_sae(k: int, data: kh.FashionMNIST, seed: int = 0) -> kh.KSparseAutoencoder:
    torch.manual_seed(seed)
    sae = kh.KSparseAutoencoder(k=k)
    sae.init_pre_bias_(data.x_train[:2000])
    return sae.eval()


# --- hand-made images, a small float32 pipeline, ROAD's imputation solved directly --------------------------

def make_pipeline(seed=0):
    torch.manual_seed(seed)
    cfg = kh.Config(k=8, d_hidden=64, clf_hidden=(32, 16))
    sae, clf = kh.KSparseAutoencoder.from_config(cfg), kh.SparseCodeClassifier.from_config(cfg)
    return kh.SparseCodePipeline(sae, clf).eval()


def object_images(n, seed=0, dtype=torch.float32):
    """Hand-made images: a bright random rectangle (the object) on a black background."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, SIDE, SIDE, dtype=dtype)
    for i in range(n):
        r0, c0 = torch.randint(2, 10, (2,), generator=g).tolist()
        h, w = torch.randint(8, 16, (2,), generator=g).tolist()
        x[i, r0:r0 + h, c0:c0 + w] = 0.3 + 0.7 * torch.rand(h, w, generator=g, dtype=dtype)
    return x.reshape(n, D)


def road_direct(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's imputation by a direct sparse solve: every removed pixel equals the weighted mean of its
    in-image neighbours (1/6 direct, 1/12 diagonal, weights renormalised over the in-image ones)."""
    from scipy.sparse import lil_matrix
    from scipy.sparse.linalg import spsolve

    idx = np.flatnonzero(removed)
    var = -np.ones(D, dtype=int)
    var[idx] = np.arange(len(idx))
    a, b = lil_matrix((len(idx), len(idx))), np.zeros(len(idx))
    for n, i in enumerate(idx):
        r, c = divmod(i, SIDE)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if (dr, dc) == (0, 0) or not (0 <= rr < SIDE and 0 <= cc < SIDE):
                    continue
                w = 1 / 12 if dr and dc else 1 / 6
                a[n, n] += w
                j = rr * SIDE + cc
                if var[j] >= 0:
                    a[n, var[j]] -= w
                else:
                    b[n] += w * img[j]
    out = img.copy()
    out[idx] = spsolve(a.tocsc(), b)
    return out


# --- the checks' synthetic batch (the ``images`` fixture of tests/checks/conftest.py) -----------------------

N = 200  # images in the batch


# --- a hand-built pipeline whose path from 0 to PIXEL is known by hand (completeness, unit causality) -------

def hand_pipeline(bias, slope, weights, k, sae=None):
    """Pipeline whose path from 0 to ``PIXEL`` has pre-activations ``bias + alpha * slope`` and whose target
    logit (class 0) is ``weights . z`` (identity hidden layers; z >= 0 passes every ReLU). ``sae``: another
    autoencoder of ``len(bias)`` units to use instead of top-k at ``k`` (its encoder is overwritten)."""
    h = len(bias)
    sae = (kh.KSparseAutoencoder(k=k, d_hidden=h) if sae is None else sae).double()
    clf = kh.SparseCodeClassifier(d_hidden=h, hidden=(h, h), n_classes=2, dropout=0.0).double()
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = torch.tensor(slope, dtype=torch.float64)
        sae.b_enc.copy_(torch.tensor(bias, dtype=torch.float64))
        sae.b_pre.zero_()
        clf.W1.copy_(torch.eye(h, dtype=torch.float64))
        clf.b1.zero_()
        clf.rest[2].weight.copy_(torch.eye(h, dtype=torch.float64))
        clf.rest[2].bias.zero_()
        clf.rest[5].weight.zero_()
        clf.rest[5].weight[0] = torch.tensor(weights, dtype=torch.float64)
        clf.rest[5].bias.zero_()
    return kh.SparseCodePipeline(sae, clf).eval()


PIXEL = torch.zeros(1, 784, dtype=torch.float64)
PIXEL[0, 0] = 1.0
TARGET = torch.zeros(1, dtype=torch.long)


# --- a hand-made test set with hand-set predictions (selection and its summary) -----------------------------

CLASSES = ("a", "b", "c", "d")


SCENARIO_SCALE = 32  # the scenario's image i has every pixel i / SCENARIO_SCALE (exact, in [0, 1])


def _scenario():
    """Test set of 4 classes with hand-set predictions: (data, probabilities [N, 4]).

    a: 10 correct at 0.9; b: 2 correct at 0.9, correct at 0.5/0.6/0.7, one wrong;
    c: none above 0.8, correct at 0.3/0.7/0.6, wrong at 0.95; d: no correct image.
    """
    rows = ([(0, 0, 0.9)] * 10 + [(1, 1, 0.9)] * 2 + [(1, 1, 0.5), (1, 1, 0.6), (1, 1, 0.7), (1, 0, 0.9)]
            + [(2, 2, 0.3), (2, 2, 0.7), (2, 2, 0.6), (2, 1, 0.95)] + [(3, 0, 0.9), (3, 2, 0.9)])
    y = torch.tensor([r[0] for r in rows])
    probs = torch.zeros(len(rows), len(CLASSES))
    for i, (_, pred, conf) in enumerate(rows):
        probs[i] = (1 - conf) / (len(CLASSES) - 1)
        probs[i, pred] = conf
    x = (torch.arange(len(rows), dtype=torch.float32)[:, None] / SCENARIO_SCALE).expand(-1, 784).contiguous()
    data = kh.FashionMNIST(x[:0], y[:0], x, y, classes=CLASSES)
    return data, probs


# --- a hand-made validation result (verdicts and their markdown) --------------------------------------------

def _summary(mean, half=0.01):
    return {"mean": mean, "ci95": [mean - half, mean + half], "std": 0.0, "n": 10}


def _fake_validation(ig_zero=True, ig_road=False, seedless=False):
    """A hand-made ``run_validation`` result: IG beats random on zero and blur but (optionally) not on ROAD;
    simple gradients falls to its randomization reference, IG does not; decoder-weighted's unit order wins."""
    subs = ("zero", "blur", "road")
    beats = {"integrated/signed": {"zero": ig_zero, "blur": True, "road": ig_road},
             "simple/signed": {s: False for s in subs}}
    obj = {s: s == "zero" for s in subs}  # beats the object-pixel random order on the zero substrate only
    faith = {"substrates": {s: {"orderings": {k: {"gap": _summary(0.5 if b[s] else -0.1),
                                                  "vs_random_object": {"mean_diff": 0.2 if obj[s] else -0.2}}
                                              for k, b in beats.items()}} for s in subs},
             "verdicts": {k: {"beats_random": b, "rank": {s: 1 + (k != "integrated/signed") for s in subs},
                              "beats_random_object": obj} for k, b in beats.items()}}
    stages = ["classifier layer 3 (logits)", "encoder", "decoder atoms"]
    sim = {"integrated": 0.8, "simple": 0.02}  # similarity to the original map after each stage
    rand = {"stages": stages, "reference": {m: {p: _summary(0.05) for p in ("all", "object")} for m in sim},
            "variants": {v: {p: {m: [_summary(s)] * 3 for m, s in sim.items()} for p in ("all", "object")}
                         for v in ("cascading", "independent")}}
    comp = {"method": "gausslegendre", "n_steps": 50, "tolerance": 0.01,
            "table": {"gausslegendre": {"50": {"median_rel_error": 0.2}}}}
    return {"faithfulness": faith, "randomization": rand, "completeness": comp}
