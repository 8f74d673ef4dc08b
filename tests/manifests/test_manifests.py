from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from real_params import REAL

from m7b.errors import InvalidInputError
from m7b.manifests.loader import BUNDLED_DIR, find_manifest, known_manifests, load_manifest, parse_manifest
from m7b.manifests.writer import manifest_to_toml

MISTRAL = BUNDLED_DIR / "mistral-7b-v0.1.toml"


def test_bundled_manifests_hold_the_published_facts_with_sources() -> None:
    m = find_manifest("mistral-7b-v0.1")
    assert m.torrent.info_hash_v1 == "208b101a0f51514ecf285885a8b0f6fb1a1e4d7d"
    assert m.torrent.name == "mistral-7B-v0.1"
    assert m.torrent.trackers == ("udp://tracker.opentrackr.org:1337/announce",)
    assert m.license == "Apache-2.0" and str(m.release_date) == "2023-09-27"
    assert [f.path for f in m.files] == ["RELEASE", "consolidated.00.pth", "params.json", "tokenizer.model"]
    tok = m.file("tokenizer.model")
    assert (tok.size, tok.sha256, tok.md5) == (
        493443,
        "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055",
        "37974873eb68a7ab30c4912fc36264ae",
    )
    # nobody published these: absent, never guessed
    assert m.file("consolidated.00.pth").sha256 is None and m.file("consolidated.00.pth").size is None
    assert m.architecture.to_params() == REAL
    assert m.architecture.rope_theta is None and m.architecture.effective_rope_theta == 10000
    assert (m.checkpoint.tensors, m.checkpoint.parameters) == (291, 7_241_732_096)
    assert m.architecture.parameter_count() == m.checkpoint.parameters
    assert m.archives[0].md5 == "37dab53973db2d56b2da0a033a15307f"
    mixtral = find_manifest("mixtral-8x7b-32kseqlen")
    assert mixtral.torrent.info_hash_v1 == "5546272da9065eddeb6fcd7ffddeef5b75be79a7"
    assert mixtral.file("consolidated.00.pth").md5 == "1faa9bc9b20fcfe81fcd4eb7166a79e6"
    assert mixtral.file("tokenizer.model").md5 == "37974873eb68a7ab30c4912fc36264ae"
    assert not mixtral.torrent.files_complete
    a = mixtral.architecture
    assert a is not None and a.moe is not None and (a.moe.num_experts, a.moe.num_experts_per_tok) == (8, 2)
    assert (a.dim, a.n_layers, a.head_dim, a.hidden_dim, a.n_heads, a.n_kv_heads, a.vocab_size) == (
        4096,
        32,
        128,
        14336,
        32,
        8,
        32000,
    )
    assert a.norm_eps == 1e-05 and a.sliding_window is None and a.rope_theta is None and a.max_seq_len is None
    assert a.effective_rope_theta == 1e6 and a.max_positions == 32_768
    big = find_manifest("mixtral-8x22b")
    assert big.torrent.info_hash_v1 == "9238b09245d0d8cd915be09927769d5f7584c1c9"
    assert big.file("consolidated.safetensors") is not None and big.file("consolidated.00.pth") is None
    b = big.architecture
    assert b is not None and b.moe is not None and (b.moe.num_experts, b.moe.num_experts_per_tok) == (8, 2)
    assert (b.dim, b.n_layers, b.head_dim, b.hidden_dim, b.n_heads, b.n_kv_heads, b.vocab_size) == (
        6144,
        56,
        128,
        16384,
        48,
        8,
        32000,
    )
    assert b.rope_theta == 1e6 and b.max_seq_len == 65_536 and b.sliding_window is None and b.norm_eps == 1e-05
    for name in ("mixtral-8x7b-32kseqlen", "mixtral-8x22b"):
        sources = find_manifest(name).sources
        assert "moe_one_file_ref.py" in sources["architecture"] and "moe.py" in sources["architecture"]
    for manifest in known_manifests().values():
        assert manifest.sources["release"] and manifest.sources["torrent"]


