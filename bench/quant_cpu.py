"""CPU decode side by side with llama.cpp on the 7B shape: m7b at bf16, int8 and int4 (`m7b run --weights`) beside
`llama-bench` at bf16, q8_0 and q4_0 on the same weights, same threads, in interleaved rounds, each run between
two bandwidth readings (`run_cpu.read_bandwidth`).

llama.cpp's files are made as a user makes them from m7b's output: `m7b convert --to hf`, llama.cpp's
`convert_hf_to_gguf.py --outtype bf16`, then `llama-quantize` (q8_0, q4_0) from that bf16 file. llama.cpp comes
from `scripts/build-llamacpp` (its cache folder: `--llamacpp DIR`). Called by `bench/run_cpu.py --release-7b DIR
--llamacpp DIR` (or on its own: `python bench/quant_cpu.py --release-7b DIR --llamacpp DIR`).

Targets: m7b >= 1.2x llama.cpp at each precision (bf16 / bf16, int8 / q8_0, int4 / q4_0, best rounds); m7b's int8
and int4 at >= 90% of their own bandwidth floor (bytes read per token / the higher of the two readings around the
run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PROMPT = "The torrent arrived without a blog post, four files and a magnet link. What the weights say is"
TARGET_VS_LLAMACPP = 1.2
TARGET_FLOOR = 0.9
PAIRS = (("bf16", "bf16"), ("int8", "q8_0"), ("int4", "q4_0"))  # m7b's precision, llama.cpp's
LLAMACPP_VERSION = "0.3.36"


def default_llamacpp() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("M7B_LLAMACPP_DIR") or cache / "m7b-tools" / f"llama.cpp-{LLAMACPP_VERSION}")


def read_into_page_cache(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with path.open("rb", buffering=0) as f:
            while f.read(8 << 20):
                pass
    return time.perf_counter() - start


def make_ggufs(release: Path, llamacpp: Path, out: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """bf16 from m7b's HF output through llama.cpp's converter, q8_0 and q4_0 from it through llama-quantize; kept
    in `out` (reused when present). The HF output is removed once converted (14.5 GB)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / f"{name}.gguf" for name in ("bf16", "q8_0", "q4_0")}
    env = {**os.environ, "PYTHONPATH": str(llamacpp / "gguf-py")}
    if not files["bf16"].is_file():
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            hf = Path(tmp) / "hf"
            log("m7b convert --to hf (for llama.cpp's converter)")
            convert = [sys.executable, "-m", "m7b", "convert", str(release), "--to", "hf", "--out", str(hf)]
            subprocess.run(convert, check=True)
            log("convert_hf_to_gguf.py --outtype bf16")
            converter = [sys.executable, str(llamacpp / "convert_hf_to_gguf.py"), str(hf), "--outtype", "bf16"]
            subprocess.run([*converter, "--outfile", str(files["bf16"])], check=True, env=env)
    for name in ("q8_0", "q4_0"):
        if not files[name].is_file():
            log(f"llama-quantize {name}")
            quantize = [str(llamacpp / "bin" / "llama-quantize"), str(files["bf16"]), str(files[name]), name, "2"]
            subprocess.run(quantize, check=True, capture_output=True)
    return files


def gguf_bytes_per_token(path: Path, llamacpp: Path) -> int:
    """Bytes of every tensor but the token embedding table (read one row a token): what a decode step reads."""
    sys.path.insert(0, str(llamacpp / "gguf-py"))
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")


def m7b_round(release: Path, home: Path, weights: str, threads: int, tokens: int) -> dict:
    """`m7b run` as a user types it (the quantized weights found in the store's cache)."""
    cmd = [sys.executable, "-m", "m7b", "run", str(release), "-p", PROMPT, "--max-tokens", str(tokens)]
    cmd += ["--ignore-eos", "--device", "cpu", "--json"] + ([] if weights == "bf16" else ["--weights", weights])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "M7B_HOME": str(home)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    record = json.loads(proc.stdout)
    keys = ("decode_tok_s", "ttft_s", "load_s", "cpu_kernels", "weight_bytes_per_token", "quant_cache")
    return {k: record.get(k) for k in keys}


def llamacpp_round(path: Path, llamacpp: Path, threads: int, tokens: int) -> dict:
    """`llama-bench` decode (tg) of `tokens` tokens, one repetition."""
    cmd = [str(llamacpp / "bin" / "llama-bench"), "-m", str(path), "-t", str(threads), "-p", "0", "-n", str(tokens)]
    proc = subprocess.run([*cmd, "-r", "1", "-o", "json"], capture_output=True, text=True, check=True)
    [test] = [t for t in json.loads(proc.stdout) if t.get("n_gen")]
    return {"decode_tok_s": float(test["avg_ts"]), "build": test.get("build_commit"), "cpu": test.get("cpu_info")}


