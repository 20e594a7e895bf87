"""The `colorize` command line. Only this package knows Typer and rich; it parses, validates,
calls the library, shows progress and maps errors to messages and exit codes.

Exit codes: 0 every input succeeded; 1 some input failed (the others were still processed);
2 bad usage; 130 interrupted. Heavy imports (torch, av) happen inside commands so --help is instant.
"""

from __future__ import annotations

import collections
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Self

import typer
from typer.core import TyperGroup

from colorcli import __version__
from colorcli.inputs import Job, expand
from engines.models.registry import ENGINES, UnknownEngineError, get_spec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _DefaultToRun(TyperGroup):
    """`colorize photo.jpg ...` means `colorize run photo.jpg ...`: the first word is a file
    unless it names a subcommand (a file called like a subcommand: `colorize run eval`)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultToRun,
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Colour black-and-white photos and films: `colorize old.jpg` writes old_color.jpg beside it.\n\n"
    "The command is `run` unless the first word names another; `colorize run --help` lists its options.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"colorize {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    pass


class BackendChoice(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    cuda = "cuda"
    onnxruntime = "onnxruntime"
    cpu = "cpu"


def _err(msg: str) -> None:
    typer.echo(f"colorize: {msg}", err=True)


class SmoothingChoice(str, Enum):
    off = "off"
    flow = "flow"


class DecodingChoice(str, Enum):
    annealed = "annealed"
    mean = "mean"
    argmax = "argmax"


@dataclass(frozen=True)
class RunOptions:
    output: str | None
    model: str
    backend: str
    recursive: bool
    overwrite: bool
    json_out: bool
    quality: int
    working_size: int | None
    weights: Path | None
    verbose: bool
    decode_options: dict = field(default_factory=dict)
    samples: int = 1
    seed: int = 0
    video: dict = field(default_factory=dict)  # engines.video.film.VideoOptions fields
    threads: int | None = None  # CPU threads for the engine; None: all cores (photos), 1 (films)
    saturation: float = 1.0  # scale of the predicted chroma (engines.pipeline.Colorizer.predict_ab)
    resume: bool = False  # films: continue an interrupted run's work


# The engine option, the same wherever a command takes one.
ModelOption = Annotated[str, typer.Option("-m", "--model", help=f"Engine: {', '.join(ENGINES)}.")]
DEFAULT_MODEL = "regression"


@app.command("run")
def run(
    inputs: Annotated[list[str], typer.Argument(help="Photos, films, folders or glob patterns.", show_default=False)],
    output: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", help="Output file (one input) or folder. Default: <stem>_color<ext> beside each input."
        ),
    ] = None,
    model: ModelOption = DEFAULT_MODEL,
    backend: Annotated[BackendChoice, typer.Option(help="Where the engine runs.")] = BackendChoice.auto,
    recursive: Annotated[
        bool, typer.Option("-r", "--recursive", help="Descend into subfolders of folder inputs.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace outputs that already exist.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per input on stdout, nothing else there.")
    ] = False,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG/WebP quality of outputs.")] = 95,
    working_size: Annotated[
        int | None,
        typer.Option(min=16, max=4096, help="Long side at which the engine sees the photo (default: the engine's)."),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Use a checkpoint from `python -m training` instead of the shipped weights.")
    ] = None,
    decoding: Annotated[
        DecodingChoice | None,
        typer.Option(help="Classification engines: annealed mean (default), plain mean, or argmax."),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=10.0,
            help="Classification engines: annealed-mean temperature (default: the engine's; Zhang et al.: 0.38).",
        ),
    ] = None,
    correction: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=2.0,
            help="Classification engines: how much of the training's class rebalancing to undo before decoding "
            "(0: Zhang et al.'s vivid decoding, 1: all of it; default: the engine's).",
        ),
    ] = None,
    saturation: Annotated[
        float,
        typer.Option(
            help="Scale the predicted colour (chroma) by S before it is fitted into the displayable gamut; "
            "lightness is kept. 1: as predicted, 0: gray, 1.3: more vivid. Photos and films."
        ),
    ] = 1.0,
    samples: Annotated[
        int, typer.Option(min=1, max=100, help="Engines with a noise input (GAN): write N colourings, <name>_1 ... _N.")
    ] = 1,
    seed: Annotated[
        int, typer.Option(help="Engines with a noise input: which colouring (the first of --samples).")
    ] = 0,
    codec: Annotated[
        str, typer.Option(help="Video: output codec (libx264, libx265, libvpx-vp9, mpeg4, ...).")
    ] = "libx264",
    crf: Annotated[int, typer.Option(min=0, max=63, help="Video: quality (lower is better and larger).")] = 18,
    smoothing: Annotated[
        SmoothingChoice,
        typer.Option(help="Video: temporal smoothing of colour, guided by motion, reset at scene cuts."),
    ] = SmoothingChoice.flow,
    smoothing_strength: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Video: weight of the previous frame's motion-warped colour.")
    ] = 0.6,
    engine_interval: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="Video, with smoothing: the engine colours every Nth frame; the frames between take its "
            "colour carried along the motion where it can be followed (1: every frame).",
        ),
    ] = 4,
    resume: Annotated[
        bool,
        typer.Option(
            help="Video: continue a run that was interrupted (Ctrl-C, kill, power cut) where it stopped, "
            "from the work it left in .<output>.colorize-partial/ (same input and settings only)."
        ),
    ] = False,
    segment_seconds: Annotated[
        float,
        typer.Option(
            min=0.01,
            max=3600.0,
            help="Video: encode in independent pieces of this length; a killed run loses at most one.",
        ),
    ] = 10.0,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            help="CPU threads for the engine (default: all cores for photos, 1 for films). "
            "Use 1 when running several colorize processes side by side.",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Say which backend was picked and list every output.")
    ] = False,
) -> None:
    """Colour photos and films (the default command): `colorize scans/ film.mp4 -o coloured/`.

    Inputs are files, folders or glob patterns; photos and films may be mixed."""
    _check_model(model)
    if not (saturation >= 0 and math.isfinite(saturation)):
        _err(f"--saturation must be 0 or more (0: gray, 1: as predicted), got {saturation}")
        raise typer.Exit(EXIT_USAGE)
    decode_options = _decode_options(decoding, temperature, correction)
    video = {
        "codec": codec,
        "crf": crf,
        "smoothing": smoothing.value,
        "strength": smoothing_strength,
        "segment_seconds": segment_seconds,
        "engine_interval": engine_interval,
    }
    opts = RunOptions(
        output, model, backend.value, recursive, overwrite, json_out, quality, working_size, weights, verbose,
        decode_options, samples, seed, video, threads, saturation, resume,
    )  # fmt: skip
    raise typer.Exit(_run(inputs, opts))


def _check_model(model: str) -> None:
    """An unknown ``--model`` is a usage error naming the engines there are."""
    try:
        get_spec(model)
    except UnknownEngineError as e:
        raise typer.BadParameter(str(e), param_hint="--model") from None


def _decode_options(decoding: DecodingChoice | None, temperature: float | None, correction: float | None) -> dict:
    """The classification decoding flags given, as ``load_colorizer`` keywords (the engine's defaults for the rest)."""
    options: dict = {}
    if decoding is not None:
        options["method"] = decoding.value
    if temperature is not None:
        options["temperature"] = temperature
    if correction is not None:
        options["correction"] = correction
    return options


def _run(inputs: list[str], opts: RunOptions) -> int:
    jobs = expand(inputs, opts.output, opts.recursive)
    if opts.output is not None and len(jobs) > 1 and Path(opts.output).is_file():
        _err(f"-o {opts.output} is a file, but there are {len(jobs)} inputs; give a folder")
        return EXIT_USAGE

    # The photos at the head of the list are read while the engine loads (importing PyTorch alone
    # takes seconds of one core); then the heavy imports, now that the arguments are known to be sensible.
    with _Prefetch(_leading_photos(jobs), opts) as prefetch:
        colorizer, why_torch = _torch_free_colorizer(jobs, opts)
        if colorizer is None:
            from engines.models.checkpoint import CheckpointError
            from engines.pipeline import load_colorizer
            from engines.runtime.backends import BackendUnavailable, select_backend

            try:
                backend = select_backend(opts.backend)
            except BackendUnavailable as e:
                _err(str(e))
                return EXIT_USAGE
            try:
                colorizer = load_colorizer(
                    opts.model, backend, weights=opts.weights, working_size=opts.working_size, **opts.decode_options
                )
            except (CheckpointError, OSError, ValueError) as e:
                _err(f"cannot load model: {e}")
                return EXIT_USAGE
            if why_torch:
                colorizer.notes = (*colorizer.notes, why_torch)
    read_ahead = prefetch.results
    if opts.verbose:
        for note in colorizer.notes:
            _err(f"backend: {note}")
    colorizer.seed = opts.seed
    colorizer.saturation = opts.saturation
    if opts.threads is not None:
        colorizer.set_threads(opts.threads)
    if opts.samples > 1 and not colorizer.noise_input:
        _err(f"--samples needs an engine with a noise input (a GAN engine); {opts.model} has none")
        return EXIT_USAGE

    failed = 0
    with _progress(len(jobs), enabled=sys.stderr.isatty() and not opts.json_out) as progress:
        for job, seconds in _colorize_all(colorizer, jobs, opts, progress, read_ahead):
            failed += job.error is not None
            _report(job, seconds, opts)
            progress.advance()
    if not opts.json_out and len(jobs) > 1:
        _err(f"{len(jobs) - failed} of {len(jobs)} colorized" + (f", {failed} failed" if failed else ""))
    return EXIT_FAILED if failed else EXIT_OK


# On a CPU with bf16 in hardware PyTorch runs the network faster than ONNX Runtime does in float32,
# which repays the 2 s that importing it costs after about 600 photos or film frames (measured
# on a 2-core EPYC with AVX-512 BF16: 200 photos and a 425-frame film faster without PyTorch, 1000
# photos and a 1700-frame film 10% faster with it). Elsewhere ONNX Runtime is the faster anyway.
_BF16_LONG_RUN = 600


def _torch_free_colorizer(jobs: list[Job], opts: RunOptions):
    """``(engine, None)`` on the path without PyTorch (``engines.ort_pipeline``; start-up 2 s shorter) when
    this run should take it: seeds its noise takes, for ``auto`` not a long run on a CPU with bf16
    (``_BF16_LONG_RUN``), and what ``ort_pipeline.load`` asks. Otherwise ``(None, why or None)``;
    also if it fails to load (PyTorch's path then says why)."""
    from engines import ort_pipeline
    from engines.runtime.host import cpu_has_fast_bf16

    if not 0 <= opts.seed <= 2**32 - opts.samples:
        return None, None
    if opts.backend == "auto" and cpu_has_fast_bf16() and (n := _run_size(jobs)) > _BF16_LONG_RUN:
        return None, f"PyTorch for a long run ({n}+ photos and film frames) on a CPU with bf16"
    try:
        colorizer = ort_pipeline.load(
            opts.model, opts.backend, opts.weights, opts.working_size, opts.decode_options, threads=opts.threads or 1
        )
    except Exception:  # noqa: BLE001 - e.g. a damaged cached graph: PyTorch's path runs and exports it again
        colorizer = None
    return colorizer, None


def _run_size(jobs: list[Job]) -> int:
    """Photos plus film frames (from the films' headers), counted until past ``_BF16_LONG_RUN``."""
    from engines.video.streams import frame_estimate, is_video

    n = 0
    for job in jobs:
        if job.error is None:
            n += frame_estimate(Path(job.input)) if is_video(Path(job.input)) else 1
            if n > _BF16_LONG_RUN:
                break
    return n


def _report(job: Job, seconds: float, opts: RunOptions) -> None:
    """A finished job: its JSON line on stdout with --json; otherwise its error and notes (and with
    --verbose its output) on stderr."""
    if opts.json_out:
        record = {
            "input": job.input,
            "output": job.output if job.error is None else None,
            "status": "ok" if job.error is None else "error",
            "error": job.error,
            "seconds": round(seconds, 4),
        }
        if job.notes:
            record["notes"] = job.notes
        if opts.samples > 1 and job.error is None:
            record["outputs"] = [str(p) for p in _sample_paths(Path(job.output), opts.samples)]
            record["output"] = record["outputs"][0]
        typer.echo(json.dumps(record))
        return
    if job.error is not None:
        _err(f"{job.input}: {job.error}")
    elif opts.verbose:
        _err(f"{job.input} -> {job.output} ({seconds:.2f} s)")
    for note in job.notes:
        _err(f"{job.input}: note: {note}")


def _colorize_film(colorizer, job: Job, opts: RunOptions, progress: _progress) -> str | None:
    from engines.media.formats import VIDEO_OUTPUT_FORMATS
    from engines.video.film import VideoError, VideoOptions, colorize_video

    out = Path(job.output)
    if out.suffix.lower() not in VIDEO_OUTPUT_FORMATS:  # e.g. a film with an image-like or no extension
        out = out.with_suffix(".mp4")
        job.output = str(out)
    if out.exists() and not opts.overwrite:
        return f"output {out} exists (use --overwrite to replace it)"
    threads = colorizer.get_threads()
    if colorizer.on_cpu and opts.threads is None:
        # Decoding, the engine and encoding run in parallel threads: one engine thread avoids
        # oversubscribing the cores (measured 5-10x slower torch ops with 2 threads on 2 cores).
        colorizer.set_threads(1)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        report = colorize_video(
            Path(job.input), out, colorizer.predict_frames, VideoOptions(**opts.video), progress.frames,
            resume=opts.resume, engine_key=_engine_key(colorizer, opts), threads=colorizer.get_threads(),
        )  # fmt: skip
    except KeyboardInterrupt:
        partial = out.with_name(f".{out.name}.colorize-partial")
        if (partial / "manifest.json").exists():
            _err(f"{job.input}: the finished part is kept in {partial}: rerun with --resume to continue")
        raise
    except VideoError as e:
        return str(e)
    except OSError as e:
        return f"cannot write output: {e.strerror or e}"
    except Exception as e:  # noqa: BLE001 - a bug of ours: still one line, and the batch goes on
        return f"internal error: {type(e).__name__}: {e}"
    finally:
        colorizer.set_threads(threads)
    job.notes = [*report.reencoded_streams, *report.notes]
    if report.resumed_frames:
        job.notes.insert(0, f"resumed: {report.resumed_frames} of {report.frames} frames were done by an earlier run")
    if report.corrupt_frames_bridged:
        job.notes.append(f"{report.corrupt_frames_bridged} corrupt frame(s) bridged with the previous frame")
    return None


def _engine_key(colorizer, opts: RunOptions) -> dict:
    """What a film's colour depends on besides the video options: a resume with another is refused."""
    weights = opts.weights if opts.weights is not None else get_spec(opts.model).weights_path()
    st = weights.stat()
    return {
        "model": opts.model,
        "weights": [str(weights.resolve()), st.st_size, st.st_mtime_ns],
        "working_size": colorizer.working_size,
        "decode": opts.decode_options,
        "saturation": opts.saturation,
        "seed": opts.seed,
    }


def _sample_paths(out: Path, samples: int) -> list[Path]:
    if samples == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(1, samples + 1)]


