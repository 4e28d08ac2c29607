from dataclasses import replace

import pytest
import torch

from p2pdefense.data import synthetic_sentiment
from p2pdefense.models.tiny import build_tiny_llama, train_tokenizer
from p2pdefense.stealth import perplexities, stealth_report


@pytest.fixture(scope="module")
def lm():
    rows = synthetic_sentiment(300, seed=0)
    tokenizer = train_tokenizer([e.text for e in rows], 400)
    model = build_tiny_llama(len(tokenizer), 32, 1, 2, 128, seed=0)
    # a few steps of language modelling so that in-distribution text is likelier than gibberish
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        batch = tokenizer([e.text for e in rows[:32]], padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer, rows


def test_perplexity_matches_the_models_own_loss(lm):
    model, tokenizer, rows = lm
    (ppl,) = perplexities(model, tokenizer, [rows[0].text], 4, "cpu")
    ids = torch.tensor([tokenizer(rows[0].text)["input_ids"]])
    assert ppl == pytest.approx(torch.exp(model(input_ids=ids, labels=ids).loss).item(), rel=1e-4)
    batched = perplexities(model, tokenizer, [e.text for e in rows[:5]], 2, "cpu")
    single = [perplexities(model, tokenizer, [e.text], 1, "cpu")[0] for e in rows[:5]]
    assert batched == pytest.approx(single, rel=1e-4)


def test_perplexity_projects_chunks_of_positions_with_the_same_result(lm, monkeypatch):
    from p2pdefense import stealth

    model, tokenizer, rows = lm
    texts = [e.text for e in rows[:4]]
    whole = perplexities(model, tokenizer, texts, 4, "cpu")
    monkeypatch.setattr(stealth, "LOGIT_CHUNK", 3)  # several chunks per text, a ragged last one
    assert perplexities(model, tokenizer, texts, 4, "cpu") == pytest.approx(whole, rel=1e-5)


def test_stealth_report_counts_changes_and_sees_rare_word_triggers(lm):
    model, tokenizer, rows = lm
    attacked = [replace(e, text=e.text + " cf zq xj") if i % 10 == 0 else e for i, e in enumerate(rows)]
    report = stealth_report(model, tokenizer, rows, attacked, 16, "cpu")
    assert report["num_changed_inputs"] == 30 and report["num_inputs"] == 300
    assert report["ppl_attacked_mean"] > report["ppl_clean_mean"] and report["ppl_ratio_geomean"] > 1
    assert stealth_report(model, tokenizer, rows, rows, 16, "cpu") == {"num_changed_inputs": 0, "num_inputs": 300}


def test_pipeline_uses_a_separate_reference_model_when_asked(lm, tmp_path):
    from p2pdefense.config import load_config
    from p2pdefense.pipeline import run

    model, tokenizer, _ = lm
    model.save_pretrained(tmp_path / "reference-lm")
    tokenizer.save_pretrained(tmp_path / "reference-lm")
    common = ["attack.name=badnets", "attack.rate=0.1", "data.synthetic.train_rows=60", "data.synthetic.test_rows=20",
              "train.epochs=1", "model.tiny.hidden_size=16", "model.tiny.vocab_size=300", f"output_dir={tmp_path}",
              "model.dtype=float32"]  # the reference in float32 as `expected` below (a GPU's "auto" is bf16)
    _, own = run(load_config(None, [*common, "name=own"]))
    _, ref = run(load_config(None, [*common, "name=ref", f"stealth_reference={tmp_path / 'reference-lm'}"]))
    assert own["stealth"]["reference"] == "base model" and ref["stealth"]["reference"] == str(tmp_path / "reference-lm")
    assert own["stealth"]["num_changed_inputs"] == ref["stealth"]["num_changed_inputs"] == 5
    expected = stealth_report(model, tokenizer, *_clean_and_attacked(common), 64, "cpu")
    assert ref["stealth"]["ppl_clean_mean"] == pytest.approx(expected["ppl_clean_mean"], rel=1e-4)


def test_the_stealth_report_is_measured_once_per_attack_rows_and_reference_model(tmp_path, monkeypatch):
    from p2pdefense import pipeline
    from p2pdefense.config import load_config

    monkeypatch.setenv("P2P_CACHE_DIR", str(tmp_path / "cache"))
    measured = []
    monkeypatch.setattr(pipeline, "stealth_report", lambda *args: measured.append(1) or stealth_report(*args))
    common = ["attack.name=badnets", "attack.rate=0.1", "data.synthetic.train_rows=60", "data.synthetic.test_rows=20",
              "train.epochs=1", "model.tiny.hidden_size=16", "model.tiny.vocab_size=300", f"output_dir={tmp_path}"]
    _, first = pipeline.run(load_config(None, [*common, "defense.name=none", "name=a"]))
    _, again = pipeline.run(load_config(None, [*common, "defense.name=none", "name=b"]))  # another run, same rows
    assert len(measured) == 1 and again["stealth"] == first["stealth"]
    assert first["stealth"]["num_changed_inputs"] == 5
    # P2P's prompt joins the tiny tokenizer's corpus: another base model, measured again
    pipeline.run(load_config(None, [*common, "defense.name=p2p", "name=c"]))
    # so does another attack on the same rows
    pipeline.run(load_config(None, [*common, "defense.name=none", "attack.triggers=[cf]", "name=d"]))
    assert len(measured) == 3


def _clean_and_attacked(overrides):
    from p2pdefense.attacks import build_attack
    from p2pdefense.config import load_config
    from p2pdefense.pipeline import load_splits, stage_rng

    config = load_config(None, overrides)
    splits = load_splits(config)
    attacked = build_attack(config.attack, config.task).poison(splits.train, stage_rng(config.seed, "attack"))
    return splits.train, attacked
