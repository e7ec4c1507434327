"""The HTML unit browser: its embedded data against ``unit_table`` (what summary.json holds), and the page
in a real headless Chromium (Selenium with the system chromedriver): every unit listed, the class filter,
a unit's detail panel and its images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import require_browser, start_chromium
from planted_units import PLANTED_CLASS, UNIT_A, UNIT_B, _planted_data, _planted_pipeline

import ksae_helpers as kh

MAX_BYTES = 15 * 2**20  # the size limit for the page


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    data = _planted_data()
    pipeline = _planted_pipeline()
    stats = kh.unit_statistics(pipeline, data, torch.device("cpu"))
    path = kh.write_unit_browser(stats, pipeline.sae, data, tmp_path_factory.mktemp("browser") / "units.html")
    return path, stats, data, pipeline


def test_embedded_data_matches_the_summary_table(page):
    path, stats, _, _ = page
    embedded = kh.read_unit_browser_data(path)
    table = kh.unit_table(stats)
    assert [u["unit"] for u in embedded["units"]] == list(range(len(table)))
    for row, unit in zip(table, embedded["units"]):
        assert {key: unit[key] for key in row} == row
    a, b = table[UNIT_A], table[UNIT_B]
    assert a["majority_class"] == kh.CLASS_NAMES[PLANTED_CLASS] and a["purity"] == 1.0 and a["ablation_effect"] < 0
    assert b["dead"] and b["majority_class"] is None and b["purity"] is None
    assert path.stat().st_size < MAX_BYTES


def test_embedded_images_and_tiles_are_the_data(page):
    """The sprites decode (Pillow) to the test images the data names and to the atoms, tile by tile."""
    import base64
    import io
    import re

    from PIL import Image

    path, stats, data, pipeline = page
    html = path.read_text()
    sprites = re.findall(r'id="(\w+)-sprite" alt="" hidden src="data:image/png;base64,([^"]+)"', html)
    embedded = kh.read_unit_browser_data(path)
    decoded = {name: np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))) for name, b64 in sprites}

    def tile(sheet, i, columns):
        r, c = divmod(i, columns)
        return sheet[28 * r:28 * (r + 1), 28 * c:28 * (c + 1)].astype(float)

    ids = embedded["image_ids"]
    assert set(ids) == set(stats.top_images[stats.top_images >= 0]) | set(stats.band_images[stats.band_images >= 0])
    for i in (0, len(ids) - 1):
        expected = np.round(255 * data.x_test[ids[i]].numpy().reshape(28, 28))
        np.testing.assert_array_equal(tile(decoded["image"], i, embedded["image_columns"]), expected)
    atom = pipeline.sae.W_dec[UNIT_A].detach().numpy().reshape(28, 28)
    scale = embedded["units"][UNIT_A]["atom_scale"]
    restored = (tile(decoded["atom"], UNIT_A, embedded["atom_columns"]) / kh.SIGNED_TILE_ZERO - 1) * scale
    np.testing.assert_allclose(restored, atom, atol=scale / kh.SIGNED_TILE_ZERO)


def test_write_unit_browser_rejects_mismatched_inputs(page, tmp_path):
    path, stats, data, _ = page
    with pytest.raises(ValueError, match="UnitStats"):
        kh.write_unit_browser({}, kh.KSparseAutoencoder(k=3, d_hidden=12), data, tmp_path / "x.html")
    with pytest.raises(ValueError, match="12 units but the autoencoder has 20"):
        kh.write_unit_browser(stats, kh.KSparseAutoencoder(k=3, d_hidden=20), data, tmp_path / "x.html")
    with pytest.raises(ValueError, match="no unit-data"):
        kh.read_unit_browser_data(kh.UNIT_BROWSER_TEMPLATE.parent.parent / "LICENSE")


def test_a_missing_browser_skips_with_a_message():
    with pytest.raises(pytest.skip.Exception, match="no browser: .*chromium-driver.*chromedriver=None"):
        require_browser("the unit-browser test", "/usr/bin/chromium", None)


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium("the unit-browser test", page_load_timeout=30)
    yield driver
    driver.quit()


def _wait(driver, script: str, timeout: float = 10.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))


def _listed(driver) -> list[int]:
    return [int(u) for u in driver.execute_script(
        "return [...document.querySelectorAll('#unit-list .unit-row')].map(r => r.dataset.unit)")]


def test_page_in_a_real_browser(page, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    path, stats, _, _ = page
    browser.get(path.resolve().as_uri())
    _wait(browser, "return document.body.dataset.ready === '1'")
    assert browser.execute_script("return window.__errors || []") == []
    assert sorted(_listed(browser)) == list(range(len(stats.freq_test)))  # every unit listed
    name = kh.CLASS_NAMES[PLANTED_CLASS]
    Select(browser.find_element(By.ID, "class-filter")).select_by_value(name)
    expected = [j for j, row in enumerate(kh.unit_table(stats)) if row["majority_class"] == name]
    assert sorted(_listed(browser)) == expected and UNIT_A in expected
    Select(browser.find_element(By.ID, "class-filter")).select_by_value("__dead__")
    assert _listed(browser) == [UNIT_B]
    Select(browser.find_element(By.ID, "class-filter")).select_by_value("")
    browser.find_element(By.ID, "search").send_keys(str(UNIT_A))  # search by id ("0": the only id starting so)
    _wait(browser, f"return document.getElementById('detail').dataset.unit === '{UNIT_A}'")
    detail = browser.find_element(By.ID, "detail").text
    assert stats.descriptions[UNIT_A] in detail
    # every drawn image has pixels: test images are not all black, atoms have colour
    sums = browser.execute_script("""
        return [...document.querySelectorAll('#detail canvas.tile')].map(c =>
            c.getContext('2d').getImageData(0, 0, c.width, c.height).data.reduce((s, v, i) =>
                s + (i % 4 === 3 ? 0 : v), 0));""")
    n_images = (stats.top_images[UNIT_A] >= 0).sum() + (stats.band_images[UNIT_A] >= 0).sum()
    assert len(sums) == 2 + n_images and min(sums) > 0
    natural = browser.execute_script("return ['image-sprite', 'atom-sprite'].map(i => "
                                     "document.getElementById(i).naturalWidth)")
    assert min(natural) > 0


def test_units_list_the_images_where_they_contribute_most(page, tmp_path):
    """With ``unit_top_contributions``, each unit's entry lists those images for the explorer's links."""
    _, stats, data, pipeline = page
    top = kh.unit_top_contributions(pipeline, data.x_test, torch.device("cpu"))
    path = kh.write_unit_browser(stats, pipeline.sae, data, tmp_path / "units.html", top_contributions=top)
    embedded = kh.read_unit_browser_data(path)
    assert embedded["explorer"] == kh.EXPLORER_PAGE
    unit = embedded["units"][UNIT_A]
    assert unit["contributing_images"] == [i for i in top[0][UNIT_A] if i >= 0] and unit["contributing_images"]
    assert set(unit["contributing_images"]) <= set(embedded["image_ids"])  # drawn from the page's image sprite
    assert "contributing_images" not in kh.read_unit_browser_data(page[0])["units"][UNIT_A]
    with pytest.raises(ValueError, match=r"top_contributions must be .* \[H = 12, n\]"):
        kh.write_unit_browser(stats, pipeline.sae, data, tmp_path / "x.html",
                              top_contributions=(np.zeros((3, 2)), np.zeros((3, 2))))


def _planted_stability(pipeline) -> dict:
    """Seed 1: every atom recurs (permuted); seed 2: atoms 0..5 recur, 6..11 are new: units 0..5 stable."""
    atoms = pipeline.sae.W_dec.detach().double()
    gen = torch.Generator().manual_seed(1)
    seed1 = atoms[torch.randperm(len(atoms), generator=gen)]
    seed2 = atoms.clone()
    seed2[6:] = torch.randn(len(atoms) - 6, atoms.shape[1], generator=gen, dtype=torch.float64)
    return kh.seed_stability({0: atoms, 1: seed1, 2: seed2})


def test_units_show_their_seed_stability_sorted_and_filtered(page, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _, stats, data, pipeline = page
    stability = _planted_stability(pipeline)
    assert stability["stable"] == [True] * 6 + [False] * 6
    path = kh.write_unit_browser(stats, pipeline.sae, data, tmp_path / "units.html", stability=stability)
    embedded = kh.read_unit_browser_data(path)
    assert [u["stability"] for u in embedded["units"]] == pytest.approx(stability["min_cosine"], rel=1e-3)
    assert embedded["units"][7]["stability_seeds"][1] == {
        "seed": 2, "cosine": pytest.approx(stability["cosine"]["2"][7], rel=1e-3), "unit": stability["matched"]["2"][7]}
    browser.get(path.resolve().as_uri())
    _wait(browser, "return document.body.dataset.ready === '1'")
    Select(browser.find_element(By.ID, "sort-key")).select_by_value("stability")
    listed = _listed(browser)
    cosines = np.asarray(stability["min_cosine"])
    assert np.all(np.diff(cosines[listed]) <= 1e-3)  # most stable first
    browser.find_element(By.ID, "min-stability").send_keys("0.9")
    _wait(browser, "return document.querySelectorAll('#unit-list .unit-row').length === 6")
    assert sorted(_listed(browser)) == list(range(6))
    browser.find_element(By.ID, "search").send_keys("3")
    _wait(browser, "return document.getElementById('detail').dataset.unit === '3'")
    detail = browser.find_element(By.ID, "detail").text
    assert "seed stability (lowest matched cosine)" in detail and "matched in seed 2" in detail
    plain = kh.write_unit_browser(stats, pipeline.sae, data, tmp_path / "plain.html")  # no stability: no controls
    browser.get(plain.resolve().as_uri())
    _wait(browser, "return document.body.dataset.ready === '1'")
    assert browser.execute_script("return document.getElementById('min-stability') === null && "
                                  "!document.querySelector('option[value=stability]')")


def test_stability_of_another_model_is_refused(page, tmp_path):
    _, stats, data, pipeline = page
    other = kh.seed_stability({0: np.eye(5, 784), 1: np.eye(5, 784)})
    with pytest.raises(ValueError, match="stability describes 5 units but stats describe 12"):
        kh.write_unit_browser(stats, pipeline.sae, data, tmp_path / "u.html", stability=other)
    with pytest.raises(ValueError, match="stability must be the dict of seed_stability"):
        kh.write_unit_browser(stats, pipeline.sae, data, tmp_path / "u.html", stability={"min_cosine": []})
