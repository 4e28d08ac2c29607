"""`p2p report BENCH_DIR`: tables (Markdown and an HTML page) and PNG plots from a results store.

Every number comes from the store's rows. Runs are grouped into settings by their configuration without the
seed; each setting shows mean ± sd over seeds and the number of seeds. A defended or undefended run is matched,
seed by seed, with the runs that share everything but the defense (the undefended run) and, further, the
poison (the clean reference: the attack at rate 0): the floor beside each ASR, the CA drop, the ASR reduction
over the floor and the cost ratios (estimated FLOPs and wall time against the undefended run) come from those
matches.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from .compute import compute_ratio, wall_ratio
from .config import flatten, validate_config
from .io import write_text_atomic
from .store import ResultsStore

IGNORED_KEYS = ("seed", "model.tiny.vocabulary")


def _flat(tree: dict) -> dict:
    """Dotted keys; lists as JSON text, so that values can be compared and collected in sets."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(tree).items()}


def _settings(config: dict) -> dict:
    """A stored configuration as its settings that differ from today's defaults: a setting added after a run was
    stored (its default keeping the old behaviour) must not tell that run apart from a newer one."""
    from .bench import non_default  # bench imports the pipeline; a report needs it only here

    return non_default(validate_config(config))


def _key(settings: dict, drop: tuple[str, ...]) -> str:
    """A hash of flat `settings` (see _settings) without the `drop` sections."""
    flat = {k: v for k, v in settings.items() if not any(k == d or k.startswith(d + ".") for d in drop)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


def role(config: dict) -> str:
    """clean (no poison, no defense), undefended (poison, no defense) or defended."""
    poisoned = config["attack"]["name"] != "none" and config["attack"].get("rate", 0) > 0
    if config["defense"]["name"] == "none":
        return "undefended" if poisoned else "clean"
    return "defended"


def _cell_without_seed(cell: str) -> str:
    """A bench cell's name without its "seed=N" part: the name its seeds share."""
    return re.sub(r"(^|, )seed=[^,() ]+", "", cell).strip(" ,")


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float], percent: bool = True) -> str:
    mean, sd = _mean_sd(values)
    if mean is None:
        return "n/a"
    scale = 100 if percent else 1
    return f"{scale * mean:.1f} ± {scale * sd:.1f}"


class Report:
    """The settings of a store, their matched references, and what varies across them."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        flats = [_flat(r["config"]) for r in rows]
        keys = sorted({k for f in flats for k in f})
        # a key varies when the rows that have it disagree (P2P's keys are absent, not different, under `none`)
        self.varying = [k for k in keys if k not in IGNORED_KEYS and len({json.dumps(f[k], default=str)
                                                                           for f in flats if k in f}) > 1]
        # matches: the same configuration without the defense (-> undefended) and without poison (-> clean)
        self._flat_settings = {r["hash"]: _flat(_settings(r["config"])) for r in rows}
        self.undefended = {self._key(r, ("defense",)): r for r in rows if role(r["config"]) == "undefended"}
        self.clean = {self._key(r, ("defense", "attack.rate")): r for r in rows if role(r["config"]) == "clean"}
        self.settings: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            self.settings[self._key(r, ("seed",))].append(r)

    def _key(self, row: dict, drop: tuple[str, ...]) -> str:
        return _key(self._flat_settings[row["hash"]], drop)

    def label(self, row: dict) -> str:
        """The grid cell's name without its seed (bench rows), else the varying keys that the row has."""
        if row.get("cell"):
            cell = _cell_without_seed(row["cell"])
            cell = "base" if not cell else f"base {cell}" if cell.startswith("(") else cell
            return f"{cell}: {row['config']['defense']['name']}" if role(row["config"]) == "defended" else cell
        flat = _flat(row["config"])
        parts = [f"{k}={flat[k]}" for k in self.varying if k in flat
                 and (not k.startswith("defense.") or role(row["config"]) == "defended")]
        text = ", ".join([role(row["config"])] + parts)
        return text.replace("\n", "\\n").replace("|", "\\|")

    def references(self, row: dict) -> tuple[dict | None, dict | None]:
        return self.undefended.get(self._key(row, ("defense",))), self.clean.get(self._key(row, ("defense",
                                                                                                "attack.rate")))

    def table(self) -> list[dict]:
        out = []
        for members in self.settings.values():
            members = sorted(members, key=lambda r: r["config"]["seed"])
            m = [r["metrics"] for r in members]
            floors, drops, over_floor, cost, compute = [], [], [], [], []
            for r in members:
                undefended, clean = self.references(r)
                if clean is not None and role(r["config"]) != "clean":
                    floors.append(clean["metrics"].get("asr"))
                if undefended is not None and role(r["config"]) == "defended":
                    u = undefended["metrics"]
                    drops.append(u["ca"] - r["metrics"]["ca"])
                    cost.append(wall_ratio(r["metrics"], u))
                    compute.append(compute_ratio(r["metrics"], u))
                    floor = clean["metrics"].get("asr") if clean is not None else None
                    if None not in (floor, u.get("asr"), r["metrics"].get("asr")) and u["asr"] > floor:
                        over_floor.append((u["asr"] - r["metrics"]["asr"]) / (u["asr"] - floor))
            out.append({
                "setting": self.label(members[0]), "role": role(members[0]["config"]),
                "seeds": [r["config"]["seed"] for r in members], "config": members[0]["config"],
                "ca": [x["ca"] for x in m], "asr": [x.get("asr") for x in m],
                "triggered_accuracy": [x.get("triggered_accuracy") for x in m], "floor": floors, "ca_drop": drops,
                "asr_reduction_over_floor": over_floor, "cost_ratio": cost, "compute_ratio": compute,
                "wall_seconds": [x.get("wall_seconds") for x in m]})
        order = {"clean": 0, "undefended": 1, "defended": 2}
        return sorted(out, key=lambda e: (order[e["role"]], e["setting"]))

    def heatmap(self) -> tuple[list[str], list[str], list[list[float | None]]]:
        """Row labels, column labels and the mean ASR of each (row, column) pair with runs (None elsewhere) for
        the ASR heatmap; clean runs and runs without an attack are left out.

        A grid cell named "attack | variant" (the defense suite, the ablation) puts the variant in the row and
        the attack in the column, so that e.g. strip-1% and strip-5% are not averaged into one row; another
        cell's name is the column. An undefended run that some defended run is matched with is "undefended";
        one that none is (the moderate-fitting control: no defense, other training) is "VARIANT (no defense)",
        not averaged with the undefended runs."""
        matched = {id(self.references(r)[0]) for r in self.rows if role(r["config"]) == "defended"}
        values: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in self.rows:
            kind, attack = role(r["config"]), r["config"]["attack"]
            if kind == "clean" or attack["name"] == "none":
                continue
            column, variant = attack["name"] + (" (clean-label)" if attack.get("clean_label") else ""), ""
            if r.get("cell"):
                name = re.sub(r"(^| )\((clean|undefended)\)$", "", _cell_without_seed(r["cell"]))
                named_column, _, variant = name.partition(" | ")
                column = named_column or column
            if kind == "defended":
                line = variant or r["config"]["defense"]["name"]
            else:
                line = "undefended" if id(r) in matched or not variant else f"{variant} (no defense)"
            values[line, column].append(r["metrics"].get("asr"))
        lines = sorted({line for line, _ in values})
        columns = sorted({column for _, column in values})
        return lines, columns, [[_mean_sd(values.get((line, c), []))[0] for c in columns] for line in lines]


