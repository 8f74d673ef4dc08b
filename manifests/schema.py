"""The records a manifest holds: what a publisher vouches for about one release."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from m7b.errors import UnsupportedArchitectureError
from m7b.magnet import InfoHashes

from .architecture import Architecture, MixtureOfExperts


@dataclass(frozen=True)
class FileFacts:
    """One file of the release. A digest or size nobody published is None, never guessed."""

    path: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class TorrentFacts(InfoHashes):
    name: str | None = None
    info_hash_v1: str | None = None
    info_hash_v2: str | None = None
    magnet: str | None = None
    trackers: tuple[str, ...] = ()
    web_seeds: tuple[str, ...] = ()
    # True when `files` names every file of the torrent (so an extra file there is a mismatch).
    files_complete: bool = False


@dataclass(frozen=True)
class CheckpointFacts:
    tensors: int | None = None
    parameters: int | None = None
    dtype: str | None = None


@dataclass(frozen=True)
class ArchiveFacts:
    """The same content published another way (e.g. a CDN tar)."""

    name: str
    md5: str | None = None
    sha256: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    title: str
    publisher: str
    license: str
    release_date: dt.date | None = None
    torrent: TorrentFacts = field(default_factory=TorrentFacts)
    files: tuple[FileFacts, ...] = ()
    architecture: Architecture | None = None
    # an `[architecture.moe]` table (params.json's `moe` block): a mixture of experts, which the runtime cannot run
    moe: MixtureOfExperts | None = None
    checkpoint: CheckpointFacts | None = None
    archives: tuple[ArchiveFacts, ...] = ()
    # the publisher's signing keys: a PEM public key, or `sha256:HEX` (the fingerprint of one)
    signing_keys: tuple[str, ...] = ()
    # fact path ("torrent", "files.tokenizer.model", "architecture", ...) -> where it comes from
    sources: dict[str, str] = field(default_factory=dict)
    origin: Path | None = None

    @property
    def unsupported(self) -> str | None:
        """Why m7b's runtime cannot run (or convert) this release, or None when it can (as far as the manifest says)."""
        return self.moe.unsupported if self.moe else None

    def require_runnable(self, action: str) -> None:
        """Raise UnsupportedArchitectureError (exit 4) when the runtime cannot `action` ("run", "convert") it."""
        if self.moe is not None:
            raise UnsupportedArchitectureError(
                f"{self.name} is a mixture of experts ({self.moe.describe()}); m7b's runtime runs dense Mistral "
                f"models only, so it cannot {action} it. Fetching, verifying and seeding it work as for any release",
                self.moe,
            )

    def file(self, path: str) -> FileFacts | None:
        return next((f for f in self.files if f.path == path), None)
