"""ksae.plots.training: the training-history figure."""

from __future__ import annotations

import ksae_helpers as kh


def test_training_history_figure_one_legend_for_fvu_and_auxk():
    history = {"ae": {"fvu": [0.2, 0.1, 0.08], "val_fvu": [0.21, 0.12, 0.09], "aux_loss": [0.0, 0.5, 1.0],
                      "dormant_fraction": [0.0, 0.01, 0.02]},
               "clf": {"loss": [1.0, 0.5], "train_acc": [0.7, 0.8], "val_acc": [0.69, 0.78]}, "seconds": {"ae": 3.0}}
    fig = kh.plot_training_history(history)
    fvu, twin = fig.axes[0], fig.axes[-1]
    assert fvu.get_legend() is None and twin.get_ylabel() == "AuxK loss (dashed)"
    assert [t.get_text() for t in twin.get_legend().get_texts()] == ["train", "validation", "AuxK loss (right)"]
    validation, aux = fvu.get_lines()[1], twin.get_lines()[0]
    assert validation.get_color() != aux.get_color()  # the AuxK curve is not mistaken for the validation FVU
    assert "ae 3 s" in fig.texts[0].get_text()
    fig = kh.plot_training_history({**history, "ae": {**history["ae"], "aux_loss": []}})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train", "validation"]
    assert "no training history" in kh.plot_training_history({}).axes[0].texts[0].get_text()
