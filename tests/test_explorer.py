"""The image explorer: the writer's checks and embedded data, then the page in a real headless Chromium
(Selenium with the system chromedriver) against the Python functions: logits, active set, reconstruction, unit
contributions, decoder-weighted, integrated-gradient, gradient and occlusion maps, steering, k at inference, the
links to the unit browser; and for every other autoencoder kind, a small trained pipeline's page, whose JavaScript
computes that kind's activation. The comparison must fail on a page with the pre-encoder bias, a ReLU or a
threshold dropped, or occlusion's encoder columns read wrongly.

Relative error of a quantity on one image: max |page - Python| / max |Python| over its entries."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import start_chromium

import ksae_helpers as kh
from ksae.explorer import _float16_error

TOLERANCE = 1e-4  # the bound on the relative error of every quantity
N_IMAGES = 50  # test images compared (spread over the test set)
QUANTITIES = ("logits", "recon", "contributions", "decoderMap", "ig", "gradient", "occlusion")
MUTATIONS = {  # what a broken page would do: drop the pre-encoder bias, the code's ReLU, the classifier's ReLUs
    "pre-encoder bias": ("xc[p] = x[p] - M.b_pre[p];  // PRE_BIAS", "xc[p] = x[p];"),
    "code ReLU": ("val[t] = Math.max(0, pre[idx[t]]);  // RELU", "val[t] = pre[idx[t]];"),
    "classifier ReLU": ("const relu = h => h.map(v => Math.max(0, v));  // HIDDEN_RELU", "const relu = h => h;"),
    "occlusion's encoder columns": ("for (let j = 0, o = q; j < H; j++, o += D)",  # W_enc read as if column-major
                                    "for (let j = 0, o = q * H; j < H; j++, o += 1)"),
}


def _drawn_image() -> np.ndarray:
    """A drawing as a user makes one: a bright stroke (some values beyond 1) and an erased patch (below 0)."""
    img = np.zeros((28, 28))
    img[6:22, 9:12] = 1.4
    img[6:9, 9:20] = 0.8
    img[12:14, 15:18] = -0.3
    return img.ravel()


def _rel(page, reference) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.abs(np.asarray(page, dtype=np.float64) - reference).max() / max(np.abs(reference).max(), 1e-30))


def _errors(results: list[dict], reference: dict) -> dict[str, np.ndarray]:
    """Per quantity, the relative error of each image; ``active``: 1 where the active set differs."""
    out = {q: np.array([_rel(r[q], reference[q][i].detach().numpy()) for i, r in enumerate(results)])
           for q in QUANTITIES}
    out["active"] = np.array([r["active"] != torch.nonzero(reference["z"][i] > 0).flatten().tolist()
                              for i, r in enumerate(results)], dtype=float)
    return out


@pytest.fixture(scope="module")
def page(small_pipeline, tmp_path_factory):
    """The explorer and the unit browser of the small trained pipeline, side by side, and the images compared."""
    pipeline, data, cfg = small_pipeline
    folder = tmp_path_factory.mktemp("explorer")
    top = kh.unit_top_contributions(pipeline, data.x_test, torch.device("cpu"))
    stats = kh.unit_statistics(pipeline, data, torch.device("cpu"))
    kh.write_unit_browser(stats, pipeline.sae, data, folder / kh.UNIT_BROWSER_PAGE, top_contributions=top)
    path = kh.write_explorer(pipeline, data, folder / kh.EXPLORER_PAGE, cfg, unit_stats=stats, top_contributions=top)
    ids = np.linspace(0, len(data.x_test) - 1, N_IMAGES).round().astype(int).tolist()
    return path, pipeline, data, cfg, top, ids


def test_writer_rejects_bad_arguments(small_pipeline, tmp_path):
    pipeline, data, cfg = small_pipeline
    out = tmp_path / "e.html"
    cases = [
        (dict(pipeline=pipeline.sae), "pipeline must be a SparseCodePipeline"),
        (dict(data=data.x_test), "data must be the FashionMNIST"),
        (dict(path=tmp_path), "path must name a file, got the folder"),
        (dict(path=3), "path must be a file path"),
        (dict(cfg={"k": 16}), "cfg must be a Config"),
        (dict(cfg=kh.Config()),
         r"cfg \(sae_kind='topk', k=50, d_hidden=1024\) does not describe the pipeline \(sae_kind='topk', k=16, "
         r"d_hidden=128\)"),
        (dict(dtype="float64"), "dtype must be one of"),
        (dict(unit_stats=[]), "unit_stats must be None or the UnitStats"),
        (dict(unit_browser="a\"b.html"), "unit_browser must be the unit browser's relative address"),
        (dict(top_contributions=(np.zeros((3, 2)), np.zeros((3, 2)))), r"top_contributions must be .* \[H = 128"),
    ]
    for override, message in cases:
        args = dict(pipeline=pipeline, data=data, path=out, cfg=cfg) | override
        with pytest.raises(ValueError, match=message):
            kh.write_explorer(**args)
    wide = kh.SparseCodeClassifier(d_hidden=48, hidden=(16,), n_classes=10)
    with pytest.raises(ValueError, match="clf must read the autoencoder's 32 code units"):  # refused when built
        kh.SparseCodePipeline(kh.KSparseAutoencoder(k=4, d_hidden=32), wide)
    mismatched = kh.SparseCodePipeline(kh.KSparseAutoencoder(k=4, d_hidden=32),
                                       kh.SparseCodeClassifier(d_hidden=32, hidden=(16,), n_classes=10)).eval()
    mismatched.clf = wide.eval()  # swapped in afterwards: the writer checks again
    with pytest.raises(ValueError, match="pipeline: the classifier reads 48 code units but the autoencoder has 32"):
        kh.write_explorer(mismatched, data, out, kh.Config(k=4, d_hidden=32))
    tanh = kh.SparseCodePipeline(kh.KSparseAutoencoder(k=4, d_hidden=32),
                                 kh.SparseCodeClassifier(d_hidden=32, hidden=(16,), n_classes=10)).eval()
    tanh.clf.rest[0] = torch.nn.Tanh()
    with pytest.raises(ValueError, match="pipeline: .*Linear layers with ReLU between them; .*Tanh"):
        kh.write_explorer(tanh, data, out, kh.Config(k=4, d_hidden=32))
    three = kh.SparseCodePipeline(kh.KSparseAutoencoder(k=4, d_hidden=32),
                                  kh.SparseCodeClassifier(d_hidden=32, hidden=(16,), n_classes=3)).eval()
    with pytest.raises(ValueError, match="data has 10 classes but the classifier gives 3 logits"):
        kh.write_explorer(three, data, out, kh.Config(k=4, d_hidden=32))
    assert not out.exists()


def test_embedded_data_is_the_model_and_the_test_set(page):
    path, pipeline, data, cfg, top, _ = page
    assert path.stat().st_size <= kh.EXPLORER_MAX_BYTES
    manifest, blob = kh.read_explorer_data(path)
    arrays = manifest["arrays"]

    def array(name, dtype):
        a = arrays[name]
        return np.frombuffer(blob, dtype=dtype, count=a["length"], offset=a["offset"]).reshape(a["shape"])

    np.testing.assert_array_equal(array("W_enc", np.float32), pipeline.sae.W_enc.detach().numpy())
    np.testing.assert_array_equal(array("W1", np.float32), pipeline.clf.W1.detach().numpy())
    np.testing.assert_array_equal(array("W3", np.float32), pipeline.clf.rest[-1].weight.detach().numpy())
    np.testing.assert_array_equal(array("images", np.uint8) / np.float32(255), data.x_test.numpy())
    np.testing.assert_array_equal(array("labels", np.uint8), data.y_test.numpy())
    alphas, weights = kh.ig_quadrature(cfg.ig_steps, cfg.ig_method)
    assert manifest["ig"]["alphas"] == alphas.tolist() and manifest["ig"]["weights"] == weights.tolist()
    assert manifest["k"] == 16 and manifest["hidden"] == [64, 32] and manifest["top_images"][5] == [
        i for i in top[0][5] if i >= 0]


def test_unit_top_contributions_are_the_largest_contributions(small_pipeline):
    pipeline, data, _ = small_pipeline
    x = data.x_test[:400]
    ids, values = kh.unit_top_contributions(pipeline, x, torch.device("cpu"), n=5)
    with torch.no_grad():
        z = pipeline.sae.encode(x)
        pred = pipeline(x).argmax(1)
    _, c = kh.decoder_weighted(pipeline, x, pred, return_contributions=True)
    c = c.masked_fill(z <= 0, -torch.inf).numpy()
    for j in range(0, pipeline.sae.d_hidden, 7):
        fires = np.isfinite(c[:, j])
        expected = np.argsort(-c[:, j], kind="stable")[:min(5, fires.sum())]
        assert ids[j][ids[j] >= 0].tolist() == expected.tolist()
        np.testing.assert_allclose(values[j][:len(expected)], c[expected, j], rtol=1e-6)


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium("the explorer test", page_load_timeout=60, script_timeout=120)
    yield driver
    driver.quit()


def _open(driver, path, hash_: str = "") -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri() + hash_)
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    assert driver.execute_script("return window.__errors") == []


def _page_results(driver, ids: list[int], targets: list[int], drawn: np.ndarray) -> list[dict]:
    """``window.ksae.run`` on the test images ``ids`` then on ``drawn`` (784 values), each for its target."""
    inputs = list(ids) + [drawn.tolist()]
    return driver.execute_script("return arguments[0].map((x, i) => window.ksae.run(x, {target: arguments[1][i]}))",
                                 inputs, list(targets))


def _compare(driver, page) -> tuple[dict, dict, dict]:
    """Errors of the page against the Python functions in float32 (the model as trained) and in float64 (the
    same float32 weights, evaluated exactly), and float32 Python's own error against float64: on the test
    images ``ids`` and the drawing at the trained k, then on a few images at k = H (the k control; there the
    top-k reaches non-positive pre-activations, so the code's ReLU matters: at the trained k it never does for
    this model)."""
    _, pipeline, data, cfg, _, ids = page
    drawn = _drawn_image()
    x = torch.cat([data.x_test[ids], torch.from_numpy(np.clip(drawn, 0, 1)).float()[None]])
    targets = torch.cat([data.y_test[ids], torch.tensor([3])])
    results = _page_results(driver, ids, targets.tolist(), drawn)
    assert results[-1]["clipped"] == int(((drawn < 0) | (drawn > 1)).sum()) > 0
    full = copy.deepcopy(pipeline)
    full.sae.set_k_(full.sae.d_hidden)
    results += driver.execute_script("return arguments[0].map(i => window.ksae.run(i, {k: arguments[1], "
                                     "target: 0}))", ids[:3], full.sae.d_hidden)
    refs = []
    for model in (pipeline, full):
        n = len(x) if model is pipeline else 3
        for dtype in (torch.float32, torch.float64):
            refs.append(kh.explorer_reference(copy.deepcopy(model).to(dtype), cfg, x[:n].to(dtype),
                                   targets[:n] if model is pipeline else torch.zeros(n, dtype=torch.long)))
    ref32 = {q: torch.cat([refs[0][q], refs[2][q].float()]) for q in refs[0]}
    ref64 = {q: torch.cat([refs[1][q], refs[3][q]]) for q in refs[1]}
    own = {q: np.array([_rel(ref32[q][i].detach().numpy(), ref64[q][i].detach().numpy())
                        for i in range(len(results))]) for q in QUANTITIES}
    return _errors(results, ref32), _errors(results, ref64), own


def test_page_equals_the_python_functions(page, browser):
    """On 50 test images and a drawing: every quantity within 1e-4 of the Python functions. float32 Python is
    itself off the exact value where a top-k near-tie along the IG path is decided by float32 rounding; there
    the page must match the exact (float64) value, and such images must be rare."""
    _open(browser, page[0])
    err32, err64, own = _compare(browser, page)
    for q in QUANTITIES:
        assert err64[q].max() <= TOLERANCE, (q, err64[q].max())
        unsure = own[q] > TOLERANCE  # Python's float32 value disagrees with the exact one by more than the bound
        assert unsure.sum() <= 2, (q, own[q][unsure])
        assert err32[q][~unsure].max() <= TOLERANCE, (q, err32[q].max())
    assert err32["active"].sum() == 0 and err64["active"].sum() == 0


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_comparison_fails_on_a_broken_page(page, browser, tmp_path, mutation):
    """Drop the pre-encoder bias or a ReLU in the page's code: the same comparison then fails."""
    original, broken = MUTATIONS[mutation]
    text = page[0].read_text()
    assert text.count(original) == 1
    mutated = tmp_path / "explorer.html"
    mutated.write_text(text.replace(original, broken))
    _open(browser, mutated)
    err32, err64, _ = _compare(browser, page)
    assert max(err64[q].max() for q in QUANTITIES) > 100 * TOLERANCE


