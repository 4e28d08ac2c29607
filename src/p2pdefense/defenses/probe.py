"""A probe model: the run's base model trained briefly on the blinded training rows, with no defense.

Its per-row statistics feed blind scorers and data filters: the margin of each row's given answer after every
epoch (training dynamics) and the hidden state at each row's last prompt token (representations). Statistics
are cached on disk per rows, seed and configuration, so the scorers of one run, and the runs of a grid that
share data and seed, train one probe; so are the weights of a probe that a defense queries itself (BKI), so a
run killed after its probe trained does not train it again. A probe in training keeps epoch checkpoints beside
its cache entry, so a run killed during it resumes from the last epoch; and while one process trains a probe,
another that needs the same one waits for it instead of training it too. Reference-model scores are cached the
same way, by rows or by text.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import random
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from ..compute import counting_compute, credit_cached
from ..data import Example
from ..io import AlreadyLocked, exclusive_lock, write_bytes_atomic, write_text_atomic
from .output_space import OutputSpace

log = logging.getLogger(__name__)


@dataclass
class ProbeStats:
    margins: list[list[float]]
    """[epoch][row]: the margin of each row's given answer after each epoch."""
    states: torch.Tensor
    """[rows, hidden]: the hidden state at each row's last prompt token after training."""


@torch.no_grad()
def last_prompt_states(model, features: list[dict[str, list[int]]], pad_id: int, layer: int, batch_size: int,
                       device) -> torch.Tensor:
    """Hidden state of `layer` at the last prompt token (the one that predicts the answer's first token), in the
    order of `features`. Rows are batched by length (less padding) and only one position is projected onto the
    vocabulary (a small model's vocabulary projection costs a quarter of its forward pass or more)."""
    from ..train import collate

    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    picked = []
    for start in tqdm(range(0, len(order), batch_size), desc="hidden states", leave=False, disable=None):
        chunk = order[start:start + batch_size]
        batch = collate([features[i] for i in chunk], pad_id)
        hidden = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       logits_to_keep=1, output_hidden_states=True, use_cache=False).hidden_states[layer]
        positions = batch["loss_positions"][:, 0].to(device)
        picked.append(hidden[torch.arange(len(chunk), device=device), positions].float().cpu())
    if not picked:
        return torch.zeros(0)
    states = torch.cat(picked)
    states[order] = states.clone()  # back to the order of `features`
    return states


def _prompt_ids(feature: dict[str, list[int]]) -> list[int]:
    """The ids up to and including the last prompt token (a causal model's state there ignores the rest)."""
    first_answer = next(t for t, label in enumerate(feature["labels"]) if label != -100)
    return feature["input_ids"][:first_answer]


