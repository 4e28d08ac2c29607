"""Evaluation: blinded inputs through the defense's inference stage and the task, then metrics.

Clean and triggered test rows go through ONE call in a seeded shuffled order, each reduced to what a deployed
model would see (no true answer, no row index, no trigger flag); the defense rewrites or rejects inputs without
knowing which are triggered. The truth (split, gold answer, trigger) stays here and is joined back by position.

CA: the task's quality metric on the clean rows (classification: accuracy of folded predictions).
ASR: on triggered rows whose true answer is not the target, the fraction whose output shows the target (either
label space: predictions are folded). A rejected input is neither correct nor an attack success.
asr_trigger_in_input: ASR over the triggered rows whose trigger survived any cut of a long prompt.
triggered_<quality>: the quality metric on every triggered row against its true answer.
rejection_rate_clean / rejection_rate_triggered: inputs the defense rejected (false rejections on clean rows).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object

from .data import Example, ExampleMeta
from .tasks import Prediction, RowTruth, Task


def across_processes(count: int, compute: Callable[[list[int]], list]) -> list:
    """compute(indices) -> one result per index. Under `accelerate launch` each process computes a share of the
    indices and every process receives all results, in order; with one process it is a plain call."""
    state = PartialState()
    if state.num_processes == 1:
        return compute(list(range(count)))
    with state.split_between_processes(list(range(count))) as mine:
        pairs = list(zip(mine, compute(list(mine)), strict=True))
    results: list = [None] * count
    for index, result in gather_object(pairs):
        results[index] = result
    return results


def as_deployed(example: Example, position: int) -> Example:
    """A test input as a deployed model receives it: no answer, no poison marks, no row identity."""
    return replace(example.for_inference(), meta=ExampleMeta(source_index=position, poisoned=None))


def evaluate(model, task: Task, defense, context, rows: list[tuple[Example, str]], target: Any, batch_size: int,
             device, seed: int, deployed: bool = True) -> tuple[list[Prediction], float]:
    """Predictions for (example, split) rows, in the order given, and the seconds the model spent on them.
    deployed=False skips the defense's inference model and rejection stage (epoch selection on dev rows, before
    the model is final)."""
    per_split: dict[str, int] = {}
    truths = []
    for example, split in rows:
        index = per_split[split] = per_split.get(split, -1) + 1
        truths.append(RowTruth(example.meta.source_index, split, f"{split}-{index}", task.gold(example),
                               example.meta.trigger))
    order = list(range(len(rows)))
    random.Random(f"{seed}:evaluation-order").shuffle(order)
    inputs = defense.at_inference([as_deployed(rows[i][0], position) for position, i in enumerate(order)], context)
    # the trigger is passed beside the input (never to the defense) only to keep it through a cut of the prompt
    triggers = [truths[i].trigger for i in order]
    if deployed:
        model = defense.inference_model(model, context)
    was_training = model.training
    model.eval()
    timed = across_processes(len(inputs), lambda share: [
        (out, seconds) for outs, seconds in [task.outputs(model, [inputs[i] for i in share],
                                                          [triggers[i] for i in share], batch_size, device)]
        for out in outs])
    model.train(was_training)
    outputs = [out for out, _ in timed]
    seconds = max((s for _, s in timed), default=0.0)  # the processes work at the same time
    rejected = defense.rejected(inputs, outputs, context) if deployed else [False] * len(inputs)
    predictions: list[Prediction | None] = [None] * len(rows)
    for position, i in enumerate(order):
        predictions[i] = task.score(outputs[position], truths[i], rejected[position], target)
    return predictions, seconds


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarize(task: Task, predictions: list[Prediction], target: Any, seconds: float) -> dict:
    """Metrics from predictions alone (the shared ones, then the task's own)."""
    clean = [p for p in predictions if p.split == "clean"]
    triggered = [p for p in predictions if p.split == "triggered"]
    attacked = [p for p in triggered if p.attack_success is not None]
    kept = [p for p in attacked if p.trigger_in_input is not False]
    name = task.config.quality_metric
    quality = task.quality(clean)
    metrics = {**quality, "ca": quality.get(name), "quality_metric": name, "num_clean": len(clean)}
    metrics.update(
        asr=_rate([p.attack_success for p in attacked]) if target is not None else None,
        asr_trigger_in_input=_rate([p.attack_success for p in kept]) if target is not None else None,
        num_triggered=len(attacked), num_triggered_all=len(triggered),
        num_trigger_cut=sum(p.trigger_in_input is False for p in triggered),
        num_truncated=sum(p.truncated for p in clean + triggered),
        rejection_rate_clean=_rate([p.rejected for p in clean]),
        rejection_rate_triggered=_rate([p.rejected for p in triggered]))
    triggered_quality = task.quality(triggered) if triggered else {name: None}
    metrics.update({f"triggered_{key}": value for key, value in triggered_quality.items()})
    metrics.update(task.extra_metrics(clean, triggered, target, seconds))
    return metrics


def auroc(scores: list[float], positives: list[bool]) -> float | None:
    """Area under the ROC curve of `scores` for the `positives` (ties count half); None without both classes."""
    ranked = sorted(zip(scores, positives, strict=True), key=lambda pair: pair[0])
    num_pos = sum(positives)
    num_neg = len(positives) - num_pos
    if num_pos == 0 or num_neg == 0:
        return None
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + 1 + j) / 2
        rank_sum += average_rank * sum(pos for _, pos in ranked[i:j])
        i = j
    return (rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def compare(defended: dict, undefended: dict, clean: dict | None = None) -> dict:
    """CA drop and ASR reduction of a defended run against the undefended run on the same data.

    asr_reduction_rel = (ASR_undef - ASR_def) / ASR_undef ignores that a model trained without any poison
    already "flips" some triggered inputs (the floor); asr_reduction_over_floor =
    (ASR_undef - ASR_def) / (ASR_undef - ASR_floor) measures the share of the attack's own effect removed
    (1: down to the floor), given the clean reference run."""
    result = {"ca_drop": undefended["ca"] - defended["ca"]}
    if undefended.get("asr") is not None and defended.get("asr") is not None:
        result["asr_reduction_abs"] = undefended["asr"] - defended["asr"]
        result["asr_reduction_rel"] = ((undefended["asr"] - defended["asr"]) / undefended["asr"]
                                       if undefended["asr"] > 0 else None)
        floor = None if clean is None else clean.get("asr")
        result["asr_floor"] = floor
        result["asr_reduction_over_floor"] = (
            (undefended["asr"] - defended["asr"]) / (undefended["asr"] - floor)
            if floor is not None and undefended["asr"] > floor else None)
    return result