def _colorize_all(
    colorizer, jobs: list[Job], opts: RunOptions, progress: _progress, read_ahead: dict
) -> Iterator[tuple[Job, float]]:
    """Every job, in input order, with ``job.error`` set on failure and the seconds it took: films one at
    a time, each unbroken run of photos through ``_PhotoPipeline`` (``read_ahead``: ``_Prefetch.results``)."""
    from engines.video.streams import is_video

    k = 0
    while k < len(jobs):
        job = jobs[k]
        if job.error is None and is_video(Path(job.input)):
            t0 = time.perf_counter()
            job.error = _colorize_film(colorizer, job, opts, progress)
            yield job, time.perf_counter() - t0
            k += 1
            continue
        end = k
        while end < len(jobs) and (jobs[end].error is not None or not is_video(Path(jobs[end].input))):
            end += 1
        yield from _PhotoPipeline(colorizer, jobs[k:end], opts, read_ahead).run()
        k = end


# Photos per network call, and how many may be decoded ahead or wait to be written: a few batches in
# flight keep memory flat for any number of photos. Photos above _BATCH_PIXELS go alone (their full-size
# work dominates), and _FLIGHT_PIXELS caps the decoded photos held at once when photos are large.
_BATCH, _BATCH_PIXELS, _FLIGHT_PIXELS = 8, 4_000_000, 24_000_000


