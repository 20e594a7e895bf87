"""Turning command-line arguments into (input, output) jobs. No heavy imports: pure path logic."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from engines.media.formats import IMAGE_SUFFIXES, VIDEO_OUTPUT_FORMATS, VIDEO_SUFFIXES

# Folders yield these; an explicitly named file is always attempted. Outputs keep the input's
# suffix where it can be written; any other photo is written as PNG, any other film as MP4.
OUTPUT_TAG = "_color"


@dataclass
class Job:
    input: str  # as the user named it (or as found in a folder)
    output: str | None
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # things worth saying that are not errors


def _is_glob(arg: str) -> bool:
    return any(c in arg for c in "*?[")


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    images = sorted(
        p for p in found if (p.suffix.lower() in IMAGE_SUFFIXES or p.suffix.lower() in VIDEO_SUFFIXES) and p.is_file()
    )
    # A second run over the same folder must not colour the first run's outputs.
    present = set(images)
    return [p for p in images if not (p.stem.endswith(OUTPUT_TAG) and _source_of(p) in present)]


def _source_of(p: Path) -> Path:
    return p.with_name(p.stem[: -len(OUTPUT_TAG)] + p.suffix)


def _output_name(name: str) -> str:
    p = Path(name)
    if p.suffix.lower() in VIDEO_SUFFIXES:
        return str(p if p.suffix.lower() in VIDEO_OUTPUT_FORMATS else p.with_suffix(".mp4"))
    return str(p if p.suffix.lower() in IMAGE_SUFFIXES else p.with_suffix(".png"))


def expand(args: list[str], output: str | None, recursive: bool) -> list[Job]:
    """Expand files, folders and globs into jobs with their output paths.

    - ``output`` None: each output lands beside its input as ``<stem>_color<ext>``.
    - One plain file and ``output`` not an existing folder (and not ending in a separator or
      lacking a suffix): ``output`` is the output file.
    - Otherwise ``output`` is a folder; files keep their names, files found in a folder keep
      their path relative to it.
    """
    # (path, name relative to the output folder) or an error job
    found: list[tuple[Path, str] | Job] = []
    single_file = len(args) == 1
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            single_file = False
            images = _folder_images(p, recursive)
            if not images:
                found.append(
                    Job(
                        arg,
                        None,
                        "no images found in this folder" + ("" if recursive else " (use --recursive for subfolders)"),
                    )
                )
            found.extend((f, str(f.relative_to(p))) for f in images)
        elif os.path.lexists(p):
            found.append((p, p.name))
        elif _is_glob(arg):
            single_file = False
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=recursive) if Path(m).is_file())
            if not matches:
                found.append(Job(arg, None, "no files match this pattern"))
            found.extend((m, m.name) for m in matches)
        else:
            found.append(Job(arg, None, "no such file or folder"))

    to_file = (
        output is not None
        and single_file
        and not Path(output).is_dir()
        and not output.endswith(("/", os.sep))
        and Path(output).suffix != ""
    )
    jobs: list[Job] = []
    claimed: dict[str, str] = {}
    for item in found:
        if isinstance(item, Job):
            jobs.append(item)
            continue
        src, rel = item
        if output is None:
            out = src.with_name(src.stem + OUTPUT_TAG + src.suffix)
            out = Path(_output_name(str(out)))
        elif to_file:
            out = Path(output)
        else:
            out = Path(output) / _output_name(rel)
        job = Job(str(src), str(out))
        key = os.path.normcase(os.path.abspath(out))
        if key == os.path.normcase(os.path.abspath(src)):
            job.error = "output would replace the input; choose another output path"
        elif key in claimed:
            job.error = f"output {out} is also the output of {claimed[key]}"
        else:
            claimed[key] = str(src)
        jobs.append(job)
    return jobs
