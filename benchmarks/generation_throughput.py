"""Batched greedy decoding (GenerationTask.generate) against a plain `model.generate` loop over single examples:
same model, same prompts, same max_new_tokens, measured in one process. Also checks both give the same text.

    python benchmarks/generation_throughput.py --model smollm2-135m --rows 32
    python benchmarks/generation_throughput.py --model tiny --rows 64
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from p2pdefense.config import load_config
from p2pdefense.defenses import build_defense
from p2pdefense.models import load_base_model
from p2pdefense.pipeline import load_splits, tokenizer_corpus
from p2pdefense.tasks import GenerationTask

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", choices=["tiny", "smollm2-135m"])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()

    config = load_config(ROOT / "configs" / "gsm8k_badnets_p2p.yaml", [
        f"model.preset={args.model}", f"data.train={args.data_dir}/gsm8k/train.jsonl",
        f"data.max_test_rows={args.rows}", f"task.max_new_tokens={args.max_new_tokens}", "task.stop_strings=[]",
        "model.finetune=full", f"task.use_chat_template={args.model != 'tiny'}"])
    splits = load_splits(config)
    defense = build_defense(config.defense, 0)
    model, tokenizer = load_base_model(config.model, tokenizer_corpus(splits.train[:500], config), seed=0)
    model.eval()
    task = GenerationTask(config.task, tokenizer, defense, config.train.max_length)
    examples = splits.test

    start = time.perf_counter()
    batched, _ = task.generate(model, examples, args.batch_size, "cpu")
    batched_seconds = time.perf_counter() - start
    batched_tokens = sum(g.new_tokens for g in batched)

    start, loop_tokens, same = time.perf_counter(), 0, 0
    with torch.no_grad():
        for generation in batched:
            ids = torch.tensor([tokenizer(generation.prompt_text)["input_ids"]])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            new = out[0, ids.shape[1]:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id)]
            loop_tokens += len(new)
            same += tokenizer.decode(new, skip_special_tokens=True).strip() == generation.raw
    loop_seconds = time.perf_counter() - start

    print(f"model={args.model} prompts={len(examples)} batch={args.batch_size} max_new_tokens={args.max_new_tokens} "
          f"torch_threads={torch.get_num_threads()}")
    print(f"batched: {batched_tokens} tokens in {batched_seconds:.1f} s = {batched_tokens / batched_seconds:.1f} tok/s")
    print(f"loop:    {loop_tokens} tokens in {loop_seconds:.1f} s = {loop_tokens / loop_seconds:.1f} tok/s")
    print(f"speed-up {(batched_tokens / batched_seconds) / (loop_tokens / loop_seconds):.2f}x; "
          f"identical outputs {same}/{len(examples)}")


if __name__ == "__main__":
    main()
