"""A film's work in progress, and the final mux.

Work in progress lives beside the output in ``.<name>.colorize-partial/``; nothing appears under the
output's name until the film is complete (then the folder is removed). The video is encoded in
segments of about ``segment_seconds``, each by a fresh encoder set up exactly like the final stream's,
so each starts with a keyframe and stands alone. A finished segment is fsynced and renamed into the
folder, then ``manifest.json`` (atomically replaced) records it together with a file holding the
temporal smoother's state after its last frame and that frame's RGB. A run killed in any way (Ctrl-C,
SIGTERM, SIGKILL, power cut) loses at most the segment in hand, and the one before it for the few
seconds its encoder drains in the background (see ``_SegmentWriter``); a Ctrl-C or an error lets that
drain finish. A run with ``resume`` decodes past the finished frames without colourising them,
restores the smoother's state and goes on, so its film is the uninterrupted run's: the same frames, timestamps and packets, no join. A resume is refused (one
line) when the input's size or modification time, the options or the engine differ from the manifest's.
Batches never straddle a segment boundary, so a resumed run feeds the engine the same batches.
Finally the segments' packets are muxed, unchanged, with the input's other streams, interleaved by
time. Failures that would repeat (VideoError: unreadable input, unwritable output) remove the folder;
anything else (an interruption, a crash) keeps it for ``resume``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from engines.files import os_reason as _os_reason
from engines.video.stages import _Bridge, _Frame
from engines.video.streams import (
    VideoError,
    _copy_metadata,
    _describe,
    _open_input,
    _plan_streams,
    _Probe,
    _reason,
    _Route,
    add_video_encoder,
    encoder_frame_to_rgb,
    rgb_to_encoder_frame,
)

# MP4/MOV: index at the front (plays while downloading); B-frame reordering written as negative
# composition offsets instead of an edit list, with which FFmpeg's muxer can round the video track's
# duration down by a fraction of a frame.
_MUXER_OPTIONS = {
    "mp4": {"movflags": "+faststart+negative_cts_offsets"},
    "mov": {"movflags": "+faststart+negative_cts_offsets"},
}


class _Segment:
    """One segment in the making: its encoder (on a throwaway container of the output format), its
    file and what the manifest will record of it."""

    def __init__(self, writer: _SegmentWriter, number: int):
        self.box = av.open(io.BytesIO(), "w", format=writer.fmt)
        o, probe, vin = writer.options, writer.probe, writer.vin
        try:
            self.stream = add_video_encoder(
                self.box, o.codec, o.crf, probe.width, probe.height, vin.time_base, writer.rate, vin.sample_aspect_ratio
            )
        except (av.FFmpegError, ValueError) as exc:
            raise VideoError(f"cannot encode with {o.codec}: {_reason(exc)}") from exc
        self.durations: dict[int, int] = {}  # by pts: libx264 leaves packet durations at 0
        self.frames = self.bridged = 0
        self.end: Fraction | None = None
        self.tmp = writer.work.dir / f"segment-{number:06d}.tmp"
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in _SegmentWriter._finish_segment or abandon

    def put(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            duration = self.durations.pop(packet.pts, 0) if packet.pts is not None else 0
            _write_packet(self.file, packet, packet.duration or duration)


class _SegmentWriter:
    """Encodes the pipeline's frames into segment files of ``segment`` frames, each from a fresh
    encoder (so each starts with a keyframe and depends on no other), and commits each one to ``work``.

    The encoder is set up exactly as the final stream will be (``add_video_encoder`` on a throwaway
    container of the output format), so its packets can be muxed into the film unchanged.

    A finished segment's encoder is drained and the segment committed in a thread of its own: x264
    holds tens of frames (lookahead, frame threads) and takes seconds to drain, during which the
    pipeline would otherwise stand still (measured: 3 s per 10-s segment of 854x480 on 2 cores). The
    next segment's encoder starts meanwhile; commits stay in order, and at most one segment drains at
    a time (two encoders alive at a boundary)."""

    def __init__(self, work, fmt, options, probe, vin, rate, pix_fmt, segment, last_rgb):
        self.work, self.fmt, self.options, self.probe = work, fmt, options, probe
        self.vin, self.rate, self.pix_fmt, self.segment = vin, rate, pix_fmt, segment
        self._last_rgb = last_rgb  # the previous output frame, for bridging (see ``last_rgb``)
        self._last_out: av.VideoFrame | None = None
        self.index = work.frames  # the next output frame's number
        self.waiting: list[_Bridge] = []  # bridges before the first good frame
        self.current: _Segment | None = None
        self.number = len(work.manifest["segments"])  # the next segment's number
        self.draining: threading.Thread | None = None
        self.drain_error: BaseException | None = None

    def _encode(self, frame: av.VideoFrame, pts: int, duration: int, bridged: bool, state: dict | None) -> None:
        if self.current is None:
            self.current = _Segment(self, self.number)
            self.number += 1
        seg = self.current
        tb = self.vin.time_base
        frame.pts, frame.time_base, frame.duration = pts, tb, duration
        seg.durations[pts] = duration
        seg.end = (pts + duration) * tb
        try:
            seg.put(seg.stream.encode(frame))
        except av.FFmpegError as exc:
            raise VideoError(f"cannot encode: {_reason(exc)}") from exc
        seg.frames += 1
        seg.bridged += bridged
        self.index += 1
        if self.index % self.segment == 0:
            self._commit(state, wait=False)

    @property
    def last_rgb(self) -> np.ndarray | None:
        """The previous output frame's RGB: what a bridge repeats, and what a resumed run bridges from."""
        if self._last_rgb is None and self._last_out is not None:  # composed in YUV: converted when needed
            self._last_rgb = encoder_frame_to_rgb(self._last_out)
        return self._last_rgb

    def write(self, item: _Frame | _Bridge) -> None:
        if isinstance(item, _Frame):
            self._last_rgb, self._last_out = item.rgb_out, item.out
            for bridge in self.waiting:
                frame = rgb_to_encoder_frame(self.last_rgb, self.pix_fmt)
                self._encode(frame, bridge.pts, bridge.duration, True, bridge.state)
            self.waiting.clear()
            self._encode(item.out, item.pts, item.duration, False, item.state)
        elif self.last_rgb is None:
            self.waiting.append(item)
        else:
            self._encode(rgb_to_encoder_frame(self.last_rgb, self.pix_fmt), item.pts, item.duration, True, item.state)

    def _commit(self, state: dict | None, wait: bool) -> None:
        """Drain the current segment's encoder and commit it: in a thread (``wait`` False), or here."""
        self._wait_for_drain()  # commits in order
        seg, self.current = self.current, None
        if state is not None and self.last_rgb is not None:
            state = {**state, "last_rgb": self.last_rgb}
        if wait:
            self._finish_segment(seg, state)
            return
        self.draining = threading.Thread(
            target=self._drain, args=(seg, state), name="colorize-video-segment", daemon=True
        )
        self.draining.start()

    def _drain(self, seg: _Segment, state: dict | None) -> None:
        try:
            self._finish_segment(seg, state)
        except BaseException as exc:  # noqa: BLE001 - re-raised by _wait_for_drain in the writer's thread
            self.drain_error = exc

    def _finish_segment(self, seg: _Segment, state: dict | None) -> None:
        try:
            seg.put(seg.stream.encode(None))
        except av.FFmpegError as exc:
            raise VideoError(f"cannot encode: {_reason(exc)}") from exc
        extradata = bytes(seg.stream.codec_context.extradata or b"")
        _close_durably(seg.file)
        seg.file = None
        self.work.commit(seg.tmp, seg.frames, seg.bridged, seg.end, extradata, state)

    def _wait_for_drain(self) -> None:
        if self.draining is not None:
            self.draining.join()
            self.draining = None
        if self.drain_error is not None:
            exc, self.drain_error = self.drain_error, None
            raise exc

    def finish(self, scene_cuts: int) -> None:
        if self.waiting:  # a film of lost frames only: nothing to repeat
            raise VideoError("no decodable video frames")
        if self.current is not None:
            self._commit(None, wait=True)
        self._wait_for_drain()
        self.work.complete(scene_cuts)

    def abandon(self) -> None:
        """After a failure or an interruption: a segment already finished still drains and is committed
        (it is whole; a resume keeps it), the one in hand is discarded."""
        with contextlib.suppress(Exception):  # the failure being handled is what the caller sees
            self._wait_for_drain()
        seg, self.current = self.current, None
        if seg is not None and seg.file is not None:
            with contextlib.suppress(OSError):
                seg.file.close()
                os.unlink(seg.tmp)


