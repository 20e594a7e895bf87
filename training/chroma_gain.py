"""A regression or GAN engine whose predicted chroma is scaled by a fixed gain, baked into its weights:

    python -m training.chroma_gain run/engine.pt --gain 1.2 --out vivid.pt

These families predict normalised ab through a final 1x1 convolution, and ab is that output times a
constant (``engines.color.denormalize_ab``), so multiplying the convolution's weights and bias by the gain
scales ab exactly as ``colorize --saturation GAIN`` does (the guided upsampling is linear in ab, and the
gamut mapping comes after both). A head trained with a plain L1/L2 loss regresses to the mean and so is
muted; the gain is its calibration, chosen on the tuning photos like a classification engine's temperature.
A user's ``--saturation`` still applies on top. CIELAB engines only: a YUV engine's chroma is converted
to ab through the gamut, which is not linear.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engines.models import checkpoint

FAMILIES = ("regression", "gan")


def with_gain(ckpt: checkpoint.EngineCheckpoint, gain: float) -> checkpoint.EngineCheckpoint:
    """A copy of ``ckpt`` whose ab is ``gain`` times the original's."""
    if ckpt.family not in FAMILIES:
        raise ValueError(f"a chroma gain is for {' and '.join(FAMILIES)} engines, not {ckpt.family}")
    if ckpt.color_space != "lab":
        raise ValueError(f"a chroma gain is exact for CIELAB engines only, not {ckpt.color_space}")
    if not gain > 0:
        raise ValueError(f"the gain must be above 0, not {gain!r}")
    state = dict(ckpt.state_dict)
    for name in ("head.weight", "head.bias"):
        state[name] = (state[name].float() * gain).to(state[name].dtype)
    trained_on = {**ckpt.trained_on, "chroma_gain": gain * ckpt.trained_on.get("chroma_gain", 1.0)}
    return checkpoint.EngineCheckpoint(
        ckpt.family, ckpt.arch, state, ckpt.color_space, ckpt.working_size, trained_on, {}, ckpt.family_state
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.chroma_gain", description=__doc__)
    p.add_argument("engine", type=Path)
    p.add_argument("--gain", type=float, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        ckpt = with_gain(checkpoint.load(args.engine), args.gain)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    checkpoint.save(ckpt, args.out, half=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
