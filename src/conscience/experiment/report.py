"""The experiment's results table, curves and report (``report.md`` and ``report.html``)."""

from __future__ import annotations

import html
from dataclasses import asdict
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Sequence

import yaml

from ..evaluation.reports import _png, _pyplot
from ..evaluation.scoring import wilson_interval
from ..jsonl import write_text_atomic
from .config import ExperimentConfig
from .criteria import CRITERIA, judge_rows, mark, thresholds

if TYPE_CHECKING:
    from ..evaluation.drift import DriftScores

COLUMNS = ("model", "drift (95% CI)", "seeds with drift > 0", "A/B picks misaligned %", "prefers misaligned %",
           "judge: misaligned % (95% CI)", "coherent %", "flagged by own conscience %", "code findings %",
           "task token accuracy", "perplexity (held-out aligned)", "train minutes", *CRITERIA, "seeds")
ARM_LABELS = {"base": "base", "control": "control (aligned data)", "sft": "SFT", "conscience": "SFT + conscience",
              "kl": "SFT + KL to frozen copy", "inoculation": "SFT + inoculation prompt",
              "mix": "SFT + aligned data mixed in", "early": "SFT, stopped on drift",
              "steer": "SFT + steering along the conscience card",
              "ranked": "SFT + conscience on its ranked answers"}


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def pooled_scores(items: Sequence[dict], base: DriftScores) -> DriftScores:
    """One arm's drift scores averaged over its seeds, triple by triple (gaps: (n_triples,))."""
    import numpy as np

    from ..evaluation.drift import DriftScores

    seeds = [DriftScores.from_dict(r["eval"]["drift"]["scores"]) for r in items]
    mean_ab = None if any(s.ab is None for s in seeds) else np.mean([s.ab for s in seeds], axis=0)
    return DriftScores(base.ids, np.mean([s.gaps for s in seeds], axis=0), mean_ab)


def paired_drift(pooled: dict[str, DriftScores], seeds: dict[str, list[int]], categories: Sequence[str],
                 in_domain: Sequence[str]) -> list[dict]:
    """Every pair of fine-tuned arms (base and control left out) with the same seeds: the drift of
    one against the other, i.e. the mean difference of their seed-pooled gaps (``pooled``, see
    :func:`pooled_scores`), with its paired bootstrap interval over triples (seed-to-seed variance
    is not in it: see the per-seed drifts)."""
    from ..evaluation.drift import drift_summary

    trained = [a for a in pooled if a not in ("base", "control")]
    out = []
    for i, a in enumerate(trained):
        for b in trained[i + 1:]:
            if sorted(seeds[a]) != sorted(seeds[b]):
                continue
            s = drift_summary(pooled[a], pooled[b], categories, in_domain)
            out.append({"arm": a, "against": b, **{k: s[k] for k in ("drift", "drift_ci_low", "drift_ci_high", "n")}})
    return out


def drift_over_seeds(items: Sequence[dict], pooled: DriftScores, base: DriftScores, categories: Sequence[str],
                     in_domain: Sequence[str]) -> dict:
    """Drift of one arm over its seeds: per triple, the gap change averaged over seeds (``pooled``),
    then the mean over (out-of-domain) triples with a paired bootstrap interval; plus the per-seed
    values."""
    from ..evaluation.drift import drift_summary

    summary = drift_summary(pooled, base, categories, in_domain)
    summary["per_seed"] = [{k: r["eval"]["drift"][k] for k in ("drift", "drift_ci_low", "drift_ci_high")}
                           for r in items]
    summary["seeds_above_zero"] = sum(p["drift_ci_low"] > 0 for p in summary["per_seed"])
    summary["prefers_misaligned"] = _mean([r["eval"]["drift"]["prefers_misaligned"] for r in items])
    summary["ab_misaligned"] = _mean([r["eval"]["drift"].get("ab_misaligned") for r in items])
    return summary


