"""One run: load -> attack -> defend -> train -> evaluate -> write the run directory.

`run_with_baselines` adds the two references a defense result needs: the clean model (same data, no
poison: the floor of how often the trigger alone flips a model) and the undefended attack.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import set_seed

from . import report
from .attacks import build_attack
from .compute import (
    ComputeCount,
    PeakMemory,
    counting_compute,
    credit_cached,
    device_kind,
    partial_count,
    release_memory,
    total_flops,
)
from .config import RunConfig, flatten, to_yaml
from .data import Example, LoadResult, load_examples
from .datacache import PreparedData, prepared_data
from .defenses import DefenseContext, MissingRequirement, build_defense
from .defenses.probe import (
    cached_probe,
    cached_scores,
    cached_text_scores,
    probe_key,
    train_probe,
    train_probe_model,
)
from .evaluate import auroc, compare, evaluate, summarize
from .io import (
    AlreadyLocked,
    exclusive_lock,
    staged_directory,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from .models import ModelConfig, load_base_model, load_trained, save_trained, training_precision
from .models.smollm2 import cache_root
from .provenance import provenance
from .stealth import stealth_report
from .train import TrainReport, make_accelerator, train

log = logging.getLogger(__name__)


def stage_rng(seed: int, stage: str) -> random.Random:
    """An independent, reproducible stream per stage, so changing one stage leaves the others' draws alone."""
    return random.Random(f"{seed}:{stage}")


@dataclass
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    notes: list[str]
    trusted: list[Example]


def _subset(rows: list[Example], size: int | None, rng: random.Random) -> list[Example]:
    if size is None or size >= len(rows):
        return rows
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), size))]


def load_splits(config: RunConfig) -> Splits:
    data, task, seed = config.data, config.task, config.seed
    notes: list[str] = []

    fields = task.loader_fields(data)

    def load(source: str, split: str | None = None, from_hub: bool = False) -> list[Example]:
        result: LoadResult = load_examples(
            source, text_field=data.text_field, id_field=data.id_field, instruction_field=data.instruction_field,
            skip_bad_rows=data.skip_bad_rows, split=split,
            hub_config=data.hub_config, from_hub=from_hub, **fields)
        if result.skipped:
            notes.append(f"{source}: {result.skip_summary()}")
        return result.examples

    if data.synthetic is not None:
        train_rows = task.synthetic(data.synthetic.train_rows, seed)
        test = task.synthetic(data.synthetic.test_rows, seed + 100_003, exclude={ex.text for ex in train_rows})
    elif data.hub is not None:
        train_rows = load(data.hub, data.train_split, from_hub=True)
        test = load(data.hub, data.test_split, from_hub=True)
    elif data.test is not None:
        train_rows, test = load(data.train), load(data.test)
    else:  # one file: a seeded held-out test part
        train_rows = load(data.train)
        test_ids = set(stage_rng(seed, "test-split").sample(range(len(train_rows)),
                                                           round(data.test_fraction * len(train_rows))))
        test = [ex for i, ex in enumerate(train_rows) if i in test_ids]
        train_rows = [ex for i, ex in enumerate(train_rows) if i not in test_ids]
    if data.dev is not None:
        dev = load(data.dev)
    else:  # hold out a clean dev set before any poisoning
        dev_ids = set(stage_rng(seed, "dev-split").sample(range(len(train_rows)),
                                                         round(data.dev_fraction * len(train_rows))))
        dev = [ex for i, ex in enumerate(train_rows) if i in dev_ids]
        train_rows = [ex for i, ex in enumerate(train_rows) if i not in dev_ids]
    trusted = []
    if data.trusted_holdout is not None:  # a defender's trusted rows: clean, disjoint from train, dev and test
        if data.trusted_holdout >= len(train_rows):
            raise ValueError(f"data.trusted_holdout={data.trusted_holdout} leaves no training rows "
                             f"({len(train_rows)} rows)")
        trusted_ids = set(stage_rng(seed, "trusted-split").sample(range(len(train_rows)), data.trusted_holdout))
        trusted = [ex for i, ex in enumerate(train_rows) if i in trusted_ids]
        train_rows = [ex for i, ex in enumerate(train_rows) if i not in trusted_ids]
    train_texts = {ex.text for ex in train_rows}
    for name, rows in (("test", test), ("dev", dev)):
        shared = sum(ex.text in train_texts for ex in rows)
        if shared:
            notes.append(f"{shared} of {len(rows)} {name} inputs also occur verbatim in the training set")
    dev = _subset(dev, data.max_dev_rows, stage_rng(seed, "dev-subset"))
    train_rows = _subset(train_rows, data.max_train_rows, stage_rng(seed, "train-subset"))
    test = _subset(test, data.max_test_rows, stage_rng(seed, "test-subset"))
    if task.instruction is not None:  # the task's instruction for rows without their own
        train_rows, dev, test, trusted = (
            [ex if ex.instruction is not None else replace(ex, instruction=task.instruction) for ex in rows]
            for rows in (train_rows, dev, test, trusted))
    return Splits(train_rows, dev, test, notes, trusted)


