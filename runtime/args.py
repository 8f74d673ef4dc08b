"""`ModelArgs`: the hyper-parameters a Mistral model runs with, as its release's params.json declares them.

It is the one architecture dataclass, `m7b.manifests.architecture.Architecture` (validation lives there too); the
runtime builds it with `ModelArgs.from_architecture` / `ModelArgs.from_params_file`, which resolve an undeclared
rope_theta to its default.
"""

from __future__ import annotations

from m7b.manifests.architecture import Architecture

ModelArgs = Architecture

__all__ = ["ModelArgs"]
