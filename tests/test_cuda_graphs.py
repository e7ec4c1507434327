"""ksae.cuda_graphs: the CUDA-graph training path, checked on the CPU.

CI has no GPU, so everything around the capture is tested here: ``GraphedStep``'s warm-up, capture, static
buffers, eager short batches and fallback (with ``RecordingGraph``, a CPU stand-in whose ``capture`` stores the
step without running it and whose ``replay`` runs it on the static buffers, as a real graph does), and that
training through it matches eager training. The fixed-shape pieces the graph needs (static AuxK, firing
counts, a forward pass that traces as one graph) are tested with the training and metrics modules. What only
a GPU can show (the capture itself, its speed) is ``benchmarks/cuda_graph_training.py``.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

import ksae_helpers as kh

CPU = torch.device("cpu")
# 1900 training images: 7 full batches of 256 and a short one of 108 per epoch; small dead window so AuxK acts
GRAPH_RUN = dict(train_subset=2400, n_val=500, ae_epochs=2, clf_epochs=2, dead_after=512, seed=0)


class RecordingGraph:
    """CPU stand-in for ``kh.CudaGraphBackend``: ``capture`` records ``fn`` without running it (a CUDA capture
    runs nothing either), ``replay`` runs the recorded ``fn``; ``fail`` makes ``capture`` raise."""

    def __init__(self, fail: bool = False):
        self.fn, self.fail, self.captures, self.replays, self.side = None, fail, 0, 0, 0

    @contextlib.contextmanager
    def side_stream(self):
        self.side += 1
        yield

    def capture(self, fn) -> None:
        self.captures += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.fn = fn

    def replay(self) -> None:
        self.replays += 1
        self.fn()


def test_graphed_step_warms_up_captures_once_and_copies_every_batch_in():
    total = torch.zeros(3)
    step = kh.GraphedStep(lambda b: total.add_(b.sum(0)), rows=4, backend=(graph := RecordingGraph()), warmup=2)
    batches = [torch.full((4, 3), float(i)) for i in range(6)] + [torch.ones(2, 3)] + [torch.full((4, 3), 10.0)]
    for b in batches:
        step(b)
    # every batch counted exactly once, whatever path ran it: 4 * (0 + 1 + ... + 5) + 2 + 40
    assert torch.equal(total, torch.full((3,), 4.0 * 15 + 2 + 40))
    assert graph.side == 2 and graph.captures == 1
    assert graph.replays == step.replays == 5  # batches 2..5 and the last; the short batch ran eagerly
    assert torch.equal(step.static[0], batches[-1])


def test_graphed_step_without_backend_is_the_step():
    seen = []
    step = kh.GraphedStep(seen.append, rows=4)
    x = torch.ones(4, 3)
    step(x)
    assert seen == [x] and seen[0] is x and step.replays == 0


def test_graph_backend_only_on_cuda_with_the_flag():
    assert kh.graph_backend(kh.Config(), CPU) is None
    assert kh.graph_backend(kh.Config(cuda_graphs=False), torch.device("cuda")) is None


@pytest.fixture(scope="module")
def runs(data):
    """The same small training, eagerly and through ``RecordingGraph``: ``{name: (sae, clf, history, graphs)}``."""
    cfg = kh.Config(**GRAPH_RUN)
    x, y, x_val, y_val = kh.train_val_split(data, cfg)
    out = {}
    for name, make in (("eager", lambda: None), ("graph", RecordingGraph)):
        torch.manual_seed(cfg.seed)
        sae, clf = kh.KSparseAutoencoder.from_config(cfg), kh.SparseCodeClassifier.from_config(cfg)
        ae_graph, clf_graph = make(), make()
        h_ae = kh.train_autoencoder(sae, x, cfg, CPU, x_val, backend=ae_graph)
        h_clf = kh.train_classifier(clf, sae, x, y, cfg, CPU, x_val, y_val, backend=clf_graph)
        out[name] = (sae, clf, {"ae": h_ae, "clf": h_clf}, (ae_graph, clf_graph))
    return cfg, len(x), out


def test_graphed_training_replays_every_full_batch_after_warm_up(runs):
    cfg, n, out = runs
    full, short = divmod(n, cfg.batch_size)
    assert short > 0  # the run really has a short batch per epoch
    ae_graph, clf_graph = out["graph"][3]
    assert ae_graph.replays == cfg.ae_epochs * full - kh.GRAPH_WARMUP_STEPS
    assert clf_graph.replays == cfg.clf_epochs * full - kh.GRAPH_WARMUP_STEPS
    assert ae_graph.captures == clf_graph.captures == 1


def test_graphed_training_matches_eager_training(runs):
    """Same recipe either way: the graph path differs only by the fixed-shape AuxK's summation order."""
    _, _, out = runs
    (sae_e, clf_e, h_e, _), (sae_g, clf_g, h_g, _) = out["eager"], out["graph"]
    assert max(h_e["ae"]["aux_loss"]) > 0  # AuxK was active, so the static path was exercised
    for a, b in ((sae_e, sae_g), (clf_e, clf_g)):
        for key, value in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[key], value, atol=2e-5, rtol=1e-4, msg=key)
    for part in ("ae", "clf"):
        for key, values in h_e[part].items():
            assert h_g[part][key] == pytest.approx(values, abs=1e-4), (part, key)


def test_failed_capture_warns_once_and_trains_eagerly(data, runs):
    cfg, _, out = runs
    x, _, _, _ = kh.train_val_split(data, cfg)
    torch.manual_seed(cfg.seed)
    sae = kh.KSparseAutoencoder.from_config(cfg)
    graph = RecordingGraph(fail=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kh.train_autoencoder(sae, x, cfg, CPU, backend=graph)
    messages = [str(w.message) for w in caught if "CUDA graph capture failed" in str(w.message)]
    assert len(messages) == 1 and "stream is capturing" in messages[0]
    assert graph.captures == 1 and graph.replays == 0
    reference = out["graph"][0]  # same static AuxK, every step run: the same weights
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(sae.state_dict()[key], value, atol=2e-5, rtol=1e-4, msg=key)
