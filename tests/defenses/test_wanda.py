import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from p2pdefense import pipeline
from p2pdefense.config import load_config
from p2pdefense.data import synthetic_sentiment
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.wanda import WandaConfig, decoder_linears, input_norms, prune_linear
from p2pdefense.models.tiny import build_tiny_llama, train_tokenizer
from p2pdefense.tasks import ClassificationConfig


def test_the_score_weighs_each_weight_by_its_input_norm():
    linear = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 0.5], [4.0, 0.1, 0.2, 0.3]]))
    # feature 3 carries large inputs: its small weights outrank larger weights on quiet features
    zeroed = prune_linear(linear, torch.tensor([1.0, 1.0, 1.0, 100.0]), sparsity=0.5)
    assert zeroed == 4
    assert torch.equal(linear.weight, torch.tensor([[0.0, 0.0, 3.0, 0.5], [4.0, 0.0, 0.0, 0.3]]))


def test_input_norms_count_real_tokens_only_and_skip_embeddings_and_head():
    model = build_tiny_llama(40, 8, 2, 2, 32, seed=0).eval()
    linears = decoder_linears(model)
    assert linears and all(".layers." in f".{n}" for n in linears) and "lm_head" not in linears
    row = {"input_ids": [5, 6, 7], "labels": [-100, -100, 7]}
    alone = input_norms(model, linears, [row], pad_id=0, batch_size=1, device="cpu")
    padded = input_norms(model, linears, [row, {"input_ids": [5] * 9, "labels": [-100] * 8 + [5]}], 0, 2, "cpu")
    longer = input_norms(model, linears, [{"input_ids": [5] * 9, "labels": [-100] * 8 + [5]}], 0, 1, "cpu")
    for name in linears:  # squared norms add over rows; the first row's padding adds nothing
        assert torch.allclose(padded[name] ** 2, alone[name] ** 2 + longer[name] ** 2, rtol=1e-6)


SMALL = ["data.synthetic.train_rows=240", "data.synthetic.test_rows=40", "attack.name=badnets", "attack.rate=0.2",
         "attack.triggers=[mn]", "model.tiny.vocab_size=400", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
         "model.tiny.num_heads=2", "train.epochs=1", "stealth_report=false", "data.trusted_holdout=40"]


def zero_shares(weights: dict) -> list[float]:
    return [(w == 0).float().mean(dim=1).min().item() for name, w in weights.items()
            if ".layers." in f".{name}" and name.endswith("proj.weight")]


def test_a_run_prunes_every_output_row_of_the_decoder_to_the_sparsity(tmp_path):
    run_dir, metrics = pipeline.run(load_config(None, [*SMALL, f"output_dir={tmp_path}", "defense.name=wanda",
                                                       "defense.trusted_data=holdout", "defense.trusted_rows=32",
                                                       "defense.sparsity=0.25", "name=pruned"]))
    assert "32 calibration rows" in metrics["defense_notes"][0]
    shares = zero_shares(load_file(run_dir / "model" / "model.safetensors"))
    assert len(shares) == 7 and min(shares) >= 0.25  # q, k, v, o, gate, up, down of the one block


def test_a_lora_model_is_merged_before_pruning():
    rows = synthetic_sentiment(20, seed=0)
    tokenizer = train_tokenizer([e.text for e in rows] + ["Output: 0", "Output: 1"], 300)
    base = build_tiny_llama(len(tokenizer), 16, 1, 2, 64, seed=0)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    defense = build_defense(WandaConfig(trusted_data="file.jsonl", trusted_rows=8, sparsity=0.5), 2)
    config = ClassificationConfig()
    context = DefenseContext(seed=0, task_config=config, trusted_source=lambda spec: rows,
                             task=config.build(tokenizer, defense.output_space, 64))
    pruned = defense.after_training(model, context)
    assert not isinstance(pruned, PeftModel) and not any("lora_" in n for n, _ in pruned.named_parameters())
    assert min(zero_shares(dict(pruned.named_parameters()))) >= 0.5
