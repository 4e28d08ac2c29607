"""Prediction on new inputs with a finished run's model; the run's defense is applied automatically."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .config import RunConfig, load_config
from .data import Example, ExampleMeta, load_examples
from .defenses import build_defense
from .evaluate import predict
from .models import load_trained
from .tasks import ClassificationTask, GenerationTask


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
    defense = build_defense(config.defense, getattr(config.task, "num_labels", 0))
    device = next(model.parameters()).device
    if config.is_generation:
        task = GenerationTask(config.task, tokenizer, defense, config.train.max_length)
        generations, _ = task.generate(model, [defense.at_inference(ex.for_inference()) for ex in examples], batch_size,
                                      device)
        rows = []
        for ex, gen in zip(examples, generations, strict=True):
            output, compliant = defense.strip_output(gen.raw)
            rows.append({"id": ex.meta.source_index, "input": gen.prompt_text, "raw": gen.raw, "output": output,
                         "prefix_compliant": compliant, "truncated": gen.truncated})
        return rows
    task = ClassificationTask(config.task, tokenizer, defense, config.train.max_length)
    rows = []
    for p in predict(model, task, examples, "input", batch_size, device):
        row = {"id": p.source_index, "input": p.input, "raw": p.raw, "label": p.folded, "scores": p.scores,
               "truncated": p.truncated}
        if config.task.label_names:
            row["label_name"] = config.task.label_names[p.folded]
        rows.append(row)
    return rows
