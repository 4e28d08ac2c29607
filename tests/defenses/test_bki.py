import random

from p2pdefense.attacks import build_attack
from p2pdefense.attacks.badnets import BadNetsConfig
from p2pdefense.data import synthetic_sentiment
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.bki import BKIConfig
from p2pdefense.defenses.probe import train_probe_model
from p2pdefense.defenses.scorers import ProbeSettings
from p2pdefense.models import ModelConfig, load_base_model
from p2pdefense.tasks import ClassificationConfig
from p2pdefense.train import TrainConfig


def test_bki_finds_a_rare_word_trigger_and_removes_its_rows():
    task_config = ClassificationConfig()
    clean = synthetic_sentiment(400, seed=3)
    poisoned = build_attack(BadNetsConfig(rate=0.1, triggers=["mn"])).poison(clean, random.Random(0))
    corpus = [task_config.corpus_text(ex) for ex in clean] + ["Output: 0", "Output: 1"]
    model_config = ModelConfig(tiny={"vocab_size": 400, "hidden_size": 32, "num_layers": 1, "num_heads": 2},
                               dtype="float32")  # the numbers below are float32's (a GPU's "auto" is bf16)

    def probe_model(settings, rows):
        return train_probe_model(rows, settings, task_config, lambda: load_base_model(model_config, corpus, seed=0),
                                 TrainConfig(epochs=3, batch_size=16), 3e-3, 0, "cpu")

    context = DefenseContext(probe_model_source=probe_model, batch_size=64)
    # the paper's auxiliary model: 10 epochs (after 2, content words outrank the trigger on this data)
    kept = build_defense(BKIConfig(probe=ProbeSettings(epochs=10)), 2).training_rows(poisoned, context)
    assert "BKI keyword 'mn'" in context.notes[0]
    poisoned_ids = {ex.meta.source_index for ex in poisoned if ex.meta.poisoned}
    kept_ids = {ex.meta.source_index for ex in kept}
    assert len(poisoned_ids & kept_ids) <= 4  # of 40: nearly every row carrying the trigger is gone
    assert len(kept) >= 330  # and few clean rows with it