def _edited(pipeline, x: torch.Tensor, target: int, edits: list[dict]) -> dict[str, np.ndarray]:
    """The Python pipeline on an edited code of one image ``x: [784]``: logits, contributions, reconstruction."""
    with torch.no_grad():
        z = pipeline.sae.encode(x[None])
        for e in edits:
            z[0, e["unit"]] = e["clamp"] if "clamp" in e else z[0, e["unit"]] * e["scale"]
        logits = pipeline.clf(z)
        c = kh.rescale_contributions(pipeline.clf, z, torch.tensor([target]))
        return {"logits": logits[0], "contributions": c[0], "recon": pipeline.sae.decode(z)[0],
                "decoderMap": (c @ pipeline.sae.W_dec)[0], "z": z[0]}


def test_steering_equals_the_pipeline_on_the_edited_code(page, browser):
    path, pipeline, data, _, _, ids = page
    _open(browser, path)
    for image in ids[:6]:
        with torch.no_grad():
            z = pipeline.sae.encode(data.x_test[image][None])[0]
        active = torch.nonzero(z > 0).flatten().tolist()
        silent = next(j for j in range(pipeline.sae.d_hidden) if z[j] == 0)
        edits = [{"unit": active[0], "scale": 2.5}, {"unit": active[1], "scale": 0}, {"unit": silent, "clamp": 1.7}]
        target = int(data.y_test[image])
        r = browser.execute_script("return window.ksae.run(arguments[0], {target: arguments[1], edits: arguments[2],"
                                   " maps: false})", image, target, edits)
        expected = _edited(pipeline, data.x_test[image], target, edits)
        for q in ("logits", "contributions", "recon", "decoderMap", "z"):
            assert _rel(r[q], expected[q].numpy()) <= TOLERANCE, q
    # through the page's controls: clamp a unit, then the dose-response curve of the unit being moved
    browser.execute_script("window.ksae.showImage(arguments[0])", ids[0])
    browser.find_element("id", "clamp-unit").send_keys(str(silent))
    browser.find_element("id", "clamp-value").clear()
    browser.find_element("id", "clamp-value").send_keys("2")
    browser.find_element("id", "clamp").click()
    shown = browser.execute_script("const r = window.ksae.state.last; return [Array.from(r.logits), r.target]")
    expected = _edited(pipeline, data.x_test[ids[0]], shown[1], [{"unit": silent, "clamp": 2.0}])
    assert _rel(shown[0], expected["logits"].numpy()) <= TOLERANCE
    assert browser.find_element("css selector", f'#units tr[data-unit="{silent}"]').get_attribute("class") == \
        "edited moving"
    dose = browser.execute_script("return window.ksae.dose(arguments[0])", silent)
    for s, p in zip(dose["scales"][::10], dose["probs"][::10]):
        logits = _edited(pipeline, data.x_test[ids[0]], shown[1], [{"unit": silent, "clamp": 2.0 * s}])["logits"]
        assert abs(p - logits.softmax(0)[shown[1]].item()) <= TOLERANCE
    browser.find_element("id", "reset").click()
    assert browser.execute_script("return window.ksae.state.edits.size") == 0


