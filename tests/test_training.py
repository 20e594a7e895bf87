"""Training: recipes, data sources and the gray filter, and a tiny real run that resumes exactly."""

import io
import json
import math
import os
import shutil
import tarfile
import warnings
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.models import checkpoint
from training import distributed
from training.config import TrainConfig, from_dict, load_recipe
from training.data import FRAME_MARK, GRAY_CHROMA_P95, _split_key, chroma_p95, load_source, validation_mask
from training.loop import train

RECIPES = sorted((Path(__file__).resolve().parents[1] / "training" / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe):
    cfg = load_recipe(recipe)
    assert cfg.sources and len(cfg.sources) == len(cfg.source_sizes)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_warm_start_from_engines_of_their_own_widths(recipe):
    """A warm start copies only same-shaped layers, so a recipe whose widths differ from its init_from
    engine's would silently train most of the network from nothing."""
    cfg = load_recipe(recipe)
    source = Path(__file__).resolve().parents[1] / cfg.init_from
    if not cfg.init_from or not source.is_file():
        return
    engine = checkpoint.load(source)
    if cfg.encoder == "plain" and engine.arch.encoder == "plain":
        assert tuple(engine.arch.widths) == tuple(cfg.widths), (recipe.name, engine.arch.widths)


def test_unknown_recipe_keys_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe keys: lerning_rate"):
        from_dict({"lerning_rate": 1.0})
    with pytest.raises(ValueError, match="loss"):
        from_dict({"loss": "l3"})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("lr", "abc", "lr must be a number"),
        ("max_steps", 2.5, "max_steps must be an integer"),
        ("gan_noise", 1, "gan_noise must be true or false"),
        ("widths", [32, 64.5], "widths must be a list of integers"),
        ("sources", "a.tar", "sources must be a list of strings"),
        ("init_from", 3, "init_from must be a string"),
        ("rebalance_lambda", 1.5, "rebalance_lambda must be 0"),
        ("rebalance_lambda", -0.1, "rebalance_lambda must be 0"),
    ],
)
def test_recipe_values_of_the_wrong_type_are_rejected(key, value, message):
    with pytest.raises(ValueError, match=message):
        from_dict({key: value})
    assert from_dict({"lr": 1, "widths": [8, 16]}).widths == (8, 16)  # an int stands for a float


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr=abc", "error: recipe key lr must be a number, not 'abc'"),  # not TOML: taken as a string
        ("loss=l3", "error: loss must be l1, l2 or huber, not 'l3'"),
        ("max_steps", "error: --set takes KEY=VALUE, not 'max_steps'"),
    ],
)
def test_bad_overrides_on_the_command_line_give_one_line(tmp_path, capsys, override, message):
    from training.__main__ import main

    assert main([str(RECIPES[0]), "--out", str(tmp_path / "run"), "--set", override]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "run").exists()


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


def test_a_source_changed_since_is_decoded_again_and_its_old_cache_removed(tmp_path):
    cache = tmp_path / "cache"
    one = _make_folder(tmp_path / "a" / "imgs", n_colour=3, n_gray=0)
    other = _make_folder(tmp_path / "b" / "imgs", n_colour=2, n_gray=0)  # the same name, another folder
    load_source(one, 32, cache)
    load_source(one, 40, cache)
    load_source(other, 32, cache)
    before = sorted(p.name for p in cache.iterdir())
    assert len(before) == 3
    # Copied afresh (new modification times) and an image replaced: decoded again, the old cache gone.
    rng = np.random.default_rng(5)
    cv2.imwrite(str(one / "c000.png"), _colourful(rng, 24))
    os.utime(one / "c001.png", ns=(0, 10**18))
    again = load_source(one, 32, cache)
    assert again.rgb_u8.shape == (3, 32, 32, 3)
    after = sorted(p.name for p in cache.iterdir())
    assert len(after) == 3 and len(set(after) - set(before)) == 1
    # The other folder's cache and the other size's stay: they describe sources as they are.
    assert load_source(other, 32, cache).names == ["c000.png", "c001.png"]
    assert sorted(p.name for p in cache.iterdir()) == after


def test_films_give_a_few_frames_per_second_kept_on_one_side_of_the_split(tmp_path):
    from fractions import Fraction

    from tests.test_video import make_clip

    root = _make_folder(tmp_path / "mixed", n_colour=2, n_gray=0)
    (root / "clips").mkdir()
    rng = np.random.default_rng(1)
    colour = [np.ascontiguousarray(cv2.resize(_colourful(rng, 16), (80, 48))[:, :, ::-1]) for _ in range(48)]
    make_clip(root / "clips" / "colour.mp4", frames=colour, size=(80, 48), rate=Fraction(24))
    gray = [np.repeat(f.mean(2, keepdims=True).astype(np.uint8), 3, 2) for f in colour[:24]]
    make_clip(root / "clips" / "gray.mkv", frames=gray, size=(80, 48), rate=Fraction(24))

    mixed = load_source(root, 32, tmp_path / "cache")
    # 48 frames at 24 fps are 2 s: frames at 0, 0.5, 1 and 1.5 s; the gray film's two are dropped.
    films = [f"clips/colour.mp4{FRAME_MARK}{i:06d}" for i in (0, 12, 24, 36)]
    assert mixed.names == ["c000.png", "c001.png", *films]
    assert mixed.dropped_gray == 2
    for name, got in zip(films, mixed.rgb_u8[2:]):
        want = cv2.resize(colour[int(name[-6:])][:, 16:64], (32, 32), interpolation=cv2.INTER_AREA)
        assert np.abs(got.astype(int) - want).mean() < 4  # the frame asked for, in RGB order

    # The cache notices a change deep inside the folder (the folder's own times do not change).
    (root / "clips" / "gray.mkv").unlink()
    assert load_source(root, 32, tmp_path / "cache").dropped_gray == 0

    alone = load_source(root / "clips" / "colour.mp4", 32, tmp_path / "cache")
    assert alone.names == [n.removeprefix("clips/") for n in films]
    np.testing.assert_array_equal(alone.rgb_u8, mixed.rgb_u8[2:])
    for fraction in (0.1, 0.3, 0.5, 0.7):  # a film's frames never straddle the split
        assert len(set(validation_mask(films, fraction).tolist())) == 1
    assert set(validation_mask([f"film-{k}.mp4{FRAME_MARK}000000" for k in range(20)], 0.5).tolist()) == {True, False}


