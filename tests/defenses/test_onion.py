"""ONION with a small reference LM that learned the clean sentences' language."""

from dataclasses import replace

import pytest

from p2pdefense.data import Example, ExampleMeta, synthetic_sentiment
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.onion import OnionConfig, _ids, deletion_perplexities


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
    assert deletion_perplexities(model, tokenizer, "the movie was dull .", "cpu")[0] < \
        deletion_perplexities(model, tokenizer, "the movie mn was dull .", "cpu")[0]
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
    """Every text the reference LM scores (ONION's reference passes, spied on)."""
    import p2pdefense.defenses.onion as onion_module

    texts_scored: list[str] = []

    def counting(model, tokenizer, text, device):
        texts_scored.append(text)
        return deletion_perplexities(model, tokenizer, text, device)

    monkeypatch.setattr(onion_module, "deletion_perplexities", counting)
    return texts_scored


# all deletions in one pass; a pass for each few; those passes stacked three to a padded forward (as on a GPU)
@pytest.mark.parametrize(("packed_tokens", "stack"), [(1024, None), (12, None), (12, 3)])
def test_deletion_perplexities_equal_one_plain_pass_per_deletion(fluent_reference, monkeypatch, packed_tokens, stack):
    import copy
    import math

    import torch

    import p2pdefense.defenses.onion as onion_module

    model, tokenizer = fluent_reference
    model = copy.deepcopy(model).double()  # float64: the two ways agree to rounding, not to fp32 noise
    monkeypatch.setattr(onion_module, "PACKED_TOKENS", packed_tokens)

    def plain(text: str) -> float:
        ids = torch.tensor([_ids(tokenizer, text)])
        logits = model(input_ids=ids).logits[0, :-1]
        return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())

    for text in ["the movie mn was dull and the plot was thin .", "great", "mn the acting was fine"]:
        words = text.split()
        expected = [plain(text)] + ([plain(" ".join(words[:i] + words[i + 1:])) for i in range(len(words))]
                                    if len(words) > 1 else [])
        got = deletion_perplexities(model, tokenizer, text, "cpu", stack=stack)
        assert len(got) == len(expected)
        assert got == pytest.approx(expected, rel=1e-9)


def test_passes_are_stacked_on_an_accelerator_only():
    from p2pdefense.defenses.onion import STACKED_TOKENS, passes_per_forward

    assert passes_per_forward("cpu", 1024) == 1
    assert passes_per_forward("cuda:0", 1024) == STACKED_TOKENS // 1024 > 1
    assert passes_per_forward("cuda", 4 * STACKED_TOKENS) == 1  # a text longer than the stack: one pass a forward


DEV = [Example(text=t, label=0, meta=ExampleMeta(source_index=i))
       for i, t in enumerate(ex.text for ex in synthetic_sentiment(20, seed=8))]


def test_onion_scores_each_distinct_text_once_across_threshold_and_repeated_evaluations(fluent_reference, scored):
    model, tokenizer = fluent_reference
    context = DefenseContext(dev=DEV, reference_source=lambda name: (model, tokenizer), batch_size=32)
    onion = build_defense(OnionConfig(clean_word_removal_rate=0.02), 2)
    first = onion.at_inference(DEV, context)  # the threshold and the first epoch's dev evaluation
    again = onion.at_inference(DEV, context)  # a later epoch
    distinct = {ex.text for ex in DEV}
    assert sorted(scored) == sorted(distinct)  # each text once (with its deletions)
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
    assert sorted(scored) == sorted(ex.text for ex in triggered)
    assert second[1] == first[1] == uncached[1]  # the same dev threshold
    # a text's scores do not depend on the texts scored beside it, or on the cache
    assert second[2] == uncached[2][10:] + uncached[2][:10] and second[0] == uncached[0][10:] + uncached[0][:10]
    scored.clear()
    run(clean, lambda texts, settings, compute: cached_text_scores(tmp_path, texts, {**settings, "seed": 1},
                                                                   compute))
    assert len(scored) > 0  # other settings (e.g. another run identity) score again


def test_onion_filters_the_instruction_too_and_counts_a_shared_dev_instruction_once(fluent_reference):
    model, tokenizer = fluent_reference
    instruction = synthetic_sentiment(1, seed=12)[0].text  # a fluent sentence as the task-wide instruction
    words = instruction.split()
    words.insert(len(words) // 2, "mn")  # an instruction-level trigger (as VPI's topic prefix)
    triggered_instruction = " ".join(words)
    dev = [replace(ex, instruction=instruction) for ex in DEV]
    context = DefenseContext(dev=dev, reference_source=lambda name: (model, tokenizer), batch_size=32)
    onion = build_defense(OnionConfig(clean_word_removal_rate=0.02), 2)
    clean = [Example(text=ex.text, instruction=instruction, meta=ExampleMeta(source_index=i))
             for i, ex in enumerate(synthetic_sentiment(10, seed=9))]
    shown = onion.at_inference(clean + [replace(ex, instruction=triggered_instruction) for ex in clean], context)
    assert all(ex.instruction == instruction for ex in shown[:10])
    assert all(ex.instruction == instruction for ex in shown[10:])  # the trigger word removed, nothing else
    assert [ex.text for ex in shown[10:]] == [ex.text for ex in shown[:10]]
    pool = sorted(s for words in onion.word_suspicions([ex.text for ex in DEV] + [instruction], context) for s in words)
    assert onion.threshold == pool[int(0.98 * len(pool))]  # the shared instruction's words once, not once per row