# A segment file: the encoder's packets in decode order, each a header and its bytes.
_PACKET_HEADER = struct.Struct("<qqqBI")  # pts, dts, duration, keyframe, size


_NO_TIME = -(2**63)


def _write_packet(file, packet: av.Packet, duration: int) -> None:
    def t(v: int | None) -> int:
        return _NO_TIME if v is None else v

    file.write(_PACKET_HEADER.pack(t(packet.pts), t(packet.dts), duration, packet.is_keyframe, packet.size))
    file.write(bytes(packet))


def _read_packets(path: Path, stream, time_base: Fraction) -> Iterator[av.Packet]:
    with open(path, "rb") as file:
        while head := file.read(_PACKET_HEADER.size):
            pts, dts, duration, key, size = _PACKET_HEADER.unpack(head)
            packet = av.Packet(file.read(size))
            packet.pts = None if pts == _NO_TIME else pts
            packet.dts = None if dts == _NO_TIME else dts
            packet.duration, packet.time_base, packet.is_keyframe = duration, time_base, bool(key)
            packet.stream = stream
            yield packet


def _close_durably(file) -> None:
    """Flush, fsync (a power cut must not leave a committed file empty) and close."""
    file.flush()
    with contextlib.suppress(OSError):  # some filesystems cannot fsync
        os.fsync(file.fileno())
    file.close()


