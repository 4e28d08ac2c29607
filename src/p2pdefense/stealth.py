"""Stealth of an attack: how many inputs it changed, and how much it raised their perplexity under a reference
causal LM (the run's base model before fine-tuning). A high ratio means the trigger is easy to spot."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .data import Example


def _input_text(example: Example) -> str:
    return example.text if example.instruction is None else f"{example.instruction}\n{example.text}"


LOGIT_CHUNK = 64
"""Positions projected onto the vocabulary at a time: a 49k-word vocabulary in fp32 over a whole batch of
512-token texts would take gigabytes."""


def token_nll(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[batch, positions]: the negative log-likelihood of `targets` (the next token at each position; -100: none,
    scored 0) under the vocabulary projection `head` of the final hidden states, a chunk of positions at a time."""
    out = []
    for s in range(0, hidden.shape[1], LOGIT_CHUNK):
        logits = head(hidden[:, s:s + LOGIT_CHUNK])
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 up; fp64 stays
        out.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets[:, s:s + LOGIT_CHUNK],
                                                     reduction="none"))
    return torch.cat(out, dim=1) if out else torch.zeros(hidden.shape[:2], device=hidden.device)


@torch.no_grad()
def perplexities(model, tokenizer, texts: list[str], batch_size: int, device) -> list[float]:
    """Per-text perplexity: exp of the mean next-token negative log-likelihood. The final hidden states are
    projected onto the vocabulary a chunk of positions at a time, never as one full-vocabulary fp32 tensor."""
    was_training = model.training
    model.eval()
    head = model.get_output_embeddings()
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc="stealth perplexity", leave=False, disable=None):
        encoded = [tokenizer(t, add_special_tokens=True)["input_ids"][:512] for t in texts[start:start + batch_size]]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(encoded):
            ids[row, : len(e)], mask[row, : len(e)] = torch.tensor(e), 1
        ids, mask = ids.to(device), mask.to(device)
        # logits_to_keep=1: the model computes no full logits; hidden_states[-1] is the final (normed) state
        hidden = model(input_ids=ids, attention_mask=mask, logits_to_keep=1, output_hidden_states=True,
                       use_cache=False).hidden_states[-1]
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll_sum = token_nll(head, hidden[:, :-1], targets).sum(1)
        counts = mask[:, 1:].sum(1).clamp(min=1)
        out += torch.exp(nll_sum / counts).tolist()
    model.train(was_training)
    return out


def stealth_report(model, tokenizer, clean: list[Example], attacked: list[Example], batch_size: int,
                   device) -> dict:
    """Compare each changed training input with its clean original (same position in both lists)."""
    pairs = [(c, a) for c, a in zip(clean, attacked, strict=True)
             if (c.text, c.instruction) != (a.text, a.instruction)]
    report = {"num_changed_inputs": len(pairs), "num_inputs": len(clean)}
    if not pairs:
        return report
    before = perplexities(model, tokenizer, [_input_text(c) for c, _ in pairs], batch_size, device)
    after = perplexities(model, tokenizer, [_input_text(a) for _, a in pairs], batch_size, device)
    report.update(
        ppl_clean_mean=sum(before) / len(before), ppl_attacked_mean=sum(after) / len(after),
        ppl_ratio_geomean=math.exp(sum(math.log(a / b) for a, b in zip(after, before, strict=True)) / len(pairs)))
    return report