def test_a_list_source_takes_the_images_it_names_and_repeats_weigh_training_only(tmp_path):
    from training.data import training_sets

    root = _make_folder(tmp_path / "imgs", n_colour=6, n_gray=0)
    (root / "sub").mkdir()
    (root / "c005.png").rename(root / "sub" / "c005.png")
    listing = tmp_path / "lists" / "some.txt"
    listing.parent.mkdir()
    listing.write_text(
        "# three of the six, relative to this file\n../imgs/c003.png\n\n  ../imgs/sub/c005.png\n../imgs/c000.png\n"
    )
    folder = load_source(root, 32, tmp_path / "cache")
    listed = load_source(listing, 32, tmp_path / "cache")
    assert listed.names == ["../imgs/c003.png", "../imgs/sub/c005.png", "../imgs/c000.png"]  # in list order
    for name, got in zip(listed.names, listed.rgb_u8):
        np.testing.assert_array_equal(got, folder.rgb_u8[folder.names.index(name.removeprefix("../imgs/"))])

    listing.write_text("../imgs/c001.png\n")  # a changed list is not answered from the cache
    assert load_source(listing, 32, tmp_path / "cache").names == ["../imgs/c001.png"]

    cache = tmp_path / "cache"
    train, val = training_sets((str(root), str(listing)), (32, 32), (1, 3), 0.2, cache)
    assert len(train) == 4 and len(val) == 2
    assert train[1] is train[2] is train[3] and len(train[1]) == 1  # the same array, no copies
    once, _ = training_sets((str(root), str(listing)), (32, 32), (), 0.2, cache)
    assert len(once) == 2 and once[0].shape == train[0].shape
    with pytest.raises(ValueError, match="source_repeats must give"):
        from_dict({"sources": ["a", "b"], "source_sizes": [32, 32], "source_repeats": [1]})
    with pytest.raises(ValueError, match="source_repeats must give"):
        from_dict({"sources": ["a"], "source_sizes": [32], "source_repeats": [0]})


def test_small_sources_still_get_a_validation_film_or_image(tmp_path, capsys):
    from training.__main__ import main
    from training.data import ImageSet, split

    names = [f"film{k}.mp4{FRAME_MARK}{i:06d}" for k in range(3) for i in range(4)]
    films = ImageSet(np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1), names, 0)
    tiny = 0.0005  # of three films, a share that picks none ...
    assert all(_split_key(n) >= tiny * 10_000 for n in names)
    train_part, val_part = split(films, tiny)
    held = {names[i].split(FRAME_MARK)[0] for i in val_part.ravel()}
    assert len(held) == 1 and len(val_part) == 4 and len(train_part) == 8  # ... so one whole film is held out
    one_film = ImageSet(films.rgb_u8[:4], names[:4], 0)
    assert len(split(one_film, tiny)[1]) == 0  # nothing to spare

    recipe = _tiny_recipe(tmp_path)
    single = tmp_path / "single"
    single.mkdir()
    (single / "only.png").write_bytes((tmp_path / "imgs" / "c000.png").read_bytes())
    argv = [str(recipe), "--out", str(tmp_path / "run"), "--set", f"sources = [{str(single)!r}]"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "error: no images left for validation: give more images or films, or raise val_fraction"
    )


