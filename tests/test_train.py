import torch

from p2pdefense.models.tiny import build_tiny_llama
from p2pdefense.train import LengthGroupedBatches, TrainConfig, answer_loss, collate, train


def test_length_grouped_batches_cover_every_row_once_and_repeat_per_seed():
    lengths = [((i * 37) % 50) + 1 for i in range(203)]
    sampler = LengthGroupedBatches(lengths, 8, seed=3, group_by_length=True)
    first = list(sampler)
    second_epoch = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(203))
    assert first != second_epoch  # reshuffled each epoch
    assert first == list(LengthGroupedBatches(lengths, 8, seed=3, group_by_length=True))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(first)
    plain = list(LengthGroupedBatches(lengths, 8, seed=3, group_by_length=False))
    plain_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain) / len(plain)
    assert spread < plain_spread / 3


def test_answer_loss_equals_the_causal_lm_loss_on_answer_tokens():
    model = build_tiny_llama(50, 32, 1, 2, 64, seed=0)
    features = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, -100, 8, 9]},
                {"input_ids": [10, 11, 12], "labels": [-100, -100, 12]}]
    batch = collate(features, pad_id=0)
    assert batch["loss_positions"].tolist() == [[2, 3], [1, 0]]
    assert batch["loss_targets"].tolist() == [[8, 9], [12, -100]]
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, :5] = torch.tensor(features[0]["labels"])
    labels[1, :3] = torch.tensor(features[1]["labels"])
    reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    assert torch.allclose(answer_loss(model, batch), reference, atol=1e-5)


def test_training_learns_and_keeps_the_best_dev_epoch():
    model = build_tiny_llama(30, 32, 1, 2, 64, seed=0)
    # the answer token is the first token + 10: learnable in a few epochs
    features = [{"input_ids": [i % 10 + 2, 1, i % 10 + 12], "labels": [-100, -100, i % 10 + 12]} for i in range(64)]
    seen = []

    def dev_score(m):
        with torch.no_grad():
            logits = m(input_ids=torch.tensor([[k + 2, 1] for k in range(10)])).logits[:, -1]
        accuracy = (logits.argmax(-1) == torch.arange(10) + 12).float().mean().item()
        seen.append(accuracy)
        return accuracy

    report = train(model, features, 0, TrainConfig(epochs=8, batch_size=8), 1e-2, seed=0, dev_score=dev_score)
    assert [e["epoch"] for e in report.epochs] == list(range(1, 9))
    assert report.epochs[-1]["loss"] < report.epochs[0]["loss"] / 2
    assert max(seen) == 1.0
    best = max(i for i, acc in enumerate(seen) if acc == max(seen)) + 1  # ties go to the later epoch
    assert report.best_epoch == best
    assert dev_score(model) == max(seen)  # the best epoch's weights were restored
    assert report.tokens_per_s > 0 and not model.training
