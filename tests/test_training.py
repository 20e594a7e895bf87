"""Training: recipes, data sources and the gray filter, and a tiny real run that resumes exactly."""

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines import checkpoint
from training.config import TrainConfig, from_dict, load_recipe
from training.data import GRAY_CHROMA_P95, chroma_p95, iter_source, load_source
from training.loop import train

RECIPES = sorted((Path(__file__).resolve().parents[1] / "training" / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe):
    cfg = load_recipe(recipe)
    assert cfg.sources and len(cfg.sources) == len(cfg.source_sizes)


def test_unknown_recipe_keys_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe keys: lerning_rate"):
        from_dict({"lerning_rate": 1.0})
    with pytest.raises(ValueError, match="loss"):
        from_dict({"loss": "l3"})


def _colourful(rng, size: int) -> np.ndarray:
    """A smooth random colour field (BGR uint8)."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def _make_folder(root: Path, n_colour: int, n_gray: int, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n_colour):
        cv2.imwrite(str(root / f"c{i:03d}.png"), _colourful(rng, size))
    for i in range(n_gray):
        g = cv2.cvtColor(_colourful(rng, size), cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(root / f"g{i:03d}.jpg"), cv2.cvtColor(g, cv2.COLOR_GRAY2BGR))
    return root


def test_gray_images_are_dropped_and_tar_streams_match_folders(tmp_path):
    folder = _make_folder(tmp_path / "imgs", n_colour=12, n_gray=5)
    tar_path = tmp_path / "imgs.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for p in sorted(folder.iterdir()):
            tar.add(p, arcname=f"train/{p.name}")
        tar.addfile(tarfile.TarInfo("train/readme.txt"), io.BytesIO(b""))
    a = load_source(folder, 32, tmp_path / "cache")
    b = load_source(tar_path, 32, tmp_path / "cache")
    assert a.dropped_gray == b.dropped_gray == 5
    assert len(a.names) == len(b.names) == 12
    np.testing.assert_array_equal(a.rgb_u8, b.rgb_u8)
    assert (chroma_p95(a.rgb_u8) >= GRAY_CHROMA_P95).all()
    assert len(list(iter_source(tar_path))) == 17  # the text member is skipped


def _tiny_config(folder: Path, tmp_path: Path, **kw) -> TrainConfig:
    base = dict(  # noqa: C408 - keyword form reads like the config
        sources=(str(folder),),
        source_sizes=(40,),
        crop_size=32,
        widths=(8, 16, 32, 64),
        batch_size=8,
        max_steps=8,
        warmup_steps=2,
        val_every=4,
        val_images=16,
        val_fraction=0.2,
        threads=1,
        cache_dir=str(tmp_path / "cache"),
    )
    return replace(TrainConfig(), **{**base, **kw})


@pytest.mark.parametrize("loss,rebalance", [("l1", 0.0), ("l2", 0.0), ("huber", 0.5)])
def test_tiny_run_trains_and_exports_a_loadable_engine(tmp_path, loss, rebalance):
    folder = _make_folder(tmp_path / "imgs", n_colour=40, n_gray=4)
    cfg = _tiny_config(folder, tmp_path, loss=loss, rebalance_lambda=rebalance, max_steps=24, lr=5e-3)
    best = train(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log] == [4, 8, 12, 16, 20, 24]
    assert log[-1]["loss"] < log[0]["loss"]
    engine = checkpoint.load(tmp_path / "run" / "engine.pt")
    assert engine.family == "regression" and engine.trained_on["recipe"]["loss"] == loss
    assert engine.metrics["step"] == best["step"]
    engine.build_model()(torch.zeros(1, 1, 32, 32))


def test_resume_continues_exactly(tmp_path):
    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    cfg = _tiny_config(folder, tmp_path)
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "resumed", stop_at_step=5)  # an interruption between validations
    train(cfg, tmp_path / "resumed")
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == 8
    for k, v in a["task"]["model"].items():
        torch.testing.assert_close(b["task"]["model"][k], v, rtol=0, atol=0, msg=k)


def test_tiny_classification_run_exports_an_engine_the_pipeline_decodes(tmp_path):
    from engines.pipeline import load_colorizer
    from engines.runtime import select_backend

    folder = _make_folder(tmp_path / "imgs", n_colour=40, n_gray=0)
    cfg = _tiny_config(folder, tmp_path, family="classification", max_steps=24, lr=5e-3)
    train(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    engine = checkpoint.load(tmp_path / "run" / "engine.pt")
    q = len(engine.family_state["ab_centres"])
    assert engine.family == "classification" and engine.arch.out_channels == q > 10
    c = load_colorizer("custom", select_backend("cpu"), weights=tmp_path / "run" / "engine.pt")
    out = c.colorize(np.full((20, 30, 3), 0.5, np.float32))
    assert out.shape == (20, 30, 3)
