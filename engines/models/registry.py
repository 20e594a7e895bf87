"""The explicit registry of shipped engines. Importing it is cheap (no torch), so the CLI can list
and validate names instantly; ``engines.pipeline.load_colorizer`` turns a name into a model."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class EngineSpec:
    name: str
    family: str
    weights: str  # file name under engines/weights/
    summary: str

    def weights_path(self) -> Path:
        return Path(str(resources.files("engines") / "weights" / self.weights))


ENGINES: dict[str, EngineSpec] = {
    "regression": EngineSpec(
        name="regression",
        family="regression",
        weights="regression.pt",
        summary=(
            "U-Net regressing CIELAB ab on the training campaign's network (trained from scratch on Tiny "
            "ImageNet, CIFAR-10 and outdoor scenes); weight mix of a Huber head and a class-rebalanced one"
        ),
    ),
    "classification": EngineSpec(
        name="classification",
        family="classification",
        weights="classification.pt",
        summary=(
            "Zhang et al. 2016: U-Net predicting a distribution over quantised ab bins, class-rebalanced, "
            "decoded by annealed mean; the training campaign's network (widened; trained from scratch on Tiny "
            "ImageNet, CIFAR-10 and outdoor scenes, partly from worn-print grays)"
        ),
    ),
    "gan": EngineSpec(
        name="gan",
        family="gan",
        weights="gan.pt",
        summary="pix2pix: U-Net generator with a noise input trained against a 70x70 PatchGAN critic",
    ),
}


class UnknownEngineError(KeyError):
    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}; choose one of: {', '.join(ENGINES)}"


def get_spec(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        raise UnknownEngineError(name) from None