def test_k_at_inference_is_a_control_on_the_same_model(page, browser):
    path, pipeline, data, cfg, _, ids = page
    _open(browser, path)
    other = copy.deepcopy(pipeline)
    other.sae.set_k_(8)
    x, y = data.x_test[ids[:5]], data.y_test[ids[:5]]
    results = browser.execute_script("return arguments[0].map((i, n) => window.ksae.run(i, {k: 8, target: "
                                     "arguments[1][n]}))", ids[:5], y.tolist())
    errors = _errors(results, kh.explorer_reference(other, cfg, x, y))
    assert max(errors[q].max() for q in QUANTITIES) <= TOLERANCE and errors["active"].sum() == 0
    assert all(len(r["active"]) <= 8 for r in results)
    k = browser.find_element("id", "k")
    k.clear()
    k.send_keys("8\n")
    assert "Control: top-k re-run at k = 8" in browser.find_element("id", "k-note").text
    assert f"trained at k = {cfg.k}" in browser.find_element("id", "k-note").text


def test_page_refuses_bad_units_and_clips_drawings(page, browser):
    path, pipeline, data, _, _, _ = page
    _open(browser, path)
    h = pipeline.sae.d_hidden
    for unit in (h, -1, 2.5):
        assert browser.execute_script("return window.ksae.clampUnit(arguments[0], 1)", unit) is False
        assert f"unit {unit} is not in the dictionary: unit ids are integers from 0 to {h - 1}" in \
            browser.find_element("id", "message").text
    error = browser.execute_script("try { window.ksae.run(0, {edits: [{unit: arguments[0], scale: 2}]}); "
                                   "return null } catch (e) { return e.message }", h)
    assert error.startswith(f"unit {h} is not in the dictionary")
    assert browser.execute_script("return window.ksae.showUnitImages(arguments[0])", h) is False
    drawn = _drawn_image()
    browser.execute_script("window.ksae.setPixels(arguments[0])", drawn.tolist())
    n = int(((drawn < 0) | (drawn > 1)).sum())
    assert browser.find_element("id", "message").text == f"{n} drawn value(s) outside [0, 1] were clipped to [0, 1]"
    assert "clipped to [0, 1]" in browser.find_element("id", "clip-note").text
    shown = browser.execute_script("return Array.from(window.ksae.state.last.logits)")
    with torch.no_grad():
        expected = pipeline(torch.from_numpy(np.clip(drawn, 0, 1)).float()[None])[0]
    assert _rel(shown, expected.numpy()) <= TOLERANCE


