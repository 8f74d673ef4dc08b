"""The one safe reader of a release's `tokenizer.model`: what convert checks and the runtime tokenizes with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from m7b.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from sentencepiece import SentencePieceProcessor

TOKENIZER_NAME = "tokenizer.model"


def load_sentencepiece(path: Path) -> SentencePieceProcessor:
    """The sentencepiece model at `path`: NotFoundError when absent, InvalidInputError naming the file for an empty,
    truncated or garbage one (sentencepiece raises RuntimeError/OSError; a model without its control pieces passes
    sentencepiece but cannot frame a prompt). The one place m7b opens a tokenizer.model."""
    import sentencepiece

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path} not found: a release folder must hold {TOKENIZER_NAME}")
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InvalidInputError(
            f"{path} is not a sentencepiece model ({reason}); it is empty, truncated or another file — restore "
            f"the release's {TOKENIZER_NAME}"
        ) from exc
    size = sp.get_piece_size()
    ids = (sp.unk_id(), sp.bos_id(), sp.eos_id())
    if size < 3 or any(not 0 <= i < size for i in ids):
        raise InvalidInputError(
            f"{path} is a sentencepiece model without unk, bos and eos pieces ({size} pieces, ids {ids}); "
            f"restore the release's {TOKENIZER_NAME}"
        )
    return sp
