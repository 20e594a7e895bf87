"""The U-Net with a ResNet-18 encoder pre-trained as a classifier: it must see a gray photo exactly as
its classifier sees the gray sRGB picture, refuse a classifier of another layout, train (GAN, noise
input, rebalanced L1) into an engine that the pipeline and ONNX Runtime both run."""

import numpy as np
import pytest
import torch

from engines import color
from engines.models import checkpoint, resnet
from engines.models.unet import UNet, UNetConfig
from engines.runtime.precision import float32_network
from tests.test_training import _make_folder, _tiny_config
from training.config import from_dict
from training.loop import train

WIDTHS = (8, 16, 32, 64)


def _classifier_file(tmp_path, widths=WIDTHS, stem_pool=True):
    torch.manual_seed(0)
    config = resnet.ResNetConfig(num_classes=5, widths=widths, stem_stride=2, stem_pool=stem_pool, image_size=32)
    net = resnet.ResNet(config)
    for m in net.modules():  # non-trivial running statistics, so that eval-mode copying is tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "clf.pt"
    resnet.save(resnet.ClassifierFile(config, [f"c{i}" for i in range(5)], net.state_dict()), path)
    return path


@pytest.mark.parametrize("space", ["lab", "yuv"])
def test_encoder_sees_the_gray_picture_as_its_classifier_does(tmp_path, space):
    cf = resnet.load(_classifier_file(tmp_path))
    clf = cf.build()
    net = UNet(UNetConfig(widths=WIDTHS, encoder="resnet18", color_space=space))
    assert net.encoder.load_classifier(cf.config, cf.state_dict) == sum(
        1 for k in cf.state_dict if k.startswith(("stem.", "stages."))
    )
    net.eval()
    l = torch.rand(2, 1, 64, 96) * 100
    gray = color.lightness_to_rgb_gray(l)
    with torch.no_grad():
        skips = net.encoder(color.input_from_lightness(l, space))
        want = clf.stage_outputs(gray)
    assert [s.shape[-1] for s in skips] == [48, 24, 12, 6, 3]  # strides 2, 4, 8, 16, 32
    torch.testing.assert_close(torch.nn.functional.max_pool2d(skips[0], 3, 2, 1), want[0], atol=2e-4, rtol=1e-4)
    for got, ref in zip(skips[1:], want[1:]):
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)
    assert net.multiple == 32 and net(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_a_classifier_of_another_layout_is_refused(tmp_path):
    net = UNet(UNetConfig(widths=WIDTHS, encoder="resnet18"))
    for kw in ({"widths": (16, 32, 64, 128)}, {"stem_pool": False}):
        cf = resnet.load(_classifier_file(tmp_path, **kw))
        with pytest.raises(ValueError, match="does not match this encoder"):
            net.encoder.load_classifier(cf.config, cf.state_dict)
    with pytest.raises(ValueError, match="encoder_from needs"):
        from_dict({"encoder_from": "clf.pt"})
    with pytest.raises(ValueError, match="encoder must be"):
        UNet(UNetConfig(encoder="vgg"))


def test_gray_value_matches_the_lab_conversion():
    l = torch.linspace(0, 100, 2001)
    ref = color.lightness_to_rgb_gray(l.view(1, 1, 1, -1))[0, 0, 0]
    torch.testing.assert_close(color.lightness_to_gray_value(l), ref, atol=1e-5, rtol=0)


def test_resnet_gan_trains_into_an_engine_that_the_pipeline_and_onnx_run(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from engines.pipeline import load_colorizer
    from engines.runtime.backends import select_backend
    from engines.runtime.export import INPUT_NAME, export_onnx

    clf_path = _classifier_file(tmp_path)
    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    cfg = _tiny_config(
        folder,
        tmp_path,
        family="gan",
        encoder="resnet18",
        encoder_from=str(clf_path),
        encoder_lr_scale=0.1,
        rebalance_lambda=0.5,
        gan_pretrain_steps=3,
    )
    train(cfg, tmp_path / "run")
    engine = checkpoint.load(tmp_path / "run" / "engine.pt")
    assert engine.arch.encoder == "resnet18" and engine.arch.in_channels == 2
    # The encoder started from the classifier and moved (slowly): not equal, not far.
    start = resnet.load(clf_path).state_dict["stages.3.1.conv2.weight"].float()
    end = engine.state_dict["encoder.stages.3.1.conv2.weight"].float()
    assert 0 < (end - start).abs().max() < 0.05

    c = load_colorizer("custom", select_backend("cpu"), weights=tmp_path / "run" / "engine.pt")
    out = c.colorize(np.repeat(np.linspace(0.1, 0.9, 50 * 70, dtype=np.float32).reshape(50, 70, 1), 3, axis=2))
    assert out.shape == (50, 70, 3) and np.isfinite(out).all()

    model = float32_network(c.model)  # the CPU backend's bf16 wrapper, where the CPU has bf16, unwrapped
    export_onnx(model, tmp_path / "g.onnx")
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 2, 64, 96) * 2 - 1
    with torch.inference_mode():
        ref = model(x).numpy()
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    assert np.abs(got - ref).max() * color.AB_SCALE < 0.01