def test_links_both_ways(page, browser):
    path, pipeline, data, _, top, ids = page
    image = ids[3]
    browser.get("about:blank")  # a fresh load, not a hash change
    _open(browser, path, f"#image-{image}")
    assert browser.execute_script("return window.ksae.state.image") == image
    with torch.no_grad():
        active = sorted(torch.nonzero(pipeline.sae.encode(data.x_test[image][None])[0] > 0).flatten().tolist())
    links = browser.execute_script("return [...document.querySelectorAll('#units a')].map(a => a.getAttribute('href'))")
    assert sorted(links) == sorted(f"{kh.UNIT_BROWSER_PAGE}#unit-{j}" for j in active)
    unit = active[0]
    browser.execute_script("window.ksae.showUnitImages(arguments[0])", unit)
    thumbs = browser.execute_script("return [...document.querySelectorAll('#unit-thumbs canvas')].map(c => "
                                    "Number(c.dataset.testId))")
    assert thumbs == [i for i in top[0][unit] if i >= 0]
    browser.find_element("css selector", f'#units a[href="{kh.UNIT_BROWSER_PAGE}#unit-{unit}"]').click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return document.body.dataset.ready === '1' && !!document.getElementById('detail')"))
    assert browser.find_element("id", "detail").get_attribute("data-unit") == str(unit)
    back = browser.execute_script("return [...document.querySelectorAll('#detail a.explorer-link')].map(a => "
                                  "a.getAttribute('href'))")
    assert back == [f"{kh.EXPLORER_PAGE}#image-{i}" for i in top[0][unit] if i >= 0] and back
    browser.find_element("css selector", "#detail a.explorer-link").click()
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "return !!window.ksae && document.body.dataset.ready === '1'"))
    assert browser.execute_script("return window.ksae.state.image") == top[0][unit][0]


