"""One run: load -> attack -> defend -> train -> evaluate -> write the run directory.

`run_with_baselines` adds the two references a defense result needs: the clean model (same data, no
poison: the floor of how often the trigger alone flips a model) and the undefended attack.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import set_seed

from . import report
from .attacks import build_attack
from .config import RunConfig, flatten, to_yaml
from .data import Example, LoadResult, load_examples, synthetic_math, synthetic_sentiment, synthetic_summaries
from .datacache import PreparedData, prepared_data
from .defenses import build_defense
from .evaluate import accuracy, classification_metrics, compare, generation_metrics, predict, predict_generation
from .io import staged_directory, write_json_atomic, write_jsonl_atomic, write_text_atomic
from .models import ModelConfig, load_base_model, save_trained, training_precision
from .models.smollm2 import cache_root
from .provenance import provenance
from .stealth import stealth_report
from .tasks import ClassificationTask, GenerationTask
from .tasks.prompt import format_prompt
from .train import make_accelerator, train

log = logging.getLogger(__name__)
SYNTHETIC = {"classification": synthetic_sentiment, "math": synthetic_math, "summarization": synthetic_summaries}


def stage_rng(seed: int, stage: str) -> random.Random:
    """An independent, reproducible stream per stage, so changing one stage leaves the others' draws alone."""
    return random.Random(f"{seed}:{stage}")


@dataclass
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    notes: list[str]


def _subset(rows: list[Example], size: int | None, rng: random.Random) -> list[Example]:
    if size is None or size >= len(rows):
        return rows
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), size))]


def load_splits(config: RunConfig) -> Splits:
    data, task, seed = config.data, config.task, config.seed
    notes: list[str] = []

    if config.is_generation:
        fields = {"label_field": None, "target_field": data.target_field}
    else:
        fields = {"label_field": data.label_field, "label_names": task.label_names, "num_labels": task.num_labels}

    def load(source: str, split: str | None = None, from_hub: bool = False) -> list[Example]:
        result: LoadResult = load_examples(
            source, text_field=data.text_field, id_field=data.id_field, instruction_field=data.instruction_field,
            skip_bad_rows=data.skip_bad_rows, split=split,
            hub_config=data.hub_config, from_hub=from_hub, **fields)
        if result.skipped:
            notes.append(f"{source}: {result.skip_summary()}")
        return result.examples

    if data.synthetic is not None:
        generate = SYNTHETIC[task.name]
        train_rows = generate(data.synthetic.train_rows, seed)
        test = generate(data.synthetic.test_rows, seed + 100_003, exclude={ex.text for ex in train_rows})
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
    train_texts = {ex.text for ex in train_rows}
    for name, rows in (("test", test), ("dev", dev)):
        shared = sum(ex.text in train_texts for ex in rows)
        if shared:
            notes.append(f"{shared} of {len(rows)} {name} inputs also occur verbatim in the training set")
    dev = _subset(dev, data.max_dev_rows, stage_rng(seed, "dev-subset"))
    train_rows = _subset(train_rows, data.max_train_rows, stage_rng(seed, "train-subset"))
    test = _subset(test, data.max_test_rows, stage_rng(seed, "test-subset"))
    if task.instruction is not None:  # the task's instruction for rows without their own
        train_rows, dev, test = ([ex if ex.instruction is not None else replace(ex, instruction=task.instruction)
                                  for ex in rows] for rows in (train_rows, dev, test))
    return Splits(train_rows, dev, test, notes)


def vocabulary_strings(config: RunConfig) -> list[str]:
    """The strings a run adds to its data: every cue + verbalizer, and its defense's own strings."""
    defense = build_defense(config.defense, getattr(config.task, "num_labels", 0))
    strings = defense.vocabulary_strings()
    if not config.is_generation:
        verbalizers = defense.output_verbalizers(config.task.verbalizers())
        strings += [c + v for c in defense.cues(config.task.cue) for v in verbalizers]
    return strings


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
    if config.is_generation:
        return [format_prompt(config.task.template, ex) + ex.target for ex in clean_rows] + strings
    return [format_prompt(config.task.template, ex) for ex in clean_rows] + strings


def prepare_data(config: RunConfig) -> PreparedData:
    """Load and split the data, poison the training rows, trigger the test rows (seeded per stage)."""
    splits = load_splits(config)
    attack = build_attack(config.attack, getattr(config.task, "num_labels", 0))
    poisoned = attack.poison(splits.train, stage_rng(config.seed, "attack"))
    triggered_test = attack.triggered_test(splits.test, stage_rng(config.seed, "trigger-test"))
    return PreparedData(splits.train, splits.dev, splits.test, poisoned, triggered_test, splits.notes,
                        list(getattr(attack, "notes", [])))


def default_learning_rate(config: RunConfig) -> float:
    if config.train.learning_rate is not None:
        return config.train.learning_rate
    if config.model.finetune_method == "lora":
        return 2e-4
    return 1e-3 if config.model.preset == "tiny" else 2e-5


class RunExists(FileExistsError):
    """The run directory (or an interrupted run's checkpoints) exists and the caller did not say what to do."""


