"""The release's sentencepiece tokenizer, and streaming detokenisation that never splits a UTF-8 character."""

from __future__ import annotations

import codecs
from pathlib import Path

from m7b.errors import InvalidInputError
from m7b.verify.tokenizer_model import load_sentencepiece

# What sentencepiece prints for an unknown piece.
UNK_SURFACE = " \u2047 "


class Tokenizer:
    def __init__(self, path: Path) -> None:
        path = Path(path)
        self.path = path
        self.sp = load_sentencepiece(path)
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids for `text`, with BOS first as the reference does. Text that gives no tokens is an error."""
        ids = self.sp.encode(text)
        if not ids:
            raise InvalidInputError(
                f"the prompt {text!r} tokenises to nothing (no tokens besides BOS); give a prompt with some text"
            )
        return [self.bos_id, *ids] if bos else ids

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def piece_bytes(self, token_id: int) -> bytes:
        """The bytes one token contributes to the text (▁ is a space; byte-fallback pieces are one raw byte)."""
        sp = self.sp
        if sp.is_byte(token_id):
            return bytes([int(sp.id_to_piece(token_id)[3:5], 16)])
        if sp.is_control(token_id):
            return b""
        if sp.is_unknown(token_id):
            return UNK_SURFACE.encode()
        return sp.id_to_piece(token_id).replace("\u2581", " ").encode("utf-8")

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Turns generated ids into text as they come; bytes of an unfinished UTF-8 character wait for the rest.

    The text continues the prompt, so a leading space of the first piece is kept.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text that `token_id` completes ("" while a multi-byte character is still partial)."""
        return self._decoder.decode(self.tokenizer.piece_bytes(token_id))

    def flush(self) -> str:
        """Whatever is left at the end (an unfinished character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)