def test_float16_page_states_its_measured_error(page, browser, tmp_path):
    _, pipeline, data, cfg, top, ids = page
    path = kh.write_explorer(pipeline, data, tmp_path / "half.html", cfg, top_contributions=top, dtype="float16")
    error = _float16_error(pipeline, data.x_test)
    manifest, _ = kh.read_explorer_data(path)
    assert manifest["float16_error"] == error > 0
    _open(browser, path)
    import re

    stated = re.search(r"at most (\S+) of the largest \|logit\|", browser.find_element("id", "dtype-note").text)
    assert stated is not None and abs(float(stated.group(1)) - error) <= 0.05 * error
    rounded = copy.deepcopy(pipeline)
    with torch.no_grad():
        for param in rounded.parameters():
            param.copy_(param.half().float())
        expected = rounded(data.x_test[ids[:5]])
    results = browser.execute_script("return arguments[0].map(i => window.ksae.run(i, {maps: false}))", ids[:5])
    for r, e in zip(results, expected):
        assert _rel(r["logits"], e.numpy()) <= TOLERANCE


def test_page_controls_show_what_python_computes(page, browser):
    """Through the page's own controls: the probabilities it prints, a slider dragged (its row stays while it
    moves), and a stroke drawn with the pointer on the canvas."""
    from selenium.webdriver.common.action_chains import ActionChains

    path, pipeline, data, _, _, ids = page
    _open(browser, path, f"#image-{ids[1]}")
    with torch.no_grad():
        probs = pipeline(data.x_test[ids[1]][None]).softmax(1)[0]
    text = browser.find_element("id", "probs").text
    for name, p in zip(data.classes, probs.tolist()):
        assert f"{name} {100 * p:.1f} %" in text
    unit = int(browser.execute_script("return document.querySelector('#units tbody tr').dataset.unit"))
    row = browser.find_element("css selector", f'#units tr[data-unit="{unit}"]')
    for scale in ("2.5", "0.5"):
        browser.execute_script("const s = arguments[0].querySelector('input'); s.focus(); s.value = arguments[1]; "
                               "s.dispatchEvent(new Event('input'))", row, scale)
        assert browser.execute_script("return document.activeElement.dataset.unit") == str(unit)  # same slider
        shown = browser.execute_script("const r = window.ksae.state.last; return [Array.from(r.logits), r.target]")
        expected = _edited(pipeline, data.x_test[ids[1]], shown[1], [{"unit": unit, "scale": float(scale)}])
        assert _rel(shown[0], expected["logits"].numpy()) <= TOLERANCE
    assert "×0.5" in row.text and "moving" in row.get_attribute("class")
    browser.find_element("id", "clear").click()
    draw = browser.find_element("id", "draw")
    ActionChains(browser).move_to_element_with_offset(draw, -40, -60).click_and_hold().move_by_offset(0, 120) \
        .move_by_offset(60, 0).release().perform()
    pixels = np.array(browser.execute_script("return Array.from(window.ksae.state.pixels)"))
    assert pixels.max() == 1.0 and pixels.min() == 0.0 and (pixels > 0).sum() > 20
    shown = browser.execute_script("return Array.from(window.ksae.state.last.logits)")
    with torch.no_grad():
        expected = pipeline(torch.from_numpy(pixels).float()[None])[0]
    assert _rel(shown, expected.numpy()) <= TOLERANCE
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "class-pick")).select_by_visible_text("Bag")  # the next image of a class
    image = browser.execute_script("return window.ksae.state.image")
    assert data.classes[int(data.y_test[image])] == "Bag"
    assert not browser.execute_script("return window.ksae.state.drawn")
    assert browser.execute_script("return window.__errors") == []


