"""The training-throughput benchmark's measuring functions, on a tiny synthetic data set."""

import json
import math

import cv2
import numpy as np
import pytest
import torch

from benchmarks.training_throughput import (
    build_task,
    conv_ceiling_gflops,
    gan_breakdown,
    gan_passes,
    load_training_sets,
    make_sampler,
    measure_family,
)
from training.config import TrainConfig


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(12):
        # Smooth random colour fields: colourful enough to pass the gray filter.
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        cv2.imwrite(str(root / f"c{i:02d}.png"), cv2.resize(small, (40, 40), interpolation=cv2.INTER_CUBIC))
    return root


def _cfg(folder, family: str) -> TrainConfig:
    return TrainConfig(
        family=family,
        sources=(str(folder),),
        source_sizes=(32,),
        val_fraction=0.0,
        crop_size=32,
        batch_size=4,
        widths=(8, 16, 32, 64),
        cache_dir=str(folder / "cache"),
    )


@pytest.mark.parametrize("family", ["regression", "classification", "gan"])
def test_measure_family_gives_positive_rates(folder, family):
    cfg = _cfg(folder, family)
    train_sets = load_training_sets(cfg)
    assert sum(map(len, train_sets)) == 12
    r = measure_family(cfg, train_sets, repeat=1, warmup=0, data_batches=2)
    assert set(r) == {"data", "step", "together", "gflops", "spread", "cpu_share"}
    assert all(math.isfinite(v) and v > 0 for v in r.values()), r
    assert r["spread"] >= 1.0


def test_sources_are_loaded_once_across_recipes(folder):
    loaded: dict = {}
    a = load_training_sets(_cfg(folder, "regression"), loaded)
    b = load_training_sets(_cfg(folder, "gan"), loaded)
    assert len(loaded) == 1 and a[0] is b[0]


def test_gan_is_timed_in_adversarial_mode_and_its_passes_touch_the_right_networks(folder):
    cfg = _cfg(folder, "gan")
    assert cfg.gan_pretrain_steps > 0  # the default pre-trains: build_task must skip it
    train_sets = load_training_sets(cfg)
    task = build_task(cfg, train_sets)
    batch = make_sampler(cfg, train_sets).next_batch()
    assert "critic_loss" in task.step(batch)

    generator = list(task.model.parameters())
    critic = list(task.critic.parameters())
    passes = gan_passes(task, batch)
    expected = {
        "generator forward + backward (reconstruction loss)": (True, False),
        "critic forward + backward on real and fake": (False, True),
        "critic forward + backward for the adversarial term": (False, True),
    }
    assert set(passes) == set(expected)
    before = [p.detach().clone() for p in generator + critic]
    for name, (gen_grads, critic_grads) in expected.items():
        passes[name]()
        assert all(p.grad is not None for p in generator) == gen_grads, name
        assert all(p.grad is None for p in generator) == (not gen_grads), name
        assert all(p.grad is not None for p in critic) == critic_grads, name
    # The passes do not step the optimisers: every call sees the same weights.
    assert all(torch.equal(a, p) for a, p in zip(before, generator + critic))

    g = gan_breakdown(task, batch, repeat=1, warmup=0)
    assert set(g["parts"]) == set(expected)
    assert all(v > 0 for v in g["parts"].values())
    assert g["sum"] == pytest.approx(sum(g["parts"].values()))
    # The ratio's value is a timing (it varies with load), so only its making is checked here.
    assert math.isfinite(g["ratio"]) and g["full"] > 0
    assert g["ratio"] == pytest.approx(g["full"] / g["sum"])


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_each_precision_is_timed_as_training_runs_it(folder, precision):
    from dataclasses import replace

    cfg = replace(_cfg(folder, "regression"), precision=precision)
    task = build_task(cfg, load_training_sets(cfg))
    conv = next(m for m in task.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert task.bf16 == (precision == "bfloat16")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == task.bf16
    assert conv_ceiling_gflops(precision, repeat=1) > 0


def test_learning_curve_scores_each_snapshot_against_images_seen(tmp_path, folder):
    import subprocess
    import sys
    from dataclasses import replace
    from pathlib import Path

    from training.loop import train

    cfg = replace(_cfg(folder, "regression"), val_fraction=0.3, max_steps=8, val_every=4, keep_snapshots=True)
    train(replace(cfg, warmup_steps=2, val_images=8), tmp_path / "run")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        small = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
        cv2.imwrite(str(photos / f"p{i}.jpg"), cv2.resize(small, (90, 60), interpolation=cv2.INTER_CUBIC))
    snaps = sorted((tmp_path / "run" / "snapshots").iterdir())
    root = Path(__file__).resolve().parents[1]

    def curve(*snapshots: Path, extra: tuple[str, ...] = ()) -> list[str]:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.learning_curve",
                *map(str, snapshots),
                "--start-engine",
                str(snaps[0]),
                "--photos",
                str(photos),
                "--limit",
                "2",
                "--out",
                str(tmp_path / "out"),
                *extra,
            ],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        md = (tmp_path / "out" / "learning_curve.md").read_text()
        return [line for line in md.splitlines() if " | step-" in line]

    # The last named twice: drawn once. A second series (a branch) has its own rows, without the start.
    rows = curve(*reversed(snaps), snaps[-1], extra=("--series", "branch", str(snaps[-1])))
    # The start engine at 0, then the snapshots in order of images seen (4 and 8 steps of 4).
    assert [row.split(" | ")[:3] for row in rows] == [
        ["| run", "step-0000004.pt", "0"],
        ["| run", "step-0000004.pt", "16"],
        ["| run", "step-0000008.pt", "32"],
        ["| branch", "step-0000008.pt", "32"],
    ]
    rows = rows[:3]
    assert (tmp_path / "out" / "learning_curve.png").stat().st_size > 1000
    # Scores are kept by content: a doctored kept score is what the next drawing shows (nothing rescored).
    kept_path = tmp_path / "out" / "learning_curve-scores.json"
    kept = json.loads(kept_path.read_text())
    assert len(kept) == 2  # two distinct files: the start engine is the first snapshot
    for value in kept.values():
        value["auc"] += 50.0
    kept_path.write_text(json.dumps(kept))
    again = curve(*snaps)
    assert [float(row.split(" | ")[3]) for row in again] == pytest.approx(
        [float(row.split(" | ")[3]) + 50 for row in rows]
    )
    # ``--scores``: one file kept for every curve, read and written there instead.
    for value in kept.values():
        value["auc"] += 50.0
    shared = tmp_path / "shared-scores.json"
    shared.write_text(json.dumps(kept))
    again = curve(*snaps, extra=("--images-before", "1000", "--scores", str(shared)))
    assert [float(row.split(" | ")[3]) for row in again] == pytest.approx(
        [float(row.split(" | ")[3]) + 100 for row in rows]
    )
    assert [row.split(" | ")[2] for row in again] == ["1,000", "1,016", "1,032"]  # a campaign's one axis