def side_by_side(
    release: Path,
    llamacpp: Path,
    workdir: Path,
    threads: int,
    rounds: int,
    tokens: int,
    bandwidth: Callable[[], float],
    log: Callable[[str], None],
    gguf_dir: Path | None = None,
) -> dict:
    ggufs = make_ggufs(release, llamacpp, gguf_dir or workdir / "gguf", log)
    home = workdir / "m7b-home"
    for scheme in ("int8", "int4"):  # the cache is built once, outside the rounds (paid once, as a user pays it)
        log(f"m7b run --weights {scheme}: building the quantized weights")
        built = m7b_round(release, home, scheme, threads, 2)
        log(f"  cache {built['quant_cache']}")
    contenders: list[tuple[str, str, Callable[[], dict], list[Path]]] = []
    weights_files = sorted(release.glob("consolidated.*"))
    for ours, theirs in PAIRS:
        # what the run reads per token: the release's weights, or the quantized file (its few kept tensors, the
        # output projection and the norms, come from the release's file during the prefill)
        quant = sorted((home / "cache" / "quantized").glob(f"{ours}-*/weights.safetensors"))
        files = weights_files if ours == "bf16" else quant
        contenders.append(("m7b", ours, lambda o=ours: m7b_round(release, home, o, threads, tokens), files))
        contenders.append(
            ("llama.cpp", theirs, lambda t=theirs: llamacpp_round(ggufs[t], llamacpp, threads, tokens), [ggufs[theirs]])
        )
    doc: dict = {"threads": threads, "tokens": tokens, "rounds": [], "gguf": {k: str(v) for k, v in ggufs.items()}}
    gguf_bytes = {name: gguf_bytes_per_token(path, llamacpp) for name, path in ggufs.items()}
    for i in range(rounds):
        for who, precision, run, files in contenders:
            warm_s = read_into_page_cache(files)
            before = bandwidth()
            figures = run()
            after = bandwidth()
            nbytes = figures.get("weight_bytes_per_token") or gguf_bytes[precision]
            floor = max(before, after) / nbytes
            entry = {
                "round": i + 1,
                "who": who,
                "precision": precision,
                **figures,
                "bytes_per_token": nbytes,
                "read_bandwidth_gb_s": [round(before / 1e9, 2), round(after / 1e9, 2)],
                "floor_tok_s": round(floor, 2),
                "fraction_of_floor": round(figures["decode_tok_s"] / floor, 3),
                "page_cache_read_s": round(warm_s, 1),
            }
            doc["rounds"].append(entry)
            log(
                f"round {i + 1} {who} {precision}: {figures['decode_tok_s']:.2f} tok/s, "
                f"{100 * entry['fraction_of_floor']:.0f}% of {floor:.2f}"
            )
    best: dict[tuple[str, str], dict] = {}
    for entry in doc["rounds"]:
        key = (entry["who"], entry["precision"])
        if key not in best or entry["decode_tok_s"] > best[key]["decode_tok_s"]:
            best[key] = entry
    doc["best"] = {f"{k[0]} {k[1]}": v for k, v in best.items()}
    doc["ratios"] = {
        f"{ours} / {theirs}": round(best["m7b", ours]["decode_tok_s"] / best["llama.cpp", theirs]["decode_tok_s"], 2)
        for ours, theirs in PAIRS
    }
    doc["floor_fractions"] = {
        ours: max(e["fraction_of_floor"] for e in doc["rounds"] if e["who"] == "m7b" and e["precision"] == ours)
        for ours, _ in PAIRS
    }
    return doc


def report(doc: dict) -> list[str]:
    lines = [f"7B shape, {doc['threads']} threads, decode of {doc['tokens']} tokens, best of {len(doc['rounds']) // 6}"]
    for name, e in doc["best"].items():
        lines.append(
            f"  {name:16s} {e['decode_tok_s']:6.2f} tok/s  {e['bytes_per_token'] / 1e9:5.2f} GB/token  "
            f"{100 * e['fraction_of_floor']:4.0f}% of its floor ({e['floor_tok_s']:.2f} at the higher of "
            f"{e['read_bandwidth_gb_s']} GB/s)"
        )
    for pair, ratio in doc["ratios"].items():
        verdict = "met" if ratio >= TARGET_VS_LLAMACPP else "NOT met"
        lines.append(f"  m7b {pair} (llama.cpp): {ratio:.2f}x: target >= {TARGET_VS_LLAMACPP}x: {verdict}")
    for scheme in ("int8", "int4"):
        share = doc["floor_fractions"][scheme]
        verdict = "met" if share >= TARGET_FLOOR else "NOT met"
        lines.append(f"  m7b {scheme} best round {100 * share:.0f}% of its floor: target >= 90%: {verdict}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release-7b", type=Path, required=True)
    parser.add_argument("--llamacpp", type=Path, default=default_llamacpp())
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/m7b-bench-quant"))
    parser.add_argument("--gguf-dir", type=Path, help="llama.cpp's GGUF files (default: WORKDIR/gguf; made if absent)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out", type=Path)
    opts = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from run_cpu import read_bandwidth

    from m7b.runtime.cpu_kernels_build import choose_kernels

    torch.set_num_threads(opts.threads)
    with tempfile.TemporaryDirectory() as kernels:
        row_kernels = choose_kernels("auto", torch.ones(1, dtype=torch.bfloat16), Path(kernels)).kernels
        doc = side_by_side(
            opts.release_7b,
            opts.llamacpp,
            opts.workdir,
            opts.threads,
            opts.rounds,
            opts.tokens,
            lambda: read_bandwidth(row_kernels),
            lambda m: print(m, file=sys.stderr, flush=True),
            opts.gguf_dir,
        )
    if opts.json_out:
        opts.json_out.write_text(json.dumps(doc, indent=1))
    print("\n".join(report(doc)))


if __name__ == "__main__":
    main()
