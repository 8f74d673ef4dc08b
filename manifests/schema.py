"""The records a manifest holds: what a publisher vouches for about one release."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

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
    architecture: Architecture | None = None  # its `moe` (an `[architecture.moe]` table): a mixture of experts
    checkpoint: CheckpointFacts | None = None
    archives: tuple[ArchiveFacts, ...] = ()
    # the publisher's signing keys: a PEM public key, or `sha256:HEX` (the fingerprint of one)
    signing_keys: tuple[str, ...] = ()
    # fact path ("torrent", "files.tokenizer.model", "architecture", ...) -> where it comes from
    sources: dict[str, str] = field(default_factory=dict)
    origin: Path | None = None

    @property
    def moe(self) -> MixtureOfExperts | None:
        """The mixture of experts the architecture declares (Mixtral), or None (dense, or no architecture stated)."""
        return self.architecture.moe if self.architecture else None

    def file(self, path: str) -> FileFacts | None:
        return next((f for f in self.files if f.path == path), None)
