"""Blind suspicion scorers on hand-made cases, and a reference model that knows the task."""

import random

import pytest
import torch

from p2pdefense.data import Example, ExampleMeta, synthetic_sentiment
from p2pdefense.defenses import DefenseContext
from p2pdefense.defenses.probe import (
    ProbeStats,
    cached_probe,
    last_prompt_states,
    train_probe_model,
    variant_states,
)
from p2pdefense.defenses.scorers import (
    EnsembleConfig,
    RepresentationConfig,
    TrainingDynamicsConfig,
    build_scorer,
    spectral_scores,
    within_group_ranks,
)
from p2pdefense.evaluate import auroc
from p2pdefense.tasks import ClassificationConfig


def test_spectral_scores_single_out_a_shifted_cluster():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(90, 16, generator=generator)
    shifted = torch.randn(10, 16, generator=generator) + 4.0 * torch.ones(16)
    scores = spectral_scores(torch.cat([clean, shifted]))
    assert set(scores.argsort(descending=True)[:10].tolist()) == set(range(90, 100))


def test_last_prompt_states_batched_by_length_keep_each_rows_own_state_in_input_order():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(1, 40) for _ in range(rng.randrange(2, 12))] for _ in range(11)]
    features = [{"input_ids": p + [7], "labels": [-100] * len(p) + [7]} for p in prompts]
    states = last_prompt_states(model, features, pad_id=0, layer=1, batch_size=4, device="cpu")
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states[1][0, len(p) - 1]
                 for p in prompts]
    assert states.shape == (11, 16)
    assert torch.allclose(states, torch.stack(alone), atol=1e-5)


def test_variant_states_from_the_rows_cache_equal_each_variants_own_pass():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1))
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear")).eval()  # as a LoRA probe is
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight)  # a trained adapter, not peft's zero start
    rng = random.Random(0)
    prompts = [[rng.randrange(1, 40) for _ in range(rng.randrange(1, 12))] for _ in range(11)]

    def feature(prompt):
        return {"input_ids": prompt + [7, 8], "labels": [-100] * len(prompt) + [7, 8]}

    # each word deleted in turn (BKI), plus variants that share all, or none, of the row's tokens
    variants = [[feature(p[:i] + p[i + 1:]) for i in range(len(p)) if len(p) > 1] + [feature(p + [3, 4]),
                feature([5] + p), feature(list(p))] for p in prompts]
    rows, flat = [feature(p) for p in prompts], [v for row in variants for v in row]
    row_states, variant_states_ = variant_states(model, rows, variants, pad_id=0, layer=1, batch_size=4,
                                                 device="cpu")
    alone = last_prompt_states(model, rows + flat, pad_id=0, layer=1, batch_size=4, device="cpu")
    assert [len(s) for s in variant_states_] == [len(v) for v in variants]
    assert torch.allclose(row_states, alone[:11], atol=1e-4)
    assert torch.allclose(torch.cat(variant_states_), alone[11:], atol=1e-4)


def test_representation_scores_every_label_separately():
    rows = [Example(text=str(i), label=int(i >= 50), meta=ExampleMeta(source_index=i)) for i in range(100)]
    generator = torch.Generator().manual_seed(1)
    states = torch.randn(100, 8, generator=generator)
    states[50:] += 10.0  # label 1 lies far away; only rows 95..99 of it are outliers within the label
    states[95:] += torch.tensor([6.0] * 8)
    context = DefenseContext(probe_source=lambda settings, r: ProbeStats([[0.0] * 100], states))
    scores = build_scorer(RepresentationConfig()).suspicion(rows, context)
    top_of_label_one = sorted(range(50, 100), key=lambda i: -scores[i])[:5]
    assert set(top_of_label_one) == set(range(95, 100))


def test_training_dynamics_is_minus_the_area_under_the_margin():
    rows = [Example(text=str(i), label=0, meta=ExampleMeta(source_index=i)) for i in range(3)]
    margins = [[1.0, -2.0, 0.5], [3.0, 0.0, 0.5]]
    context = DefenseContext(probe_source=lambda settings, r: ProbeStats(margins, None))
    assert build_scorer(TrainingDynamicsConfig()).suspicion(rows, context) == [-2.0, 1.0, -0.5]