class _Partial:
    """A film's work in progress: ``.<dst name>.colorize-partial/`` beside ``dst``, holding finished
    segment files, the smoother's state after the last of them, and ``manifest.json``, which names
    them and is replaced atomically after each segment. Only what the manifest names counts: a
    segment being written when the run was killed is discarded on resume."""

    def __init__(self, dst: Path, key: dict):
        self.dir = dst.with_name(f".{dst.name}.colorize-partial")
        self.key = json.loads(json.dumps(key))  # as it reads back from the manifest
        self.manifest: dict = {}

    @property
    def frames(self) -> int:
        return sum(seg["frames"] for seg in self.manifest["segments"])

    def start(self, resume: bool) -> None:
        manifest = None
        if self.dir.exists():
            try:
                manifest = json.loads((self.dir / "manifest.json").read_text())
            except FileNotFoundError:
                pass  # killed before the first segment was done: nothing to keep
            except (OSError, ValueError) as exc:
                raise VideoError(f"unreadable work of an interrupted run in {self.dir.name}: delete it") from exc
        if manifest is not None and manifest.get("segments"):
            if not resume:
                raise VideoError(
                    f"an interrupted run's work is in {self.dir.name}: add --resume to continue it, "
                    "or delete that folder to start over"
                )
            if manifest.get("key") != self.key:
                raise VideoError(
                    f"the interrupted run's work in {self.dir.name} was made with other settings or another "
                    "version of the input: use the same settings, or delete that folder to start over"
                )
            self.manifest = manifest
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.manifest = {"version": 1, "key": self.key, "segment_frames": None, "segments": [],
                             "state": None, "extradata": None, "end": None, "complete": False, "scene_cuts": 0}  # fmt: skip
        try:
            self.dir.mkdir(exist_ok=True)
            for p in self.dir.iterdir():  # leftovers of a killed run that the manifest does not name
                if p.name not in self._named():
                    p.unlink()
        except OSError as exc:
            raise VideoError(f"cannot write: {_os_reason(exc)}") from exc

    def _named(self) -> set[str]:
        m = self.manifest
        return {"manifest.json", *(seg["file"] for seg in m["segments"]), *([m["state"]] if m["state"] else [])}

    def segment_frames(self, wanted: int) -> int:
        if self.manifest["segment_frames"] is None:
            self.manifest["segment_frames"] = wanted
        return self.manifest["segment_frames"]

    def load_state(self) -> dict:
        if not self.manifest["state"]:
            return {}
        with np.load(self.dir / self.manifest["state"]) as z:
            return {k: z[k] for k in z.files}

    def commit(self, tmp: Path, frames: int, bridged: int, end, extradata: bytes, state: dict | None) -> None:
        """Make the segment just written part of the work: rename it, save the state, then the manifest."""
        m = self.manifest
        if m["extradata"] is None:
            m["extradata"] = extradata.hex()
        elif m["extradata"] != extradata.hex():
            raise VideoError("internal error: the encoder's stream headers changed between segments")
        k = len(m["segments"])
        name = f"segment-{k:06d}.bin"
        os.replace(tmp, self.dir / name)
        old_state = m["state"]
        m["state"] = None
        if state is not None:
            m["state"] = f"state-{k:06d}.npz"
            with open(self.dir / f"{m['state']}.tmp", "wb") as file:
                np.savez(file, **state)
                _close_durably(file)
            os.replace(self.dir / f"{m['state']}.tmp", self.dir / m["state"])
        m["segments"].append({"file": name, "frames": frames, "bridged": bridged})
        m["end"] = [end.numerator, end.denominator] if end is not None else m["end"]
        self._save()
        if old_state:
            with contextlib.suppress(OSError):
                os.unlink(self.dir / old_state)

    def complete(self, scene_cuts: int) -> None:
        self.manifest["complete"] = True
        self.manifest["scene_cuts"] = scene_cuts
        self._save()

    def _save(self) -> None:
        tmp = self.dir / "manifest.json.tmp"
        with open(tmp, "w") as file:
            json.dump(self.manifest, file)
            _close_durably(file)
        os.replace(tmp, self.dir / "manifest.json")
        with contextlib.suppress(OSError):  # the renames themselves must survive a power cut
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def packets(self, stream, time_base: Fraction) -> Iterator[av.Packet]:
        for seg in self.manifest["segments"]:
            yield from _read_packets(self.dir / seg["file"], stream, time_base)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _assemble(src: Path, tmp: Path, fmt: str, probe: _Probe, options, work: _Partial, report) -> None:
    """Mux the segments' video packets, unchanged and with their timestamps, with the input's other
    streams (copied or converted as ``_plan_streams`` decides) into ``tmp``."""
    with _open_input(src) as inp:
        try:
            out = av.open(str(tmp), "w", format=fmt, options=_MUXER_OPTIONS.get(fmt, {}))
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"cannot write: {_reason(exc)}") from exc
        ok = False
        try:
            _mux_film(inp, out, fmt, probe, options, work, report)
            ok = True
        finally:
            try:
                out.close()
            except (av.FFmpegError, OSError) as exc:
                if ok:
                    raise VideoError(f"cannot write: {_reason(exc)}") from exc


