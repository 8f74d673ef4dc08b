"""Files that are not what they seem: a FIFO or a link to /dev/zero is never read (verify would hang or read
forever); a symlink is verified through, and named, with where it leads."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from verify_helpers import install_release

from m7b.store import Store
from m7b.verify.check import verify_release


def _verify_within(root: Path, seconds: float = 60.0):
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(report=verify_release(root)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"verify of {root} did not finish in {seconds} s"
    return box["report"]


@pytest.mark.slow
def test_a_fifo_in_place_of_a_file_is_reported_not_opened(cli, m7b_home: Path, tiny_release_src: Path) -> None:
    root = install_release(m7b_home, tiny_release_src, "tiny-test")
    (root / "tokenizer.model").unlink()
    os.mkfifo(root / "tokenizer.model")
    report = _verify_within(root)  # opening a FIFO for reading blocks until a writer comes: it must not be opened
    assert report.verdict.value != "ok"
    result = cli("verify", "tiny-test", "--json")
    assert result.code == 3, result.stderr
    doc = json.loads(result.stdout)
    missing = [f for f in doc["findings"] if f.get("path") == "tokenizer.model" and f["status"] == "missing"]
    assert missing and "not a regular file (a FIFO)" in missing[0]["message"]
    assert not Store(m7b_home).is_verified("tiny-test")


@pytest.mark.slow
def test_a_link_to_dev_zero_is_not_read_forever(cli, m7b_home: Path, tiny_release_src: Path) -> None:
    root = install_release(m7b_home, tiny_release_src, "tiny-test")
    (root / "consolidated.00.pth").unlink()
    (root / "consolidated.00.pth").symlink_to("/dev/zero")
    _verify_within(root)
    result = cli("verify", "tiny-test")
    assert result.code == 3
    assert "consolidated.00.pth" in result.stderr and "a character device" in result.stderr


@pytest.mark.slow
def test_a_symlink_to_the_right_bytes_verifies_and_is_named(
    cli, m7b_home: Path, tiny_release_src: Path, tmp_path: Path
) -> None:
    root = install_release(m7b_home, tiny_release_src, "tiny-test")
    elsewhere = tmp_path / "elsewhere" / "consolidated.00.pth"
    elsewhere.parent.mkdir()
    shutil.move(root / "consolidated.00.pth", elsewhere)
    (root / "consolidated.00.pth").symlink_to(elsewhere)
    result = cli("verify", "tiny-test", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "ok" and doc["bound_to_magnet"]
    notes = [f for f in doc["findings"] if f.get("path") == "consolidated.00.pth" and f["check"] == "files"]
    assert notes and notes[0]["status"] == "note" and "outside the release folder" in notes[0]["message"]
    assert notes[0]["detail"]["symlink"] == str(elsewhere.resolve())
    human = cli("verify", "tiny-test")
    assert "symlink" in human.stdout + human.stderr