def test_ensemble_is_the_mean_within_label_rank():
    rows = [Example(text=str(i), label=i % 2, meta=ExampleMeta(source_index=i)) for i in range(4)]
    assert within_group_ranks([3.0, 1.0, 0.0, 2.0], rows) == [1.0, 0.0, 0.0, 1.0]
    margins = [[0.0, 1.0, 2.0, 3.0]]  # training dynamics: suspicion -m
    states = torch.tensor([[0.0], [5.0], [1.0], [0.0]])
    context = DefenseContext(probe_source=lambda settings, r: ProbeStats(margins, states))
    config = EnsembleConfig(members=[TrainingDynamicsConfig(), RepresentationConfig()])
    # label 0 rows 0, 2: dynamics ranks [1, 0], representation |x - 0.5| ties -> [0, 1]; label 1 rows 1, 3 likewise
    assert build_scorer(config).suspicion(rows, context) == [0.5, 0.5, 0.5, 0.5]


@pytest.fixture(scope="module")
def sentiment_reference(tmp_path_factory):
    """A tiny model trained on clean sentiment rows stands in for a reference LM that knows the task."""
    from p2pdefense.models import ModelConfig, load_base_model
    from p2pdefense.train import TrainConfig, train

    task_config = ClassificationConfig(label_names=["negative", "positive"], label_words=["bad", "good"])
    rows = synthetic_sentiment(400, seed=5)
    corpus = [task_config.corpus_text(ex) for ex in rows] + ["Output: bad", "Output: good"]
    model, tokenizer = load_base_model(ModelConfig(tiny={"vocab_size": 400, "hidden_size": 32, "num_layers": 1,
                                                         "num_heads": 2}), corpus, seed=0)
    from p2pdefense.defenses import OutputSpace

    task = task_config.build(tokenizer, OutputSpace(2), 64)
    train(model, [task.encode_training(ex) for ex in rows], tokenizer.pad_token_id,
          TrainConfig(epochs=6, batch_size=16), 3e-3, seed=0)
    return task_config, model, tokenizer


def test_reference_agreement_ranks_flipped_labels_as_suspicious(sentiment_reference):
    task_config, model, tokenizer = sentiment_reference
    rows = synthetic_sentiment(200, seed=9)
    flipped = set(random.Random(0).sample(range(200), 20))
    given = [Example(ex.text, 1 - ex.label if i in flipped else ex.label, ex.meta) for i, ex in enumerate(rows)]
    context = DefenseContext(task_config=task_config.model_copy(update={"label_words": None}),
                             reference_source=lambda name: (model, tokenizer), batch_size=32)
    config = {"name": "reference_agreement", "label_words": ["bad", "good"]}
    from p2pdefense.defenses.p2p import P2PConfig

    scorer = build_scorer(P2PConfig(scorer=config).scorer, "base")
    suspicion = scorer.suspicion([ex.blinded() for ex in given], context)
    assert auroc(suspicion, [i in flipped for i in range(200)]) > 0.9


def test_probe_statistics_are_cached_per_rows_and_settings(tmp_path):
    rows = [Example(text="a", label=0, meta=ExampleMeta(source_index=0))]
    calls = []

    def compute(checkpoints):
        calls.append(checkpoints)
        return ProbeStats([[0.5]], torch.ones(1, 4))

    settings = TrainingDynamicsConfig().probe
    first = cached_probe(tmp_path, rows, settings, {"seed": 0}, compute)
    second = cached_probe(tmp_path, rows, settings, {"seed": 0}, compute)
    assert len(calls) == 1 and second.margins == first.margins and torch.equal(second.states, first.states)
    cached_probe(tmp_path, rows, settings, {"seed": 1}, compute)  # another seed: another probe
    assert len(calls) == 2 and calls[0] != calls[1] and calls[0].parent == tmp_path
    assert sorted(path.suffix for path in tmp_path.iterdir()) == [".pt", ".pt"]  # no lock or checkpoints left


class KilledAfterEpoch(Exception):
    pass


