import pytest

from p2pdefense.config import load_config
from p2pdefense.data import synthetic_math, synthetic_sentiment, synthetic_summaries
from p2pdefense.pipeline import load_splits


@pytest.mark.parametrize("generate", [synthetic_sentiment, synthetic_math, synthetic_summaries])
def test_generated_test_sets_share_no_input_with_train(generate):
    train = generate(1200, 0)
    test = generate(300, 100_003, exclude={e.text for e in train})
    assert len({e.text for e in train}) == 1200 and len({e.text for e in test}) == 300
    assert not {e.text for e in train} & {e.text for e in test}
    assert generate(300, 100_003, exclude={e.text for e in train}) == test  # still seeded


@pytest.mark.parametrize("task", ["classification", "math", "summarization"])
def test_demo_splits_hold_no_test_or_dev_text_of_the_training_set(task):
    splits = load_splits(load_config(None, [f"task.name={task}"]))  # the demo's default sizes: 1200 / 300
    train = {e.text for e in splits.train}
    assert len(splits.test) == 300 and len(splits.dev) == 120
    assert not train & {e.text for e in splits.test}
    assert not train & {e.text for e in splits.dev}
    assert not any("verbatim" in note for note in splits.notes)


def test_a_generator_that_runs_out_of_new_inputs_fails_with_a_message():
    from p2pdefense.data import Example
    from p2pdefense.data.synthetic import _distinct

    with pytest.raises(ValueError, match="cannot make 3 distinct inputs"):
        _distinct(3, lambda i: Example(text=f"row {i % 2}"), exclude={"row 1"}, name="toy")
