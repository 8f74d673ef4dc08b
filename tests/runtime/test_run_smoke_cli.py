"""`m7b run` and `m7b smoke` as a user meets them: streamed text, JSON records, tables, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

LONG_PROMPT = " ".join(["the window slides over every word of this prompt"] * 6)  # ~60 tokens, W=16


@pytest.mark.slow
def test_run_streams_text_and_reports_figures(cli, tiny_release_src) -> None:
    result = cli("run", tiny_release_src, "--prompt", "Hello, my name is", "--max-tokens", "12", "--device", "cpu")
    assert result.code == 0, result.stderr
    assert result.stdout.strip()
    for figure in ("time to first token", "prefill", "decode", "tok/s"):
        assert figure in result.stderr
    as_json = cli(
        "run", tiny_release_src, "--prompt", "Hello, my name is", "--max-tokens", "12", "--device", "cpu", "--json"
    )
    record = json.loads(as_json.stdout)
    assert record["text"] + "\n" == result.stdout  # the streamed text is the same greedy completion
    assert len(record["token_ids"]) == record["generated_tokens"] == 12
    assert record["prompt_token_ids"][0] == 1
    for key in ("ttft_s", "prefill_tok_s", "decode_tok_s", "load_s"):
        assert record[key] > 0
    # CPU defaults: the checkpoint's own dtype (bf16, no converted copy) and the eager step, prepared apart
    assert record["dtype"] == "bfloat16" and record["decode_mode"] == "eager" and record["prepare_s"] >= 0
    assert "prepared in" in result.stderr


@pytest.mark.slow
def test_run_with_a_prompt_longer_than_the_window(cli_inproc, tiny_release_src) -> None:
    sampled = ("--json", "--temperature", "0.7", "--top-p", "0.9", "--seed", "3", "--ignore-eos")
    args = ("run", str(tiny_release_src), "--prompt", LONG_PROMPT, "--max-tokens", "40", *sampled)
    result = cli_inproc(*args)
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["prompt_tokens"] > 3 * 16 and record["generated_tokens"] == 40
    again = json.loads(cli_inproc(*args).stdout)
    assert again["token_ids"] == record["token_ids"]


@pytest.mark.slow
def test_run_finds_a_release_by_name_in_the_store(cli_inproc, tiny_release_src, m7b_home) -> None:
    shutil.copytree(tiny_release_src, m7b_home / "releases" / "mistral-tiny")
    result = cli_inproc("run", "mistral-tiny", "--prompt", "Hi", "--max-tokens", "3", "--json")
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["generated_tokens"] == 3
    # the record names the folder whose weights ran
    assert Path(record["path"]).resolve() == (m7b_home / "releases" / "mistral-tiny").resolve()


@pytest.mark.parametrize("command", ["run", "smoke"])
def test_a_compile_cache_the_store_refuses_is_a_storage_error(cli_inproc, tiny_release_src, m7b_home, command) -> None:
    """M7B_HOME/cache is a file: the compile cache cannot be made there; exit 8 naming the store, before compiling."""
    m7b_home.mkdir(parents=True)
    (m7b_home / "cache").write_text("not a folder")
    args = ("--prompt", "Hi", "--max-tokens", "2") if command == "run" else ()
    result = cli_inproc(command, str(tiny_release_src), *args, "--decode", "compile")
    assert result.code == 8, result.stderr
    line = _one_clear_line(result.stderr)
    assert str(m7b_home / "cache" / "compile") in line and "M7B_HOME" in line
    assert (m7b_home / "cache").read_text() == "not a folder"


def test_native_safetensors_gives_the_same_tokens(cli_inproc, tiny_release, tmp_path) -> None:
    from safetensors.torch import save_file

    native = tmp_path / "native"
    native.mkdir()
    state = torch.load(tiny_release / "consolidated.00.pth", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, native / "consolidated.safetensors")
    for name in ("params.json", "tokenizer.model"):
        shutil.copy(tiny_release / name, native / name)
    args = ("--prompt", "Hello", "--max-tokens", "20", "--json")
    from_pth = json.loads(cli_inproc("run", str(tiny_release), *args).stdout)
    from_st = json.loads(cli_inproc("run", str(native), *args).stdout)
    assert from_st["token_ids"] == from_pth["token_ids"]


def test_run_on_the_converters_native_folder(cli_inproc, tiny_release_src, tmp_path) -> None:
    from m7b.verify.convert import convert_release

    native = convert_release(tiny_release_src, tmp_path / "native", "native").out
    args = ("--prompt", "Hello", "--max-tokens", "10", "--json")
    from_pth = json.loads(cli_inproc("run", str(tiny_release_src), *args).stdout)
    from_native = json.loads(cli_inproc("run", str(native), *args).stdout)
    assert from_native["token_ids"] == from_pth["token_ids"]


def test_a_hostile_checkpoint_is_refused_before_unpickling(cli_inproc, tiny_release) -> None:
    import pickle
    import zipfile

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    ckpt = tiny_release / "consolidated.00.pth"
    ckpt.unlink()
    with zipfile.ZipFile(ckpt, "w") as zf:
        zf.writestr("consolidated/data.pkl", pickle.dumps({"x": Boom()}, protocol=2))
        zf.writestr("consolidated/byteorder", "little")
    result = cli_inproc("run", str(tiny_release), "--prompt", "Hello")
    assert result.code == 6
    assert "pwned" not in result.stdout
    assert "print" in _one_clear_line(result.stderr)


@pytest.mark.slow
def test_smoke_passes_on_a_release(cli, tiny_release_src) -> None:
    result = cli("smoke", tiny_release_src, "--device", "cpu")
    assert result.code == 0, result.stderr
    for check in ("same seed", "finite", "chunked prefill", "rolling cache", "cache memory", "tokens/s"):
        assert check in result.stdout
    assert "FAIL" not in result.stdout
    assert "graph decode step equals eager" in result.stdout and "SKIP" in result.stdout  # GPU-only, on a CPU
    assert "a figure, not a check" in result.stdout


def test_smoke_json_and_bfloat16(cli_inproc, tiny_release_src) -> None:
    result = cli_inproc("smoke", str(tiny_release_src), "--dtype", "bfloat16", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["passed"] is True and doc["window"] == 16 and doc["dtype"] == "bfloat16"
    names = [c["name"] for c in doc["checks"]]
    assert len(names) == 6 + 2 * any(n.startswith("CPU kernels ") for n in names) and doc["decode_tok_s"] > 0
    # the speed is a reported figure, not a check that any rate passes
    assert "decode tokens/s" not in names
    (figure,) = doc["figures"]
    assert figure["name"] == "decode tokens/s" and figure["unit"] == "tok/s" and figure["value"] == doc["decode_tok_s"]
    # the CUDA-graph step is GPU-only: a skipped entry with its reason, neither passed nor failed
    (graph,) = [c for c in doc["checks"] if c["name"] == "graph decode step equals eager"]
    assert graph["passed"] is None and graph["skipped"].startswith("GPU-only") and "cpu" in graph["detail"]
    assert all(c["passed"] is True for c in doc["checks"] if not c["skipped"])


def test_smoke_fails_with_exit_5_when_the_window_is_ignored(cli_inproc, tiny_release_src, monkeypatch) -> None:
    """A runtime whose mask forgets the window must fail the battery (the rolling cache then drops keys)."""
    import m7b.runtime.model as model

    monkeypatch.setattr(model, "band_mask", lambda q, k, w: (k[None, :] <= q[:, None]) & (k[None, :] >= 0))
    result = cli_inproc("smoke", str(tiny_release_src), "--json")
    assert result.code == 5
    doc = json.loads(result.stdout)
    failed = {c["name"] for c in doc["checks"] if not c["passed"]}
    assert "chunked prefill equals a single pass" in failed
    assert "smoke:" in result.stderr and "failed" in result.stderr


def test_smoke_window_override(cli_inproc, tiny_release_src) -> None:
    result = cli_inproc("smoke", str(tiny_release_src), "--window", "8", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["window"] == 8


@pytest.mark.parametrize("window", [1, 17, 10**12])
def test_smoke_window_outside_2_to_params_window_is_refused(cli_inproc, tiny_release_src, window) -> None:
    """--window only makes the window smaller (W=16 here): a larger one would size every cache by it."""
    result = cli_inproc("smoke", str(tiny_release_src), "--window", str(window), "--json")
    assert result.code == 4
    doc = json.loads(result.stdout)
    assert doc["error"].startswith("--window must be between 2 and 16") and doc["field"] == "window"
    assert f"found {window}" in doc["error"]


# --- bad input: one clear line, a documented exit code, no traceback ------------------------------------------


def _one_clear_line(stderr: str) -> str:
    """The error is one line; `run`'s size statement (printed before any weight is read) may precede it."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("size: weights")]
    assert len(lines) == 1, stderr
    return "\n".join(lines)


