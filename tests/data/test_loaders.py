import csv
import json

import pytest

from p2pdefense.data import DataError, load_examples, parse_label, synthetic_sentiment


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"sentence": "good film", "label": 1}, {"sentence": "bad film", "label": 0}, {"sentence": "ok", "label": 1}]


def test_jsonl_json_csv_tsv_load_the_same_examples(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "d.json").write_text(json.dumps(ROWS), encoding="utf-8")
    for name, delimiter in (("d.csv", ","), ("d.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["sentence", "label"], delimiter=delimiter)
            writer.writeheader()
            writer.writerows(ROWS)
    loaded = {name: load_examples(str(tmp_path / name)).examples
              for name in ("d.jsonl", "d.json", "d.csv", "d.tsv")}
    for examples in loaded.values():
        assert [(e.text, e.label, e.meta.source_index) for e in examples] == \
               [("good film", 1, 0), ("bad film", 0, 1), ("ok", 1, 2)]
        assert all(e.meta.poisoned is False and e.meta.trigger is None and not e.meta.benign for e in examples)


def test_datasets_directory_and_dataset_dict_split(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"text": r["sentence"], "y": r["label"]} for r in ROWS])
    ds.save_to_disk(str(tmp_path / "flat"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    flat = load_examples(str(tmp_path / "flat"), text_field="text", label_field="y").examples
    assert [e.label for e in flat] == [1, 0, 1]
    split = load_examples(str(tmp_path / "dict"), text_field="text", label_field="y", split="train")
    assert [e.text for e in split.examples] == ["good film", "bad film", "ok"]
    with pytest.raises(DataError, match=r"DatasetDict: choose a split from \['train'\]"):
        load_examples(str(tmp_path / "dict"), text_field="text", label_field="y")


def test_string_labels_map_through_label_names(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"t": "a", "l": "positive"}, {"t": "b", "l": "negative"}])
    examples = load_examples(str(path), text_field="t", label_field="l",
                                   label_names=["negative", "positive"]).examples
    assert [e.label for e in examples] == [1, 0]


@pytest.mark.parametrize(("content", "place", "field", "reason"), [
    (b'{"sentence": "a", "label": 1}\n{"sentence": "b", "label": 1\n', "line 2", None, "malformed JSON"),
    (b'{"sentence": "a", "label": 1}\n{"label": 1}\n', "line 2", "sentence", "missing field"),
    (b'{"sentence": "a"}\n', "line 1", "label", "missing field"),
    (b'{"sentence": "a", "label": "pos"}\n', "line 1", "label", "unknown label 'pos'"),
    (b'{"sentence": "a", "label": 7}\n', "line 1", "label", "unknown label 7"),
    (b'{"sentence": "a", "label": 0.5}\n', "line 1", "label", "non-integer label 0.5"),
    (b'{"sentence": "a", "label": true}\n', "line 1", "label", "non-integer label True"),
    (b'{"sentence": "  ", "label": 1}\n', "line 1", "sentence", "empty text"),
    (b'{"sentence": 3, "label": 1}\n', "line 1", "sentence", "text must be a string"),
    (b'{"sentence": "ok", "label": 1}\n{"sentence": "caf\xe9", "label": 1}\n', "line 2", None, "not UTF-8"),
    (b"[1, 2]\n", "line 1", None, "expected a JSON object"),
])
def test_bad_jsonl_rows_name_file_line_and_field(tmp_path, content, place, field, reason):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_examples(str(path))
    err = info.value
    assert (err.source, err.place, err.field) == (str(path), place, field)
    assert reason in err.reason
    assert str(path) in str(err) and place in str(err)


