"""Colourise a film: a streaming PyAV pipeline with motion-guided temporal smoothing of the chroma.

``colorize_video(src, dst, predict_ab)`` reads anything FFmpeg demuxes and writes MP4, Matroska or
QuickTime (by ``dst``'s suffix). The first video stream is colourised; every other stream is copied.

Data flow (four threads, bounded queues, so memory does not grow with the film's length)::

    read:    demux -> decode -> CIELAB L (from Y by table for black-and-white sources, else
             via RGB with explicit matrix and range); for 4:2:0 output, L at the chroma
             planes' resolution and the full-size luma of its gray ---------------------> q1
    analyse: batches of ``batch_size`` frames -> predict_ab -> temporal smoothing of ab ---> q2
             (with smoothing, every ``engine_interval``-th frame; those between take its ab
             along the motion: ``ChromaSmoother.step``)
    compose: L + ab -> yuv420p at chroma resolution (L kept; ``stages.compose_yuv420``), or
             for 4:4:4 output RGB (L kept) -> the encoder's YUV ------------------------> q3
    main:    encode into segment files (video packets only)
    then:    mux the segments' packets with the input's other streams (copied, in time order)

An exception in any thread sets a stop flag that every blocking queue operation checks, and the main
thread re-raises it.


Work in progress, interruption and resume: ``engines.video.segments``. The stages:
``engines.video.stages``; probing and the output streams: ``engines.video.streams``.

Decisions
---------
- Timing: each output frame carries its input frame's pts, in the input stream's time base, which is
  also the encoder's and (where the muxer keeps it) the output stream's: MP4 and MOV keep it, so
  timestamps are bit-identical; Matroska always stores milliseconds, so there they are rounded to the
  millisecond (as any Matroska muxer would). The average frame rate (a rational, e.g. 30000/1001) is
  set on the encoder and the stream, frame durations are passed on, so the container's duration and
  a variable frame rate survive. The display matrix (rotation, flips) is copied from the first
  decoded frame's side data, or from an old-style ``rotate`` tag.
- Colour: decoded frames are converted to RGB by swscale with the matrix and range the stream
  declares (BT.601, BT.709, SMPTE 240M, BT.2020; full or limited range). Untagged streams get what
  players assume: BT.709 at HD sizes (width >= 1280 or height > 576), BT.601 below; limited range
  except for the ``yuvj*`` formats. The output is BT.709 (matrix, primaries and transfer tagged in
  the stream), limited range, converted explicitly, so players need not guess.
- Pixel format: yuv420p for even sizes (what every player decodes). 4:2:0 cannot hold an odd width or
  height, so odd sizes are encoded as yuv444p at their exact size (H.264 High 4:4:4 / HEVC RExt /
  VP9 profile 1) rather than padded or cropped; FFmpeg-based players (mpv, VLC, browsers through
  FFmpeg) play it, some hardware decoders do not, and the report says so.
- Lightness: the output's CIELAB L is the input's (up to 8-bit and codec rounding); only ab comes from
  the engine, and smoothing touches only ab (see ``engines.video.temporal``).
- Resolution of the colour: 4:2:0 output (even sizes, the default) holds one chroma sample per 2x2
  block, so the engine's ab is upsampled, smoothed and composed at that resolution only, and the
  luma keeps full-size detail (``stages.compose_yuv420``): the same picture, within what 4:2:0
  itself loses (tests), for a quarter of the colour work. The engine's input is shrunk from the
  half-size L, so a film under twice the working size sees the network at half its size.
- Corrupt input: a packet the decoder rejects, or a frame it flags as damaged, is replaced by a copy of
  the previous output frame with the lost frame's timestamp, so frame count and timing stay intact
  (``VideoReport.corrupt_frames_bridged``). Frames a decoder drops *without* reporting an error
  cannot be told apart from packets that legitimately make no picture, so they are not invented.
  Only a video in which no frame decodes is an error.
- Truncated input: an MP4/MOV whose index (moov) is missing cannot be opened (``VideoError``). A
  stream that breaks off (truncated Matroska, MPEG-TS, or an MP4 whose index points past the end) is
  colourised up to the last decodable frame and the report's notes say where it stopped: for films a
  usable partial result beats none, and the caller sees the note.
- Other streams: copied packet for packet (bytes and timestamps untouched), except where the output
  container cannot hold the codec: audio then becomes AAC, text subtitles become mov_text (MP4/MOV)
  or ASS (Matroska); PCM audio in MP4 also becomes AAC (FFmpeg can write ISO/IEC 23003-5 PCM in MP4,
  but few players read it; MOV and Matroska hold PCM and keep it). Streams that can be neither copied
  nor converted (bitmap subtitles, data, attachments in MP4) are dropped, and the report names them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from engines.media.formats import VIDEO_OUTPUT_FORMATS as OUTPUT_FORMATS
from engines.runtime.host import retain_freed_memory
from engines.video.segments import _assemble, _Partial, _SegmentWriter
from engines.video.stages import _END, _analyse_stage, _compose_stage, _read_stage, _ReadStats, _Stopped, _Workers
from engines.video.streams import VideoError, _open_input, _Probe, _probe, encoder_pixel_format
from engines.video.temporal import DEFAULT_SCENE_CUT_THRESHOLD, ChromaSmoother

# A frame the engine skips takes the previous prediction along the motion only when at least this
# share of its pixels pass the motion checks; otherwise the engine colours it. On the eight davis
# clips, with the engine on every 4th frame, 0.7 sent 32 % of the frames to the engine (the fast
# motocross clip, median share 0.45, 75 %) for the warping and ab error of every frame's
# (docs/experiments.md, session 5).
MIN_FOLLOWED = 0.7

# Items (frames and interleaved packets) a queue holds beyond one batch. Together with the batch cap
# below this bounds the frames in flight, and so memory, whatever the film's length.
_QUEUE_SLACK = 4


# A batch holds at most this many pixels (8 frames of 854x480, 4 of 1080p, 1 of 4K): the engine's
# full-resolution intermediates grow with it.
_BATCH_PIXELS = 8_000_000


@dataclass(frozen=True)
class VideoOptions:
    """How to write the film.

    codec: FFmpeg encoder for the video stream (libx264, libx265, libvpx-vp9, mpeg4, ... where built).
    crf: constant-quality setting for encoders that have one (x264, x265, VP9, SVT-AV1); lower is better.
    smoothing: "flow" (motion-guided temporal smoothing of the chroma) or "off" (raw per-frame output).
    strength: 0..1, weight of the motion-compensated previous chroma (0.6 halves i.i.d. flicker).
    batch_size: frames per engine call (at most 8 megapixels per call: fewer frames for large sizes).
    scene_cut_threshold: lightness-histogram distance above which smoothing restarts (see
        ``engines.video.temporal``; 0.18, calibrated on the dev clips).
    segment_seconds: length of the independently encoded segments (see "Interruption" in the module
        docstring): at most this much work is lost when a run is killed.
    engine_interval: with smoothing, the engine colours every n-th frame and the frames between take
        its colour carried along the motion (``ChromaSmoother.step``); 1: every frame. Without
        smoothing every frame goes through the engine.
    """

    codec: str = "libx264"
    crf: int = 18
    smoothing: str = "flow"
    strength: float = 0.6
    batch_size: int = 8
    scene_cut_threshold: float = DEFAULT_SCENE_CUT_THRESHOLD
    segment_seconds: float = 10.0
    engine_interval: int = 4

    def __post_init__(self) -> None:
        if self.smoothing not in ("off", "flow"):
            raise ValueError(f"smoothing must be 'off' or 'flow', got {self.smoothing!r}")
        if not 0 <= self.strength <= 1:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 <= self.crf <= 63:
            raise ValueError(f"crf must be in 0..63, got {self.crf}")
        if not 0 <= self.scene_cut_threshold <= 1:
            raise ValueError(f"scene_cut_threshold must be in [0, 1], got {self.scene_cut_threshold}")
        if self.engine_interval < 1:
            raise ValueError(f"engine_interval must be at least 1, got {self.engine_interval}")
        if not 0 < self.segment_seconds < float("inf"):
            raise ValueError(f"segment_seconds must be positive, got {self.segment_seconds}")


@dataclass
class VideoReport:
    """What ``colorize_video`` did. Stream descriptions are human text, e.g. ``'audio 1 (aac)'``."""

    frames: int = 0  # video frames written (decoded + bridged), including those of an earlier run
    resumed_frames: int = 0  # frames an interrupted earlier run had done
    corrupt_frames_bridged: int = 0
    seconds: float = 0.0
    copied_streams: list[str] = field(default_factory=list)
    reencoded_streams: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    scene_cuts: int = 0


def colorize_video(
    src: Path,
    dst: Path,
    predict_ab: Callable[[np.ndarray], np.ndarray],
    options: VideoOptions = VideoOptions(),
    progress: Callable[[int, int | None], None] | None = None,
    resume: bool = False,
    engine_key: dict | None = None,
    threads: int = 1,
) -> VideoReport:
    """Colourise the film ``src`` into ``dst`` (.mp4, .mkv or .mov); see the module docstring.

    ``predict_ab`` maps full-resolution lightness ``(N, 1, H, W)`` float32 in [0, 100] to ab
    ``(N, 2, H, W)``, NumPy arrays of any strides (``predict_frames`` of ``engines.pipeline.Colorizer``
    or ``engines.ort_pipeline.OrtColorizer``); it is called from a worker thread, one batch at a time.
    ``threads``: OpenCV's thread pool meanwhile (the engine's count: the stages run in parallel). ``progress(done, total)`` is called from the calling thread after each frame
    is encoded (first with the frames an earlier run did, when resuming); ``total`` is the container's
    frame count, an estimate from its duration, or None.

    Work in progress lives in ``.<dst name>.colorize-partial/`` beside ``dst`` (see "Interruption" in the
    module docstring); ``dst`` appears, by rename, only when the film is complete, and the folder is then
    removed. ``resume``: continue the work an interrupted run left there; without it such a folder is
    refused. ``engine_key`` (JSON-able) describes ``predict_ab``: a resume is refused unless it, the
    options and the input's size and modification time are the same. Raises VideoError (one line, no
    path) for unreadable or unsupported input and output and for a refused resume; exceptions from
    ``predict_ab`` or ``progress`` propagate unchanged.
    """
    started = time.perf_counter()
    retain_freed_memory()  # frame-sized temporaries: reuse freed memory, no fresh page faults
    src, dst = Path(src), Path(dst)
    fmt = OUTPUT_FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise VideoError(f"unsupported output format: {dst.suffix or '(no suffix)'} (use .mp4, .mkv or .mov)")
    try:
        encoder = av.Codec(options.codec, "w")
    except (av.FFmpegError, ValueError) as exc:
        raise VideoError(f"no video encoder {options.codec!r} in this FFmpeg build") from exc
    if encoder.type != "video":
        raise VideoError(f"{options.codec!r} is not a video encoder")
    with contextlib.suppress(OSError):
        if dst.exists() and src.exists() and os.path.samefile(src, dst):
            raise VideoError("the output would overwrite the input")
    if not dst.parent.is_dir():
        raise VideoError("cannot write: the directory does not exist")

    probe = _probe(src)
    st = src.stat()
    key = {
        "input": {"name": src.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        "format": fmt,
        "options": asdict(options),
        "engine": engine_key,
    }
    work = _Partial(dst, key)
    work.start(resume)  # may refuse: then the folder is left as it is
    report = VideoReport(resumed_frames=work.frames)
    try:
        if not work.manifest["complete"]:
            with _open_input(src) as inp, _opencv_threads(threads):
                _encode_segments(inp, fmt, probe, predict_ab, options, progress, report, work)
        report.frames = work.frames
        report.corrupt_frames_bridged = sum(seg["bridged"] for seg in work.manifest["segments"])
        report.scene_cuts = work.manifest["scene_cuts"]
        tmp = work.dir / f"film{dst.suffix}"
        _assemble(src, tmp, fmt, probe, options, work, report)
        os.replace(tmp, dst)
    except VideoError:
        work.remove()  # the same input and settings would fail the same way: nothing worth resuming
        raise
    except BaseException:
        if not work.manifest["segments"]:
            work.remove()  # nothing finished: nothing to resume
        raise
    work.remove()
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def _opencv_threads(threads: int) -> Iterator[None]:
    """Hold OpenCV's thread pool (smoothing, resizes) to the engine's thread count for the film,
    restored after: the stages already run in parallel, and an unbounded pool would oversubscribe the
    cores the caller gave the engine (one thread per stage on a small machine)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _segment_frames(options: VideoOptions, rate: Fraction | None, batch: int) -> int:
    """Frames per segment: about ``options.segment_seconds``, a whole number of batches."""
    return batch * max(1, round(float(rate or 25) * options.segment_seconds / batch))