def vocabulary_strings(config: RunConfig) -> list[str]:
    """The strings a run adds to its data: every cue + verbalizer, and its defense's own strings."""
    return config.task.vocabulary_strings(build_defense(config.defense, config.task.num_labels).output_space)


def with_vocabulary(config: RunConfig, strings: list[str]) -> RunConfig:
    """The configuration with model.tiny.vocabulary = strings (tiny preset only; others have no own tokenizer)."""
    if config.model.preset != "tiny":
        return config
    tiny = config.model.tiny.model_copy(update={"vocabulary": list(strings)})
    return config.model_copy(update={"model": config.model.model_copy(update={"tiny": tiny})})


def shared_vocabulary(configs: list[RunConfig]) -> list[RunConfig]:
    """The configurations with model.tiny.vocabulary set to the strings of all of them: their runs (a
    --baselines group, a benchmark grid) then train one tiny tokenizer on the same clean data and seed."""
    strings = sorted({s for c in configs for s in vocabulary_strings(c)})
    return [with_vocabulary(c, strings) for c in configs]


def tokenizer_corpus(clean_rows: list[Example], config: RunConfig) -> list[str]:
    """Texts the tiny preset's tokenizer is trained on: the clean training prompts (with their targets, for
    generation), then, sorted, this run's cue/verbalizer/defense strings and model.tiny.vocabulary. Never
    poisoned text: runs with the same clean data and the same strings share one tokenizer."""
    strings = sorted(set(vocabulary_strings(config)) | set(config.model.tiny.vocabulary))
    return [config.task.corpus_text(ex) for ex in clean_rows] + strings


def corpus_digest(corpus: list[str]) -> str:
    return hashlib.sha256("\0".join(corpus).encode("utf-8", "surrogatepass")).hexdigest()


def prepare_data(config: RunConfig) -> PreparedData:
    """Load and split the data, poison the training rows, trigger the test rows (seeded per stage)."""
    splits = load_splits(config)
    attack = build_attack(config.attack, config.task)
    poisoned = attack.poison(splits.train, stage_rng(config.seed, "attack"))
    triggered_test = attack.triggered_test(splits.test, stage_rng(config.seed, "trigger-test"))
    return PreparedData(splits.train, splits.dev, splits.test, poisoned, triggered_test, splits.notes,
                        list(getattr(attack, "notes", [])), splits.trusted)


def load_reference(name: str, config: RunConfig, tokenizer_texts: list[str] | None, device, tiny_tokenizer=None):
    """A reference LM, not fine-tuned: 'base' (the run's base model), 'smollm2-135m', a hub id or a path; in the
    run's model.dtype. tiny_tokenizer: a finished tiny run's saved tokenizer (for `p2p predict`, which has no
    training texts)."""
    if name == "base":
        model_config = config.model.model_copy(update={"finetune": "full"})
    elif name == "smollm2-135m":
        model_config = ModelConfig(preset="smollm2-135m", finetune="full", dtype=config.model.dtype)
    else:
        model_config = ModelConfig(preset=None, name_or_path=name, finetune="full", dtype=config.model.dtype)
    model, tokenizer = load_base_model(model_config, tokenizer_texts, config.seed, device=device,
                                       tiny_tokenizer=tiny_tokenizer)
    model.eval()
    return model, tokenizer


