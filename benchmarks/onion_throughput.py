"""ONION's reference scoring (`deletion_perplexities`) on IMDB reviews: one packed pass per forward against a text's
passes stacked into one forward (the default on a GPU), same reference, same texts, one process. Reports reviews a
second, estimated TFLOPs a review and the largest relative difference between the two ways' perplexities.

    python benchmarks/onion_throughput.py --rows 40              # on a GPU: the default stacking
    python benchmarks/onion_throughput.py --rows 4 --stack 8     # on a CPU, where the default is one pass
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from p2pdefense.compute import counting_compute
from p2pdefense.defenses.onion import PACKED_TOKENS, deletion_perplexities, passes_per_forward
from p2pdefense.models import ModelConfig, load_base_model
from p2pdefense.models.loading import resolve_dtype

ROOT = Path(__file__).resolve().parents[1]


def timed(model, tokenizer, texts: list[str], device, stack: int) -> tuple[float, float, list[list[float]]]:
    """(seconds, FLOPs, each text's perplexities) for scoring `texts` with `stack` passes a forward."""
    with counting_compute() as spent:
        start = time.perf_counter()
        scores = [deletion_perplexities(model, tokenizer, text, device, stack=stack) for text in texts]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, spent.flops, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40, help="reviews to score (the first of the file)")
    parser.add_argument("--stack", type=int, default=None, help="passes a forward (default: the device's)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "imdb" / "train.jsonl"))
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = ModelConfig(preset="smollm2-135m", finetune="full")
    model, tokenizer = load_base_model(config, device=device)
    model.eval()
    with open(args.data, encoding="utf-8") as rows:
        texts = [json.loads(line)["sentence"] for line, _ in zip(rows, range(args.rows), strict=False)]
    stack = args.stack or passes_per_forward(device, PACKED_TOKENS)
    deletion_perplexities(model, tokenizer, texts[0], device, stack=stack)  # warm-up (kernels, allocator)

    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "dtype": str(resolve_dtype(config.dtype)), "reviews": len(texts),
              "mean_words": sum(len(t.split()) for t in texts) / len(texts), "stack": stack}
    one_seconds, flops, one = timed(model, tokenizer, texts, device, 1)
    stacked_seconds, _, stacked = timed(model, tokenizer, texts, device, stack)
    result |= {"one_pass_reviews_per_s": len(texts) / one_seconds,
               "stacked_reviews_per_s": len(texts) / stacked_seconds,
               "speedup": one_seconds / stacked_seconds, "tflops_per_review": flops / len(texts) / 1e12,
               "max_relative_difference": max(abs(a - b) / abs(a) for x, y in zip(one, stacked, strict=True)
                                              for a, b in zip(x, y, strict=True))}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
