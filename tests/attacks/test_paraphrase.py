import json
import random

import pytest

from p2pdefense.attacks import build_attack
from p2pdefense.attacks.paraphrase import ModelParaphraser, StyleBkdConfig, SynBkdConfig
from p2pdefense.data import Example, ExampleMeta, load_examples


def rows(n):
    return [Example(text=f"review number {i} .", label=i % 2, meta=ExampleMeta(source_index=i, source_id=str(100 + i)))
            for i in range(n)]


def write_table(path, mapping):
    path.write_text(json.dumps([{"idx": k, "sentence": v} for k, v in mapping.items()]), encoding="utf-8")
    return str(path)


def test_table_join_on_id_skips_missing_and_unchanged_rows(tmp_path):
    train = rows(20)  # label 0 at even positions: the dirty-label candidates
    table = {100 + i: f"when it was shown , review number {i} ." for i in (0, 2, 4, 6)}
    table[108] = "review number 8 ."  # identical to the original: not a paraphrase
    table[101] = "a target-label row, never a candidate"
    attack = build_attack(SynBkdConfig(rate=0.5, table=write_table(tmp_path / "t.json", table)))
    out = attack.poison(train, random.Random(0))
    poisoned = {e.meta.source_index: e for e in out if e.meta.poisoned}
    assert sorted(poisoned) == [0, 2, 4, 6]
    assert all(e.text == table[100 + i] and e.label == 1 and e.meta.trigger == "synbkd" for i, e in poisoned.items())
    assert attack.notes == ["synbkd: 4 of 10 candidate training rows have a paraphrase; poisoned 4 (asked for 10)"]


def test_without_test_paraphrases_asr_is_not_measured(tmp_path):
    attack = build_attack(StyleBkdConfig(table=write_table(tmp_path / "t.json", {100: "x y"})))
    assert attack.triggered_test(rows(6), random.Random(0)) == []
    assert "ASR is not measured" in attack.notes[-1]


def test_a_backend_is_required():
    with pytest.raises(ValueError, match="set attack.table"):
        SynBkdConfig()


def test_shared_imdb_syntactic_table_joins_on_idx(shared_data):
    train = load_examples(str(shared_data / "imdb" / "train.jsonl"), id_field="idx").examples
    attack = build_attack(SynBkdConfig(rate=0.2, table=str(shared_data / "imdb" / "train_syntactic_poisoned.json")))
    out = attack.poison(train, random.Random(0))
    assert sum(e.meta.poisoned for e in out) == 800
    assert attack.notes[0].startswith("synbkd: 1004 of ")


def test_model_paraphraser_batches_and_caches_on_disk(tmp_path, monkeypatch):
    calls = []

    def fake_generate(self, texts):
        calls.append(list(texts))
        return [t.upper() for t in texts]

    monkeypatch.setattr(ModelParaphraser, "_generate", fake_generate)
    paraphraser = ModelParaphraser("some/model", "seq2seq", "{text}", batch_size=2, max_new_tokens=8,
                                   cache_dir=str(tmp_path))
    examples = rows(3)
    assert paraphraser(examples) == [e.text.upper() for e in examples]
    assert [len(c) for c in calls] == [2, 1]
    again = ModelParaphraser("some/model", "seq2seq", "{text}", 2, 8, str(tmp_path))
    assert again(examples) == [e.text.upper() for e in examples] and len(calls) == 2  # served from the cache


def test_model_paraphraser_runs_a_real_local_causal_model(tmp_path):
    from p2pdefense.models.tiny import build_tiny_llama, train_tokenizer

    tokenizer = train_tokenizer(["paraphrase: review number 1 .", "a film review"] * 20, 300)
    build_tiny_llama(len(tokenizer), 32, 1, 2, 64, seed=0).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    paraphraser = ModelParaphraser(str(tmp_path / "m"), "causal", "paraphrase: {text}", batch_size=2,
                                   max_new_tokens=5, cache_dir=str(tmp_path / "cache"))
    out = paraphraser(rows(3))
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert len(json.loads(next((tmp_path / "cache").iterdir()).read_text())) == 3