COLUMNS = ("setting", "seeds", "CA %", "ASR %", "clean floor ASR %", "triggered acc. %", "CA drop (pts)",
           "ASR reduction over floor %", "compute (× undefended)", "wall time (× undefended)")


def _cells(entry: dict) -> list[str]:
    cost = _mean_sd(entry["cost_ratio"])[0]
    compute = _mean_sd(entry["compute_ratio"])[0]
    return [entry["setting"], str(len(entry["seeds"])), _fmt(entry["ca"]), _fmt(entry["asr"]),
            _fmt(entry["floor"]), _fmt(entry["triggered_accuracy"]),
            _fmt(entry["ca_drop"]) if entry["ca_drop"] else "",
            _fmt(entry["asr_reduction_over_floor"]) if entry["asr_reduction_over_floor"] else "",
            "" if compute is None else f"{compute:.2f}", "" if cost is None else f"{cost:.2f}"]


def markdown(report: Report, title: str, plots: list[Path]) -> str:
    lines = [f"# {title}", "",
             f"{len(report.rows)} runs from the results store; mean ± sd over seeds (sd of one seed is 0.0). "
             "Varying keys: " + (", ".join(f"`{k}`" for k in report.varying) or "none") + ".", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(e)) + " |" for e in report.table()]
    lines += ["", "ASR: triggered inputs whose true label is not the target, counted in either label space. Floor: "
              "the clean reference (same data, attack at rate 0, no defense). Reduction over floor: (ASR_undef - "
              "ASR_def) / (ASR_undef - floor), per seed. Cost: estimated FLOPs and wall time against the undefended "
              "run (a run resumed from a checkpoint has no wall ratio: it timed its last process only).", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def html_page(report: Report, title: str, plots: list[Path]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(e)) + "</tr>"
                   for e in report.table())
    # The PNGs sit beside the page (write_report puts both in `out`); embedding them as base64 would store every
    # plot twice and add megabytes to a tracked store's history on each rewrite.
    images = "".join(f'<figure><img alt="{html.escape(p.stem)}" src="{html.escape(p.name)}">'
                     f'<figcaption>{html.escape(p.stem)}</figcaption></figure>' for p in plots)
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:right}td:first-child{text-align:left}img{max-width:900px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(report.rows)} runs; mean ± sd over seeds.</p><table><tr>{head}</tr>{body}</table>"
            f"{images}</body></html>\n")


def _epoch_log(row: dict) -> list[dict]:
    """The run's per-epoch training log (loss, dev score, tokens/s); empty for a run that trained nothing."""
    return row["metrics"].get("epochs") or []