def _photo_error(e: Exception) -> str:
    """The one-line reason for a photo that failed (the same wording for every stage)."""
    from engines.media.photo_io import PhotoError

    if isinstance(e, PhotoError):
        return str(e)
    if isinstance(e, OSError):  # e.g. the output folder cannot be created
        return f"cannot write output: {e.strerror or e}"
    if isinstance(e, MemoryError):
        return "out of memory"
    return f"internal error: {type(e).__name__}: {e}"  # a bug of ours: still one line, and the batch goes on


def _read(job: Job, opts: RunOptions):
    """``((photo, output paths) or the error, seconds)``: a photo's first step, without PyTorch."""
    from engines.media.photo_io import read_photo

    t0 = time.perf_counter()
    outs = _sample_paths(Path(job.output), opts.samples)
    for out in outs:
        if out.exists() and not opts.overwrite:
            return f"output {out} exists (use --overwrite to replace it)", 0.0
    try:
        return (read_photo(Path(job.input), levels=True), outs), time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - one line per photo, whatever went wrong
        return _photo_error(e), time.perf_counter() - t0


def _leading_photos(jobs: list[Job]) -> list[Job]:
    """The jobs before the first film (the first run of photos), without those that already failed."""
    from engines.video.streams import is_video

    lead = []
    for job in jobs:
        if job.error is not None:
            continue
        if is_video(Path(job.input)):
            break
        lead.append(job)
    return lead


