"""Loaded and poisoned data are cached by content hash: a second run with the same data, attack and seed
loads nothing; any change of configuration, data file or code is a new entry."""

import pytest

from p2pdefense import pipeline
from p2pdefense.config import load_config
from p2pdefense.datacache import cache_key

SMALL = ["data.synthetic.train_rows=60", "data.synthetic.test_rows=20", "train.epochs=1", "stealth_report=false",
         "attack.name=badnets", "attack.rate=0.1", "model.tiny.hidden_size=16", "model.tiny.vocab_size=300"]


def test_the_second_run_of_a_grid_cell_reuses_the_poisoned_data(tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_CACHE_DIR", str(tmp_path / "cache"))
    first_config = load_config(None, [*SMALL, f"output_dir={tmp_path}", "name=a"])
    _, first = pipeline.run(first_config)
    assert first["data_cache_hit"] is False

    def must_not_load(config):
        raise AssertionError("loaded again")

    monkeypatch.setattr(pipeline, "load_splits", must_not_load)
    # another defense on the same data, attack and seed: the cached rows
    _, second = pipeline.run(load_config(None, [*SMALL, f"output_dir={tmp_path}", "name=b", "defense.name=p2p"]))
    assert second["data_cache_hit"] is True
    assert second["num_poisoned"] == first["num_poisoned"] and second["num_train"] == first["num_train"]
    with pytest.raises(AssertionError, match="loaded again"):  # another attack rate: another entry
        pipeline.run(load_config(None, [*SMALL, f"output_dir={tmp_path}", "name=c", "attack.rate=0.2"]))


def test_the_key_follows_the_data_files_and_skips_hub_data(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"sentence": "a b", "label": 0}\n', encoding="utf-8")
    config = load_config(None, [f"data.train={data}", f"data.test={data}", "data.synthetic=null"])
    before = cache_key(config)
    data.write_text('{"sentence": "a b c", "label": 1}\n', encoding="utf-8")
    assert cache_key(config) != before
    hub = load_config(None, ["data.hub=glue", "data.synthetic=null"])
    assert cache_key(hub) is None
