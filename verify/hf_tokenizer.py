"""`tokenizer.json` for the Hugging Face layout, built from the release's sentencepiece `tokenizer.model`.

transformers 5 cannot load a bare `tokenizer.model` without protobuf (it then mistakes it for a tiktoken file), so
the hf layout ships the fast tokenizer itself: sentencepiece's BPE pieces and scores become a `tokenizers` BPE
model whose merges are ranked by the merged piece's score (the order sentencepiece merges in), with byte fallback,
the `▁` dummy prefix and `<s>` added in front. The result is checked against sentencepiece on a fixed sample before
it is used; a tokenizer that does not reproduce sentencepiece is not written. As in every Hugging Face tokenizer
(Mistral's own included), the text `<s>`, `</s>` or `<unk>` inside a prompt encodes as that special token, where
sentencepiece spells it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentencepiece import SentencePieceProcessor
    from tokenizers import Tokenizer

from .tokenizer_model import load_sentencepiece

SPACE = "\u2581"  # sentencepiece's visible space, '▁'

# Each sample exercises something a wrong conversion gets wrong: merge order, the dummy prefix, runs of spaces,
# newlines and tabs, digits, byte fallback (characters outside the vocabulary), and special-looking text.
SAMPLES = (
    "Hello world, this is m7b.",
    " leading space",
    "two  spaces and   three",
    "trailing space ",
    "line one\nline two\n\nblank line\ttab",
    "1234567890 3.14159 1,000,000",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé façade naïve — “quotes” and ‘single’",
    "日本語のテキストと中文文本",
    "emoji 🦙🚀 and symbols ∑∫√ ©®™",
    "[INST] a chat turn [/INST] and an answer",
    "def f(x):\n    return x ** 2  # code",
    "Grüße aus Köln; привет; γειά σου; مرحبا",
    "a",
    "",
)


@dataclass(frozen=True)
class FastTokenizer:
    json: str  # the tokenizer.json text
    checked: int  # samples that tokenized and decoded exactly as sentencepiece does


class TokenizerConversionError(ValueError):
    """The fast tokenizer built from tokenizer.model does not reproduce sentencepiece."""


def build(model: Path) -> FastTokenizer:
    """The `tokenizer.json` text for sentencepiece model `model`, checked against sentencepiece on `SAMPLES`."""
    sp = load_sentencepiece(model)  # InvalidInputError naming the file for an empty, truncated or garbage model
    try:
        return _build(sp, model)
    except TokenizerConversionError:
        raise
    except Exception as exc:  # the tokenizers library refusing what sentencepiece accepted: leave tokenizer.json out
        raise TokenizerConversionError(
            f"{model}: the fast tokenizer could not be built ({type(exc).__name__}: {str(exc)[:200]}); "
            "tokenizer.json is left out"
        ) from exc


def _build(sp: SentencePieceProcessor, model: Path) -> FastTokenizer:
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    size = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(size)}
    if len(vocab) != size:
        raise TokenizerConversionError(
            f"{model}: {size} pieces but only {len(vocab)} distinct; expected a "
            "sentencepiece BPE model with unique pieces"
        )
    unk = sp.id_to_piece(sp.unk_id())
    bos, eos = sp.id_to_piece(sp.bos_id()), sp.id_to_piece(sp.eos_id())
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=_merges(sp, vocab), unk_token=unk, fuse_unk=True, byte_fallback=True))
    specials = [sp.id_to_piece(i) for i in range(size) if sp.is_control(i) or sp.is_unknown(i)]
    tokenizer.add_special_tokens([AddedToken(p, normalized=False, special=True) for p in specials])
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, sp.bos_id())]
    )
    del eos  # </s> is a special token above; generation appends it, encoding does not
    checked = _check(sp, tokenizer, model)
    return FastTokenizer(tokenizer.to_str(pretty=True) + "\n", checked)


def _merges(sp: SentencePieceProcessor, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every split of every piece into two pieces, ranked by the merged piece's score (highest first), ties by id.

    sentencepiece's BPE repeatedly merges the adjacent pair whose concatenation has the highest score; a BPE whose
    merge ranks follow those scores applies the same merges in the same order.
    """
    ranked: list[tuple[float, int, int, int, str, str]] = []
    for piece, index in vocab.items():
        if sp.is_control(index) or sp.is_unknown(index) or sp.is_byte(index):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-sp.get_score(index), index, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _check(sp: SentencePieceProcessor, tokenizer: Tokenizer, model: Path) -> int:
    for text in SAMPLES:
        want = [sp.bos_id(), *sp.encode(text)]
        got = tokenizer.encode(text).ids
        if got != want:
            raise TokenizerConversionError(
                f"{model}: the fast tokenizer encodes {text!r} as {got[:12]}… where sentencepiece gives "
                f"{want[:12]}…; tokenizer.json is left out (transformers can still use tokenizer.model with "
                "sentencepiece and protobuf installed)"
            )
        if tokenizer.decode(got, skip_special_tokens=True) != sp.decode(want[1:]):
            raise TokenizerConversionError(
                f"{model}: the fast tokenizer decodes {text!r} differently from "
                "sentencepiece; tokenizer.json is left out"
            )
    return len(SAMPLES)
