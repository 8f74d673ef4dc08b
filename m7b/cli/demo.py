"""`m7b demo`: the whole pipeline on a small synthetic release over a real local swarm."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .options import JsonLinesOption
from .render import emit_json, err, out


def demo(
    work: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Folder for everything the demo makes (default: a new "
            "folder under the system's temp dir, kept afterwards).",
        ),
    ] = None,
    preset: Annotated[
        str, typer.Option(metavar="PRESET", help="Synthetic release preset, as for `m7b release synth --preset`.")
    ] = "small",
    json_out: JsonLinesOption = False,
) -> None:
    """Publish a synthetic release, seed it behind a real tracker, fetch, verify, convert, run, smoke-test it,
    and serve it back to an independent client (aria2c)."""
    from .demo_pipeline import DemoStep, run_demo

    folder = work or Path(tempfile.mkdtemp(prefix="m7b-demo-"))

    def report(step: DemoStep) -> None:
        if json_out:
            emit_json({"step": step.name, "ok": step.ok, "seconds": round(step.seconds, 3), "summary": step.summary})
        else:
            mark = "[green]ok[/green]" if step.ok else "[red]FAILED[/red]"
            err.print(f"{mark} {step.name:17s} {step.seconds:6.2f} s  {step.summary}", highlight=False)

    if not json_out:
        err.print(f"m7b demo in {folder}")
    steps = run_demo(folder, preset, report)
    if not json_out:
        table = Table(title="m7b demo", title_justify="left")
        for col in ("step", "result", "seconds"):
            table.add_column(col)
        for s in steps:
            table.add_row(s.name, "ok" if s.ok else "FAILED", f"{s.seconds:.2f}")
        out.print(table)
        out.print(f"everything is in {folder} (user store: {folder / 'user-home'})")
