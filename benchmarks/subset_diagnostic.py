"""How precise can a ranked defensive subset be? For a run configuration with `defense.subset: ranked`, the
blind scorer's suspicion of every training row joined AFTER THE FACT with the poison flags (an experimenter's
diagnostic: the defense never sees them).

    python benchmarks/subset_diagnostic.py benchmarks/results/p2p-ablation-smollm2/configs/0567dbbf30d3.yaml

Per given label (the subset is ranked within each label): rows, poisoned rows, the AUROC of the suspicion
within the label, the poisoned rows among its k least suspicious rows, and for a classification scorer that
names an answer, how often the reference's answer agrees with the given label on clean and on poisoned rows.
With `defense.counter_examples`, how many of the relabelled most suspicious rows are poisoned. Scores come
from the run's score cache (computed and cached when missing). `--set` overrides the configuration as `p2p run`
does, e.g. `--set defense.counter_examples=0.05`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from p2pdefense.evaluate import auroc

DEPTHS = (25, 50, 100, 200, 300)


@dataclass
class LabelRanking:
    label: object
    rows: int
    poisoned: int
    auroc: float | None
    poisoned_at_depth: dict[int, int]  # k -> poisoned rows among the k least suspicious rows of the label
    agreement_clean: float | None  # share of clean rows whose given label the reference prefers
    agreement_poisoned: float | None


def rankings(suspicion: list[float], labels: list, poisoned: list[bool], preferred: list | None,
             depths: tuple[int, ...] = DEPTHS) -> list[LabelRanking]:
    """One LabelRanking per given label, in label order. Ties among scores keep the rows' order."""
    result = []
    for label in sorted(set(labels)):
        group = [i for i, lab in enumerate(labels) if lab == label]
        order = sorted(group, key=lambda i: suspicion[i])
        clean = [i for i in group if not poisoned[i]]
        dirty = [i for i in group if poisoned[i]]

        def agreement(rows: list[int]) -> float | None:
            if preferred is None or preferred[0] is None or not rows:
                return None
            return sum(preferred[i] == labels[i] for i in rows) / len(rows)

        result.append(LabelRanking(
            label=label, rows=len(group), poisoned=len(dirty),
            auroc=auroc([suspicion[i] for i in group], [poisoned[i] for i in group]),
            poisoned_at_depth={k: sum(poisoned[i] for i in order[:k]) for k in depths if k <= len(group)},
            agreement_clean=agreement(clean), agreement_poisoned=agreement(dirty)))
    return result


def markdown(table: list[LabelRanking], depths: tuple[int, ...] = DEPTHS) -> str:
    def pct(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.0f}"

    head = ["label", "rows", "poisoned", "AUROC within label", *(f"poisoned in {k} least suspicious" for k in depths),
            "reference agrees: clean / poisoned %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [str(r.label), str(r.rows), str(r.poisoned), "" if r.auroc is None else f"{r.auroc:.3f}",
                 *(str(r.poisoned_at_depth.get(k, "")) for k in depths),
                 f"{pct(r.agreement_clean)} / {pct(r.agreement_poisoned)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="a run configuration (YAML) with defense.subset: ranked")
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from p2pdefense.config import load_config
    from p2pdefense.datacache import prepared_data
    from p2pdefense.defenses.scorers import build_scorer
    from p2pdefense.models.smollm2 import cache_root
    from p2pdefense.pipeline import Splits, default_learning_rate, defense_context, prepare_data

    config = load_config(str(args.config), args.overrides)
    if getattr(config.defense, "subset", None) != "ranked":
        raise SystemExit(f"{args.config}: defense.subset is not 'ranked'")
    data, _ = prepared_data(config, prepare_data, cache_root())
    splits = Splits(data.train, data.dev, data.test, data.data_notes, data.trusted)
    # the same context (and score-cache key) as the run: its corpus only matters to the tiny preset's tokenizer
    context = defense_context(config, splits, [], default_learning_rate(config), None, "cpu")
    rows = [ex.blinded() for ex in data.poisoned]
    scorer = build_scorer(config.defense.scorer, config.defense.reference)
    suspicion = scorer.suspicion(rows, context)
    preferred = scorer.preferred(rows, context) if hasattr(scorer, "preferred") else None
    depths = tuple(args.depths)
    table = rankings(suspicion, [ex.label for ex in data.poisoned], [bool(ex.meta.poisoned) for ex in data.poisoned],
                     preferred, depths)
    print(f"{args.config}: {len(rows)} training rows, {sum(r.poisoned for r in table)} poisoned, scorer "
          f"{config.defense.scorer.name}, reference {config.defense.reference}\n")
    print(markdown(table, depths))
    if config.defense.counter_examples:
        from p2pdefense.defenses.subset import choose_training_rows

        choice = choose_training_rows(rows, config.defense.ratio, config.defense, context, config.defense.balanced)
        relabelled = [data.poisoned[i] for i in choice.relabel]
        dirty = sum(bool(ex.meta.poisoned) for ex in relabelled)
        print(f"\ncounter-examples: {len(relabelled)} rows relabelled with the reference's answer, {dirty} of them "
              f"poisoned; the subset itself: {len(choice.rows) - len(relabelled)} rows, "
              f"{sum(bool(data.poisoned[i].meta.poisoned) for i in choice.rows if i not in choice.relabel)} poisoned")


if __name__ == "__main__":
    main()