def test_unusable_sources_are_one_line_errors(tmp_path, capsys):
    from training.__main__ import main

    recipe = _tiny_recipe(tmp_path)
    (tmp_path / "notes.md").write_text("not images")
    (tmp_path / "gone.txt").write_text("imgs/c000.png\nimgs/gone.png\n")
    (tmp_path / "odd.txt").write_text("# photos\nnotes.md\n")
    broken = tmp_path / "broken.tar.gz"
    with tarfile.open(broken, "w:gz") as tar:
        for p in sorted((tmp_path / "imgs").iterdir()):
            tar.add(p, arcname=p.name)
    broken.write_bytes(broken.read_bytes()[:-200])  # truncated mid-stream
    cases = {
        str(tmp_path / "missing"): "not found",
        str(tmp_path / "notes.md"): "not a folder, a tar archive, a video file or a .txt list",
        str(broken): "cannot be read",
        str(tmp_path / "gone.txt"): "gone.txt, line 2: imgs/gone.png not found",
        str(tmp_path / "odd.txt"): "odd.txt, line 2: notes.md is not an image or a video file",
    }
    for source, message in cases.items():
        sources = f"sources = [{str(tmp_path / 'imgs')!r}, {source!r}]"
        argv = [str(recipe), "--out", str(tmp_path / "run"), "--set", sources, "--set", "source_sizes = [40, 40]"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: source ") and message in err and "\n" not in err
        assert not (tmp_path / "run" / "state.pt").exists()
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    for start in (tmp_path / "missing.pt", tmp_path / "broken.pt"):
        assert main([str(recipe), "--out", str(tmp_path / "run"), "--set", f"init_from = {str(start)!r}"]) == 2
        err = capsys.readouterr().err.strip()
        assert (
            err
            == f"error: {start}: not a readable checkpoint ({'FileNotFoundError' if 'missing' in start.name else 'UnpicklingError'})"
        )
        assert not (tmp_path / "run" / "state.pt").exists()


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


def _assert_same_final_state(straight: Path, resumed: Path, steps: int, parts=("model",)) -> None:
    """The resumed run ends bit-identical to the one that ran straight through."""
    a = torch.load(straight / "state.pt", weights_only=True)
    b = torch.load(resumed / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == steps
    for part in parts:
        for k, v in a["task"][part].items():
            torch.testing.assert_close(b["task"][part][k], v, rtol=0, atol=0, msg=f"{part}.{k}")


def test_resume_continues_exactly(tmp_path):
    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    cfg = _tiny_config(folder, tmp_path)
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "resumed", stop_at_step=5)  # an interruption between validations
    train(cfg, tmp_path / "resumed")
    _assert_same_final_state(tmp_path / "straight", tmp_path / "resumed", steps=8)


def test_degraded_inputs_change_the_training_and_resume_exactly(tmp_path):
    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    cfg = _tiny_config(folder, tmp_path, degrade_input=1.0)
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "resumed", stop_at_step=5)
    train(cfg, tmp_path / "resumed")
    _assert_same_final_state(tmp_path / "straight", tmp_path / "resumed", steps=8)
    train(replace(cfg, degrade_input=0.0), tmp_path / "clean")
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=True)["task"]["model"]
    b = torch.load(tmp_path / "clean" / "state.pt", weights_only=True)["task"]["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_multi_scale_batches_take_each_listed_size_and_resume_exactly(tmp_path):
    from training.data import BatchSampler

    images = np.random.default_rng(0).integers(0, 256, (20, 40, 40, 3), dtype=np.uint8)
    a, b = (BatchSampler([images], 4, 32, seed=3, min_scale=0.5, out_sizes=(16, 24, 32)) for _ in range(2))
    sizes = [a.next_batch().shape[-1] for _ in range(30)]
    assert set(sizes) == {16, 24, 32}
    b.load_state_dict(a.state_dict())
    assert [a.next_batch().shape for _ in range(5)] == [b.next_batch().shape for _ in range(5)]
    with pytest.raises(ValueError, match="multiples of 8"):
        from_dict({"family": "classification", "crop_sizes": [32, 44]})
    # A classification run on three sizes (the loss compiled, as the campaign's recipe) resumes exactly.
    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    cfg = _tiny_config(folder, tmp_path, family="classification", crop_sizes=(16, 24, 32), compile_loss=True)
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "resumed", stop_at_step=5)
    train(cfg, tmp_path / "resumed")
    _assert_same_final_state(tmp_path / "straight", tmp_path / "resumed", steps=8)


def test_tiny_classification_run_exports_an_engine_the_pipeline_decodes(tmp_path):
    from engines.pipeline import load_colorizer
    from engines.runtime.backends import select_backend

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


def test_ctrl_c_stops_at_a_step_boundary_and_resumes_exactly(tmp_path):
    import os
    import signal

    from training.loop import Interrupted

    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    cfg = _tiny_config(folder, tmp_path)
    train(cfg, tmp_path / "straight")

    def press_ctrl_c(step, scalars):  # a real SIGINT to this process, as a terminal sends it
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run in a background job
    with pytest.raises(Interrupted) as stopped:
        train(cfg, tmp_path / "resumed", progress=press_ctrl_c)
    assert stopped.value.step == 5
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["step"] == 5
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    train(cfg, tmp_path / "resumed")
    _assert_same_final_state(tmp_path / "straight", tmp_path / "resumed", steps=8)


def _tiny_recipe(tmp_path: Path, *lines: str) -> Path:
    """A TOML recipe for a tiny run on 30 synthetic colour images, for tests that run the command."""
    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    recipe = tmp_path / "tiny.toml"
    common = [
        f'sources = ["{folder}"]',
        "source_sizes = [40]",
        "crop_size = 32",
        "widths = [8, 16, 32, 64]",
        "batch_size = 8",
        "val_images = 16",
        "val_fraction = 0.2",
        "threads = 1",
        f'cache_dir = "{tmp_path / "cache"}"',
    ]
    recipe.write_text("\n".join(common + list(lines)) + "\n")
    return recipe


