import torch

from p2pdefense.data import synthetic_sentiment
from p2pdefense.defenses import DefenseContext, OutputSpace, build_defense
from p2pdefense.defenses.crow import CrowConfig, consistency_loss
from p2pdefense.models import ModelConfig, load_base_model
from p2pdefense.tasks import ClassificationConfig
from p2pdefense.train import TrainConfig, collate


def test_consistency_loss_is_zero_for_aligned_states_and_ignores_padding():
    a = torch.randn(2, 3, 8)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert consistency_loss((a, 2 * a, a), mask).item() < 1e-6  # same directions
    b = a.clone()
    b[0, 2] = -a[0, 2]  # opposite only at a padded position
    assert consistency_loss((a, b), mask).item() < 1e-6


def test_crow_keeps_the_layers_more_consistent_than_fine_tuning_without_it():
    task_config = ClassificationConfig()
    rows = synthetic_sentiment(64, seed=1)
    corpus = [task_config.corpus_text(ex) for ex in rows] + ["Output: 0 1"]
    settings = ModelConfig(tiny={"vocab_size": 300, "hidden_size": 32, "num_layers": 3, "num_heads": 2})

    def repaired(alpha: float) -> tuple[float, list[str]]:
        model, tokenizer = load_base_model(settings, corpus, seed=0)
        task = task_config.build(tokenizer, OutputSpace(2), 64)
        context = DefenseContext(task=task, trusted_source=lambda spec: rows,
                                 train_config=TrainConfig(batch_size=16), learning_rate=3e-3)
        crow = build_defense(CrowConfig(trusted_data="mine", trusted_rows=64, epochs=3, alpha=alpha), 2)
        assert crow.after_training(model, context) is model
        batch = collate([task.encode_training(ex) for ex in rows], tokenizer.pad_token_id)
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=True)
        return consistency_loss(out.hidden_states, batch["attention_mask"]).item(), context.notes

    regularized, notes = repaired(5.5)
    plain, _ = repaired(0.0)  # the same steps with the answer loss only
    assert regularized < 0.8 * plain
    assert "CROW on 64 trusted rows, 3 epochs" in notes[0]


def test_crow_repairs_a_lora_model_whose_embeddings_are_frozen(tmp_path):
    from p2pdefense.models.tiny import build_tiny_llama, train_tokenizer

    task_config = ClassificationConfig()
    rows = synthetic_sentiment(32, seed=1)
    corpus = [task_config.corpus_text(ex) for ex in rows] + ["Output: 0 1"]
    tokenizer = train_tokenizer(corpus, 300)
    build_tiny_llama(len(tokenizer), 32, 2, 2, 64, seed=1).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    settings = ModelConfig(preset=None, name_or_path=str(tmp_path / "base"), dtype="float32", lora={"r": 4})
    model, tokenizer = load_base_model(settings)
    assert not model.get_input_embeddings().weight.requires_grad
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = task_config.build(tokenizer, OutputSpace(2), 64)
    context = DefenseContext(task=task, trusted_source=lambda spec: rows,
                             train_config=TrainConfig(batch_size=16), learning_rate=3e-3)
    crow = build_defense(CrowConfig(trusted_data="mine", trusted_rows=32, epochs=1), 2)
    assert crow.after_training(model, context) is model
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_a_crow_step_gives_the_gradients_of_its_joint_loss_one_pass_at_a_time():
    """The step backpropagates its two terms one after the other (half the peak memory); the gradients must be
    those of one backward of answer loss + alpha x consistency loss of the perturbed pass."""
    from p2pdefense.defenses.crow import crow_step

    task_config = ClassificationConfig()
    rows = synthetic_sentiment(16, seed=2)
    corpus = [task_config.corpus_text(ex) for ex in rows] + ["Output: 0 1"]
    settings = ModelConfig(tiny={"vocab_size": 300, "hidden_size": 32, "num_layers": 2, "num_heads": 2})
    model, tokenizer = load_base_model(settings, corpus, seed=0)
    task = task_config.build(tokenizer, OutputSpace(2), 64)
    batch = collate([task.encode_training(ex) for ex in rows], tokenizer.pad_token_id)
    mask, alpha, epsilon = batch["attention_mask"], 5.5, 0.1

    embeds = model.get_input_embeddings()(batch["input_ids"])
    clean = model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
    gradient, = torch.autograd.grad(consistency_loss(clean.hidden_states, mask), embeds, retain_graph=True)
    perturbed = model(inputs_embeds=embeds + epsilon * gradient.sign(), attention_mask=mask, output_hidden_states=True)
    logits = torch.take_along_dim(clean.logits, batch["loss_positions"][..., None], dim=1)
    answer = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["loss_targets"].flatten(),
                                               ignore_index=-100)
    joint = answer + alpha * consistency_loss(perturbed.hidden_states, mask)
    joint.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    loss = crow_step(model, batch, alpha, epsilon)
    assert abs(loss - joint.item()) < 1e-5
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0  # both passes reach the trainable embeddings
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, expected[name], rtol=1e-4, atol=1e-6), name
