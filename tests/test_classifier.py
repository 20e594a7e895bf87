"""The ResNet-18 classifier: its trainer (from labelled folders, resumable) and the realism probe of
``colorize eval`` built on it."""

import json

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from colorcli.app import app
from engines.evaluation.scoring import RealismProbe, realism_networks
from engines.models import resnet
from training import classifier as trainer

runner = CliRunner()


def _labelled_folder(root, n_per_class=24, size=32):
    """Two visually distinct classes: reddish blobs and bluish stripes."""
    rng = np.random.default_rng(0)
    for cls in ("red", "blue"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(n_per_class):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            if cls == "red":
                cv2.circle(img, (int(rng.integers(8, 24)), int(rng.integers(8, 24))), 7, (40, 40, 230), -1)
            else:
                img[:, ::4] = (230, 90, 40)
            cv2.imwrite(str(root / "train" / cls / f"{i}.png"), img)
    return root


def test_resnet18_layout_and_file_round_trip(tmp_path):
    net = resnet.ResNet(resnet.ResNetConfig(num_classes=200, image_size=64, stem_stride=2, stem_pool=True))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 18  # 17 3x3 convolutions + the fc: ResNet-18
    assert 11.0e6 < sum(p.numel() for p in net.parameters()) < 11.5e6
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert net.eval()(x).shape == (2, 200) and net.features(x).shape == (2, 512)
    resnet.save(resnet.ClassifierFile(net.config, [str(i) for i in range(200)], net.state_dict()), tmp_path / "c.pt")
    back = resnet.load(tmp_path / "c.pt").build()
    with torch.inference_mode():
        assert torch.allclose(back(x), net(x), atol=0.05)  # weights stored as FP16
    (tmp_path / "bad.pt").write_bytes(b"not a classifier")
    with pytest.raises(ValueError, match="not a readable classifier file"):
        resnet.load(tmp_path / "bad.pt")


def test_trainer_learns_two_classes_and_resumes_exactly(tmp_path):
    data = _labelled_folder(tmp_path / "data")
    common = [
        str(data),
        "--size",
        "32",
        "--widths",
        "8,16,16,16",
        "--batch",
        "16",
        "--lr",
        "0.05",
        "--val-fraction",
        "0.25",
        "--val-every",
        "6",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--threads",
        "1",
    ]
    assert trainer.main([*common, "--out", str(tmp_path / "a"), "--epochs", "8"]) == 0
    cf = resnet.load(tmp_path / "a" / "classifier.pt")
    assert cf.classes == ["blue", "red"] and cf.metrics["val_acc"] >= 90
    # The same run stopped half-way (as an interruption would) and started again ends identical.
    assert trainer.main([*common, "--out", str(tmp_path / "b"), "--epochs", "4"]) == 0
    state = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert state["step"] > 0
    log_a = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert log_a[-1]["val_acc"] >= 90
    assert trainer.main(["/nonexistent", "--size", "32", "--out", str(tmp_path / "c")]) == 2


def test_trainer_resume_continues_from_saved_step(tmp_path):
    data = _labelled_folder(tmp_path / "data", n_per_class=12)
    args = [
        str(data),
        "--size",
        "32",
        "--widths",
        "8,8,8,8",
        "--batch",
        "8",
        "--val-fraction",
        "0.25",
        "--val-every",
        "3",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "r"),
        "--threads",
        "1",
    ]
    assert trainer.main([*args, "--epochs", "3"]) == 0
    first = torch.load(tmp_path / "r" / "state.pt", weights_only=True)
    assert trainer.main([*args, "--epochs", "3"]) == 0  # already done: nothing more to train
    again = torch.load(tmp_path / "r" / "state.pt", weights_only=True)
    assert again["step"] == first["step"]
    weights = first["task"]["model"]  # the one loop's state: the task's own under "task"
    assert all(torch.equal(weights[k], again["task"]["model"][k]) for k in weights)