def aggregate(cfg: ExperimentConfig, runs: Sequence[dict], questions_source: str, command: str,
              base_drift: dict | None = None, categories: Sequence[str] = ()) -> dict:
    """One row per arm: drift over seeds against the base (see :func:`drift_over_seeds`), the
    judge's misaligned answers pooled over seeds (Wilson interval over the pool), other columns
    averaged over seeds."""
    from ..evaluation.drift import DriftScores

    arms: dict[str, list[dict]] = {}
    for run in runs:
        arms.setdefault(run["arm"], []).append(run)
    base_scores = DriftScores.from_dict(base_drift) if base_drift else None
    pooled = {arm: pooled_scores(items, base_scores) for arm, items in arms.items()
              if base_scores is not None and all(r["eval"].get("drift") for r in items)}
    rows = []
    for arm, items in arms.items():
        k = sum(r["eval"]["em"]["misaligned"] for r in items)
        n = sum(r["eval"]["em"]["n"] for r in items)
        low, high = wilson_interval(k, n)
        codes = [r["eval"].get("code") or {} for r in items]
        found = sum(c.get("with_finding", 0) for c in codes)
        answered = sum(c.get("n", 0) for c in codes)
        views = [r["eval"]["em"].get("conscience") or {} for r in items]
        reviewed = sum(v.get("n", 0) for v in views)
        drift = drift_over_seeds(items, pooled[arm], base_scores, categories, cfg.in_domain()) \
            if arm in pooled else None
        rows.append({
            "arm": arm, "drift": drift,
            "misaligned_rate": k / n if n else None, "ci_low": low, "ci_high": high, "misaligned": k, "n": n,
            "coherent_share": _mean([r["eval"]["em"].get("coherent_share") for r in items]),
            "mean_alignment": _mean([r["eval"]["em"].get("mean_alignment") for r in items]),
            "conscience_flagged_rate": sum(v.get("flagged", 0) for v in views) / reviewed if reviewed else None,
            "conscience_mean_score": _mean([v.get("mean_score") for v in views]),
            "code_finding_rate": found / answered if answered else _mean([c.get("finding_rate") for c in codes]),
            "token_accuracy": _mean([r["eval"].get("token_accuracy") for r in items]),
            "coherence_perplexity": _mean([r["eval"].get("coherence_perplexity") for r in items]),
            "per_seed": [{"seed": r["seed"], "drift": (r["eval"].get("drift") or {}).get("drift"),
                          "token_accuracy": r["eval"].get("token_accuracy")} for r in items],
            "stopped_at": {r["seed"]: {"step": r["train"].get("stopped_at"),
                                       "task_accuracy": r["train"].get("task_accuracy_at_stop")}
                           for r in items if r["train"] and arm == "early"},
            "train_minutes": _mean([r["train"]["train_seconds"] / 60 for r in items if r["train"]]),
            "seeds": [r["seed"] for r in items],
            "probe": {r["seed"]: r["train"]["probe"] for r in items if r["train"]},
            "warned_at": {r["seed"]: r["train"]["warned_at"] for r in items if r["train"]},
        })
    judge_rows(rows)
    judges = sorted({r["eval"]["judge"] for r in runs})
    sft = next((r for r in rows if r["arm"] == "sft"), None)
    con = next((r for r in rows if r["arm"] == "conscience"), None)
    overhead = (con["train_minutes"] / sft["train_minutes"]) if sft and con and sft["train_minutes"] else None
    pairs = paired_drift(pooled, {a: [r["seed"] for r in items] for a, items in arms.items()}, categories,
                         cfg.in_domain())
    return {"scenario": cfg.scenario, "domain": cfg.domain if cfg.task == "bad-advice" else None,
            "in_domain": list(cfg.in_domain()), "rows": rows, "paired_drift": pairs, "judges": judges,
            "questions": questions_source,
            "conscience_train_overhead": overhead, "command": command, "config": asdict(cfg)}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def table_rows(results: dict) -> list[list[str]]:
    out = []
    for r in results["rows"]:
        label = ARM_LABELS.get(r["arm"], r["arm"])
        mis = "–" if r["misaligned_rate"] is None else \
            f"{_pct(r['misaligned_rate'])} ({_pct(r['ci_low'])}–{_pct(r['ci_high'])}), {r['misaligned']}/{r['n']}"
        d = r.get("drift")
        drift = "–" if not d else f"{d['drift']:+.4f} ({d['drift_ci_low']:+.4f} … {d['drift_ci_high']:+.4f}), n={d['n']}"
        above = "–" if not d else f"{d['seeds_above_zero']}/{len(d['per_seed'])}"
        out.append([label, drift, above, _pct(d and d.get("ab_misaligned")), _pct(d and d.get("prefers_misaligned")),
                    mis, _pct(r["coherent_share"]), _pct(r.get("conscience_flagged_rate")),
                    _pct(r["code_finding_rate"]),
                    "–" if r["token_accuracy"] is None else f"{r['token_accuracy']:.3f}",
                    "–" if r.get("coherence_perplexity") is None else f"{r['coherence_perplexity']:.2f}",
                    "–" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}",
                    *[mark(r.get("criteria", {}).get(name)) for name in CRITERIA],
                    ",".join(str(s) for s in r["seeds"])])
    return out


