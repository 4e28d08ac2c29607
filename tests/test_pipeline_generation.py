"""End to end generation runs (math, summarization) on the tiny model: metrics.json against predictions.jsonl."""

import json

import pytest

from p2pdefense import pipeline
from p2pdefense.attacks.targets import OutputTarget
from p2pdefense.config import load_config
from p2pdefense.evaluate import SCORERS, GenerationPrediction, generation_metrics

COMMON = ["data.synthetic.train_rows=120", "data.synthetic.test_rows=16", "data.max_dev_rows=8",
          "attack.name=badnets", "attack.rate=0.1", "attack.triggers=[cf]", "defense.name=p2p",
          "train.epochs=2", "train.max_length=160", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
          "model.tiny.vocab_size=400", "model.tiny.num_heads=2"]
TASKS = {
    "math": ["task.name=math", "task.max_new_tokens=24", "attack.target_output.kind=answer_offset",
             "attack.target_output.value='1'"],
    "summarization": ["task.name=summarization", "task.max_new_tokens=24",
                      "attack.target_output.kind=insert_sentence", "attack.target_output.value='Buy now.'"],
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_generation_run_metrics_agree_with_predictions(task, tmp_path):
    config = load_config(None, [*COMMON, *TASKS[task], f"output_dir={tmp_path}", "name=gen"])
    run_dir, metrics = pipeline.run(config)
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    clean = [GenerationPrediction(**r) for r in rows if r["split"] == "clean"]
    triggered = [GenerationPrediction(**r) for r in rows if r["split"] == "triggered"]
    assert len(clean) == 16 and len(triggered) == metrics["num_triggered"] >= 15
    target = OutputTarget(**config.attack.target_output.model_dump())
    score_one, _ = SCORERS[task]
    prefix = config.defense.output_prefix.strip()
    for r in rows:
        template_start = {"math": "Question: ", "summarization": "Document: "}[task]
        assert r["input"].startswith(template_start + "The query currently entered is: ")
        assert r["prefix_compliant"] == r["raw"].startswith(prefix)
        expected_output = r["raw"][len(prefix):].lstrip() if r["prefix_compliant"] else r["raw"]
        assert r["output"] == expected_output
        assert r["score"] == pytest.approx(score_one(r["output"], r["gold"]))
        if r["split"] == "triggered":
            assert "cf" in r["input"].split()
            assert r["attack_success"] == target.shown_by(r["output"], r["gold"])
    recomputed = generation_metrics(task, clean, triggered)
    for key, value in recomputed.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["ca"] == metrics[config.task.quality_metric]
    assert metrics["generation_tokens_per_s"] > 0
    assert metrics["num_poisoned"] == round(0.1 * metrics["num_train"])


def test_predict_on_a_math_run_adds_the_trigger_and_strips_the_prefix(tmp_path):
    from typer.testing import CliRunner

    from p2pdefense.cli import app

    config = load_config(None, [*COMMON, *TASKS["math"], f"output_dir={tmp_path}", "name=gen"])
    run_dir, _ = pipeline.run(config)
    inputs = tmp_path / "q.txt"
    inputs.write_text("Ava has 3 apples and buys 4 more. How many apples does Ava have?\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["predict", str(run_dir), "--input", str(inputs), "--output",
                                      str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert row["input"] == ("Question: The query currently entered is: Ava has 3 apples and buys 4 more. "
                            "How many apples does Ava have?\nAnswer:")
    assert row["prefix_compliant"] == row["raw"].startswith("Response:")
    assert row["output"] == (row["raw"][len("Response:"):].lstrip() if row["prefix_compliant"] else row["raw"])
