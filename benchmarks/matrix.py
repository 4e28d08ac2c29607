"""Benchmark matrix: clean reference, undefended attack and defended run, per setting and seed.

    python benchmarks/matrix.py --setting tiny-full --seeds 0 1
    python benchmarks/matrix.py --setting smollm2-paper --seeds 0
    python benchmarks/matrix.py --setting smollm2-strong --seeds 0
    python benchmarks/matrix.py --setting gsm8k-smollm2 --seeds 0

A setting is a configuration file under configs/ plus `--set` overrides (listed below, so that a table can be
traced to its exact configuration). Data paths point at --data-dir (default ../shared/data). Results:
benchmarks/results/<setting>/ with every run directory, summary.json (all rows) and summary.md (per-seed
table plus mean and spread across seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from p2pdefense.config import load_config
from p2pdefense.io import write_json_atomic, write_text_atomic
from p2pdefense.pipeline import run_with_baselines
from p2pdefense.report import aggregate, markdown_table

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_SUBSET = ["model.preset=smollm2-135m", "data.max_train_rows=1000", "data.max_test_rows=400",
                  "data.dev_fraction=0.03", "train.epochs=2", "train.batch_size=16"]
SST2 = ["data.train={data}/sst2/train.jsonl", "data.test={data}/sst2/dev.jsonl"]
SETTINGS = {
    # SST-2, BadNets "mn" 5%: the tiny random-init Llama trained from scratch on the full train split (minus 10% dev)
    "tiny-full": ("sst2_badnets_p2p.yaml", SST2 + ["model.preset=tiny", "train.epochs=4", "train.batch_size=32"]),
    # the paper's defaults: LoRA r=16 on q_proj/v_proj, lr 2e-4, 5% poison
    "smollm2-paper": ("sst2_badnets_p2p.yaml", SST2 + SMOLLM2_SUBSET + ["attack.rate=0.05",
                                                                        "train.learning_rate=2e-4"]),
    # a setting where the undefended attack takes hold on this small model: LoRA on every linear
    # projection, lr 5e-4, 10% poison
    "smollm2-strong": ("sst2_badnets_p2p.yaml", SST2 + SMOLLM2_SUBSET + [
        "attack.rate=0.1", "train.learning_rate=5e-4", "model.lora.target_modules=all-linear"]),
    # stronger still: more poisoned rows (300), a higher learning rate
    "smollm2-strong2": ("sst2_badnets_p2p.yaml", SST2 + [
        "model.preset=smollm2-135m", "data.max_train_rows=1500", "data.max_test_rows=400", "data.dev_fraction=0.03",
        "train.epochs=2", "train.batch_size=16", "attack.rate=0.2", "train.learning_rate=1e-3",
        "model.lora.target_modules=all-linear"]),
    # GSM8K, BadNets "cf" 5%, attacker answer = true answer + 1, SmolLM2 with LoRA on every projection
    # (sized for ~20 minutes on 2 CPU cores: 200 training problems, 40 test problems)
    "gsm8k-smollm2": ("gsm8k_badnets_p2p.yaml", [
        "data.train={data}/gsm8k/train.jsonl", "data.max_train_rows=200", "data.max_test_rows=40",
        "data.max_dev_rows=10", "task.max_new_tokens=160"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--report-only", action="store_true", help="rewrite summary.md from summary.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    out = Path(args.out) / args.setting
    config_file, setting = SETTINGS[args.setting]
    if args.report_only:
        write_summary(out, json.loads((out / "summary.json").read_text()), args.setting, None)
        return
    rows = []
    started = time.perf_counter()
    for seed in args.seeds:
        overrides = [o.format(data=args.data_dir) for o in setting] + [
            f"seed={seed}", f"output_dir={out}", f"name=seed{seed}"]
        config = load_config(ROOT / "configs" / config_file, overrides)
        _, seed_rows = run_with_baselines(config, resume=True)  # finished identical runs are kept
        rows += seed_rows
        write_json_atomic(out / "summary.json", rows)  # partial results survive a stopped benchmark
    write_summary(out, rows, args.setting, time.perf_counter() - started)


def write_summary(out: Path, rows: list[dict], setting_name: str, wall_seconds: float | None) -> None:
    """summary.md: every run, then mean ± sd over seeds per setting (clean / undefended / defense)."""
    config_file, setting = SETTINGS[setting_name]
    wall = "" if wall_seconds is None else f"wall time: {wall_seconds:.0f} s\n"
    lines = [f"# {setting_name}\n", f"config: configs/{config_file}, overrides: `{' '.join(setting)}`\n", wall,
             markdown_table(rows),
             "\n| setting | seeds | CA mean ± sd % | ASR mean ± sd % | ASR_strict mean ± sd % | "
             "triggered acc. mean ± sd % | ASR reduction over floor (mean) % |",
             "|---|---|---|---|---|---|---|"]
    keys = ("ca", "asr", "asr_strict", "triggered_accuracy")
    for entry in aggregate(rows, keys):
        cells = [f"{100 * entry[k + '_mean']:.1f} ± {100 * entry[k + '_std']:.1f}"
                 if entry[k + "_mean"] is not None else "n/a" for k in keys]
        over_floor = [r["asr_reduction_over_floor"] for r in rows
                      if r["setting"] == entry["setting"] and r.get("asr_reduction_over_floor") is not None]
        cells.append(f"{100 * sum(over_floor) / len(over_floor):.1f}" if over_floor else "")
        lines.append(f"| {entry['setting']} | {entry['seeds']} | " + " | ".join(cells) + " |")
    write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
