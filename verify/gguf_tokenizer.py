"""The GGUF vocabulary of a release's `tokenizer.model`, as llama.cpp's `convert_hf_to_gguf.py` writes it
(`_create_vocab_sentencepiece` and `gguf.SpecialVocab` on m7b's Hugging Face layout): every piece's UTF-8 bytes,
score and type (unknown, control, unused, byte, else normal), padded to the model's vocabulary with `[PADn]`
unused pieces; bos/eos/unk ids from the model; a BOS added in front of a prompt, no EOS behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from m7b.errors import InvalidInputError

from .tokenizer_model import load_sentencepiece

# gguf.TokenType (llama.cpp's llama_token_type): the values convert_hf_to_gguf.py writes
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
PAD_SCORE = -10000.0  # the converter's score for the ids the tokenizer has no piece for
MAX_PIECE_BYTES = 1 << 16  # a GGUF string may be longer; a tokenizer piece this long is no tokenizer's


@dataclass(frozen=True)
class GGUFVocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int
    add_bos: bool = True
    add_eos: bool = False


def gguf_vocab(model: Path, vocab_size: int) -> GGUFVocab:
    """The vocabulary `tokenizer.model` gives a GGUF file for a model with `vocab_size` embedding rows.

    Refused (InvalidInputError naming the file, nothing written): a tokenizer with more pieces than the model has
    rows (llama.cpp would index past the embedding), and a piece that is not a short UTF-8 string.
    """
    sp = load_sentencepiece(model)  # an empty, truncated or garbage file: InvalidInputError naming it
    size = sp.get_piece_size()
    if size > vocab_size:
        raise InvalidInputError(
            f"{model}: {size:,} pieces, but params.json's vocab_size is {vocab_size:,}: the checkpoint has no "
            "embedding for the rest — restore the release's tokenizer.model"
        )
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [PAD_SCORE] * vocab_size
    types = [UNUSED] * vocab_size
    for i in range(size):
        piece = sp.id_to_piece(i)
        try:
            text = piece.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInputError(
                f"{model}: piece {i} is not UTF-8 text ({piece[:40]!r}); restore the release's tokenizer.model"
            ) from exc
        if len(text) > MAX_PIECE_BYTES:
            raise InvalidInputError(
                f"{model}: piece {i} is {len(text):,} bytes long, over {MAX_PIECE_BYTES:,}; restore the "
                "release's tokenizer.model"
            )
        tokens[i] = text
        scores[i] = sp.get_score(i)
        types[i] = (
            UNKNOWN
            if sp.is_unknown(i)
            else CONTROL
            if sp.is_control(i)
            else UNUSED
            if sp.is_unused(i)
            else BYTE
            if sp.is_byte(i)
            else NORMAL
        )
    return GGUFVocab(tokens, scores, types, sp.bos_id(), sp.eos_id(), sp.unk_id())
