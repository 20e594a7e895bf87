"""The shape an engine is fed: one rule for the PyTorch and ONNX Runtime pipelines (no PyTorch import)."""


def work_shape(h: int, w: int, working_size: int, multiple: int) -> tuple[int, int]:
    """The network input's (height, width) for a photo of ``h x w``, in both pipelines: the long side
    scaled to the working size (never up), then each side stretched up to the network's multiple.
    Stretching, not padding: padded rows are content the network never saw in training. On 100 4:3 and
    100 16:9 crops of the tuning photos the stretch gained the classification engine 0.4-0.5 plain and
    1.0-1.2 rebalanced AuC over replicate padding, the others up to 0.3 (on 23 davis film frames
    regression lost 0.4: docs/experiments.md, session 16). At most ``multiple - 1`` pixels a side."""
    scale = min(1.0, working_size / max(h, w))
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    return sh + (-sh) % multiple, sw + (-sw) % multiple