class _Prefetch:
    """Reads photos on a thread of its own while the engine loads, in input order, until _FLIGHT_PIXELS
    are held; leaving the ``with`` stops it (after the photo in hand) and ``results`` (``id(job)`` ->
    ``_read``'s result) is what the first ``_PhotoPipeline`` starts from. Measured on 200 photos of 481x321
    on two cores: the first engine call comes with most of them read, instead of with none."""

    def __init__(self, jobs: list[Job], opts: RunOptions):
        import threading

        self.jobs, self.opts, self.results = jobs, opts, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="colorize-prefetch", daemon=True)

    def __enter__(self) -> Self:
        if self.jobs:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        held = 0
        for job in self.jobs:
            if self._stop.is_set() or held >= _FLIGHT_PIXELS:
                return
            result = self.results[id(job)] = _read(job, self.opts)
            if not isinstance(result[0], str):
                held += result[0][0].rgb.shape[0] * result[0][0].rgb.shape[1]


class _PhotoPipeline:
    """Colour photos (``opts.samples`` colourings each); ``run()`` yields each job in input order when done.

    As in the film path, three stages overlap: decoding and lightness (two threads), the engine (this
    thread: photos with the same ``Colorizer.work_shape`` go through the network together, up to _BATCH
    at a time) and upsampling the ab to full size, composing RGB plus encoding (three threads: off the
    engine's thread, which is the slowest stage, all that grows with the photo's size; 3 measured 25%
    faster than 1 on two cores). A failing photo fails alone; outputs are written atomically by ``write_photo``.
    """

    def __init__(self, colorizer, jobs: list[Job], opts: RunOptions, read_ahead: dict | None = None):
        self.colorizer, self.opts = colorizer, opts
        self.read_ahead = read_ahead if read_ahead is not None else {}  # id(job) -> _read's result
        self.seconds = {id(job): 0.0 for job in jobs}  # decoding + its share of the engine call + encoding
        self.pixels = {id(job): 0 for job in jobs}
        self.writes: dict[int, list] = {id(job): [] for job in jobs}  # each job's encode futures, one per sample
        self.decoding: collections.deque = collections.deque()  # (job, future), in input order
        self.waiting: dict[tuple, list] = {}  # work shape -> [(job, photo, l, outs)]; the first key: the oldest
        self.encoding: collections.deque = collections.deque()  # every encode future, in submission order
        self.todo = collections.deque(jobs)  # input order; the head is yielded once finished
        self.flight = 0  # pixels of photos decoded and not yet yielded
        self.pending = (job for job in jobs if job.error is None)

    def run(self) -> Iterator[tuple[Job, float]]:
        from concurrent.futures import ThreadPoolExecutor

        from engines.runtime.host import retain_freed_memory

        retain_freed_memory()  # photo-sized temporaries: reuse freed memory, no fresh page faults
        threads = self.colorizer.get_threads()
        if self.colorizer.on_cpu and self.opts.threads is None:
            # The stages run in parallel threads: one engine thread avoids oversubscribing the cores
            # (as for films; measured faster than two on two cores).
            self.colorizer.set_threads(1)
        self.decoder, self.encoder = ThreadPoolExecutor(2, "decode"), ThreadPoolExecutor(3, "encode")
        try:
            self._refill()
            while self.decoding:
                job, future = self.decoding.popleft()
                self._batch(job, *future.result())
                # Bounded: wait for the oldest writes while too many are queued or too many pixels are held.
                while self.encoding and (len(self.encoding) > 2 * _BATCH or self.flight > _FLIGHT_PIXELS):
                    self.encoding.popleft().result()
                yield from self._finished()
                self._refill()
            while self.waiting:
                self._run_engine(self.waiting.pop(next(iter(self.waiting))))
            for f in self.encoding:
                f.result()
            yield from self._finished()
        finally:
            self.decoder.shutdown(cancel_futures=True)
            self.encoder.shutdown(cancel_futures=True)
            self.colorizer.set_threads(threads)

    def _refill(self) -> None:
        """Keep two photos decoding, and up to 2 * _BATCH while the decoded pixels stay under _FLIGHT_PIXELS."""
        while len(self.decoding) < 2 or (len(self.decoding) < 2 * _BATCH and self.flight < _FLIGHT_PIXELS):
            job = next(self.pending, None)
            if job is None:
                return
            self.decoding.append((job, self.decoder.submit(self._decode, job)))

    def _decode(self, job: Job):
        """``((photo, lightness, output paths) or the error, seconds)``; runs on a decoder thread. The photo
        is read here unless ``_Prefetch`` read it already."""
        read, seconds = self.read_ahead.pop(id(job), None) or _read(job, self.opts)
        if isinstance(read, str):
            return read, seconds
        photo, outs = read
        t0 = time.perf_counter()
        try:
            l = self.colorizer.lightness(photo.rgb)
        except Exception as e:  # noqa: BLE001
            return _photo_error(e), seconds + time.perf_counter() - t0
        photo.rgb = None  # only its alpha and bit depth are needed from here on
        return (photo, l, outs), seconds + time.perf_counter() - t0

    def _batch(self, job: Job, result, seconds: float) -> None:
        """A decoded photo joins the photos of its work shape; a full batch (or a large photo, alone)
        goes through the engine, and so does the oldest shape's when too many photos wait."""
        self.seconds[id(job)] += seconds
        if isinstance(result, str):
            job.error = result
            return
        photo, l, outs = result
        h, w = l.shape[-2:]
        self.pixels[id(job)] = h * w
        self.flight += h * w
        key = self.colorizer.work_shape(h, w) if h * w <= _BATCH_PIXELS else ("alone", id(job))
        self.waiting.setdefault(key, []).append((job, photo, l, outs))
        if len(self.waiting[key]) >= _BATCH or h * w > _BATCH_PIXELS:
            self._run_engine(self.waiting.pop(key))
        elif sum(map(len, self.waiting.values())) >= 2 * _BATCH:  # many shapes: the oldest photo's goes
            self._run_engine(self.waiting.pop(next(iter(self.waiting))))

    def _run_engine(self, batch: list) -> None:
        """One network call per sample for the batch, then each colouring off to the encoders."""
        colorizer, opts = self.colorizer, self.opts
        t0 = time.perf_counter()
        per_sample = []
        for k in range(opts.samples):
            colorizer.seed = opts.seed + k
            try:
                per_sample.append(colorizer.predict_ab_many_deferred([item[2] for item in batch]))
            except Exception:  # noqa: BLE001 - retry alone, so that only the photo at fault fails
                per_sample.append([_predict_alone(colorizer, item[2]) for item in batch])
        colorizer.seed = opts.seed
        share = (time.perf_counter() - t0) / len(batch)
        for i, (job, photo, l, outs) in enumerate(batch):
            self.seconds[id(job)] += share
            for ab_list, out in zip(per_sample, outs):
                if isinstance(ab_list[i], Exception):
                    job.error = job.error or _photo_error(ab_list[i])
                elif job.error is None:
                    # The full-size ab (ab_list[i]() upsamples) is made on the encoder thread too.
                    self.writes[id(job)].append(self.encoder.submit(self._encode, photo, l, ab_list[i], out))
                    self.encoding.append(self.writes[id(job)][-1])

    def _encode(self, photo, l, full_size_ab, out: Path):
        """``(None or the error, seconds)``; runs on an encoder thread."""
        from engines.media.photo_io import write_photo

        t0 = time.perf_counter()
        try:
            ab = full_size_ab()
            # 8-bit photos are written at 8 bits: composed straight to levels, the faster path.
            rgb = self.colorizer.compose_u8(l, ab) if photo.bit_depth == 8 else self.colorizer.compose(l, ab)
            out.parent.mkdir(parents=True, exist_ok=True)
            write_photo(out, rgb, alpha=photo.alpha, bit_depth=photo.bit_depth, quality=self.opts.quality)
            return None, time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            return _photo_error(e), time.perf_counter() - t0

    def _upstream(self, job: Job) -> bool:
        """Still decoding or waiting for the engine."""
        return any(job is j for j, _ in self.decoding) or any(
            job is item[0] for b in self.waiting.values() for item in b
        )

    def _finished(self) -> Iterator[tuple[Job, float]]:
        """The jobs at the head of the input order whose every stage is done, with their seconds."""
        while self.todo and not self._upstream(self.todo[0]) and all(f.done() for f in self.writes[id(self.todo[0])]):
            job = self.todo.popleft()
            for f in self.writes.pop(id(job)):
                error, s = f.result()
                self.seconds[id(job)] += s
                job.error = job.error or error
            self.flight -= self.pixels.pop(id(job))
            yield job, self.seconds.pop(id(job))


