"""License evidence: is there Apache-2.0 text in the release, where, and does anything contradict it?

Exact canonical text is recognised by its sha256 (DESIGN.md); anything else by SPDX-style normalised matching
(case, whitespace, punctuation, http/https and licence/license spellings ignored; the appendix is optional).
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

APACHE_SPDX = "Apache-2.0"
CANONICAL_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
CANONICAL_SIZE = 11358
CANONICAL_RESOURCE = "Apache-2.0.txt"
MAX_TEXT_BYTES = 4 << 20

_CANDIDATE = re.compile(r"^(licen[cs]e|copying|notice|readme|release)([._-].*)?$", re.IGNORECASE)
_MENTION = re.compile(r"apache[\s_-]*(license[\s,_-]*)?(version[\s_-]*)?v?2(\.0)?\b", re.IGNORECASE)
# Phrases that name a different license or restrict use in ways Apache-2.0 does not.
_CONTRADICTIONS = {
    "MIT": re.compile(r"\bMIT License\b|\blicen[cs]e:\s*MIT\b", re.IGNORECASE),
    "GPL": re.compile(r"GNU (Affero |Lesser )?General Public License|\b(A|L)?GPL-[23]", re.IGNORECASE),
    "CC-BY-NC": re.compile(r"\bCC[- ]BY[- ]NC\b|NonCommercial", re.IGNORECASE),
    "non-commercial": re.compile(
        r"\bnon[- ]commercial (use|purposes) only\b|\bresearch (use|purposes) only\b", re.IGNORECASE
    ),
    "Llama community license": re.compile(r"LLAMA \d(\.\d)? COMMUNITY LICENSE", re.IGNORECASE),
    "Mistral Research License": re.compile(r"Mistral (AI )?Research License|\bMNPL\b", re.IGNORECASE),
}
_LICENSE_LINE = re.compile(r"^\s*licen[cs]e\s*[:=]\s*\"?([A-Za-z0-9.+-]+)", re.IGNORECASE | re.MULTILINE)


class Evidence(enum.StrEnum):
    CANONICAL = "canonical"  # the exact canonical text (by sha256), as a file or inside one
    NORMALISED = "normalised"  # the full terms, matched after SPDX-style normalisation
    MENTION = "mention"  # the license named (e.g. "license: Apache-2.0") but its text absent
    CONTRADICTION = "contradiction"  # text naming another license or restricting use


@dataclass(frozen=True)
class LicenseEvidence:
    path: str
    kind: Evidence
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "kind": str(self.kind), "detail": self.detail}


def canonical_text() -> bytes:
    """The canonical Apache-2.0 text shipped inside m7b.verify (checked by hash in the tests)."""
    return resources.files("m7b.verify").joinpath(CANONICAL_RESOURCE).read_bytes()


def normalise(text: str) -> str:
    text = text.lower().replace("licence", "license").replace("https://", "http://")
    text = re.sub(r"[^a-z0-9]+", " ", text)
    return " ".join(text.split())


@cache
def _canonical_terms() -> str:
    """The normalised terms (title to END OF TERMS AND CONDITIONS): what a copy must contain."""
    norm = normalise(canonical_text().decode("utf-8"))
    end = "end of terms and conditions"
    return norm[norm.index("apache license version 2 0") : norm.index(end) + len(end)]


def classify(data: bytes) -> list[tuple[Evidence, str]]:
    """Every kind of evidence one text holds."""
    found: list[tuple[Evidence, str]] = []
    canonical = canonical_text()
    if hashlib.sha256(data).hexdigest() == CANONICAL_SHA256:
        found.append((Evidence.CANONICAL, f"the canonical Apache-2.0 text (sha256 {CANONICAL_SHA256[:12]}…)"))
    elif canonical in data:
        found.append(
            (
                Evidence.CANONICAL,
                f"contains the canonical Apache-2.0 text byte for byte (at offset {data.index(canonical)})",
            )
        )
    text = data.decode("utf-8", errors="replace")
    if not found and _canonical_terms() in normalise(text):
        found.append((Evidence.NORMALISED, "the full Apache-2.0 terms, matched after normalisation"))
    if not found and (mention := _MENTION.search(text)):
        found.append((Evidence.MENTION, f"names the license ({mention.group(0)!r}) without its text"))
    for name, pattern in _CONTRADICTIONS.items():
        match = pattern.search(text)
        if match:
            found.append((Evidence.CONTRADICTION, f"mentions {name} ({match.group(0)!r})"))
    for match in _LICENSE_LINE.finditer(text):
        declared = match.group(1)
        if normalise(declared) not in ("apache 2 0", "apache 2", "apache2 0"):
            found.append((Evidence.CONTRADICTION, f"declares license {declared!r}"))
    return found


def find_evidence(root: Path) -> list[LicenseEvidence]:
    """License evidence in the top folder of a release (LICENSE*, COPYING*, NOTICE*, README*, RELEASE)."""
    out: list[LicenseEvidence] = []
    root = Path(root)
    if not root.is_dir():
        return out
    for path in sorted(root.iterdir()):
        if not path.is_file() or not _CANDIDATE.match(path.name) or path.stat().st_size > MAX_TEXT_BYTES:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        out += [LicenseEvidence(path.name, kind, detail) for kind, detail in classify(data)]
    return out
