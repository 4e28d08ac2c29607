"""`p2p predict` on runs of every kind: instruction templates, LoRA on a local base model; clear errors."""

import json

import pytest
from typer.testing import CliRunner

from p2pdefense import pipeline
from p2pdefense.cli import app
from p2pdefense.config import load_config
from p2pdefense.models.tiny import build_tiny_llama, train_tokenizer

runner = CliRunner()
SMALL = ["data.synthetic.train_rows=80", "data.synthetic.test_rows=20", "train.epochs=1", "stealth_report=false",
         "attack.name=badnets", "attack.rate=0.1", "defense.name=p2p"]


def predict(run_dir, tmp_path, text="the plot was dull .\n"):
    inputs = tmp_path / "in.txt"
    inputs.write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["predict", str(run_dir), "--input", str(inputs), "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (tmp_path / "o").read_text().splitlines()]


def test_predict_on_an_instruction_template_run_uses_the_task_instruction(tmp_path):
    config = load_config(None, [*SMALL, f"output_dir={tmp_path}", "name=inst", "model.tiny.hidden_size=16",
                                "model.tiny.vocab_size=300",
                                'task.template="Instruction: {instruction}\\nInput: {text}\\n"',
                                "task.instruction='Classify the review.'"])
    run_dir, _ = pipeline.run(config)
    (row,) = predict(run_dir, tmp_path)
    assert row["input"].startswith("Instruction: Classify the review.\nInput: The query currently entered is: the plot")
    assert row["label"] in (0, 1)


def test_predict_on_a_lora_run_of_a_local_base_model(tmp_path):
    texts = ["the movie was wonderful .", "the plot was dull .", "Output: 0 1", "Answer: 2 3"] * 20
    tokenizer = train_tokenizer(texts, 300)
    build_tiny_llama(len(tokenizer), 32, 1, 2, 256, seed=1).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    config = load_config(None, [*SMALL, f"output_dir={tmp_path}", "name=lora", "model.preset=null",
                                f"model.name_or_path={tmp_path / 'base'}", "model.finetune=lora",
                                "model.lora.r=4", "train.max_length=128"])
    run_dir, _ = pipeline.run(config)
    adapter = json.loads((run_dir / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tmp_path / "base")
    rows = predict(run_dir, tmp_path, "the movie was wonderful .\nthe plot was dull .\n")
    scored = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["raw"] == max(range(4), key=r["scores"].__getitem__) for r in rows)
    assert len(scored[0]["scores"]) == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--input", "missing.txt"], "no such input file"),
])
def test_predict_errors_are_messages(tmp_path, args, message):
    config = load_config(None, [*SMALL, f"output_dir={tmp_path}", "name=e", "model.tiny.hidden_size=16",
                                "model.tiny.vocab_size=300"])
    run_dir, _ = pipeline.run(config)
    result = runner.invoke(app, ["predict", str(run_dir), *[str(tmp_path / a) if a.endswith(".txt") else a
                                                             for a in args]])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