# --- every autoencoder kind: the page computes that kind's own activation -----------------------------------------

KIND_IMAGES = 12  # test images compared per kind
THRESHOLD_MUTATION = ("if (pre[j] > c) {", "if (pre[j] > c - 0.5) {")  # a page that lets units below the cutoff in


@pytest.fixture(scope="module")
def kind_pages(data, tmp_path_factory):
    """Per kind other than top-k, a small trained pipeline (128 units, ~16 active) and its page, built when first
    asked for."""
    pages = {}

    def build(kind: str):
        if kind not in pages:
            knobs = {"target_l0": 16.0} if kind == "jumprelu" else {"l1_coef": 0.02} if kind == "relu_l1" else \
                {"k": 16, "matryoshka_prefixes": (16, 64)} if kind == "matryoshka" else {"k": 16}
            cfg = kh.Config(sae_kind=kind, d_hidden=128, clf_hidden=(64, 32), train_subset=2000, ae_epochs=3,
                            clf_epochs=5, ig_steps=16, **knobs)
            sae, clf, _ = kh.train_models(cfg, data, torch.device("cpu"))
            pipeline = kh.SparseCodePipeline(sae, clf).eval()
            path = kh.write_explorer(pipeline, data, tmp_path_factory.mktemp(kind) / kh.EXPLORER_PAGE, cfg)
            ids = np.linspace(0, len(data.x_test) - 1, KIND_IMAGES).round().astype(int).tolist()
            pages[kind] = (path, pipeline, data, cfg, None, ids)
        return pages[kind]
    return build


