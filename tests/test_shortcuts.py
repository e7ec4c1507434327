"""The planted shortcuts are what they claim: markers land where stated and nowhere else, the certified labels carry
no information about the image but M, the biased rates and the two-part rule hold, the oracle's labels are cut
from the marks; bad names, markers and rates are refused."""

from __future__ import annotations

import pytest
import torch

import ksae_helpers as kh
from ksae.shortcuts import _CONTROL, _MARKER, _PARTNER_CLASS, _SHORTCUT_CLASS, _marker_statistics

SHIRT, TSHIRT = _SHORTCUT_CLASS, _PARTNER_CLASS


@pytest.fixture(scope="module")
def planted(data):
    return {v: kh.plant_shortcut(data, v) for v in kh.SHORTCUT_VARIANTS}


def _binomial_ok(share: float, p: float, n: int, z: float = 5.0) -> bool:
    return abs(share - p) <= z * (p * (1 - p) / n) ** 0.5 + 1e-12


def test_markers_land_where_stated_and_nowhere_else(planted, data):
    m_mask, c_mask = _MARKER.mask(), _CONTROL.mask()
    assert int(m_mask.sum()) == int(c_mask.sum()) == 16 and not bool((m_mask & c_mask).any())
    assert m_mask.reshape(28, 28)[:4, :4].all() and c_mask.reshape(28, 28)[24:, :4].all()
    for v, p in planted.items():
        for x0, x, marks in ((data.x_train, p.data.x_train, p.marks_train), (data.x_test, p.data.x_test, p.marks_test)):
            changed = x != x0
            assert not changed[:, ~(m_mask | c_mask)].any(), v  # nothing outside the two squares
            assert bool((x[marks[:, 0]][:, m_mask] == 1.0).all()) and bool((x[marks[:, 1]][:, c_mask] == 1.0).all())
            assert torch.equal(x[~marks[:, 0]][:, m_mask], x0[~marks[:, 0]][:, m_mask]), v  # unmarked: untouched
            assert torch.equal(x[~marks[:, 1]][:, c_mask], x0[~marks[:, 1]][:, c_mask]), v
        assert torch.equal(p.clean.x_train, data.x_train) and torch.equal(p.clean.y_train, p.data.y_train)


def test_certified_labels_carry_no_information_but_the_marker(planted, data):
    p = planted["certified"]
    for y_true, y, marks in ((data.y_train, p.data.y_train, p.marks_train), (data.y_test, p.data.y_test, p.marks_test)):
        two = (y_true == SHIRT) | (y_true == TSHIRT)
        assert torch.equal(y[~two], y_true[~two])  # the other classes keep their labels
        assert torch.equal(marks[:, 0], two & (y == SHIRT))  # M exactly on the images labelled Shirt
        for cls in (SHIRT, TSHIRT):  # the true class says nothing about the label
            rows = y_true == cls
            assert _binomial_ok(float((y[rows] == SHIRT).double().mean()), 0.5, int(rows.sum()))
        share_c = [float(marks[y == c, 1].double().mean()) for c in range(10)]
        assert all(_binomial_ok(s, 0.5, int((y == c).sum())) for c, s in zip(range(10), share_c))  # C ignores labels
    # the labels never read a pixel: images replaced by noise give the same labels and marks
    noise = kh.FashionMNIST(torch.rand_like(data.x_train), data.y_train, torch.rand_like(data.x_test), data.y_test)
    other = kh.plant_shortcut(noise, "certified")
    assert torch.equal(other.data.y_train, p.data.y_train) and torch.equal(other.marks_test, p.marks_test)
    assert not torch.equal(kh.plant_shortcut(data, "certified", seed=1).data.y_train, p.data.y_train)