def _small_probe_setup():
    from p2pdefense.models import ModelConfig, load_base_model

    task_config = ClassificationConfig()
    rows = synthetic_sentiment(48, seed=5)
    corpus = [task_config.corpus_text(ex) for ex in rows] + ["Output: 0", "Output: 1"]
    model_config = ModelConfig(tiny={"vocab_size": 300, "hidden_size": 16, "num_layers": 1, "num_heads": 2},
                               dtype="float32")
    return task_config, [ex.blinded() for ex in rows], lambda: load_base_model(model_config, corpus, seed=0)


def test_a_probe_killed_after_an_epoch_resumes_from_its_checkpoint_with_that_epochs_margins(tmp_path, monkeypatch):
    from p2pdefense import train as train_module
    from p2pdefense.compute import counting_compute
    from p2pdefense.defenses.probe import train_probe
    from p2pdefense.train import TrainConfig

    task_config, rows, load = _small_probe_setup()
    settings = TrainingDynamicsConfig().probe.model_copy(update={"epochs": 3})

    def statistics(cache_dir):
        return cached_probe(cache_dir, rows, settings, {"seed": 0}, lambda checkpoints: train_probe(
            rows, settings, task_config, load, TrainConfig(batch_size=16), 3e-3, 0, "cpu", checkpoint_dir=checkpoints))

    with counting_compute() as whole_cost:
        whole = statistics(tmp_path / "whole")
    save = train_module.Checkpoints.save

    def save_then_die(self, epoch, *args):
        save(self, epoch, *args)
        if epoch == 1:
            raise KilledAfterEpoch

    monkeypatch.setattr(train_module.Checkpoints, "save", save_then_die)
    with pytest.raises(KilledAfterEpoch):
        statistics(tmp_path / "killed")
    left = {path.name for path in (tmp_path / "killed").iterdir()}
    assert len(left) == 1 and left.pop().endswith(".pt.checkpoints")  # no cache entry, no lock: checkpoints only
    monkeypatch.setattr(train_module.Checkpoints, "save", save)
    with counting_compute() as resumed_cost:
        resumed = statistics(tmp_path / "killed")
    # epochs 2-3 trained again, epoch 1 came from the checkpoint (its cost counted as served from a cache)
    assert resumed_cost.backward_tokens == pytest.approx(whole_cost.backward_tokens * 2 / 3, rel=0.01)
    assert resumed_cost.flops + resumed_cost.cached_flops == pytest.approx(whole_cost.flops, rel=0.01)
    assert len(resumed.margins) == 3 and resumed.margins[0] == whole.margins[0]
    assert torch.allclose(torch.tensor(resumed.margins), torch.tensor(whole.margins), atol=1e-5)
    assert torch.allclose(resumed.states, whole.states, atol=1e-5)
    assert [path.suffix for path in (tmp_path / "killed").iterdir()] == [".pt"]  # the checkpoints are removed


def test_a_probe_models_weights_are_cached_and_read_back_instead_of_training(tmp_path, monkeypatch):
    from p2pdefense import train as train_module
    from p2pdefense.compute import counting_compute
    from p2pdefense.models import ModelConfig, load_base_model
    from p2pdefense.train import TrainConfig

    task_config = ClassificationConfig()
    rows = synthetic_sentiment(48, seed=5)
    corpus = [task_config.corpus_text(ex) for ex in rows] + ["Output: 0", "Output: 1"]
    small = {"vocab_size": 300, "hidden_size": 16, "num_layers": 1, "num_heads": 2}
    model_config = ModelConfig(tiny=small, dtype="float32")
    settings = TrainingDynamicsConfig().probe
    path = tmp_path / "probe.pt"

    def probe(config=model_config):
        return train_probe_model(rows, settings, task_config, lambda: load_base_model(config, corpus, seed=0),
                                 TrainConfig(epochs=1, batch_size=16), 3e-3, 0, "cpu", weights_path=path)

    with counting_compute() as trained_cost:
        trained, trained_task = probe()
    assert path.exists() and trained_cost.backward_tokens > 0
    assert [p.name for p in tmp_path.iterdir()] == ["probe.pt"]  # its epoch checkpoints and lock are gone
    untrained, _ = load_base_model(model_config, corpus, seed=0)
    monkeypatch.setattr(train_module, "train", lambda *a, **k: pytest.fail("a cached probe was trained again"))
    with counting_compute() as cached_cost:
        loaded, task = probe()
    assert cached_cost.backward_tokens == 0 and cached_cost.cached_flops == pytest.approx(trained_cost.flops)
    saved, read_back, initial = trained.state_dict(), loaded.state_dict(), untrained.state_dict()
    assert saved.keys() == read_back.keys() == initial.keys()
    assert all(torch.equal(saved[name], read_back[name]) for name in saved)
    assert any(not torch.equal(saved[name], initial[name]) for name in saved)  # training changed something
    assert not loaded.training
    assert task.margins(loaded, rows, 16, "cpu")[0] == trained_task.margins(trained, rows, 16, "cpu")[0]
    # weights of another architecture are refused, not half-loaded
    with pytest.raises(ValueError, match="do not match"):
        probe(ModelConfig(tiny={**small, "num_layers": 2}, dtype="float32"))