def test_bad_csv_and_json_name_their_place(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("sentence,label\ngood,1\nbad,9\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d.csv, line 3, field 'label': unknown label 9"):
        load_examples(str(csv_path))
    bad_bytes = tmp_path / "b.csv"
    bad_bytes.write_bytes(b"sentence,label\ngood,1\nb\xffd,0\n")
    with pytest.raises(DataError, match=r"b.csv, line 3: bytes that are not UTF-8"):
        load_examples(str(bad_bytes))
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps([{"sentence": "a", "label": 1}, {"sentence": "", "label": 0}]))
    with pytest.raises(DataError, match=r"d.json, row 1, field 'sentence': empty text"):
        load_examples(str(json_path))
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"sentence": "a", "label": 1},\n{oops}\n]')
    with pytest.raises(DataError, match=r"broken.json, line 3: malformed JSON"):
        load_examples(str(broken))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_examples(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.parquetx").write_text("x")
    with pytest.raises(DataError, match="unknown format '.parquetx'"):
        load_examples(str(tmp_path / "d.parquetx"))


def test_skip_bad_rows_reports_every_skip_with_its_reason(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"sentence": "a", "label": 1}\n{"sentence": "", "label": 0}\n{broken\n'
                     b'{"sentence": "b", "label": 5}\n{"sentence": "c", "label": 0}\n')
    result = load_examples(str(path), skip_bad_rows=True)
    assert [e.text for e in result.examples] == ["a", "c"]
    assert [(e.place, e.field) for e in result.skipped] == [("line 2", "sentence"), ("line 3", None),
                                                            ("line 4", "label")]
    assert result.skip_summary() == "3 rows skipped: 1 empty text, 1 malformed JSON, 1 unknown label 5"


def test_parse_label_accepts_digit_strings_and_names():
    assert parse_label("1", None, 2) == 1
    assert parse_label(" 0 ", None, 2) == 0
    assert parse_label("neg", ["neg", "pos"], 2) == 0
    with pytest.raises(ValueError, match="missing label"):
        parse_label(None, None, 2)


def test_shared_sst2_and_imdb_load(shared_data):
    train = load_examples(str(shared_data / "sst2" / "train.jsonl")).examples
    dev = load_examples(str(shared_data / "sst2" / "dev.jsonl")).examples
    assert (len(train), len(dev)) == (6920, 872)
    assert {e.label for e in train} == {0, 1}
    imdb = load_examples(str(shared_data / "imdb" / "train.jsonl")).examples
    assert len(imdb) == 4000
    paraphrased = load_examples(str(shared_data / "imdb" / "train_syntactic_poisoned.json")).examples
    assert len(paraphrased) == 3996


def test_synthetic_sentiment_is_seeded_balanced_and_labelled_by_its_words():
    from p2pdefense.data.synthetic import NEGATIVE, POSITIVE

    rows = synthetic_sentiment(200, seed=3)
    assert rows == synthetic_sentiment(200, seed=3)
    assert rows != synthetic_sentiment(200, seed=4)
    assert sum(e.label for e in rows) == 100
    assert [e.meta.source_index for e in rows] == list(range(200))
    for e in rows:
        words = set(e.text.split())
        assert words & set(POSITIVE if e.label == 1 else NEGATIVE)
        assert not words & set(NEGATIVE if e.label == 1 else POSITIVE)


def test_synthetic_topics_have_four_balanced_classes_told_by_their_events():
    from collections import Counter

    from p2pdefense.data import synthetic_topics
    from p2pdefense.data.synthetic import TOPIC_NAMES, TOPICS

    rows = synthetic_topics(400, seed=1)
    assert rows == synthetic_topics(400, seed=1) and len({e.text for e in rows}) == 400
    assert Counter(e.label for e in rows) == {0: 100, 1: 100, 2: 100, 3: 100}
    for e in rows:  # the event always belongs to the row's topic; a subject sometimes does not
        assert any(event in e.text for event in TOPICS[TOPIC_NAMES[e.label]][1])
    borrowed = sum(not any(s in e.text for s in TOPICS[TOPIC_NAMES[e.label]][0]) for e in rows)
    assert 20 < borrowed < 80  # about one in eight
    test = synthetic_topics(100, seed=2, exclude={e.text for e in rows})
    assert not {e.text for e in test} & {e.text for e in rows}


def test_generation_rows_with_target_field_and_positional_json_arrays(tmp_path):
    path = tmp_path / "qa.jsonl"
    write_jsonl(path, [{"question": "1+1?", "answer": "1 + 1 = 2\n#### 2"}])
    (example,) = load_examples(str(path), text_field="question", target_field="answer").examples
    assert (example.text, example.target, example.label) == ("1+1?", "1 + 1 = 2\n#### 2", None)
    arrays = tmp_path / "pairs.json"
    arrays.write_text(json.dumps([["doc one", "sum one", 3], ["doc two", "", 1]]), encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.json, row 1, field '1': empty text"):
        load_examples(str(arrays), text_field="0", target_field="1")
    result = load_examples(str(arrays), text_field="0", target_field="1", skip_bad_rows=True)
    assert [(e.text, e.target) for e in result.examples] == [("doc one", "sum one")]
    with pytest.raises(DataError, match="line 1, field 'answer': missing field"):
        write_jsonl(path, [{"question": "q"}])
        load_examples(str(path), text_field="question", target_field="answer")


def test_shared_gsm8k_and_crrsum_load(shared_data):
    gsm8k = load_examples(str(shared_data / "gsm8k" / "train.jsonl"), text_field="question",
                          target_field="answer").examples
    assert len(gsm8k) == 7473 and all("####" in e.target for e in gsm8k)
    crrsum = load_examples(str(shared_data / "crrsum" / "dev.json"), text_field="0", target_field="1").examples
    assert len(crrsum) == 901


def test_alpaca_style_rows_load_with_their_instruction_and_format(tmp_path):
    from p2pdefense.tasks.prompt import format_prompt

    path = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Summarize the text.", "input": "Ava opened a shop.", "output": "A shop opened."},
        {"input": "no instruction here", "output": "x"}])
    with pytest.raises(DataError, match="line 2, field 'instruction': missing field"):
        load_examples(str(path), text_field="input", target_field="output", instruction_field="instruction")
    (row,) = load_examples(str(path), text_field="input", target_field="output", instruction_field="instruction",
                           skip_bad_rows=True).examples
    assert (row.instruction, row.text, row.target) == ("Summarize the text.", "Ava opened a shop.", "A shop opened.")
    template = "Instruction: {instruction}\nInput: {text}\nResponse: "
    assert format_prompt(template, row) == "Instruction: Summarize the text.\nInput: Ava opened a shop.\nResponse: "
    assert format_prompt("Input: {text}\n", row) == "Input: Ava opened a shop.\n"
    with pytest.raises(ValueError, match="needs an instruction but row 0 has none"):
        format_prompt(template, load_examples(str(path), text_field="input", target_field="output",
                                              skip_bad_rows=True).examples[0])