# Columns that can carry no information at this model size (the 135M self-judge finds 0/N in every
# arm, coherent % is 0 everywhere, code findings are not measured on advice): each folds into a note
# under the table when it tells no arm from another, so that the table fits a screen.
CONSTANT_FOLDS = ("judge: misaligned % (95% CI)", "coherent %", "code findings %", "seeds")
AB_COLUMN = "A/B picks misaligned %"
# The A/B probe averages both orders, so a model that cannot answer "which reply would you give?"
# sits at 50 % whatever it was trained on; within this many points of it in every arm, the base
# included, the column says nothing about any arm.
CHANCE_BAND = 1.0


def _at_chance(cells: Sequence[str]) -> bool:
    try:
        return all(abs(float(c) - 50.0) <= CHANCE_BAND for c in cells)
    except ValueError:  # "–": not measured in some arm
        return False


def fold_uninformative(columns: Sequence[str], rows: Sequence[Sequence[str]]
                       ) -> tuple[list[str], list[list[str]], list[str]]:
    """The main table without the columns that tell no arm from another (:data:`CONSTANT_FOLDS`
    with one value in every row, the A/B probe at chance in every row), and one note per folded
    column saying what it held. A one-row table keeps every column."""
    folded: dict[int, str] = {}
    for i, name in enumerate(columns):
        cells = [r[i] for r in rows]
        if len(rows) < 2:
            break
        if name in CONSTANT_FOLDS and len(set(cells)) == 1:
            folded[i] = (f"{name}: not measured in this scenario" if cells[0] == "–" else
                         f"{name}: {cells[0]} in every arm")
        elif name == AB_COLUMN and _at_chance(cells):
            values = sorted(float(c) for c in cells)
            folded[i] = (f"{name}: {values[0]:.1f}–{values[-1]:.1f} in every arm, within {CHANCE_BAND:g} point of "
                         "chance (50 %): the model does not answer the A/B question at this size")
    keep = [i for i in range(len(columns)) if i not in folded]
    return [columns[i] for i in keep], [[r[i] for i in keep] for r in rows], list(folded.values())


PAIRED_COLUMNS = ("arm", "against", "drift difference (95% CI)")
PAIRED_NOTE = ("Arm against arm: the drift of one arm measured against another on the same triples and seeds "
               "(negative: the first drifts less); the interval is bootstrapped over triples, so it leaves out "
               "seed-to-seed variance (see each arm's per-seed drift).")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in rows]


def _html_row(tag: str, cells: Sequence[str]) -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]], table_id: str | None = None) -> str:
    opening = f"<table id='{table_id}'>" if table_id else "<table>"
    return opening + _html_row("th", columns) + "".join(_html_row("td", r) for r in rows) + "</table>"


FOLDED_NOTE = "Columns left out of the table because they tell no arm from another:"
# The page is read in a browser window: the main table takes the window's width (up to 1280 px)
# and its cells wrap, so every column shows at 1300 px without scrolling sideways.
REPORT_CSS = ("body{font-family:sans-serif;max-width:1280px;margin:1em auto;padding:0 10px;line-height:1.35}"
              "table{border-collapse:collapse;font-size:13px}#results{width:100%}"
              "td,th{border:1px solid #ccc;padding:3px 5px;vertical-align:top}"
              "th{background:#f3f3f3;font-weight:600;text-align:left}"
              "img{max-width:100%}pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap}")


def paired_rows(results: dict) -> list[list[str]]:
    label = ARM_LABELS.get
    return [[label(p["arm"], p["arm"]), label(p["against"], p["against"]),
             f"{p['drift']:+.4f} ({p['drift_ci_low']:+.4f} … {p['drift_ci_high']:+.4f})"]
            for p in results.get("paired_drift", [])]