@pytest.mark.slow
def test_params_disagreeing_with_the_weights(cli, tiny_release) -> None:
    params = json.loads((tiny_release / "params.json").read_text())
    (tiny_release / "params.json").write_text(json.dumps({**params, "hidden_dim": 256}))
    result = cli("run", tiny_release, "--prompt", "Hello", "--device", "cpu")
    assert result.code == 5
    line = _one_clear_line(result.stderr)
    assert "params.json" in line and "feed_forward.w1.weight has shape (128, 64), params.json implies (256, 64)" in line
    assert cli("smoke", tiny_release, "--device", "cpu").code == 5


def test_prompt_that_tokenises_to_nothing(cli_inproc, tiny_release_src) -> None:
    result = cli_inproc("run", str(tiny_release_src), "--prompt", "")
    assert result.code == 4
    assert "tokenises to nothing" in _one_clear_line(result.stderr)


def test_max_tokens_zero(cli_inproc, tiny_release_src) -> None:
    result = cli_inproc("run", str(tiny_release_src), "--prompt", "Hello", "--max-tokens", "0")
    assert result.code == 4
    assert "--max-tokens must be at least 1, found 0" in _one_clear_line(result.stderr)


@pytest.mark.parametrize("device", ["tpu", "gpu0", "cuda:x"])
def test_unknown_device(cli_inproc, tiny_release_src, device) -> None:
    result = cli_inproc("run", str(tiny_release_src), "--prompt", "Hello", "--device", device)
    assert result.code == 4
    line = _one_clear_line(result.stderr)
    assert f"unknown device {device!r}" in line and "auto, cpu, cuda or cuda:N" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(cli_inproc, tiny_release_src) -> None:
    result = cli_inproc("smoke", str(tiny_release_src), "--device", "cuda")
    assert result.code == 4
    assert "no CUDA device" in _one_clear_line(result.stderr)


def test_unknown_dtype(cli_inproc, tiny_release_src) -> None:
    result = cli_inproc("run", str(tiny_release_src), "--prompt", "Hello", "--dtype", "float8")
    assert result.code == 4
    assert "unknown dtype 'float8'" in _one_clear_line(result.stderr)


def test_unknown_release(cli_inproc, m7b_home) -> None:
    result = cli_inproc("run", "no-such-release", "--prompt", "Hello")
    assert result.code == 3
    line = _one_clear_line(result.stderr)
    assert "unknown release 'no-such-release'" in line and str(m7b_home) in line


def test_release_folder_without_weights(cli_inproc, tiny_release: Path) -> None:
    (tiny_release / "consolidated.00.pth").unlink()
    result = cli_inproc("run", str(tiny_release), "--prompt", "Hello")
    assert result.code == 3
    assert "consolidated.00.pth" in _one_clear_line(result.stderr)
