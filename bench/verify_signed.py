"""Benchmark what a signature costs `m7b verify`: the bench-2g synthetic release (2.16 GB) verified signed and
unsigned, in the same run, alternating (target: signed <= 1.05x unsigned).

    flock /tmp/m7b-bench.lock python bench/verify_signed.py [--work DIR] [--runs 3]

The release is made as a publisher makes it (`create_release` with a P-256 key: DIR.torrent, DIR.toml naming the
key, DIR.sig); "unsigned" is the same folder with DIR.sig moved away. Both run the library's `verify` in-process
on a page-cached release (read once before timing), so the difference is the signature alone: reading the bundle,
one ECDSA check, and comparing its digests with the sha256 verify's one read already computed. Prints one JSON
document; best of --runs for each.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from m7b.manifests.writer import manifest_to_toml
from m7b.mirror.create import create_release
from m7b.store import Store
from m7b.synth import synthesize
from m7b.verify.release import verify

NAME = "bench-2g"


def prepare(work: Path) -> Path:
    root = work / NAME
    if not (root / "consolidated.00.pth").is_file():
        synthesize(root, "bench-2g", seed=0)
    made = create_release(root, piece_size=4 << 20, sign_key=ec.generate_private_key(ec.SECP256R1()))
    (work / f"{NAME}.torrent").write_bytes(made.torrent)
    (work / f"{NAME}.toml").write_text(manifest_to_toml(made.manifest))
    assert made.signature is not None
    (work / f"{NAME}.sig").write_bytes(made.signature)
    for f in root.iterdir():  # into the page cache
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass
    return root


def timed(root: Path, store: Store, expect: str) -> float:
    started = time.perf_counter()
    report = verify(str(root), store).report
    seconds = time.perf_counter() - started
    doc = report.to_json()
    assert doc["verdict"] == "ok" and doc["signature"]["verdict"] == expect, doc["findings"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/m7b-bench-signed"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    root = prepare(args.work)
    store = Store(args.work / "home")
    sig, away = args.work / f"{NAME}.sig", args.work / f"{NAME}.sig.away"
    signed, unsigned = [], []
    timed(root, store, "signed")  # warm: imports, the forkserver
    for _ in range(args.runs):
        signed.append(timed(root, store, "signed"))
        os.replace(sig, away)
        try:
            unsigned.append(timed(root, store, "unsigned"))
        finally:
            os.replace(away, sig)
    best_signed, best_unsigned = min(signed), min(unsigned)
    # the signature's own cost, alone: read the bundle, one ECDSA check, compare with the report's sha256
    from m7b.release import release_for
    from m7b.verify.release import release_trust

    trust = release_trust(store, release_for(str(root), store))
    report = verify(str(root), store).report
    digests = {f.path: f.sha256 for f in report.files if f.sha256}
    started = time.perf_counter()
    for _ in range(100):
        assert trust.check(digests).verdict == "signed"
    check_ms = (time.perf_counter() - started) * 10
    print(
        json.dumps(
            {
                "release": NAME,
                "bytes": sum(f.stat().st_size for f in root.iterdir()),
                "runs": args.runs,
                "signed_s": round(best_signed, 3),
                "unsigned_s": round(best_unsigned, 3),
                "ratio": round(best_signed / best_unsigned, 3),
                "signature_check_ms": round(check_ms, 3),
                "target": 1.05,
                "all_signed_s": [round(s, 3) for s in signed],
                "all_unsigned_s": [round(s, 3) for s in unsigned],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
