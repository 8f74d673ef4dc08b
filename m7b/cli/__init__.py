"""The `m7b` command line: the typer app (`app`), shared options, output and the live displays; one module per
command group. Nothing outside this package imports it."""
