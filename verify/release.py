"""The library's `verify`: what a user typed (or a resolved release) checked as `m7b verify` checks it — a converted
folder against the store's record of it, anything else against its manifest and torrent — and a store release's
report saved where `Store.is_verified` (and so `m7b list`, convert and seed) reads it, whoever calls it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from m7b.atomic import write_bytes
from m7b.errors import M7bError, NotFoundError, StorageError
from m7b.locks import hold
from m7b.manifests.loader import NAME_RE, load_manifest
from m7b.progress import ProgressCallback, ignore_progress
from m7b.release import NoteCallback, Release, ignore_note, release_for, require_present
from m7b.store import Store
from m7b.torrent import load_torrent

from .check import verify_release
from .converted import CONVERTED_SIGNATURE, verify_converted_folder
from .findings import Status, error_for
from .provenance import provenance_release
from .report import VerifyReport
from .signature import (
    MAX_SIGNATURE_BYTES,
    SIGNATURE_SUFFIX,
    PublicKey,
    Trust,
    fingerprint,
    load_public_key,
    parse_fingerprint,
    public_key_from_pem,
    read_signature,
    sign_files,
    signature_beside,
)
from .sums import is_converted_dir


@dataclass(frozen=True)
class Verification:
    report: VerifyReport
    report_path: Path | None  # where the report was saved (store releases only)

    def to_json(self) -> dict[str, object]:
        """The document `m7b verify --json` prints: the report and where it was saved."""
        doc = self.report.to_json()
        doc["report_path"] = str(self.report_path) if self.report_path else None
        return doc


def verify(
    target: str | Release | None = None,
    store: Store | None = None,
    *,
    manifest: Path | None = None,
    torrent: Path | None = None,
    signature: Path | None = None,
    public_keys: Sequence[Path] = (),
    require_signature: bool = False,
    progress: ProgressCallback = ignore_progress,
    on_note: NoteCallback = ignore_note,
) -> Verification:
    """Verify what `target` names: a release name, a folder, a magnet, a .torrent or a manifest .toml (see
    `m7b.release.resolve_release`), or a resolved Release. A converted folder (one holding SHA256SUMS) is checked
    against the record the store kept when m7b converted it (`verify/converted.py`; `unvouched` without one);
    anything else against its manifest and torrent — `manifest` (a .toml) and `torrent` (a .torrent) replace the
    release's own. With no target, `manifest` names the release.

    The release's OMS signature — `signature`, else `DIR.sig` beside the folder, else the one beside its torrent
    (the store's `torrents/IH.sig`) — is checked against the manifest's `[signing]` keys and `public_keys` (files the
    user trusts), using the sha256 of the same read; `require_signature` makes an unsigned release fail.

    A store release's report is saved where `Store.is_verified` (and so `m7b list`, convert and seed) reads it.
    `store` defaults to `Store.from_env()` (M7B_HOME).
    """
    store = store or Store.from_env()
    if isinstance(target, str) and is_converted_dir(folder := Path(target).expanduser()) and folder.is_dir():
        keys = _user_keys(public_keys) + _source_keys(store, folder)
        trust = Trust(signature or _existing(folder / CONVERTED_SIGNATURE), tuple(keys), (), require_signature)
        return Verification(verify_converted_folder(folder, store, trust=trust, progress=progress), None)
    release = _release(store, target, manifest, torrent, on_note)
    trust = release_trust(store, release, signature, public_keys, require_signature)
    return _held(store, release, trust, progress)


def _held(store: Store, release: Release, trust: Trust, progress: ProgressCallback) -> Verification:
    if not release.in_store:
        return _verify_release(store, release, trust, progress)
    # a store release is read holding its lock shared (as a seed does): `rm` or a fetch refuses at once, naming this
    # verify, instead of removing files mid-read; a verify started while one writes or removes it fails at once
    lock = store.release_lock(release.name)
    with hold(store, lock, f"release {release.name}", shared=True, purpose="verified", role="verify"):
        return _verify_release(store, release, trust, progress)


def _is_file(path: Path) -> bool:
    """Whether a candidate signature is there; a name the file system cannot hold (over 255 bytes) is not."""
    try:
        return path.is_file()
    except OSError:
        return False


def _existing(path: Path) -> Path | None:
    return path if _is_file(path) else None


def _user_keys(paths: Sequence[Path]) -> list[PublicKey]:
    return [replace(k, source=f"public key {p}") for p in paths for k in [load_public_key(p)]]


def _source_keys(store: Store, folder: Path) -> list[PublicKey]:
    """The signing keys of the release a converted folder's provenance names, as the store's manifest of it states
    them: a publisher who signs its conversions with its release key is trusted for them too. The folder's claim
    only picks which keys to try, and only a store release that verified counts (never a folder or manifest beside
    the current directory, which whoever made the folder may have put there); the signature must still verify
    with one, and its provenance's checkpoint must be that release's (`verify/converted.py`)."""
    name = provenance_release(folder)
    if name is None or not NAME_RE.match(name):
        return []
    try:
        release = release_for(name, store)
    except M7bError:
        return []
    if not (release.in_store and release.manifest is not None and store.is_verified(release.name)):
        return []
    return list(release_trust(store, release).keys)


def find_signature(store: Store, release: Release) -> Path | None:
    """The release's signature on disk: `DIR.sig` beside its folder, else the one beside its torrent, else the
    store's copy for its info-hash."""
    candidates = [signature_beside(release.folder)]
    if release.torrent is not None:
        candidates.append(release.torrent.with_suffix(".sig"))
    hashes = list(release.manifest.torrent.hashes) if release.manifest else []
    hashes += [release.info_hash] if release.info_hash else []
    candidates += [store.signature_path(h) for h in hashes if h]
    return next((c for c in candidates if _is_file(c)), None)


def release_trust(
    store: Store,
    release: Release,
    signature: Path | None = None,
    public_keys: Sequence[Path] = (),
    require: bool = False,
) -> Trust:
    """The signature to check for `release` and the keys that may have made it: the manifest's `[signing]` keys
    (PEM), the fingerprints it names, and `public_keys`, which the user trusts whatever the manifest says."""
    keys: list[PublicKey] = []
    fingerprints: list[str] = []
    manifest = release.manifest
    for text in manifest.signing_keys if manifest else ():
        named = parse_fingerprint(text)
        if named is not None:
            fingerprints.append(named)
        else:  # where the key came from is the manifest's `sources.signing`, shown by `m7b show`
            keys.append(public_key_from_pem(text.encode(), "the manifest's [signing] key"))
    keys += _user_keys(public_keys)
    found = signature if signature is not None else find_signature(store, release)
    return Trust(found, tuple(keys), tuple(fingerprints), require)


def _verify_release(store: Store, release: Release, trust: Trust, progress: ProgressCallback) -> Verification:
    require_present(release)
    name = release.name if release.in_store else None
    # the hash the user asked for: the magnet's, or the one fetch recorded (never one read from the torrent itself)
    asked = release.magnet.info_hash if release.magnet else None
    if asked is None and release.in_store:
        asked = store.recorded_releases().get(release.name)
    report = verify_release(
        release.folder, release.manifest, release.torrent, name=name, info_hash=asked, trust=trust, progress=progress
    )
    saved = store.save_report(release.name, report.to_json()) if release.in_store else None
    return Verification(report, saved)


def _release(
    store: Store, target: str | Release | None, manifest: Path | None, torrent: Path | None, on_note: NoteCallback
) -> Release:
    """The release to check: resolved from `target` (or the manifest file), with `manifest`/`torrent` overriding."""
    loaded = load_manifest(manifest) if manifest else None
    if target is None:
        if manifest is None:
            raise NotFoundError(
                "nothing to verify: name a release (see `m7b list`), a folder, or a manifest file (manifest)",
                field="manifest",
            )
        target = str(manifest)
    release = release_for(target, store, on_note)
    if loaded is not None:
        release = replace(release, manifest=loaded)
    if torrent is not None:
        release = replace(release, torrent=torrent)
    return release


@dataclass(frozen=True)
class Signing:
    """A release signed by `m7b release sign`: where the signature went, the signer and the files it covers."""

    path: Path
    signer: str
    covered: tuple[str, ...]
    verification: Verification

    def to_json(self) -> dict[str, object]:
        return {
            "signature": str(self.path),
            "signer": self.signer,
            "covered": list(self.covered),
            "verdict": str(self.verification.report.verdict),
        }


def sign_release(
    target: str | Release,
    key: ec.EllipticCurvePrivateKey,
    store: Store | None = None,
    *,
    out: Path | None = None,
    replace_existing: bool = False,
    progress: ProgressCallback = ignore_progress,
    on_note: NoteCallback = ignore_note,
) -> Signing:
    """Verify `target` as `verify` does and, only if its verdict is ok, sign (OMS) exactly the files that read
    covered, with the sha256 it computed: a mirror vouches only for what it verified. The signature goes to `out`,
    else the store's `torrents/IH.sig` for a store release, else `DIR.sig` beside the folder; one there with other
    content is replaced only with `replace_existing` (StorageError otherwise)."""
    store = store or Store.from_env()
    release = _release(store, target, None, None, on_note)
    verification = _held(store, release, Trust(), progress)  # the files, whatever signature sits beside them
    report = verification.report
    if report.verdict != Status.OK:
        worst = next(f for f in report.failures() if f.status == report.verdict)
        raise error_for(report.verdict)(
            f"{release.name} does not verify ({report.verdict}: {worst.message}); nothing was signed — a signature "
            "vouches only for a release that verifies"
        )
    named = _release_files(release)
    digests = {f.path: f.sha256 for f in report.files if f.sha256 and (named is None or f.path in named)}
    name = release.folder.name
    data = sign_files(name, digests, key)
    info_hash = release.info_hash or (release.manifest.torrent.info_hash if release.manifest else None)
    in_store = out is None and release.in_store and info_hash is not None
    if out is None:
        out = store.signature_path(info_hash) if in_store and info_hash else signature_beside(release.folder)
    if out.exists() and not replace_existing:
        raise StorageError(f"{out} exists: pass replace_existing (force) to replace it", field="force")
    if in_store and info_hash:
        store.save_signature(info_hash, data)  # through the store's own folders, never a link
    else:
        write_bytes(out, data)
    return Signing(out, fingerprint(key.public_key()), tuple(sorted(digests)), verification)


def _release_files(release: Release) -> set[str] | None:
    """The files the release is: its torrent's file list (pad files aside), else its manifest's; None when neither
    says (a folder verified on its own). A file beside them that nothing names is not signed."""
    if release.torrent is not None:
        return {f.path for f in load_torrent(release.torrent)[1].files if not f.pad}
    if release.manifest is not None and release.manifest.files:
        return {f.path for f in release.manifest.files}
    return None


def signature_to_keep(release: Release, signature: Path | None = None) -> bytes | None:
    """The signature a fetch keeps in the store with the release's torrent (`Store.signature_path`): `signature`,
    else a `.sig` beside the release's `.torrent` or beside its manifest; read and checked for shape before any data
    is fetched (InvalidInputError / UnsafeError for a hostile one). Who signed it is verify's question."""
    candidates = [signature] if signature is not None else []
    if signature is None and release.torrent is not None:
        candidates.append(release.torrent.with_suffix(SIGNATURE_SUFFIX))
    if signature is None and release.manifest is not None and release.manifest.origin is not None:
        candidates.append(release.manifest.origin.with_suffix(SIGNATURE_SUFFIX))
    for path in candidates:
        if path == signature or _is_file(path):
            read_signature(path)  # refuses what is no signature, unread beyond its cap
            with open(path, "rb") as fh:
                return fh.read(MAX_SIGNATURE_BYTES + 1)
    return None