def test_reference_scores_are_cached_per_row_so_another_attacks_rows_score_only_what_changed(sentiment_reference,
                                                                                             tmp_path):
    from p2pdefense.defenses import OutputSpace
    from p2pdefense.defenses.probe import cached_text_scores
    from p2pdefense.defenses.scorers import ReferenceAgreementConfig

    task_config, model, tokenizer = sentiment_reference
    rows = [ex.blinded() for ex in synthetic_sentiment(20, seed=4)]
    loads, scored = [], []

    def context():
        def cache(keys, settings, compute):
            return cached_text_scores(tmp_path, keys, settings, lambda batch: scored.extend(batch) or compute(batch))
        return DefenseContext(task_config=task_config, batch_size=8, text_score_cache=cache,
                              reference_source=lambda name: loads.append(name) or (model, tokenizer))

    scorer = build_scorer(ReferenceAgreementConfig(label_words=["bad", "good"]), "base")
    first = scorer.suspicion(rows, context())
    task = task_config.build(tokenizer, OutputSpace(2), 512)
    margins, _ = task.margins(model, rows, 8, "cpu")
    assert first == pytest.approx([-m for m in margins], abs=1e-4)  # a row alone scores as in a padded batch
    assert len(scored) == 20
    assert scorer.suspicion(rows, context()) == first and loads == ["base"]  # the second run loads nothing
    # another attack on the same rows: a trigger in 2 texts, 1 label flipped; only those 3 rows are scored
    changed = [Example(ex.text + " mn", ex.label, ex.meta) if i < 2 else
               Example(ex.text, 1 - ex.label, ex.meta) if i == 2 else ex for i, ex in enumerate(rows)]
    again = scorer.suspicion(changed, context())
    assert len(scored) == 23 and again[3:] == first[3:] and again[2] == pytest.approx(-first[2], abs=1e-4)
    # an instruction the reference's template does not show changes nothing it sees: no row is scored again
    instructed = [Example(ex.text, ex.label, ex.meta, instruction="Classify the review.") for ex in rows]
    assert scorer.suspicion(instructed, context()) == first and len(scored) == 23
    task_config = task_config.model_copy(update={"instruction": "Classify the review."})  # the task's default
    assert scorer.suspicion(instructed, context()) == first and len(scored) == 23
    build_scorer(ReferenceAgreementConfig(label_words=["good", "bad"]), "base").suspicion(rows, context())
    assert len(scored) == 43  # other settings: scored again
    shown = ReferenceAgreementConfig(template="{instruction} {text}", label_words=["bad", "good"])
    build_scorer(shown, "base").suspicion(instructed, context())
    assert len(scored) == 63
    other = [Example(ex.text, ex.label, ex.meta, instruction="Other.") for ex in rows[:5]]
    build_scorer(shown, "base").suspicion(other, context())
    assert len(scored) == 68  # a template that shows the instruction: another instruction, another score


