import pytest

from p2pdefense import pipeline
from p2pdefense.config import load_config
from p2pdefense.defenses import MissingRequirement

SMALL = ["data.synthetic.train_rows=240", "data.synthetic.test_rows=40", "attack.name=badnets", "attack.rate=0.2",
         "attack.triggers=[mn]", "model.tiny.vocab_size=400", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
         "model.tiny.num_heads=2", "train.epochs=1", "stealth_report=false"]


def test_finetuning_on_trusted_rows_changes_the_trained_model(tmp_path):
    from safetensors.torch import load_file

    common = [*SMALL, "data.trusted_holdout=40", f"output_dir={tmp_path}"]
    _, plain = pipeline.run(load_config(None, [*common, "name=plain"]))
    _, repaired = pipeline.run(load_config(None, [*common, "defense.name=finetune", "defense.trusted_data=holdout",
                                                  "defense.epochs=3", "name=repaired"]))
    assert "fine-tuned on 40 trusted rows for 3 epochs" in repaired["defense_notes"][0]
    assert repaired["num_train_after_defense"] == plain["num_train_after_defense"]  # the training rows: unchanged
    before = load_file(tmp_path / "plain" / "model" / "model.safetensors")
    after = load_file(tmp_path / "repaired" / "model" / "model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before)
    with pytest.raises(MissingRequirement, match="data.trusted_holdout"):
        pipeline.run(load_config(None, [*SMALL, "defense.name=finetune", "defense.trusted_data=holdout",
                                        f"output_dir={tmp_path}", "name=none"]))
