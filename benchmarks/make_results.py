"""Regenerate benchmarks/RESULTS.md from the committed results stores (benchmarks/results/*/results*.jsonl).

    python benchmarks/make_results.py

For each store: `p2p report` writes its results.md, results.html and plots; RESULTS.md is benchmarks/notes.md
(the reading of the numbers, written by hand, each number quoted from a table below it) followed by every
store's tables, so that each number traces to a run configuration in a store.
"""

from __future__ import annotations

from pathlib import Path

from defense_suite import suite_table  # benchmarks/: this file's folder
from p2p_ablation import ablation_table

from p2pdefense.bench_report import write_report
from p2pdefense.io import write_text_atomic

ROOT = Path(__file__).resolve().parent
# store directory -> (title, the command that produced it)
STORES = {
    "tiny-sst2": ("SST-2, four attacks x P2P, tiny model, 4 epochs, 3 seeds",
                  "p2p bench benchmarks/grids/tiny-sst2.yaml"),
    "attack-suite": ("Every attack against P2P, tiny model, 3 epochs, seed 0",
                     "p2p bench benchmarks/grids/attack-suite.yaml"),
    "smollm2-strong2": ("SST-2, SmolLM2-135M + LoRA all-linear, 1,500 rows, 20% BadNets \"mn\", lr 1e-3",
                        "p2p bench benchmarks/grids/smollm2-strong2.yaml --only seed=0"),
    "p2p-ablation-tiny": ("The defensive-subset ablation, tiny model, SST-2 5% (BadNets; key and ranked cells on "
                          "AddSent, CTBA, clean-label BadNets, VPI; SynBkd on IMDB; 4 news topics)",
                          "python benchmarks/p2p_ablation.py --model tiny --seeds 0 1 2 --attacks badnets "
                          "--parts poisoned source knobs; python benchmarks/p2p_ablation.py --model tiny --attacks "
                          "badnets (its remaining ranked cells, seeds 0-4); the same with --parts key --cells "
                          "'p2p trusted 200, reject' "
                          "'repeat 5, reject'; "
                          "the same with --seeds 3 4 --parts poisoned knobs, and with --seeds 3 4 --parts key --cells "
                          "'random (blind)' 'trusted 200' 'given, 0 poisoned', and with --seeds 3 4 --parts source "
                          "--cells 'trusted 50' 'trusted 100' 'trusted 500' 'ranked representation' "
                          "'ranked training_dynamics'; "
                          "python benchmarks/p2p_ablation.py --model tiny --seeds 0 1 --attacks topics4-badnets "
                          "--parts key; python benchmarks/p2p_ablation.py --model tiny --seeds 0 1 2 --attacks "
                          "addsent ctba badnets-clean-label --parts key --cells 'random (blind)' 'trusted 200' "
                          "'given, 0 poisoned'; the same with --attacks synbkd-imdb --cells 'p2p given, 0' "
                          "'p2p trusted 200' --reuse benchmarks/results/defense-suite-tiny; the same with "
                          "--attacks vpi "
                          "--cells 'random (blind)' 'trusted 200' 'given, 0 poisoned', and --seeds 0 1 2 --cells "
                          "'pdb given, 0 poisoned'; "
                          "the same with --seeds 0 1 2 3 4 --attacks topics4-badnets --cells 'random (blind)' "
                          "'0 poisoned' 'trusted 200', then --cells 'random (blind)' 'given' 'trusted' 'ratio' "
                          "'repeat 5 (union)' 'shared cue' 'salient' 'training_dynamics' 'representation', run "
                          "twice, the second time with --workers 2 (stopped for time: each row gives its seed count); "
                          "the same with --attacks topics4-badnets --seeds 0 1 2 3 4 --parts poisoned --cells "
                          "'pdb given, 1 ' 'pdb given, 2 ' 'pdb given, 5 ', and --seeds 2 3 4 --parts key --cells "
                          "'p2p trusted 200, re'; the same with --seeds 3 4 --attacks addsent ctba "
                          "badnets-clean-label vpi --parts key --cells 'random (blind)' 'trusted 200' "
                          "'given, 0 poisoned' (stopped for time in VPI), then --attacks vpi with --workers 2 (stopped "
                          "for time: the blind, trusted-200 and reference rows reached 5 seeds); the same with "
                          "--seeds 3 4 --attacks addsent ctba badnets-clean-label vpi --cells 'p2p ranked "
                          "reference_agreement, seed' --workers 2 (seeds 0-2 copied from the suite with "
                          "--seeds 0 1 2), then --cells 'p2p ranked reference_agreement, reject' 'p2p ranked "
                          "reference_agreement, counter-examples 5%' (seeds 3 4, then 0 1 2); the same with "
                          "--attacks addsent ctba badnets-clean-label --cells 'p2p trusted 500', then 'p2p trusted "
                          "100' and 'p2p trusted 50' (5 seeds each), then 'p2p given, 1 ' 'p2p given, 5 ', then "
                          "'p2p given, 10 '; the same with --seeds 0 1 2 --attacks addsent ctba "
                          "badnets-clean-label --cells 'p2p ranked training_dynamics' --workers 2 (stopped for "
                          "time before clean-label BadNets), then --cells 'p2p ranked representation' 'p2p ranked "
                          "ensemble' 'p2p ranked training_dynamics' --workers 1, then --seeds 3 4 --cells 'p2p "
                          "ranked representation' 'p2p ranked training_dynamics' (stopped for time after CTBA), then "
                          "the same on --attacks badnets-clean-label --workers 2; the same with --attacks addsent "
                          "ctba badnets-clean-label --cells 'p2p given, 2 poisoned' 'p2p given, 20 poisoned'; "
                          "the same with --attacks addsent --cells 'pdb given' (seeds 0-2, then 3 4); the same "
                          "with --seeds 0 1 2 --attacks addsent ctba badnets-clean-label --parts knobs, then --seeds "
                          "3 4 --attacks badnets-clean-label --cells 'p2p salient trigger'; the same with --seeds "
                          "0 1 2 --attacks ctba badnets-clean-label --cells 'pdb given' (stopped for time, finished "
                          "with --attacks badnets-clean-label); the same with --seeds 3 4 --attacks addsent ctba "
                          "badnets-clean-label --parts knobs; the same with --attacks ctba, then "
                          "badnets-clean-label, then addsent (--workers 2), --cells 'pdb trusted 50' 'pdb trusted "
                          "100' 'pdb trusted 500'; the same with --seeds 3 4 --attacks ctba --cells 'pdb given' "
                          "--workers 2 (stopped for time); python benchmarks/p2p_ablation.py --model tiny --attacks "
                          "addsent ctba badnets-clean-label --parts poisoned source --workers 2 (run twice: its time "
                          "limit stopped the first two cells before the end); python benchmarks/p2p_ablation.py "
                          "--model tiny --attacks synbkd-imdb --cells 'random (blind)' 'trusted 200' 'given, 0 "
                          "poisoned' --workers 1, then --cells 'pdb given' --workers 1, then --cells 'p2p given, 1 "
                          "poisoned' --workers 2, then --cells 'p2p given, 2 ' 'p2p given, 5 ' 'p2p given, 10 ' "
                          "'p2p given, 20 ' --workers 1, then --cells 'ranked training_dynamics' 'ranked "
                          "representation' --workers 1 beside --cells 'ranked reference_agreement' --workers 1, "
                          "then --cells 'ranked ensemble' --workers 1, then --cells 'p2p trusted 50' 'p2p trusted "
                          "100' 'p2p trusted 500' --workers 2 (stopped for time: each row gives its seed count), "
                          "then --cells 'p2p trusted 500' 'pdb trusted' 'p2p ratio' 'p2p repeat' 'p2p shared cue' "
                          "'p2p salient' --workers 2 (SynBkd's last cells); python benchmarks/p2p_ablation.py "
                          "--model tiny --attacks topics4-badnets --seeds 1, then --seeds 2, then --seeds 0 "
                          "(SmolLM2-ranked cells; seed 0 stopped for time, then run again), then --seeds 3, then "
                          "--seeds 4"),
    "p2p-ablation-smollm2": ("The defensive-subset ablation, SmolLM2-135M strong2, key cells",
                             "python benchmarks/p2p_ablation.py --model smollm2 --seeds 0 --parts key "
                             "--cells 'p2p ranked reference_agreement' 'pdb trusted 200' 'p2p trusted 200'; "
                             "the same with --seeds 0 1 2 --cells 'p2p trusted 200, reject' "
                             "'p2p trusted 200, repeat 5, reject'; the same with --seeds 0 1 --attacks addsent ctba "
                             "badnets-clean-label --cells 'p2p trusted 200, reject'; the same with --attacks addsent "
                             "badnets-clean-label ctba --cells 'p2p trusted 200, repeat 5, reject'; the same with "
                             "--seeds 0 1 --attacks badnets --cells 'p2p given, 0 poisoned' 'p2p random (blind)'; "
                             "the same with --seeds 1 2 --attacks badnets --cells 'pdb trusted 200'; the same "
                             "with --seeds 2 --attacks badnets --cells 'p2p given, 0 poisoned in S'; the same "
                             "with --seeds 0 1 --attacks badnets --cells 'ranked reference_agreement'; the same "
                             "with --seeds 0 --attacks addsent badnets-clean-label --cells "
                             "'pdb trusted 200'; the same with --seeds 0 --attacks badnets --cells 'pdb given, 0' "
                             "'pdb random'; the same with --seeds 1 --attacks badnets --cells 'pdb given, 0' (then "
                             "'pdb ranked', then 'pdb random'); the same with --seeds 2 --cells 'pdb given, 0'; "
                             "on an NVIDIA H200 (bf16 base weights, 6 runs at once): the same with --seeds 1 2 "
                             "--attacks badnets --workers 6 (the six cells still missing: device in each row); "
                             "on CPU: the same with --seeds 0 --attacks addsent --cells 'ranked reference_agreement' "
                             "'0 poisoned' --workers 2, then --cells 'random (blind)'; the same with --seeds 0 "
                             "--attacks badnets-clean-label ctba --cells 'p2p random (blind)' 'p2p ranked "
                             "reference_agreement' '0 poisoned' --workers 2; the same with --seeds 0 --attacks ctba "
                             "badnets-clean-label --cells 'p2p trusted 200' 'pdb trusted 200' 'pdb random (blind)' "
                             "'pdb ranked reference_agreement' --workers 2; the same with --seeds 1 --attacks ctba "
                             "--cells 'p2p given, 0 poisoned' --workers 1; the same with --seeds 1 --attacks addsent "
                             "badnets-clean-label --cells 'given, 0 poisoned' --workers 1; the same with --seeds 1 "
                             "--attacks addsent badnets-clean-label ctba --cells 'p2p ranked reference_agreement' "
                             "--workers 2, then --cells 'p2p random (blind)'; the same with --seeds 2 --attacks "
                             "badnets-clean-label --cells 'p2p trusted 200, reject' 'p2p trusted 200, repeat 5, "
                             "reject' --workers 2; the same with --seeds 0 --attacks addsent --parts key source "
                             "--cells 'p2p ranked reference_agreement, counter-examples 5%'; the same with --seeds "
                             "2 --attacks addsent --cells 'p2p trusted 200, reject' 'p2p trusted 200, repeat 5, "
                             "reject'; the same with --seeds 2 --attacks ctba --cells 'p2p trusted 200, reject' "
                             "'p2p trusted 200, repeat 5, reject' --workers 1; the same with --seeds 0 1 --parts key "
                             "--attacks addsent ctba badnets-clean-label --cells 'trusted 200' --workers 2; the same "
                             "with --seeds 1 --attacks ctba --cells 'pdb ranked'; the same with --seeds 1 --parts "
                             "key --attacks addsent ctba badnets-clean-label --workers 2"),
    "defense-suite-tiny": ("The defense suite, tiny model, seeds 0-2 for most cells (each row gives its seed count)",
                           "python benchmarks/defense_suite.py --model tiny --seeds 0 --attacks ATTACK --defenses "
                           "p2p pdb-trusted-200 bki spectral activation-clustering cube abl dpoe finetune-200 "
                           "crow-200 wanda strip-1% strip-5% moderate-fitting [cleangen]; "
                           "python benchmarks/defense_suite.py --model tiny --seeds 1 2 --attacks ctba --defenses bki "
                           "(and badnets bki, badnets-clean-label bki, vpi strip-1%; addsent p2p pdb-trusted-200 "
                           "bki); "
                           "python benchmarks/defense_suite.py --model tiny "
                           "--seeds 0 1 2 --attacks math-badnets-fixed --defenses p2p bki spectral "
                           "activation-clustering cube abl dpoe cleangen; python benchmarks/defense_suite.py "
                           "--model tiny --seeds 0 --attacks synbkd-imdb --defenses DEFENSE (one at a time); "
                           "the same with --attacks badnets-clean-label --defenses onion; "
                           "python benchmarks/defense_suite.py --model tiny --seeds 1 2 --attacks "
                           "badnets-clean-label synbkd-imdb --defenses p2p pdb pdb-trusted-200 spectral "
                           "activation-clustering cube abl dpoe finetune-200 crow-200 wanda strip-1% strip-5% "
                           "moderate-fitting (SynBkd: all but bki and moderate-fitting; SynBkd bki later, one seed "
                           "at a time); the same with --seeds 0 1 2 "
                           "--attacks addsent badnets "
                           "badnets-clean-label ctba --defenses pdb (copied from the ablation's runs); "
                           "python benchmarks/defense_suite.py --model tiny --seeds 1 2 --attacks badnets ctba vpi "
                           "addsent --defenses p2p pdb pdb-trusted-200 bki spectral activation-clustering cube abl "
                           "dpoe finetune-200 crow-200 wanda strip-1% strip-5% moderate-fitting (finished "
                           "later with --attacks addsent and the defenses it lacked); "
                           "python benchmarks/defense_suite.py --model tiny --seeds 0 1 2 --attacks badnets ctba "
                           "badnets-clean-label addsent vpi --defenses 'bki+finetune-200+strip-1%'; the same with "
                           "--attacks vpi synbkd-imdb --defenses pdb crow-200 moderate-fitting; the same "
                           "with --seeds 0 --attacks synbkd-imdb --defenses 'bki+finetune-200+strip-1%'; the same "
                           "with --seeds 0 1 2 --attacks math-badnets-offset math-badnets-fixed --defenses (all "
                           "but onion); the same with --seeds 0 1 --attacks badnets --defenses "
                           "p2p-ranked pdb-ranked (then --seeds 2); the same with --seeds 0 --attacks addsent "
                           "badnets-clean-label --defenses p2p-ranked --workers 2 (then pdb-ranked); the same "
                           "with --seeds 1 2 --attacks synbkd-imdb --defenses 'bki+finetune-200+strip-1%'; "
                           "the same with --attacks addsent ctba badnets-clean-label --defenses p2p-ranked "
                           "pdb-ranked, then --attacks vpi, then --seeds 0 --attacks synbkd-imdb (one core each), "
                           "then --seeds 1 2 --attacks synbkd-imdb --workers 2; the same with --seeds 0 --attacks "
                           "badnets addsent ctba vpi --defenses onion (stopped for time; vpi run again after ONION "
                           "began to filter the instruction); the same with --seeds 1 --attacks vpi badnets "
                           "--defenses onion, then --attacks ctba addsent badnets-clean-label (stopped for time), "
                           "then --attacks addsent badnets-clean-label; the same with --seeds 2 --attacks badnets "
                           "badnets-clean-label vpi ctba addsent --defenses onion; the same with --seeds 0 1 2 "
                           "--attacks math-badnets-offset math-badnets-fixed --defenses onion"),
    "defense-suite-smollm2": ("The defense suite, SmolLM2-135M strong2, seed 0: BadNets and part of CTBA on an "
                              "NVIDIA H200 (bf16 base weights; their clean and undefended runs too), clean-label "
                              "ONION, CUBE on CTBA, clean-label BadNets, AddSent and VPI, and VPI's clean and "
                              "undefended runs on CPU; seed 1: CUBE on CTBA, AddSent and clean-label BadNets "
                              "(CPU); seeds 0-1: BKI on clean-label BadNets, CTBA and AddSent (CPU); seed 0 on CPU: "
                              "STRIP, "
                              "fine-tuning, CROW and Wanda on VPI, each taking the undefended run's trained model, "
                              "and SynBkd's clean and undefended runs with STRIP, Wanda and fine-tuning on it; "
                              "seed 1 on CPU: CUBE and STRIP on BadNets; seed 0 on CPU: Wanda and STRIP on AddSent "
                              "(taking its undefended model, run again because only its row was kept); CUBE on "
                              "SynBkd (CPU, seed 0); fine-tuning, BKI, Wanda and STRIP at 5% on BadNets seed 1, "
                              "CROW on BadNets "
                              "seeds 0-1 (CPU); VPI seed 1 on CPU: its clean and undefended runs, Wanda, STRIP, "
                              "CROW, fine-tuning and CUBE taking the undefended model; the clean and "
                              "undefended runs of clean-label BadNets, AddSent and CTBA seed 1, and the P2P/PDB "
                              "cells of AddSent and clean-label BadNets, copied from the SmolLM2 ablation's store; "
                              "BadNets seed 1 on CPU: spectral, DPoE, moderate-fitting (its own clean and "
                              "undefended runs), activation clustering and ABL; the P2P/PDB cells of BadNets seeds "
                              "1-2 and of CTBA, AddSent and clean-label BadNets seed 1, copied from that store; "
                              "ONION on BadNets seeds 1-2 and STRIP, Wanda and fine-tuning on AddSent seed 1 (CPU); "
                              "ONION on AddSent, CTBA and VPI seed 0 and CTBA seed 1, CROW on AddSent seed 1 (CPU); "
                              "CUBE on AddSent seed 2, VPI seed 2: its clean and undefended runs, CUBE, CROW, "
                              "fine-tuning, Wanda and STRIP (CPU)",
                              "python benchmarks/defense_suite.py --model smollm2 --seeds 0 "
                              "--attacks badnets-clean-label --defenses onion; the same with --attacks ctba "
                              "badnets-clean-label addsent --defenses bki cube --workers 2 (the BKI cells stopped for "
                              "time, the AddSent ones never started); the same with --attacks addsent vpi --defenses "
                              "cube --workers 2; the same with --attacks addsent badnets-clean-label ctba --defenses "
                              "p2p p2p-ranked pdb pdb-ranked pdb-trusted-200 (copies only); python "
                              "benchmarks/defense_suite.py --model smollm2 --seeds 1 --attacks ctba --defenses cube "
                              "(and --attacks addsent, badnets-clean-label, one at a time, two at once); python "
                              "benchmarks/defense_suite.py --model smollm2 --seeds 0 (and --seeds 1) --attacks "
                              "badnets-clean-label --defenses bki (two at once, one core each); python "
                              "benchmarks/defense_suite.py --model smollm2 --seeds 0 --attacks vpi --defenses "
                              "strip-1% strip-5% (then wanda finetune-200 crow-200); the same with --attacks "
                              "synbkd-imdb --defenses strip-1% cube --workers 2 (its clean run died of memory, CUBE "
                              "never started; the STRIP and Wanda cells ran as p2p run CONFIG --resume --trained-from "
                              "the undefended run; the clean run then as p2p run CONFIG --resume, and --defenses "
                              "crow-200 finetune-200, whose CROW cell died of memory); --seeds 1 --attacks badnets "
                              "--defenses cube (then strip-1%); --seeds 0 --attacks addsent --defenses wanda strip-1%; "
                              "--seeds 0 --attacks synbkd-imdb --defenses cube (alone, OMP_NUM_THREADS=2); "
                              "--seeds 1 --attacks badnets --defenses crow-200 finetune-200 (CROW stopped for time); "
                              "--seeds 1 --attacks badnets --defenses bki (then wanda strip-5%); --seeds 1 0 "
                              "--attacks badnets --defenses crow-200; --seeds 1 --attacks vpi --defenses strip-1% "
                              "strip-5% wanda (then crow-200 finetune-200; cube stopped for time, then run again: "
                              "--seeds 1 --attacks vpi --defenses cube); --seeds 0 --attacks ctba addsent "
                              "--defenses bki --workers 2 (AddSent stopped for time, then run alone: --attacks "
                              "addsent --defenses bki); --seeds 1 --attacks addsent ctba --defenses bki --workers 2; "
                              "on the H200, from a "
                              "store without those rows: python benchmarks/defense_suite.py --model smollm2 --seeds 0 "
                              "--workers 12 --reuse --attacks badnets ctba addsent badnets-clean-label vpi "
                              "synbkd-imdb (stopped after 8 min); on CPU: --seeds 1 --attacks badnets --defenses "
                              "spectral dpoe moderate-fitting --workers 2, then activation-clustering, then abl p2p "
                              "p2p-ranked pdb pdb-ranked pdb-trusted-200 (one core each); --seeds 2 --attacks "
                              "badnets --defenses p2p p2p-ranked pdb pdb-ranked pdb-trusted-200 and --seeds 1 "
                              "--attacks addsent ctba badnets-clean-label --defenses p2p p2p-ranked (copies only); "
                              "--seeds 1 --attacks badnets --defenses onion, then --seeds 2; --seeds 1 --attacks "
                              "addsent --defenses strip-1% strip-5% wanda finetune-200; --seeds 0 2 --attacks "
                              "addsent --defenses finetune-200 crow-200 --workers 2; --seeds 0 --attacks addsent "
                              "ctba vpi --defenses onion --workers 2; --seeds 1 --attacks addsent --defenses "
                              "crow-200; --seeds 1 --attacks ctba --defenses onion; --seeds 2 --attacks addsent vpi "
                              "--defenses cube crow-200 --workers 2; --seeds 2 --attacks vpi --defenses strip-1% "
                              "strip-5% finetune-200 wanda --workers 1"),
}
# the scripts' own tables (poisoned rows in the subset, scorer AUROC; per-threat recommendation), rebuilt from
# the store: a bench writes its table when it ends, so of two benches on one store the first to end misses the
# other's later rows
OWN_TABLES = {"ablation.md": ablation_table, "suite.md": suite_table}


def own_tables(directory: Path) -> list[str]:
    """The store's own tables (those a bench script wrote there), rebuilt from its rows and written back."""
    tables = []
    for name, build in OWN_TABLES.items():
        if (directory / name).exists():
            tables.append(build(directory))
            write_text_atomic(directory / name, tables[-1])
    return tables


def main() -> None:
    parts = [(ROOT / "notes.md").read_text(encoding="utf-8").rstrip() + "\n"]
    for name, (title, command) in STORES.items():
        directory = ROOT / "results" / name
        if not any(directory.glob("results*.jsonl")):
            continue
        write_report([directory], title=title)
        table = (directory / "results.md").read_text(encoding="utf-8").split("\n", 2)[2]
        table = table.replace("](", f"](results/{name}/")  # plots are linked from this file's folder
        parts.append(f"## {title}\n\n`{command}`; store `results/{name}/results.jsonl`, page "
                     f"`results/{name}/results.html`.\n\n{table}")
        for text in own_tables(directory):  # one heading level down, under the store's section
            parts.append("\n".join("#" + line if line.startswith("#") else line for line in text.splitlines()))
    write_text_atomic(ROOT / "RESULTS.md", "\n".join(parts))
    print(f"wrote {ROOT / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