def test_margins_also_name_the_answer_the_model_prefers(sentiment_reference):
    from p2pdefense.defenses import OutputSpace

    task_config, model, tokenizer = sentiment_reference
    rows = synthetic_sentiment(100, seed=11)
    task = task_config.build(tokenizer, OutputSpace(2), 64)
    margins, preferred = task.margins(model, rows, 32, "cpu")
    assert sum(p == ex.label for p, ex in zip(preferred, rows, strict=True)) >= 90
    # a positive margin means the given label is the preferred one
    assert all((m > 0) == (p == ex.label) for m, p, ex in zip(margins, preferred, rows, strict=True))


def test_counter_examples_relabel_the_most_suspicious_rows_with_the_reference_answer(sentiment_reference):
    from p2pdefense.defenses import build_defense
    from p2pdefense.defenses.p2p import P2PConfig

    task_config, model, tokenizer = sentiment_reference
    rows = synthetic_sentiment(200, seed=13)
    flipped = set(random.Random(1).sample(range(200), 10))
    given = [Example(ex.text, 1 - ex.label if i in flipped else ex.label, ex.meta) for i, ex in enumerate(rows)]
    context = DefenseContext(task_config=task_config, reference_source=lambda name: (model, tokenizer),
                             batch_size=32)
    config = P2PConfig(ratio=0.1, subset="ranked", counter_examples=0.05, counter_example_margin=0.0,
                       scorer={"name": "reference_agreement", "label_words": ["bad", "good"]})
    out = build_defense(config, 2).training_rows(given, context)
    assert len(out) == 200  # replace mode: the relabelled rows are rewritten in place
    benign = {ex.meta.source_index: ex for ex in out if ex.meta.benign}
    assert len(benign) == 20 + 10  # 10% per label, plus 5% counter-examples
    relabelled = [i for i in benign if benign[i].label - 2 != given[i].label]
    assert len(relabelled) == 10 and len(set(relabelled) & flipped) >= 8
    assert all(benign[i].label - 2 == rows[i].label for i in relabelled if i in flipped)  # the true label, shifted
    with pytest.raises(ValueError, match="counter_examples needs subset=ranked"):
        P2PConfig(counter_examples=0.1)


def test_text_scores_are_cached_per_text_and_settings_in_order_with_repeats(tmp_path):
    from p2pdefense.defenses.probe import cached_text_scores

    asked: list[list[str]] = []

    def compute(texts):
        asked.append(texts)
        return [[len(t), t.upper()] for t in texts]

    assert cached_text_scores(tmp_path, ["b", "a", "b"], {"k": 1}, compute) == [[1, "B"], [1, "A"], [1, "B"]]
    assert asked == [["b"], ["a"]]  # each distinct text once, on its own
    assert cached_text_scores(tmp_path, ["cc", "a"], {"k": 1}, compute) == [[2, "CC"], [1, "A"]]
    assert asked[2:] == [["cc"]]  # only what the cache lacks
    assert cached_text_scores(tmp_path, ["a"], {"k": 2}, compute) == [[1, "A"]] and asked[3:] == [["a"]]
    assert cached_text_scores(tmp_path, [], {"k": 1}, compute) == [] and len(asked) == 4
    with pytest.raises(ValueError, match="returned 0 scores for 1 text"):
        cached_text_scores(tmp_path, ["x", "y"], {"k": 1}, lambda texts: [])
    assert cached_text_scores(tmp_path, ["x"], {"k": 1}, compute) == [[1, "X"]]  # nothing half-written was kept


def test_a_killed_text_scoring_keeps_the_chunks_it_saved(tmp_path, monkeypatch):
    from p2pdefense.defenses import probe

    monkeypatch.setattr(probe, "SAVE_EVERY", 2)
    monkeypatch.setattr(probe.random, "randrange", lambda n: 0)  # the chunks in order
    asked: list[str] = []

    def lengths(texts):
        asked.extend(texts)
        return [len(texts[0])]

    def dies_at_the_fifth(texts):
        if len(asked) == 4:
            raise KeyboardInterrupt
        return lengths(texts)

    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    with pytest.raises(KeyboardInterrupt):
        probe.cached_text_scores(tmp_path, texts, {"k": 1}, dies_at_the_fifth)
    asked.clear()
    assert probe.cached_text_scores(tmp_path, texts, {"k": 1}, lengths) == [1, 2, 3, 4, 5]
    assert asked == ["eeeee"]  # two chunks of two texts were saved


