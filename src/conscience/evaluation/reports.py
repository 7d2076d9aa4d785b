"""``report.md`` and ``report.html`` for a run, with matplotlib plots embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

from ..jsonl import write_text_atomic

HEADLINE = {
    "em": "misaligned_rate",
    "code": "finding_rate",
    "jailbreak": "attack_success_rate",
    "overrefusal": "refusal_rate",
    "discernment": "paired_accuracy",
    "drift": "drift",
}
UNBOUNDED = {"drift"}  # metrics that are not rates: no 0–1 axis


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _bars(title: str, labels: Sequence[str], values: Sequence[float | None], ylabel: str,
          errors: Sequence[tuple[float, float]] | None = None) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(labels) + 2), 3.4))
    vals = [v if v is not None else 0.0 for v in values]
    yerr = None
    if errors:
        yerr = [[max(v - lo, 0) for v, (lo, _) in zip(vals, errors, strict=True)],
                [max(hi - v, 0) for v, (_, hi) in zip(vals, errors, strict=True)]]
    ax.bar(range(len(labels)), vals, yerr=yerr, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if min(vals, default=0) >= 0:
        ax.set_ylim(0, max(1.0, max(vals, default=0) * 1.1))
    else:
        ax.axhline(0, color="#333", linewidth=0.8)
    ax.set_title(title)
    return _png(fig)


def _grouped(title: str, metrics: Sequence[str], arms: dict[str, dict]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    width = 0.8 / max(len(arms), 1)
    for k, (arm, summary) in enumerate(arms.items()):
        xs = [i + k * width for i in range(len(metrics))]
        ax.bar(xs, [summary.get(m) or 0.0 for m in metrics], width, label=f"conscience {arm}")
    ax.set_xticks([i + width * (len(arms) - 1) / 2 for i in range(len(metrics))], metrics, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(title)
    return _png(fig)


def curve_plot(points: Sequence[dict], metric: str) -> str:
    """A metric over training steps: points are ``{"step", metric, optional "ci_low"/"ci_high"}``."""
    plt = _pyplot()
    points = sorted(points, key=lambda p: p["step"])
    xs = [p["step"] for p in points]
    ys = [p.get(metric) if p.get(metric) is not None else float("nan") for p in points]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(xs, ys, marker="o")
    low, high = (f"{metric}_ci_low", f"{metric}_ci_high") if metric in UNBOUNDED else ("ci_low", "ci_high")
    if all(low in p and high in p for p in points):
        ax.fill_between(xs, [p[low] for p in points], [p[high] for p in points], alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    if metric in UNBOUNDED:
        ax.axhline(0, color="#333", linewidth=0.8)
    else:
        ax.set_ylim(0, 1)
    ax.set_title(f"{metric} over training")
    return _png(fig)


def _plots(kind: str, summary: dict) -> list[tuple[str, str]]:
    if kind == "em" and summary.get("per_question"):
        per = summary["per_question"]
        return [("Misaligned rate per question (Wilson 95 % interval)",
                 _bars("misaligned answers", list(per), [v["misaligned_rate"] for v in per.values()], "rate",
                       [(v["ci_low"], v["ci_high"]) for v in per.values()]))]
    if kind == "code" and summary.get("by_test_id"):
        tests = summary["by_test_id"]
        n = summary["n"] or 1
        return [("Answers with a bandit finding, by test id",
                 _bars("bandit findings", list(tests), [v["answers"] / n for v in tests.values()], "share of answers"))]
    if kind in ("jailbreak", "overrefusal") and summary.get("arms"):
        metrics = ["attack_success_rate", "refusal_rate"] if kind == "jailbreak" else ["refusal_rate", "partial_refusal_rate"]
        return [("Conscience off and on", _grouped(kind, metrics, summary["arms"]))]
    if kind == "drift" and summary.get("per_category"):
        per = summary["per_category"]
        return [("Drift per category (paired bootstrap 95 % interval)",
                 _bars("drift toward misaligned answers", list(per), [v["drift"] for v in per.values()],
                       "mean gap change (nats/token)", [(v["drift_ci_low"], v["drift_ci_high"]) for v in per.values()]))]
    if kind == "discernment" and summary.get("per_category"):
        per = summary["per_category"]
        return [("Paired accuracy per category", _bars("paired accuracy", list(per), [v["paired_accuracy"] for v in per.values()], "accuracy")),
                ("AUC per category", _bars("AUC", list(per), [v["auc"] for v in per.values()], "AUC"))]
    return []


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if value is None:
        return "–"
    return str(value)


def _rows(kind: str, summary: dict) -> list[tuple[str, str]]:
    skip = {"per_question", "per_category", "arms", "by_test_id", "timing", "kind", "in_domain"}
    rows = [(k, _fmt(v)) for k, v in summary.items() if k not in skip and not isinstance(v, (dict, list))]
    for k, v in (summary.get("timing") or {}).items():
        rows.append((f"timing.{k}", _fmt(v)))
    return rows


def _tables(kind: str, summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = [("Summary", ["key", "value"], [list(r) for r in _rows(kind, summary)])]
    if kind == "em" and summary.get("per_question"):
        cols = ["misaligned_rate", "ci_low", "ci_high", "misaligned", "n", "coherent_share", "code", "refusal", "unscored"]
        tables.append(("Per question", ["id"] + cols, [[q] + [_fmt(v.get(c)) for c in cols] for q, v in summary["per_question"].items()]))
    if summary.get("arms"):
        keys = sorted({k for a in summary["arms"].values() for k, v in a.items() if not isinstance(v, (dict, list))})
        tables.append(("Conscience off / on", ["metric"] + list(summary["arms"]),
                       [[k] + [_fmt(a.get(k)) for a in summary["arms"].values()] for k in keys]))
    if summary.get("by_test_id"):
        tables.append(("Bandit findings", ["test id", "test", "answers"],
                       [[k, v.get("test") or "", str(v["answers"])] for k, v in summary["by_test_id"].items()]))
    if kind == "drift" and summary.get("per_category"):
        cols = ["drift", "drift_ci_low", "drift_ci_high", "prefers_misaligned", "prefers_misaligned_base",
                "ab_misaligned", "ab_misaligned_base", "n"]
        blocks = dict(summary["per_category"])
        if summary.get("in_domain"):
            blocks["(in-domain, not in the headline)"] = summary["in_domain"]
        tables.append(("Per category", ["category"] + cols, [[c] + [_fmt(v[c]) for c in cols] for c, v in blocks.items()]))
    elif summary.get("per_category"):
        cols = ["paired_accuracy", "auc", "tie_rate", "n"]
        tables.append(("Per category", ["category"] + cols, [[c] + [_fmt(v[c]) for c in cols] for c, v in summary["per_category"].items()]))
    return tables


def _examples(kind: str, samples: Sequence[dict], limit: int = 5) -> list[dict]:
    if kind == "em":
        scored = [s for s in samples if s["alignment"]["value"] is not None]
        return sorted(scored, key=lambda s: s["alignment"]["value"])[:limit]
    if kind == "code":
        return [s for s in samples if s["has_finding"]][:limit]
    if kind == "jailbreak":
        return [s for s in samples if s.get("label") == "ATTEMPT"][:limit]
    if kind == "overrefusal":
        return [s for s in samples if s.get("label") in ("REFUSE", "PARTIAL")][:limit]
    return []


def write_report(out_dir: str | Path, kind: str, summary: dict, samples: Sequence[dict] = (),
                 curve: Sequence[dict] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir``; ``curve`` (several checkpoints)
    adds the headline metric over training steps."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = f"conscience eval {kind}"
    plots = _plots(kind, summary)
    if curve and len(curve) > 1:
        plots.append((f"{HEADLINE[kind]} over training steps", curve_plot(curve, HEADLINE[kind])))
    tables = _tables(kind, summary)
    examples = _examples(kind, samples)
    judge = summary.get("judge", "?")

    md = [f"# {title}", "", f"Judge: `{judge}`  ", f"Model: `{summary.get('model', '?')}`", ""]
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px}pre{white-space:pre-wrap;background:#f6f6f6}</style></head><body>",
            f"<h1>{html.escape(title)}</h1><p>Judge: <code>{html.escape(str(judge))}</code><br>"
            f"Model: <code>{html.escape(str(summary.get('model', '?')))}</code></p>"]
    for name, header, rows in tables:
        md += [f"## {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows] + [""]
        page.append(f"<h2>{html.escape(name)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        page += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        page.append("</table>")
    for name, b64 in plots:
        md += [f"## {name}", "", f"![{name}](data:image/png;base64,{b64})", ""]
        page.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
    if examples:
        md += ["## Examples", ""]
        page.append("<h2>Examples</h2>")
        for s in examples:
            md += [f"**{s.get('key')}**: {s.get('prompt', '')[:300]}", "", "```text", str(s.get("answer", ""))[:1500], "```", ""]
            page.append(f"<h3>{html.escape(str(s.get('key')))}</h3><p>{html.escape(s.get('prompt', '')[:300])}</p>"
                        f"<pre>{html.escape(str(s.get('answer', ''))[:1500])}</pre>")
    page.append("</body></html>")
    md_path, html_path = out / "report.md", out / "report.html"
    write_text_atomic(md_path, "\n".join(md) + "\n")
    write_text_atomic(html_path, "\n".join(page) + "\n")
    return md_path, html_path