def test_classifier_is_a_family_of_the_one_loop_and_resumes_exactly(tmp_path):
    """A ``family = "classifier"`` recipe trains through ``python -m training``; the same run paused
    half-way and resumed ends with the same weights, optimiser state and classifier file."""
    from training.__main__ import main as train_main
    from training.config import load_recipe
    from training.loop import train

    data = _labelled_folder(tmp_path / "data", n_per_class=12)
    recipe = tmp_path / "clf.toml"
    recipe.write_text(
        "\n".join(
            [
                'family = "classifier"',
                f'sources = ["{data}"]',
                "source_sizes = [32]",
                "crop_size = 32",
                "widths = [8, 8, 8, 8]",
                "batch_size = 8",
                "lr = 0.05",
                "val_fraction = 0.25",
                "val_every = 3",
                "epochs = 2",
                "warmup_steps = 500",
                "threads = 1",
                f'cache_dir = "{tmp_path / "cache"}"',
            ]
        )
    )
    assert train_main([str(recipe), "--out", str(tmp_path / "straight")]) == 0
    train(load_recipe(recipe), tmp_path / "resumed", stop_at_step=3)
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["step"] == 3
    train(load_recipe(recipe), tmp_path / "resumed")
    a, b = (torch.load(tmp_path / d / "state.pt", weights_only=True) for d in ("straight", "resumed"))
    assert a["step"] == b["step"] == 6  # 2 epochs of 3 full batches
    for k in a["task"]["model"]:
        torch.testing.assert_close(a["task"]["model"][k], b["task"]["model"][k], rtol=0, atol=0)
    assert a["task"]["opt"]["state"].keys() == b["task"]["opt"]["state"].keys()
    for i, st in a["task"]["opt"]["state"].items():
        torch.testing.assert_close(
            st["momentum_buffer"], b["task"]["opt"]["state"][i]["momentum_buffer"], rtol=0, atol=0
        )
    ca, cb = (resnet.load(tmp_path / d / "classifier.pt") for d in ("straight", "resumed"))
    assert ca.classes == cb.classes == ["blue", "red"] and ca.metrics == cb.metrics
    assert all(torch.equal(ca.state_dict[k], cb.state_dict[k]) for k in ca.state_dict)
    log = [json.loads(x) for x in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6] and all("val_acc" in r for r in log)


@pytest.fixture
def tiny_classifier(tmp_path):
    torch.manual_seed(0)
    net = resnet.ResNet(resnet.ResNetConfig(num_classes=2, widths=(8, 8, 8, 8), image_size=32))
    path = tmp_path / "clf.pt"
    resnet.save(resnet.ClassifierFile(net.config, ["blue", "red"], net.state_dict()), path)
    return path


def test_probe_known_answers(tiny_classifier, rng):
    probe = RealismProbe(realism_networks(tiny_classifier, None))
    images = [rng.random((40, 50, 3)).astype(np.float32) for _ in range(6)]
    for i, img in enumerate(images):
        probe.add(f"red/{i}", img, img)  # perfect results
    s = probe.summary()
    assert s["top1_agreement[clf]"] == 100.0
    assert abs(s["frechet_distance[clf]"]) < 1e-6
    assert s["accuracy[clf]"] == s["accuracy_truth[clf]"]
    # Gray results move the features away from the truth's.
    gray = RealismProbe(realism_networks(tiny_classifier, None))
    for i, img in enumerate(images):
        gray.add(f"x{i}", np.repeat(img.mean(2, keepdims=True), 3, 2), img)
    g = gray.summary()
    assert g["frechet_distance[clf]"] > 1e-4 and "accuracy[clf]" not in g  # no class folders: no accuracy


def test_eval_cli_reports_classifier_figures(tiny_classifier, tmp_path, rng):
    for d in ("pred", "true"):
        (tmp_path / d / "red").mkdir(parents=True)
    for i in range(3):
        img = (rng.random((30, 30, 3)) * 255).astype(np.uint8)
        for d in ("pred", "true"):
            cv2.imwrite(str(tmp_path / d / "red" / f"{i}.png"), img)
    r = runner.invoke(
        app, ["eval", str(tmp_path / "pred"), str(tmp_path / "true"), "--json", "--classifier", str(tiny_classifier)]
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)["summary"]
    assert s["top1_agreement[clf]"] == 100.0 and s["accuracy[clf]"] == s["accuracy_truth[clf]"]
    r = runner.invoke(
        app, ["eval", str(tmp_path / "pred"), str(tmp_path / "true"), "--classifier", str(tmp_path / "missing.pt")]
    )
    assert r.exit_code != 0 and "missing.pt" in r.stderr and "Traceback" not in r.output
