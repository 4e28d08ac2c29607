"""Run the training loop in 2 CPU processes (accelerate's debug_launcher) and in 1 process with the same global
batch; write each run's learning-rate curve and final weights for tests/test_train.py to compare, and what each
process was told when building a probe whose lock is free, and one whose lock another job holds.

    python tests/distributed_train.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, debug_launcher
from accelerate.utils import DataLoaderConfiguration

from p2pdefense.defenses.probe import building
from p2pdefense.evaluate import across_processes
from p2pdefense.io import exclusive_lock
from p2pdefense.models.tiny import build_tiny_llama
from p2pdefense.train import TrainConfig, train

PER_DEVICE_BATCH, EPOCHS = 4, 3


def features() -> list[dict[str, list[int]]]:
    """48 rows (6 global batches of 8) of varied lengths, with one or two answer tokens."""
    rows = []
    for i in range(48):
        prompt = [2 + (i * 7 + k) % 20 for k in range(3 + i % 5)]
        answer = [22 + i % 6] if i % 3 else [22 + i % 6, 28]
        rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return rows


def run(out: str, processes: int) -> None:
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=True))
    model = build_tiny_llama(32, 32, 1, 2, 64, seed=0)
    config = TrainConfig(epochs=EPOCHS, batch_size=PER_DEVICE_BATCH * 2 // processes, log_every=1)
    report = train(model, features(), 0, config, 5e-3, seed=0, accelerator=accelerator)
    # evaluation is split across processes and gathered: every rank gets every result, in order
    seen = []
    gathered = across_processes(7, lambda share: seen.extend(share) or [i * i for i in share])
    told = {}
    for name in ("free", "held"):
        with building(Path(out) / f"{name}.pt") as checkpoints:
            told[name] = None if checkpoints is None else checkpoints.name
    (Path(out) / f"gather-{processes}-rank{accelerator.process_index}.json").parent.mkdir(parents=True, exist_ok=True)
    (Path(out) / f"gather-{processes}-rank{accelerator.process_index}.json").write_text(
        json.dumps({"results": gathered, "computed": seen, "building": told}))
    if accelerator.is_main_process:
        directory = Path(out) / f"processes-{processes}"
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, directory / "weights.pt")
        (directory / "report.json").write_text(json.dumps(
            {"learning_rates": report.learning_rates, "losses": [e["loss"] for e in report.epochs],
             "processes": accelerator.num_processes}))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    torch.set_num_threads(1)
    with exclusive_lock(Path(sys.argv[1]) / ".held.pt.lock"):  # another job building the "held" probe
        debug_launcher(run, args=(sys.argv[1], 2), num_processes=2)
    run(sys.argv[1], 1)
