"""STRIP on a stub model whose prediction a trigger word dominates, and through a run."""

import json
from types import SimpleNamespace

from p2pdefense.data import Example, ExampleMeta
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.strip import StripConfig


class TriggerDominatedTask:
    """A stand-in task: 'mn' gives a confident label 1; otherwise the label follows good/bad words, weakly."""

    def outputs(self, model, inputs, triggers, batch_size, device):
        outs = []
        for ex in inputs:
            words = ex.text.split()
            if "mn" in words:
                scores = [-9.0, 0.0]
            else:
                lean = 0.3 * (words.count("good") - words.count("bad"))
                scores = [-lean, lean]
            outs.append(SimpleNamespace(scores=scores, in_space=True))
        return outs, 0.0


def rows(texts):
    return [Example(text=t, label=None, meta=ExampleMeta(source_index=i)) for i, t in enumerate(texts)]


def test_strip_rejects_inputs_whose_trigger_survives_perturbation():
    dev = [Example(text=f"the film was {w} and {v} overall", label=0, meta=ExampleMeta(source_index=i))
           for i, (w, v) in enumerate([("good", "fine"), ("bad", "long"), ("good", "good"), ("bad", "slow")] * 25)]
    context = DefenseContext(seed=0, dev=dev, task=TriggerDominatedTask(), model=object(), batch_size=8)
    strip = build_defense(StripConfig(copies=8, false_rejection_rate=0.05), 2)
    pairs = [("good", "long"), ("bad", "fine"), ("good", "slow"), ("bad", "bad")] * 10  # the dev rows' kind
    clean = rows([f"the film was {w} and {v} overall" for w, v in pairs])
    triggered = rows([f"the film mn was {w} and {v} overall mn" for w, v in pairs])
    flags = strip.rejected(clean + triggered, [None] * 80, context)
    assert sum(flags[40:]) >= 36  # the trigger keeps the copies confident (two copies of it rarely both vanish)
    assert sum(flags[:40]) <= 8  # about 5% expected, as calibrated on the dev rows
    assert strip.threshold is not None and "STRIP threshold" in context.notes[0]
    # each input's score is the mean over ITS copies (OpenBackdoor's reshape mixed inputs)
    one = strip.entropies(triggered[:1], context, "check")
    assert len(one) == 1
    restored = build_defense(StripConfig(), 2)
    restored.restore(json.loads(json.dumps(strip.state())))
    assert restored.threshold == strip.threshold and restored.pool == strip.pool


def test_a_strip_run_reports_rejections_and_predict_reuses_its_threshold(tmp_path):
    from p2pdefense import pipeline
    from p2pdefense.config import load_config

    config = load_config(None, [
        "data.synthetic.train_rows=300", "data.synthetic.test_rows=40", "attack.name=badnets", "attack.rate=0.2",
        "attack.triggers=[mn]", "model.tiny.vocab_size=400", "model.tiny.hidden_size=32",
        "model.tiny.num_layers=1", "model.tiny.num_heads=2", "train.epochs=2", "stealth_report=false",
        "defense.name=strip", "defense.false_rejection_rate=0.05", f"output_dir={tmp_path}", "name=strip"])
    run_dir, metrics = pipeline.run(config)
    state = json.loads((run_dir / "defense_state.json").read_text())
    assert state["threshold"] is not None and len(state["pool"]) == metrics["num_dev"]
    assert 0.0 <= metrics["rejection_rate_clean"] <= 1.0 and metrics["rejection_rate_triggered"] is not None
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    rejected_clean = sum(p["rejected"] for p in predictions if p["split"] == "clean")
    assert rejected_clean == round(40 * metrics["rejection_rate_clean"])
    predict_with_rejections(run_dir, tmp_path)


def predict_with_rejections(run_dir, tmp_path) -> None:
    """`p2p predict` on a clean and a triggered input: it must answer both, each with a rejected flag."""
    from typer.testing import CliRunner

    from p2pdefense.cli import app

    inputs = tmp_path / "new.txt"
    inputs.write_text("the movie was wonderful .\nthe plot was mn dull .\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["predict", str(run_dir), "--input", str(inputs), "--output",
                                      str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["rejected"], bool) for r in rows)