def test_text_scoring_skips_the_chunks_another_process_saved_meanwhile(tmp_path, monkeypatch):
    from p2pdefense.defenses import probe

    monkeypatch.setattr(probe, "SAVE_EVERY", 2)
    monkeypatch.setattr(probe.random, "randrange", lambda n: 0)
    asked: list[str] = []

    def lengths(texts):
        asked.extend(texts)
        return [len(texts[0])]

    def meanwhile_another_process_scores_the_rest(texts):
        if not asked:  # while this one scores its first text, the other scores and saves the last two
            assert probe.cached_text_scores(tmp_path, ["ccc", "dddd"], {"k": 1}, lambda t: [-len(t[0])]) == [-3, -4]
        return lengths(texts)

    scores = probe.cached_text_scores(tmp_path, ["a", "bb", "ccc", "dddd"], {"k": 1},
                                      meanwhile_another_process_scores_the_rest)
    assert asked == ["a", "bb"] and scores == [1, 2, -3, -4]  # the other process's scores, not scored again
    monkeypatch.setattr(probe.random, "randrange", lambda n: n - 1)  # a later process starts at the last chunk
    asked.clear()
    assert probe.cached_text_scores(tmp_path, ["e", "ff", "ggg"], {"k": 1}, lengths) == [1, 2, 3]
    assert asked == ["ggg", "e", "ff"]


def test_a_killed_text_scoring_keeps_what_it_scored_before_the_last_timed_save(tmp_path, monkeypatch):
    """Long texts (ONION on IMDB reviews) take minutes a chunk: within a chunk the scores are saved on a clock too."""
    from p2pdefense.defenses import probe

    clock = iter(range(0, 1000, 100))  # each reading of the clock 100 s after the last
    monkeypatch.setattr(probe.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(probe, "SAVE_SECONDS", 250.0)
    asked: list[str] = []

    def dies_at_the_fifth(texts):
        if len(asked) == 4:
            raise KeyboardInterrupt
        asked.extend(texts)
        return [len(texts[0])]

    texts = ["a", "bb", "ccc", "dddd", "eeeee"]  # one chunk (SAVE_EVERY is 200)
    with pytest.raises(KeyboardInterrupt):
        probe.cached_text_scores(tmp_path, texts, {"k": 1}, dies_at_the_fifth)
    monkeypatch.setattr(probe, "SAVE_SECONDS", 1e9)
    asked.clear()
    assert probe.cached_text_scores(tmp_path, texts, {"k": 1}, lambda t: asked.extend(t) or [len(t[0])]) == \
        [1, 2, 3, 4, 5]
    assert asked == ["dddd", "eeeee"]  # the first three were saved 300 s in; the fourth, 100 s later, was not


BUILD_PROBE = """
import sys, time
from pathlib import Path
import torch
from p2pdefense.data import Example, ExampleMeta
from p2pdefense.defenses.probe import ProbeStats, cached_probe
from p2pdefense.defenses.scorers import TrainingDynamicsConfig

def compute(checkpoints):
    print("training", flush=True)
    time.sleep(2.0)
    return ProbeStats([[float(sys.argv[2])]], torch.ones(1, 4))

rows = [Example(text="a", label=0, meta=ExampleMeta(source_index=0))]
stats = cached_probe(Path(sys.argv[1]), rows, TrainingDynamicsConfig().probe, {"seed": 0}, compute)
print("margin", stats.margins[0][0], flush=True)
"""


def test_a_process_needing_a_probe_another_is_training_waits_and_reads_it(tmp_path):
    import subprocess
    import sys

    first = subprocess.Popen([sys.executable, "-c", BUILD_PROBE, str(tmp_path), "1.0"], stdout=subprocess.PIPE,
                             text=True)
    assert first.stdout.readline().strip() == "training"
    second = subprocess.run([sys.executable, "-c", BUILD_PROBE, str(tmp_path), "2.0"], capture_output=True,
                            text=True, timeout=120)
    assert first.wait(timeout=120) == 0 and second.returncode == 0, second.stderr
    assert first.stdout.read().strip() == "margin 1.0"
    assert second.stdout.strip() == "margin 1.0"  # no "training": it read the first process's probe