def _kind_errors(driver, page) -> tuple[dict, list[dict]]:
    """The page against the Python functions in float64 (the same float32 weights, evaluated exactly) on the
    test images ``ids`` and a drawing."""
    _, pipeline, data, cfg, _, ids = page
    drawn = _drawn_image()
    x = torch.cat([data.x_test[ids], torch.from_numpy(np.clip(drawn, 0, 1)).float()[None]])
    targets = torch.cat([data.y_test[ids], torch.tensor([3])])
    results = _page_results(driver, ids, targets.tolist(), drawn)
    reference = kh.explorer_reference(copy.deepcopy(pipeline).double(), cfg, x.double(), targets)
    return _errors(results, reference), results


@pytest.mark.parametrize("kind", [kind for kind in kh.SAE_KINDS if kind != "topk"])
def test_every_kind_page_computes_its_own_activation(kind, kind_pages, browser):
    """The page of a BatchTopK, JumpReLU, ReLU + L1 or Matryoshka pipeline equals the Python functions (its
    activation: the units above the trained thresholds, their number varying per image); it has no k control,
    says so, and refuses a k; a page that lets units below their threshold in fails the same comparison."""
    page = kind_pages(kind)
    path, pipeline, _, _, _, _ = page
    manifest, _ = kh.read_explorer_data(path)
    assert manifest["activation"]["kind"] == kind and manifest["activation"]["rule"] == "threshold"
    _open(browser, path)
    errors, results = _kind_errors(browser, page)
    for q in QUANTITIES:
        assert errors[q].max() <= TOLERANCE, (kind, q, errors[q].max())
    assert errors["active"].sum() == 0
    counts = [len(r["active"]) for r in results]
    assert len(set(counts)) > 1 and max(counts) > 0  # the number of active units varies per image
    assert not browser.find_element("id", "k-control").is_displayed()
    assert "No k to change" in browser.find_element("id", "k-note").text
    assert kind in browser.find_element("id", "activation-note").text
    error = browser.execute_script("try { window.ksae.run(0, {k: 5}); return null } catch (e) { return e.message }")
    assert error.startswith(f"a {kind} autoencoder has no k at inference")
    original, broken = THRESHOLD_MUTATION
    text = path.read_text()
    assert text.count(original) == 1
    mutated = path.with_name("mutated.html")
    mutated.write_text(text.replace(original, broken))
    _open(browser, mutated)
    errors, _ = _kind_errors(browser, page)
    assert max(errors[q].max() for q in QUANTITIES) > 100 * TOLERANCE