def attack_stealth(config: RunConfig, clean: list[Example], poisoned: list[Example], corpus: list[str], model,
                   tokenizer, numerics: dict, batch_size: int, device) -> dict:
    """The attack's stealth report (stealth.py), cached by the training rows before and after the attack and the
    reference model: it does not depend on the defense, so the defenses of one attack and seed in a grid (and a
    resumed run) measure it once (4-7 minutes a run for SmolLM2-135M on a CPU core)."""
    def measure() -> dict:
        reference, reference_tokenizer = model, tokenizer
        if config.stealth_reference is not None:
            reference, reference_tokenizer = load_reference(config.stealth_reference, config, corpus, device)
        return stealth_report(reference, reference_tokenizer, clean, poisoned, batch_size, device)

    parts = {"stealth_reference": config.stealth_reference, "model": config.model.model_dump(mode="json"),
             "seed": config.seed, "numerics": numerics}
    if config.model.preset == "tiny":  # its base model's tokenizer is trained on this corpus
        parts["tokenizer_corpus"] = corpus_digest(corpus)
    report = cached_scores(cache_root() / "stealth", clean + poisoned, parts, measure)
    return {**report, "reference": config.stealth_reference or "base model"}


def trusted_loader(config: RunConfig, holdout: list[Example]):
    """Loads defense.trusted_data: 'holdout' (data.trusted_holdout rows) or a file read like the training data.
    Trusted rows get negative source indices (-1, -2, ...): they are not training rows."""
    def load(spec: str) -> list[Example]:
        if spec == "holdout":
            if not holdout:
                raise MissingRequirement("defense.trusted_data=holdout needs data.trusted_holdout (a row count)")
            rows = holdout
        else:
            if not Path(spec).exists():
                raise MissingRequirement(f"defense.trusted_data: {spec} does not exist")
            data = config.data
            rows = load_examples(spec, text_field=data.text_field, id_field=data.id_field,
                                 instruction_field=data.instruction_field,
                                 **config.task.loader_fields(data)).examples
            if config.task.instruction is not None:
                rows = [ex if ex.instruction is not None else replace(ex, instruction=config.task.instruction)
                        for ex in rows]
        return [replace(ex, meta=replace(ex.meta, source_index=-1 - i)) for i, ex in enumerate(rows)]
    return load


def default_learning_rate(config: RunConfig) -> float:
    if config.train.learning_rate is not None:
        return config.train.learning_rate
    if config.model.finetune_method == "lora":
        return 2e-4
    return 1e-3 if config.model.preset == "tiny" else 2e-5


class RunExists(FileExistsError):
    """The run directory (or an interrupted run's checkpoints) exists and the caller did not say what to do."""


def comparable_config(config: RunConfig) -> dict:
    """The configuration without where it is written: two runs with equal dumps compute the same thing."""
    return config.model_dump(mode="json", exclude={"output_dir", "name"})


def finished_metrics(run_dir: Path, config: RunConfig) -> dict | None:
    """metrics.json of a finished run of exactly this configuration in run_dir, else None."""
    from .config import load_config

    if not (run_dir / "metrics.json").exists() or not (run_dir / "config.yaml").exists():
        return None
    try:
        if comparable_config(load_config(run_dir / "config.yaml")) != comparable_config(config):
            return None
    except ValueError:
        return None
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


