"""Verdicts that claim no more than was checked (issue 17, item 5): a verify holds its release against `rm`, a
converted folder is vouched for only by the store's own record, and a fetch by manifest checks the digests the
publisher published."""

from __future__ import annotations

import collections
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from verify_helpers import install_release

from m7b.errors import InvalidInputError, StorageError, UnvouchedError
from m7b.locks import LockHeldError
from m7b.progress import ProgressEvent
from m7b.remove import remove_release
from m7b.store import Store
from m7b.verify.convert import convert, file_sha256
from m7b.verify.converted import check_layout, read_safetensors_header
from m7b.verify.findings import Status, error_for
from m7b.verify.release import verify
from m7b.verify.sums import format_sums, parse_sums, verify_converted


class _Paused:
    """A verify run in a thread, stopped at its first progress event (mid-read) until `go` is set."""

    def __init__(self, target: str, store: Store) -> None:
        self.reading, self.go = threading.Event(), threading.Event()
        self.result: object = None

        def progress(event: ProgressEvent) -> None:
            self.reading.set()
            self.go.wait(60)

        def run() -> None:
            try:
                self.result = verify(target, store, progress=progress)
            except BaseException as exc:  # handed to the test
                self.result = exc

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> _Paused:
        self.thread.start()
        assert self.reading.wait(60), "verify never started reading"
        return self

    def __exit__(self, *exc: object) -> None:
        self.go.set()
        self.thread.join(60)


@pytest.mark.slow
def test_rm_while_a_verify_reads_the_release_fails_at_once_naming_the_verify(
    cli, m7b_home: Path, tiny_release_src: Path
) -> None:
    install_release(m7b_home, tiny_release_src, "tiny-test")
    store = Store(m7b_home)
    with _Paused("tiny-test", store) as paused:
        refused = cli("rm", "tiny-test", "--yes", "--json")
        assert refused.code == 8, refused.stderr
        assert f"release tiny-test is being verified by pid {os.getpid()}" in refused.stderr
        assert "wait for that verify to finish and rerun" in refused.stderr
        assert json.loads(refused.stdout.splitlines()[-1])["pid"] == os.getpid()
    # the verify went on reading a release that is still there, and its report is the store's
    assert not isinstance(paused.result, BaseException), paused.result
    assert paused.result.report.verdict == "ok" and store.release_dir("tiny-test").is_dir()
    assert store.is_verified("tiny-test")


@pytest.mark.slow
def test_a_verify_started_while_rm_removes_the_release_fails_at_once_and_writes_no_report(
    cli, m7b_home: Path, tiny_release_src: Path
) -> None:
    install_release(m7b_home, tiny_release_src, "tiny-test")
    store = Store(m7b_home)
    asked, go = threading.Event(), threading.Event()
    outcome: list[object] = []

    def confirm(removal: object) -> bool:  # rm holds the release's lock while it asks
        asked.set()
        return go.wait(60)

    rm = threading.Thread(target=lambda: outcome.append(remove_release(store, "tiny-test", confirm=confirm)))
    rm.start()
    try:
        assert asked.wait(60)
        started = cli("verify", "tiny-test")
        assert started.code == 8, started.stderr
        assert f"release tiny-test is being written by pid {os.getpid()}" in started.stderr
        assert "nothing was verified" in started.stderr
        with pytest.raises(LockHeldError) as caught:
            verify("tiny-test", store)
        assert isinstance(caught.value, StorageError) and caught.value.holder.pid == os.getpid()
    finally:
        go.set()
        rm.join(60)
    assert outcome and not store.release_dir("tiny-test").exists()
    assert not store.report_path("tiny-test").exists()  # no report for a release that is gone


def _converted(m7b_home: Path, tiny_release_src: Path, layout: str) -> tuple[Store, Path]:
    """The tiny release in the store, verified, converted by m7b (hf in several shards)."""
    install_release(m7b_home, tiny_release_src, "tiny-test")
    store = Store(m7b_home)
    verify("tiny-test", store)
    return store, convert("tiny-test", layout, store, max_shard_size=3_000_000).result.out


def _rewrite_sums(folder: Path) -> None:
    """What a hostile publisher of a folder does: SHA256SUMS rewritten to agree with whatever the folder holds."""
    names = sorted(p.name for p in folder.iterdir() if p.name != "SHA256SUMS")
    (folder / "SHA256SUMS").write_text(format_sums({n: file_sha256(folder / n) for n in names}))


def _findings(doc: dict, check: str) -> list[dict]:
    return [f for f in doc["findings"] if f["check"] == check]


@pytest.mark.slow
def test_a_converted_folder_is_verified_against_the_stores_record_not_its_own_sums(
    cli, m7b_home: Path, tiny_release_src: Path
) -> None:
    store, out = _converted(m7b_home, tiny_release_src, "hf")
    assert store.converted_record(out)["files"] == parse_sums(out / "SHA256SUMS")
    honest = cli("verify", out, "--json")
    assert honest.code == 0, honest.stderr
    doc = json.loads(honest.stdout)
    assert [f["status"] for f in _findings(doc, "record") + _findings(doc, "layout") + _findings(doc, "source")] == [
        "ok",
        "ok",
        "ok",
    ]
    # a hostile index: one tensor said to lie in another shard, SHA256SUMS rewritten to agree
    index = json.loads((out / "model.safetensors.index.json").read_text())
    held = collections.Counter(index["weight_map"].values())
    full = next(shard for shard, count in held.items() if count > 1)  # a shard still named once one tensor moves
    other = next(shard for shard in held if shard != full)
    moved = next(name for name, shard in index["weight_map"].items() if shard == full)
    index["weight_map"][moved] = other
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    _rewrite_sums(out)
    assert verify_converted(out).verdict == "ok"  # the folder agrees with itself: that proves nothing
    hostile = cli("verify", out, "--json")
    assert hostile.code == 5, hostile.stderr
    doc = json.loads(hostile.stdout)
    assert doc["verdict"] == "mismatch"
    assert any("model.safetensors.index.json: sha256" in f["message"] for f in _findings(doc, "record"))
    assert any("SHA256SUMS differs from m7b's record" in f["message"] for f in _findings(doc, "record"))
    assert any(
        f"tensor {moved}: in {full}, model.safetensors.index.json says {other}" in f["message"]
        for f in _findings(doc, "layout")
    )


