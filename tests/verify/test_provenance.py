"""Converted folders keep the chain (issue 20, item 3): `convert` writes provenance.json (what it came from, every
output's sha256) and, with a key, provenance.sig (OMS); `verify` of a copy made elsewhere proves it unchanged and
names the torrent release it came from — and catches a changed output and a swapped source."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from test_signature import make_key
from verify_helpers import install_release

from m7b.store import Store
from m7b.synth import synthesize
from m7b.verify.convert import convert
from m7b.verify.findings import Status
from m7b.verify.provenance import CONVERTED_SIGNATURE, PROVENANCE_FILE, PROVENANCE_TYPE, provenance_line
from m7b.verify.release import verify
from m7b.verify.signature import fingerprint, load_signing_key, read_signature


def _finding(report, check: str):  # type: ignore[no-untyped-def]
    return next(f for f in report.findings if f.check == check)


@pytest.fixture
def signed_output(m7b_home: Path, tiny_release_src: Path, tmp_path: Path) -> tuple[Store, Path, Path]:
    """tiny-test in the store, verified, converted to native with --sign-key; the key."""
    install_release(m7b_home, tiny_release_src, "tiny-test")
    store = Store(m7b_home)
    assert verify("tiny-test", store).report.verdict == Status.OK
    key = make_key(tmp_path / "converter.pem")
    out = convert("tiny-test", "native", store, sign_key=load_signing_key(key)).result.out
    return store, out, key


@pytest.mark.slow
def test_convert_writes_an_in_toto_provenance_of_its_source_and_outputs(signed_output) -> None:  # type: ignore[no-untyped-def]
    store, out, key = signed_output
    doc = json.loads((out / PROVENANCE_FILE).read_text())
    assert doc["_type"] == "https://in-toto.io/Statement/v1" and doc["predicateType"] == PROVENANCE_TYPE
    sums = dict(line.split("  ")[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    assert {s["name"]: s["digest"]["sha256"] for s in doc["subject"]} == sums
    source = doc["predicate"]["source"]
    assert source["release"] == "tiny-test" and source["info_hash"] == store.recorded_releases().get(
        "tiny-test", source["info_hash"]
    )
    report = json.loads(store.report_path("tiny-test").read_text())
    checkpoint = next(f["sha256"] for f in report["files"] if f["path"] == "consolidated.00.pth")
    assert source["checkpoint_sha256"] == checkpoint and source["verify_verdict"] == "ok"
    assert doc["predicate"]["layout"] == "native" and doc["predicate"]["converter"]["name"] == "m7b"
    covered = read_signature(out / CONVERTED_SIGNATURE).resources
    assert set(covered) == set(sums) | {"SHA256SUMS", PROVENANCE_FILE}
    # in the store, the record vouches; the signature by a key nobody named is only noted
    local = verify(str(out), store).report
    assert local.verdict == Status.OK, [f.message for f in local.failures()]
    assert _finding(local, "signature").status == Status.NOTE


@pytest.mark.slow
def test_a_copy_made_elsewhere_is_vouched_for_by_a_trusted_signature(signed_output, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, out, key = signed_output
    copy = Path(shutil.copytree(out, tmp_path / "copied" / "native"))
    unvouched = verify(str(copy), store).report
    assert unvouched.verdict == Status.UNVOUCHED and unvouched.exit_code == 5
    trusted = verify(str(copy), store, public_keys=[key.with_suffix(".pub")]).report
    assert trusted.verdict == Status.OK, [f.message for f in trusted.failures()]
    who = fingerprint(load_signing_key(key).public_key())
    assert _finding(trusted, "signature").message.startswith(f"signed by sha256:{who}")
    provenance = _finding(trusted, "provenance")
    assert provenance.status == Status.OK and "converted from release tiny-test (info-hash" in provenance.message
    assert trusted.to_json()["signature"]["provenance"]["release"] == "tiny-test"


@pytest.mark.slow
def test_a_changed_output_in_a_signed_copy_is_a_mismatch(signed_output, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, out, key = signed_output
    copy = Path(shutil.copytree(out, tmp_path / "copied" / "native"))
    with open(copy / "consolidated.safetensors", "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    report = verify(str(copy), store, public_keys=[key.with_suffix(".pub")]).report
    assert report.exit_code == 5
    finding = _finding(report, "signature")
    assert finding.status == Status.MISMATCH
    assert finding.message.startswith("signature does not match consolidated.safetensors")


@pytest.mark.slow
def test_a_signed_copy_of_another_source_than_the_stores_release_is_a_mismatch(
    signed_output,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    _, out, key = signed_output
    copy = Path(shutil.copytree(out, tmp_path / "copied" / "native"))
    # another store whose tiny-test is other weights (seed 1): the folder was not converted from its release
    other_home = tmp_path / "other-home"
    monkeypatch.setenv("M7B_HOME", str(other_home))
    other = synthesize(tmp_path / "other-src" / "mistral-tiny", "tiny", seed=1).path
    install_release(other_home, other, "tiny-test")
    store = Store(other_home)
    assert verify("tiny-test", store).report.verdict == Status.OK
    report = verify(str(copy), store, public_keys=[key.with_suffix(".pub")]).report
    assert report.exit_code == 5
    swapped = _finding(report, "provenance")
    assert swapped.status == Status.MISMATCH and "converted from other weights" in swapped.message


@pytest.mark.slow
def test_run_says_in_one_line_what_a_converted_folder_came_from_and_who_signed(signed_output, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, out, key = signed_output
    line = provenance_line(out)
    assert line is not None and "\n" not in line
    assert line.startswith("converted from release tiny-test (info-hash ")
    assert f"signed by sha256:{fingerprint(load_signing_key(key).public_key())}" in line
    (out / PROVENANCE_FILE).write_text("[1, 2]")
    assert "is not a provenance statement m7b wrote" in str(provenance_line(out))
    assert provenance_line(tmp_path) is None


@pytest.mark.slow
def test_cli_run_of_a_signed_converted_folder_names_its_provenance(cli, signed_output) -> None:  # type: ignore[no-untyped-def]
    _, out, _ = signed_output
    ran = cli("run", str(out), "-p", "hi", "--max-tokens", "1", "--device", "cpu")
    assert ran.code == 0, ran.stderr
    assert "provenance: converted from release tiny-test" in ran.stderr


@pytest.mark.slow
def test_a_signed_converted_folder_verifies_with_the_model_signing_cli(signed_output) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    _, out, key = signed_output
    args = ["model_signing", "verify", "key", str(out), "--public_key", str(key.with_suffix(".pub"))]
    ok = subprocess.run([*args, "--signature", str(out / CONVERTED_SIGNATURE)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.slow
def test_cli_convert_signs_and_verify_of_a_copy_vouches_only_with_the_key(
    cli, m7b_home: Path, tiny_release_src: Path, tmp_path: Path
) -> None:
    install_release(m7b_home, tiny_release_src, "tiny-test")
    key = make_key(tmp_path / "k.pem")
    assert cli("verify", "tiny-test").code == 0
    made = cli("convert", "tiny-test", "--sign-key", key)
    assert made.code == 0, made.stderr
    out = Store(m7b_home).converted_dir("tiny-test", "native")
    assert f"signed: {out / CONVERTED_SIGNATURE}" in made.stdout.replace("\n", "")
    copy = shutil.copytree(out, tmp_path / "elsewhere" / "native")
    assert cli("verify", copy).code == 5  # unvouched: the key is nobody's the user named
    trusted = cli("verify", copy, "--public-key", key.with_suffix(".pub"), "--json")
    assert trusted.code == 0, trusted.stderr
    assert json.loads(trusted.stdout)["signature"]["provenance"]["release"] == "tiny-test"


@pytest.mark.slow
def test_a_conversion_signed_with_the_releases_own_key_needs_no_public_key(
    m7b_home: Path, tiny_release_src: Path, tmp_path: Path
) -> None:
    import dataclasses

    from m7b.manifests.loader import load_manifest
    from m7b.manifests.writer import manifest_to_toml
    from m7b.verify.signature import public_pem

    install_release(m7b_home, tiny_release_src, "tiny-test")
    key = load_signing_key(make_key(tmp_path / "publisher.pem"))
    path = m7b_home / "manifests" / "tiny-test.toml"
    manifest = load_manifest(path)
    manifest = dataclasses.replace(
        manifest,
        signing_keys=(public_pem(key.public_key()),),
        sources=manifest.sources | {"signing": "the test publisher"},
    )
    path.write_text(manifest_to_toml(manifest))
    store = Store(m7b_home)
    verify("tiny-test", store)
    out = convert("tiny-test", "native", store, sign_key=key).result.out
    copy = Path(shutil.copytree(out, tmp_path / "copied" / "native"))
    report = verify(str(copy), store).report
    assert report.verdict == Status.OK, [f.message for f in report.failures()]
    assert "the manifest's [signing] key" in _finding(report, "signature").message


@pytest.mark.slow
def test_a_manifest_beside_the_current_directory_never_vouches_for_a_copy(  # type: ignore[no-untyped-def]
    signed_output, tiny_release_src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile copy names a release its maker published next to it (`./tiny-test` and `tiny-test.toml` whose
    [signing] key is the maker's): only a verified store release's manifest may lend its keys, so it stays
    unvouched in a store that does not hold that release."""
    from m7b.manifests.writer import manifest_to_toml
    from m7b.mirror.create import create_release

    _, out, _ = signed_output
    attacker = make_key(tmp_path / "attacker.pem")
    here = tmp_path / "cwd"
    shutil.copytree(tiny_release_src, here / "tiny-test")
    made = create_release(here / "tiny-test", inspect=False, sign_key=load_signing_key(attacker))
    (here / "tiny-test.toml").write_text(manifest_to_toml(made.manifest))  # as `m7b release create` leaves them
    (here / "tiny-test.torrent").write_bytes(made.torrent)
    copy = Path(shutil.copytree(out, tmp_path / "copied" / "native"))
    from m7b.verify.signature import sign_files

    digests = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in copy.iterdir() if p.name != CONVERTED_SIGNATURE
    }
    (copy / CONVERTED_SIGNATURE).write_bytes(sign_files(copy.name, digests, load_signing_key(attacker)))
    monkeypatch.chdir(here)
    report = verify(str(copy), Store(tmp_path / "empty-home")).report
    assert report.verdict == Status.UNVOUCHED and report.exit_code == 5, [f.message for f in report.findings]


@pytest.mark.slow
def test_a_signature_without_m7b_provenance_does_not_vouch_for_a_converted_folder(  # type: ignore[no-untyped-def]
    signed_output, tmp_path: Path
) -> None:
    """A valid OMS signature by a trusted key over exactly the folder's files, but no conversion provenance (a
    release signature, or another tool's): it says nothing of where the weights came from, so the copy stays
    unvouched."""
    from m7b.verify.signature import sign_files

    store, out, _ = signed_output
    copy = Path(shutil.copytree(out, tmp_path / "copied" / "native"))
    other = make_key(tmp_path / "other.pem")
    digests = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in copy.iterdir() if p.name != CONVERTED_SIGNATURE
    }
    (copy / CONVERTED_SIGNATURE).write_bytes(sign_files(copy.name, digests, load_signing_key(other)))
    report = verify(str(copy), store, public_keys=[other.with_suffix(".pub")]).report
    assert _finding(report, "signature").message.startswith("signed by sha256:")
    assert report.verdict == Status.UNVOUCHED and report.exit_code == 5, [f.message for f in report.findings]
