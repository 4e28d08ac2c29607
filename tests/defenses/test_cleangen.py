import json

import pytest
import torch

from p2pdefense import pipeline
from p2pdefense.config import ConfigError, load_config
from p2pdefense.data import synthetic_math
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.cleangen import CleanGenConfig, CleanGenModel
from p2pdefense.models.tiny import build_tiny_llama, train_tokenizer
from p2pdefense.predict import predict_run
from p2pdefense.tasks import MathConfig

ROWS = synthetic_math(7, seed=1)


@pytest.fixture(scope="module")
def setting():
    tokenizer = train_tokenizer([f"Question: {e.text}\nAnswer: {e.target}" for e in synthetic_math(60, 0)], 300)
    task = MathConfig(max_new_tokens=12).build(tokenizer, build_defense(CleanGenConfig(), 0).output_space, 256)
    return task, lively_model(len(tokenizer), 0), lively_model(len(tokenizer), 1)


def lively_model(vocab_size: int, seed: int):
    """A random model with large weights: its greedy text varies with the prompt (the default init repeats one
    token)."""
    model = build_tiny_llama(vocab_size, 32, 2, 2, 256, seed=seed).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.5)
    return model


def texts(task, model) -> list[str]:
    # batches of 3: prompts of different lengths, left-padded
    return [g.raw for g in task.generate(model, ROWS, batch_size=3, device="cpu")[0]]


def test_alpha_decides_whose_tokens_are_generated(setting):
    task, model, reference = setting
    own, reference_own = texts(task, model), texts(task, reference)
    assert own != reference_own  # two different models, else the test shows nothing
    never = CleanGenModel(model, reference, alpha=float("inf"))
    assert texts(task, never) == own and never.replaced == 0 and never.checked > 0
    always = CleanGenModel(model, reference, alpha=0.0)  # every token replaced: the reference's own greedy text
    assert texts(task, always) == reference_own and always.replaced == always.checked
    some = CleanGenModel(model, reference, alpha=1.0e4)
    texts(task, some)
    assert 0 < some.replaced < some.checked


def test_the_stage_wraps_the_model_with_the_reference_and_reports_replacements(setting):
    task, model, reference = setting
    defense = build_defense(CleanGenConfig(alpha=0.0), 0)
    context = DefenseContext(task=task, reference_source=lambda name: (reference, task.tokenizer))
    deployed = defense.inference_model(model, context)
    assert texts(task, deployed) == texts(task, reference)
    checked = deployed.checked
    assert checked > 0
    assert defense.rejected(ROWS, [None] * len(ROWS), context) == [False] * len(ROWS)
    # alpha 0: every choice replaced; the counters start again for the next evaluation
    assert context.notes[0] == f"cleangen: reference 'base', alpha 0.0: {checked} of {checked} token choices replaced"
    assert deployed.checked == deployed.replaced == 0
    other = train_tokenizer(["a b c d e f"] * 10, 280)
    context = DefenseContext(task=task, reference_source=lambda name: (reference, other))
    with pytest.raises(ValueError, match="same vocabulary"):
        defense.inference_model(model, context)


def test_a_math_run_decodes_through_cleangen_and_classification_is_refused(tmp_path):
    common = ["data.synthetic.train_rows=60", "data.synthetic.test_rows=10", "data.max_dev_rows=4",
              "task.name=math", "task.max_new_tokens=8", "attack.name=badnets", "attack.rate=0.2",
              "attack.triggers=[cf]", "attack.target_output.kind=answer_offset", "attack.target_output.value='1'",
              "train.epochs=1", "train.max_length=160", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
              "model.tiny.vocab_size=400", "model.tiny.num_heads=2", "stealth_report=false",
              f"output_dir={tmp_path}"]
    run_dir, metrics = pipeline.run(load_config(None, [*common, "defense.name=cleangen", "name=cg"]))
    note = metrics["defense_notes"][-1]
    checked = int(note.split(" of ")[1].split()[0])
    assert note.startswith("cleangen: reference 'base'") and checked > 0
    # p2p predict rebuilds the same reference (the tiny base from the run's saved tokenizer) and decodes the same
    inputs = tmp_path / "inputs.jsonl"
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    clean = [r for r in rows if r["split"] == "clean"][:3]
    questions = [r["input"].split("Question: ", 1)[1].rsplit("\nAnswer:", 1)[0] for r in clean]
    inputs.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions), encoding="utf-8")
    predicted = predict_run(run_dir, str(inputs), text_field="question")
    assert [p["raw"] for p in predicted] == [r["raw"] for r in clean]
    with pytest.raises(ConfigError, match="cleangen"):
        load_config(None, ["defense.name=cleangen"])


def test_sampling_is_refused(setting):
    task, model, reference = setting
    with pytest.raises(ValueError, match="greedily"):
        CleanGenModel(model, reference, 1.0).generate(torch.ones(1, 2, dtype=torch.long),
                                                       torch.ones(1, 2, dtype=torch.long), do_sample=True)
