import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from p2pdefense.compute import ComputeCount, counting_compute
from p2pdefense.models.tiny import build_tiny_llama
from p2pdefense.train import LengthGroupedBatches, TrainConfig, TrainingDiverged, answer_loss, collate, train


def test_length_grouped_batches_cover_every_row_once_and_repeat_per_seed():
    lengths = [((i * 37) % 50) + 1 for i in range(203)]
    sampler = LengthGroupedBatches(lengths, 8, seed=3, group_by_length=True)
    first = list(sampler)
    assert first == list(sampler)  # the order is a function of (seed, epoch), not of how often it was read
    sampler.shuffle_for_epoch(1)
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


def test_two_processes_follow_the_same_schedule_and_weights_as_one_process_with_the_same_global_batch(tmp_path):
    script = Path(__file__).with_name("distributed_train.py")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"processes-{p}" / "report.json").read_text()) for p in (1, 2))
    assert two["processes"] == 2 and one["processes"] == 1
    # 3 epochs x 6 global batches: the LR decays linearly to 0 at the last step, not halfway
    assert len(one["learning_rates"]) == len(two["learning_rates"]) == 18
    assert two["learning_rates"] == pytest.approx(one["learning_rates"])
    assert two["learning_rates"][8] > 0 and two["learning_rates"][-1] == 0
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    ranks = [json.loads((tmp_path / f"gather-2-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["results"] == [i * i for i in range(7)] for r in ranks)
    assert sorted(ranks[0]["computed"] + ranks[1]["computed"]) == list(range(7))  # each index computed once
    assert ranks[0]["computed"] and ranks[1]["computed"]
    # a probe's lock: the main process takes it and tells the other; where another job holds it, neither process
    # waits alone (that would deadlock the collective training) and both train without checkpoints
    assert all(r["building"] == {"free": "free.pt.checkpoints", "held": None} for r in ranks)
    weights_one, weights_two = (torch.load(tmp_path / f"processes-{p}" / "weights.pt") for p in (1, 2))
    for name, value in weights_one.items():
        assert torch.allclose(value, weights_two[name], atol=1e-5), name


def toy_features():
    return [{"input_ids": [i % 10 + 2, 1, i % 10 + 12], "labels": [-100, -100, i % 10 + 12]} for i in range(64)]


def toy_dev_score(m):
    with torch.no_grad():
        logits = m(input_ids=torch.tensor([[k + 2, 1] for k in range(10)])).logits[:, -1]
    return (logits.argmax(-1) == torch.arange(10) + 12).float().mean().item()


def dev_score_dying_in_epoch(epoch: int):
    """A dev score that kills the run (KeyboardInterrupt) at the end of `epoch`, before its checkpoint."""
    calls = []

    def score(model):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return toy_dev_score(model)

    return score


def test_a_run_stopped_after_epoch_two_resumes_to_the_same_weights_and_report(tmp_path):
    config = TrainConfig(epochs=4, batch_size=8)
    reference = build_tiny_llama(30, 32, 1, 2, 64, seed=0)
    with counting_compute() as full_spent:
        full = train(reference, toy_features(), 0, config, 1e-2, seed=0, dev_score=toy_dev_score)
    assert full.carried_compute == ComputeCount()  # nothing done by an earlier process

    dies_in_epoch_three = dev_score_dying_in_epoch(3)
    first = build_tiny_llama(30, 32, 1, 2, 64, seed=0)
    with pytest.raises(KeyboardInterrupt):
        train(first, toy_features(), 0, config, 1e-2, seed=0, dev_score=dies_in_epoch_three,
              checkpoint_dir=tmp_path)
    assert (tmp_path / "latest").read_text() == "epoch-2"
    resumed_model = build_tiny_llama(30, 32, 1, 2, 64, seed=0)  # a fresh process: base weights only
    with counting_compute() as resumed_spent:
        resumed = train(resumed_model, toy_features(), 0, config, 1e-2, seed=0, dev_score=toy_dev_score,
                        checkpoint_dir=tmp_path, resume=True)
    assert resumed.resumed_from_epoch == 2
    # the checkpoint carries the killed process's first two epochs (not its lost third): the whole training's count
    carried = resumed.carried_compute
    assert 0 < carried.forward_tokens < full_spent.forward_tokens
    assert carried.forward_tokens + resumed_spent.forward_tokens == full_spent.forward_tokens
    assert carried.backward_tokens + resumed_spent.backward_tokens == full_spent.backward_tokens
    assert carried.flops + resumed_spent.flops == pytest.approx(full_spent.flops)
    assert [e["loss"] for e in resumed.epochs] == pytest.approx([e["loss"] for e in full.epochs])
    assert resumed.learning_rates == pytest.approx(full.learning_rates)
    assert resumed.best_epoch == full.best_epoch
    for (name, a), b in zip(reference.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_checkpoint_without_the_compute_count_resumes_with_the_count_marked_partial(tmp_path):
    config = TrainConfig(epochs=2, batch_size=8)
    dies_in_epoch_two = dev_score_dying_in_epoch(2)
    with pytest.raises(KeyboardInterrupt):
        train(build_tiny_llama(30, 32, 1, 2, 64, seed=0), toy_features(), 0, config, 1e-2, seed=0,
              dev_score=dies_in_epoch_two, checkpoint_dir=tmp_path)
    progress_path = tmp_path / "epoch-1" / "progress.json"
    progress = json.loads(progress_path.read_text())
    assert progress["compute"]["forward_tokens"] > 0
    del progress["compute"]  # as written before checkpoints kept the count
    progress_path.write_text(json.dumps(progress))
    resumed = train(build_tiny_llama(30, 32, 1, 2, 64, seed=0), toy_features(), 0, config, 1e-2, seed=0,
                    dev_score=toy_dev_score, checkpoint_dir=tmp_path, resume=True)
    assert resumed.resumed_from_epoch == 1 and resumed.carried_compute is None


def test_a_nan_loss_stops_training_and_names_the_kept_checkpoint(tmp_path, monkeypatch):
    from p2pdefense import train as train_module

    real_loss, calls = train_module.answer_loss, []

    def nan_in_epoch_two(model, batch, reduction="mean"):
        calls.append(1)
        loss = real_loss(model, batch, reduction)
        return loss * float("nan") if len(calls) > 8 else loss  # 8 batches per epoch

    monkeypatch.setattr(train_module, "answer_loss", nan_in_epoch_two)
    model = build_tiny_llama(30, 32, 1, 2, 64, seed=0)
    with pytest.raises(TrainingDiverged, match="nan in epoch 2.*epoch-1"):
        train(model, toy_features(), 0, TrainConfig(epochs=3, batch_size=8), 1e-2, seed=0,
              dev_score=toy_dev_score, checkpoint_dir=tmp_path)
    assert (tmp_path / "latest").read_text() == "epoch-1"


def test_gradient_checkpointing_trains_to_the_same_weights():
    plain = build_tiny_llama(30, 32, 1, 2, 64, seed=0)
    checkpointed = build_tiny_llama(30, 32, 1, 2, 64, seed=0)
    config = TrainConfig(epochs=2, batch_size=8)
    first = train(plain, toy_features(), 0, config, 1e-2, seed=0)
    second = train(checkpointed, toy_features(), 0, config.model_copy(update={"gradient_checkpointing": True}),
                   1e-2, seed=0)
    assert checkpointed.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    assert [e["loss"] for e in second.epochs] == pytest.approx([e["loss"] for e in first.epochs], rel=1e-5)
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