def _comparable(config: RunConfig) -> dict:
    """The configuration without where it is written: two runs with equal dumps compute the same thing."""
    return config.model_dump(mode="json", exclude={"output_dir", "name"})


def finished_metrics(run_dir: Path, config: RunConfig) -> dict | None:
    """metrics.json of a finished run of exactly this configuration in run_dir, else None."""
    from .config import load_config

    if not (run_dir / "metrics.json").exists() or not (run_dir / "config.yaml").exists():
        return None
    try:
        if _comparable(load_config(run_dir / "config.yaml")) != _comparable(config):
            return None
    except ValueError:
        return None
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


def checkpoint_dir_of(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.checkpoints")


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
        before, now = _comparable(load_config(saved)), _comparable(config)
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise RunExists(f"--resume: the checkpoints in {checkpoints} belong to another configuration "
                            f"(sections that differ: {', '.join(changed)}); pass --overwrite to start again")
    return checkpoints


def run(config: RunConfig, overwrite: bool = False, run_dir: Path | None = None,
        resume: bool = False) -> tuple[Path, dict]:
    """Run one configuration; returns the run directory and its metrics.

    overwrite: replace an existing run directory (and start again, discarding checkpoints);
    resume: continue from the checkpoints of an interrupted run of the same configuration; a finished run of it
    is returned as it is."""
    started = time.perf_counter()
    final_dir = run_dir or Path(config.output_dir) / config.run_name
    if resume and not overwrite and (done := finished_metrics(final_dir, config)) is not None:
        log.info("%s is finished with this configuration; nothing to do", final_dir)
        return final_dir, done
    checkpoints = _prepare_checkpoints(final_dir, config, overwrite, resume)
    stage_seconds: dict[str, float] = {}

    def lap(stage: str, since: float) -> float:
        now = time.perf_counter()
        stage_seconds[stage] = round(now - since, 3)
        return now

    n = getattr(config.task, "num_labels", 0)
    if not config.is_generation and getattr(config.attack, "target_label", 0) >= n:
        raise ValueError(f"attack.target_label={config.attack.target_label} is not a label (0..{n - 1})")
    data, cache_hit = prepared_data(config, prepare_data, cache_root())
    splits = Splits(data.train, data.dev, data.test, data.data_notes)
    poisoned, triggered_test = data.poisoned, data.triggered_test
    mark = lap("load_and_poison", started)
    defense = build_defense(config.defense, n)
    train_rows = defense.before_training(poisoned, stage_rng(config.seed, "defense"))
    mark = lap("defend", mark)

    # diagnostics joined after the fact on source_index; the defense itself never saw the flags
    poisoned_ids = {ex.meta.source_index for ex in poisoned if ex.meta.poisoned}
    benign_ids = {ex.meta.source_index for ex in train_rows if ex.meta.benign}

    load_dtype, mixed_precision = training_precision(config.model)
    accelerator = make_accelerator(config.train, mixed_precision, project_dir=final_dir.parent / "trackers")
    if config.train.log_with:  # e.g. tensorboard: OUTPUT_DIR/trackers/RUN_NAME
        scalars = {k: v if isinstance(v, (int, float, str, bool)) else str(v)  # trackers take scalars
                   for k, v in flatten(_comparable(config)).items()}
        accelerator.init_trackers(final_dir.name, config=scalars)
    if accelerator.is_main_process:
        write_text_atomic(checkpoints / "config.yaml", to_yaml(config))
    set_seed(config.seed)
    # the tiny preset's tokenizer: clean rows and the run's (or its group's) strings, never poisoned text
    model, tokenizer = load_base_model(config.model, tokenizer_corpus(splits.train, config), config.seed,
                                       dtype=load_dtype, device=accelerator.device)
    mark = lap("load_model", mark)
    stealth = None
    if config.stealth_report:
        reference, reference_tokenizer = model, tokenizer
        if config.stealth_reference is not None:
            source = ({"preset": "smollm2-135m"} if config.stealth_reference == "smollm2-135m"
                      else {"preset": None, "name_or_path": config.stealth_reference})
            reference, reference_tokenizer = load_base_model(ModelConfig(**source, finetune="full"),
                                                             device=accelerator.device)
        stealth = stealth_report(reference, reference_tokenizer, splits.train, poisoned,
                                 config.train.eval_batch_size, accelerator.device)
        stealth["reference"] = config.stealth_reference or "base model"
        del reference
        mark = lap("stealth", mark)
    task_class = GenerationTask if config.is_generation else ClassificationTask
    task = task_class(config.task, tokenizer, defense, config.train.max_length)
    # the attack's triggers, joined back by source row only to keep them through a cut of a long prompt
    triggers = {ex.meta.source_index: ex.meta.trigger for ex in poisoned if ex.meta.trigger}
    features = [task.encode_training(ex, triggers.get(ex.meta.source_index)) for ex in train_rows]
    batch, device = config.train.eval_batch_size, accelerator.device
    output_target = getattr(config.attack, "target_output", None) if config.attack.name != "none" else None

    def dev_quality(m) -> float:
        if config.is_generation:
            dev_predictions, _ = predict_generation(m, task, splits.dev, "dev", batch, device)
            return generation_metrics(config.task.name, dev_predictions, [])[config.task.quality_metric]
        return accuracy(predict(m, task, splits.dev, "dev", batch, device))

    mark = lap("encode", mark)
    train_report = train(model, features, tokenizer.pad_token_id, config.train, default_learning_rate(config),
                         config.seed, dev_quality if splits.dev else None, accelerator, checkpoints, resume)
    model = accelerator.unwrap_model(model)
    mark = lap("train", mark)
    if config.is_generation:
        clean, clean_seconds = predict_generation(model, task, splits.test, "clean", batch, device)
        triggered, triggered_seconds = predict_generation(model, task, triggered_test, "triggered", batch, device,
                                                          output_target)
        metrics = generation_metrics(config.task.name, clean, triggered)
        generated = sum(p.new_tokens for p in clean + triggered)
        metrics.update(ca=metrics[config.task.quality_metric], quality_metric=config.task.quality_metric,
                       generation_tokens_per_s=generated / max(clean_seconds + triggered_seconds, 1e-9))
    else:
        clean = predict(model, task, splits.test, "clean", batch, device)
        triggered = predict(model, task, triggered_test, "triggered", batch, device)
        target = None if config.attack.name == "none" else config.attack.target_label
        expected_raw = {i: defense.expected_raw_label(i) for i in range(n)}
        metrics = classification_metrics(clean, triggered, target, expected_raw)
        metrics.update(quality_metric="accuracy", verbalizers=task.verbalizers)
    mark = lap("evaluate", mark)
    metrics.update(
        run=config.run_name, attack=config.attack.name, defense=config.defense.name, seed=config.seed,
        num_train=len(splits.train), num_train_after_defense=len(train_rows), num_dev=len(splits.dev),
        num_poisoned=len(poisoned_ids), num_benign=len(benign_ids),
        num_poisoned_in_benign_subset=len(poisoned_ids & benign_ids), learning_rate=default_learning_rate(config),
        best_epoch=train_report.best_epoch, epochs=train_report.epochs,
        resumed_from_epoch=train_report.resumed_from_epoch,
        train_seconds=train_report.seconds, train_tokens_per_s=train_report.tokens_per_s,
        eval_seconds=stage_seconds["evaluate"], data_notes=splits.notes,
        attack_notes=data.attack_notes, data_cache_hit=cache_hit, stealth=stealth,
        provenance=provenance(model, accelerator))
    if accelerator.is_main_process:
        hint = f"; the trained state is in {checkpoints} (--resume writes the run without training again)"
        with staged_directory(final_dir, overwrite, hint) as staging:
            write_text_atomic(staging / "config.yaml", to_yaml(config))
            write_jsonl_atomic(staging / "train_log.jsonl", train_report.epochs)
            write_jsonl_atomic(staging / "predictions.jsonl", (p.to_json() for p in clean + triggered))
            save_trained(model, tokenizer, staging / "model")
            lap("write", mark)
            metrics.update(stage_seconds=stage_seconds, wall_seconds=round(time.perf_counter() - started, 3))
            write_json_atomic(staging / "metrics.json", metrics)  # last: its presence means complete
        shutil.rmtree(checkpoints, ignore_errors=True)
    accelerator.wait_for_everyone()
    if config.train.log_with:
        accelerator.end_training()
    return final_dir, metrics


def reference_configs(config: RunConfig) -> dict[str, RunConfig]:
    """The clean reference, the undefended attack and (if a defense is set) the defended run, same seed; all
    with one shared tokenizer vocabulary (tiny preset)."""
    configs = {}
    if config.attack.name != "none":
        clean_attack = config.attack.model_copy(update={"rate": 0.0})
        configs["clean"] = config.model_copy(update={"attack": clean_attack, "defense": _no_defense()})
    configs["undefended"] = config.model_copy(update={"defense": _no_defense()})
    if config.defense.name != "none":
        configs[config.defense.name] = config
    return dict(zip(configs, shared_vocabulary(list(configs.values())), strict=True))


def _no_defense():
    from .defenses import DEFENSES

    return DEFENSES["none"].config_class()


def run_with_baselines(config: RunConfig, overwrite: bool = False, resume: bool = False) -> tuple[Path, list[dict]]:
    """Run the references and the defended run into one directory with a summary table. A run whose directory
    holds a finished run of the identical configuration is not run again (unless overwrite)."""
    root = Path(config.output_dir) / config.run_name
    rows = []
    for label, cfg in reference_configs(config).items():
        run_dir = root / label
        metrics = None if overwrite else finished_metrics(run_dir, cfg)
        if metrics is not None:
            log.info("== %s: finished already in %s, not run again", label, run_dir)
        else:
            log.info("== %s: attack=%s (rate %s), defense=%s", label, cfg.attack.name,
                     getattr(cfg.attack, "rate", 0), cfg.defense.name)
            run_dir, metrics = run(cfg, overwrite=overwrite, run_dir=run_dir, resume=resume)
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

