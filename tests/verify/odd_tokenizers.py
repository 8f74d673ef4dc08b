"""Hostile tokenizer.model files: the real one edited through sentencepiece's own protobuf schema (pieces with
control characters, NULs, empty or very long text, changed types, extra pieces)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

# piece id -> text: each odd in its own way, all in the normal piece range of the real tokenizer
ODD_PIECES: dict[int, str] = {
    1000: "\x01\x02\x7f",  # control characters
    1001: "\x1b[31mred\x1b[0m",  # terminal escapes
    1002: "\t\r\n",  # whitespace a reader may strip
    1003: "🦙" * 200,  # 800 bytes of 4-byte characters
    1004: "x" * 5000,  # a very long piece (sentencepiece refuses 20,000)
    1005: "<0xZZ>",  # a normal piece that looks like a byte piece
    1006: "\u2581" * 40,  # sentencepiece's visible space, 40 times
    1007: "<s><unk>",  # a normal piece that looks like control tokens
}
# pieces sentencepiece itself refuses to load: convert says so, naming the file, and writes nothing
REFUSED_PIECES: dict[str, str] = {"empty": "", "NUL": "a\x00b", "20,000 characters": "x" * 20000, "duplicate": "<s>"}


def edited(
    path: Path,
    *,
    pieces: Mapping[int, str] | None = None,
    types: Mapping[int, int] | None = None,
    add: Iterable[str] = (),
) -> Path:
    """Rewrite the sentencepiece model at `path` in place: replace pieces' text, their types
    (ModelProto.SentencePiece.Type: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte), append pieces."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.ParseFromString(path.read_bytes())
    for i, text in (pieces or {}).items():
        model.pieces[i].piece = text
    for i, kind in (types or {}).items():
        model.pieces[i].type = kind
    for text in add:
        model.pieces.add(piece=text, score=-1e6, type=1)
    path.write_bytes(model.SerializeToString())
    return path
