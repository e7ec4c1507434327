"""ksae.plots.units: the unit atlas's figures, on the planted-unit model."""

from __future__ import annotations

import pytest
from planted_units import N_HIDDEN, UNIT_A

import ksae_helpers as kh


def test_unit_figures(planted):
    data, pipeline, stats = planted
    fig = kh.plot_firing_density(stats)
    assert "1 dead" in fig.axes[0].get_title()
    fig.canvas.draw()  # frequencies span decades: labels at powers of 10 only, the 2x and 5x ticks unlabelled
    assert not any(t.get_text() for t in fig.axes[0].get_xticklabels(minor=True))
    assert any(t.get_text() for t in fig.axes[0].get_xticklabels())
    fig = kh.plot_unit_dashboard(stats, pipeline.sae, data, [UNIT_A, 2])
    assert len(fig.axes) == 2 * 7 + 1  # 7 panels per unit and one colour bar
    assert any(stats.descriptions[UNIT_A] in t.get_text() for t in fig.texts)
    agreement = kh.contribution_ablation_agreement(stats)
    fig = kh.plot_contribution_vs_ablation(stats, agreement)
    assert f"Pearson {agreement['pearson']['value']:.3f}" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="unit must be <="):
        kh.plot_unit_dashboard(stats, pipeline.sae, data, [N_HIDDEN])
    with pytest.raises(ValueError, match="units is empty"):
        kh.plot_unit_dashboard(stats, pipeline.sae, data, [])
    with pytest.raises(ValueError, match="UnitStats"):
        kh.plot_firing_density({})
