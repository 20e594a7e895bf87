"""engines.files: the one atomic-write helper and the one OS-error wording."""

import errno
import os

import pytest

from engines.files import atomic_path, os_reason, write_bytes, write_text


def test_write_replaces_whole_file_and_leaves_nothing_beside_it(tmp_path):
    out = tmp_path / "sub" / "a.bin"
    write_bytes(out, b"old")
    write_bytes(out, b"new content")
    write_text(tmp_path / "sub" / "b.json", '{"x": 1}')
    assert out.read_bytes() == b"new content"
    assert (tmp_path / "sub" / "b.json").read_text() == '{"x": 1}'
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.bin", "b.json"]


def test_failed_write_keeps_old_content_and_removes_temporary(tmp_path):
    out = tmp_path / "model.pt"
    out.write_bytes(b"good")
    seen = []
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        seen.append(tmp)
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert out.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    # hidden, beside the destination, keeping its suffix (cv2.imwrite and savefig choose the format by it)
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".model.pt.tmp-") and seen[0].suffix == ".pt"


def test_long_name_gets_a_temporary_name_the_filesystem_accepts(tmp_path):
    out = tmp_path / ("x" * 250 + ".png")
    write_bytes(out, b"png")
    assert out.read_bytes() == b"png" and len(os.listdir(tmp_path)) == 1


def test_missing_folder_is_an_error_without_parents(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_bytes(tmp_path / "no" / "such" / "x", b"", parents=False)
    assert list(tmp_path.iterdir()) == []


def test_os_reason_is_lower_case_without_the_path():
    assert os_reason(PermissionError(errno.EACCES, "Permission denied", "/secret/x")) == "permission denied"
    assert os_reason(OSError(errno.ENOSPC, None)) == "no space left on device"
    assert os_reason(OSError("odd")) == "odd"