def _predict_alone(colorizer, l):
    """``Colorizer.predict_ab_many_deferred`` of one photo, or the error."""
    try:
        return colorizer.predict_ab_many_deferred([l])[0]
    except Exception as e:  # noqa: BLE001
        return e


class _progress:
    """Rich progress bars on a terminal (files, and frames of the film in hand with frames per second
    and time left); no-ops otherwise (pipes, CI, --json)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self._bar, self._frames = total, enabled, None, None

    def __enter__(self) -> Self:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.__enter__()
            self._files = self._bar.add_task("colorizing", total=self.total, rate="")
        return self

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._files)
            if self._frames is not None:
                self._bar.remove_task(self._frames)
                self._frames = None

    def frames(self, done: int, total: int | None) -> None:
        """Progress within a film: ``engines.video.film.colorize_video``'s callback."""
        if self._bar is None:
            return
        if self._frames is None:  # the first call may bring the frames an earlier (resumed) run did
            self._frames = self._bar.add_task("  frames", total=total, rate="")
            self._t0, self._done0 = time.perf_counter(), done
        fps = (done - self._done0) / max(1e-9, time.perf_counter() - self._t0)
        self._bar.update(self._frames, completed=done, total=total, rate=f"{fps:.1f} fps")

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _parse_list(text: str, kind: type, flag: str, low: float, high: float) -> list:
    """``"64,96,128"`` -> ``[64, 96, 128]``; raises ValueError with a one-line reason."""
    values = []
    for item in text.split(","):
        try:
            value = kind(item.strip())
        except ValueError:
            raise ValueError(f"{flag}: {item.strip()!r} is not a {'whole ' if kind is int else ''}number") from None
        if not low <= value <= high:
            raise ValueError(f"{flag}: {value} is outside {low}..{high}")
        if value not in values:
            values.append(value)
    return values