def test_sigterm_to_the_command_saves_and_exits_130_with_one_line(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    recipe = _tiny_recipe(tmp_path, "max_steps = 1000000", "val_every = 2")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "training", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first validation saved state: the loop (and its handler) is running
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    step = torch.load(out / "state.pt", weights_only=True)["step"]
    assert f"interrupted at step {step};" in err and "run the same command to resume" in err


@pytest.mark.parametrize(
    "steps,extra",
    # Worn grays: each process degrades its share of the batch as one process would. 2 steps: Adam turns
    # float differences of near-zero gradients into larger weight differences as steps go on, more with
    # these inputs (6 steps: 4e-4), while drawing the wrong share differs by 6e-3 after 2.
    [(6, ()), (2, ("degrade_input = 1.0",))],
)
def test_two_processes_train_the_same_model_as_one(tmp_path, steps, extra):
    """torchrun with 2 CPU processes (gloo, DDP) against one process, step for step.

    GroupNorm: with BatchNorm each CPU process would normalise over its own half of the batch (the
    GPU path converts to SyncBatchNorm, which does not run on CPU).
    """
    import subprocess
    import sys

    # float32: under bf16 (auto precision on CPUs with it in hardware) each process's half-batch rounds
    # differently from the whole batch's, far beyond the tolerance below.
    recipe = _tiny_recipe(
        tmp_path,
        'norm = "group"',
        f"max_steps = {steps}",
        "warmup_steps = 2",
        f"val_every = {steps // 2}",
        "rebalance_lambda = 0.5",
        'precision = "float32"',
        *extra,
    )
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    one = [sys.executable, "-m", "training", str(recipe), "--out", str(tmp_path / "one")]
    subprocess.run(one, check=True, capture_output=True, env=env, timeout=300)
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"]
    two += ["-m", "training", str(recipe), "--out", str(tmp_path / "two")]
    p = subprocess.run(two, capture_output=True, text=True, env=env, timeout=300, check=False)
    if p.returncode != 0 and "SIGABRT" in p.stderr:
        # CI once saw a rank abort inside gloo (SIGABRT, not a Python error), not reproduced here in
        # about 50 runs. One more try, reported, so that a rare crash in the transport shows without
        # failing the suite; a crash that repeats, or any other failure, still fails.
        warnings.warn(f"torchrun rank aborted, run again: {p.stderr[:1500]}", stacklevel=1)
        shutil.rmtree(tmp_path / "two", ignore_errors=True)
        p = subprocess.run(two, capture_output=True, text=True, env=env, timeout=300, check=False)
    # The head holds a crashed rank's own message; the tail, torchrun's summary.
    assert p.returncode == 0, p.stderr[:3000] + "\n...\n" + p.stderr[-1000:]
    a = torch.load(tmp_path / "one" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == steps
    # DDP sums gradients in another order; Adam's normalisation turns those float differences into
    # weight differences of ~1e-5 after 6 steps (seen: at most 4e-5), against steps of lr = 2e-3.
    for k, v in a["task"]["model"].items():
        torch.testing.assert_close(b["task"]["model"][k], v, rtol=0, atol=1e-4, msg=k)
    log_one = (tmp_path / "one" / "log.jsonl").read_text().splitlines()
    log_two = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    assert len(log_one) == len(log_two) == 2  # only the main process writes


@pytest.mark.parametrize("gan_loss", ["bce", "lsgan", "wgan-gp"])
def test_tiny_gan_run_pretrains_then_trains_the_critic_and_resumes_exactly(tmp_path, gan_loss):
    from engines.pipeline import load_colorizer
    from engines.runtime.backends import select_backend

    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    cfg = _tiny_config(folder, tmp_path, family="gan", gan_loss=gan_loss, gan_pretrain_steps=3)
    train(cfg, tmp_path / "straight")
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert "critic_loss" not in log[0] or log[0]["step"] > 3  # step 4 is the first with the critic
    assert "critic_loss" in log[-1] and np.isfinite(log[-1]["critic_loss"])
    train(cfg, tmp_path / "resumed", stop_at_step=3)
    train(cfg, tmp_path / "resumed")
    _assert_same_final_state(tmp_path / "straight", tmp_path / "resumed", steps=8, parts=("model", "critic"))
    # The shipped generator takes a noise channel: different seeds, different colourings; same seed, same.
    c = load_colorizer("custom", select_backend("cpu"), weights=tmp_path / "straight" / "engine.pt")
    assert c.noise_input
    gray = np.repeat(np.linspace(0.2, 0.8, 40 * 30, dtype=np.float32).reshape(30, 40, 1), 3, axis=2)
    first, again = c.colorize(gray), c.colorize(gray)
    c.seed = 1
    other = c.colorize(gray)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4


def test_soup_interpolates_weights_and_recalibrates_batchnorm(tmp_path):
    from engines.models.unet import UNet, UNetConfig
    from training.soup import soup

    cfg = UNetConfig(widths=(8, 16, 32, 64))
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = UNet(cfg)
        paths.append(tmp_path / f"{seed}.pt")
        checkpoint.save(checkpoint.EngineCheckpoint("regression", cfg, m.state_dict()), paths[-1])
    a, b = (checkpoint.load(p).state_dict for p in paths)
    half = soup(paths[0], paths[1], 0.5, batches=[])
    w = "stem.0.0.weight"
    torch.testing.assert_close(half.state_dict[w], (a[w] + b[w]) / 2)
    torch.testing.assert_close(soup(paths[0], paths[1], 0.0, batches=[]).state_dict[w], a[w])
    batches = [torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    recal = soup(paths[0], paths[1], 0.5, batches=batches)
    mean = "stem.0.1.running_mean"
    assert not torch.equal(recal.state_dict[mean], half.state_dict[mean])  # re-estimated from the batches
    torch.testing.assert_close(recal.state_dict[w], half.state_dict[w])  # weights untouched by that
    assert recal.trained_on["soup"]["alpha"] == 0.5


def test_soup_of_gan_engines_sees_their_colour_space_and_noise_channel(tmp_path):
    """BatchNorm re-estimation must feed a GAN generator what it sees at work: two input channels
    (gray and noise) and its colour space's gray, here YUV's, not CIELAB's normalised L."""
    from engines import color
    from engines.models.unet import UNet, UNetConfig
    from training.soup import soup

    cfg = UNetConfig(in_channels=2, widths=(8, 16, 32, 64), color_space="yuv")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = UNet(cfg)
        with torch.no_grad():
            m.stem[0][0].weight[:, 1] = 0  # noise plays no part in the stem's statistics checked below
        paths.append(tmp_path / f"{seed}.pt")
        checkpoint.save(checkpoint.EngineCheckpoint("gan", cfg, m.state_dict(), color_space="yuv"), paths[-1])
    batches = [torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    recal = soup(paths[0], paths[1], 0.5, batches=batches)
    conv = recal.build_model().stem[0][0]
    with torch.no_grad():
        seen = [
            conv(torch.cat((g, torch.zeros_like(g)), 1))
            for g in (color.input_from_lightness(color.rgb_to_lab(b)[:, :1], "yuv") for b in batches)
        ]
    expected = torch.stack([s.mean((0, 2, 3)) for s in seen]).mean(0)
    torch.testing.assert_close(recal.state_dict["stem.0.1.running_mean"], expected, rtol=1e-4, atol=1e-5)


def test_run_writes_curves_and_before_after_sample_grids(tmp_path):
    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    cfg = _tiny_config(folder, tmp_path, val_images=6)
    train(cfg, tmp_path / "run")
    grids = sorted((tmp_path / "run" / "samples").glob("*.png"))
    assert [p.name for p in grids] == ["step-000000.png", "step-000004.png", "step-000008.png"]
    before, after = (cv2.imread(str(p)) for p in (grids[0], grids[-1]))
    # Three rows (gray, predicted, true) of the six validation crops, enlarged twice.
    assert before.shape == after.shape == (3 * 32 * 2, 6 * 32 * 2, 3)
    row = 32 * 2
    np.testing.assert_array_equal(before[:row], after[:row])  # the same gray inputs
    np.testing.assert_array_equal(before[2 * row :], after[2 * row :])  # and the same truth
    assert not np.array_equal(before[row : 2 * row], after[row : 2 * row])  # training changed the predictions
    curves = cv2.imread(str(tmp_path / "run" / "curves.png"))
    assert curves is not None and curves.shape[1] > 800
    assert not list((tmp_path / "run").rglob(".*tmp*"))  # no temporary files left behind


def test_warm_start_copies_matching_layers_and_widens_the_first_for_noise(tmp_path):
    from training.tasks import TASKS

    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    train(_tiny_config(folder, tmp_path), tmp_path / "reg")
    source = checkpoint.load(tmp_path / "reg" / "engine.pt")
    reg = source.build_model()
    prior = torch.ones(22 * 22, dtype=torch.float64)
    l_norm = torch.rand(2, 1, 32, 32) * 2 - 1

    gan = TASKS["gan"](_tiny_config(folder, tmp_path, family="gan", gan_noise=True), prior)
    copied = gan.warm_start(str(tmp_path / "reg" / "engine.pt"))
    assert len(copied) == len(reg.state_dict())
    gan.model.eval()
    with torch.no_grad():
        # Zero weights on the noise channel: the generator starts as the regression model, whatever the noise.
        torch.testing.assert_close(gan.model(torch.cat((l_norm, torch.randn_like(l_norm)), 1)), reg(l_norm))

    cls = TASKS["classification"](_tiny_config(folder, tmp_path, family="classification"), prior)
    fresh_head = cls.model.head.weight.clone()
    copied = cls.warm_start(str(tmp_path / "reg" / "engine.pt"))
    assert "head.weight" not in copied and "stem.0.0.weight" in copied
    torch.testing.assert_close(cls.model.head.weight, fresh_head)  # a 2-channel head cannot seed Q logits
    torch.testing.assert_close(cls.model.stem[0][0].weight, reg.stem[0][0].weight)

    # Classification from classification, on data with other in-gamut bins (as many, so rows copied
    # by position would fit): each shared bin keeps its own row, the one new bin its fresh row.
    cfg = _tiny_config(folder, tmp_path, family="classification")
    prior_a, prior_b = prior.clone(), prior.clone()
    prior_a[0], prior_b[-1] = 0, 0
    old = TASKS["classification"](cfg, prior_a)
    old.export({}, 0, tmp_path / "cls.pt")
    new = TASKS["classification"](cfg, prior_b)
    fresh_head = new.model.head.weight.clone()
    new.warm_start(str(tmp_path / "cls.pt"))
    # (bin 0 is new here; the old engine's row k is bin k + 1, this one's row k + 1)
    torch.testing.assert_close(new.model.head.weight[1:], old.model.head.weight[:-1].half().float())
    torch.testing.assert_close(new.model.head.bias[1:], old.model.head.bias[:-1].half().float())
    torch.testing.assert_close(new.model.head.weight[0], fresh_head[0])


@pytest.mark.parametrize("family", ["regression", "classification"])
def test_yuv_engine_records_its_colour_space_and_colours_through_the_pipeline(tmp_path, family):
    from engines.pipeline import load_colorizer
    from engines.runtime.backends import select_backend

    folder = _make_folder(tmp_path / "imgs", n_colour=40, n_gray=0)
    train(_tiny_config(folder, tmp_path, family=family, color_space="yuv", max_steps=8), tmp_path / "run")
    engine = checkpoint.load(tmp_path / "run" / "engine.pt")
    assert engine.color_space == "yuv" and engine.trained_on["recipe"]["color_space"] == "yuv"
    c = load_colorizer("custom", select_backend("cpu"), weights=tmp_path / "run" / "engine.pt")
    assert c.color_space == "yuv"
    rgb = cv2.cvtColor(_colourful(np.random.default_rng(1), 48), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    out = c.colorize(rgb)
    assert out.shape == rgb.shape and np.isfinite(out).all()
    from engines import color

    l_in = color.rgb_to_lightness(torch.from_numpy(rgb).permute(2, 0, 1))
    l_out = color.rgb_to_lightness(torch.from_numpy(out).permute(2, 0, 1))
    assert (l_out - l_in).abs().max() < 0.5  # lightness kept, whatever space the chroma came from


def test_snapshot_exports_the_latest_weights_not_the_best(tmp_path):
    from training.snapshot import snapshot

    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    train(_tiny_config(folder, tmp_path, family="classification"), tmp_path / "run")
    latest = snapshot(tmp_path / "run", tmp_path / "latest.pt")
    loaded = checkpoint.load(tmp_path / "latest.pt")
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert loaded.trained_on["step"] == state["step"] == 8
    for k, v in state["task"]["model"].items():
        torch.testing.assert_close(loaded.state_dict[k].to(v.dtype), v, atol=2e-3, rtol=1e-3, msg=k)  # fp16 file
    best = checkpoint.load(tmp_path / "run" / "engine.pt")
    torch.testing.assert_close(loaded.family_state["ab_centres"], best.family_state["ab_centres"])
    assert latest.family == "classification"


def test_bf16_autocast_trains_channels_last_and_the_choice_is_logged(tmp_path, capsys):
    from training.tasks import TASKS

    folder = _make_folder(tmp_path / "imgs", n_colour=40, n_gray=0)
    cfg = _tiny_config(folder, tmp_path, precision="bfloat16", max_steps=24, lr=5e-3)
    train(cfg, tmp_path / "run")
    assert "precision: bfloat16 autocast (asked for)" in capsys.readouterr().out
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"] and {rec["precision"] for rec in log} == {"bfloat16 autocast (asked for)"}
    assert checkpoint.load(tmp_path / "run" / "engine.pt").trained_on["precision"].startswith("bfloat16")
    # One step from the same weights and batch in bf16 and in float32: the losses agree to bf16's precision,
    # and the bf16 network really ran channels-last.
    losses = {}
    for precision in ("bfloat16", "float32"):
        torch.manual_seed(0)
        task = TASKS["gan"](replace(cfg, family="gan", precision=precision, gan_pretrain_steps=0), torch.ones(484))
        task.place(distributed.init())
        assert task.bf16 == (precision == "bfloat16")
        conv = next(m for m in task.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == task.bf16
        rgb = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        losses[precision] = task.step(rgb)
    for key in ("recon", "g_adv", "critic_loss"):
        assert losses["bfloat16"][key] == pytest.approx(losses["float32"][key], rel=0.05, abs=1e-3), key


def test_auto_precision_is_bf16_only_where_the_cpu_has_it_in_hardware():
    from engines.runtime.backends import cpu_has_fast_bf16
    from training.tasks import resolve_precision

    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    assert cpu_has_fast_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu)[0] == cpu_has_fast_bf16()
    assert resolve_precision("auto", gpu)[0] and resolve_precision("bfloat16", cpu)[0]
    assert not resolve_precision("float32", gpu)[0]
    with pytest.raises(ValueError, match="precision must be auto, float32 or bfloat16"):
        from_dict({"precision": "fp8"})


def test_pack_holds_training_images_only_within_its_budget(tmp_path):
    from training.data import validation_mask
    from training.pack import pack

    a = _make_folder(tmp_path / "a", n_colour=60, n_gray=3)
    b = _make_folder(tmp_path / "b", n_colour=20, n_gray=0, size=48)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'sources = ["{a}", "{b}"]\nsource_sizes = [40, 48]\nval_fraction = 0.2\ncache_dir = "{tmp_path / "cache"}"\n'
    )
    everything = pack(recipe, tmp_path / "all.tar.gz", max_mb=10)
    with tarfile.open(tmp_path / "all.tar.gz") as tar:
        names = tar.getnames()
    for source, n_colour in (("a", 60), ("b", 20)):
        stems = [f"c{i:03d}.png" for i in range(n_colour)]
        kept = {s for s, v in zip(stems, validation_mask(stems, 0.2)) if not v}
        assert {n.split("/", 1)[1][:-4] for n in names if n.startswith(f"{source}/")} == kept  # no gray, no validation
    assert everything["images"] == len(names) == sum(everything["per_source"])
    small = pack(recipe, tmp_path / "small.tar.gz", max_mb=0.008)
    assert (tmp_path / "small.tar.gz").stat().st_size <= 0.008 * 2**20
    assert 0 < small["images"] < everything["images"]
    # Drawn in proportion to the sources' sizes, not one source first.
    assert all(k > 0 for k in small["per_source"])
    # The pack trains like any shard, and a time budget stops the run validated, with an engine.
    cfg = _tiny_config(tmp_path / "all.tar.gz", tmp_path, max_steps=100_000, val_every=100_000, max_minutes=0.002)
    cfg = replace(cfg, sources=(str(tmp_path / "all.tar.gz"),))
    train(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and 0 < log[0]["step"] < 100_000
    assert checkpoint.load(tmp_path / "run" / "engine.pt").trained_on["step"] == log[0]["step"]


def test_the_gpu_run_script_runs_on_the_cpu_with_a_tiny_budget(tmp_path):
    import subprocess
    import sys

    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0, size=64)
    out = tmp_path / "out"
    out.mkdir()
    root = Path(__file__).resolve().parents[1]
    overrides = {
        "sources": f'["{folder}"]',
        "init_from": '""',  # the committed snapshot's warm start is tested elsewhere; keep this fast
        "widths": "[8, 16, 32, 64]",
        "batch_size": "8",
        "max_minutes": "0.005",
        "val_images": "16",
        "val_fraction": "0.2",
        "cache_dir": str(tmp_path / "cache"),
    }
    args = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    env = {
        **os.environ,
        "OUT": str(out),
        "GPU_RUN_DIR": str(tmp_path / "run"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    r = subprocess.run(
        ["bash", str(root / "training" / "gpu_run.sh"), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert {p.name for p in out.iterdir()} >= {
        "train.log",
        "device.txt",
        "log.jsonl",
        "curves.png",
        "engine.pt",
        "latest.pt",
    }
    assert (
        "precision: float32" in (out / "train.log").read_text()
        or "precision: bfloat16" in (out / "train.log").read_text()
    )
    latest = checkpoint.load(out / "latest.pt")
    assert latest.family == "classification" and latest.trained_on["step"] > 0


def test_keep_snapshots_writes_every_validations_weights(tmp_path):
    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    train(_tiny_config(folder, tmp_path, keep_snapshots=True), tmp_path / "run")
    snaps = sorted((tmp_path / "run" / "snapshots").iterdir())
    assert [p.name for p in snaps] == ["step-0000004.pt", "step-0000008.pt"]
    a, b = (checkpoint.load(p) for p in snaps)
    assert (a.trained_on["step"], b.trained_on["step"]) == (4, 8) and "auc" in b.metrics
    assert any(not torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    final = torch.load(tmp_path / "run" / "state.pt", weights_only=True)["task"]["model"]
    for k, v in b.state_dict.items():  # the last snapshot is the final weights, in fp16
        torch.testing.assert_close(v.float(), final[k].float(), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("family", ["regression", "gan"])
def test_regression_and_gan_warm_start_from_a_classification_trunk(tmp_path, family):
    from training.tasks import TASKS

    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    train(_tiny_config(folder, tmp_path, family="classification", max_steps=4), tmp_path / "clf")
    source = checkpoint.load(tmp_path / "clf" / "engine.pt").state_dict
    task = TASKS[family](_tiny_config(folder, tmp_path, family=family), torch.ones(484))
    copied = set(task.warm_start(str(tmp_path / "clf" / "engine.pt")))
    trunk = {k for k in source if not k.startswith("head.")}
    assert trunk <= copied and not any(k.startswith("head.") for k in copied)
    own = task.model.state_dict()
    for k in trunk - {"stem.0.0.weight"}:  # the GAN's first layer gains a zero noise channel
        torch.testing.assert_close(own[k], source[k].to(own[k].dtype))


def test_weight_average_follows_the_steps_and_is_what_is_validated_exported_and_resumed(tmp_path, monkeypatch):
    """``ema_decay``: after each step the average moves (1 - decay) of the way to the weights (checked
    against a hand-computed average over the steps' weights); snapshots and the best engine hold the
    average; a resumed run ends bit-identical; a state saved without an average starts it afresh."""
    from training import tasks
    from training.snapshot import snapshot

    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    cfg = _tiny_config(folder, tmp_path, ema_decay=0.75, keep_snapshots=True)
    seen = []
    real_update = tasks.WeightAverage.update

    def update(self, model):  # record each step's weights, then the real update
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        real_update(self, model)

    monkeypatch.setattr(tasks.WeightAverage, "update", update)
    train(cfg, tmp_path / "straight")
    monkeypatch.setattr(tasks.WeightAverage, "update", real_update)
    assert len(seen) == 8
    state = torch.load(tmp_path / "straight" / "state.pt", weights_only=True)["task"]
    name = "head.weight"
    # By hand from the step-4 snapshot (the average then, in an fp16 file): a_k = 0.75 a_(k-1) + 0.25 w_k.
    want = checkpoint.load(tmp_path / "straight" / "snapshots" / "step-0000004.pt").state_dict[name].float()
    for w in seen[4:]:
        want = 0.75 * want + 0.25 * w[name]
    torch.testing.assert_close(state["ema"][name], want, atol=2e-3, rtol=1e-3)
    assert not torch.equal(state["ema"][name], state["model"][name])
    snap8 = checkpoint.load(tmp_path / "straight" / "snapshots" / "step-0000008.pt")
    torch.testing.assert_close(snap8.state_dict[name].float(), state["ema"][name], atol=2e-3, rtol=1e-3)
    latest = snapshot(tmp_path / "straight", tmp_path / "latest.pt")
    assert latest.metrics["averaged"] is True
    torch.testing.assert_close(latest.state_dict[name], state["ema"][name])

    train(cfg, tmp_path / "resumed", stop_at_step=5)
    train(cfg, tmp_path / "resumed")
    _assert_same_final_state(tmp_path / "straight", tmp_path / "resumed", steps=8, parts=("model", "ema"))

    plain = replace(cfg, ema_decay=0.0)
    train(plain, tmp_path / "late", stop_at_step=5)  # saved without an average
    assert "ema" not in torch.load(tmp_path / "late" / "state.pt", weights_only=True)["task"]
    train(replace(cfg, max_steps=6), tmp_path / "late")  # resumed with one: it starts from the step-5 weights
    late = torch.load(tmp_path / "late" / "state.pt", weights_only=True)["task"]
    assert late["ema"].keys() == late["model"].keys()
    assert not torch.equal(late["ema"][name], late["model"][name])


def _make_class_folders(root: Path, n_per_class: int, size: int = 40) -> Path:
    """Colourful images in two class folders that lightness alone tells apart: ``bright`` ones (levels
    128-255) and ``dark`` ones (0-127)."""
    rng = np.random.default_rng(0)
    for name, low in (("bright", 128), ("dark", 0)):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            cv2.imwrite(str(root / name / f"{i:03d}.png"), (low + _colourful(rng, size) // 2).astype(np.uint8))
    return root


def test_semantic_loss_labels_learn_the_classes_and_a_run_without_it_resumes_with_it(tmp_path):
    """``class_loss_weight`` (Iizuka et al.'s auxiliary classification): each training image's label is
    its folder, in the sampler's order; the head learns classes that lightness tells apart; a run with
    it resumes exactly; a state saved without it (a branch of the campaign) resumes with a fresh head."""
    from training.data import training_sets_with_classes

    folder = _make_class_folders(tmp_path / "imgs", n_per_class=24)
    train_sets, _, labels, classes = training_sets_with_classes((str(folder),), (40,), (1,), 0.2, tmp_path / "c")
    assert classes == ["bright", "dark"]
    images = np.concatenate(train_sets)
    assert len(labels) == len(images) and set(labels.tolist()) == {0, 1}
    assert ((images.mean(axis=(1, 2, 3)) > 127) == (labels == 0)).all()

    cfg = _tiny_config(folder, tmp_path, family="classification", class_loss_weight=1.0, max_steps=60, lr=5e-3)
    cfg = replace(cfg, val_every=20)
    train(cfg, tmp_path / "straight")
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["class_loss"] < 0.3 < math.log(2)  # chance is log 2
    assert log[-1]["loss"] == pytest.approx(log[-1]["colour_loss"] + log[-1]["class_loss"], rel=1e-5)
    engine = checkpoint.load(tmp_path / "straight" / "engine.pt")  # the engine is the plain network
    assert not any(k.startswith("semantic") for k in engine.state_dict)
    engine.build_model().load_state_dict(engine.state_dict)

    train(cfg, tmp_path / "resumed", stop_at_step=25)
    train(cfg, tmp_path / "resumed")
    _assert_same_final_state(tmp_path / "straight", tmp_path / "resumed", steps=60)
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=True)["task"]["semantic"]["head"]
    b = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["task"]["semantic"]["head"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)

    train(replace(cfg, class_loss_weight=0.0), tmp_path / "branch", stop_at_step=25)
    assert "semantic" not in torch.load(tmp_path / "branch" / "state.pt", weights_only=True)["task"]
    train(cfg, tmp_path / "branch")
    assert "semantic" in torch.load(tmp_path / "branch" / "state.pt", weights_only=True)["task"]


def test_semantic_loss_is_refused_for_the_gan_and_unlabelled_tasks(tmp_path):
    from training.data import DataError
    from training.tasks import TASKS

    with pytest.raises(ValueError, match="class_loss_weight is for the regression and classification"):
        from_dict({"family": "gan", "class_loss_weight": 0.5})
    with pytest.raises(ValueError, match="class_loss_weight must be 0"):
        from_dict({"class_loss_weight": -1})
    folder = _make_folder(tmp_path / "imgs", n_colour=10, n_gray=0)
    with pytest.raises(DataError, match="needs the training images' classes"):
        cfg = _tiny_config(folder, tmp_path, family="classification", class_loss_weight=1.0)
        TASKS["classification"](cfg, torch.ones(484))


def test_compiled_classification_loss_matches_the_eager_one():
    """``compile_loss``: the fused loss gives the eager loss and gradient to float rounding, on bf16
    channels-last logits as the bf16 training step makes them."""
    from training.tasks import _compiled_soft_cross_entropy, soft_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 30, 6, 8, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    idx = torch.randint(0, 30, (2, 5, 6, 8), generator=g)
    weights = torch.softmax(torch.randn(2, 5, 6, 8, generator=g), 1)
    results = []
    for fn in (soft_cross_entropy, _compiled_soft_cross_entropy()):
        x = logits.clone().requires_grad_(True)
        loss = fn(x, idx, weights)
        (loss * torch.linspace(0, 1, loss.numel()).view(loss.shape)).sum().backward()
        results.append((loss.detach(), x.grad.float()))
    (eager, eager_grad), (fused, fused_grad) = results
    assert eager.shape == (2, 6, 8) and eager.dtype == torch.float32
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_grad, eager_grad, rtol=1e-2, atol=1e-3)  # the gradient is bf16


def test_the_pack_budget_is_what_the_tracked_files_leave_of_the_device_allowance(tmp_path):
    import subprocess

    from training.pack import room_left

    with pytest.raises(ValueError, match="not a git checkout"):
        room_left(tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "weights.pt").write_bytes(b"x" * 2**20)
    (tmp_path / "untracked.bin").write_bytes(b"x" * 2**20)  # not added: carried only if asked, not counted
    assert room_left(tmp_path, total_mib=64, margin_mib=2) == pytest.approx(62)
    subprocess.run(["git", "add", "weights.pt"], cwd=tmp_path, check=True)
    assert room_left(tmp_path, total_mib=64, margin_mib=2) == pytest.approx(61)
    with pytest.raises(ValueError, match="no room"):
        room_left(tmp_path, total_mib=2.5, margin_mib=2)
