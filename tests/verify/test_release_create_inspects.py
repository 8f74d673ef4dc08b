"""`m7b release create` runs verify's checkpoint inspection before writing a torrent or manifest: a hostile pickle
is exit 6, tensors that do not own their bytes (or disagree with params.json) exit 5, and nothing is written;
`--no-inspect` is the publisher's explicit override. A mixture-of-experts release is published with its `moe` block,
and verified, run and converted like a dense one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_storage_ownership import stride_zero
from verify_helpers import hostile_pickle, rewrite_zip

from m7b.manifests.architecture import load_params
from m7b.manifests.loader import load_manifest

PTH = "consolidated.00.pth"


def test_unsafe_pickle_exit_6_and_nothing_written(cli, m7b_home: Path, tiny_release: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    rewrite_zip(tiny_release / PTH, {"consolidated/data.pkl": hostile_pickle(marker, 2)})
    out = tmp_path / "out"
    made = cli("release", "create", tiny_release, "--out", out)
    assert made.code == 6 and "--no-inspect" in made.stderr and "system" in made.stderr
    assert not out.exists() and not marker.exists()


@pytest.mark.slow
def test_aliased_tensors_exit_5_unless_overridden(cli, m7b_home: Path, tiny_release: Path, tmp_path: Path) -> None:
    torch.save(stride_zero(load_params(tiny_release / "params.json").tensor_shapes()), tiny_release / PTH)
    out = tmp_path / "out"
    refused = cli("release", "create", tiny_release, "--out", out)
    assert refused.code == 5 and "tok_embeddings.weight" in refused.stderr and "--no-inspect" in refused.stderr
    assert not out.exists()
    forced = cli("release", "create", tiny_release, "--out", out, "--no-inspect")
    assert forced.code == 0, forced.stderr
    assert (out / f"{tiny_release.name}.torrent").is_file()


def test_params_that_disagree_exit_5(cli, m7b_home: Path, tiny_release: Path, tmp_path: Path) -> None:
    params = json.loads((tiny_release / "params.json").read_text())
    (tiny_release / "params.json").write_text(json.dumps({**params, "n_layers": 10**6}))
    made = cli("release", "create", tiny_release, "--out", tmp_path / "out")
    assert made.code == 5 and "params.json implies" in made.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_mixture_of_experts_release_is_published_verified_run_and_converted(
    cli, m7b_home: Path, mixtral_tiny: Path, tmp_path: Path
) -> None:
    made = cli("release", "create", mixtral_tiny, "--out", tmp_path / "out", "--name", "moe-test")
    assert made.code == 0, made.stderr
    out = tmp_path / "out"
    manifest = load_manifest(out / f"{mixtral_tiny.name}.toml")  # named after the folder
    assert manifest.name == "moe-test"
    assert manifest.moe is not None and manifest.moe.num_experts == 4
    verify = cli(
        "verify",
        mixtral_tiny,
        "--manifest",
        out / f"{mixtral_tiny.name}.toml",
        "--torrent",
        out / f"{mixtral_tiny.name}.torrent",
        "--json",
    )
    assert verify.code == 0, verify.stdout
    checkpoint = [f for f in json.loads(verify.stdout)["findings"] if f["check"] == "checkpoint"]
    assert checkpoint and checkpoint[0]["status"] == "ok" and "41 tensors" in checkpoint[0]["message"]
    ran = cli("run", mixtral_tiny, "-p", "hi", "--device", "cpu", "--max-tokens", "4", "--json")
    assert ran.code == 0, ran.stderr
    assert len(json.loads(ran.stdout)["token_ids"]) == 4
    convert = cli("convert", mixtral_tiny, "--to", "native", "--out", tmp_path / "native")
    assert convert.code == 0, convert.stderr and (tmp_path / "native" / "consolidated.safetensors").is_file()
    show = cli("show", out / f"{mixtral_tiny.name}.toml", "--json")
    assert json.loads(show.stdout)["runtime"] == {"supported": True}
