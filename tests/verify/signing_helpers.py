"""Builders for the signing tests: EC keys as openssl writes them, and releases published with or without one."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m7b.manifests.writer import manifest_to_toml
from m7b.mirror.create import create_release
from m7b.verify.signature import load_signing_key


def make_key(path: Path, curve: ec.EllipticCurve | None = None, passphrase: bytes | None = None) -> Path:
    """An EC private key as PEM (as `openssl ecparam -genkey` writes one); its public key beside it as .pub."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    algorithm = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm))
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.with_suffix(".pub").write_bytes(pub)
    return path


def publish(folder: Path, key: Path | None) -> None:
    """What `m7b release create DIR [--sign-key KEY]` writes beside DIR: DIR.torrent, DIR.toml, DIR.sig."""
    made = create_release(folder, sign_key=load_signing_key(key) if key else None)
    (folder.parent / f"{folder.name}.torrent").write_bytes(made.torrent)
    (folder.parent / f"{folder.name}.toml").write_text(manifest_to_toml(made.manifest))
    if made.signature is not None:
        (folder.parent / f"{folder.name}.sig").write_bytes(made.signature)
