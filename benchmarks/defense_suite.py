"""Every defense against every attack, on the same data, seeds and metrics; a recommendation per threat.

    python benchmarks/defense_suite.py --model tiny                    # 3 seeds, every attack and defense
    python benchmarks/defense_suite.py --model tiny --seeds 0 --attacks badnets --defenses strip-1% onion
    python benchmarks/defense_suite.py --model smollm2 --seeds 0       # the SmolLM2 strong2 setting
    python benchmarks/defense_suite.py --dry-run

Resumable (finished cells are skipped). Writes benchmarks/results/defense-suite-<model>/: results.md / .html,
the ASR heatmap and other plots (`p2p report`), and suite.md: per attack and defense CA, ASR, the clean floor,
triggered accuracy, rejection rates and the wall-time cost against the undefended run of the same seed, then
"which defense for which threat": per attack the defenses within 5 points of the floor with a CA drop of at most
1.5 points (mean over seeds), else the closest one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict

from common import (  # benchmarks/common.py
    ATTACKS,
    MATH,
    MATH_FIXED,
    MODELS,
    REJECTIONS_LEGEND,
    ROOT,
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
from p2pdefense.compute import compute_ratio, wall_ratio
from p2pdefense.config import validate_config
from p2pdefense.defenses import DEFENSES as REGISTRY
from p2pdefense.pipeline import vocabulary_strings
from p2pdefense.store import ResultsStore

SUITE_ATTACKS = {name: ATTACKS[name] for name in ("badnets", "addsent", "ctba", "badnets-clean-label",
                                                  "synbkd-imdb", "vpi")} | {
    "math-badnets-offset": MATH, "math-badnets-fixed": MATH_FIXED}
CONTROL = {"tiny": {"train.epochs": 1, "train.learning_rate": 5.0e-4},
           "smollm2": {"train.epochs": 1, "train.learning_rate": 1.0e-4, "model.lora.r": 2}}


def defenses(model: str, prompt: dict) -> dict[str, dict]:
    reference = MODELS[model]["reference"]
    ranked = {"defense.subset": "ranked", "defense.reference": reference,
              "defense.scorer": {"name": "reference_agreement", **prompt}}
    trusted = {"defense.trusted_data": "holdout", "defense.trusted_rows": 200}
    return {
        "p2p": {"defense.name": "p2p"},
        "p2p-ranked": {"defense.name": "p2p", **ranked},
        "pdb": {"defense.name": "pdb"},
        "pdb-ranked": {"defense.name": "pdb", **ranked},
        "pdb-trusted-200": {"defense.name": "pdb", "defense.subset": "trusted", **trusted},
        "bki": {"defense.name": "bki"},
        "spectral": {"defense.name": "spectral"},
        "activation-clustering": {"defense.name": "activation_clustering"},
        "cube": {"defense.name": "cube"},
        "abl": {"defense.name": "abl"},
        "dpoe": {"defense.name": "dpoe"},
        "finetune-200": {"defense.name": "finetune", **trusted},
        "crow-200": {"defense.name": "crow", **trusted},
        "wanda": {"defense.name": "wanda", "defense.trusted_data": "holdout"},
        "strip-1%": {"defense.name": "strip", "defense.false_rejection_rate": 0.01},
        "strip-5%": {"defense.name": "strip", "defense.false_rejection_rate": 0.05},
        "onion": {"defense.name": "onion", "defense.reference": reference},
        # generation only; the reference is the run's base model (for the tiny preset an untrained one)
        "cleangen": {"defense.name": "cleangen"},
        # defense in depth: the filter, the repair and the detector of this list, one per stage
        "bki+finetune-200+strip-1%": {"defense.name": "stack", "defense.defenses": [
            {"name": "bki"}, {"name": "finetune", "trusted_data": "holdout", "trusted_rows": 200},
            {"name": "strip", "false_rejection_rate": 0.01}]},
        # no defense, trained moderately: no defense should be credited for under-fitting
        "moderate-fitting": {"defense.name": "none", **CONTROL[model]},
    }


# below this gap between the undefended ASR and the floor of the same seed the attack did not take; unless it took
# on every seed, no defense can be judged (a mean over seeds where it took on some would credit luck)
ATTACK_TOOK = 0.10


def applies(overrides: dict, task: str) -> bool:
    """Whether the defense (every member of a stack) applies to the task."""
    members = overrides.get("defense.defenses", [{"name": overrides["defense.name"]}])
    return all(REGISTRY[m["name"]].tasks is None or task in REGISTRY[m["name"]].tasks for m in members)


def build_spec(model: str, attacks: list[str], names: list[str] | None, seeds: list[int], bench_dir) -> GridSpec:
    cells, strings = [], set()
    for attack_name in attacks:
        attack = SUITE_ATTACKS[attack_name]
        task = attack_set(model, attack).get("task.name", "classification")
        for name, overrides in defenses(model, attack["prompt"]).items():
            if not applies(overrides, task):
                continue
            strings.update(vocabulary_strings(validate_config(cell_raw(model, attack, overrides))))
            if names and name not in names:
                continue
            cells += [NamedCell(name=f"{attack_name} | {name}, seed={seed}",
                                set={**attack_set(model, attack), **overrides, "seed": seed}) for seed in seeds]
    return GridSpec(name=f"defense-suite-{model}", base=base_raw(),
                    set={**MODELS[model]["set"], "model.tiny.vocabulary": pinned_vocabulary(strings)}, cells=cells,
                    output_dir=str(bench_dir))


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _judged(name: str, gap: float, drop: float, seeds: int, triggered: tuple[float, float] | None,
            rejected: float | None) -> str:
    """triggered: the defense's accuracy on triggered inputs and the clean model's on the same seeds (a low ASR
    with a low triggered accuracy is the target's answer flipped or withheld, not the true answer back);
    rejected: the share of triggered inputs a detector withheld."""
    shown = [f"ASR {100 * gap:+.1f} over floor", f"CA drop {100 * drop:.1f}"]
    if triggered is not None:
        shown.append(f"triggered acc. {100 * triggered[0]:.1f} vs the clean model's {100 * triggered[1]:.1f}")
    if rejected:
        shown.append(f"{100 * rejected:.1f}% of triggered inputs rejected")
    return f"{name} ({', '.join(shown)}, {seeds} seed{'s' if seeds != 1 else ''})"


def peak_memory(metrics: list[dict]) -> str:
    """The largest peak over the seeds in GiB: the host's, then a GPU's allocation where runs had one; blank for
    runs that predate the measure."""
    peaks = [m.get("peak_memory_mib") or {} for m in metrics]
    host, device = [p["host"] for p in peaks if p.get("host")], [p["device"] for p in peaks if p.get("device")]
    shown = f"{max(host) / 1024:.1f}" if host else ""
    return shown + (f" (GPU {max(device) / 1024:.1f})" if device else "")


def suite_table(bench_dir) -> str:
    rows = ResultsStore(bench_dir).rows()
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    refs: dict[tuple[str, str, int], dict] = {}
    for r in rows:
        label = r.get("cell") or ""
        if " | " not in label:
            continue
        attack, rest = label.split(" | ", 1)
        name, seed = rest.split(", seed=")[0], r["config"]["seed"]
        reference = "clean" if label.endswith("(clean)") else "undefended" if label.endswith("(undefended)") else None
        if name == "moderate-fitting":  # no defense: the bench files it as an undefended run of its own
            if reference != "clean":
                cells[(attack, name)].append(r)
        elif reference is not None:
            refs[(attack, reference, seed)] = r["metrics"]
        else:
            cells[(attack, name)].append(r)
    lines = ["# Defense suite", "",
             "Mean ± sd over seeds (\"(k on GPU)\": k of them ran on a GPU, in bf16: the same configuration gives "
             "other numbers there). floor: the clean model's ASR on the seeds of the row. compute: estimated FLOPs"
             " of every model the run used, work served from a cache at what it cost the run that filled it "
             "(p2pdefense/compute.py; blank for runs that predate the count); "
             "removed: the share of a filter's removed rows that were poisoned, and of the poison it removed; "
             "wall: wall time (noisy: runs shared two CPU cores, or one GPU with up to 17 other runs); both "
             "against the undefended run of the same seed, leaving out the wall time of runs resumed from a "
             "checkpoint (it is their last process's), the FLOPs of those resumed from a checkpoint older than "
             "the count it keeps, and the wall time of runs on another kind of device than their undefended run. "
             "peak memory: the largest over the seeds of the run process's peak resident memory, and of torch's "
             "peak allocation on a GPU (GiB; blank for runs that predate the measure; a run resumed from a "
             "checkpoint shows its last process's). "
             + REJECTIONS_LEGEND + " The moderate-fitting "
             "row is no defense, trained less (a control).", ""]
    verdicts = []
    for attack in sorted({a for a, _ in cells}):
        lines += [f"## {attack}", "", "| defense | seeds | CA % | ASR % | floor % | triggered acc. % | "
                  "rejected clean / trig. % | removed: precision / recall % | CA drop (pts) | compute (x) | "
                  "wall (x) | peak memory (GiB) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        und = [m for (a, k, _), m in refs.items() if a == attack and k == "undefended"]
        floor_values = [m.get("asr") for (a, k, _), m in refs.items() if a == attack and k == "clean"]
        lines.append(f"| undefended | {seed_count(und)} | {mean_sd([m['ca'] for m in und])} | "
                     f"{mean_sd([m.get('asr') for m in und])} | {mean_sd(floor_values)} | "
                     f"{mean_sd([m.get('triggered_accuracy') for m in und])} | | | | 1.0 | 1.0 | "
                     f"{peak_memory(und)} |")
        candidates = []
        for (a, name), members in sorted(cells.items()):
            if a != attack:
                continue
            ms = [r["metrics"] for r in members]
            drops, gaps, floors, costs, computes, triggered = [], [], [], [], [], []
            for r in members:
                clean = refs.get((attack, "clean", r["config"]["seed"]))
                if clean is not None and clean.get("asr") is not None:
                    floors.append(clean["asr"])
                    if r["metrics"].get("asr") is not None:
                        gaps.append(r["metrics"]["asr"] - clean["asr"])
                if clean is not None and None not in (r["metrics"].get("triggered_accuracy"),
                                                      clean.get("triggered_accuracy")):
                    triggered.append((r["metrics"]["triggered_accuracy"], clean["triggered_accuracy"]))
                u = refs.get((attack, "undefended", r["config"]["seed"]))
                if u is not None:
                    drops.append(u["ca"] - r["metrics"]["ca"])
                    if (ratio := wall_ratio(r["metrics"], u)) is not None:
                        costs.append(ratio)
                    if (ratio := compute_ratio(r["metrics"], u)) is not None:
                        computes.append(ratio)
            # what a filter removed, joined after the fact (from counts: runs before removal_precision have them)
            removed = [m for m in ms if m.get("num_removed")]
            removals = (f"{mean_sd([m['num_poisoned_removed'] / m['num_removed'] for m in removed])} / "
                        f"{mean_sd([m['num_poisoned_removed'] / m['num_poisoned'] for m in removed])}"
                        if removed else "")
            # gap and drop pair each seed with its own references: a defense run on seed 0 only is not
            # compared with a floor averaged over seeds it never ran
            gap, drop = _mean(gaps), _mean(drops)
            lines.append(
                f"| {name} | {seed_count(ms)} | {mean_sd([m['ca'] for m in ms])} | "
                f"{mean_sd([m.get('asr') for m in ms])} | "
                f"{mean_sd(floors)} | {mean_sd([m.get('triggered_accuracy') for m in ms])} | {rejections(ms)}"
                f" | {removals} | {'' if drop is None else f'{100 * drop:.1f}'} | "
                f"{'' if not computes else f'{statistics.fmean(computes):.2f}'} | "
                f"{'' if not costs else f'{statistics.fmean(costs):.2f}'} | {peak_memory(ms)} |")
            if gap is not None and drop is not None and name != "moderate-fitting":
                paired = (_mean([d for d, _ in triggered]), _mean([c for _, c in triggered])) if triggered else None
                candidates.append((name, gap, drop, len(gaps), paired,
                                   _mean([m.get("rejection_rate_triggered") for m in ms])))
        lines.append("")
        # generation: the attacker's output without a trigger (a leaked backdoor that a low ASR would not show)
        leaks = [("undefended", und)] + [(name, [r["metrics"] for r in members])
                                         for (a, name), members in sorted(cells.items()) if a == attack]
        if any(m.get("target_rate_clean") is not None for _, ms in leaks for m in ms):
            lines += ["The attacker's output on clean inputs (`target_rate_clean`, %): " + "; ".join(
                f"{name} {mean_sd([m.get('target_rate_clean') for m in ms])}" for name, ms in leaks), ""]
        meeting = [c for c in candidates if c[1] <= 0.05 and c[2] <= 0.015]
        seeds = sorted(seed for (a, k, seed) in refs if a == attack and k == "undefended"
                       and (attack, "clean", seed) in refs)
        pairs = [(refs[(attack, "undefended", s)].get("asr"), refs[(attack, "clean", s)].get("asr")) for s in seeds]
        took = sum(u is not None and c is not None and u - c >= ATTACK_TOOK for u, c in pairs)
        if not seeds:
            verdicts.append(f"| {attack} | none to judge yet: no seed has both its clean (floor) and undefended run "
                            f"(undefended ASR {mean_sd([m.get('asr') for m in und])}) | n/a |")
        elif took < len(seeds):
            verdicts.append(f"| {attack} | none to judge: the attack took on {took} of {len(seeds)} seeds "
                            f"(undefended ASR {mean_sd([m.get('asr') for m in und])} against a floor of "
                            f"{mean_sd(floor_values)}) | n/a |")
        elif meeting:
            verdicts.append(f"| {attack} | " + ", ".join(_judged(*c) for c in meeting) + " | yes |")
        elif candidates:
            kept = [c for c in candidates if c[2] <= 0.015] or candidates
            verdicts.append(f"| {attack} | closest: {_judged(*min(kept, key=lambda c: c[1]))} | no |")
    lines += ["![ASR by defense and attack, mean over seeds (`p2p report`)](heatmap-asr.png)", "",
              "## Which defense for which threat", "",
              "Goal: ASR within 5 points of the clean floor with a CA drop of at most 1.5 points (means over the "
              "defense's seeds, each seed against its own clean and undefended runs). "
              f"An attack whose undefended ASR is less than {100 * ATTACK_TOOK:.0f} points above the floor of the "
              "same seed on any seed has nothing to judge.",
              "", "| attack | defenses meeting the goal (else the closest with CA drop <= 1.5) | goal met |",
              "|---|---|---|", *verdicts, ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--attacks", nargs="+", choices=sorted(SUITE_ATTACKS), default=sorted(SUITE_ATTACKS))
    parser.add_argument("--defenses", nargs="+", help="defense cell names (default: all)")
    add_run_options(parser, "the P2P ablation's")
    args = parser.parse_args(argv)
    enter_repository()
    bench_dir = ROOT / "benchmarks" / "results" / f"defense-suite-{args.model}"
    cells = expand(build_spec(args.model, args.attacks, args.defenses, args.seeds, bench_dir), ROOT, bench_dir)
    reuse = args.reuse if args.reuse is not None else [ROOT / "benchmarks" / "results" / f"p2p-ablation-{args.model}"]
    return run_bench(cells, bench_dir, args.workers, args.dry_run, "suite.md", suite_table, reuse)

if __name__ == "__main__":
    sys.exit(main())