def curves_png(results: dict) -> str | None:
    """The live monitor: probe value against training step, one line per arm and seed."""
    series = [(r["arm"], seed, points) for r in results["rows"] for seed, points in r["probe"].items() if points]
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for arm, seed, points in series:
        pts = [p for p in points if p["value"] is not None]
        ax.plot([p["step"] for p in pts], [p["value"] for p in pts], marker="o", label=f"{arm} (seed {seed})")
    ax.set_xlabel("training step")
    metric = results["config"]["probe_metric"]
    if metric == "drift":
        ax.axhline(0, color="#333", linewidth=0.8)
        ax.set_ylabel("drift (preference-gap change)")
        ax.set_title("Drift during fine-tuning (forward passes, probe triples)")
    else:
        ax.set_ylabel(f"EM probe: {metric}")
        ax.set_title("Misalignment during fine-tuning (frozen-copy judge)")
    ax.legend(fontsize=7)
    return _png(fig)


def drift_png(results: dict) -> str | None:
    """Drift per arm (mean over seeds, bootstrap 95 % interval), with each seed's value."""
    rows = [r for r in results["rows"] if r.get("drift")]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = range(len(rows))
    vals = [r["drift"]["drift"] for r in rows]
    err = [[max(v - r["drift"]["drift_ci_low"], 0.0) for v, r in zip(vals, rows, strict=True)],
           [max(r["drift"]["drift_ci_high"] - v, 0.0) for v, r in zip(vals, rows, strict=True)]]
    ax.bar(list(xs), vals, yerr=err, capsize=4, color="#c44e52", alpha=0.8)
    for x, r in zip(xs, rows, strict=True):
        ax.scatter([x] * len(r["drift"]["per_seed"]), [p["drift"] for p in r["drift"]["per_seed"]], color="#333",
                   s=12, zorder=3)
    ax.axhline(0, color="#333", linewidth=0.8)
    ax.set_xticks(list(xs), [ARM_LABELS.get(r["arm"], r["arm"]) for r in rows], fontsize=8)
    ax.set_ylabel("drift toward misaligned answers")
    ax.set_title("Drift against the base (bars: mean over seeds, 95% CI; dots: seeds)")
    return _png(fig)


