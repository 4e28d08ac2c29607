"""Prediction on new inputs with a finished run's model; the run's defense is applied automatically."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .config import RunConfig, load_config
from .data import Example, ExampleMeta, load_examples
from .defenses import DefenseContext, build_defense
from .evaluate import evaluate
from .models import load_trained
from .pipeline import load_reference


def load_inputs(path: str, config: RunConfig, text_field: str | None = None) -> list[Example]:
    """Inputs: a .txt file (one text per line) or any loader format (labels and targets are not read). Rows
    without an instruction get the task's, as in training."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such input file")
    if path.endswith(".txt"):
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [Example(text=line, label=None, meta=ExampleMeta(source_index=i)) for i, line in enumerate(lines)]
    else:
        rows = load_examples(path, text_field=text_field or config.data.text_field, label_field=None,
                             instruction_field=config.data.instruction_field).examples
    default = getattr(config.task, "instruction", None)
    return [ex if ex.instruction is not None or default is None else replace(ex, instruction=default)
            for ex in rows]


def predict_run(run_dir: Path, input_path: str, text_field: str | None = None, batch_size: int = 32) -> list[dict]:
    if not (run_dir / "metrics.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a finished run (no metrics.json)")
    config = load_config(run_dir / "config.yaml")
    examples = load_inputs(input_path, config, text_field)
    model, tokenizer = load_trained(config.model, run_dir / "model")
    defense = build_defense(config.defense, config.task.num_labels)
    state = run_dir / "defense_state.json"
    if state.exists():  # what the defense learned in the run (a threshold)
        defense.restore(json.loads(state.read_text(encoding="utf-8")))
    device = next(model.parameters()).device
    task = config.task.build(tokenizer, defense.output_space, config.train.max_length)
    context = DefenseContext(seed=config.seed, task_config=config.task, batch_size=batch_size, device=device,
                             task=task, model=model, reference_source=lambda name: load_reference(
                                 name, config, None, device, tiny_tokenizer=tokenizer))
    predictions, _ = evaluate(model, task, defense, context, [(ex, "input") for ex in examples], None, batch_size,
                              device, config.seed)
    return [task.public_row(p) for p in predictions]
