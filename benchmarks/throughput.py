"""Training throughput of p2pdefense.train against a bare PyTorch loop and transformers.Trainer: same model,
batch and data, one process, one epoch each from the same initial weights.

    python benchmarks/throughput.py --model tiny --rows 2000
    python benchmarks/throughput.py --model smollm2-135m --rows 96

The bare loop is what one writes first: shuffled batches padded to their longest row, the model's own
causal-LM loss over full logits (labels -100 outside the answer), AdamW. transformers.Trainer runs with
train_sampling_strategy="group_by_length" (what `group_by_length=True` became in transformers 5), the same
loss as the bare loop, no logging or saving. Ours adds nothing but two things: length-grouped batches (less
padding) and projecting only the answer positions onto the vocabulary (no full-vocabulary logits).
Tokens/s counts non-padding tokens in every variant.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from pathlib import Path

import torch

from p2pdefense.config import load_config
from p2pdefense.defenses import build_defense
from p2pdefense.models import load_base_model
from p2pdefense.pipeline import load_splits, tokenizer_corpus
from p2pdefense.tasks import ClassificationTask
from p2pdefense.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def bare_loop(model, features, pad_id: int, batch_size: int, lr: float, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(features), generator=generator).tolist()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    model.train()
    tokens, start = 0, time.perf_counter()
    for s in range(0, len(order), batch_size):
        batch = [features[i] for i in order[s:s + batch_size]]
        width = max(len(f["input_ids"]) for f in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, f in enumerate(batch):
            ids[row, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
            labels[row, : len(f["labels"])] = torch.tensor(f["labels"])
            mask[row, : len(f["input_ids"])] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(mask.sum())
    return tokens / (time.perf_counter() - start)


def trainer_loop(model, features, pad_id: int, batch_size: int, lr: float, seed: int) -> float:
    import tempfile

    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch_size, num_train_epochs=1,
                                 learning_rate=lr, train_sampling_strategy="group_by_length", report_to=[],
                                 save_strategy="no", logging_strategy="no", use_cpu=True, seed=seed,
                                 dataloader_num_workers=0, disable_tqdm=True)
        dataset = Dataset.from_list(features)

        def collate(rows):  # right padding: ids with pad_id, labels with -100, as the bare loop does
            width = max(len(r["input_ids"]) for r in rows)
            return {
                "input_ids": torch.tensor([r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows]),
                "labels": torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows]),
                "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                                for r in rows])}

        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return sum(len(f["input_ids"]) for f in features) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=["tiny", "smollm2-135m"])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    args = parser.parse_args()

    config = load_config(ROOT / "configs" / "sst2_badnets_p2p.yaml", [
        f"model.preset={args.model}", f"data.train={args.data_dir}/train.jsonl",
        f"data.test={args.data_dir}/dev.jsonl", f"data.max_train_rows={args.rows}"])
    splits = load_splits(config)
    defense = build_defense(config.defense, config.task.num_labels)
    rows = defense.before_training(splits.train, random.Random(0))
    model, tokenizer = load_base_model(config.model, tokenizer_corpus(splits.train, config), seed=0)
    task = ClassificationTask(config.task, tokenizer, defense, config.train.max_length)
    features = [task.encode_training(ex) for ex in rows]
    lr = 2e-4 if config.model.finetune_method == "lora" else 1e-3
    initial = copy.deepcopy(model.state_dict())

    results = {}
    for name in ("bare", "trainer", "ours-no-grouping", "ours"):
        model.load_state_dict(initial)
        if name == "bare":
            results[name] = bare_loop(model, features, tokenizer.pad_token_id, args.batch_size, lr, seed=0)
        elif name == "trainer":
            results[name] = trainer_loop(model, features, tokenizer.pad_token_id, args.batch_size, lr, seed=0)
        else:
            cfg = TrainConfig(epochs=1, batch_size=args.batch_size, group_by_length=(name == "ours"),
                              select_best_epoch=False)
            results[name] = train(model, features, tokenizer.pad_token_id, cfg, lr, seed=0).tokens_per_s
        print(f"{name:>17}: {results[name]:,.0f} tokens/s", flush=True)
    print(f"model={args.model} rows={len(features)} batch={args.batch_size} torch_threads={torch.get_num_threads()}")
    print(f"ours / bare = {results['ours'] / results['bare']:.2f}x; "
          f"without length grouping {results['ours-no-grouping'] / results['bare']:.2f}x; "
          f"ours / Trainer (group_by_length) = {results['ours'] / results['trainer']:.2f}x")


if __name__ == "__main__":
    main()
