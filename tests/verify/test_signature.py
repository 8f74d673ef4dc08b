"""Signed releases (issue 20): OMS signatures written by `release create --sign-key` / `release sign`, and every
verdict `verify` gives of them — signed, mismatch (exit 5), an unknown key (exit 6), unsigned (a note, or exit 3
with --require-signature) — with the model_signing CLI's signatures accepted and m7b's accepted by it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from signing_helpers import make_key, publish

from m7b.errors import InvalidInputError, MismatchError
from m7b.manifests.loader import load_manifest
from m7b.manifests.writer import manifest_to_toml
from m7b.mirror.create import create_release
from m7b.store import Store
from m7b.verify.findings import Status
from m7b.verify.release import sign_release, verify
from m7b.verify.signature import fingerprint, load_signing_key, read_signature, sign_files


def signature_finding(report):  # type: ignore[no-untyped-def]
    return next(f for f in report.findings if f.check == "signature")


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return make_key(tmp_path / "publisher.pem")


@pytest.fixture
def signed(tiny_release: Path, key: Path) -> Path:
    publish(tiny_release, key)
    return tiny_release


@pytest.mark.slow
def test_a_release_signed_on_create_verifies_as_signed_by_the_manifests_key(
    signed: Path, key: Path, m7b_home: Path
) -> None:
    manifest = load_manifest(signed.parent / f"{signed.name}.toml")
    assert manifest.signing_keys and manifest.signing_keys[0].startswith("-----BEGIN PUBLIC KEY-----")
    assert "signing" in manifest.sources
    report = verify(str(signed), Store(m7b_home)).report
    who = fingerprint(load_signing_key(key).public_key())
    assert report.verdict == Status.OK
    assert signature_finding(report).message.startswith(f"signed by sha256:{who}")
    doc = report.to_json()["signature"]
    assert doc["verdict"] == "signed" and doc["signer"] == who
    assert doc["covered"] == sorted(p.name for p in signed.iterdir())


@pytest.mark.slow
def test_a_changed_file_is_a_signature_mismatch_naming_it(signed: Path, m7b_home: Path) -> None:
    with open(signed / "params.json", "r+b") as fh:  # same size, other bytes
        first = fh.read(1)
        fh.seek(0)
        fh.write(b" " if first != b" " else b"\t")
    report = verify(str(signed), Store(m7b_home)).report
    finding = signature_finding(report)
    assert finding.status == Status.MISMATCH and report.exit_code == 5
    assert finding.message.startswith("signature does not match params.json")


@pytest.mark.slow
@pytest.mark.parametrize("change", ["added", "removed", "renamed"])
def test_a_signature_over_another_file_set_is_a_mismatch(signed: Path, key: Path, m7b_home: Path, change: str) -> None:
    digests = dict(read_signature(signed.parent / f"{signed.name}.sig").resources)
    if change == "added":
        digests["extra.bin"] = "0" * 64
    elif change == "removed":
        del digests["params.json"]
    else:
        digests["PARAMS.json"] = digests.pop("params.json")
    (signed.parent / f"{signed.name}.sig").write_bytes(sign_files(signed.name, digests, load_signing_key(key)))
    report = verify(str(signed), Store(m7b_home)).report
    finding = signature_finding(report)
    assert finding.status == Status.MISMATCH and report.exit_code == 5, finding.message
    assert finding.message.startswith("signature does not match")


@pytest.mark.slow
def test_a_valid_signature_by_a_key_the_release_does_not_name_is_unsafe_unless_given(
    signed: Path, tmp_path: Path, m7b_home: Path
) -> None:
    other = make_key(tmp_path / "other.pem")
    sig = signed.parent / f"{signed.name}.sig"
    sig.write_bytes(sign_files(signed.name, read_signature(sig).resources, load_signing_key(other)))
    report = verify(str(signed), Store(m7b_home)).report
    finding = signature_finding(report)
    assert finding.status == Status.UNSAFE and report.exit_code == 6
    assert "a key this release does not name" in finding.message
    trusted = verify(str(signed), Store(m7b_home), public_keys=[other.with_suffix(".pub")]).report
    assert trusted.verdict == Status.OK
    assert signature_finding(trusted).message.startswith(
        f"signed by sha256:{fingerprint(load_signing_key(other).public_key())}"
    )


@pytest.mark.slow
def test_an_unsigned_release_is_reported_and_fails_only_when_a_signature_is_required(
    tiny_release: Path, m7b_home: Path
) -> None:
    publish(tiny_release, None)
    report = verify(str(tiny_release), Store(m7b_home)).report
    assert report.verdict == Status.OK
    assert signature_finding(report).message.startswith("unsigned")
    assert report.to_json()["signature"]["verdict"] == "unsigned"
    required = verify(str(tiny_release), Store(m7b_home), require_signature=True).report
    assert required.verdict == Status.MISSING and required.exit_code == 3


@pytest.mark.slow
def test_cli_verify_words_each_verdict_with_its_exit_code(cli, signed: Path, tmp_path: Path, m7b_home: Path) -> None:
    ok = cli("verify", signed, "--json")
    assert ok.code == 0, ok.stderr
    assert json.loads(ok.stdout)["signature"]["verdict"] == "signed"
    table = cli("verify", signed, env={"COLUMNS": "400"})
    assert table.code == 0 and "the manifest's [signing] key" in table.stdout  # outside text is not rich markup
    other = make_key(tmp_path / "other.pem")
    sig = tmp_path / "elsewhere.sig"
    sig.write_bytes(
        sign_files(signed.name, read_signature(signed.parent / f"{signed.name}.sig").resources, load_signing_key(other))
    )
    unknown = cli("verify", signed, "--signature", sig)
    assert unknown.code == 6
    assert "a key this release does not name" in unknown.stderr and "(--public-key)" in unknown.stderr
    assert cli("verify", signed, "--signature", sig, "--public-key", other.with_suffix(".pub")).code == 0
    truncated = tmp_path / "truncated.sig"
    truncated.write_bytes(sig.read_bytes()[:100])
    broken = cli("verify", signed, "--signature", truncated)
    assert broken.code == 4 and "not an OMS signature" in broken.stderr and "Traceback" not in broken.stderr
    (signed.parent / f"{signed.name}.sig").unlink()
    required = cli("verify", signed, "--require-signature")
    assert required.code == 3 and "unsigned" in required.stderr


@pytest.mark.slow
def test_release_sign_signs_what_verified_and_refuses_what_did_not(
    cli, tiny_release: Path, key: Path, m7b_home: Path
) -> None:
    publish(tiny_release, None)
    made = cli("release", "sign", tiny_release, "--key", key, "--json")
    assert made.code == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["signature"] == str(tiny_release.parent / f"{tiny_release.name}.sig")
    assert doc["covered"] == sorted(p.name for p in tiny_release.iterdir())
    # the manifest names no key: a mirror's signature is checked against the key the user gives
    assert cli("verify", tiny_release).code == 6
    assert cli("verify", tiny_release, "--public-key", key.with_suffix(".pub")).code == 0
    again = cli("release", "sign", tiny_release, "--key", key)
    assert again.code == 8 and "--force" in again.stderr
    (tiny_release / "params.json").write_text("{}")
    with pytest.raises(MismatchError, match="nothing was signed"):
        sign_release(str(tiny_release), load_signing_key(key), Store(m7b_home), replace_existing=True)


@pytest.mark.slow
def test_an_encrypted_key_takes_its_passphrase_from_the_environment_never_argv(
    cli, tiny_release: Path, tmp_path: Path
) -> None:
    key = make_key(tmp_path / "locked.pem", passphrase=b"s3cret")
    with pytest.raises(InvalidInputError) as asked:
        load_signing_key(key)
    assert asked.value.data["needs_passphrase"] is True
    refused = cli("release", "create", tiny_release, "--sign-key", key)
    assert refused.code == 4 and "M7B_SIGN_PASSPHRASE" in refused.stderr
    wrong = cli("release", "create", tiny_release, "--sign-key", key, env={"M7B_SIGN_PASSPHRASE": "nope"})
    assert wrong.code == 4 and "passphrase does not open" in wrong.stderr
    made = cli("release", "create", tiny_release, "--sign-key", key, env={"M7B_SIGN_PASSPHRASE": "s3cret"})
    assert made.code == 0, made.stderr
    assert (tiny_release.parent / f"{tiny_release.name}.sig").is_file()


@pytest.mark.slow
def test_a_p384_key_signs_too(tiny_release: Path, tmp_path: Path, m7b_home: Path) -> None:
    key = make_key(tmp_path / "p384.pem", ec.SECP384R1())
    publish(tiny_release, key)
    assert verify(str(tiny_release), Store(m7b_home)).report.verdict == Status.OK


# ---- interop with the reference implementation (the model_signing CLI)


def _model_signing(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("model_signing") or sys.executable
    prefix = [] if exe.endswith("model_signing") else ["-m", "model_signing"]
    return subprocess.run([exe, *prefix, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_signature_m7b_writes_verifies_with_the_model_signing_cli(signed: Path, key: Path) -> None:
    sig = signed.parent / f"{signed.name}.sig"
    ok = _model_signing("verify", "key", signed, "--public_key", key.with_suffix(".pub"), "--signature", sig)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (signed / "params.json").write_text("{}")
    changed = _model_signing("verify", "key", signed, "--public_key", key.with_suffix(".pub"), "--signature", sig)
    assert changed.returncode != 0


@pytest.mark.slow
def test_a_signature_the_model_signing_cli_writes_verifies_in_m7b(
    tiny_release: Path, key: Path, m7b_home: Path
) -> None:
    publish(tiny_release, None)
    sig = tiny_release.parent / f"{tiny_release.name}.sig"
    made = _model_signing("sign", "key", tiny_release, "--private_key", key, "--signature", sig)
    assert made.returncode == 0, made.stdout + made.stderr
    payload = json.loads(base64.b64decode(json.loads(sig.read_text())["dsseEnvelope"]["payload"]))
    assert payload["predicate"]["serialization"]["method"] == "files"  # the CLI's default: per-file sha256
    report = verify(str(tiny_release), Store(m7b_home), public_keys=[key.with_suffix(".pub")]).report
    assert report.verdict == Status.OK
    assert report.to_json()["signature"]["signer"] == fingerprint(load_signing_key(key).public_key())
    (tiny_release / "params.json").write_text("{}")
    changed = verify(str(tiny_release), Store(m7b_home), public_keys=[key.with_suffix(".pub")]).report
    assert signature_finding(changed).status == Status.MISMATCH


@pytest.mark.slow
def test_a_key_the_manifest_names_by_fingerprint_needs_its_public_key(
    tiny_release: Path, key: Path, m7b_home: Path
) -> None:
    private = load_signing_key(key)
    made = create_release(tiny_release, signing_keys=[f"sha256:{fingerprint(private.public_key())}"])
    (tiny_release.parent / f"{tiny_release.name}.torrent").write_bytes(made.torrent)
    (tiny_release.parent / f"{tiny_release.name}.toml").write_text(manifest_to_toml(made.manifest))
    digests = {f.path: f.sha256 for f in made.manifest.files if f.sha256}
    (tiny_release.parent / f"{tiny_release.name}.sig").write_bytes(sign_files(tiny_release.name, digests, private))
    without = verify(str(tiny_release), Store(m7b_home)).report
    finding = signature_finding(without)
    assert finding.status == Status.MISSING and "by fingerprint only: give its public key" in finding.message
    given = verify(str(tiny_release), Store(m7b_home), public_keys=[key.with_suffix(".pub")]).report
    assert given.verdict == Status.OK and signature_finding(given).status == Status.OK


def test_release_sign_never_signs_a_file_the_release_does_not_name(tiny_release: Path, key: Path, m7b_home: Path):
    """A file dropped beside the release's files is only a note to verify; a mirror's signature must not cover it."""
    publish(tiny_release, None)
    (tiny_release / "dropped.py").write_text("print('hi')\n")
    signing = sign_release(str(tiny_release), load_signing_key(key), Store(m7b_home))
    assert signing.verification.report.verdict == Status.OK
    assert "dropped.py" not in signing.covered and set(signing.covered) == {
        p.name for p in tiny_release.iterdir() if p.name != "dropped.py"
    }
    assert "dropped.py" not in read_signature(signing.path).resources