def _mux_film(inp, out, fmt: str, probe: _Probe, options, work: _Partial, report) -> None:
    """Set up ``out``'s streams, then write the segments' video packets and the other streams' packets
    interleaved by time."""
    routes, vout = _set_up_streams(inp, out, fmt, probe, options, work, report)
    vin = inp.streams[probe.index]
    earliest = _interleave(inp, out, routes, work.packets(vout, vin.time_base), vin.time_base)
    if earliest < 0 and out.format.name == "matroska":
        report.notes.append(
            f"a copied stream starts at {float(earliest) * 1000:.0f} ms (e.g. AAC priming); Matroska cannot store "
            "negative times, so every stream was shifted later by that much (in sync)"
        )
    try:
        for route in routes.values():
            if route.transcode and route.out.type == "audio":
                for packet in route.out.encode(None):
                    out.mux(packet)
    except av.FFmpegError as exc:
        raise VideoError(f"cannot encode: {_reason(exc)}") from exc
    tb_out = vout.time_base
    if tb_out != vin.time_base and (vin.time_base / tb_out).denominator != 1:
        report.notes.append(f"the {fmt} muxer stores time in units of {tb_out}: timestamps were rounded to it")


def _set_up_streams(inp, out, fmt: str, probe: _Probe, options, work: _Partial, report) -> tuple[dict, object]:
    """The output's streams (the video one set up as the segments' encoders were), metadata and
    chapters; returns the other streams' routes and the video stream."""
    vin = inp.streams[probe.index]
    rate = vin.average_rate or vin.guessed_rate
    added = []

    def add_video():
        try:
            added.append(
                add_video_encoder(
                    out, options.codec, options.crf, probe.width, probe.height, vin.time_base, rate,
                    vin.sample_aspect_ratio,
                )
            )  # fmt: skip
        except (av.FFmpegError, ValueError) as exc:
            raise VideoError(f"cannot encode with {options.codec}: {_reason(exc)}") from exc
        return added[0]

    routes = _plan_streams(inp, out, fmt, probe.index, add_video, report)
    vout = added[0]
    if probe.display_matrix is not None:
        vout.set_display_matrix(list(probe.display_matrix))
    _copy_metadata(vin, vout)
    for key, value in inp.metadata.items():
        if key.lower() not in ("encoder", "major_brand", "minor_version", "compatible_brands", "duration"):
            out.metadata[key] = value
    with contextlib.suppress(Exception):  # chapters are a nicety
        if inp.chapters():
            out.set_chapters(inp.chapters())
    try:
        out.start_encoding()  # opens the (unused) encoder: its stream headers must be the segments'
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot write: {_reason(exc)}") from exc
    if bytes(vout.codec_context.extradata or b"").hex() != work.manifest["extradata"]:
        raise VideoError("internal error: the encoder's stream headers differ from the segments'")
    return routes, vout


