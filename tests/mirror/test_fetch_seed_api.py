"""`m7b fetch` and `m7b seed` from Python: the library's entry points, called as a user would on a local swarm, give
what the commands print with --json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from swarm import plain_seeder, tree_digests, wait_for
from test_seed import running_seed, stop

from m7b.errors import NotFoundError
from m7b.mirror.fetch import fetch_release, plan_fetch
from m7b.mirror.seed import open_mirror, seed_releases
from m7b.mirror.session import SessionOptions, session_options, settings
from m7b.store import Store

LOOPBACK = ("--loopback", "--listen", "127.0.0.1:0")
TIMED = ("path", "seconds", "rate_mib_s")


def untimed(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in TIMED}


def test_session_options_are_the_commands_flags() -> None:
    assert session_options("127.0.0.1:0", loopback=True) == SessionOptions.loopback(
        listen="127.0.0.1:0", strict_listen=True
    )
    assert session_options(loopback=True).listen == "0.0.0.0:0"
    assert session_options("0.0.0.0:7000", upload_limit=5) == SessionOptions(
        listen="0.0.0.0:7000", upload_limit=5, strict_listen=True
    )
    assert session_options() == SessionOptions()
    # --no-dht turns off the DHT only; uTP, LSD and port mapping stay
    assert session_options(dht=False) == SessionOptions(dht=False)
    assert session_options(dht_bootstrap=["127.0.0.2:6881", " 127.0.0.2:6881"]).dht_bootstrap == ("127.0.0.2:6881",)


def test_plan_fetch_of_a_folder_fetches_it_in_place(m7b_home: Path, publish) -> None:
    pub = publish()
    plan = plan_fetch(str(pub.folder), Store(m7b_home))
    assert plan.dest == pub.folder.resolve() and plan.target.info_hash == pub.meta.info_hash
    assert not plan.release.in_store
    (m7b_home / "manifests").mkdir(parents=True)
    shutil.copy(pub.manifest, m7b_home / "manifests" / "tiny-test.toml")
    by_name = plan_fetch("tiny-test", Store(m7b_home))
    assert by_name.dest is None and by_name.release.in_store and by_name.target.manifest is not None


@pytest.mark.slow
def test_fetch_release_is_what_fetch_prints(cli, m7b_home: Path, publish, tmp_path: Path) -> None:
    pub = publish()
    mine, theirs = tmp_path / "from-python", tmp_path / "from-the-command"
    with plain_seeder(pub.torrent, pub.folder) as peer:
        result = fetch_release(
            str(pub.torrent), store=Store(m7b_home), dest=mine, options=session_options(loopback=True), peers=[peer]
        )
        printed = cli(
            "fetch", pub.torrent, "--dest", theirs, "--peer", peer, *LOOPBACK, "--json",
            env={"M7B_HOME": str(tmp_path / "other-home")},
        )  # fmt: skip
    assert printed.code == 0, printed.stderr
    done = json.loads(printed.stdout.strip().splitlines()[-1])
    assert untimed(result.to_json()) == untimed(done)
    assert (result.path, Path(done["path"])) == (mine, theirs)
    assert tree_digests(mine) == tree_digests(theirs) == tree_digests(pub.folder)


def test_seed_releases_says_how_to_make_a_missing_torrent(m7b_home: Path, tiny_release: Path) -> None:
    with pytest.raises(NotFoundError, match="m7b release create"):
        seed_releases([str(tiny_release)], Store(m7b_home))


@pytest.mark.slow
def test_open_mirror_serves_as_seed_does(m7b_home: Path, publish) -> None:
    pub = publish(name="served")
    (m7b_home / "manifests").mkdir(parents=True)
    shutil.copy(pub.manifest, m7b_home / "manifests" / "served.toml")
    shutil.copytree(pub.folder, m7b_home / "releases" / "served")
    (m7b_home / "torrents").mkdir()
    shutil.copy(pub.torrent, m7b_home / "torrents" / f"{pub.meta.info_hash}.torrent")
    store = Store(m7b_home)

    def first_status() -> dict:
        with open_mirror(["served"], store=store, options=session_options(loopback=True)) as mirror:
            assert wait_for(lambda: bool(mirror.poll()) and mirror.ready())
            return vars(mirror.poll()[0])

    checked = first_status()  # no record yet: a full recheck, which records its pass
    assert (checked["name"], checked["state"], checked["trusted_record"]) == ("served", "seeding", False)
    with running_seed("served") as (proc, status):
        printed = status["releases"][0]
        stop(proc)
    again = first_status()
    assert (printed["state"], printed["trusted_record"]) == ("seeding", True)
    for key in ("name", "info_hash", "state", "trusted_record", "size", "last_check", "check_verdict", "failed_files"):
        assert again[key] == printed[key], key


@given(st.lists(st.text(max_size=40), max_size=4))
def test_any_dht_bootstrap_text_is_nodes_or_invalid_input(texts: list[str]) -> None:
    from m7b.errors import InvalidInputError
    from m7b.mirror.session import dht_bootstrap_nodes

    try:
        nodes = dht_bootstrap_nodes(texts)
    except InvalidInputError:
        return
    assert len(nodes) <= len(texts) and all(":" in n for n in nodes)
    assert SessionOptions(dht_bootstrap=nodes).private_dht in (True, False)  # never raises for nodes that parsed


def test_only_private_or_loopback_bootstrap_nodes_lift_the_subnet_rules() -> None:
    private = ("127.0.0.2:6881", "10.1.2.3:6881", "[::1]:6881", "192.168.0.9:1", "localhost:6881")
    for node in private:
        assert SessionOptions(dht_bootstrap=(node,)).private_dht, node
    for nodes in (("router.bittorrent.com:6881",), ("127.0.0.2:6881", "8.8.8.8:6881"), ()):
        assert not SessionOptions(dht_bootstrap=nodes).private_dht, nodes
    pack = settings(SessionOptions(dht_bootstrap=("127.0.0.2:6881",)))
    assert (pack["dht_restrict_routing_ips"], pack["dht_restrict_search_ips"]) == (False, False)
    assert settings(SessionOptions())["dht_restrict_routing_ips"] is True
    assert "router.bittorrent.com:6881" in settings(SessionOptions())["dht_bootstrap_nodes"]
