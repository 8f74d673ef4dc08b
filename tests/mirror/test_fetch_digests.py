"""A fetch by manifest checks the digests the publisher published once every piece has passed (issue 17, item 5):
a torrent whose data contradicts the manifest ends with exit 5 naming the file, and the data never takes the
release's name."""

from __future__ import annotations

import hashlib
import json

import pytest
from swarm import plain_seeder, tree_digests

LOOPBACK = ("--loopback", "--listen", "127.0.0.1:0")


@pytest.mark.slow
def test_a_fetch_whose_data_contradicts_the_manifests_sha256_fails_naming_the_file(cli, m7b_home, publish) -> None:
    pub = publish(name="tiny-named")
    good = pub.manifest.read_text()
    real = hashlib.sha256((pub.folder / "params.json").read_bytes()).hexdigest()
    assert good.count(real) == 1
    wrong = "0" * 64
    (m7b_home / "manifests").mkdir(parents=True)
    manifest = m7b_home / "manifests" / "tiny-named.toml"
    manifest.write_text(good.replace(real, wrong))
    with plain_seeder(pub.torrent, pub.folder) as peer:
        result = cli("fetch", "tiny-named", "--peer", peer, *LOOPBACK, "--json")
    assert result.code == 5, result.stderr
    assert f"params.json: sha256 {real}, the manifest publishes {wrong}" in result.stderr
    assert "every piece matched the torrent" in result.stderr
    error = json.loads(result.stdout.splitlines()[-1])
    assert error["path"] == "params.json" and error["expected"] == wrong and error["found"] == real
    # the torrent's data is kept, but not under the release's name: the store calls it partial, not downloaded
    assert not (m7b_home / "releases" / "tiny-named").exists()
    assert tree_digests(m7b_home / "releases" / ".tiny-named.partial") == tree_digests(pub.folder)
    assert json.loads(cli("show", "tiny-named", "--json").stdout)["state"] == "partial"
    # with the publisher's manifest corrected, a rerun finishes from the resume data, without a peer
    manifest.write_text(good)
    again = cli("fetch", "tiny-named", *LOOPBACK, "--timeout", "20")
    assert again.code == 0, again.stderr
    assert tree_digests(m7b_home / "releases" / "tiny-named") == tree_digests(pub.folder)


@pytest.mark.slow
def test_a_store_release_rechecked_against_a_contradicting_manifest_is_marked_incomplete(
    cli, m7b_home, publish
) -> None:
    pub = publish(name="tiny-named")
    good = pub.manifest.read_text()
    (m7b_home / "manifests").mkdir(parents=True)
    manifest = m7b_home / "manifests" / "tiny-named.toml"
    manifest.write_text(good)
    with plain_seeder(pub.torrent, pub.folder) as peer:
        assert cli("fetch", "tiny-named", "--peer", peer, *LOOPBACK).code == 0
    real = hashlib.md5((pub.folder / "tokenizer.model").read_bytes()).hexdigest()
    manifest.write_text(good.replace(real, "f" * 32))
    again = cli("fetch", "tiny-named", *LOOPBACK, "--timeout", "20")
    assert again.code == 5, again.stderr
    assert f"tokenizer.model: md5 {real}, the manifest publishes {'f' * 32}" in again.stderr
    assert "marked incomplete" in again.stderr
    # the files stay where they are, but the store no longer calls the release downloaded
    assert tree_digests(m7b_home / "releases" / "tiny-named") == tree_digests(pub.folder)
    assert json.loads(cli("show", "tiny-named", "--json").stdout)["state"] == "partial"
