"""What a run computes, counted in tokens through every model it runs (base, probe, reference, expert).

Wall time depends on the machine and on what else runs on it; these counts do not. A global forward hook sees
each decoder stack (a transformers `PreTrainedModel` returning `last_hidden_state`) and adds the tokens of the
call (batch x length, padding included). A call whose output requires grad is a training step: its backward is
counted too. `flops` is the usual estimate, 2 x parameters per token forward and 4 x backward (Kaplan et al.
2020), so a 1-layer probe or a large reference model weigh what they cost. Work served from a cache (probe
scores, reference scores) is not counted: it was paid by the run that filled the cache.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel


@dataclass
class ComputeCount:
    forward_tokens: int = 0
    backward_tokens: int = 0
    flops: float = 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "flops": float(f"{self.flops:.4g}")}


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
    try:
        yield count
    finally:
        handle.remove()


def compute_ratio(metrics: dict, reference: dict) -> float | None:
    """A run's estimated FLOPs over a reference run's (None where either run predates the count)."""
    flops, reference_flops = ((m.get("compute") or {}).get("flops") for m in (metrics, reference))
    return flops / reference_flops if flops and reference_flops else None