@torch.no_grad()
def variant_states(model, rows: list[dict[str, list[int]]], variants: list[list[dict[str, list[int]]]], pad_id: int,
                   layer: int, batch_size: int, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The last-prompt-token state of `layer` (as in last_prompt_states) for each row and each of its variants.

    A variant (the row with one word deleted, say) shares the row's tokens up to the first that differs; those
    are read from the row's key/value cache instead of being computed again (a word-deletion sweep over SST-2
    rows on SmolLM2: 1.7x faster). Variants are batched by the length of their own tokens, which sit after the
    row's whole cache: the mask hides the cached positions a variant does not share and its position ids continue
    from the shared prefix, so each variant sees exactly its own sequence."""
    from transformers import DynamicCache

    from ..train import collate

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    # transformers renamed `past_key_values` to `cache` within 5.x; an unknown keyword would be silently ignored
    cache_argument = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    prompts = [_prompt_ids(f) for f in rows]
    row_states: list[torch.Tensor] = []
    out: list[torch.Tensor] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="hidden states", leave=False, disable=None):
        chunk = prompts[start:start + batch_size]
        batch = collate(rows[start:start + batch_size], pad_id)
        width = batch["input_ids"].shape[1]  # the cache also holds answer tokens: no variant is shown them
        result = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       logits_to_keep=1, output_hidden_states=True, use_cache=True)
        row_cache = result["cache"] if "cache" in result else result["past_key_values"]
        last = batch["loss_positions"][:, 0].to(device)
        row_states.append(result.hidden_states[layer][torch.arange(len(chunk), device=device), last].float().cpu())
        cached = [(layer_cache.keys, layer_cache.values) for layer_cache in row_cache.layers]
        # (row in chunk, shared prefix length, the variant's own ids), for every variant of the chunk's rows
        jobs = []
        for i, p in enumerate(chunk):
            for variant in variants[start + i]:
                v = _prompt_ids(variant)
                shared = next((t for t, (a, b) in enumerate(zip(p, v, strict=False)) if a != b), min(len(p), len(v)))
                shared = min(shared, len(v) - 1)  # the last prompt token is always computed
                jobs.append((i, shared, v[shared:]))
        order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][2]))  # similar tails together: little padding
        states = []
        for job_start in range(0, len(jobs), batch_size):
            batch = [jobs[j] for j in order[job_start:job_start + batch_size]]
            rows_of = torch.tensor([i for i, _, _ in batch], device=device)
            own = max(len(tail) for _, _, tail in batch)
            tail_ids = torch.full((len(batch), own), pad_id, dtype=torch.long)
            positions = torch.zeros((len(batch), own), dtype=torch.long)
            full_mask = torch.zeros((len(batch), width + own), dtype=torch.long)
            for j, (_, shared, tail) in enumerate(batch):
                tail_ids[j, :len(tail)] = torch.tensor(tail)
                positions[j] = shared + torch.arange(own)
                full_mask[j, :shared] = 1
                full_mask[j, width:width + len(tail)] = 1
            cache = DynamicCache()
            for index, (keys, values) in enumerate(cached):
                cache.update(keys[rows_of], values[rows_of], index)
            hidden = model(input_ids=tail_ids.to(device), attention_mask=full_mask.to(device),
                           position_ids=positions.to(device), logits_to_keep=1, output_hidden_states=True,
                           use_cache=True, **{cache_argument: cache}).hidden_states[layer]
            last = torch.tensor([len(tail) - 1 for _, _, tail in batch], device=device)
            states.append(hidden[torch.arange(len(batch), device=device), last].float().cpu())
        flat = torch.cat(states) if states else torch.zeros(0, row_states[-1].shape[-1])
        flat[order] = flat.clone()  # back to the order of the jobs
        sizes = [len(variants[start + i]) for i in range(len(chunk))]
        out += list(flat.split(sizes))
    return (torch.cat(row_states) if row_states else torch.zeros(0)), out


def train_probe_model(rows: list[Example], settings, task_config, load_model: Callable[[], tuple], train_config,
                      learning_rate: float, seed: int, device,
                      on_epoch_end: Callable[[object, object, int], None] | None = None,
                      mixed_precision: str = "no", weights_path: Path | None = None,
                      checkpoint_dir: Path | None = None) -> tuple:
    """(model, task): the base model trained on `rows` with the task's own output space.
    on_epoch_end(model, task, epoch) sees it after every epoch; mixed_precision: the run's (see make_accelerator);
    weights_path: a cache of the trained weights (the trainable parameters: a LoRA probe's adapter), read instead
    of training when present, else trained (with epoch checkpoints beside it) and written;
    checkpoint_dir: epoch checkpoints to resume from and to keep (without weights_path)."""
    if weights_path is not None:
        if on_epoch_end is not None or checkpoint_dir is not None:
            raise ValueError("a cached probe model keeps its own checkpoints and has no epochs to show")
        with building(weights_path) as checkpoints:
            return _probe_model(rows, settings, task_config, load_model, train_config, learning_rate, seed,
                                mixed_precision, weights_path=weights_path, checkpoint_dir=checkpoints)
    return _probe_model(rows, settings, task_config, load_model, train_config, learning_rate, seed,
                        mixed_precision, on_epoch_end=on_epoch_end, checkpoint_dir=checkpoint_dir)


def _probe_model(rows, settings, task_config, load_model, train_config, learning_rate, seed, mixed_precision,
                 on_epoch_end=None, weights_path: Path | None = None, checkpoint_dir: Path | None = None) -> tuple:
    from ..train import make_accelerator, train

    model, tokenizer = load_model()
    task = task_config.build(tokenizer, OutputSpace(task_config.num_labels), train_config.max_length)
    if weights_path is not None and weights_path.exists():
        _load_trainable(model, weights_path)
        model.eval()
        return model, task
    features = [task.encode_training(ex) for ex in rows]
    probe_config = train_config.model_copy(update={"epochs": settings.epochs, "select_best_epoch": False})
    flooded = None
    if settings.loss == "flooded":  # rows learned below gamma are pushed back up: only fast shortcuts stay low
        def flooded(loss):
            return torch.sign(loss - settings.gamma) * loss
    with counting_compute() as spent:
        report = train(model, features, tokenizer.pad_token_id, probe_config, settings.learning_rate or learning_rate,
                       seed, accelerator=make_accelerator(probe_config, mixed_precision), loss_transform=flooded,
                       checkpoint_dir=checkpoint_dir, resume=checkpoint_dir is not None,
                       on_epoch_end=None if on_epoch_end is None else lambda m, epoch: on_epoch_end(m, task, epoch))
        if report.carried_compute is not None:  # the epochs a killed process trained before this one resumed
            credit_cached(report.carried_compute.flops + report.carried_compute.cached_flops)
    if weights_path is not None:
        buffer = io.BytesIO()
        torch.save({"weights": {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad},
                    "flops": torch.tensor(spent.flops + spent.cached_flops, dtype=torch.float64)}, buffer)
        write_bytes_atomic(weights_path, buffer.getvalue())
    return model, task


@contextmanager
def building(target: Path) -> Iterator[Path | None]:
    """Build the cache entry `target` (a probe's statistics or weights) once; yields the directory for its epoch
    checkpoints, or None for none, and removes it when the entry is written.

    In a single process, the lock `.NAME.lock` beside `target` is held while building: another process that needs
    the same probe waits, then finds it written (the caller checks for `target` inside the block). Under
    `accelerate launch` all processes train the probe together, so none may wait alone: the main process tries
    the lock and tells the others; where another job holds it, they train without checkpoints."""
    lock, checkpoints = target.with_name(f".{target.name}.lock"), target.with_name(f"{target.name}.checkpoints")
    state = PartialState()
    with ExitStack() as stack:
        if state.num_processes == 1:
            stack.enter_context(exclusive_lock(lock, wait=True))
            held = [True]
        else:
            held = [False]
            if state.is_main_process:
                try:
                    stack.enter_context(exclusive_lock(lock))
                    held = [True]
                except AlreadyLocked as refused:
                    log.warning("%s; this probe trains without checkpoints", refused)
            broadcast_object_list(held)
        yield checkpoints if held[0] else None
        if held[0] and target.exists() and state.is_main_process:
            shutil.rmtree(checkpoints, ignore_errors=True)


def _load_trainable(model, path: Path) -> None:
    """Copy a cached probe's trainable parameters into a freshly loaded base model; every one must fit."""
    saved = torch.load(path, weights_only=True)
    params = dict(model.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    if set(saved["weights"]) != expected:
        raise ValueError(f"{path}: the cached probe's parameters do not match this model's trainable ones "
                         f"({len(set(saved['weights']) ^ expected)} names differ); delete the file to retrain")
    with torch.no_grad():
        for name, value in saved["weights"].items():
            params[name].copy_(value)
    log.info("probe model from %s", path)
    credit_cached(float(saved["flops"]))


def train_probe(rows: list[Example], settings, task_config, load_model: Callable[[], tuple], train_config,
                learning_rate: float, seed: int, device, mixed_precision: str = "no",
                checkpoint_dir: Path | None = None) -> ProbeStats:
    """checkpoint_dir: epoch checkpoints of the probe, with each epoch's margins beside them, to resume from."""
    margins: dict[int, list[float]] = {}

    def margins_file(epoch: int) -> Path:
        return checkpoint_dir / f"margins-epoch-{epoch}.json"

    def record(trained, task, epoch: int) -> None:
        margins[epoch] = task.margins(trained, rows, train_config.eval_batch_size, device)[0]
        if checkpoint_dir is not None and PartialState().is_main_process:
            write_text_atomic(margins_file(epoch), json.dumps(margins[epoch]))

    model, task = train_probe_model(rows, settings, task_config, load_model, train_config, learning_rate, seed,
                                    device, record, mixed_precision, checkpoint_dir=checkpoint_dir)
    for epoch in range(1, settings.epochs + 1):  # epochs trained before a resume: their margins were saved
        if epoch not in margins:
            margins[epoch] = json.loads(margins_file(epoch).read_text())
    features = [task.encode_training(ex) for ex in rows]
    states = last_prompt_states(model, features, task.tokenizer.pad_token_id, settings.layer,
                                train_config.eval_batch_size, device)
    return ProbeStats([margins[epoch] for epoch in sorted(margins)], states)


def content_key(rows: list[Example], parts: dict) -> str:
    """A content hash of the rows (as a defense sees them) and of everything else that decides a result."""
    digest = hashlib.sha256()
    digest.update(json.dumps(parts, sort_keys=True, default=str).encode())
    for ex in rows:
        digest.update(json.dumps([ex.text, ex.label, ex.target, ex.instruction]).encode())
    return digest.hexdigest()[:20]


def probe_key(rows: list[Example], settings, identity: dict) -> str:
    """The cache key of a probe (its statistics and its weights): the rows, the probe settings and the run's
    identity (model, task, training configuration, seed, numerics)."""
    return content_key(rows, {"settings": settings.model_dump(mode="json"), **identity})


def cached_probe(cache_dir: Path, rows: list[Example], settings, identity: dict,
                 compute: Callable[[Path | None], ProbeStats]) -> ProbeStats:
    """identity: the run's model, task, training configuration and seed; compute(checkpoint_dir) trains the
    probe, keeping (and resuming from) epoch checkpoints there when it is not None."""
    path = cache_dir / f"{probe_key(rows, settings, identity)}.pt"
    with building(path) as checkpoints:
        if path.exists():
            saved = torch.load(path, weights_only=True)
            log.info("probe statistics from %s", path)
            credit_cached(float(saved.get("flops", 0.0)))
            return ProbeStats(saved["margins"].tolist(), saved["states"])
        with counting_compute() as spent:
            stats = compute(checkpoints)
        buffer = io.BytesIO()
        torch.save({"margins": torch.tensor(stats.margins), "states": stats.states,
                    "flops": torch.tensor(spent.flops + spent.cached_flops, dtype=torch.float64)}, buffer)
        write_bytes_atomic(path, buffer.getvalue())
        return stats


def cached_scores(cache_dir: Path, rows: list[Example], parts: dict, compute: Callable[[], object]) -> object:
    """Per-row scores (e.g. a reference model's suspicion; any JSON value) cached by content; the FLOPs spent on
    them are kept beside them (`.flops`)."""
    path = cache_dir / f"{content_key(rows, parts)}.json"
    flops_path = path.with_suffix(".flops")
    if path.exists():
        log.info("scores from %s", path)
        credit_cached(float(flops_path.read_text()) if flops_path.exists() else 0.0)
        return json.loads(path.read_text(encoding="utf-8"))
    with counting_compute() as spent:
        scores = compute()
    write_bytes_atomic(flops_path, repr(spent.flops + spent.cached_flops).encode())
    write_bytes_atomic(path, json.dumps(scores).encode())
    return scores


SAVE_EVERY = 200
"""Texts in a chunk of the text-score cache's work (a process skips the chunk's texts another one saved)."""
SAVE_SECONDS = 300.0
"""The longest scoring between two writes of the text-score cache: a chunk of long texts (ONION on IMDB reviews
takes about 30 s a text on a CPU core) must not lose more than this when the run is killed."""


def _saved_text_scores(path: Path, texts: list[str]) -> tuple[dict[str, str], float]:
    """The cached scores (JSON) of those of `texts` that the file holds, and the FLOPs that computed them."""
    known, flops_total = {}, 0.0
    with closing(sqlite3.connect(path, timeout=600)) as db, db:
        db.execute("CREATE TABLE IF NOT EXISTS scores (text TEXT PRIMARY KEY, value TEXT NOT NULL, flops REAL)")
        for start in range(0, len(texts), 500):  # under SQLite's limit on query parameters
            chunk = texts[start:start + 500]
            for text, value, flops in db.execute(
                    f"SELECT text, value, flops FROM scores WHERE text IN ({','.join('?' * len(chunk))})", chunk):
                known[text] = value
                flops_total += flops
    return known, flops_total


def _save_text_scores(path: Path, fresh: list[tuple[str, str, float]], known: dict[str, str]) -> int:
    """Saves the (text, score, FLOPs) rows, adds them to `known` and returns how many there were."""
    if fresh:
        with closing(sqlite3.connect(path, timeout=600)) as db, db:
            db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?)", fresh)
        known.update((text, value) for text, value, _ in fresh)
    return len(fresh)


def cached_text_scores(cache_dir: Path, texts: list[str], parts: dict,
                       compute: Callable[[list[str]], list]) -> list:
    """One score (any JSON value) per text, cached by text in one SQLite file per settings: runs that share a
    reference model and settings (a grid's attacks and defenses on one seed) score each distinct text once.
    `compute([text])` is called for each distinct text not yet cached, so a text's score and its FLOPs (kept with
    it) are its own. The missing texts are scored in chunks of SAVE_EVERY, saved when a chunk is done and at least
    every SAVE_SECONDS within it (a killed run keeps them), from a random first chunk on, and a chunk skips what
    another process saved before it began: two workers that need the same texts share the work instead of both
    doing all of it (SQLite locks the file)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{content_key([], parts)}.sqlite"
    distinct = list(dict.fromkeys(texts))
    known, cached_flops = _saved_text_scores(path, distinct)
    credit_cached(cached_flops)
    missing = [text for text in distinct if text not in known]
    chunks = [missing[start:start + SAVE_EVERY] for start in range(0, len(missing), SAVE_EVERY)]
    first = random.randrange(len(chunks)) if chunks else 0
    computed = 0
    with tqdm(total=len(missing), desc="scoring texts", unit="text", disable=not missing) as progress:
        for chunk in chunks[first:] + chunks[:first]:
            saved, saved_flops = _saved_text_scores(path, chunk)
            credit_cached(saved_flops)
            known.update(saved)
            progress.update(len(saved))
            fresh, last_save = [], time.monotonic()
            for text in (text for text in chunk if text not in saved):
                with counting_compute() as spent:
                    values = compute([text])
                if len(values) != 1:
                    raise ValueError(f"the scorer returned {len(values)} scores for 1 text")
                fresh.append((text, json.dumps(values[0]), spent.flops + spent.cached_flops))
                progress.update(1)
                if time.monotonic() - last_save >= SAVE_SECONDS:
                    computed += _save_text_scores(path, fresh, known)
                    fresh, last_save = [], time.monotonic()
            computed += _save_text_scores(path, fresh, known)
    if texts:
        log.info("%d of %d distinct texts' scores from %s", len(distinct) - computed, len(distinct), path)
    return [json.loads(known[text]) for text in texts]
