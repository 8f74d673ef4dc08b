"""The prepared decode step: static cache sizes, modes, the compile cache kept under M7B_HOME, and the fast paths'
logits against the eager step (teacher-forced past the window). torch.compile runs on the CPU here (gcc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from m7b.errors import InvalidInputError
from m7b.runtime.fast_decode import (
    GPU_ONLY_MODES,
    READY_NAME,
    StaticStep,
    check_capturable,
    compile_cache_dir,
    compile_key,
    prepare_decode,
    resolve_mode,
    static_inputs,
    static_seq_len,
)
from m7b.runtime.generate import GenerationConfig, decode_one_token, generate
from m7b.runtime.loader import build_model
from m7b.runtime.smoke import PAST_WINDOW, check_decode_paths, synthetic_ids, teacher_forced_logits


def test_static_cache_sizes_are_few_buckets_covering_the_run() -> None:
    sizes = {static_seq_len(n, 4096) for n in range(1, 513)}
    assert sizes == {512}  # every short run shares one compiled shape
    for needed in (513, 1000, 4097, 9000):
        size = static_seq_len(needed, 4096)
        assert size >= needed and size & (size - 1) == 0
    assert static_seq_len(10, 16) == 16  # a window below the smallest bucket: the cache is the window


def test_auto_mode_is_compiled_on_cuda_and_eager_on_the_cpu() -> None:
    assert resolve_mode("auto", torch.device("cpu")) == "eager"
    assert resolve_mode("auto", torch.device("cuda")) == "compile"
    assert resolve_mode("Compile", torch.device("cpu")) == "compile"
    with pytest.raises(InvalidInputError, match="CUDA graph needs a CUDA device"):
        resolve_mode("graph", torch.device("cpu"))
    with pytest.raises(InvalidInputError, match="expected one of auto, eager, compile, graph"):
        resolve_mode("fast", torch.device("cpu"))


@pytest.mark.slow
def test_compile_cache_folder_is_keyed_by_shape_dtype_and_cache_size(tiny_runtime, tiny_state, tmp_path) -> None:
    model = tiny_runtime.model
    cpu = torch.device("cpu")
    model.setup_caches(1, 16)
    base = compile_cache_dir(tmp_path, compile_key(model, cpu, "compile"))
    assert base == compile_cache_dir(tmp_path, compile_key(model, cpu, "compile"))
    model.setup_caches(1, 32)
    assert compile_cache_dir(tmp_path, compile_key(model, cpu, "compile")) != base
    state = {k: v.clone() for k, v in tiny_state.items()}
    other_dtype = build_model(tiny_runtime.args, state, cpu, torch.bfloat16)
    other_dtype.setup_caches(1, 16)
    assert compile_cache_dir(tmp_path, compile_key(other_dtype, cpu, "compile")) != base
    other_window = build_model(replace(tiny_runtime.args, sliding_window=8), dict(state), cpu, torch.float32)
    other_window.setup_caches(1, 16)
    assert compile_cache_dir(tmp_path, compile_key(other_window, cpu, "compile")) != base


def test_eager_preparation_allocates_exactly_the_run(tiny_runtime, tmp_path) -> None:
    prepared = prepare_decode(tiny_runtime.model, "eager", 23, tmp_path)
    assert prepared.fn is decode_one_token and prepared.max_seq_len == 23 and prepared.cache == "none"
    assert tiny_runtime.model.max_seq_len == 23 and not any(tmp_path.iterdir())


def _shifted_step(model, token, pos):  # a broken fast path: the right token at the wrong position
    return decode_one_token(model, token, pos + 1)


@pytest.mark.slow
def test_compiled_step_gives_the_eager_logits_past_the_window(tiny_runtime, tmp_path) -> None:
    model = tiny_runtime.model
    prepared = prepare_decode(model, "compile", model.window + PAST_WINDOW, tmp_path)
    assert prepared.cache == "miss" and (prepared.cache_dir / READY_NAME).is_file()
    checks = check_decode_paths(
        model, {"compile": prepared.fn, "shifted": _shifted_step}, torch.float32, 0, prepared.max_seq_len
    )
    by_name = {c.name: c for c in checks}
    assert by_name["compile decode step equals eager"].passed, by_name["compile decode step equals eager"].detail
    assert not by_name["shifted decode step equals eager"].passed  # the check sees a wrong path
    assert by_name["eager decode step equals transformers"].passed
    assert "64 past it" in by_name["compile decode step equals eager"].detail
    # generate through the compiled step: the same greedy tokens as eager
    config = GenerationConfig(max_tokens=20, stop_at_eos=False)
    fast = generate(model, [1, 22557, 1055], config, decode_fn=prepared.fn, max_seq_len=prepared.max_seq_len)
    assert fast.tokens == generate(model, [1, 22557, 1055], config).tokens


@pytest.mark.slow
def test_second_run_loads_the_compiled_step_from_m7b_home(tiny_release_src, tmp_path) -> None:
    env = {**os.environ, "M7B_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)

    def run(decode: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "m7b", "run", str(tiny_release_src), "-p", "Hello, my name is"]
            + ["--max-tokens", "12", "--device", "cpu", "--dtype", "float32", "--decode", decode, "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        assert "prepared in" in proc.stderr  # the preparation is reported on its own line
        return json.loads(proc.stdout)

    first, second, eager = run("compile"), run("compile"), run("eager")
    assert first["decode_mode"] == second["decode_mode"] == "compile"
    assert first["compile_cache"] == "miss" and first["fx_graph_cache_misses"] >= 1
    assert second["compile_cache"] == "hit" and second["fx_graph_cache_hits"] >= 1
    assert second["fx_graph_cache_misses"] == 0  # nothing compiled again
    folder = Path(first["compile_cache_dir"])
    assert folder.is_relative_to(tmp_path / "home" / "cache" / "compile") and (folder / READY_NAME).is_file()
    assert first["token_ids"] == second["token_ids"] == eager["token_ids"]
    for record in (first, second):
        assert record["prepare_s"] > 0 and record["decode_tok_s"] > 0 and record["load_s"] > 0


def test_a_compile_cache_folder_the_disk_refuses_is_a_storage_error(tiny_runtime, tmp_path) -> None:
    from m7b.errors import StorageError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="could not create the compile cache folder") as raised:
        prepare_decode(tiny_runtime.model, "compile", 8, blocker)
    assert "--" not in str(raised.value)  # a library message names no CLI flag
    assert blocker.read_text() == "not a folder"


# --- the CUDA-graph step (GPU-only): what of it runs on the CPU ------------------------------------------------


def test_the_graph_step_is_refused_on_the_cpu_before_any_cache_is_allocated(tiny_runtime) -> None:
    model = tiny_runtime.model
    assert GPU_ONLY_MODES == ("graph",)
    model.setup_caches(1, 10)
    with pytest.raises(InvalidInputError, match="CUDA graphs need a CUDA device, found cpu.*GPU-only") as raised:
        prepare_decode(model, "graph", 40)
    assert raised.value.exit_code == 4 and "--" not in str(raised.value)
    assert model.max_seq_len == 10 and model.capacity == 10  # the caches were not set up for the refused step
    with pytest.raises(InvalidInputError, match="serve the eager CPU step, not the graph step"):
        prepare_decode(model, "graph", 40, None, "m7b")


def test_a_capture_needs_the_caches_set_up_first(tiny_runtime, tiny_state) -> None:
    fresh = build_model(tiny_runtime.args, dict(tiny_state), torch.device("cpu"), torch.float32)
    assert fresh.capacity == 0
    # the checks come before any CUDA call, so a CUDA device object is enough to reach the second one here
    with pytest.raises(InvalidInputError, match=r"set up the caches \(model.setup_caches\) before capturing"):
        check_capturable(fresh, torch.device("cuda"))
    with pytest.raises(InvalidInputError, match="found cpu"):
        check_capturable(fresh, torch.device("cpu"))
    fresh.setup_caches(1, 8)
    with pytest.raises(InvalidInputError, match="found cpu"):
        check_capturable(fresh, torch.device("cpu"))
    check_capturable(fresh, torch.device("cuda"))  # CUDA and caches: capturable


def _eager_replay(model, token: torch.Tensor, pos: torch.Tensor, out: torch.Tensor):
    """What the captured graph does on replay, run eagerly: the step over the static buffers, into `out`."""
    return lambda: out.copy_(decode_one_token(model, token, pos))


def test_the_static_step_copies_each_input_in_and_returns_its_one_output_buffer(tiny_runtime) -> None:
    """The graph step's bookkeeping, with the CUDA replay replaced by the same work run eagerly: each call's token
    and position reach the replayed step, past the window (W=16) and round the rolling cache."""
    model, cpu = tiny_runtime.model, torch.device("cpu")
    token, pos = static_inputs(cpu)
    assert token.shape == (1, 1) and pos.shape == (1,) and token.dtype == pos.dtype == torch.long
    out = torch.empty(1, model.args.vocab_size)
    step = StaticStep(token, pos, out, _eager_replay(model, token, pos, out))
    other_token, other_pos = static_inputs(cpu)  # a replay over buffers the step does not fill: a broken capture
    stale_out = torch.empty_like(out)
    stale = StaticStep(token, pos, stale_out, _eager_replay(model, other_token, other_pos, stale_out))
    ids = synthetic_ids(40, model.args.vocab_size, 0, cpu)
    model.setup_caches(1, 40)
    eager = teacher_forced_logits(model, ids, 8, decode_one_token)
    assert (teacher_forced_logits(model, ids, 8, step) - eager).abs().max().item() <= 1e-5
    assert (teacher_forced_logits(model, ids, 8, stale) - eager).abs().max().item() > 1e-2
    with torch.inference_mode():
        first = step(model, ids[:, :1], torch.tensor([0]))
        second = step(model, ids[:, 1:2], torch.tensor([1]))
    assert first is second is out  # the same buffer every call: the caller reads it before the next call
    assert int(token.item()) == int(ids[0, 1]) and int(pos.item()) == 1


def test_the_static_step_refuses_inputs_of_another_shape(tiny_runtime) -> None:
    token, pos = static_inputs(torch.device("cpu"))
    calls = []
    step = StaticStep(token, pos, torch.zeros(1, 4), lambda: calls.append(1))
    for bad_token, bad_pos in ((torch.ones(2, 1, dtype=torch.long), pos), (token, torch.tensor([0, 1]))):
        with pytest.raises(InvalidInputError, match=r"takes a token of shape \(1, 1\) and a position of shape \(1,\)"):
            step(tiny_runtime.model, bad_token, bad_pos)
    assert not calls and int(token.item()) == 0  # nothing copied, nothing replayed
