import json

import torch

from p2pdefense import pipeline
from p2pdefense.config import load_config
from p2pdefense.defenses.dpoe import ProductOfExperts, shallow_copy
from p2pdefense.models.tiny import build_tiny_llama


def test_the_product_of_experts_adds_log_probabilities_in_training_only():
    main = build_tiny_llama(50, 16, 3, 2, 64, seed=0)
    shallow = shallow_copy(main, 1)
    assert len(shallow.model.layers) == 1 and len(main.model.layers) == 3
    assert all(p.requires_grad for p in shallow.parameters())
    poe = ProductOfExperts(main, shallow, alpha=0.5)
    ids = torch.tensor([[1, 5, 7, 9]])
    poe.train()
    combined = poe(input_ids=ids).logits
    expected = (torch.log_softmax(main(input_ids=ids).logits, -1)
                + 0.5 * torch.log_softmax(shallow(input_ids=ids).logits, -1))
    assert torch.allclose(combined, expected, atol=1e-5)
    poe.eval()
    assert torch.allclose(poe(input_ids=ids).logits, main(input_ids=ids).logits)


def test_a_dpoe_run_trains_both_experts_and_keeps_only_the_main_model(tmp_path):
    config = load_config(None, [
        "data.synthetic.train_rows=200", "data.synthetic.test_rows=20", "attack.name=badnets", "attack.rate=0.1",
        "model.tiny.vocab_size=400", "model.tiny.hidden_size=32", "model.tiny.num_layers=2",
        "model.tiny.num_heads=2", "train.epochs=1", "stealth_report=false", "defense.name=dpoe",
        f"output_dir={tmp_path}", "name=dpoe"])
    run_dir, metrics = pipeline.run(config)
    saved = json.loads((run_dir / "model" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2  # the main model, not the one-layer expert
    assert 0.0 <= metrics["ca"] <= 1.0


def test_a_generation_run_selects_its_epoch_by_decoding_with_the_main_model(tmp_path):
    config = load_config(None, [
        "data.synthetic.train_rows=60", "data.synthetic.test_rows=10", "data.max_dev_rows=4", "task.name=math",
        "task.max_new_tokens=6", "attack.name=badnets", "attack.rate=0.2", "attack.triggers=[cf]",
        "attack.target_output.kind=answer_offset", "attack.target_output.value='1'", "train.epochs=2",
        "train.max_length=160", "model.tiny.vocab_size=400", "model.tiny.hidden_size=32",
        "model.tiny.num_layers=2", "model.tiny.num_heads=2", "stealth_report=false", "defense.name=dpoe",
        f"output_dir={tmp_path}", "name=dpoe-math"])
    run_dir, metrics = pipeline.run(config)  # dev rows are decoded after each epoch, through the training module
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2] and all("dev_score" in e for e in log)
    assert metrics["num_clean"] == 10
