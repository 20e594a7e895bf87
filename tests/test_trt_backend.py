"""The TensorRT backend's logic that runs without TensorRT: cache keys, entries and their checks,
listing and clearing, and selection. Building and running engines is unverified (see the module)."""

import dataclasses
import os

import pytest
import torch
from typer.testing import CliRunner

from colorcli.app import app
from engines.runtime import trt_backend as trt
from engines.runtime.backends import BackendUnavailable, select_backend


def _key(**changes) -> trt.CacheKey:
    key = trt.CacheKey("ab" * 32, "10.7.0", "NVIDIA H100 80GB HBM3", "9.0", "fp16", trt.Profile.for_pipeline(128))
    return dataclasses.replace(key, **changes)


def test_profile_covers_what_the_pipeline_feeds():
    p = trt.Profile.for_pipeline(120, max_batch=16)
    assert p.min_shape == (1, 16, 16) and p.max_shape == (16, 128, 128) and p.opt_shape == (8, 128, 128)


@pytest.mark.parametrize(
    "change",
    [
        {"weights_sha256": "cd" * 32},
        {"tensorrt_version": "10.8.0"},
        {"gpu": "NVIDIA A100"},
        {"compute_capability": "8.0"},
        {"precision": "fp32"},
        {"profile": trt.Profile.for_pipeline(256)},
    ],
)
def test_every_field_changes_the_key_and_invalidates_the_entry(tmp_path, change):
    key, other = _key(), _key(**change)
    assert key.digest() != other.digest() and key.filename("regression") != other.filename("regression")
    path = tmp_path / key.filename("regression")
    trt.write_entry(path, key, b"engine bytes")
    assert trt.read_entry(path, key) == b"engine bytes"
    # An entry that claims another key (e.g. renamed by hand) is stale: not trusted, removed.
    assert trt.read_entry(path, other) is None and not path.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_entries_are_never_trusted(tmp_path, damage):
    key = _key()
    path = tmp_path / key.filename("regression")
    payload = os.urandom(4096)
    trt.write_entry(path, key, payload)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-100]
    elif damage == "flip":
        data[-10] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(b"not an engine at all")
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    assert trt.read_entry(path, key) is None
    assert not path.exists()  # removed, so the next load rebuilds it


def test_write_is_atomic_and_keeps_the_old_entry_on_failure(tmp_path, monkeypatch):
    key = _key()
    path = tmp_path / key.filename("regression")
    trt.write_entry(path, key, b"old")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        trt.write_entry(path, key, b"new")
    monkeypatch.undo()
    assert trt.read_entry(path, key) == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_list_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("COLORIZE_CACHE_DIR", str(tmp_path))
    folder = trt.cache_dir()
    trt.write_entry(folder / _key().filename("regression"), _key(), b"x" * 2048)
    (folder / "broken.engine").write_bytes(b"junk")
    (folder / trt.TIMING_CACHE).write_bytes(b"t")
    runner = CliRunner()
    out = runner.invoke(app, ["trt", "list"]).stdout
    assert "H100" in out and "sm 9.0" in out and "broken.engine  (unreadable" in out
    r = runner.invoke(app, ["trt", "clear"])
    assert r.exit_code == 0 and "removed 3 file(s)" in r.stdout
    assert "no cached engines" in runner.invoke(app, ["trt", "list"]).stdout


@pytest.mark.skipif(trt.unavailable_reason() is None, reason="TensorRT is available here")
def test_selection_without_tensorrt():
    with pytest.raises(BackendUnavailable, match="tensorrt backend unavailable"):
        select_backend("tensorrt")
    auto = select_backend("auto")
    assert auto.name in ("cuda", "cpu-fastest") and any(n.startswith("tensorrt skipped:") for n in auto.notes)
    assert (auto.name == "cuda") == torch.cuda.is_available()
    r = CliRunner().invoke(app, ["trt", "build"])
    assert r.exit_code == 2 and "tensorrt backend unavailable" in r.stderr
