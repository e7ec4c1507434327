"""ksae.runtime: the Stopwatch's phases and showing PNG bytes in a notebook."""

import time

import pytest

import ksae.runtime
import ksae_helpers as kh


def test_stopwatch_phases_add_up_and_survive_errors():
    watch = kh.Stopwatch()
    with watch.phase("data"):
        time.sleep(0.05)
    with pytest.raises(KeyError), watch.phase("load"):
        raise KeyError("x")
    with watch.phase("data"):
        time.sleep(0.05)
    timings = watch.timings()
    assert list(timings) == ["data", "load", "total"] and timings["data"] >= 0.1
    assert timings["total"] >= timings["data"] + timings["load"]
    with pytest.raises(ValueError, match="phase name"):
        with watch.phase(""):
            pass


def test_show_displays_png_bytes_once(monkeypatch):
    shown = []
    monkeypatch.setattr(ksae.runtime, "_jupyter_display", lambda: (shown.append, type("ipd", (), {"Image": dict})))
    kh.show(b"\x89PNG fake")
    assert shown == [{"data": b"\x89PNG fake"}]
