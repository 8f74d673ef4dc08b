"""`m7b run` from Python: `load_release` and `complete`, called as a user would, give the tokens and text the
command prints with --json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from m7b.release import resolve_release
from m7b.runtime import GenerationConfig, SamplingConfig, complete, load_release
from m7b.store import Store

PROMPT = "Hello, my name is"


@pytest.mark.slow
def test_greedy_completion_is_what_run_prints(cli_inproc, tiny_release_src: Path, m7b_home: Path) -> None:
    rt = load_release(str(tiny_release_src), device="cpu")
    completion = complete(rt, PROMPT, GenerationConfig(max_tokens=12))
    printed = cli_inproc("run", str(tiny_release_src), "--prompt", PROMPT, "--max-tokens", "12", "--json")
    assert printed.code == 0, printed.stderr
    doc = json.loads(printed.stdout)
    assert (completion.prompt_token_ids, completion.token_ids, completion.text) == (
        doc["prompt_token_ids"],
        doc["token_ids"],
        doc["text"],
    )
    assert str(rt.folder) == doc["path"] and str(rt.dtype).removeprefix("torch.") == doc["dtype"] == "bfloat16"
    assert completion.prepared.mode == doc["decode_mode"] and completion.figures()["generated_tokens"] == 12


@pytest.mark.slow
def test_sampled_completion_of_a_store_release_is_what_run_prints(
    cli_inproc, tiny_release_src: Path, m7b_home: Path
) -> None:
    shutil.copytree(tiny_release_src, m7b_home / "releases" / "mistral-tiny")
    rt = load_release("mistral-tiny", store=Store(m7b_home), device=torch.device("cpu"), dtype="float32")
    assert rt.release is not None and rt.release.name == "mistral-tiny" and rt.dtype == torch.float32
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, seed=3)
    pieces: list[str] = []
    completion = complete(
        rt, PROMPT, GenerationConfig(max_tokens=20, stop_at_eos=False, sampling=sampling), on_text=pieces.append
    )
    assert "".join(pieces) == completion.text
    args = ("--temperature", "0.7", "--top-p", "0.9", "--seed", "3", "--ignore-eos", "--dtype", "float32")
    printed = cli_inproc("run", "mistral-tiny", "--prompt", PROMPT, "--max-tokens", "20", *args, "--json")
    assert printed.code == 0, printed.stderr
    doc = json.loads(printed.stdout)
    assert completion.token_ids == doc["token_ids"] and len(doc["token_ids"]) == 20
    assert Path(doc["path"]).resolve() == rt.folder.resolve() == (m7b_home / "releases" / "mistral-tiny").resolve()


def test_load_release_takes_a_resolved_release_and_a_smaller_window(tiny_release_src: Path, m7b_home: Path) -> None:
    release = resolve_release(str(tiny_release_src), Store(m7b_home))
    rt = load_release(release, device="cpu", window=8)
    assert rt.release is release and rt.args.sliding_window == 8 and rt.folder == tiny_release_src.resolve()
