from __future__ import annotations

import json
from pathlib import Path

import pytest

from m7b.synth import synthesize


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_over_a_local_swarm(cli, tmp_path: Path) -> None:
    work = tmp_path / "demo"
    result = cli("demo", "--work", work, "--preset", "tiny", "--json", timeout=600)
    assert result.code == 0, result.stderr
    steps = [json.loads(line) for line in result.stdout.splitlines()]
    assert [s["step"] for s in steps] == [
        "synthesize",
        "publish",
        "seed (publisher)",
        "fetch",
        "verify",
        "convert native",
        "convert hf",
        "run",
        "smoke",
        "serve back",
    ]
    assert all(s["ok"] for s in steps), steps
    # what the user fetched, and what aria2c then fetched from the user's mirror, are the publisher's bytes
    original = synthesize(tmp_path / "again", "tiny", seed=0).path
    for copy in (work / "user-home" / "releases" / "mistral-demo", work / "aria2c" / "Mistral-Demo"):
        for f in original.iterdir():
            assert (copy / f.name).read_bytes() == f.read_bytes()
    assert (work / "user-home" / "converted" / "mistral-demo" / "hf" / "SHA256SUMS").is_file()


@pytest.mark.slow
def test_demo_refuses_a_used_folder(cli, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = cli("demo", "--work", tmp_path)
    assert result.code == 8 and "not empty" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
