"""Result tables: one Markdown row per run, and mean ± spread across seeds."""

from __future__ import annotations

import statistics
from collections import defaultdict


def pct(value) -> str:
    """A fraction as a percentage with one decimal; n/a for None."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown_table(rows: list[dict]) -> str:
    """CA is the task's quality metric (accuracy; ROUGE-L for summarization). The fifth column is the share of
    predictions outside the expected label space (classification) or the prefix compliance (generation)."""
    header = ("| setting | attack | defense | seed | CA % | ASR % | ASR_strict % | out-of-space / prefix % | "
              "CA drop (pts) | ASR reduction (rel. %) | best epoch | run |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        ca_drop = "" if "ca_drop" not in r else f"{100 * r['ca_drop']:.1f}"
        reduction = "" if r.get("asr_reduction_rel") is None else pct(r["asr_reduction_rel"])
        space = r["out_of_space"] if "out_of_space" in r else r.get("prefix_compliance")
        lines.append(
            f"| {r['setting']} | {r['attack']} | {r['defense']} | {r['seed']} | {pct(r['ca'])} | "
            f"{pct(r['asr'])} | {pct(r['asr_strict'])} | {pct(space)} | {ca_drop} | "
            f"{reduction} | {r['best_epoch']} | {r['run_dir']} |")
    return "\n".join(lines) + "\n"


def aggregate(rows: list[dict], keys: tuple[str, ...] = ("ca", "asr", "asr_strict")) -> list[dict]:
    """Group rows by setting; mean and population standard deviation of each metric over seeds."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["setting"]].append(row)
    out = []
    for setting, members in groups.items():
        entry = {"setting": setting, "seeds": [m["seed"] for m in members]}
        for key in keys:
            values = [m[key] for m in members if m.get(key) is not None]
            entry[f"{key}_mean"] = statistics.fmean(values) if values else None
            entry[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0 if values else None
        out.append(entry)
    return out
