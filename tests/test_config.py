import pytest

from p2pdefense.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, "attack:\n  name: badnets\n  rate: 0.1\ndefense:\n  name: p2p\n")
    config = load_config(path, ["defense.ratio=0.3", "attack.triggers=[cf, mn]", "train.epochs=2", "seed=7"])
    assert config.attack.rate == 0.1 and config.attack.triggers == ["cf", "mn"]
    assert config.defense.ratio == 0.3 and config.defense.benign_trigger == "The query currently entered is: "
    assert (config.train.epochs, config.seed, config.run_name) == (2, 7, "badnets-p2p-seed7")
    assert config.data.synthetic is not None and config.model.preset == "tiny"


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ("attack:\n  name: badnets\n  rat: 0.1\n", [], "attack.rat: unknown key"),
    ("attack:\n  name: badnets\n", ["attack.rate=1.5"], "attack.rate: Input should be less than or equal to 1"),
    ("defense:\n  name: p2p\n", ["defense.ratio=0"], "defense.ratio: Input should be greater than 0"),
    ("attack:\n  name: nonsense\n", [], "attack: Input tag 'nonsense' found using 'name' does not match"),
    ("", ["train.epoch=3"], "train.epoch: unknown key"),
    ("", ["trian.epochs=3"], "trian: unknown key"),
    ("", ["model.preset=tiny", "model.finetune=lora"], "model: Value error, the tiny preset"),
    ("data:\n  train: a.jsonl\n", [], "data.train needs exactly one of data.test and data.test_fraction"),
    ("task:\n  num_labels: 3\n  label_words: [a, b]\n", [], "label_words has 2 words for num_labels=3"),
])
def test_bad_configs_fail_naming_the_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    assert message in str(info.value)


def test_malformed_override_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["attack.rate"])
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(write(tmp_path, "attack: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_switching_a_sections_kind_with_set_drops_the_files_keys_the_new_kind_lacks(tmp_path):
    path = tmp_path / "p2p.yaml"
    path.write_text("defense:\n  name: p2p\n  ratio: 0.3\n  benign_trigger: 'Q: '\n", encoding="utf-8")
    assert load_config(path, ["defense.name=strip", "defense.copies=3"]).defense.copies == 3
    assert load_config(path, ["defense.name=pdb"]).defense.ratio == 0.3  # a key both kinds have stays
    with pytest.raises(ConfigError, match="defense.copies: unknown key"):  # the kind the file keeps: no drop
        load_config(path, ["defense.name=p2p", "defense.copies=3"])
    path.write_text("defense:\n  name: p2p\n  ratioo: 0.3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="defense.ratioo: unknown key"):  # a typo is still an error
        load_config(path, [])
