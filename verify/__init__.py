"""Trust: prove a release is what its magnet and publisher named, then convert it to safetensors.

Modules, by domain:

- `digest`: one read pass per file, every digest computed from the same blocks in parallel threads.
- `pieces`: the torrent's v1 SHA-1 pieces (spanning file boundaries) and v2 merkle pieces; failures by file.
- `manifest_check`: files, sizes, sha256/md5 against what the publisher published; extra files.
- `license`: Apache-2.0 evidence (canonical text by hash, else SPDX-style normalised match; contradictions).
- `checkpoint`: the zip and its pickle inspected against an allowlist before anything unpickles; `check_tensors`
  against params.json.
- `checkpoint_load`: `load_checkpoint(path)`, the one safe way to open a `.pth` as tensors.
- `tokenizer_model`: `load_sentencepiece(path)`, the one safe reader of `tokenizer.model`.
- `checkpoint_index`: after the same inspection, each tensor as a byte range of the file, found without torch
  (what convert streams from an mmap and compares its output with).
- `check`: `verify_release(root, manifest, torrent)` puts them together into a `report.VerifyReport`.
- `convert`: `convert_release(src, out, "native" | "hf")`, streaming, deterministic, atomic, checked;
  `safetensors_out` (the streaming writer), `hf_layout` (names, permutation, config, model card),
  `hf_tokenizer` (tokenizer.json from tokenizer.model, checked against sentencepiece),
  `sums` (`SHA256SUMS` and `verify_converted`).
"""
