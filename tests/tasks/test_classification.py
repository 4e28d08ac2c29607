import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from p2pdefense.data import Example, ExampleMeta, synthetic_sentiment
from p2pdefense.defenses import DEFENSES, build_defense
from p2pdefense.defenses.p2p import P2PConfig
from p2pdefense.models.tiny import build_tiny_llama, train_tokenizer
from p2pdefense.tasks import ClassificationConfig, CuePlan, score_verbalizers

# frequent enough that byte-level BPE merges the space with the digit ("Ġ0"), as the tiny preset's does
TEXTS = [e.text for e in synthetic_sentiment(200, seed=0)] + ["Output: 0", "Output: 1", "Answer: 2", "Answer: 3"] * 50


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(TEXTS, vocab_size=400)


def whitespace_tokenizer():
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer.train_from_iterator(TEXTS, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>")


def test_cue_plan_moves_the_space_into_the_verbalizer_when_bpe_merges_it(bpe):
    with_space = bpe("Output: ", add_special_tokens=False)["input_ids"]
    merged = bpe("Output: 0", add_special_tokens=False)["input_ids"]
    assert merged[: len(with_space)] != with_space  # "Ġ0" is one token: "Output: " is no prefix
    plan = CuePlan.build(bpe, "Output: ", ["0", "1"])
    assert plan.prompt_cue == "Output:"
    assert plan.verbalizer_ids == [bpe(" 0")["input_ids"], bpe(" 1")["input_ids"]]
    assert all(len(v) == 1 for v in plan.verbalizer_ids)


def test_cue_plan_keeps_the_cue_whole_when_the_tokenizer_splits_on_space():
    tok = whitespace_tokenizer()
    plan = CuePlan.build(tok, "Output: ", ["0", "1"])
    assert plan.prompt_cue == "Output: "
    assert plan.verbalizer_ids == [tok("0", add_special_tokens=False)["input_ids"],
                                   tok("1", add_special_tokens=False)["input_ids"]]


def test_cue_plan_rejects_verbalizers_that_collide():
    tok = whitespace_tokenizer()
    with pytest.raises(ValueError, match="same tokens"):
        CuePlan.build(tok, "Output: ", ["zzz", "qqq"])  # both unknown words -> <unk>


def make_task(tokenizer, defense_config=None, max_length=64, label_words=None):
    defense = build_defense(defense_config or DEFENSES["none"].config_class(), 2)
    return ClassificationConfig(label_words=label_words).build(tokenizer, defense.output_space, max_length)


def test_training_encoding_puts_loss_on_the_verbalizer_only(bpe):
    task = make_task(bpe, P2PConfig())
    benign = Example(text="the movie was dull .", label=2, meta=ExampleMeta(source_index=0, benign=True))
    encoded = task.encode_training(benign)
    prompt = task.encode_prompt(benign)
    assert prompt.prompt_text == "Input: the movie was dull .\nAnswer:"
    answer = task.plan(benign).verbalizer_ids[2]
    assert encoded["input_ids"] == prompt.input_ids + answer
    assert encoded["labels"] == [-100] * len(prompt.input_ids) + answer
    plain = Example(text="the movie was dull .", label=0, meta=ExampleMeta(source_index=0))
    assert task.encode_prompt(plain).prompt_text.endswith("\nOutput:")


def test_truncation_cuts_the_input_and_keeps_the_cue(bpe):
    task = make_task(bpe, max_length=16)
    long = Example(text=" ".join(["wonderful"] * 50), label=1, meta=ExampleMeta(source_index=0))
    encoded = task.encode_prompt(long)
    cue_ids = bpe(task.plan(long).prompt_cue, add_special_tokens=False)["input_ids"]
    assert encoded.truncated and encoded.trigger_in_input is None
    word = len(bpe(" wonderful", add_special_tokens=False)["input_ids"])
    assert 16 - word < len(encoded.input_ids) + 1 <= 16  # whole words are cut: less than a word below budget
    assert encoded.input_ids[-len(cue_ids):] == cue_ids


LONG_WORDS = [f"w{i}" for i in range(60)]  # distinct words: the kept head and tail are recognisable


def test_truncation_cuts_the_middle_and_keeps_an_end_trigger_and_the_template_newline(bpe):
    task = make_task(bpe, max_length=48)
    text = " ".join(LONG_WORDS + ["mn"])
    encoded = task.encode_prompt(Example(text=text, label=0, meta=ExampleMeta(source_index=0)), trigger="mn")
    assert encoded.truncated and encoded.trigger_in_input is True
    shown = encoded.prompt_text
    assert shown.startswith("Input: w0 w1") and shown.endswith(" w59 mn\nOutput:")  # head, tail, newline, cue
    assert "w30" not in shown  # the middle went
    assert 44 <= len(encoded.input_ids) + 1 <= 48  # whole words are cut: up to a word's tokens less
    # the ids fed to the model are the tokens of the text shown, as the tokenizer splits each kept piece
    assert bpe.decode(encoded.input_ids) == shown


def test_truncation_keeps_a_middle_trigger_and_a_suffix_benign_prompt(bpe):
    task = make_task(bpe, P2PConfig(placement="suffix"), max_length=48)
    words = LONG_WORDS[:30] + ["mn"] + LONG_WORDS[30:]
    shown = task.space.trigger.apply(Example(text=" ".join(words), label=0, meta=ExampleMeta(source_index=0)))
    encoded = task.encode_prompt(shown, trigger="mn")
    assert encoded.truncated and encoded.trigger_in_input is True
    assert " mn " in encoded.prompt_text and "w30" not in encoded.prompt_text.split()
    assert encoded.prompt_text.endswith("The query currently entered is:\nAnswer:")
    # the undefended prompt of the same row keeps the trigger too: no bias toward either run
    plain = make_task(bpe, max_length=48).encode_prompt(
        Example(text=" ".join(words), label=0, meta=ExampleMeta(source_index=0)), trigger="mn")
    assert plain.trigger_in_input is True


def test_a_trigger_that_cannot_be_kept_is_reported(bpe):
    task = make_task(bpe, max_length=24)
    text = " ".join(LONG_WORDS[:3] + ["mn"] * 40 + LONG_WORDS[3:6])
    encoded = task.encode_prompt(Example(text=text, label=0, meta=ExampleMeta(source_index=0)), trigger="mn")
    assert encoded.truncated and encoded.trigger_in_input is False
    assert encoded.prompt_text.startswith("Input: w0") and encoded.prompt_text.endswith("w5\nOutput:")


def manual_scores(model, prompt, verbalizers):
    """Reference: one sequence at a time, log-prob of each verbalizer token summed."""
    out = []
    for verb in verbalizers:
        ids = torch.tensor([prompt + verb])
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        out.append(sum(logprobs[len(prompt) - 1 + k, tok].item() for k, tok in enumerate(verb)))
    return out


@pytest.mark.parametrize("label_words", [None, ["wonderful and moving", "boring ,"]])
def test_batched_scoring_matches_one_sequence_at_a_time(bpe, label_words):
    model = build_tiny_llama(len(bpe), 32, 1, 2, 128, seed=0).eval()
    task = make_task(bpe, label_words=label_words)
    rows = synthetic_sentiment(7, seed=2)
    plan = task.plan(rows[0])
    if label_words:
        assert max(len(v) for v in plan.verbalizer_ids) > 1  # exercises the multi-token path
    prompts = [task.encode_prompt(e).input_ids for e in rows]
    batched = score_verbalizers(model, prompts, plan.verbalizer_ids, bpe.pad_token_id, 3, "cpu")
    assert batched.shape == (7, 2)
    for row, prompt in zip(batched.tolist(), prompts, strict=True):
        assert row == pytest.approx(manual_scores(model, prompt, plan.verbalizer_ids), abs=1e-4)


def test_chat_template_wraps_the_classification_prompt_and_a_cut_keeps_the_wrapper(bpe):
    bpe.chat_template = ("<|system|>be brief<|end|>{% for m in messages %}<|user|>{{ m['content'] }}<|end|>"
                         "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        config = ClassificationConfig(use_chat_template=True, cue="")
        space = build_defense(DEFENSES["none"].config_class(), 2).output_space
        task = config.build(bpe, space, 64)
        row = Example(text="the movie was dull .", label=0, meta=ExampleMeta(source_index=0))
        assert task.encode_prompt(row).prompt_text == ("<|system|>be brief<|end|><|user|>Input: the movie was dull "
                                                       ".\n<|end|><|assistant|>")
        long = Example(text=" ".join(["dull"] * 200), label=0, meta=ExampleMeta(source_index=1))
        cut = config.build(bpe, space, 96).encode_prompt(long)
        assert cut.truncated and cut.prompt_text.startswith("<|system|>be brief<|end|><|user|>Input: dull")
        assert cut.prompt_text.endswith("dull\n<|end|><|assistant|>") and len(cut.input_ids) <= 96
        # a scorer's zero-shot copy of the task may switch the wrapping on or off
        assert not config.zero_shot(None, None, None, use_chat_template=False).use_chat_template
        assert config.zero_shot(None, None, None).use_chat_template
    finally:
        bpe.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        ClassificationConfig(use_chat_template=True).build(bpe, space, 64)
