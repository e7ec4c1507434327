"""Fixtures shared by several test modules: the dataset, small trained models (each trained once per session),
the hand-built planted-unit model and the hand-made selection scenario. Helpers that are not fixtures are in
``helpers.py`` and ``planted_units.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import CHROMEDRIVER, CHROMIUM, CPU, _scenario  # noqa: E402
from planted_units import _planted_data, _planted_pipeline  # noqa: E402

import ksae.selection  # noqa: E402
import ksae_helpers as kh  # noqa: E402


@pytest.fixture(scope="session")
def data() -> kh.FashionMNIST:
    """The real dataset, loaded once per test session (offline: ``download=False``). The tests need it
    (CI installs ``dataset-fashion-mnist``): if it is absent they fail, they never skip."""
    try:
        return kh.load_fashion_mnist(download=False, verbose=False)
    except kh.DatasetNotFoundError as exc:
        pytest.fail(f"these tests need the real Fashion-MNIST files (CI installs them with "
                    f"`apt-get install dataset-fashion-mnist`):\n{exc}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run this module's many small CPU ops on one thread. With 2+ threads on a shared, busy machine the
    OpenMP workers spin-wait for each other and a training epoch measured 10-14x slower (the whole module
    took 57-140 s instead of 33 s at a load average of ~3.5 on 2 cores); results are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = dict(train_subset=3000, ae_epochs=2, clf_epochs=2, seed=0)


@pytest.fixture(scope="session")
def trained(data):
    """One small training run, shared: ``(cfg, sae, clf, history, W_dec at init)``. Trained on one thread, as the
    modules that use it run (``one_torch_thread``; a session fixture is set up before a module's fixtures)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = kh.Config(**SMALL)
        torch.manual_seed(cfg.seed)
        w_dec_init = kh.KSparseAutoencoder.from_config(cfg).W_dec.detach().clone()  # what train_models starts from
        sae, clf, history = kh.train_models(cfg, data, CPU)
    finally:
        torch.set_num_threads(before)
    return cfg, sae, clf, history, w_dec_init


# trained once per session: the randomization, selection and validation-suite tests use it
@pytest.fixture(scope="session")
def small_pipeline(data):
    cfg = kh.Config(k=16, d_hidden=128, clf_hidden=(64, 32), train_subset=3000, ae_epochs=5, clf_epochs=30,
                    ig_steps=16, smoothgrad_samples=4)
    sae, clf, _ = kh.train_models(cfg, data, torch.device("cpu"))
    return kh.SparseCodePipeline(sae, clf).eval(), data, cfg


# built once per session: the agreement, completeness, randomization and check-figure tests use it
@pytest.fixture(scope="session")
def small():
    torch.manual_seed(0)
    sae = kh.KSparseAutoencoder(k=4, d_hidden=32)
    clf = kh.SparseCodeClassifier(d_hidden=32, hidden=(16, 8), n_classes=3)
    pipe = kh.SparseCodePipeline(sae, clf).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 784, generator=g) * (torch.rand(12, 784, generator=g) > 0.5)
    y = torch.arange(12) % 3
    cfg = kh.Config(k=4, d_hidden=32, clf_hidden=(16, 8), n_classes=3, ig_steps=8, smoothgrad_samples=2)
    maps = kh.attribute_all(pipe, x, y, cfg)
    _, contrib = kh.decoder_weighted(pipe, x, y, return_contributions=True)
    return {"pipe": pipe, "x": x, "y": y, "cfg": cfg, "maps": maps,
            "rand": kh.randomization_check(pipe, x, y, cfg),
            "stats": kh.cross_method_statistics(maps, x=x, labels=y),
            "units": kh.unit_deletion_curves(pipe, x, y, contrib.detach()),
            "comp": kh.ig_completeness(pipe, x, y, n_steps_list=(8, 16)),
            "dec": kh.completeness_decomposition(pipe, x, y, n_steps_list=(8, 200))}


# the planted-unit model's statistics: the unit atlas, its figures and its summary rows use them
@pytest.fixture(scope="module")
def planted():
    data = _planted_data()
    pipeline = _planted_pipeline()
    return data, pipeline, kh.unit_statistics(pipeline, data, torch.device("cpu"))


@pytest.fixture
def scenario(monkeypatch):
    data, probs = _scenario()
    monkeypatch.setattr(ksae.selection, "predict", lambda sae, clf, x, device: probs)
    return data


@pytest.fixture(scope="session")
def variants_tiny(tmp_path_factory):
    """CI's tiny variants study (``benchmarks/variants.py --tiny``), run once: ``(result as JSON holds it, the
    checkpoint folder, the results file, the benchmark module)``. On one torch thread, as ``trained``."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("variants", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path_factory.mktemp("variants")
    ckpt, out = folder / "ckpt", folder / "variants.json"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module.main(["--tiny", "--device", "cpu", "--ckpt-dir", str(ckpt), "--out", str(out)])
    finally:
        torch.set_num_threads(before)
    return json.loads(out.read_text()), ckpt, out, module


@pytest.fixture(scope="session")
def shortcut_tiny(tmp_path_factory):
    """CI's tiny planted-shortcut run (``benchmarks/shortcut.py --tiny``: every model trained, one seed), with the
    certified shortcut model's pages and, where the browser is installed, the explorer screenshot; once per session:
    ``{"module", "args", "result", "folder"}``."""
    spec = importlib.util.spec_from_file_location("shortcut_bench", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "shortcut.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path_factory.mktemp("shortcut")
    args = ["--tiny", "--device", "cpu", "--ckpt-dir", str(folder / "ckpt"), "--out", str(folder / "shortcut.json"),
            "--pages", str(folder / "pages")]
    if CHROMIUM and CHROMEDRIVER:
        args += ["--screenshot", str(folder / "shortcut_explorer.png")]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = module.main(args)
    finally:
        torch.set_num_threads(before)
    return {"module": module, "args": args, "result": result, "folder": folder}
