"""Faster decode steps for CUDA: the same `decode_one_token`, compiled (with CUDA graphs) or graph-captured.

Both need static buffers: call `model.setup_caches()` first and keep the caches across generations
(`generate(..., max_seq_len=...)` resets them in place instead of reallocating).
"""

from __future__ import annotations

import torch

from m7b.errors import InvalidInputError
from m7b.runtime.generate import DecodeFn, decode_one_token
from m7b.runtime.model import Transformer


def compiled_decode(device: torch.device) -> DecodeFn:
    """`decode_one_token` through torch.compile: fused kernels replayed as CUDA graphs ("reduce-overhead").

    The first calls compile (about a minute for a 7B model); later calls replay.
    """
    if device.type != "cuda":
        raise InvalidInputError(
            f"compiling the decode step is for CUDA devices (found {device}); on the CPU the eager step is the fast one"
        )
    return torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True)


def cuda_graph_decode(model: Transformer, device: torch.device) -> DecodeFn:
    """`decode_one_token` captured once as a CUDA graph over static token and position tensors."""
    if device.type != "cuda":
        raise InvalidInputError(f"CUDA graphs need a CUDA device, found {device}")
    if not model.capacity:
        raise InvalidInputError("set up the caches (model.setup_caches) before capturing the decode step")
    static_tok = torch.zeros((1, 1), dtype=torch.long, device=device)
    static_pos = torch.zeros((1,), dtype=torch.long, device=device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm up kernels and the allocator outside the capture
            decode_one_token(model, static_tok, static_pos)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_out = decode_one_token(model, static_tok, static_pos)
    model.reset_caches()  # the warm-up wrote position 0

    def run(_model: Transformer, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        static_tok.copy_(token)
        static_pos.copy_(pos)
        graph.replay()
        return static_out

    return run
