"""`m7b release ...`: the publisher's side — synthetic releases for tests, torrents and manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from m7b.cli import app
from m7b.render import emit_json, err, progress_bars

release_app = typer.Typer(help="Make releases: synthetic ones for testing, torrents and manifests for publishing.",
                          no_args_is_help=True)
app.add_typer(release_app, name="release")


@release_app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to create (must not exist, or be empty).")],
    preset: Annotated[str, typer.Option(help="Size preset: tiny, small, bench-cpu, bench-2g, mistral-7b.")] = "tiny",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 0,
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer.model to ship (default: the real one "
                                                          "from the mistral-common package).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Write a synthetic release laid out exactly like Mistral 7B v0.1 (random bf16 weights, real tokenizer)."""
    from m7b.synth import synthesize

    with progress_bars(enabled=not json_out) as progress:
        made = synthesize(out, preset, seed, tokenizer=tokenizer, progress=progress)
    doc = {"path": str(made.path), "preset": made.preset, "seed": made.seed,
           "parameters": made.architecture.parameter_count(), "checkpoint_tensor_bytes": made.checkpoint_bytes,
           "params": made.architecture.to_params()}
    if json_out:
        emit_json(doc)
    else:
        err.print(f"wrote synthetic release [bold]{made.path}[/bold] (preset {preset}, seed {seed}, "
                  f"{doc['parameters']:,} parameters)")