def _encode_segments(
    inp, fmt: str, probe: _Probe, predict_ab, options: VideoOptions, progress, report: VideoReport, work: _Partial
) -> None:
    """Colourise the frames the partial work lacks, segment by segment, into ``work``."""
    vin = inp.streams[probe.index]
    rate = vin.average_rate or vin.guessed_rate
    pix_fmt = encoder_pixel_format(options.codec, probe.width, probe.height)
    if pix_fmt == "yuv444p" and (probe.width % 2 or probe.height % 2):
        report.notes.append(
            f"odd frame size {probe.width}x{probe.height}: encoded as yuv444p at its exact size (some hardware players cannot decode 4:4:4)"
        )
    total = vin.frames or None
    if total is None and inp.duration and rate:
        total = max(1, round(inp.duration / 1_000_000 * float(rate)))

    smoother = (
        ChromaSmoother(options.strength, options.scene_cut_threshold, min_followed=MIN_FOLLOWED)
        if options.smoothing == "flow"
        else None
    )
    batch = max(1, min(options.batch_size, _BATCH_PIXELS // (probe.width * probe.height)))
    segment = work.segment_frames(_segment_frames(options, rate, batch))
    state = work.load_state()
    if smoother is not None and "cuts" in state:
        smoother.set_state(state)
    writer = _SegmentWriter(work, fmt, options, probe, vin, rate, pix_fmt, segment, state.get("last_rgb"))
    if progress is not None and work.frames:
        progress(work.frames, total)
    w = _Workers()
    depth = batch + _QUEUE_SLACK
    q1, q2, q3 = queue.Queue(depth), queue.Queue(depth), queue.Queue(_QUEUE_SLACK)
    stats = _ReadStats()
    w.spawn("read", _read_stage, w, inp, probe.index, probe, pix_fmt, work.frames, q1, stats)
    w.spawn("analyse", _analyse_stage, w, predict_ab, batch, segment, smoother, options.engine_interval, q1, q2)
    w.spawn("compose", _compose_stage, w, pix_fmt, q2, q3)
    try:
        while (item := w.get(q3)) is not _END:
            writer.write(item)
            if progress is not None:
                progress(writer.index, total)
        writer.finish(smoother.cuts if smoother is not None else 0)
    except BaseException as exc:
        w.fail(exc)
        w.shutdown()
        writer.abandon()
        if isinstance(exc, _Stopped) and w.error is not None:
            raise w.error from None
        raise
    if not w.shutdown():
        raise VideoError("internal error: a worker thread did not stop")
    if w.error is not None:
        raise w.error

    if stats.failed_packets and stats.unbridgeable:
        report.notes.append(f"{stats.unbridgeable} undecodable video packets without timestamps were skipped")
    if stats.out_of_order:
        report.notes.append(f"{stats.out_of_order} frames with repeated or decreasing timestamps were dropped")
    if stats.resized:
        report.notes.append(f"{stats.resized} frames of another size were scaled to {probe.width}x{probe.height}")
    video_end = work.manifest["end"]
    if stats.stopped_early:
        report.notes.append(f"input ends early ({stats.stopped_early}): stopped after {work.frames} frames")
    elif vin.frames and work.frames < vin.frames:
        report.notes.append(f"the container declares {vin.frames} frames but only {work.frames} could be read")
    elif inp.duration and video_end is not None and rate:
        # Matroska and MPEG-TS cut short just end: compare with the duration the header declares.
        end = Fraction(*video_end)
        declared = Fraction(inp.duration, 1_000_000) + Fraction(inp.start_time or 0, 1_000_000)
        if declared - end > max(3 / rate, declared / 50):
            report.notes.append(
                f"the video ends at {float(end):.2f} s but the container declares {float(declared):.2f} s: "
                "the file may be truncated"
            )
    if work.frames == 0 or (stats.decoded == 0 and not report.resumed_frames):
        raise VideoError("no decodable video frames")
