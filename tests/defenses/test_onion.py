"""ONION with a small reference LM that learned the clean sentences' language."""

import pytest

from p2pdefense.data import Example, ExampleMeta, synthetic_sentiment
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.onion import OnionConfig, perplexities


@pytest.fixture(scope="module")
def fluent_reference():
    from p2pdefense.models import ModelConfig, load_base_model
    from p2pdefense.train import TrainConfig, train

    texts = [ex.text for ex in synthetic_sentiment(600, seed=2)]
    model, tokenizer = load_base_model(ModelConfig(tiny={"vocab_size": 400, "hidden_size": 48, "num_layers": 1,
                                                         "num_heads": 2}), texts + ["mn cf bb"], seed=0)
    features = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        features.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    train(model, features, tokenizer.pad_token_id, TrainConfig(epochs=4, batch_size=16), 3e-3, seed=0)
    return model, tokenizer


def test_onion_removes_an_inserted_rare_word_and_keeps_clean_inputs(fluent_reference):
    model, tokenizer = fluent_reference
    clean = [ex.text for ex in synthetic_sentiment(60, seed=7)]
    assert perplexities(model, tokenizer, ["the movie was dull ."], 8, "cpu")[0] < \
        perplexities(model, tokenizer, ["the movie mn was dull ."], 8, "cpu")[0]
    dev = [Example(text=t, label=0, meta=ExampleMeta(source_index=i))
           for i, t in enumerate(ex.text for ex in synthetic_sentiment(80, seed=8))]
    context = DefenseContext(dev=dev, reference_source=lambda name: (model, tokenizer), batch_size=32)
    onion = build_defense(OnionConfig(clean_word_removal_rate=0.02), 2)
    triggered = []
    for text in clean:
        words = text.split()
        words.insert(len(words) // 2, "mn")
        triggered.append(" ".join(words))
    shown = onion.at_inference([Example(text=t, meta=ExampleMeta(source_index=i))
                                for i, t in enumerate(clean + triggered)], context)
    removed_trigger = sum("mn" not in ex.text.split() for ex in shown[60:])
    assert removed_trigger >= 50  # of 60
    kept_words = sum(len(ex.text.split()) for ex in shown[:60]) / sum(len(t.split()) for t in clean)
    assert kept_words > 0.9
    assert onion.threshold is not None and "ONION threshold" in context.notes[0]
    assert build_defense(OnionConfig(threshold=1.0), 2).state() == {"threshold": 1.0}


@pytest.fixture
def scored(monkeypatch) -> list[str]:
    """Every text the reference LM scores (ONION's perplexity calls, spied on)."""
    import p2pdefense.defenses.onion as onion_module

    texts_scored: list[str] = []

    def counting_perplexities(model, tokenizer, texts, batch_size, device):
        texts_scored.extend(texts)
        return perplexities(model, tokenizer, texts, batch_size, device)

    monkeypatch.setattr(onion_module, "perplexities", counting_perplexities)
    return texts_scored


DEV = [Example(text=t, label=0, meta=ExampleMeta(source_index=i))
       for i, t in enumerate(ex.text for ex in synthetic_sentiment(20, seed=8))]


def test_onion_scores_each_distinct_text_once_across_threshold_and_repeated_evaluations(fluent_reference, scored):
    model, tokenizer = fluent_reference
    context = DefenseContext(dev=DEV, reference_source=lambda name: (model, tokenizer), batch_size=32)
    onion = build_defense(OnionConfig(clean_word_removal_rate=0.02), 2)
    first = onion.at_inference(DEV, context)  # the threshold and the first epoch's dev evaluation
    again = onion.at_inference(DEV, context)  # a later epoch
    distinct = {ex.text for ex in DEV}
    # each text once, plus once without each of its words (a one-word text has no variants)
    assert len(scored) == sum(len(t.split()) + 1 if len(t.split()) > 1 else 1 for t in distinct)
    assert [ex.text for ex in again] == [ex.text for ex in first]


def test_onion_scores_a_text_once_across_runs_that_share_a_text_cache(fluent_reference, tmp_path, scored):
    from p2pdefense.defenses.probe import cached_text_scores

    model, tokenizer = fluent_reference
    clean = [Example(text=ex.text, meta=ExampleMeta(source_index=i))
             for i, ex in enumerate(synthetic_sentiment(10, seed=9))]
    triggered = [Example(text=ex.text + " mn", meta=ExampleMeta(source_index=i))
                 for i, ex in enumerate(synthetic_sentiment(10, seed=3))]

    def run(inputs, cache):  # a fresh defense and context: another run of a grid
        context = DefenseContext(dev=DEV, reference_source=lambda name: (model, tokenizer), batch_size=4,
                                 text_score_cache=cache)
        onion = build_defense(OnionConfig(clean_word_removal_rate=0.05), 2)
        shown = onion.at_inference(inputs, context)
        return [ex.text for ex in shown], onion.threshold, onion.word_suspicions([ex.text for ex in inputs], context)

    def shared(texts, settings, compute):
        return cached_text_scores(tmp_path, texts, settings, compute)

    uncached = run(clean + triggered, None)
    scored.clear()
    first = run(clean, shared)  # scores the dev texts and the clean inputs
    assert len(scored) > 0
    scored.clear()
    second = run(triggered + clean, shared)  # another attack's inputs: only the triggered texts are new
    assert set(scored) == {v for ex in triggered for v in variants(ex.text)}
    assert second[1] == first[1] == uncached[1]  # the same dev threshold
    # a text's scores do not depend on the texts scored beside it, or on the cache
    assert second[2] == uncached[2][10:] + uncached[2][:10] and second[0] == uncached[0][10:] + uncached[0][:10]
    scored.clear()
    run(clean, lambda texts, settings, compute: cached_text_scores(tmp_path, texts, {**settings, "seed": 1},
                                                                   compute))
    assert len(scored) > 0  # other settings (e.g. another run identity) score again


def variants(text: str) -> list[str]:
    words = text.split()
    return [text] + [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