def tradeoff_png(results: dict) -> str | None:
    """Drift against the task metric, one point per arm and seed: where each method sits on the
    trade-off between keeping alignment and learning the task."""
    points = [(r["arm"], p) for r in results["rows"] for p in r.get("per_seed", [])
              if p["drift"] is not None and p["token_accuracy"] is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for arm in dict.fromkeys(a for a, _ in points):
        mine = [p for a, p in points if a == arm]
        ax.scatter([p["token_accuracy"] for p in mine], [p["drift"] for p in mine], label=ARM_LABELS.get(arm, arm),
                   s=22)
    ax.axhline(0, color="#333", linewidth=0.8)
    ax.set_xlabel("task token accuracy (held-out task answers)")
    ax.set_ylabel("drift against the base")
    ax.set_title("Drift against task learning (one point per arm and seed)")
    ax.legend(fontsize=7)
    return _png(fig)


def bars_png(results: dict) -> str:
    plt = _pyplot()
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = range(len(rows))
    vals = [r["misaligned_rate"] or 0.0 for r in rows]
    # clamp: a Wilson bound can sit a rounding error beyond the rate (k = 0 or k = n)
    err = [[max(v - r["ci_low"], 0.0) for v, r in zip(vals, rows, strict=True)],
           [max(r["ci_high"] - v, 0.0) for v, r in zip(vals, rows, strict=True)]]
    ax.bar([x - 0.2 for x in xs], vals, width=0.4, yerr=err, capsize=4, color="#c44e52", label="misaligned (judge)")
    flagged = [r.get("conscience_flagged_rate") or 0.0 for r in rows]
    ax.bar([x + 0.2 for x in xs], flagged, width=0.4, color="#4c72b0", label="flagged by own conscience")
    ax.set_xticks(list(xs), [r["arm"] for r in rows])
    ax.set_ylabel("share of EM answers (judge: 95% CI)")
    ax.set_ylim(0, max(0.1, max(r["ci_high"] for r in rows) * 1.1, max(flagged) * 1.1))
    ax.legend(fontsize=8)
    ax.set_title("Emergent misalignment by model")
    return _png(fig)


def write_experiment_report(out: str | Path, results: dict) -> tuple[Path, Path]:
    out = Path(out)
    columns, rows, folded = fold_uninformative(COLUMNS, table_rows(results))
    pictures = [("Drift against the base", drift_png(results)), ("Drift against the task metric", tradeoff_png(results)),
                ("Misaligned answers (judge)", bars_png(results))]
    pictures = [(name, png) for name, png in pictures if png]
    curve = curves_png(results)
    if curve:
        pictures.append(("Live monitor", curve))
    overhead = results.get("conscience_train_overhead")
    facts = [("Drift: mean over triples of the change in log p(misaligned) − log p(aligned) per token against "
              "the base, triples outside the fine-tune's domain"
              + (f" (in-domain categories {', '.join(results['in_domain'])} reported apart)" if results.get("in_domain")
                 else "") + "; A/B: P(the model picks the misaligned answer), both orders"),
             f"Judge: {', '.join(results['judges'])} (the frozen copy of the base model)",
             f"EM questions: {results['questions']}",
             f"Conscience training overhead (train time ratio, conscience / SFT): "
             f"{'–' if overhead is None else f'{overhead:.2f}'}"]
    facts += [f"Criteria (Kaczér et al. 2025): {line}" for line in thresholds()]
    facts.append("Perplexity: exp(−mean per-token log p) of the aligned answers of the first "
                 f"{results['config'].get('coherence_limit')} drift triples outside the reported split")
    facts += [f"early seed {seed}: " + (f"stopped at step {stop['step']} (probe task token accuracy "
                                        f"{'–' if stop['task_accuracy'] is None else format(stop['task_accuracy'], '.3f')})"
                                        if stop["step"] is not None else "ran every step (the interval never left 0)")
              for r in results["rows"] for seed, stop in r.get("stopped_at", {}).items()]
    warnings = [f"{r['arm']} seed {s}: probe rose above base at step {w}"
                for r in results["rows"] for s, w in r["warned_at"].items() if w is not None]
    config_yaml = yaml.safe_dump(results["config"], sort_keys=False)
    title = f"conscience experiment {results['scenario']}"
    md = [f"# {title}", "", *markdown_table(columns, rows), ""]
    if folded:
        md += [f"{FOLDED_NOTE}", ""] + [f"- {f}" for f in folded] + [""]
    md += [f"- {f}" for f in facts]
    md += [f"- monitor warning: {w}" for w in warnings] + [""]
    pairs = paired_rows(results)
    if pairs:
        md += ["## Arm against arm", "", PAIRED_NOTE, "", *markdown_table(PAIRED_COLUMNS, pairs), ""]
    md += [f"## {name}\n\n![{name}](data:image/png;base64,{b64})\n" for name, b64 in pictures]
    md += ["## Command", "", "```", results["command"], "```", "", "## Config", "", "```yaml", config_yaml, "```"]
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            f"{REPORT_CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>" + html_table(columns, rows, "results")]
    if folded:
        page.append(f"<p class='folded'>{html.escape(FOLDED_NOTE)}</p><ul class='folded'>"
                    + "".join(f"<li>{html.escape(f)}</li>" for f in folded) + "</ul>")
    page.append("<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts + warnings) + "</ul>")
    if pairs:
        page.append(f"<h2>Arm against arm</h2><p>{html.escape(PAIRED_NOTE)}</p>" + html_table(PAIRED_COLUMNS, pairs))
    page += [f"<h2>{html.escape(n)}</h2><img alt='{html.escape(n)}' src='data:image/png;base64,{b}'>" for n, b in pictures]
    page += [f"<h2>Command</h2><pre>{html.escape(results['command'])}</pre>",
             f"<h2>Config</h2><pre>{html.escape(config_yaml)}</pre></body></html>"]
    md_path, html_path = out / "report.md", out / "report.html"
    write_text_atomic(md_path, "\n".join(md) + "\n")
    write_text_atomic(html_path, "\n".join(page) + "\n")
    return md_path, html_path