@app.command("sheet")
def sheet(
    photo: Annotated[Path, typer.Argument(help="The photo to try the settings on.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="The contact sheet (.png, .jpg, ...).")],
    models: Annotated[str, typer.Option(help="Engines, comma-separated.")] = ",".join(ENGINES),
    sizes: Annotated[str, typer.Option(help="Working sizes (--working-size), comma-separated.")] = "64,96,128,256",
    temperatures: Annotated[
        str, typer.Option(help="Classification engines: temperatures (--temperature), comma-separated.")
    ] = "0.2,0.5,1",
    cell: Annotated[int, typer.Option(min=64, max=1024, help="Longest side of each thumbnail, in pixels.")] = 320,
    backend: Annotated[BackendChoice, typer.Option(help="Where the engines run.")] = BackendChoice.auto,
    overwrite: Annotated[bool, typer.Option(help="Replace the sheet if it exists.")] = False,
) -> None:
    """Contact sheet of PHOTO under each engine and setting: `colorize sheet photo.jpg -o sheet.png`.

    One labelled image of the photo under every engine, working size and (classification) temperature;
    each label is the flags that give that picture with `colorize PHOTO ...`."""
    names, size_list, temperature_list = _sheet_settings(models, sizes, temperatures)
    _check_sheet_output(output, overwrite)
    rgb = _read_sheet_photo(photo)

    from engines.runtime.backends import BackendUnavailable, select_backend

    try:
        chosen = select_backend(backend.value)
    except BackendUnavailable as e:
        _err(f"sheet: {e}")
        raise typer.Exit(EXIT_USAGE) from None
    settings = [
        (name, t) for name in names for t in (temperature_list if get_spec(name).family == "classification" else [None])
    ]
    rows = _sheet_rows(rgb, settings, size_list, chosen, cell)
    long_side = max(rgb.shape[:2])
    title = f"colorize {photo.name} + the flags under a picture"
    if max(size_list) > long_side:
        title += f"  (sizes above {long_side}, the photo's long side, all see it at {long_side})"
    _write_sheet(output, rows, title)
    typer.echo(f"wrote {output} ({len(rows)} x {len(size_list)} cells)")


def _sheet_settings(models: str, sizes: str, temperatures: str) -> tuple[list[str], list[int], list[float]]:
    """``sheet``'s engine names, working sizes and temperatures; a bad one is a usage error."""
    try:
        names = [m.strip() for m in models.split(",") if m.strip()]
        for name in names:
            get_spec(name)
        if not names:
            raise ValueError("--models: no engine named")
        size_list = _parse_list(sizes, int, "--sizes", 16, 4096)
        temperature_list = _parse_list(temperatures, float, "--temperatures", 0.01, 10.0)
    except (UnknownEngineError, ValueError) as e:
        _err(f"sheet: {e}")
        raise typer.Exit(EXIT_USAGE) from None
    return names, size_list, temperature_list


def _check_sheet_output(output: Path, overwrite: bool) -> None:
    from engines.media.formats import IMAGE_SUFFIXES

    if output.suffix.lower() not in IMAGE_SUFFIXES:
        _err(f"sheet: {output}: unsupported output format {output.suffix or '(no suffix)'} (use .png or .jpg)")
        raise typer.Exit(EXIT_USAGE)
    if output.exists() and not overwrite:
        _err(f"sheet: output {output} exists (use --overwrite to replace it)")
        raise typer.Exit(EXIT_FAILED)


def _read_sheet_photo(photo: Path):
    from engines.media.photo_io import PhotoError, read_photo

    try:
        return read_photo(photo).rgb
    except PhotoError as e:
        _err(f"sheet: {photo}: {e}")
        raise typer.Exit(EXIT_FAILED) from None


def _sheet_rows(rgb, settings: list[tuple[str, float | None]], size_list: list[int], backend, cell: int) -> list:
    """One row per (engine, temperature), one labelled thumbnail per working size."""
    from engines.media.sheet import thumbnail
    from engines.models.checkpoint import CheckpointError
    from engines.pipeline import load_colorizer

    rows = []
    with _progress(len(settings) * len(size_list), enabled=sys.stderr.isatty()) as progress:
        for name, t in settings:
            flags = [f"--model {name}"] + ([f"--temperature {t:g}"] if t is not None else [])
            row = []
            for size in size_list:
                options = {"temperature": t} if t is not None else {}
                try:
                    colorizer = load_colorizer(name, backend, working_size=size, **options)
                except (CheckpointError, OSError, ValueError) as e:
                    _err(f"sheet: cannot load model {name}: {e}")
                    raise typer.Exit(EXIT_USAGE) from None
                row.append((thumbnail(colorizer.colorize(rgb), cell), [*flags, f"--working-size {size}"]))
                progress.advance()
            rows.append(row)
    return rows


def _write_sheet(output: Path, rows: list, title: str) -> None:
    import numpy as np

    from engines.media.photo_io import PhotoError, write_photo
    from engines.media.sheet import contact_sheet

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_photo(output, contact_sheet(rows, title).astype(np.float32) / 255, quality=92)
    except (PhotoError, OSError) as e:
        _err(f"sheet: {output}: {e}")
        raise typer.Exit(EXIT_FAILED) from None


@app.command("models")
def models() -> None:
    """List the engines with their working size and held-out figures: `colorize models`."""
    from engines.models.checkpoint import CheckpointError, load

    for spec in ENGINES.values():
        typer.echo(f"{spec.name:<16} {spec.summary}")
        try:
            ckpt = load(spec.weights_path())
        except (CheckpointError, OSError) as e:
            typer.echo(f"{'':<16} weights unavailable: {e}")
            continue
        m = ckpt.metrics
        figures = (
            f"held-out AuC {m['auc']:.2f} (all-gray {m['gray_auc']:.2f}), "
            f"rebalanced {m['auc_rebal']:.2f} (all-gray {m['gray_auc_rebal']:.2f})"
            if {"auc", "gray_auc", "auc_rebal", "gray_auc_rebal"} <= set(m)
            else "no held-out figures recorded"
        )
        typer.echo(f"{'':<16} working size {ckpt.working_size}; {figures}")


@app.command("eval")
def eval_(
    results: Annotated[Path, typer.Argument(help="Coloured result: a photo or video, or a folder of them.")],
    truth: Annotated[
        Path, typer.Argument(help="Ground truth: a photo or video, or a folder with the same relative names.")
    ],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON (summary and per-image or per-video scores).")
    ] = False,
    classifier: Annotated[
        Path | None,
        typer.Option(
            help="Photos: a classifier from `python -m training.classifier` for top-1 agreement, accuracy "
            "(truth filed by class folders) and a Frechet distance on its features. "
            "Default: the shipped Tiny ImageNet ResNet-18."
        ),
    ] = None,
    no_classifier: Annotated[bool, typer.Option("--no-classifier", help="Skip the classifier figures.")] = False,
    inception: Annotated[
        Path | None,
        typer.Option(help="Photos: the standard FID Inception weights (pt_inception-2015-12-05), for FID."),
    ] = None,
) -> None:
    """Score coloured results against the originals: `colorize eval coloured/ originals/`.

    AuC, PSNR, SSIM, CIEDE2000, colourfulness, dL; for photos also classifier figures and, given its
    weights, FID; for videos the warping error and CDC. Exit code 2 when sizes or frame counts differ."""
    from engines.evaluation.scoring import (
        DEFAULT_CLASSIFIER,
        EvaluationError,
        MismatchError,
        RealismProbe,
        as_dicts,
        evaluate_pairs,
        evaluate_videos,
        pair_files,
        realism_networks,
        split_pairs,
        training_prior,
    )
    from engines.media.photo_io import PhotoError

    try:
        photos, videos = split_pairs(pair_files(results, truth))
        if videos:
            summary, per_video = evaluate_videos(videos, training_prior())
            payload = {"summary": summary, "videos": per_video}
        else:
            if no_classifier:
                classifier = None
            elif classifier is None and DEFAULT_CLASSIFIER.exists():
                classifier = DEFAULT_CLASSIFIER
            networks = realism_networks(classifier, inception)
            probe = RealismProbe(networks) if networks else None
            summary, scores = evaluate_pairs(photos, training_prior(), probe)
            payload = {"summary": summary, "images": as_dicts(scores)}
    except MismatchError as e:
        _err(f"eval: {e}")
        raise typer.Exit(EXIT_USAGE) from None
    except (EvaluationError, PhotoError, OSError) as e:
        _err(f"eval: {e}")
        raise typer.Exit(EXIT_FAILED) from None
    if json_out:
        typer.echo(json.dumps(payload))
        return
    _print_eval_table(summary)


def _maybe(value: float, spec: str) -> str:
    """A pooled figure that may have no pixel to pool (NaN)."""
    return "n/a (no such pixels)" if math.isnan(value) else format(value, spec)


def _print_eval_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    if "videos" in summary:
        title = f"{summary['videos']} video(s), {summary['frames']} frame(s); frame metrics pooled over all frames"
    else:
        title = f"{summary['images']} image(s)"
    caption = "warping error and CDC: lower is steadier" if "videos" in summary else None
    table = Table(title=title, caption=caption, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("AuC, ab error 0-150 (higher is better)", f"{summary['auc']:.2f}"),
        ("AuC, class-rebalanced", f"{summary['auc_rebalanced']:.2f}"),
        ("PSNR (dB)", f"{summary['psnr']:.2f}"),
        ("SSIM", f"{summary['ssim']:.4f}"),
        ("CIEDE2000 (lower is better)", f"{summary['ciede2000']:.2f}"),
        ("colourfulness: results / truth", f"{summary['colourfulness']:.1f} / {summary['colourfulness_true']:.1f}"),
        (
            "colourfulness gap: per image / of means",
            f"{summary['colourfulness_gap_per_image']:.1f} / {summary['colourfulness_gap_of_means']:.1f}",
        ),
        ("lightness error, mean |dL|", f"{summary['lightness_error']:.2f}"),
        (
            "mean a* on truly green pixels: results / truth",
            f"{_maybe(summary['green_a'], '.1f')} / {_maybe(summary['green_a_truth'], '.1f')}",
        ),
        ("truly neutral pixels coloured strongly (%)", _maybe(summary["false_colour_percent"], ".1f")),
    ]
    if "videos" in summary:

        def pair(key: str) -> str:
            a, b = summary[key], summary[f"{key}_truth"]
            return "n/a (needs 5+ frames)" if a is None else f"{a:.4g} / {b:.4g}"

        rows += [
            ("warping error (Lai et al.): results / truth", pair("warping_error")),
            ("CDC, colour distribution consistency: results / truth", pair("cdc")),
        ]
    for key, value in summary.items():  # classifier figures, named after their network
        if key.startswith("frechet_distance["):
            rows.append((f"Frechet distance on {key[17:-1]} features (lower is better)", f"{value:.3f}"))
        elif key.startswith("top1_agreement["):
            rows.append((f"top-1 agreement with truth, {key[15:-1]} (%)", f"{value:.1f}"))
        elif key.startswith("accuracy["):
            truth_acc = summary[f"accuracy_truth[{key[9:-1]}]"]
            rows.append((f"accuracy, {key[9:-1]}: results / truth (%)", f"{value:.1f} / {truth_acc:.1f}"))
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


trt_app = typer.Typer(help="TensorRT engine cache (backend unverified): `colorize trt build -m gan`, `list`, `clear`.")
app.add_typer(trt_app, name="trt")


@trt_app.command("build")
def trt_build(
    model: ModelOption = DEFAULT_MODEL,
    working_size: Annotated[int | None, typer.Option(min=16, max=4096, help="Working size to build for.")] = None,
) -> None:
    """Build (or check) the cached TensorRT engine for a model on this GPU: `colorize trt build -m gan`."""
    from engines.pipeline import load_colorizer
    from engines.runtime.backends import BackendUnavailable, select_backend

    try:
        get_spec(model)
        load_colorizer(model, select_backend("tensorrt"), working_size=working_size)
    except (UnknownEngineError, BackendUnavailable) as e:
        _err(str(e))
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(f"TensorRT engine for {model} is cached")


@trt_app.command("list")
def trt_list() -> None:
    """List cached TensorRT engines: `colorize trt list`."""
    from engines.runtime import trt_backend

    entries = trt_backend.list_entries()
    for path, header in entries:
        if header is None:
            typer.echo(f"{path.name}  (unreadable: will be rebuilt)")
        else:
            k = header["key"]
            typer.echo(
                f"{path.name}  TensorRT {k['tensorrt_version']}, {k['gpu']} (sm {k['compute_capability']}), "
                f"{k['precision']}, max shape {k['profile']['max_shape']}, {header['size'] / 2**20:.1f} MiB"
            )
    if not entries:
        typer.echo(f"no cached engines in {trt_backend.cache_dir()}")


@trt_app.command("clear")
def trt_clear() -> None:
    """Remove cached TensorRT engines and the timing cache: `colorize trt clear`."""
    from engines.runtime import trt_backend

    typer.echo(f"removed {trt_backend.clear()} file(s) from {trt_backend.cache_dir()}")


@app.command("export")
def export(
    output: Annotated[Path, typer.Argument(help="Where to write the .onnx file.")],
    model: ModelOption = DEFAULT_MODEL,
    weights: Annotated[Path | None, typer.Option(help="Export this checkpoint instead of the shipped weights.")] = None,
) -> None:
    """Export an engine's network to ONNX (dynamic batch and size): `colorize export gan.onnx -m gan`."""
    _check_model(model)
    from engines.models.checkpoint import CheckpointError
    from engines.pipeline import load_colorizer
    from engines.runtime.backends import select_backend
    from engines.runtime.export import export_onnx

    try:
        colorizer = load_colorizer(model, select_backend("cpu"), weights=weights)
        export_onnx(colorizer.model, output)
    except (CheckpointError, OSError) as e:
        _err(f"cannot export: {e}")
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(f"wrote {output}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(EXIT_INTERRUPTED)
