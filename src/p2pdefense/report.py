"""Result tables: one Markdown row per run, and mean ± spread across seeds."""

from __future__ import annotations

import statistics
from collections import defaultdict


def pct(value) -> str:
    """A fraction as a percentage with one decimal; n/a for None."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown_table(rows: list[dict]) -> str:
    """CA is the task's quality metric (accuracy; ROUGE-L for summarization). Triggered acc.: the same metric on
    triggered inputs of every label. The out-of-space column is the share of predictions outside the expected
    label space (classification) or the prefix compliance (generation). Reductions are against the undefended
    run: relative to its ASR, and over the floor (the clean run's ASR)."""
    header = ("| setting | attack | defense | seed | CA % | ASR % | ASR_strict % | triggered acc. % | "
              "out-of-space / prefix % | CA drop (pts) | ASR reduction (rel. %) | ASR reduction over floor % | "
              "best epoch | run |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        ca_drop = "" if "ca_drop" not in r else f"{100 * r['ca_drop']:.1f}"
        reduction = "" if r.get("asr_reduction_rel") is None else pct(r["asr_reduction_rel"])
        over_floor = "" if r.get("asr_reduction_over_floor") is None else pct(r["asr_reduction_over_floor"])
        space = r["out_of_space"] if "out_of_space" in r else r.get("prefix_compliance")
        triggered = r.get("triggered_accuracy", r.get(f"triggered_{r.get('quality_metric')}"))
        lines.append(
            f"| {r['setting']} | {r['attack']} | {r['defense']} | {r['seed']} | {pct(r['ca'])} | "
            f"{pct(r['asr'])} | {pct(r['asr_strict'])} | {pct(triggered)} | {pct(space)} | {ca_drop} | "
            f"{reduction} | {over_floor} | {r['best_epoch']} | {r['run_dir']} |")
    return "\n".join(lines) + "\n"


METRICS = ("ca", "asr", "asr_strict", "triggered_accuracy")


def aggregate(rows: list[dict], keys: tuple[str, ...] = METRICS) -> list[dict]:
    """Group rows by setting; mean and sample standard deviation (n - 1) of each metric over seeds (0 for one)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["setting"]].append(row)
    out = []
    for setting, members in groups.items():
        entry = {"setting": setting, "seeds": [m["seed"] for m in members]}
        for key in keys:
            values = [m[key] for m in members if m.get(key) is not None]
            entry[f"{key}_mean"] = statistics.fmean(values) if values else None
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
        out.append(entry)
    return out