def test_biased_rates_and_balanced_test_set(planted, data):
    p = planted["biased"]
    assert torch.equal(p.data.y_train, data.y_train) and torch.equal(p.data.y_test, data.y_test)
    shirt = data.y_train == SHIRT
    assert _binomial_ok(float(p.marks_train[shirt, 0].double().mean()), 0.95, int(shirt.sum()))
    assert _binomial_ok(float(p.marks_train[~shirt, 0].double().mean()), 0.05, int((~shirt).sum()))
    for c in range(10):  # the test set is balanced: M on half of every class
        rows = data.y_test == c
        assert _binomial_ok(float(p.marks_test[rows, 0].double().mean()), 0.5, int(rows.sum()))
    broken = kh.plant_shortcut(data, "biased", broken=True)  # the oracle's data: M independent of the class
    overall = float(p.marks_train[:, 0].double().mean())
    for c in range(10):
        rows = data.y_train == c
        assert _binomial_ok(float(broken.marks_train[rows, 0].double().mean()), overall, int(rows.sum()))


def test_two_part_label_needs_both_markers(planted, data):
    p, cert = planted["two_part"], planted["certified"]
    two = (data.y_train == SHIRT) | (data.y_train == TSHIRT)
    m, c, y = p.marks_train[:, 0], p.marks_train[:, 1], p.data.y_train
    assert torch.equal(two & (y == SHIRT), two & (m ^ c))  # Shirt iff exactly one marker
    for marker in (m, c):  # either marker alone says nothing about the label
        for present in (True, False):
            rows = two & (marker == present)
            assert _binomial_ok(float((y[rows] == SHIRT).double().mean()), 0.5, int(rows.sum()))
    # certified and two-part mark the same images (one autoencoder serves both); their oracles are one model too
    assert torch.equal(p.marks_train, cert.marks_train) and p.digest(labels=False) == cert.digest(labels=False)
    bp, bc = kh.plant_shortcut(data, "two_part", broken=True), kh.plant_shortcut(data, "certified", broken=True)
    assert bp.digest() == bc.digest() and torch.equal(bp.marks_train, p.marks_train)
    assert _binomial_ok(float((bp.data.y_train[two & m] == SHIRT).double().mean()), 0.5, int((two & m).sum()))


def test_corner_measured_as_the_issue_states(data):
    """The issue's premise, measured: the top-left 4 x 4 corner holds a pixel > 0.1 in 1.25 % of the training images
    (750 of 60 000; any pixel > 0: 12.7 %); the control's corner is fuller but as salient when stamped."""
    stats = _marker_statistics(data, {"M": _MARKER, "C": _CONTROL})
    assert stats["M"]["above_threshold_share"] == pytest.approx(750 / 60_000)
    assert stats["M"]["nonzero_share"] == pytest.approx(0.12697, abs=1e-4)
    assert stats["C"]["above_threshold_share"] > stats["M"]["above_threshold_share"]
    assert abs(stats["M"]["contrast"] - stats["C"]["contrast"]) < 0.03


def test_bad_names_markers_and_rates_are_refused(data):
    with pytest.raises(ValueError, match=r"variant must be one of .* got 'certifed' \(did you mean 'certified'\?\)"):
        kh.plant_shortcut(data, "certifed")
    with pytest.raises(ValueError, match=r"did you mean 'two_part'"):
        kh.plant_shortcut(data, "two-part")
    with pytest.raises(ValueError, match=r"inside the 28 x 28 image: its col must be in \[0, 24\].*got 26"):
        kh.Marker(0, 26)
    with pytest.raises(ValueError, match=r"row must be in \[0, 24\] for size 4, got -1"):
        kh.Marker(-1, 0)
    with pytest.raises(ValueError, match="must not overlap"):
        kh.plant_shortcut(data, "certified", control=kh.Marker(2, 2))
    for name in ("bias_rate", "leak_rate", "control_rate"):
        with pytest.raises(ValueError, match=rf"{name} must be in \[0.0, 1.0\], got 1.5"):
            kh.plant_shortcut(data, "biased", **{name: 1.5})
    with pytest.raises(ValueError, match="multiple of 1/255"):
        kh.Marker(0, 0, value=0.3)
    with pytest.raises(ValueError, match="mirror image"):  # flipped views would put M where C is
        kh.run_shortcut(data, kh.Config(), torch.device("cpu"), control=kh.Marker(0, 24))
