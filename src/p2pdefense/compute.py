"""What a run computes, counted in tokens through every model it runs (base, probe, reference, expert).

Wall time depends on the machine and on what else runs on it; these counts do not. A global forward hook sees
each decoder stack (a transformers `PreTrainedModel` returning `last_hidden_state`) and adds the tokens of the
call (batch x length, padding included). A call whose output requires grad is a training step: its backward is
counted too. `flops` is the usual estimate, 2 x parameters per token forward and 4 x backward (Kaplan et al.
2020), so a 1-layer probe or a large reference model weigh what they cost. Work served from a cache (probe
statistics, reference scores) is not done again; the FLOPs that the run which filled the cache spent on it are
stored with the entry and counted as `cached_flops`, so a defense's cost does not depend on which run of a grid
came first (`total_flops`; entries cached before the count add nothing).

Memory is measured, not estimated: PeakMemory reads the run's peak host memory and accelerator allocation.
release_memory hands what a stage freed back to the system between stages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformers import PreTrainedModel


@dataclass
class ComputeCount:
    forward_tokens: int = 0
    backward_tokens: int = 0
    flops: float = 0.0
    cached_flops: float = 0.0
    """FLOPs of the work served from caches, as spent by the run that filled them."""

    def to_json(self) -> dict:
        return {**asdict(self), "flops": float(f"{self.flops:.4g}"), "cached_flops": float(f"{self.cached_flops:.4g}")}

    def add(self, other: ComputeCount) -> None:
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))


_active: list[ComputeCount] = []


def credit_cached(flops: float) -> None:
    """Count work a cache served (its stored FLOPs) in every count open around this call."""
    for count in _active:
        count.cached_flops += flops


def _parameters(module: torch.nn.Module, sizes: dict[int, int]) -> int:
    if id(module) not in sizes:
        sizes[id(module)] = sum(p.numel() for p in module.parameters())
    return sizes[id(module)]


@contextmanager
def counting_compute():
    """Count the tokens and estimated FLOPs of every decoder call made inside the block."""
    count, sizes = ComputeCount(), {}

    def hook(module, args, output):
        if not isinstance(module, PreTrainedModel):
            return
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:  # a wrapper (causal LM head, peft) around the decoder stack, which is counted itself
            return
        tokens = hidden.shape[0] * hidden.shape[1]
        parameters = _parameters(module, sizes)
        count.forward_tokens += tokens
        count.flops += 2.0 * parameters * tokens
        if hidden.requires_grad:
            count.backward_tokens += tokens
            count.flops += 4.0 * parameters * tokens

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    _active.append(count)
    try:
        yield count
    finally:
        handle.remove()
        _active[:] = [other for other in _active if other is not count]  # equal counts are distinct blocks


def _resumed(metrics: dict) -> bool:
    """A run continued from an epoch checkpoint: its wall time is its last process's only."""
    return bool(metrics.get("resumed_from_epoch"))


def partial_count(metrics: dict) -> bool:
    """The run's count misses work: it resumed from a checkpoint that did not carry the count of the epochs before
    it (checkpoints written before they did), or took its trained model from such a run."""
    return bool(metrics.get("compute_partial", _resumed(metrics)))


def compute_ratio(metrics: dict, reference: dict) -> float | None:
    """A run's estimated FLOPs, work served from caches included, over a reference run's (None where either run
    predates the count, or its count is partial). A run resumed from a checkpoint counts the epochs that the
    killed process did from the checkpoint, so its FLOPs are those of the uninterrupted run."""
    if partial_count(metrics) or partial_count(reference):
        return None
    flops, reference_flops = (total_flops(m) for m in (metrics, reference))
    return flops / reference_flops if flops and reference_flops else None


def device_kind(metrics: dict) -> str:
    """'cpu' or 'cuda': the kind of device a run ran on."""
    return str((metrics.get("provenance") or {}).get("device", "cpu")).split(":")[0]


def wall_ratio(metrics: dict, reference: dict) -> float | None:
    """A run's wall time over a reference run's (None where either lacks it or resumed from a checkpoint, or where
    they ran on different kinds of device: a CPU run against a GPU one measures the machines). A run that took
    its trained model from another run counts the time of what it took (training, stealth report) as its own."""
    if _resumed(metrics) or _resumed(reference) or not metrics.get("wall_seconds") or \
            not reference.get("wall_seconds") or device_kind(metrics) != device_kind(reference):
        return None
    return (metrics["wall_seconds"] + (metrics.get("reused_seconds") or 0.0)) / reference["wall_seconds"]


def total_flops(metrics: dict) -> float | None:
    compute = metrics.get("compute") or {}
    return compute["flops"] + compute.get("cached_flops", 0.0) if compute.get("flops") else None


def proc_field_mib(path: Path, field: str) -> int | None:
    """A memory field of a /proc file ("MemAvailable:   123456 kB" in meminfo, "VmRSS:" in a status file), in MiB;
    None where the file or the field is missing (the process ended, or no /proc)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) // 1024 for line in lines if line.startswith(f"{field}:")), None)


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (AttributeError, OSError, TypeError):  # not glibc (macOS, musl): nothing to call
        return None


MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere) and, on a GPU,
    torch's cached blocks. glibc keeps the memory a stage freed for later allocations: after a SmolLM2 CUBE defend
    stage on 300 SST-2 rows the process held 3,131 MiB resident, the same after gc.collect() and 799 MiB after
    malloc_trim, so without it the training stage and the bench's memory rule saw a GB-sized residue. No
    gc.collect() here: it freed nothing there, and a full collection takes 0.2-0.4 s with transformers loaded."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """The peak memory of this process since the object was made, in MiB: `host`, the resident set (Linux's
    high-water mark VmHWM, reset at the start, so that a bench running runs one after another in one process
    counts each run's own peak, which still includes what the process held when the run began; None where it
    cannot be reset), and `device`, torch's peak allocation on the CUDA device (None without one). `lap()` gives
    the peak of each stage of a run; `read()` the peak over all of them."""

    STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")

    def __init__(self):
        self.host, self.cuda = self._reset_host(), torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.highest: dict[str, int | None] = {"host": None, "device": None}

    def _reset_host(self) -> bool:
        try:
            self.CLEAR_REFS.write_text("5")  # 5: reset the peak resident set size to the current one
            return True
        except OSError:
            return False

    def _since_reset(self) -> dict:
        host = proc_field_mib(self.STATUS, "VmHWM") if self.host else None
        return {"host": host, "device": round(torch.cuda.max_memory_allocated() / 2**20) if self.cuda else None}

    def lap(self) -> dict:
        """The peak since the last lap (or since the object was made); the next lap starts from the current use."""
        peak = self._since_reset()
        self.highest = {k: v if self.highest[k] is None else max(v, self.highest[k]) for k, v in peak.items()}
        self._reset_host()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        return peak

    def read(self) -> dict:
        now = self._since_reset()
        return {k: v if self.highest[k] is None else max(v, self.highest[k]) for k, v in now.items()}
