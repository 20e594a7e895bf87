"""The CLI contract: names, folders and globs, exit codes, --json, --overwrite, bad input, and
that inputs are never modified. Runs the real shipped engine on small generated photos."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from colorcli.app import app
from tests.conftest import lightness

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _photo(path: Path, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w), dtype=np.uint8), (5, 5), 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_single_file_default_output_beside_input(tmp_path):
    src = _photo(tmp_path / "scan.png")
    before = _digest(src)
    r = invoke(src)
    assert r.exit_code == 0, r.output
    out = tmp_path / "scan_color.png"
    rgb_in = cv2.imread(str(src))[..., ::-1] / 255.0
    rgb_out = cv2.imread(str(out))[..., ::-1] / 255.0
    assert rgb_out.shape == rgb_in.shape
    assert np.abs(lightness(rgb_out) - lightness(rgb_in)).mean() < 1.0
    assert _digest(src) == before


def test_explicit_output_file_and_format_from_extension(tmp_path):
    src = _photo(tmp_path / "a.png", 31, 47)
    r = invoke(src, "-o", tmp_path / "out.jpg", "--model", "regression", "--backend", "cpu")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert cv2.imread(str(tmp_path / "out.jpg")).shape[:2] == (31, 47)


def test_folders_globs_and_recursion_keep_names(tmp_path):
    _photo(tmp_path / "in" / "x.png")
    _photo(tmp_path / "in" / "sub" / "y.jpg")
    _photo(tmp_path / "loose" / "z.bmp")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    r = invoke(tmp_path / "in", str(tmp_path / "loose" / "*.bmp"), "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["x.png", "z.bmp"]
    r = invoke(tmp_path / "in", "-o", tmp_path / "out2", "--recursive")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out2" / "sub" / "y.jpg").is_file() and (tmp_path / "out2" / "x.png").is_file()


def test_rerun_on_folder_skips_its_own_outputs(tmp_path):
    _photo(tmp_path / "d" / "x.png")
    assert invoke(tmp_path / "d").exit_code == 0
    r = invoke(tmp_path / "d", "--json")
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [Path(rec["input"]).name for rec in records] == ["x.png"]
    assert records[0]["status"] == "error" and "--overwrite" in records[0]["error"]


def test_existing_output_needs_overwrite(tmp_path):
    src = _photo(tmp_path / "a.png")
    out = tmp_path / "a_color.png"
    out.write_bytes(b"precious")
    r = invoke(src)
    assert r.exit_code == 1 and "--overwrite" in r.stderr
    assert out.read_bytes() == b"precious"
    assert invoke(src, "--overwrite").exit_code == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_output_may_not_replace_input(tmp_path):
    src = _photo(tmp_path / "a.png")
    before = _digest(src)
    r = invoke(src, "-o", src, "--overwrite")
    assert r.exit_code == 1 and "replace the input" in r.stderr
    assert _digest(src) == before


def test_mixed_folder_json_and_exit_status(tmp_path):
    d = tmp_path / "mixed"
    _photo(d / "good1.png")
    _photo(d / "good2.jpg", 33, 35)
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_text("hello, I am not a picture")
    good = _photo(tmp_path / "full.png", 64, 64)
    (d / "truncated.png").write_bytes(good.read_bytes()[:200])
    r = invoke(d, tmp_path / "missing.png", "--json", "-o", tmp_path / "out")
    assert r.exit_code == 1
    records = [json.loads(line) for line in r.stdout.splitlines()]  # stdout holds JSON only
    by_name = {Path(rec["input"]).name: rec for rec in records}
    assert set(by_name) == {"good1.png", "good2.jpg", "empty.jpg", "text.png", "truncated.png", "missing.png"}
    for rec in records:
        assert set(rec) == {"input", "output", "status", "error", "seconds"}
        ok = rec["input"].endswith(("good1.png", "good2.jpg"))
        assert rec["status"] == ("ok" if ok else "error"), rec
        assert (rec["error"] is None) == ok and (rec["output"] is not None) == ok
        if not ok:
            assert "\n" not in rec["error"] and "Traceback" not in rec["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good1.png", "good2.jpg"]


def test_unusual_images_never_crash(tmp_path):
    """16-bit, alpha, palette, 1x1 and odd sizes: processed; output keeps bit depth and alpha."""
    d = tmp_path / "odd"
    d.mkdir()
    rng = np.random.default_rng(3)
    g16 = rng.integers(0, 65536, (21, 13), dtype=np.uint16)
    cv2.imwrite(str(d / "gray16.png"), g16)
    bgra = np.dstack(
        [rng.integers(0, 256, (9, 11, 3), dtype=np.uint8), np.linspace(0, 255, 99, dtype=np.uint8).reshape(9, 11)]
    )
    cv2.imwrite(str(d / "alpha.png"), bgra)
    cv2.imwrite(str(d / "one.png"), np.array([[128]], np.uint8))
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)).convert("P").save(d / "palette.png")
    r = invoke(d, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stdout
    out16 = cv2.imread(str(tmp_path / "out" / "gray16.png"), cv2.IMREAD_UNCHANGED)
    assert out16.dtype == np.uint16 and out16.shape == (21, 13, 3)
    l_in = lightness(np.repeat(g16[..., None], 3, 2) / 65535.0)
    assert np.abs(lightness(out16[..., ::-1] / 65535.0) - l_in).mean() < 1.0
    out_a = cv2.imread(str(tmp_path / "out" / "alpha.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(out_a[..., 3], bgra[..., 3])
    assert cv2.imread(str(tmp_path / "out" / "one.png")).shape == (1, 1, 3)


def test_unwritable_output_is_a_per_file_error(tmp_path):
    src = _photo(tmp_path / "a.png")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = invoke(src, _photo(tmp_path / "b.png"), "-o", blocker / "sub")
    assert r.exit_code == 1
    assert len([line for line in r.stderr.splitlines() if line.startswith("colorize:") and "a.png" in line]) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "unknown model"),
        (["--backend", "tensorrt"], "tensorrt"),
        (["--backend", "warp-drive"], "warp-drive"),
    ],
)
def test_bad_usage_exits_2(tmp_path, args, message):
    r = invoke(_photo(tmp_path / "a.png"), *args)
    assert r.exit_code == 2
    assert message in r.output
    assert not (tmp_path / "a_color.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    r = invoke(_photo(tmp_path / "a.png"), "--backend", "cuda")
    assert r.exit_code == 2 and "no CUDA GPU" in r.stderr


def test_verbose_says_which_backend(tmp_path):
    r = invoke(_photo(tmp_path / "a.png"), "-v")
    assert r.exit_code == 0 and "picked" in r.stderr


def test_threads_option_sets_engine_threads_and_keeps_the_result(tmp_path):
    src = _photo(tmp_path / "a.png")
    before = torch.get_num_threads()
    try:
        # PyTorch's threads (the path without PyTorch sets ONNX Runtime's: tests/test_ort_pipeline.py)
        assert invoke(src, "-o", tmp_path / "all.png", "--backend", "cpu").exit_code == 0
        assert invoke(src, "-o", tmp_path / "one.png", "--threads", "1", "--backend", "cpu").exit_code == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    a = cv2.imread(str(tmp_path / "all.png")).astype(int)
    b = cv2.imread(str(tmp_path / "one.png")).astype(int)
    assert np.abs(a - b).max() <= 1  # thread count may change float summation order, nothing more
    r = invoke(src, "-o", tmp_path / "x.png", "--threads", "0")
    assert r.exit_code == 2 and not (tmp_path / "x.png").exists()


def test_help_version_and_module_entry_point():
    for args in (["--help"], ["--version"], ["run", "--help"]):
        p = subprocess.run([sys.executable, "-m", "colorcli", *args], capture_output=True, text=True, check=False)
        assert p.returncode == 0, p.stderr
    assert "colorize" in p.stdout
    p = subprocess.run([sys.executable, "-m", "colorcli"], capture_output=True, text=True, check=False)
    assert p.returncode == 2  # no arguments: usage


def test_models_lists_engines():
    r = invoke("models")
    assert r.exit_code == 0 and "regression" in r.stdout


def test_export_writes_onnx(tmp_path):
    r = invoke("export", tmp_path / "m.onnx")
    assert r.exit_code == 0, r.output
    import onnx

    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    assert invoke("export", tmp_path / "m2.onnx", "--model", "nope").exit_code == 2


def test_decoding_options_are_refused_for_regression(tmp_path):
    r = invoke(_photo(tmp_path / "a.png"), "--temperature", "0.2")
    assert r.exit_code == 2 and "classification engines only" in r.stderr


def test_samples_need_a_noise_engine(tmp_path):
    r = invoke(_photo(tmp_path / "a.png"), "--samples", "3")
    assert r.exit_code == 2 and "noise input" in r.stderr


def test_samples_and_seed_with_a_gan_checkpoint(tmp_path):
    """A tiny GAN generator with a noise channel, saved in the shipped format, gives N different colourings."""
    from engines.models import checkpoint
    from engines.models.unet import UNet, UNetConfig

    torch.manual_seed(0)
    gen = UNet(UNetConfig(in_channels=2, widths=(8, 16, 32, 64)))
    torch.nn.init.normal_(gen.head.weight, std=1.0)
    weights = tmp_path / "gan.pt"
    checkpoint.save(checkpoint.EngineCheckpoint("gan", gen.config, gen.state_dict(), working_size=64), weights)
    src = _photo(tmp_path / "a.png")
    # One path for both runs (PyTorch's: bf16 on some CPUs; the path without it is float32, and its
    # seeds are held to PyTorch's in tests/test_ort_pipeline.py).
    cpu = ("--backend", "cpu")
    r = invoke(src, "--weights", weights, "--samples", "3", "--seed", "7", "--json", "-o", tmp_path / "out", *cpu)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    names = [Path(p).name for p in rec["outputs"]]
    assert names == ["a_1.png", "a_2.png", "a_3.png"] and rec["output"] == rec["outputs"][0]
    imgs = [cv2.imread(p) for p in rec["outputs"]]
    assert np.abs(imgs[0].astype(int) - imgs[1]).max() > 0
    r = invoke(src, "--weights", weights, "--seed", "8", "-o", tmp_path / "single.png", *cpu)
    assert r.exit_code == 0
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "single.png")), imgs[1])  # seed 7 + 1


def test_films_go_through_the_video_pipeline(tmp_path):
    from tests.test_video import make_clip, video_pts

    clip = tmp_path / "film.mov"
    make_clip(clip, n=12, size=(64, 48), audio="aac")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(clip.read_bytes()[:300])
    r = invoke(clip, bad, "-o", tmp_path / "out", "--json", "--smoothing", "flow", "--crf", "20")
    assert r.exit_code == 1
    recs = {Path(rec["input"]).name: rec for rec in map(json.loads, r.stdout.splitlines())}
    assert recs["film.mov"]["status"] == "ok" and recs["film.mov"]["output"].endswith("film.mov")
    assert recs["broken.mp4"]["status"] == "error" and "\n" not in recs["broken.mp4"]["error"]
    pts_in, tb_in = video_pts(clip)
    pts_out, tb_out = video_pts(tmp_path / "out" / "film.mov")
    assert len(pts_out) == len(pts_in) == 12
    assert [p * tb_out for p in pts_out] == [p * tb_in for p in pts_in]
    # Default output name for a film, and the existing-output rule.
    assert invoke(clip).exit_code == 0 and (tmp_path / "film_color.mov").is_file()
    r = invoke(clip)
    assert r.exit_code == 1 and "--overwrite" in r.stderr


# --------------------------------------------------------------------------------------------
# colorize eval on films
# --------------------------------------------------------------------------------------------


def test_eval_videos_json_has_the_video_metrics(tmp_path):
    from tests.test_evaluation import flickered, moving_frames, write_video

    frames = moving_frames(n=8)
    truth = write_video(tmp_path / "gt" / "shot.mkv", frames)
    write_video(tmp_path / "res" / "shot.mp4", flickered(frames), "libx264")
    r = runner.invoke(app, ["eval", str(tmp_path / "res"), str(tmp_path / "gt"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["summary"]["videos"] == 1 and out["summary"]["frames"] == 8
    assert [v["name"] for v in out["videos"]] == ["shot"]
    s = out["summary"]
    assert s["warping_error"] > 10 * s["warping_error_truth"] and s["cdc"] > 10 * s["cdc_truth"]
    r = runner.invoke(app, ["eval", str(truth), str(truth), "--json"])
    s = json.loads(r.stdout)["summary"]
    assert s["auc"] == 100.0 and s["warping_error"] == s["warping_error_truth"] and s["cdc"] == s["cdc_truth"]


@pytest.mark.parametrize(
    ("result_frames", "message"),
    [
        (lambda f: f[:7], "colorize: eval: shot: frame counts differ (7 in the result, 8 in the truth)"),
        (lambda f: [x[:24, :32].copy() for x in f], "colorize: eval: shot: frame sizes differ (32x24 vs 64x48)"),
    ],
)
def test_eval_videos_that_do_not_match_exit_2_with_one_line(tmp_path, result_frames, message):
    from tests.test_evaluation import moving_frames, write_video

    frames = moving_frames(n=8)
    truth = write_video(tmp_path / "shot.mkv", frames)
    result = write_video(tmp_path / "res" / "shot.mkv", result_frames(frames))
    r = runner.invoke(app, ["eval", str(result), str(truth)])
    assert r.exit_code == 2
    assert r.stderr.strip() == message and r.stdout == ""


# --------------------------------------------------------------------------------------------
# --saturation
# --------------------------------------------------------------------------------------------


def test_saturation_scales_colourfulness_and_keeps_lightness(tmp_path):
    from skimage import data
    from skimage.color import rgb2lab

    from tests.test_video import decode_rgb, make_clip

    truth = tmp_path / "truth" / "astronaut.png"
    truth.parent.mkdir()
    assert cv2.imwrite(str(truth), cv2.resize(data.astronaut(), (160, 160), interpolation=cv2.INTER_AREA)[..., ::-1])
    colourfulness = {}
    for s in ("0", "0.5", "1", "1.5"):
        out = tmp_path / f"s{s}"
        assert invoke(truth, "-o", out / "astronaut.png", "--model", "classification", "--saturation", s).exit_code == 0
        r = runner.invoke(app, ["eval", str(out), str(truth.parent), "--json", "--no-classifier"])
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)["summary"]
        assert summary["lightness_error"] < 0.5  # the input's L (8-bit rounding only), whatever S is
        colourfulness[s] = summary["colourfulness"]
    assert colourfulness["1.5"] > 1.2 * colourfulness["1"] > 1.2 * 1.2 * colourfulness["0.5"]
    assert colourfulness["0.5"] > 5 * colourfulness["0"]
    gray = rgb2lab(cv2.imread(str(tmp_path / "s0" / "astronaut.png"))[..., ::-1] / 255.0)
    assert np.abs(gray[..., 1:]).max() < 1.0  # S = 0: neutral gray
    # Films take their colour from the same place.
    clip = tmp_path / "film.mp4"
    make_clip(clip, n=6, size=(64, 48))
    assert invoke(clip, "-o", tmp_path / "gray.mp4", "--saturation", "0", "--crf", "0").exit_code == 0
    frames = np.stack(decode_rgb(tmp_path / "gray.mp4"))
    assert np.abs(rgb2lab(frames)[..., 1:]).max() < 3.0  # 4:2:0 and YUV rounding of a gray
    # Negative (or not a number): one line, exit 2, nothing written.
    for bad in ("-0.5", "nan"):
        r = invoke(truth, "-o", tmp_path / "bad.png", "--saturation", bad)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--saturation" in r.stderr
        assert not (tmp_path / "bad.png").exists()


# --------------------------------------------------------------------------------------------
# colorize sheet
# --------------------------------------------------------------------------------------------


def test_sheet_is_a_grid_of_what_its_labels_give(tmp_path):
    from skimage import data

    src = tmp_path / "rocket.png"
    assert cv2.imwrite(str(src), cv2.cvtColor(cv2.resize(data.rocket(), (96, 64)), cv2.COLOR_RGB2GRAY))
    out = tmp_path / "out" / "sheet.png"
    args = ["sheet", src, "-o", out, "--models", "regression,classification", "--sizes", "32,64"]
    r = invoke(*args, "--temperatures", "0.3,1", "--cell", "80", "--backend", "cpu")
    assert r.exit_code == 0, r.output
    assert [p.name for p in out.parent.iterdir()] == ["sheet.png"]  # written atomically, no leftovers
    sheet = cv2.imread(str(out))
    assert sheet.shape[0] < 3 * 200 and sheet.shape[1] < 2 * 420  # bounded cells: 3 rows x 2 columns
    # Each cell is what `colorize PHOTO <its label>` gives, on a 3 x 2 grid in label order.
    rows = ["--model regression", "--model classification --temperature 0.3", "--model classification --temperature 1"]
    where = []
    for row in rows:
        for size in (32, 64):
            single = tmp_path / f"{len(where)}.png"
            flags = [*row.split(), "--working-size", str(size)]
            assert invoke(src, "-o", single, *flags, "--backend", "cpu").exit_code == 0
            want = cv2.resize(cv2.imread(str(single)), (80, 53), interpolation=cv2.INTER_AREA)
            score = cv2.matchTemplate(sheet, want, cv2.TM_SQDIFF)
            _, _, (x, y), _ = cv2.minMaxLoc(score)
            diff = np.abs(sheet[y : y + 53, x : x + 80].astype(int) - want).max()
            assert diff <= 2, (row, size, diff)
            where.append((x, y))
    xs, ys = sorted({x for x, _ in where}), sorted({y for _, y in where})
    assert len(xs) == 2 and len(ys) == 3
    assert where == [(x, y) for y in ys for x in xs]  # engines down, sizes across


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--models", "regression,nope"], 2, "unknown model 'nope'"),
        (["--sizes", "64,eight"], 2, "--sizes: 'eight' is not a whole number"),
        (["--sizes", "8"], 2, "--sizes: 8 is outside 16..4096"),
        (["--temperatures", "0"], 2, "--temperatures: 0.0 is outside 0.01..10.0"),
    ],
)
def test_sheet_bad_options_are_one_line(tmp_path, args, code, message):
    r = invoke("sheet", _photo(tmp_path / "a.png"), "-o", tmp_path / "s.png", *args)
    assert r.exit_code == code and r.stderr.count("\n") == 1 and message in r.stderr, r.output
    assert not (tmp_path / "s.png").exists()


def test_sheet_bad_inputs_are_one_line(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a photo")
    for photo, code in ((tmp_path / "missing.png", 1), (tmp_path / "notes.jpg", 1)):
        r = invoke("sheet", photo, "-o", tmp_path / "s.png", "--models", "regression", "--sizes", "32")
        assert r.exit_code == code and r.stderr.count("\n") == 1 and photo.name in r.stderr, r.output
    r = invoke("sheet", _photo(tmp_path / "a.png"), "-o", tmp_path / "s.txt")
    assert r.exit_code == 2 and "unsupported output format" in r.stderr
    existing = tmp_path / "kept.png"
    existing.write_bytes(b"mine")
    r = invoke("sheet", tmp_path / "a.png", "-o", existing)
    assert r.exit_code == 1 and "--overwrite" in r.stderr and existing.read_bytes() == b"mine"
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "s.txt").exists()


def test_a_folder_goes_in_batches_with_each_photo_as_alone(tmp_path):
    """Eleven photos of two sizes, a corrupt one and an unwritable output among them: one JSON record per
    input in input order, the failures one line each without stopping the others, and every written
    photo within a level of the same photo coloured by a command of its own."""
    d = tmp_path / "in"
    names = [f"p{k:02d}.png" for k in range(11)]
    for k, name in enumerate(names):
        _photo(d / name, *((48, 64) if k % 4 else (33, 35)), seed=k)
    (d / "p05.png").write_bytes((d / "p04.png").read_bytes()[:300])  # corrupt, mid-batch
    (tmp_path / "out" / "p07.png").mkdir(parents=True)  # its output cannot be written
    digests = {name: _digest(d / name) for name in names}
    r = invoke(d, "--json", "--overwrite", "-o", tmp_path / "out")
    assert r.exit_code == 1
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [Path(rec["input"]).name for rec in records] == names
    for rec in records:
        assert set(rec) == {"input", "output", "status", "error", "seconds"} and rec["seconds"] >= 0
        failed = Path(rec["input"]).name in ("p05.png", "p07.png")
        assert rec["status"] == ("error" if failed else "ok"), rec
        if failed:
            assert rec["output"] is None and "\n" not in rec["error"] and "Traceback" not in rec["error"]
        else:
            assert rec["output"] == str(tmp_path / "out" / Path(rec["input"]).name)
    assert "cannot write" in records[7]["error"]
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file())
    assert written == [n for n in names if n not in ("p05.png", "p07.png")]
    assert {name: _digest(d / name) for name in names} == digests  # inputs untouched
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporaries left
    for name in ("p00.png", "p03.png", "p06.png"):  # both sizes, and a photo batched after the failure
        assert invoke(d / name, "-o", tmp_path / "alone" / name).exit_code == 0
        a = cv2.imread(str(tmp_path / "out" / name)).astype(int)
        b = cv2.imread(str(tmp_path / "alone" / name)).astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1
        assert np.abs(a - a.mean(axis=2, keepdims=True)).max() > 2  # coloured, not gray


def test_the_first_photos_are_read_while_the_engine_loads(tmp_path, monkeypatch):
    """While the engine loads, the prefetch thread reads the leading photos in order until it holds
    _FLIGHT_PIXELS; the pipeline reads the rest; every photo is read once and written as without it."""
    import threading

    import engines.pipeline
    from colorcli import app as app_module

    d = tmp_path / "in"
    for k in range(6):
        _photo(d / f"p{k}.png", seed=k)  # 48x64 each
    monkeypatch.setattr(app_module, "_FLIGHT_PIXELS", 2 * 48 * 64)  # the prefetch may hold two
    readers, done = [], threading.Semaphore(0)
    real_read, real_load = app_module._read, engines.pipeline.load_colorizer

    def read(job, opts):
        readers.append((Path(job.input).name, threading.current_thread().name))
        result = real_read(job, opts)
        done.release()
        return result

    def load(*args, **kwargs):  # a slow engine load: returns once two photos are read
        assert done.acquire(timeout=60) and done.acquire(timeout=60)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(app_module, "_read", read)
    monkeypatch.setattr(engines.pipeline, "load_colorizer", load)
    assert invoke(d, "-o", tmp_path / "out").exit_code == 0
    assert sorted(name for name, _ in readers) == [f"p{k}.png" for k in range(6)]  # each once
    early = [name for name, thread in readers if thread == "colorize-prefetch"]
    assert early == ["p0.png", "p1.png"]
    monkeypatch.setattr(app_module, "_read", real_read)
    for k in (0, 4):
        assert invoke(d / f"p{k}.png", "-o", tmp_path / "alone" / f"p{k}.png").exit_code == 0
        a = cv2.imread(str(tmp_path / "out" / f"p{k}.png")).astype(int)
        b = cv2.imread(str(tmp_path / "alone" / f"p{k}.png")).astype(int)
        assert np.abs(a - b).max() <= 1