def _interleave(inp, out, routes: dict, video: Iterator[av.Packet], tb: Fraction) -> Fraction:
    """Mux ``video``'s packets (time base ``tb``) and the routed streams' packets in time order;
    returns the earliest timestamp of a copied packet, in seconds (0 if none is earlier)."""
    pending = next(video, None)

    def video_until(t: Fraction | None) -> None:
        """Mux video packets that start (in decode order) before ``t`` (None: all)."""
        nonlocal pending
        while pending is not None:
            when = pending.dts if pending.dts is not None else pending.pts
            if t is not None and when is not None and when * tb > t:
                return
            _mux_packet(out, pending)
            pending = next(video, None)

    earliest = Fraction(0)
    others = [inp.streams[i] for i in routes]
    if others:
        demuxer = inp.demux(others)
        while True:
            try:
                packet = next(demuxer)
            except StopIteration:
                break
            except av.FFmpegError:
                break  # a truncated input: its end was noted when the video was read
            if not (packet.size or routes[packet.stream.index].transcode):
                continue
            when = packet.dts if packet.dts is not None else packet.pts
            if when is not None and packet.time_base is not None:
                video_until(when * packet.time_base)
            if packet.pts is not None and packet.time_base is not None:
                earliest = min(earliest, packet.pts * packet.time_base)
            _mux_other(out, packet, routes[packet.stream.index])
    video_until(None)
    return earliest


def _mux_packet(out, packet: av.Packet) -> None:
    try:
        out.mux(packet)
    except av.FFmpegError as exc:
        raise VideoError(f"cannot write: {_reason(exc)}") from exc
    except OSError as exc:
        raise VideoError(f"cannot write: {_os_reason(exc)}") from exc


def _mux_other(out, packet: av.Packet, route: _Route) -> None:
    try:
        if not route.transcode:
            packet.stream = route.out
            out.mux(packet)
            return
        stream = packet.stream
        if stream.type == "audio":
            for frame in packet.decode():
                for opacket in route.out.encode(frame):
                    out.mux(opacket)
            return
        if not packet.size:
            return
        subtitle = stream.codec_context.decode2(packet)
        if subtitle is None or len(subtitle) == 0:
            return
        opacket = route.out.codec_context.encode_subtitle(subtitle)
        opacket.pts, opacket.dts, opacket.duration = (
            packet.pts,
            packet.dts if packet.dts is not None else packet.pts,
            packet.duration,
        )
        opacket.time_base = stream.time_base
        opacket.stream = route.out
        out.mux(opacket)
    except av.FFmpegError as exc:
        raise VideoError(f"cannot write {_describe(packet.stream)}: {_reason(exc)}") from exc
    except OSError as exc:
        raise VideoError(f"cannot write: {_os_reason(exc)}") from exc