LEGEND_MAX_LINES = 80  # beyond this a legend is a page of text nobody matches to colours, and bloats results.html


def _legend_below(fig, axis) -> None:
    """One legend under both panels, the figure grown to hold it: a grid has dozens of lines, too many for a
    legend inside an axis. Past LEGEND_MAX_LINES the figure says so instead; the tables name every setting."""
    handles, labels = axis.get_legend_handles_labels()
    if not handles:
        return
    if len(labels) > LEGEND_MAX_LINES:
        fig.suptitle(f"{len(labels)} lines, too many to label: results.md lists each setting", fontsize=9)
        return
    columns = 2
    fig.set_figheight(fig.get_figheight() + 0.18 * -(-len(labels) // columns))
    fig.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize=7)


def plots(report: Report, out: Path) -> list[Path]:
    """ASR and CA against every numeric varying key (and poisoned rows in the defensive subset), a defense x
    attack heatmap of ASR, and training curves; PNG files in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = report.rows
    axes = [k for k in report.varying if all(isinstance(_flat(r["config"]).get(k), (int, float))
                                             and not isinstance(_flat(r["config"]).get(k), bool) for r in rows)]
    numeric = [(k, lambda r, k=k: _flat(r["config"]).get(k)) for k in axes]
    if any(r["metrics"].get("num_benign") for r in rows):
        numeric.append(("poisoned rows in the defensive subset",
                        lambda r: r["metrics"].get("num_poisoned_in_benign_subset")))
    for name, value in numeric:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
        by_line: dict[str, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for r in rows:
            x = value(r)
            if x is None:
                continue
            line = f"defense {r['config']['defense']['name']}, attack {r['config']['attack']['name']}"
            by_line[line][x].append(r["metrics"])
        for line, points in sorted(by_line.items()):
            xs = sorted(points)
            for axis, metric in ((left, "asr"), (right, "ca")):
                ys = [_mean_sd([m.get(metric) for m in points[x]])[0] for x in xs]
                if any(y is not None for y in ys):
                    axis.plot(xs, [None if y is None else 100 * y for y in ys], marker="o", label=line)
        for axis, metric in ((left, "ASR %"), (right, "CA %")):
            axis.set_xlabel(name)
            axis.set_ylabel(metric)
            axis.grid(alpha=0.3)
        _legend_below(fig, left)
        path = out / f"vs-{name.replace(' ', '-').replace('.', '-')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    defenses, attacks, grid = report.heatmap()
    if defenses and attacks:
        fig, axis = plt.subplots(figsize=(1.6 * len(attacks) + 2, 0.8 * len(defenses) + 1.5),
                                 layout="constrained")
        image = axis.imshow([[float("nan") if v is None else 100 * v for v in line] for line in grid],
                            vmin=0, vmax=100, cmap="Reds")
        axis.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right")
        axis.set_yticks(range(len(defenses)), defenses)
        for i, line in enumerate(grid):
            for j, v in enumerate(line):
                axis.text(j, i, "" if v is None else f"{100 * v:.0f}", ha="center", va="center",
                          color="white" if v is not None and v > 0.6 else "black")  # readable on dark cells
        fig.colorbar(image, label="ASR % (mean)")
        axis.set_title("ASR by defense and attack")
        path = out / "heatmap-asr.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if any(_epoch_log(r) for r in rows):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
        for entry in report.table():
            members = [r for r in rows if report.label(r) == entry["setting"]]
            epochs = sorted({e["epoch"] for r in members for e in _epoch_log(r)})
            for axis, key in ((left, "loss"), (right, "dev_score")):
                ys = [_mean_sd([e.get(key) for r in members for e in _epoch_log(r) if e["epoch"] == x])[0]
                      for x in epochs]
                if epochs and any(y is not None for y in ys):
                    axis.plot(epochs, ys, marker=".", label=entry["setting"])
        for axis, key in ((left, "training loss"), (right, "clean dev score")):
            axis.set_xlabel("epoch")
            axis.set_ylabel(key)
            axis.grid(alpha=0.3)
        _legend_below(fig, right)
        path = out / "training-curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(bench_dirs: list[Path], out: Path | None = None, title: str | None = None) -> list[Path]:
    """results.md, results.html and the PNG plots in `out` (default the first bench directory)."""
    rows: dict[str, dict] = {}
    for directory in bench_dirs:
        for row in ResultsStore(directory).rows():
            rows[row["hash"]] = row
    if not rows:
        raise FileNotFoundError(f"no results store with rows in {', '.join(map(str, bench_dirs))} "
                                "(results*.jsonl; `p2p bench --rebuild-store` recreates it from runs/)")
    out = out or bench_dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    report = Report(list(rows.values()))
    title = title or f"Results: {bench_dirs[0].name}"
    images = plots(report, out)
    write_text_atomic(out / "results.md", markdown(report, title, images))
    write_text_atomic(out / "results.html", html_page(report, title, images))
    return [out / "results.md", out / "results.html", *images]
