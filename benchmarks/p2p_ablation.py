"""When does P2P's benign trigger win? The defensive-subset ablation (P2P and PDB), one command per model.

    python benchmarks/p2p_ablation.py --model tiny                      # every part, 5 seeds, SST-2 attacks
    python benchmarks/p2p_ablation.py --model tiny --seeds 0 1 2 --attacks badnets --parts poisoned source
    python benchmarks/p2p_ablation.py --model smollm2 --seeds 0 1 2 --parts key
    python benchmarks/p2p_ablation.py --model tiny --dry-run            # the cells, nothing run

Parts (each crossed with the attacks and seeds; every cell has its clean and undefended references):
  poisoned  the defensive subset holds exactly 0, 1, 2, 5, 10 or 20 poisoned rows (`subset: given`, chosen here
            by the experimenter, who sees the poison; the defense only reads row indices), and the blind draw
  source    trusted rows (50, 100, 200, 500 of a clean hold-out), ranked by each blind scorer, reject mode
  knobs     P2P's ratio 0.1 / 0.4, repeat 5, a shared cue, a longer and more salient benign trigger
  key       the SmolLM2 cells: blind draw, 0 poisoned rows, best blind (ranked by the base model), trusted 200
            (folded, with out-of-space answers rejected, and rejected with each trusted row repeated 5 times)
The bench is resumable (finished cells are skipped, interrupted ones continue from their checkpoints). It writes
benchmarks/results/p2p-ablation-<model>/: results.md / .html and plots (`p2p report`), and ablation.md: per
attack, every cell's CA, ASR, floor, triggered accuracy, poisoned rows in the subset and the scorer's AUROC.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from common import (  # benchmarks/common.py
    ATTACKS,
    MODELS,
    REJECTIONS_LEGEND,
    ROOT,
    SALIENT_TRIGGER,
    add_run_options,
    attack_set,
    base_raw,
    cell_raw,
    enter_repository,
    mean_sd,
    pinned_vocabulary,
    rejections,
    run_bench,
    seed_count,
)

from p2pdefense.bench import GridSpec, NamedCell, expand
from p2pdefense.bench_report import role
from p2pdefense.config import validate_config
from p2pdefense.io import write_json_atomic
from p2pdefense.pipeline import prepare_data, vocabulary_strings
from p2pdefense.store import ResultsStore

POISONED_COUNTS = [0, 1, 2, 5, 10, 20]
DEFENSES = {"p2p": {"defense.name": "p2p"}, "pdb": {"defense.name": "pdb"}}


def scorer(name: str, prompt: dict) -> dict:
    if name == "reference_agreement":
        return {"name": name, **prompt}
    if name == "ensemble":
        return {"name": name, "members": [{"name": "reference_agreement", **prompt}, {"name": "training_dynamics"},
                                          {"name": "representation"}]}
    return {"name": name}


def defense_cells(part: str, attack: dict, reference: str) -> dict[str, dict]:
    """Cell name -> defense overrides (the `given` cells are completed per seed in `given_cells`)."""
    prompt = attack["prompt"]
    cells: dict[str, dict] = {}
    if part in ("poisoned", "key"):
        for name, base in DEFENSES.items():
            cells[f"{name} random (blind)"] = dict(base)
    if part == "source":
        for name, base in DEFENSES.items():
            for n in (50, 100, 200, 500):
                cells[f"{name} trusted {n}"] = {**base, "defense.subset": "trusted", "defense.trusted_data": "holdout",
                                                "defense.trusted_rows": n}
            for score in ("reference_agreement", "training_dynamics", "representation", "ensemble"):
                cells[f"{name} ranked {score}"] = {**base, "defense.subset": "ranked", "defense.reference": reference,
                                                   "defense.scorer": scorer(score, prompt)}
        cells["p2p ranked reference_agreement, reject"] = {
            **cells["p2p ranked reference_agreement"], "defense.out_of_space": "reject"}
        for name in DEFENSES:
            cells[f"{name} ranked reference_agreement, counter-examples 5%"] = {
                **cells[f"{name} ranked reference_agreement"], "defense.counter_examples": 0.05}
    if part == "key":
        for name, base in DEFENSES.items():
            cells[f"{name} ranked reference_agreement"] = {**base, "defense.subset": "ranked",
                                                           "defense.reference": reference,
                                                           "defense.scorer": scorer("reference_agreement", prompt)}
            cells[f"{name} trusted 200"] = {**base, "defense.subset": "trusted", "defense.trusted_data": "holdout",
                                            "defense.trusted_rows": 200}
        # an answer in the original label space under the benign prompt is a detected trigger (issue 9's signature)
        cells["p2p trusted 200, reject"] = {**cells["p2p trusted 200"], "defense.out_of_space": "reject"}
        # the same 200 rows, each 5 times (PDB's default), so that ~40% of the training rows carry the benign prompt
        cells["p2p trusted 200, repeat 5, reject"] = {**cells["p2p trusted 200, reject"], "defense.repeat": 5}
    if part == "knobs":
        for ratio in (0.1, 0.4):
            cells[f"p2p ratio {ratio}"] = {"defense.name": "p2p", "defense.ratio": ratio}
        cells["p2p repeat 5 (union)"] = {"defense.name": "p2p", "defense.mode": "union", "defense.repeat": 5}
        cells["p2p shared cue"] = {"defense.name": "p2p", "defense.cue": "shared"}
        cells["p2p salient trigger"] = {"defense.name": "p2p", "defense.benign_trigger": SALIENT_TRIGGER}
    return cells


def choose_given_rows(config_raw: dict, defense: str, poisoned_count: int, seed: int) -> list[int] | None:
    """The experimenter's subset: the defense's size (P2P ratio of the rows, PDB ratio of every label) with exactly
    `poisoned_count` poisoned rows, the rest unpoisoned, seeded. None if the attack has fewer poisoned rows."""
    config = validate_config(config_raw)
    data = prepare_data(config)
    rows = data.poisoned
    ratio = config.defense.ratio
    poisoned = [ex for ex in rows if ex.meta.poisoned]
    if poisoned_count > len(poisoned):
        return None
    rng = random.Random(f"{seed}:given:{defense}:{poisoned_count}")
    if defense == "pdb":  # class-balanced: the same share of every label
        quotas = defaultdict(int)
        for ex in rows:
            quotas[ex.label] += 1
        quotas = {label: round(ratio * count) for label, count in quotas.items()}
    else:
        quotas = None
    chosen = rng.sample(poisoned, poisoned_count)
    clean = [ex for ex in rows if not ex.meta.poisoned]
    rng.shuffle(clean)
    if quotas is None:
        chosen += clean[: round(ratio * len(rows)) - poisoned_count]
    else:
        for ex in chosen:
            quotas[ex.label] -= 1
        for ex in clean:
            if quotas[ex.label] > 0:
                chosen.append(ex)
                quotas[ex.label] -= 1
    return sorted(ex.meta.source_index for ex in chosen)


def build_spec(model: str, parts: list[str], attacks: list[str], seeds: list[int], bench_dir: Path,
               write_subsets: bool = True, only: list[str] | None = None) -> GridSpec:
    """The grid; with `only`, just the cells whose name contains one of those strings (and no subset file is
    written for a cell left out)."""
    def selected(name: str) -> bool:
        return not only or any(part in name for part in only)

    settings = MODELS[model]
    cells: list[NamedCell] = []
    for attack_name in attacks:
        attack = ATTACKS[attack_name]
        for part in parts:
            for cell_name, overrides in defense_cells(part, attack, settings["reference"]).items():
                for seed in seeds:
                    cells.append(NamedCell(name=f"{attack_name} | {cell_name}, seed={seed}",
                                           set={**attack_set(model, attack), **overrides, "seed": seed}))
        if "poisoned" in parts or "key" in parts:
            counts = POISONED_COUNTS if "poisoned" in parts else [0]
            cells += given_cells(model, attack_name, counts, seeds, bench_dir, write_subsets, selected)
    cells = [cell for cell in cells if selected(cell.name)]
    # the tokenizer vocabulary of every part and attack, so that running some parts gives the same runs (and
    # references) as running all of them
    return GridSpec(name=f"p2p-ablation-{model}", base=base_raw(),
                    set={**settings["set"], "model.tiny.vocabulary": pinned_vocabulary(full_vocabulary(model))},
                    cells=cells,
                    output_dir=str(bench_dir))


def full_vocabulary(model: str) -> set[str]:
    strings: set[str] = set()
    for attack in ATTACKS.values():
        for part in ("poisoned", "source", "knobs", "key"):
            for overrides in defense_cells(part, attack, MODELS[model]["reference"]).values():
                strings.update(vocabulary_strings(validate_config(cell_raw(model, attack, overrides))))
    return strings


def given_cells(model: str, attack_name: str, counts: list[int], seeds: list[int], bench_dir: Path,
                write: bool = True, selected: Callable[[str], bool] = lambda name: True) -> list[NamedCell]:
    """The selected `subset: given` cells with exactly k poisoned rows in the defensive subset (files written
    once; with write=False, a dry run, nothing is loaded or written and every count is listed)."""
    attack = ATTACKS[attack_name]
    out = []
    for defense, base in DEFENSES.items():
        for seed in seeds:
            raw = cell_raw(model, attack, {**base, "seed": seed})
            for k in counts:
                name = f"{attack_name} | {defense} given, {k} poisoned in S, seed={seed}"
                if not selected(name):
                    continue
                path = bench_dir / "subsets" / f"{attack_name}-seed{seed}-{defense}-k{k}.json"
                if write and not path.exists():
                    chosen = choose_given_rows(raw, defense, k, seed)
                    if chosen is None:
                        continue
                    write_json_atomic(path, chosen)
                out.append(NamedCell(name=name, set={**attack_set(model, attack), **base, "defense.subset": "given",
                                                     "defense.subset_rows": str(path.relative_to(ROOT)),
                                                     "seed": seed}))
    return out


def ablation_table(bench_dir: Path) -> str:
    """Per attack: each cell's metrics over seeds, beside its clean floor and undefended run."""
    rows = ResultsStore(bench_dir).rows()
    by_hash = {r["hash"]: r for r in rows}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        cell = (r.get("cell") or "").split(", seed=")[0]
        if " | " not in cell or role(r["config"]) != "defended":
            continue
        attack, name = cell.split(" | ", 1)
        groups[(attack, name)].append(r)
    references = defaultdict(lambda: defaultdict(list))
    for r in by_hash.values():
        cell = r.get("cell") or ""
        if "(clean)" in cell or "(undefended)" in cell:
            attack = cell.split(" | ")[0]
            references[attack]["clean" if "(clean)" in cell else "undefended"].append(r)
    lines = ["# P2P / PDB defensive-subset ablation", "",
             "Mean ± sd over seeds (\"(k on GPU)\": k of them ran on a GPU, in bf16: the same configuration gives "
             "other numbers there). floor: the clean model's ASR; undefended: the attack without defense. "
             "Poisoned in S: poisoned rows among the defensive rows (joined after the run; the defense never saw "
             "them). AUROC: the blind scorer's suspicion against the poison (ranked cells). " + REJECTIONS_LEGEND, ""]
    for attack in sorted({a for a, _ in groups}):
        seen_seeds = {}
        for kind in ("clean", "undefended"):
            for r in references[attack][kind]:
                seen_seeds.setdefault(kind, {})[r["config"]["seed"]] = r["metrics"]
        lines += [f"## {attack}", "",
                  "| cell | seeds | CA % | ASR % | triggered acc. % | rejected clean / trig. % | poisoned in S | "
                  "AUROC |", "|---|---|---|---|---|---|---|---|"]
        for kind in ("clean", "undefended"):
            ms = list(seen_seeds.get(kind, {}).values())
            if ms:
                lines.append(f"| {kind} | {seed_count(ms)} | {mean_sd([m['ca'] for m in ms])} | "
                             f"{mean_sd([m.get('asr') for m in ms])} | "
                             f"{mean_sd([m.get('triggered_accuracy') for m in ms])} | | | |")
        for (a, name), members in sorted(groups.items()):
            if a != attack:
                continue
            ms = [r["metrics"] for r in members]
            poisoned_in_s = [m.get("num_poisoned_in_benign_subset") for m in ms]
            aurocs = [m.get("suspicion_auroc") for m in ms if m.get("suspicion_auroc") is not None]
            lines.append(
                f"| {name} | {seed_count(ms)} | {mean_sd([m['ca'] for m in ms])} | "
                f"{mean_sd([m.get('asr') for m in ms])} | "
                f"{mean_sd([m.get('triggered_accuracy') for m in ms])} | "
                f"{rejections(ms)} | "
                f"{statistics.fmean(poisoned_in_s):.1f} | "
                f"{f'{statistics.fmean(aurocs):.3f}' if aurocs else ''} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 5 (tiny) or 3 (smollm2)")
    parser.add_argument("--attacks", nargs="+", choices=sorted(ATTACKS), help="default: every attack")
    parser.add_argument("--parts", nargs="+", choices=["poisoned", "source", "knobs", "key"],
                        help="default: poisoned source knobs (tiny), key (smollm2)")
    parser.add_argument("--cells", nargs="+", help="only the cells whose name contains one of these (and their "
                                                    "references), e.g. 'ranked reference_agreement'")
    add_run_options(parser, "the defense suite's")
    args = parser.parse_args(argv)
    enter_repository()
    model = args.model
    seeds = args.seeds or MODELS[model]["seeds"]
    parts = args.parts or (["poisoned", "source", "knobs"] if model == "tiny" else ["key"])
    attacks = args.attacks or (sorted(ATTACKS) if model == "tiny" else ["badnets"])
    bench_dir = ROOT / "benchmarks" / "results" / f"p2p-ablation-{model}"
    spec = build_spec(model, parts, attacks, seeds, bench_dir, write_subsets=not args.dry_run, only=args.cells)
    reuse = args.reuse if args.reuse is not None else [ROOT / "benchmarks" / "results" / f"defense-suite-{model}"]
    return run_bench(expand(spec, ROOT, bench_dir), bench_dir, args.workers, args.dry_run, "ablation.md",
                     ablation_table, reuse)

if __name__ == "__main__":
    sys.exit(main())
