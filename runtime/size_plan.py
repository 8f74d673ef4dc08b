"""Honest about size: before a release's weights are loaded, what they weigh against the machine's memory, and the
decode speed the *active* bytes allow (decode reads every weight a token uses once per token: all of a dense model,
only the chosen experts of a mixture of experts — Mixtral 8x7B reads 25.8 GB of its 93 GB in bf16).

Weights are memory-mapped, so a checkpoint larger than the memory still runs: the pages that do not fit are read
from disk again as the experts they hold are chosen. The estimate says so: the share of the active bytes that
cannot stay resident comes at the disk's rate. Both rates are measured here, on this machine (a short copy in
memory, and a short read of the checkpoint with its pages dropped first), never assumed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from m7b.manifests.architecture import Architecture
from m7b.sizes import format_bytes

PROBE_BYTES = 64 << 20  # one memory copy probe; one disk read probe


@dataclass(frozen=True)
class SizePlan:
    weights_bytes: int  # what the model holds in the run's dtype
    active_bytes: int  # what one decode token reads
    memory_bytes: int  # the device's memory (the machine's RAM on the CPU)
    available_bytes: int  # of it, what is free or reclaimable now
    memory_gbs: float  # measured copy bandwidth, GB/s
    disk_gbs: float | None  # measured cold read of the checkpoint, GB/s (only when the weights do not fit)
    device: str

    @property
    def resident_share(self) -> float:
        """The share of the weights that can stay in memory."""
        return min(1.0, self.available_bytes / self.weights_bytes) if self.weights_bytes else 1.0

    @property
    def fits(self) -> bool:
        return self.resident_share >= 1.0

    @property
    def estimated_tok_s(self) -> float:
        """Tokens/s if each token reads its active bytes once: the resident share at memory speed, the rest at the
        disk's (the experts a token chooses are as likely to be out of memory as any other)."""
        in_memory = self.active_bytes * self.resident_share / (self.memory_gbs * 1e9)
        from_disk = 0.0
        if not self.fits:
            from_disk = self.active_bytes * (1 - self.resident_share) / ((self.disk_gbs or self.memory_gbs) * 1e9)
        seconds = in_memory + from_disk
        return 1 / seconds if seconds > 0 else float("inf")

    def statement(self) -> str:
        head = (
            f"weights {format_bytes(self.weights_bytes)}, {format_bytes(self.active_bytes)} read per token; "
            f"{self.device} memory {format_bytes(self.memory_bytes)} ({format_bytes(self.available_bytes)} available)"
        )
        if self.fits:
            return (
                f"{head}: expect about {self.estimated_tok_s:.3g} tok/s decode at the measured "
                f"{self.memory_gbs:.1f} GB/s"
            )
        share = 1 - self.resident_share
        return (
            f"{head}: the weights do not fit, so about {share:.0%} of each token's active bytes come from disk "
            f"every token (measured {self.disk_gbs or 0:.2f} GB/s from disk, {self.memory_gbs:.1f} GB/s in memory): "
            f"expect about {self.estimated_tok_s:.2g} tok/s decode. Going on; a machine with "
            f"{format_bytes(self.weights_bytes)} of memory would decode at about "
            f"{self.memory_gbs * 1e9 / self.active_bytes:.3g} tok/s"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "weights_bytes": self.weights_bytes,
            "active_bytes": self.active_bytes,
            "memory_bytes": self.memory_bytes,
            "available_bytes": self.available_bytes,
            "memory_gbs": round(self.memory_gbs, 2),
            "disk_gbs": round(self.disk_gbs, 3) if self.disk_gbs is not None else None,
            "fits": self.fits,
            "estimated_decode_tok_s": round(self.estimated_tok_s, 3),
        }


def machine_memory() -> tuple[int, int]:
    """(total, available) bytes of RAM: /proc/meminfo's MemTotal and MemAvailable (page cache counts as
    available: memory-mapped weights live there), else sysconf's pages."""
    try:
        fields = {
            line.split(":")[0]: int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.split(":")[0] in ("MemTotal", "MemAvailable")
        }
        return fields["MemTotal"], fields.get("MemAvailable", fields["MemTotal"])
    except (OSError, KeyError, ValueError, IndexError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page


def memory_bandwidth(device: torch.device, nbytes: int = PROBE_BYTES) -> float:
    """GB/s of a device-to-device copy (bytes read plus bytes written), the best of three."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def disk_bandwidth(path: Path, nbytes: int = PROBE_BYTES) -> float | None:
    """GB/s of a read of `nbytes` from the middle of `path` after asking the kernel to drop those pages (a cold
    read, as a token's evicted experts are); None when nothing could be read."""
    size = path.stat().st_size
    offset = max(0, size // 2 - nbytes // 2) & ~0xFFFF
    length = min(nbytes, size - offset)
    if length <= 0:
        return None
    with open(path, "rb", buffering=0) as fh:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fh.fileno(), offset, length, os.POSIX_FADV_DONTNEED)
        fh.seek(offset)
        start = time.perf_counter()
        done = 0
        while done < length and (chunk := fh.read(min(8 << 20, length - done))):
            done += len(chunk)
        elapsed = time.perf_counter() - start
    return done / elapsed / 1e9 if done and elapsed > 0 else None


def plan_size(arch: Architecture, weights: Path, device: torch.device, dtype: torch.dtype | None) -> SizePlan:
    """The size statement for running `arch`'s weights (the file `weights`) on `device` in `dtype` (None: the
    file's own, taken as bfloat16's 2 bytes, as every Mistral release ships)."""
    itemsize = dtype.itemsize if dtype is not None else 2
    weights_bytes = arch.parameter_count() * itemsize
    active = arch.active_parameter_count() * itemsize
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        memory, available = total, free
    else:
        memory, available = machine_memory()
    bandwidth = memory_bandwidth(device)
    disk = None
    if available < weights_bytes and weights.is_file():
        disk = disk_bandwidth(weights)
    return SizePlan(
        weights_bytes, active, memory, available, bandwidth, disk, "GPU" if device.type == "cuda" else "CPU"
    )
