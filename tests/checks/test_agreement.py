"""ksae.checks.agreement: cross-method statistics, as the excess over a same-class different-image null."""

import numpy as np
import pytest
import torch

import ksae_helpers as kh


def test_cross_method_statistics_on_identical_and_independent_maps():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(50, 784, generator=g)
    stats = kh.cross_method_statistics({"a": m, "b": m.clone(), "c": torch.randn(50, 784, generator=g)})
    same, indep = stats["pairs"]["a|b"], stats["pairs"]["a|c"]
    assert same["spearman_signed"]["mean"] == pytest.approx(1.0)
    assert same["top1pct_iou"]["mean"] == pytest.approx(1.0)
    assert abs(indep["pearson_signed"]["mean"]) < 0.02
    assert indep["pearson_signed"]["ci95"][0] < 0 < indep["pearson_signed"]["ci95"][1]
    mat = kh.correlation_matrix(stats, ["a", "b", "c"])
    assert mat.shape == (3, 3) and mat[0, 1] == pytest.approx(1.0) and mat[1, 0] == mat[0, 1]


def gaussian_spearman(r):
    """Spearman's rho of a bivariate normal with Pearson correlation r."""
    return 6 / np.pi * np.arcsin(r / 2)


def test_agreement_excess_over_the_same_class_null():
    # maps = class template + image-specific part (+ method noise), each of variance 1
    g = torch.Generator().manual_seed(0)
    n, labels = 400, torch.arange(400) % 4
    template, own = torch.randn(4, 784, generator=g)[labels], torch.randn(n, 784, generator=g)
    noise = [torch.randn(n, 784, generator=g) for _ in range(4)]
    maps = {"a": template + own + noise[0], "b": template + own + noise[1],  # share the image: value 2/3, null 1/3
            "c": template + noise[2], "d": template + noise[3]}  # share only the class: value = null = 1/2
    x = 0.01 + 0.99 * torch.rand(n, 784, generator=g)  # every pixel is an object pixel: both pixel sets agree
    stats = kh.cross_method_statistics(maps, seed=0, x=x, labels=labels)
    shared = stats["pairs"]["a|b"]["vs_null"]["spearman_signed_all"]
    assert shared["value"]["mean"] == pytest.approx(gaussian_spearman(2 / 3), abs=0.01)
    assert shared["null"]["mean"] == pytest.approx(gaussian_spearman(1 / 3), abs=0.01)
    assert shared["excess"]["p_value"] < 1e-6 and shared["excess"]["ci95"][0] > 0.25
    class_only = stats["pairs"]["c|d"]["vs_null"]["spearman_signed_all"]
    assert class_only["value"]["mean"] == pytest.approx(gaussian_spearman(1 / 2), abs=0.01)
    assert abs(class_only["excess"]["mean"]) < 0.01 and class_only["excess"]["ci95"][0] < 0 < class_only[
        "excess"]["ci95"][1]
    obj = stats["pairs"]["a|b"]["vs_null"]["spearman_signed_object"]
    assert obj["excess"]["mean"] == pytest.approx(shared["excess"]["mean"])
    mat = kh.correlation_matrix(stats, ["a", "b", "c"], "spearman_signed_all", "excess")
    assert mat[0, 1] == mat[1, 0] == pytest.approx(shared["excess"]["mean"]) and np.isnan(mat[0, 0])


def test_agreement_null_leaves_out_images_alone_in_their_class():
    # a class with one selected image (a selection fallback) has no same-class partner: value and null are
    # measured on the other images only, so both sides of the comparison see the same images
    g = torch.Generator().manual_seed(2)
    n, labels = 61, torch.cat([torch.arange(60) % 3, torch.tensor([3])])
    maps = {"a": torch.randn(n, 784, generator=g), "b": torch.randn(n, 784, generator=g)}
    maps["b"][-1] = maps["a"][-1]  # the lone image's maps agree perfectly: it must not enter the value
    x = 0.01 + 0.99 * torch.rand(n, 784, generator=g)
    stats = kh.cross_method_statistics(maps, seed=0, x=x, labels=labels)
    assert stats["null_n_images"] == 60
    value = stats["pairs"]["a|b"]["vs_null"]["spearman_signed_all"]["value"]["mean"]
    reference = kh.cross_method_statistics({m: v[:60] for m, v in maps.items()}, seed=0, x=x[:60], labels=labels[:60])
    assert value == pytest.approx(reference["pairs"]["a|b"]["vs_null"]["spearman_signed_all"]["value"]["mean"])
    assert abs(value) < 0.05  # independent maps; with the lone image it would be about 1/61 higher
    alone = kh.cross_method_statistics(maps, seed=0, x=x, labels=torch.arange(n))  # every class has one image
    assert alone["null_n_images"] == 0 and "vs_null" not in alone["pairs"]["a|b"]
    assert alone["pairs"]["a|b"]["spearman_signed"]["mean"] > value  # the plain statistic still uses all images