@pytest.mark.slow
def test_a_tensor_changed_with_its_sums_rewritten_differs_from_the_source(
    cli, m7b_home: Path, tiny_release_src: Path
) -> None:
    store, out = _converted(m7b_home, tiny_release_src, "hf")
    placed, _ = check_layout(out, "hf")
    # a wq (permuted on conversion): compared with the source after the same permutation
    key = next(k for k in placed if k.endswith("attention.wq.weight"))
    where = placed[key]
    with open(out / where.file, "r+b") as fh:
        fh.seek(where.offset + 10)
        byte = fh.read(1)
        fh.seek(where.offset + 10)
        fh.write(bytes([byte[0] ^ 0x40]))
    _rewrite_sums(out)
    result = cli("verify", out, "--json")
    assert result.code == 5, result.stderr
    doc = json.loads(result.stdout)
    wrong = [f["message"] for f in _findings(doc, "source") if f["status"] == "mismatch"]
    assert wrong == [
        f"{where.file}: tensor {where.name} differs from {key} in tiny-test's verified consolidated.00.pth "
        "— convert again"
    ]
    assert any(f["path"] == where.file and f["status"] == "mismatch" for f in _findings(doc, "record"))


@pytest.mark.slow
def test_a_converted_folder_copied_from_elsewhere_is_unvouched(
    cli, m7b_home: Path, tiny_release_src: Path, tmp_path: Path
) -> None:
    store, out = _converted(m7b_home, tiny_release_src, "native")
    copy = Path(shutil.copytree(out, tmp_path / "downloaded-native"))
    result = cli("verify", copy, "--json")
    assert result.code == 5, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "unvouched" and doc["exit_code"] == 5
    assert all(f["status"] == "ok" for f in _findings(doc, "sums"))  # self-consistency shown
    assert [f["status"] for f in _findings(doc, "layout")] == ["ok"]
    [unvouched] = _findings(doc, "record")
    assert unvouched["status"] == "unvouched" and "nothing vouches for" in unvouched["message"]
    assert "m7b convert NAME --to LAYOUT" in unvouched["message"]
    human = cli("verify", copy)
    assert human.code == 5
    assert "verification failed (unvouched): nothing vouches for" in " ".join(human.stderr.split())
    with pytest.raises(UnvouchedError):  # the verdict's error, exit 5
        raise error_for(Status(doc["verdict"]))("x")
    # the store's own output is still vouched for; rm takes the store's record of it with it
    assert cli("verify", out).code == 0
    record = store.converted_record_path(out)
    assert record.is_file()
    assert cli("rm", "tiny-test", "--yes").code == 0
    assert not record.exists()


@pytest.mark.slow
def test_an_unvouched_copy_with_a_hostile_index_is_a_mismatch(cli, m7b_home: Path, converted_tiny, tmp_path) -> None:
    copy = Path(shutil.copytree(converted_tiny["hf"], tmp_path / "hf"))
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    held = collections.Counter(index["weight_map"].values())
    dropped = next(name for name, shard in sorted(index["weight_map"].items()) if held[shard] > 1)
    del index["weight_map"][dropped]
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    _rewrite_sums(copy)
    result = cli("verify", copy, "--json")
    assert result.code == 5, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "mismatch"
    assert any(
        "model.safetensors.index.json does not name it" in f["message"] and dropped in f["message"]
        for f in _findings(doc, "layout")
    )


def _header(doc: object, tail: bytes = b"") -> bytes:
    raw = json.dumps(doc).encode()
    return len(raw).to_bytes(8, "little") + raw + tail


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x02",
        (1 << 40).to_bytes(8, "little") + b"{}",
        (5).to_bytes(8, "little") + b"{not",
        _header([1, 2]),
        _header({"t": [1]}),
        _header({"t": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}),  # past the end of the file
        _header({"t": {"dtype": "BF16", "shape": ["2"], "data_offsets": [0, 4]}}, b"\0" * 4),
        _header({"t": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 0]}}, b"\0" * 4),
        _header({"t": {"dtype": "BF16", "shape": [2], "data_offsets": [0]}}, b"\0" * 4),
    ],
)
def test_a_hostile_safetensors_header_is_invalid_input(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with pytest.raises(InvalidInputError):
        read_safetensors_header(path)


def test_a_hostile_layout_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": "x"}))
    placed, findings = check_layout(tmp_path, "hf")
    assert placed is None and [f.status for f in findings] == [Status.INVALID]
    (tmp_path / "params.json").write_text("{}")
    placed, findings = check_layout(tmp_path, None)
    assert placed is None and "neither consolidated.safetensors nor config.json" in findings[0].message
