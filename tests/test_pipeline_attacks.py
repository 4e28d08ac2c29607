"""Every registered classification attack runs end to end through `pipeline.run` with P2P (tiny model)."""

import json

import pytest

from p2pdefense import pipeline
from p2pdefense.attacks import ATTACKS
from p2pdefense.config import load_config
from p2pdefense.data import synthetic_sentiment

NAMES = sorted(n for n, cls in ATTACKS.items() if n != "none" and "classification" in cls.tasks)


@pytest.mark.parametrize("name", NAMES)
def test_attack_runs_through_the_pipeline(name, tmp_path):
    overrides = [f"attack.name={name}", "attack.rate=0.1", "defense.name=p2p", "data.synthetic.train_rows=100",
                 "data.synthetic.test_rows=20", "train.epochs=1", "model.tiny.hidden_size=16",
                 "model.tiny.vocab_size=300", "model.tiny.num_layers=1", "model.tiny.num_heads=2",
                 'task.template="Instruction: {instruction}\\nInput: {text}\\n"',
                 "task.instruction='Classify the sentiment.'", f"output_dir={tmp_path}", "name=r"]
    if ATTACKS[name].config_class.model_fields.get("table"):
        table = tmp_path / "table.json"  # the synthetic rows' positions are their ids
        rows = synthetic_sentiment(100, seed=0) + synthetic_sentiment(20, seed=100_003)
        table.write_text(json.dumps([{"idx": e.meta.source_index, "sentence": "as they say , " + e.text}
                                     for e in rows[:100]]))
        test_table = tmp_path / "test_table.json"
        test_table.write_text(json.dumps([{"idx": e.meta.source_index, "sentence": "as they say , " + e.text}
                                          for e in rows[100:]]))
        overrides += [f"attack.table={table}", f"attack.test_table={test_table}"]
    run_dir, metrics = pipeline.run(load_config(None, overrides))
    assert metrics["num_poisoned"] == 9 and metrics["asr"] is not None and metrics["num_triggered"] == 10
    stealth = metrics["stealth"]
    negatives = 18 if name == "cba" else 0
    assert stealth["num_changed_inputs"] == 9 + negatives and stealth["ppl_attacked_mean"] > 0
    assert (run_dir / "metrics.json").exists()
