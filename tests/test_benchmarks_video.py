"""benchmarks.video's pause of a background process during the timed runs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from benchmarks.video import paused


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _settled(pids: list[int], stopped: bool) -> bool:
    """Whether every process reaches the stopped state (or leaves it) within a second: signals are
    delivered asynchronously."""
    deadline = time.monotonic() + 1
    while any((_state(p) == "T") != stopped for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_paused_stops_the_process_and_its_children_and_resumes_them():
    """A pid file may name a shell whose child does the work: both are stopped, and both go on after."""
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    kids = ""
    try:
        deadline = time.monotonic() + 5
        while not kids:
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.02)
            kids = subprocess.run(["pgrep", "-P", str(shell.pid)], check=False, capture_output=True, text=True).stdout
        child = int(kids.split()[0])
        with paused(shell.pid):
            assert _settled([shell.pid, child], stopped=True)
        assert _settled([shell.pid, child], stopped=False)
    finally:
        for pid in kids.split():
            subprocess.run(["kill", pid], check=False)
        shell.kill()
        shell.wait()


def test_a_skipped_section_keeps_the_last_measured_one(tmp_path):
    from benchmarks.video import KEPT_NOTE, MEMORY_HEADING, QUALITY_HEADING, kept_section

    out = tmp_path / "video.md"
    assert kept_section(out, MEMORY_HEADING) == []  # no earlier file
    out.write_text(
        "# Video pipeline benchmark\n\n## Speed\n\n| a |\n\n"
        "## Temporal stability and colour accuracy\n\n| q | 2.18 |\n\n"
        "## Memory (peak RSS)\n\n| clip | 600 |\n"
    )
    memory = kept_section(out, MEMORY_HEADING)
    assert memory == ["", "## Memory (peak RSS)", "", KEPT_NOTE, "", "| clip | 600 |"]
    quality = kept_section(out, QUALITY_HEADING)
    assert quality[1].startswith(QUALITY_HEADING) and quality[-1] == "| q | 2.18 |"
    assert not any(line.startswith("## Memory") for line in quality)
    # Kept twice (two runs in a row that skip it): one note, the same figures.
    out.write_text("# V\n" + "\n".join(memory) + "\n")
    assert kept_section(out, MEMORY_HEADING) == memory
    out.write_text("# V\n\n## Speed\n")
    assert kept_section(out, MEMORY_HEADING) == []