def test_agreement_null_uses_pixels_that_are_object_in_both_images():
    # method maps equal the image itself: on object pixels only the ranks of intensities remain
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 784, generator=g)
    x[:3, 392:] = 0.0  # class 0: object is the first half
    x[3:, :392] = 0.0  # class 1: object is the second half
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    stats = kh.cross_method_statistics({"a": x, "b": x.clone()}, x=x, labels=labels)
    entry = stats["pairs"]["a|b"]["vs_null"]["spearman_signed_object"]
    assert entry["value"]["mean"] == pytest.approx(1.0)
    # independent uniform intensities on the shared object half: null near 0, not the all-pixel null
    assert abs(entry["null"]["mean"]) < 0.15
    assert stats["pairs"]["a|b"]["vs_null"]["spearman_signed_all"]["null"]["mean"] > 0.3  # zeros shared
    with pytest.raises(ValueError, match="both x and labels"):
        kh.cross_method_statistics({"a": x, "b": x}, x=x)


def test_agreement_functions_reject_bad_input(small):
    maps, x, y = small["maps"], small["x"], small["y"]
    with pytest.raises(ValueError, match="at least two methods"):
        kh.cross_method_statistics({"simple": maps["simple"]})
    with pytest.raises(ValueError, match="integer class ids"):
        kh.cross_method_statistics(maps, x=x, labels=y[:5])
    with pytest.raises(ValueError, match="x holds 5 maps but there are 12 images"):
        kh.cross_method_statistics(maps, x=x[:5], labels=y)
    with pytest.raises(ValueError, match="same_class must be True or False"):
        kh.partner_images(y, same_class="yes")
    with pytest.raises(ValueError, match="statistic must be"):
        kh.correlation_matrix(small["stats"], list(maps), "spearman_signed_all", "median")
    with pytest.raises(ValueError, match="integer class ids"):
        kh.randomization_check(small["pipe"], x, y, small["cfg"], methods=("simple",), labels=y[:3])


def test_family_agreement_on_planted_families():
    """Gradient-like maps share the image (template + own part); planted second families either share only the
    class (no agreement beyond the null across the families) or share the image too (as much as within)."""
    g = torch.Generator().manual_seed(1)
    n, labels = 400, torch.arange(400) % 4
    template, own = torch.randn(4, 784, generator=g)[labels], torch.randn(n, 784, generator=g)
    noise = lambda: torch.randn(n, 784, generator=g)
    x = 0.01 + 0.99 * torch.rand(n, 784, generator=g)  # every pixel object (> 0), in [0, 1]
    gradient = {"a": template + own + noise(), "b": template + own + noise()}
    blind = {"c": template + noise(), "d": template + noise()}
    seeing = {"e": template + own + noise(), "f": template + own + noise()}
    fam = lambda second: {"gradient": ["a", "b"], "perturbation": list(second)}
    within = gaussian_spearman(2 / 3) - gaussian_spearman(1 / 3)
    out = kh.family_agreement({**gradient, **blind}, x, labels, fam(blind), seed=0)
    assert out["n_images"] == n and out["families"] == fam(blind)
    s = out["statistics"]["spearman_signed_all"]
    assert s["within_gradient"]["mean"] == pytest.approx(within, abs=0.01)
    assert s["across"]["mean"] == pytest.approx(0, abs=0.01) and s["within_perturbation"]["mean"] == pytest.approx(
        0, abs=0.01)
    diff = s["across_minus_within_gradient"]
    assert diff["mean"] == pytest.approx(-within, abs=0.01) and diff["ci95"][1] < 0 and diff["p_value"] < 1e-6
    same = kh.family_agreement({**gradient, **seeing}, x, labels, fam(seeing), seed=0)["statistics"]
    diff = same["spearman_signed_all"]["across_minus_within_gradient"]
    assert diff["ci95"][0] < 0 < diff["ci95"][1]  # the planted second family agrees as much as the first
    assert set(same) == {f"spearman_{k}_{p}" for k in kh.AGREEMENT_KINDS for p in kh.PIXEL_SETS}
    one = kh.family_agreement({**gradient, "c": blind["c"]}, x, labels, {"gradient": ["a", "b"], "p": ["c"]})
    assert "within_p" not in one["statistics"]["spearman_abs_all"]  # one method has no pairs of its own
    alone = kh.family_agreement({**gradient, **blind}, x, torch.arange(n), fam(blind))  # no same-class partner
    assert alone["n_images"] == 0 and alone["statistics"] == {}
    with pytest.raises(ValueError, match="at least two gradient methods and one perturbation method"):
        kh.family_agreement({"a": gradient["a"], "c": blind["c"]}, x, labels, fam(blind))
