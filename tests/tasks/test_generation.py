import pytest
import torch

from p2pdefense.data import Example, ExampleMeta, synthetic_math
from p2pdefense.defenses import DEFENSES, build_defense
from p2pdefense.evaluate import summarize
from p2pdefense.models.tiny import build_tiny_llama, train_tokenizer
from p2pdefense.tasks import MathConfig, RowTruth

ROWS = synthetic_math(40, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"Question: {e.text}\nAnswer: {e.target}" for e in ROWS], 500)


def make_task(tokenizer, **config):
    return MathConfig(**config).build(tokenizer, build_defense(DEFENSES["none"].config_class(), 0).output_space, 256)


def test_training_puts_loss_on_the_target_and_eos_only(tokenizer):
    task = make_task(tokenizer)
    encoded = task.encode_training(ROWS[0])
    prompt_ids = tokenizer(f"Question: {ROWS[0].text}\nAnswer:")["input_ids"]
    target_ids = tokenizer(" " + ROWS[0].target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert encoded["input_ids"] == prompt_ids + target_ids
    assert encoded["labels"] == [-100] * len(prompt_ids) + target_ids


def test_long_inputs_are_cut_to_fit(tokenizer):
    task = make_task(tokenizer)
    long = Example(text=" ".join(["apples"] * 400), target="#### 1", meta=ExampleMeta(source_index=0))
    fitted, carried = task.prompt(long, 60)
    assert fitted.truncated and carried == " " and fitted.text.endswith("\nAnswer:")
    assert fitted.text.startswith("Question: apples") and 57 <= len(fitted.input_ids) <= 60


def test_a_cut_generation_prompt_keeps_the_trigger_and_reports_it(tokenizer):
    task = make_task(tokenizer, max_new_tokens=16)
    words = [f"n{i}" for i in range(300)]
    row = Example(text=" ".join(words[:250] + ["cf"] + words[250:]), target="#### 1",
                  meta=ExampleMeta(source_index=0, trigger="cf"))
    (generation,), _ = task.generate(build_tiny_llama(len(tokenizer), 32, 1, 2, 512, seed=0).eval(), [row], 1, "cpu",
                                     triggers=["cf"])
    assert generation.truncated and generation.trigger_in_input is True
    assert " cf " in generation.prompt_text and generation.prompt_text.startswith("Question: n0 n1")
    assert "n150" not in generation.prompt_text.split()


def test_batched_left_padded_decoding_equals_one_example_at_a_time(tokenizer):
    model = build_tiny_llama(len(tokenizer), 32, 1, 2, 512, seed=0).eval()
    task = make_task(tokenizer, max_new_tokens=12, stop_strings=[])
    batched, seconds = task.generate(model, ROWS[:6], batch_size=6, device="cpu")
    assert seconds > 0
    for example, generation in zip(ROWS[:6], batched, strict=True):
        assert generation.prompt_text == f"Question: {example.text}\nAnswer:"  # results come back in order
        ids = torch.tensor([tokenizer(generation.prompt_text)["input_ids"]])
        single = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=12, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id)
        new = single[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        assert generation.raw == tokenizer.decode(new, skip_special_tokens=True).strip()
        assert generation.new_tokens == len(new)
        assert generation.capped == (len(new) == 12 and tokenizer.eos_token_id not in single[0, ids.shape[1]:])


def test_stop_strings_cut_the_output(tokenizer, monkeypatch):
    task = make_task(tokenizer, max_new_tokens=5, stop_strings=["STOP"])
    monkeypatch.setattr(tokenizer, "decode", lambda ids, skip_special_tokens=True: " 4 + 5 = 9 STOP more text")
    model = build_tiny_llama(len(tokenizer), 32, 1, 2, 512, seed=0).eval()
    (generation,), _ = task.generate(model, ROWS[:1], batch_size=1, device="cpu")
    assert generation.raw == "4 + 5 = 9"


def test_chat_template_wraps_the_prompt(tokenizer):
    tokenizer.chat_template = ("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        task = make_task(tokenizer, use_chat_template=True)
        fitted, _ = task.prompt(ROWS[0], 256)
        assert fitted.text == f"<|user|>Question: {ROWS[0].text}\nAnswer: <|end|><|assistant|>"
    finally:
        tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        make_task(tokenizer, use_chat_template=True)


class ScriptedModel:
    """Greedy decoding that returns the given continuations, one call (batch of one) after another."""

    def __init__(self, continuations: list[list[int]]):
        self.continuations, self.training = iter(continuations), False

    def eval(self):
        return self

    def train(self, mode: bool = True):
        self.training = mode

    def generate(self, input_ids, **kwargs):
        return torch.cat([input_ids, torch.tensor([next(self.continuations)])], dim=1)


def test_a_generation_stopped_by_max_new_tokens_is_flagged_and_the_run_warns(tokenizer, monkeypatch, caplog):
    task = make_task(tokenizer, max_new_tokens=4, stop_strings=["STOP"])
    word, eos, pad = tokenizer("4", add_special_tokens=False)["input_ids"][0], tokenizer.eos_token_id, 0
    stop_word = tokenizer("9", add_special_tokens=False)["input_ids"][0]
    decode = tokenizer.decode
    monkeypatch.setattr(tokenizer, "decode", lambda ids, skip_special_tokens=True:
                        "9 STOP" if stop_word in ids else decode(ids, skip_special_tokens=skip_special_tokens))
    model = ScriptedModel([[word, eos, pad, pad],  # ended with the end of sequence
                           [word, stop_word, word, word],  # ended by a stop string at the cap's length
                           [word, word, word, word]])  # cut by the cap
    rows = sorted(ROWS[:3], key=lambda ex: len(task.prompt(ex, 256)[0].input_ids))  # decoding order
    generations, _ = task.generate(model, rows, batch_size=1, device="cpu")
    assert [g.capped for g in generations] == [False, False, True]
    predictions = [task.score(g, RowTruth(i, "clean", str(i), ex.target, None), False, None)
                   for i, (g, ex) in enumerate(zip(generations, rows, strict=True))]
    assert [p.capped for p in predictions] == [False, False, True]
    with caplog.at_level("WARNING"):
        metrics = summarize(task, predictions, None, 1.0)
    assert metrics["generation_capped_rate"] == pytest.approx(1 / 3)
    assert "stopped at task.max_new_tokens=4" in caplog.text
    caplog.clear()
    summarize(task, predictions[:2], None, 1.0)
    assert "max_new_tokens" not in caplog.text  # none cut: no warning
