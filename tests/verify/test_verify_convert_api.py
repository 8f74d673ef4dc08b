"""`m7b verify` and `m7b convert` from Python: the library's entry points, called as a user would, give what the
commands print with --json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from verify_helpers import install_release, make_manifest, make_torrent

from m7b.errors import NotFoundError
from m7b.manifests.writer import manifest_to_toml
from m7b.store import Store
from m7b.verify.convert import convert, plan_convert
from m7b.verify.release import verify

TIMED = ("seconds", "checked_at")


def untimed(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in TIMED}


@pytest.mark.slow
def test_verify_by_name_is_what_the_command_prints(cli, m7b_home: Path, tiny_release_src: Path) -> None:
    install_release(m7b_home, tiny_release_src, "tiny-test")
    verification = verify("tiny-test", Store(m7b_home))
    printed = cli("verify", "tiny-test", "--json")
    assert printed.code == 0, printed.stderr
    assert untimed(verification.to_json()) == untimed(json.loads(printed.stdout))
    assert verification.report.verdict == "ok" and verification.report_path == Store(m7b_home).report_path("tiny-test")


@pytest.mark.slow
def test_verify_with_manifest_and_torrent_overrides_is_what_the_command_prints(
    cli, m7b_home: Path, tiny_release: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "published"
    elsewhere.mkdir()
    ih = make_torrent(tiny_release, elsewhere / "t.torrent")
    (elsewhere / "m.toml").write_text(manifest_to_toml(make_manifest(tiny_release, "tiny-x", ih)))

    manifest, torrent = elsewhere / "m.toml", elsewhere / "t.torrent"
    verification = verify(str(tiny_release), manifest=manifest, torrent=torrent)
    printed = cli("verify", tiny_release, "--manifest", manifest, "--torrent", torrent, "--json")
    assert printed.code == 0, printed.stderr
    doc = json.loads(printed.stdout)
    assert untimed(verification.to_json()) == untimed(doc)
    assert doc["bound_to_magnet"] and doc["bound_to_publisher"] and doc["report_path"] is None


def test_verify_needs_a_target_or_a_manifest(m7b_home: Path) -> None:
    with pytest.raises(NotFoundError) as caught:
        verify()
    assert caught.value.data["field"] == "manifest"


@pytest.mark.slow
def test_convert_and_verify_the_converted_folder_are_what_the_commands_print(
    cli, m7b_home: Path, tiny_release_src: Path
) -> None:
    install_release(m7b_home, tiny_release_src, "tiny-test")
    store = Store(m7b_home)
    verify("tiny-test", store)
    conversion = convert("tiny-test", "native", store)
    out = store.converted_dir("tiny-test", "native")
    # the default output is the store's converted folder, and the verified report's sha256 is reused
    report = json.loads(store.report_path("tiny-test").read_text())
    ckpt = next(f for f in report["files"] if f["path"] == "consolidated.00.pth")
    assert conversion.result.out == out and conversion.verified_source
    assert conversion.result.source_sha256 == ckpt["sha256"]
    checked = verify(str(out), store)
    assert checked.report.kind == "converted" and checked.report.verdict == "ok" and checked.report_path is None
    printed_check = cli("verify", out, "--json")
    assert printed_check.code == 0, printed_check.stderr
    assert untimed(checked.to_json()) == untimed(json.loads(printed_check.stdout))

    shutil.rmtree(out)  # the command writes the same folder again
    printed = cli("convert", "tiny-test", "--to", "native", "--json")
    assert printed.code == 0, printed.stderr
    assert untimed(conversion.to_json()) == untimed(json.loads(printed.stdout))


def test_a_folder_outside_the_store_converts_beside_it(m7b_home: Path, tiny_release: Path) -> None:
    plan = plan_convert(str(tiny_release), "native")
    assert plan.out == tiny_release.parent / f"{tiny_release.name}-native" and not plan.verified
    conversion = convert(str(tiny_release), "native")
    assert conversion.result.out == plan.out and (plan.out / "SHA256SUMS").is_file()
    assert conversion.name == tiny_release.name and not conversion.verified_source
    assert not Store(m7b_home).converted_dir(tiny_release.name, "native").exists()
