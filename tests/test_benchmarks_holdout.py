"""benchmarks.holdout writes out exactly the images a recipe's runs hold out for validation."""

import tarfile

import cv2
import numpy as np

from benchmarks.holdout import main
from tests.test_training import _colourful
from training.data import training_sets


def _sources(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i in range(20):
        cv2.imwrite(str(folder / f"s{i:03d}.png"), _colourful(rng, 48))
    shard = tmp_path / "tiny-00.tar.gz"
    with tarfile.open(shard, "w:gz") as tar:
        for i in range(60):
            p = tmp_path / f"t{i:03d}.png"
            cv2.imwrite(str(p), _colourful(rng, 40))
            tar.add(p, arcname=f"train/n000/t{i:03d}.png")
            p.unlink()
    return shard, folder


def test_the_exported_images_are_the_runs_validation_images(tmp_path, capsys):
    shard, folder = _sources(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'sources = ["{shard}", "{folder}"]\nsource_sizes = [32, 40]\nval_fraction = 0.2\ncache_dir = "{tmp_path / "cache"}"\n'
    )
    train, val = training_sets((str(shard), str(folder)), (32, 40), (), 0.2, tmp_path / "cache")
    assert len(val[0]) >= 4  # the test means something only if the shard holds out several images

    assert main([str(recipe), "--out", str(tmp_path / "all")]) == 0
    files = sorted((tmp_path / "all").iterdir())
    assert len(files) == len(val[0]) + len(val[1])
    exported = [cv2.imread(str(p))[:, :, ::-1] for p in files if p.name.startswith("tiny-00-")]
    assert len(exported) == len(val[0])
    np.testing.assert_array_equal(np.stack(exported), val[0])  # lossless, in the source's order
    trained = {t.tobytes() for t in train[0]}
    assert not any(e.tobytes() in trained for e in exported)

    assert main([str(recipe), "--out", str(tmp_path / "some"), "--source-contains", "tiny", "--every", "2"]) == 0
    some = sorted((tmp_path / "some").iterdir())
    assert [p.name for p in some] == [p.name for p in files if p.name.startswith("tiny-00-")][::2]
    assert f"{len(some)} held-out images written" in capsys.readouterr().out

    assert main([str(recipe), "--out", str(tmp_path / "none"), "--source-contains", "cifar"]) == 2
    assert capsys.readouterr().err.startswith("error: no validation images")
