"""The runtime: a release loaded as a ready model and tokenizer, and prompts completed, as `m7b run` does it.

- `load_release(text, store=..., device=..., dtype=...)`: what a user typed (a release name, a folder, a magnet, a
  .torrent or a manifest .toml) resolved and loaded (the equivalent of mistral-inference's
  `Transformer.from_folder`); `load_runtime(folder, device, dtype)` for a bare folder.
- `complete(runtime, prompt, config, decode=..., cpu_kernels=...)`: the decode step prepared, then `generate`:
  the same token ids as `m7b run --json`.
"""

from __future__ import annotations

from .complete import Completion, complete
from .generate import GenerationConfig
from .loader import Runtime, load_release, load_runtime
from .sampling import SamplingConfig

__all__ = ["Completion", "GenerationConfig", "Runtime", "SamplingConfig", "complete", "load_release", "load_runtime"]
