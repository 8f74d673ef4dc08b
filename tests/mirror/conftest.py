from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from m7b.manifests.writer import manifest_to_toml
from m7b.mirror.create import create_release
from m7b.torrent import TorrentMeta


@dataclass(frozen=True)
class Published:
    folder: Path
    torrent: Path
    manifest: Path
    magnet: str
    meta: TorrentMeta


@pytest.fixture
def publish(tiny_release: Path) -> Callable[..., Published]:
    """Publish the test's copy of the tiny release: FOLDER.torrent and NAME.toml beside it."""

    def make(
        trackers: Sequence[str] = (),
        web_seeds: Sequence[str] = (),
        name: str = "tiny-test",
        folder: Path = tiny_release,
    ) -> Published:
        made = create_release(folder, trackers=trackers, web_seeds=web_seeds, manifest_name=name, publisher="m7b tests")
        torrent = folder.parent / f"{folder.name}.torrent"
        torrent.write_bytes(made.torrent)
        manifest = folder.parent / f"{name}.toml"
        manifest.write_text(manifest_to_toml(made.manifest))
        return Published(folder, torrent, manifest, made.magnet, made.meta)

    return make
