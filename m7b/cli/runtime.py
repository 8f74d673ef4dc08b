"""`m7b run` and `m7b smoke`: generate from a release, and check that its runtime behaves."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from m7b.errors import MismatchError
from m7b.store import Store

from .options import DeviceOption, DtypeOption, JsonOption, ReleaseArg, fail_after_document, note
from .render import emit_json, err, out, show

if TYPE_CHECKING:
    from m7b.runtime.loader import Runtime

DEFAULT_RELEASE = "mistral-7b-v0.1"

DecodeOption = Annotated[
    str,
    typer.Option(
        "--decode",
        metavar="auto|eager|compile|graph",
        help="The decode step: auto (compiled with CUDA graphs on CUDA, eager on the CPU), eager, compile or graph "
        "(a captured CUDA graph). A compile is paid once per model shape, dtype, device and torch version: it is "
        "kept under M7B_HOME/cache/compile and loaded by later runs.",
    ),
]

CpuKernelsOption = Annotated[
    str,
    typer.Option(
        "--cpu-kernels",
        metavar="auto|m7b|torch",
        help="The eager CPU decode step's kernels for bf16 weights (matrix-vector products, RMSNorm, SwiGLU): auto "
        "(m7b's when the CPU has AVX2 and FMA and a C compiler is found, else torch's), m7b or torch. m7b's are "
        "built once into M7B_HOME/cache/kernels.",
    ),
]


WeightsOption = Annotated[
    str | None,
    typer.Option(
        "--weights",
        metavar="int8|int4",
        help="Run on weight-only quantized weights: int8 (per output channel) or int4 (groups of 32, as llama.cpp's "
        "Q4_0); made once from the release's own weights and kept in M7B_HOME/cache/quantized. Without it, the "
        "release's own precision.",
    ),
]


def _load(
    release: str,
    device: str,
    dtype: str | None,
    window: int | None = None,
    weights: str | None = None,
    on_size: Callable[[Any], None] | None = None,
) -> Runtime:
    from m7b.runtime.loader import load_release

    return load_release(
        release, device=device, dtype=dtype, window=window, weights=weights, on_note=note, on_size=on_size
    )


def _weights_line(rt: Runtime) -> str:
    """What a quantized run says first: the scheme, the bytes a token reads, where the weights came from."""
    from m7b.runtime.quantized_linear import step_bytes
    from m7b.sizes import format_bytes

    q = rt.quantized
    if q is None:
        return ""
    made = {"hit": "from the cache", "built": "quantized now, cached", "rebuilt": "rebuilt", "memory": "in memory"}
    return (
        f"weights {q.scheme} (weight-only, not the release's own precision): {len(q.weights)} linears, "
        f"{len(q.kept)} kept in {str(rt.dtype).removeprefix('torch.')}; {format_bytes(step_bytes(rt.model))} read "
        f"per token; {made.get(q.cache, q.cache)} in {q.seconds:.2f} s"
    )


def run(
    prompt: Annotated[str, typer.Option("--prompt", "-p", metavar="TEXT", help="The text to continue (BOS is added).")],
    release: ReleaseArg = DEFAULT_RELEASE,
    max_tokens: Annotated[
        int, typer.Option(metavar="N", help="Most tokens to generate (stops early at end-of-sequence).")
    ] = 256,
    temperature: Annotated[
        float, typer.Option(metavar="NUMBER", help="0 for greedy; higher samples more freely.")
    ] = 0.0,
    top_p: Annotated[
        float,
        typer.Option(
            metavar="NUMBER",
            help="Nucleus sampling: keep the smallest set of tokens with this "
            "probability mass (with --temperature > 0).",
        ),
    ] = 1.0,
    seed: Annotated[int, typer.Option(metavar="N", help="Sampling seed: the same seed gives the same tokens.")] = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = None,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            metavar="N", help="Prefill chunk in tokens (default: the window, at most 4096; maximum: the window)."
        ),
    ] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Keep going past end-of-sequence.")] = False,
    decode: DecodeOption = "auto",
    compile_decode: Annotated[bool, typer.Option("--compile", help="Same as --decode compile.")] = False,
    cpu_kernels: CpuKernelsOption = "auto",
    weights: WeightsOption = None,
    json_out: JsonOption = False,
) -> None:
    """Complete a prompt: the text streams to stdout; preparation time, TTFT, prefill and decode tok/s go to
    stderr."""
    import time

    import torch

    from m7b.runtime.complete import complete
    from m7b.runtime.generate import GenerationConfig
    from m7b.runtime.sampling import SamplingConfig

    started = time.perf_counter()

    config = GenerationConfig(
        max_tokens=max_tokens,
        chunk_size=chunk_size,
        stop_at_eos=not ignore_eos,
        sampling=SamplingConfig(temperature=temperature, top_p=top_p, seed=seed),
    )
    from m7b.manifests.architecture import MAX_SEQ_LEN

    config.validate(MAX_SEQ_LEN)  # the loaded model's own bound (`Architecture.max_positions`) is checked by complete
    sizes: list[Any] = []

    def on_size(plan: Any) -> None:  # before the weights are read: their size, and the speed their active bytes allow
        sizes.append(plan)
        if not json_out:
            err.print(f"[cyan]size:[/cyan] {escape(plan.statement())}", highlight=False)

    rt = _load(release, device, dtype, weights=weights, on_size=on_size)
    load_s = time.perf_counter() - started
    if rt.quantized is not None and not json_out:
        err.print(f"[yellow]{escape(_weights_line(rt))}[/yellow]", highlight=False)
    from m7b.verify.provenance import provenance_line

    if (said := provenance_line(rt.folder)) is not None and not json_out:
        err.print(f"[cyan]provenance:[/cyan] {escape(said)}", highlight=False)

    def on_prepared(prepared: Any) -> None:
        err.print(
            f"loaded in {load_s:.2f} s · decode step {prepared.mode} prepared in {prepared.prepare_s:.2f} s"
            + (f" (compile cache {prepared.cache})" if prepared.cache != "none" else "")
            + (f" · CPU kernels {prepared.cpu_kernels}" if rt.device.type == "cpu" else ""),
            highlight=False,
        )

    def on_text(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    completion = complete(
        rt,
        prompt,
        config,
        decode="compile" if compile_decode else decode,
        cpu_kernels=cpu_kernels,
        on_prepared=on_prepared,
        on_text=None if json_out else on_text,
    )
    result, figures = completion.result, completion.figures()
    if json_out:
        emit_json(
            {
                "release": release,
                "path": str(rt.folder),
                "device": str(rt.device),
                "dtype": str(rt.dtype).removeprefix("torch."),
                "prompt": prompt,
                "text": completion.text,
                "prompt_token_ids": completion.prompt_token_ids,
                "token_ids": completion.token_ids,
                "load_s": round(load_s, 3),
                "size": sizes[0].to_json() if sizes else None,
                "first_token_at": round(completion.first_token_at or 0.0, 4),
                **figures,
                **completion.prepared.record(),
                **_weights_record(rt),
                "peak_device_bytes": torch.cuda.max_memory_allocated(rt.device) if rt.device.type == "cuda" else None,
            }
        )
        return
    sys.stdout.write("\n")
    sys.stdout.flush()
    err.print(
        f"time to first token {result.ttft_s * 1000:.1f} ms · prefill {result.prefill_tok_s:.1f} tok/s "
        f"({figures['prompt_tokens']} tokens) · decode {result.decode_tok_s:.1f} tok/s "
        f"({figures['generated_tokens']} tokens, stopped at {result.stop_reason}) · {rt.device} "
        f"{str(rt.dtype).removeprefix('torch.')}" + (f" · weights {rt.quantized.scheme}" if rt.quantized else ""),
        highlight=False,
    )


def _weights_record(rt: Runtime) -> dict[str, object]:
    """--json's weights fields: the scheme (None: the release's own precision) and the bytes a token reads."""
    from m7b.runtime.quantized_linear import step_bytes

    record: dict[str, object] = {"weights": None, "weight_bytes_per_token": step_bytes(rt.model)}
    if rt.quantized is not None:
        record |= rt.quantized.record()
    return record


def smoke(
    release: ReleaseArg = DEFAULT_RELEASE,
    device: DeviceOption = "auto",
    dtype: DtypeOption = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed for the sampled and synthetic token sequences.")] = 0,
    window: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Run the checks with this attention window instead of "
            "params.json's (the same code at a smaller W: for large "
            "models on the CPU).",
        ),
    ] = None,
    decode: Annotated[
        str,
        typer.Option(
            "--decode",
            metavar="auto|eager|compile|graph",
            help="Fast decode steps to check against the eager one and transformers, teacher-forced past the window: "
            "auto (on CUDA the compiled step and a captured CUDA graph; on the CPU the eager step on m7b's CPU "
            "kernels when they apply), compile, graph or eager (the eager step on the --cpu-kernels kernels).",
        ),
    ] = "auto",
    cpu_kernels: CpuKernelsOption = "auto",
    weights: WeightsOption = None,
    json_out: JsonOption = False,
) -> None:
    """The smoke-generation battery: a pass/fail table (GPU-only checks skipped, with the reason, elsewhere) and the
    decode tokens/s figure; exit code 5 when any check fails."""
    from m7b.progress import ProgressEvent, ignore_progress
    from m7b.runtime.complete import prepare_step
    from m7b.runtime.fast_decode import resolve_mode
    from m7b.runtime.smoke import PAST_WINDOW, run_smoke, smoke_span

    rt = _load(release, device, dtype, window, weights)
    if rt.quantized is not None:
        err.print(escape(_weights_line(rt)), highlight=False)
    if decode.strip().lower() == "auto":
        modes = ["compile", "graph"] if rt.device.type == "cuda" else ["eager"]
    else:
        modes = [resolve_mode(decode, rt.device)]
    store = Store.from_env()
    paths, prepared_len, prepare_s = {}, None, {}
    for mode in modes:
        prepared = prepare_step(rt.model, mode, smoke_span(rt.model) + PAST_WINDOW, store, cpu_kernels)
        if mode == "eager" and prepared.cpu_kernels == "torch":
            continue  # the eager step on torch's kernels is the reference itself
        name = f"CPU kernels {prepared.cpu_kernels}" if mode == "eager" else mode
        paths[name], prepared_len, prepare_s[name] = prepared.fn, prepared.max_seq_len, round(prepared.prepare_s, 3)
        err.print(f"decode step {name} prepared in {prepared.prepare_s:.2f} s", highlight=False)
    quantized_paths = {}
    if rt.quantized is not None:  # the fast paths are checked against the release's own precision instead
        quantized_paths, paths = paths, {}
    if json_out or not err.is_terminal:
        report = run_smoke(
            rt.model, rt.tokenizer, rt.dtype, seed, ignore_progress, decode_paths=paths, paths_max_seq_len=prepared_len
        )
    else:
        with err.status("smoke") as status:

            def on_check(event: ProgressEvent) -> None:
                status.update(f"smoke: {event.item} ({event.done}/{event.total})")

            report = run_smoke(
                rt.model, rt.tokenizer, rt.dtype, seed, on_check, decode_paths=paths, paths_max_seq_len=prepared_len
            )
    if rt.quantized is not None:
        from m7b.runtime.loader import load_runtime
        from m7b.runtime.quant_smoke import quantized_checks

        reference = load_runtime(rt.folder, rt.device, rt.dtype, args_override=rt.args)
        report.checks[:0] = quantized_checks(rt.model, reference.model, rt.quantized.scheme, seed, quantized_paths)
        del reference
    checks = [
        {
            "name": c.name,
            "passed": None if c.skipped else c.passed,
            "skipped": c.skipped or None,
            "detail": c.detail,
            "value": c.value,
        }
        for c in report.checks
    ]
    figures = [{"name": f.name, "value": round(f.value, 2), "unit": f.unit, "detail": f.detail} for f in report.figures]
    doc = {
        "release": release,
        "path": str(rt.folder),
        "device": str(rt.device),
        "dtype": str(rt.dtype).removeprefix("torch."),
        "window": report.window,
        **({"weights": rt.quantized.scheme} if rt.quantized is not None else {"weights": None}),
        "passed": report.passed,
        "decode_tok_s": round(report.decode_tok_s, 2),
        "prepare_s": prepare_s,
        "checks": checks,
        "figures": figures,
    }
    show(doc, json_out, _print_smoke)
    if not report.passed:
        failed = [c.name for c in report.failed]
        error = MismatchError(f"smoke: {len(failed)} of {len(report.checks)} checks failed: {'; '.join(failed)}")
        fail_after_document(error, json_out)


def _print_smoke(doc: dict[str, Any]) -> None:
    weights = f", weights {doc['weights']}" if doc.get("weights") else ""
    table = Table(title=f"smoke: {doc['path']} ({doc['device']}, {doc['dtype']}{weights}, W={doc['window']})")
    for col in ("check", "result", "detail"):
        table.add_column(col)
    for c in doc["checks"]:
        if c["skipped"]:
            result = f"[yellow]SKIP[/yellow] ({c['skipped']})"
        else:
            result = "[green]PASS[/green]" if c["passed"] else "[red]FAIL[/red]"
        table.add_row(c["name"], result, c["detail"])
    out.print(table)
    for f in doc["figures"]:
        out.print(f"{f['name']}: {f['value']:.1f} {f['unit']} ({f['detail']}; a figure, not a check)", highlight=False)
