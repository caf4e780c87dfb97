"""`auto` picks the native op only where it measured no slower than the torch path (`choice.py`): the
measurement is taken once, kept beside the build, read back, taken again when its file is bad or belongs to
another build; a verdict for the torch path sends auto there; LMSLEEP_NATIVE=1 skips it."""
import json

import pytest
import torch

from lmsleep.ops import auto_backend
from lmsleep.ops.delta_rule import choice, library
from test_op import random_inputs

needs_native = pytest.mark.skipif(library._compiler() is None or library.library() is None,
                                  reason=f"native library unavailable: {library.error()}")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A fresh process's state with an empty cache folder (the library is rebuilt there: a few seconds)."""
    monkeypatch.setattr(library, "_state", {})
    monkeypatch.setattr(choice, "_verdict", {})
    monkeypatch.setenv("LMSLEEP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LMSLEEP_NATIVE", raising=False)
    return tmp_path


def _kept(tmp_path):
    return list(tmp_path.glob("gated_delta_rule-*.so.choice.json"))


@needs_native
def test_measured_once_kept_beside_the_build_and_read_back(fresh, monkeypatch, capsys):
    verdict = choice.verdict()
    assert "measured once on this machine" in capsys.readouterr().err
    assert verdict["library"] == library.path().name and verdict["lanes"] == library.lanes()
    assert all(verdict[f"{name}_{kind}_ms"] > 0 for name in ("native", "torch") for kind in ("fwd", "fwdbwd"))
    (kept,) = _kept(fresh)
    assert json.loads(kept.read_text()) == verdict
    monkeypatch.setattr(choice, "_verdict", {})
    monkeypatch.setattr(choice, "measure", lambda: pytest.fail("measured again"))
    assert choice.verdict() == verdict  # read back, not measured
    assert f"{verdict['lanes']}-float vectors" in choice.reason()


def _write(fresh, **changes):
    verdict = {"format": choice.FORMAT, "version": choice.VERSION, "library": library.path().name, "lanes": 8,
               "shape": [8, 256, 4, 64], "threads": 1, "native_fwd_ms": 9.0, "native_fwdbwd_ms": 30.0,
               "torch_fwd_ms": 3.0, "torch_fwdbwd_ms": 10.0, "native": False, **changes}
    (fresh / (library.path().name + ".choice.json")).write_text(json.dumps(verdict))
    return verdict


@needs_native
def test_a_verdict_for_the_torch_path_sends_auto_there(fresh):
    _write(fresh)
    inputs = random_inputs(2, 20, 2, 4, 4, torch.float32, True)
    assert auto_backend(*inputs) == "torch"
    assert "auto runs the torch path" in choice.reason() and "(0.33x)" in choice.reason()


@needs_native
@pytest.mark.parametrize("bad", ["{not json", "stale"])
def test_a_bad_or_stale_file_is_named_and_measured_again(fresh, monkeypatch, capsys, bad):
    if bad == "stale":
        _write(fresh, library="gated_delta_rule-0000000000000000.so")
    else:
        (fresh / (library.path().name + ".choice.json")).write_text(bad)
    monkeypatch.setattr(choice, "measure", lambda: {**_write(fresh), "native": True})
    assert choice.prefers_native()
    err = capsys.readouterr().err
    assert library.path().name + ".choice.json" in err and "measuring the native op again" in err


@needs_native
def test_lmsleep_native_1_skips_the_measurement(fresh, monkeypatch):
    monkeypatch.setenv("LMSLEEP_NATIVE", "1")
    monkeypatch.setattr(choice, "measure", lambda: pytest.fail("measured"))
    assert choice.prefers_native() and "without measuring" in choice.reason()
    assert not _kept(fresh)


def test_no_library_means_the_torch_path(monkeypatch):
    monkeypatch.setattr(library, "_state", {})
    monkeypatch.setenv("LMSLEEP_NATIVE", "0")
    assert not choice.prefers_native() and "native library is unavailable" in choice.reason()