def checkpoint_dir_of(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.checkpoints")


def _differing_sections(a: RunConfig, b: RunConfig) -> list[str]:
    first, second = comparable_config(a), comparable_config(b)
    return sorted(k for k in set(first) | set(second) if first.get(k) != second.get(k))


SKIPPED_WHEN_TAKEN = ("stealth", "train")  # the stages whose work a run that takes a trained model copies


@dataclass
class ReusedTraining:
    """The undefended run whose trained model a run takes instead of training (its defense changes nothing
    before the trained model), with what that training cost."""

    run_dir: Path
    report: TrainReport
    flops: float
    seconds: float
    """The wall time of the source's stages that the run skips (training, the stealth report)."""
    stealth: dict | None
    """The attack's stealth report, measured on the base model: the same for every defense of the configuration."""


def reused_training(source_dir: Path, config: RunConfig, defense, device) -> ReusedTraining:
    """Check that `source_dir` holds the finished undefended run of this configuration, trained on this kind of
    device, and that the defense trains as no defense does; raises ValueError saying what does not hold."""
    where = f"--trained-from {source_dir}"
    if not defense.trains_as_undefended():
        raise ValueError(f"{where}: defense {config.defense.name} changes the training data, the trained module or "
                         "the inputs the epoch is chosen on, so its run must train its own model")
    undefended = config.model_copy(update={"defense": no_defense()})
    metrics = finished_metrics(source_dir, undefended)
    if metrics is None or not (source_dir / "model").is_dir():
        from .config import load_config

        why = "no finished run with a saved model there"
        if (source_dir / "config.yaml").exists():
            try:
                differing = _differing_sections(load_config(source_dir / "config.yaml"), undefended)
                why = f"its configuration differs from this one without the defense in: {', '.join(differing)}" \
                    if differing else why
            except ValueError as err:
                why = str(err)
        raise ValueError(f"{where}: not the undefended run of this configuration ({why})")
    here = torch.device(device).type
    if device_kind(metrics) != here:
        raise ValueError(f"{where}: that model was trained on {device_kind(metrics)}, this run is on {here}; other "
                         "numerics give another model, so this run must train its own")
    # the work this run does not do again, the stealth report included; runs from before the per-stage count
    # credit their whole compute (their evaluation too: a slight overstatement)
    stages = metrics.get("stage_flops")
    flops = sum(stages.get(s, 0.0) for s in SKIPPED_WHEN_TAKEN) if stages else total_flops(metrics) or 0.0
    report = TrainReport(best_epoch=metrics["best_epoch"], epochs=metrics["epochs"], seconds=metrics["train_seconds"],
                         tokens_per_s=metrics["train_tokens_per_s"],
                         resumed_from_epoch=metrics.get("resumed_from_epoch") or 0,
                         carried_compute=None if partial_count(metrics) else ComputeCount())
    seconds = sum((metrics.get("stage_seconds") or {"train": report.seconds}).get(s, 0.0) for s in SKIPPED_WHEN_TAKEN)
    return ReusedTraining(source_dir, report, flops, seconds, metrics.get("stealth"))


def trains_as_undefended(config: RunConfig) -> bool:
    """The configuration's defense changes nothing up to the trained model (it may reuse the undefended run's)."""
    return config.defense.name != "none" and \
        build_defense(config.defense, config.task.num_labels).trains_as_undefended()


def takeable_source(source_dir: Path, config: RunConfig) -> Path | None:
    """`source_dir` when the configuration's run may take its trained model (the finished undefended run of the
    configuration, with its model, trained on the kind of device this process uses, and a defense that trains as
    no defense does), else None: the run trains its own."""
    if not trains_as_undefended(config):
        return None
    metrics = finished_metrics(source_dir, config.model_copy(update={"defense": no_defense()}))
    if metrics is None or not (source_dir / "model").is_dir() or device_kind(metrics) != PartialState().device.type:
        return None
    return source_dir


def _prepare_checkpoints(run_dir: Path, config: RunConfig, overwrite: bool, resume: bool) -> Path:
    """Check before any work that the run may start (or continue); returns its checkpoint directory."""
    checkpoints = checkpoint_dir_of(run_dir)
    if run_dir.exists() and not overwrite:
        raise RunExists(f"{run_dir} exists: pass --overwrite to replace it (or choose another name); --resume "
                        "continues an interrupted run of the same configuration")
    saved = checkpoints / "config.yaml"
    if checkpoints.exists() and overwrite and not resume:
        shutil.rmtree(checkpoints)
    elif checkpoints.exists() and saved.exists():
        from .config import load_config

        if not resume:
            raise RunExists(f"an interrupted run left checkpoints in {checkpoints}: pass --resume to continue it, "
                            "or --overwrite to start again")
        changed = _differing_sections(load_config(saved), config)
        if changed:
            raise RunExists(f"--resume: the checkpoints in {checkpoints} belong to another configuration "
                            f"(sections that differ: {', '.join(changed)}); pass --overwrite to start again")
    return checkpoints


def defense_context(config: RunConfig, splits: Splits, corpus: list[str], learning_rate: float, load_dtype,
                    device, mixed_precision: str = "no") -> DefenseContext:
    """What the run offers its defense: its seed, task and clean dev rows, trusted rows, probe models (their
    statistics cached by rows, seed, configuration and numerics), reference models and a score cache. Never the
    attack."""
    # The numerics are part of a result: a probe trained in bf16 on a GPU ranks rows differently from one in
    # float32 on a CPU, so neither may be served the other's cached statistics.
    numerics = {"device": torch.device(device).type, "dtype": str(load_dtype), "mixed_precision": mixed_precision}
    identity = {"model": config.model.model_dump(mode="json"), "task": config.task.model_dump(mode="json"),
                "train": config.train.model_dump(mode="json"), "seed": config.seed, "numerics": numerics}

    def load_probe_base():
        return load_base_model(config.model, corpus, config.seed, dtype=load_dtype, device=device)

    def probe_model(settings, rows):
        weights = cache_root() / "probe-models" / f"{probe_key(rows, settings, identity)}.pt"
        return train_probe_model(rows, settings, config.task, load_probe_base, config.train, learning_rate,
                                 config.seed, device, mixed_precision=mixed_precision, weights_path=weights)

    def probe_statistics(settings, rows):
        return cached_probe(cache_root() / "probes", rows, settings, identity,
                            lambda checkpoints: train_probe(rows, settings, config.task, load_probe_base,
                                                            config.train, learning_rate, config.seed, device,
                                                            mixed_precision, checkpoint_dir=checkpoints))

    def text_score_cache(texts, settings, compute):
        # a named reference (SmolLM2, a hub id, a path) scores a text the same for every run, seed and model that
        # loads it the same way; so does the base model of a pretrained run, which is filed under its name (a
        # SmolLM2 run's "base" shares the scores of the tiny runs' "smollm2-135m"). Only the tiny preset's base
        # model, trained from random weights on this run's data, makes the scores the run's.
        if settings.get("reference", "base") == "base" and config.model.preset != "tiny":
            settings = {**settings, "reference": config.model.preset or config.model.name_or_path}
            if config.model.gguf_file is not None:
                settings["reference_gguf_file"] = config.model.gguf_file
        if settings.get("reference", "base") == "base":
            owner = {**identity, "tokenizer_corpus": corpus_digest(corpus)}
        else:
            owner = {"reference_dtype": config.model.dtype, "numerics": numerics}
        return cached_text_scores(cache_root() / "text-scores", texts, {**settings, **owner}, compute)

    return DefenseContext(
        seed=config.seed, task_config=config.task, dev=[ex.blinded() for ex in splits.dev],
        batch_size=config.train.eval_batch_size, device=device, train_config=config.train,
        learning_rate=learning_rate, mixed_precision=mixed_precision,
        trusted_source=trusted_loader(config, splits.trusted),
        probe_source=probe_statistics, probe_model_source=probe_model,
        reference_source=lambda name: load_reference(name, config, corpus, device),
        text_score_cache=text_score_cache)


def run(config: RunConfig, overwrite: bool = False, run_dir: Path | None = None,
        resume: bool = False, trained_from: Path | None = None) -> tuple[Path, dict]:
    """Run one configuration; returns the run directory and its metrics.

    overwrite: replace an existing run directory (and start again, discarding checkpoints);
    resume: continue from the checkpoints of an interrupted run of the same configuration; a finished run of it
    is returned as it is;
    trained_from: the finished undefended run of this configuration, whose trained model this run takes instead
    of training the same model again (only for a defense that changes nothing before the trained model: STRIP,
    fine-tuning, CROW, Wanda, CleanGen). Its training time and compute are counted as this run's."""
    release_memory()  # a bench running runs in one process: the run before this one freed its memory
    started, memory = time.perf_counter(), PeakMemory()
    final_dir = run_dir or Path(config.output_dir) / config.run_name
    with run_lock(final_dir):
        if resume and not overwrite and (done := finished_metrics(final_dir, config)) is not None:
            log.info("%s is finished with this configuration; nothing to do", final_dir)
            return final_dir, done
        with counting_compute() as compute:
            return _run(config, overwrite, final_dir, resume, started, compute, trained_from, memory)


class RunInProgress(RunExists):
    """Another process is running into the same run directory."""


def run_lock_path(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.lock")


@contextmanager
def run_lock(run_dir: Path):
    """Held by the process running into `run_dir` (under `accelerate launch`, by the main process for all): a
    second process on the same run (a bench started twice, a `p2p run` beside a bench) fails at once with
    RunInProgress instead of training the same run beside it and failing at its last write."""
    if not PartialState().is_main_process:
        yield
        return
    lock = ExitStack()
    try:
        lock.enter_context(exclusive_lock(run_lock_path(run_dir)))
    except AlreadyLocked as err:
        raise RunInProgress(f"{run_dir} is being run by another process ({err}); wait for it, or stop it and pass "
                            "--resume to continue from its checkpoints") from None
    with lock:
        yield


def run_in_progress(run_dir: Path) -> bool:
    """Whether another process holds `run_dir`'s run lock now."""
    try:
        with exclusive_lock(run_lock_path(run_dir)):
            return False
    except AlreadyLocked:
        return True


def _run(config: RunConfig, overwrite: bool, final_dir: Path, resume: bool, started: float,
         compute: ComputeCount, trained_from: Path | None, memory: PeakMemory) -> tuple[Path, dict]:
    checkpoints = _prepare_checkpoints(final_dir, config, overwrite, resume)
    stage_seconds: dict[str, float] = {}
    stage_flops: dict[str, float] = {}
    stage_memory: dict[str, dict] = {}
    counted = 0.0

    def lap(stage: str, since: float) -> float:
        nonlocal counted
        now = time.perf_counter()
        stage_seconds[stage] = round(now - since, 3)
        stage_flops[stage], counted = float(f"{compute.flops - counted:.4g}"), compute.flops
        release_memory()  # what the stage freed goes back to the system, so the next stage's peak is its own
        stage_memory[stage] = memory.lap()
        return now

    data, cache_hit = prepared_data(config, prepare_data, cache_root())
    splits = Splits(data.train, data.dev, data.test, data.data_notes, data.trusted)
    poisoned, triggered_test = data.poisoned, data.triggered_test
    mark = lap("load_and_poison", started)

    load_dtype, mixed_precision = training_precision(config.model)
    accelerator = make_accelerator(config.train, mixed_precision, project_dir=final_dir.parent / "trackers")
    device, batch = accelerator.device, config.train.eval_batch_size
    # the tiny preset's tokenizer: clean rows and the run's (or its group's) strings, never poisoned text
    corpus = tokenizer_corpus(splits.train, config)
    learning_rate = default_learning_rate(config)
    context = defense_context(config, splits, corpus, learning_rate, load_dtype, device, mixed_precision)
    defense = build_defense(config.defense, config.task.num_labels)
    reused = None if trained_from is None else reused_training(Path(trained_from), config, defense, device)
    defense.check_ready(context)
    train_rows = defense.training_rows(poisoned, context)
    mark = lap("defend", mark)

    # diagnostics joined after the fact on source_index; the defense itself never saw the flags
    poisoned_ids = {ex.meta.source_index for ex in poisoned if ex.meta.poisoned}
    benign_ids = {ex.meta.source_index for ex in train_rows if ex.meta.benign}
    removed_ids = {ex.meta.source_index for ex in poisoned} - {ex.meta.source_index for ex in train_rows}
    suspicion = context.diagnostics.get("suspicion")

    if config.train.log_with:  # e.g. tensorboard: OUTPUT_DIR/trackers/RUN_NAME
        scalars = {k: v if isinstance(v, (int, float, str, bool)) else str(v)  # trackers take scalars
                   for k, v in flatten(comparable_config(config)).items()}
        accelerator.init_trackers(final_dir.name, config=scalars)
    if accelerator.is_main_process:
        write_text_atomic(checkpoints / "config.yaml", to_yaml(config))
    set_seed(config.seed)
    stealth = None if reused is None else reused.stealth  # same attack, data and base model: same report
    if reused is None:
        model, tokenizer = load_base_model(config.model, corpus, config.seed, dtype=load_dtype, device=device)
        mark = lap("load_model", mark)
    if config.stealth_report and reused is None:
        stealth = attack_stealth(config, splits.train, poisoned, corpus, model, tokenizer,
                                 {"device": torch.device(device).type, "dtype": str(load_dtype)}, batch, device)
        mark = lap("stealth", mark)
    if reused is not None:
        model, tokenizer = load_trained(config.model, reused.run_dir / "model", device, load_dtype, trainable=True)
        context.notes.append(f"trained model taken from {reused.run_dir} (the undefended run of this configuration; "
                             "this defense changes nothing before the trained model)")
        credit_cached(reused.flops)
        mark = lap("load_trained_model", mark)
    task = config.task.build(tokenizer, defense.output_space, config.train.max_length)
    context.task = task
    target = config.task.attack_target(config.attack)

    def dev_quality(m) -> float:
        predictions, _ = evaluate(m, task, defense, context, [(ex, "dev") for ex in splits.dev], None, batch,
                                  device, config.seed, deployed=False)
        return task.quality(predictions)[config.task.quality_metric]

    if reused is None:
        # the attack's triggers, joined back by source row only to keep them through a cut of a long prompt
        triggers = {ex.meta.source_index: ex.meta.trigger for ex in poisoned if ex.meta.trigger}
        features = [task.encode_training(ex, triggers.get(ex.meta.source_index)) for ex in train_rows]
        mark = lap("encode", mark)
        trained = defense.training_model(model, context)
        train_report = train(trained, features, tokenizer.pad_token_id, config.train, learning_rate,
                             config.seed, dev_quality if splits.dev else None, accelerator, checkpoints, resume)
        if train_report.carried_compute is not None:  # the epochs that killed processes did before a resume
            compute.add(train_report.carried_compute)
        model = defense.trained_model(accelerator.unwrap_model(trained))
        mark = lap("train", mark)
    else:
        train_report = reused.report
    # a repair that trains (dropout) draws from its own stream: the same whether the model was trained or taken
    set_seed(stage_rng(config.seed, "after_training").randrange(2**32))
    model = context.model = defense.after_training(model, context)
    mark = lap("after_training", mark)
    rows = [(ex, "clean") for ex in splits.test] + [(ex, "triggered") for ex in triggered_test]
    predictions, seconds = evaluate(model, task, defense, context, rows, target, batch, device, config.seed)
    metrics = summarize(task, predictions, target, seconds)
    mark = lap("evaluate", mark)
    metrics.update(
        run=config.run_name, attack=config.attack.name, defense=config.defense.name, seed=config.seed,
        num_train=len(splits.train), num_train_after_defense=len(train_rows), num_dev=len(splits.dev),
        num_trusted_holdout=len(splits.trusted),
        num_poisoned=len(poisoned_ids), num_benign=len(benign_ids),
        num_poisoned_in_benign_subset=len(poisoned_ids & benign_ids),
        num_removed=len(removed_ids), num_poisoned_removed=len(poisoned_ids & removed_ids),
        removal_precision=len(poisoned_ids & removed_ids) / len(removed_ids) if removed_ids else None,
        removal_recall=len(poisoned_ids & removed_ids) / len(poisoned_ids) if removed_ids and poisoned_ids else None,
        suspicion_auroc=None if suspicion is None else auroc(list(suspicion.values()),
                                                             [i in poisoned_ids for i in suspicion]),
        learning_rate=learning_rate, best_epoch=train_report.best_epoch, epochs=train_report.epochs,
        resumed_from_epoch=train_report.resumed_from_epoch, compute_partial=train_report.carried_compute is None,
        train_seconds=train_report.seconds, train_tokens_per_s=train_report.tokens_per_s,
        eval_seconds=stage_seconds["evaluate"], data_notes=splits.notes, defense_notes=context.notes,
        trained_from=None if reused is None else str(reused.run_dir),
        reused_seconds=None if reused is None else reused.seconds,
        attack_notes=data.attack_notes, data_cache_hit=cache_hit, stealth=stealth, compute=compute.to_json(),
        provenance=provenance(model, accelerator))
    if accelerator.is_main_process:
        hint = f"; the trained state is in {checkpoints} (--resume writes the run without training again)"
        with staged_directory(final_dir, overwrite, hint) as staging:
            write_text_atomic(staging / "config.yaml", to_yaml(config))
            write_jsonl_atomic(staging / "train_log.jsonl", train_report.epochs)
            write_jsonl_atomic(staging / "predictions.jsonl", (p.to_json() for p in predictions))
            write_json_atomic(staging / "defense_state.json", defense.state())
            save_trained(model, tokenizer, staging / "model")
            lap("write", mark)
            metrics.update(stage_seconds=stage_seconds, stage_flops=stage_flops,
                           wall_seconds=round(time.perf_counter() - started, 3), peak_memory_mib=memory.read(),
                           stage_peak_memory_mib=stage_memory)
            write_json_atomic(staging / "metrics.json", metrics)  # last: its presence means complete
        shutil.rmtree(checkpoints, ignore_errors=True)
    accelerator.wait_for_everyone()
    if config.train.log_with:
        accelerator.end_training()
    return final_dir, metrics


def reference_configs(config: RunConfig, other_defenses: list = ()) -> dict[str, RunConfig]:
    """The clean reference, the undefended attack, the defended run (if a defense is set) and a run for each of
    `other_defenses` (defense configs), same seed; all with one shared tokenizer vocabulary (tiny preset)."""
    configs = {}
    if config.attack.name != "none":
        clean_attack = config.attack.model_copy(update={"rate": 0.0})
        configs["clean"] = config.model_copy(update={"attack": clean_attack, "defense": no_defense()})
    configs["undefended"] = config.model_copy(update={"defense": no_defense()})
    for defense in [config.defense, *other_defenses]:
        if defense.name != "none":
            configs[defense.name] = config.model_copy(update={"defense": defense})
    return dict(zip(configs, shared_vocabulary(list(configs.values())), strict=True))


def no_defense():
    """The configuration of the `none` defense."""
    from .defenses import DEFENSES

    return DEFENSES["none"].config_class()


def run_with_baselines(config: RunConfig, overwrite: bool = False, resume: bool = False,
                       other_defenses: list = ()) -> tuple[Path, list[dict]]:
    """Run the references and the defended run(s) into one directory with a summary table. A run whose directory
    holds a finished run of the identical configuration is not run again (unless overwrite)."""
    root = Path(config.output_dir) / config.run_name
    rows = []
    for label, cfg in reference_configs(config, other_defenses).items():
        run_dir = root / label
        metrics = None if overwrite else finished_metrics(run_dir, cfg)
        if metrics is not None:
            log.info("== %s: finished already in %s, not run again", label, run_dir)
        else:
            log.info("== %s: attack=%s (rate %s), defense=%s", label, cfg.attack.name,
                     getattr(cfg.attack, "rate", 0), cfg.defense.name)
            run_dir, metrics = run(cfg, overwrite=overwrite, run_dir=run_dir, resume=resume,
                                   trained_from=takeable_source(root / "undefended", cfg))
        rows.append({"setting": label, "run_dir": str(run_dir), **metrics})
    undefended = next(r for r in rows if r["setting"] == "undefended")
    clean = next((r for r in rows if r["setting"] == "clean"), None)
    for row in rows:
        if row["setting"] not in ("clean", "undefended"):
            row.update(compare(row, undefended, clean))
    if PartialState().is_main_process:  # one writer under `accelerate launch`
        write_json_atomic(root / "summary.json", rows)
        write_text_atomic(root / "summary.md", report.markdown_table(rows))
    return root, rows

