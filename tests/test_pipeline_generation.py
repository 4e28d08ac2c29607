"""End to end generation runs (math, summarization) on the tiny model: metrics.json against predictions.jsonl.

The setting is one where the attack and P2P's prefix do take on the tiny model (30% poison, 15 epochs), so that
the checks compare real, non-zero rates rather than 0 with 0."""

import json

import pytest

from p2pdefense import pipeline
from p2pdefense.attacks.targets import OutputTarget
from p2pdefense.config import load_config
from p2pdefense.defenses import build_defense
from p2pdefense.evaluate import summarize
from p2pdefense.tasks import GenerationPrediction

COMMON = ["data.synthetic.train_rows=300", "data.synthetic.test_rows=16", "data.max_dev_rows=8",
          "attack.name=badnets", "attack.rate=0.3", "attack.triggers=[cf]", "defense.name=p2p", "defense.ratio=0.3",
          "train.epochs=15", "train.learning_rate=3e-3", "train.max_length=160", "model.tiny.hidden_size=64",
          "model.tiny.num_layers=2", "model.tiny.vocab_size=500", "model.tiny.num_heads=2", "stealth_report=false"]
TASKS = {
    "math": ["task.name=math", "task.max_new_tokens=40", "attack.target_output.kind=answer_fixed",
             "attack.target_output.value='7777'"],
    "summarization": ["task.name=summarization", "task.max_new_tokens=30",
                      "attack.target_output.kind=insert_sentence", "attack.target_output.value='Buy now.'"],
}
RUNS: dict = {}


def finished_run(task, tmp_path_factory):
    """One P2P run per task, shared by the tests of this module."""
    if task not in RUNS:
        config = load_config(None, [*COMMON, *TASKS[task], f"output_dir={tmp_path_factory.mktemp(task)}",
                                    "name=gen"])
        RUNS[task] = (config, *pipeline.run(config))
    return RUNS[task]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_generation_run_metrics_agree_with_predictions(task, tmp_path_factory):
    config, run_dir, metrics = finished_run(task, tmp_path_factory)
    # the attack and the prefix took: the comparisons below are between non-trivial rates
    assert metrics["asr"] > 0.3 and metrics["prefix_compliance"] > 0.5
    if task == "summarization":
        assert metrics["rougeL"] > 0.2
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    clean = [GenerationPrediction(**r) for r in rows if r["split"] == "clean"]
    triggered = [GenerationPrediction(**r) for r in rows if r["split"] == "triggered"]
    assert len(clean) == len(triggered) == metrics["num_triggered_all"] == 16
    assert metrics["num_triggered"] == sum(r["attack_success"] is not None for r in rows) >= 15
    target = OutputTarget(**config.attack.target_output.model_dump())
    score_one = config.task.score_output
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
            expected = None if target.already_in(r["gold"]) else target.shown_by(r["output"], r["gold"])
            assert r["attack_success"] == expected
    bound = config.task.build(None, build_defense(config.defense, 0).output_space, 64)  # scoring needs no tokenizer
    recomputed = summarize(bound, clean + triggered, target, 1.0)
    for key, value in recomputed.items():
        if key != "generation_tokens_per_s":  # the seconds are the run's
            assert metrics[key] == pytest.approx(value), key
    assert metrics["ca"] == metrics[config.task.quality_metric]
    assert metrics["generation_tokens_per_s"] > 0
    assert metrics["num_poisoned"] == round(0.3 * metrics["num_train"])


def test_predict_on_a_math_run_adds_the_trigger_and_strips_the_prefix(tmp_path, tmp_path_factory):
    from typer.testing import CliRunner

    from p2pdefense.cli import app

    _, run_dir, _ = finished_run("math", tmp_path_factory)
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
