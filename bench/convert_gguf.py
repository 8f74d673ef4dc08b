"""Benchmark `m7b convert --to gguf` (each --type) against llama.cpp's own way to the same files: m7b's hf output
through `convert_hf_to_gguf.py` (bf16, f16), then `llama-quantize` (q8_0, q4_0) of that bf16 file.

    flock /tmp/m7b-bench.lock python bench/convert_gguf.py --release DIR [--work DIR]

DIR is a release folder (e.g. bench-2g from `m7b release synth DIR --preset bench-2g`); llama.cpp comes from
scripts/build-llamacpp. Each contender runs as a subprocess; wall seconds, peak private memory (RssAnon, sampled
every 5 ms) and max RSS (which counts the mapped checkpoint) are printed as one JSON document, with m7b's seconds
over llama.cpp's for the same file (for q8_0/q4_0 llama.cpp's time is its converter's plus llama-quantize's: what
a user without m7b runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from verify_convert import timed

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--release", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    tools = Path(subprocess.run([str(ROOT / "scripts" / "build-llamacpp"), "--print-dir"], capture_output=True,
                                text=True, check=True).stdout.strip())  # fmt: skip
    work = Path(tempfile.mkdtemp(dir=args.work))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    py = [sys.executable, "-c"]
    results: dict[str, dict[str, float]] = {}

    def record(name: str, figures: tuple[float, int, int]) -> None:
        wall, private, rss = figures
        results[name] = {
            "seconds": round(wall, 2),
            "private_mb": round(private / 1e6, 1),
            "max_rss_mb": round(rss / 1e6),
        }

    try:
        for data in args.release.iterdir():
            with open(data, "rb") as fh:  # into the page cache: every contender reads from memory
                while fh.read(16 << 20):
                    pass
        convert = (
            "from m7b.verify.convert import convert_release as c; import sys; c(sys.argv[1], sys.argv[2], sys.argv[3])"
        )
        record("m7b hf (llama.cpp's input)", timed([*py, convert, str(args.release), str(work / "hf"), "hf"], env))
        for t in ("bf16", "f16", "q8_0", "q4_0"):
            record(f"m7b gguf {t}", timed([*py, convert, str(args.release), str(work / t), f"gguf-{t}"], env))
            shutil.rmtree(work / t)
        for t in ("bf16", "f16"):
            cmd = [sys.executable, str(tools / "convert_hf_to_gguf.py"), str(work / "hf"), "--outtype", t]
            record(f"llama.cpp convert_hf_to_gguf {t}", timed([*cmd, "--outfile", str(work / f"{t}.gguf")], env))
        for t in ("q8_0", "q4_0"):
            cmd = [str(tools / "bin" / "llama-quantize"), str(work / "bf16.gguf"), str(work / f"{t}.gguf"), t, "2"]
            record(f"llama.cpp llama-quantize {t}", timed(cmd, env))
        secs = {name: r["seconds"] for name, r in results.items()}
        hf = secs["m7b hf (llama.cpp's input)"]
        theirs = {
            "bf16": hf + secs["llama.cpp convert_hf_to_gguf bf16"],
            "f16": hf + secs["llama.cpp convert_hf_to_gguf f16"],
        }
        for t in ("q8_0", "q4_0"):
            theirs[t] = theirs["bf16"] + secs[f"llama.cpp llama-quantize {t}"]
        ratios = {t: round(secs[f"m7b gguf {t}"] / theirs[t], 3) for t in theirs}
        print(
            json.dumps({"release": str(args.release), "results": results, "m7b_over_llama_cpp_path": ratios}, indent=2)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
