"""The store a user manages: sizes in `m7b list`, `m7b du`, and `m7b rm`, which never touches a seeded release."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from swarm import plain_seeder
from test_seed import running_seed, stop

LOOPBACK = ("--loopback", "--listen", "127.0.0.1:0")
NAME = "kept-tiny-release-with-a-name-long-enough-to-be-cut-at-eighty-columns"


def fetched(cli, m7b_home: Path, publish) -> object:
    """The tiny release fetched into the store under a long manifest name, verified and converted."""
    pub = publish(name=NAME)
    (m7b_home / "manifests").mkdir(parents=True)
    shutil.copy(pub.manifest, m7b_home / "manifests" / f"{NAME}.toml")
    with plain_seeder(pub.torrent, pub.folder) as peer:
        assert cli("fetch", NAME, "--peer", peer, *LOOPBACK).code == 0
    assert cli("verify", NAME, "--json").code == 0
    assert cli("convert", NAME, "--to", "native").code == 0
    return pub


def tree_bytes(folder: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*"))


@pytest.mark.slow
def test_list_du_and_rm_agree_on_what_a_release_takes(cli, m7b_home, publish) -> None:
    pub = fetched(cli, m7b_home, publish)
    listed = {r["name"]: r for r in json.loads(cli("list", "--json").stdout)["releases"]}[NAME]
    assert listed["size"] >= pub.meta.total_size and listed["converted_bytes"] > 0
    # names are never cut, even in 80 columns: the whole name is in the table (folded across lines)
    narrow = cli("list", env={"COLUMNS": "80"})
    assert narrow.code == 0, narrow.stderr
    first_cells = [line.split("│")[1].strip() for line in narrow.stdout.splitlines() if line.startswith("│")]
    assert NAME in "".join(first_cells)
    assert max(len(line) for line in narrow.stdout.splitlines() if line[:1] in "┏┃┡│└") <= 80

    du = json.loads(cli("du", "--json").stdout)
    assert du["store"] == str(m7b_home)
    row = {r["name"]: r for r in du["releases"]}[NAME]
    assert row["release"] == listed["size"] and row["converted"] == listed["converted_bytes"]
    assert row["reports"] > 0 and row["resume_torrent"] > 0
    assert row["total"] == row["release"] + row["converted"] + row["resume_torrent"] + row["reports"]
    assert du["totals"]["total"] + du["other"] == du["store_bytes"]
    assert du["store_bytes"] == tree_bytes(m7b_home) + m7b_home.lstat().st_blocks * 512
    assert cli("du").code == 0

    # no terminal and no --yes: refused, nothing removed
    refused = cli("rm", NAME)
    assert refused.code == 4 and "--yes" in refused.stderr
    assert (m7b_home / "releases" / NAME).is_dir()

    removed = cli("rm", NAME, "--yes", "--keep-torrent", "--json")
    assert removed.code == 0, removed.stderr
    doc = json.loads(removed.stdout)
    kinds = {p["kind"] for p in doc["removed"]}
    assert kinds == {"release", "converted", "report", "resume"}
    assert {p["kind"] for p in doc["kept"]} == {"torrent", "record"}
    assert doc["bytes_removed"] == row["total"] - sum(p["bytes"] for p in doc["kept"])
    for gone in doc["removed"]:
        assert not Path(gone["path"]).exists()
    assert (m7b_home / "torrents" / f"{pub.meta.info_hash}.torrent").is_file()
    after = json.loads(cli("du", "--json").stdout)
    assert after["totals"]["total"] == du["totals"]["total"] - doc["bytes_removed"]
    state = {r["name"]: r for r in json.loads(cli("list", "--json").stdout)["releases"]}[NAME]
    assert (state["state"], state["size"], state["converted_bytes"]) == ("absent", 0, 0)


@pytest.mark.slow
def test_rm_says_what_it_removes_and_refuses_unknown_names(cli, m7b_home, publish) -> None:
    pub = publish()
    with plain_seeder(pub.torrent, pub.folder) as peer:
        done = cli("fetch", pub.magnet, "--peer", peer, *LOOPBACK, "--json")
    name = json.loads(done.stdout.splitlines()[-1])["name"]
    unknown = cli("rm", "no-such-release", "--yes")
    assert unknown.code == 3 and name in unknown.stderr
    assert cli("rm", "../../etc", "--yes").code == 3
    removed = cli("rm", name, "--yes")
    assert removed.code == 0, removed.stderr
    for kind in ("release", "resume", "torrent", "record"):
        assert kind in removed.stderr
    assert "freed" in removed.stderr
    assert not (m7b_home / "releases" / name).exists()
    assert name not in json.loads(cli("list", "--json").stdout)["releases"]
    assert sorted(p.name for p in (m7b_home / "releases").iterdir()) == []


@pytest.mark.slow
def test_a_seeded_release_is_neither_removed_nor_fetched(cli, m7b_home, publish) -> None:
    pub = publish(name="served")
    (m7b_home / "manifests").mkdir(parents=True)
    shutil.copy(pub.manifest, m7b_home / "manifests" / "served.toml")
    with plain_seeder(pub.torrent, pub.folder) as peer:
        assert cli("fetch", "served", "--peer", peer, *LOOPBACK).code == 0
    before = sorted(p.name for p in m7b_home.rglob("*"))
    with running_seed("served") as (proc, status):
        assert status["releases"][0]["state"] == "seeding"
        refused = cli("rm", "served", "--yes")
        assert refused.code == 8, refused.stderr
        assert f"release served is being seeded by pid {proc.pid}" in refused.stderr and "m7b seed" in refused.stderr
        # a fetch does not wait for a seed (it may run for months): it fails at once, naming it
        fetch = cli("fetch", "served", *LOOPBACK, "--json", "--timeout", "5")
        assert fetch.code == 8, fetch.stderr
        error = json.loads(fetch.stdout.splitlines()[-1])
        assert error["pid"] == proc.pid and "being seeded" in error["error"]
        # a second seed of the same release shares it
        with running_seed("served") as (second, status2):
            assert status2["releases"][0]["state"] == "seeding"
            stop(second)
        stop(proc)
    assert sorted(p.name for p in m7b_home.rglob("*")) == before
    assert cli("rm", "served", "--yes").code == 0


HOLD_RELEASE = """
import sys
from m7b.locks import hold
from m7b.store import Store
store = Store.from_env()
with hold(store, store.release_lock(sys.argv[1]), "release " + sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.slow
def test_a_release_being_written_is_not_seeded_or_removed(cli, m7b_home, publish) -> None:
    pub = publish()
    name = pub.folder.name
    with plain_seeder(pub.torrent, pub.folder) as peer:
        assert cli("fetch", pub.torrent, "--peer", peer, *LOOPBACK).code == 0
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_RELEASE, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdin is not None
    try:
        assert writer.stdout.readline().strip() == "held"
        seed = cli("seed", name, *LOOPBACK, "--json")
        assert seed.code == 8 and f"is being written by pid {writer.pid}" in seed.stderr
        assert "nothing was seeded" in seed.stderr
        rm = cli("rm", name, "--yes")
        assert rm.code == 8 and f"pid {writer.pid}" in rm.stderr and "nothing was removed" in rm.stderr
        assert (m7b_home / "releases" / name).is_dir()
    finally:
        writer.stdin.close()
        writer.wait(timeout=10)