def raw_mistral() -> dict:
    return tomllib.loads(MISTRAL.read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("license"), "field 'license': missing"),
        (lambda r: r.update(lisence="MIT"), "field 'lisence': unknown field"),
        (lambda r: r["files"][3].update(size="big"), "field 'files[3].size': expected an integer, found str"),
        (lambda r: r["files"][3].update(sha265="00"), "field 'files[3].sha265': unknown field"),
        (lambda r: r["files"][3].update(md5="XYZ"), "field 'files[3].md5': expected 32 lowercase hex digits"),
        (lambda r: r["torrent"].update(info_hash_v1="208b"), "field 'torrent.info_hash_v1': expected 40"),
        (lambda r: r["torrent"].update(trackers="udp://x"), "field 'torrent.trackers': expected a list"),
        (lambda r: r["files"].append({"path": "../../etc/passwd"}), "expected a relative path inside the release"),
        (lambda r: r["architecture"].update(n_heads="32"), "'n_heads' must be an integer, found str"),
        (lambda r: r["sources"].pop("architecture"), "field 'sources.architecture': every fact needs a source"),
        (lambda r: r.update(schema=2), "field 'schema': expected 1, found 2"),
        (
            lambda r: r["torrent"].update(magnet="magnet:?xt=urn:btih:" + "1" * 40),
            "field 'torrent.magnet': names info-hash 1111",
        ),
    ],
)
def test_a_bad_manifest_names_file_and_field(change, message) -> None:
    raw = raw_mistral()
    change(raw)
    with pytest.raises(InvalidInputError, match="^bad.toml: .*") as info:
        parse_manifest(raw, "bad.toml")
    assert message in str(info.value)


def test_cli_show_reports_a_bad_manifest_file_in_one_line(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(MISTRAL.read_text().replace('license = "Apache-2.0"', "license = 2"))
    result = cli("show", bad)
    assert result.code == 4
    assert f"{bad}: field 'license': expected a string, found int 2" in result.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [")
    result = cli("show", broken)
    assert result.code == 4 and "not valid TOML" in result.stderr


def test_writer_round_trips_every_bundled_manifest() -> None:
    for m in known_manifests().values():
        again = parse_manifest(tomllib.loads(manifest_to_toml(m)), "again")
        assert again == type(m)(**{**m.__dict__, "origin": again.origin})


def test_show_json_is_everything_the_manifest_says(cli, m7b_home) -> None:
    result = cli("show", "mistral-7b-v0.1", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["torrent"]["info_hash_v1"] == "208b101a0f51514ecf285885a8b0f6fb1a1e4d7d"
    assert doc["files"][0] == {"path": "RELEASE"}
    assert doc["architecture"]["sliding_window"] == 4096
    assert doc["sources"]["files.tokenizer.model"]
    assert doc["state"] == "absent"
    human = cli("show", "mistral-7b-v0.1")
    assert human.code == 0 and "208b101a0f51514ecf285885a8b0f6fb1a1e4d7d" in human.stdout


def test_unknown_release_name(cli, m7b_home) -> None:
    result = cli("show", "mistral-8b")
    assert result.code == 3
    assert "unknown release 'mistral-8b'; known releases: mistral-7b-v0.1" in result.stderr


def test_user_manifests_in_the_store_are_known(cli, m7b_home: Path) -> None:
    (m7b_home / "manifests").mkdir(parents=True)
    text = MISTRAL.read_text().replace('name = "mistral-7b-v0.1"', 'name = "my-copy"')
    (m7b_home / "manifests" / "my-copy.toml").write_text(text)
    assert load_manifest(m7b_home / "manifests" / "my-copy.toml").name == "my-copy"
    result = cli("list", "--json")
    assert "my-copy" in [r["name"] for r in json.loads(result.stdout)["releases"]]
