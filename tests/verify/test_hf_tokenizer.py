"""tokenizer.json built from the real Mistral tokenizer.model (shipped in mistral-common) tokenizes as sentencepiece."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer

from m7b.synth import bundled_tokenizer
from m7b.verify import hf_tokenizer
from m7b.verify.convert import convert_release

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;:!?'\"\n\t-_()[]{}éüßçñ日本中文🦙€→▁  "


def _texts(count: int) -> list[str]:
    rng = random.Random(7)
    words = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8").split()
    texts = []
    for i in range(count):
        if i % 2:
            texts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 48))))
        else:
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))))
    return texts


@pytest.mark.slow
def test_fast_tokenizer_equals_sentencepiece_on_2000_texts() -> None:
    built = hf_tokenizer.build(bundled_tokenizer())
    assert built.checked == len(hf_tokenizer.SAMPLES)
    tok = Tokenizer.from_str(built.json)
    sp = spm.SentencePieceProcessor(model_file=str(bundled_tokenizer()))
    differ = [
        t
        for t in _texts(2000)
        if tok.encode(t).ids != [sp.bos_id(), *sp.encode(t)]
        or tok.decode(tok.encode(t).ids, skip_special_tokens=True) != sp.decode(sp.encode(t))
    ]
    assert differ == []
    assert hf_tokenizer.build(bundled_tokenizer()).json == built.json  # deterministic


def test_a_conversion_that_disagrees_with_sentencepiece_is_left_out(
    tiny_release_src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merges in the wrong order tokenize differently: the check refuses them, convert leaves tokenizer.json out
    and says why, and the rest of the hf folder is complete."""
    real_merges = hf_tokenizer._merges
    monkeypatch.setattr(hf_tokenizer, "_merges", lambda sp, vocab: real_merges(sp, vocab)[::-1])
    with pytest.raises(hf_tokenizer.TokenizerConversionError, match="sentencepiece gives"):
        hf_tokenizer.build(bundled_tokenizer())
    result = convert_release(tiny_release_src, tmp_path / "hf", "hf")
    assert not (tmp_path / "hf" / "tokenizer.json").exists() and "tokenizer.json" not in result.files
    assert any("tokenizer.json is left out" in note for note in result.notes)
    assert (tmp_path / "hf" / "tokenizer.model").is_file() and (tmp_path / "hf" / "SHA256SUMS").is_file()
