"""A self-contained HTML report (plots embedded as PNG data) of a set of evaluated policies.

`write_report(summary, out_dir, hacking_history)` writes `report.html` and its plots as PNG
files beside it:
- `gold_reward.png`: each method's mean gold reward with its 95% interval;
- `reward_kl.png`: gold reward against KL to the reference, the price each method paid;
- `hacking.png` (when a run's held-out history is given): the optimised (proxy) reward and the
  held-out gold reward over training steps, and the response length: reward hacking made visible.
`summary` is shaped as the demo's summary.json ({"methods": {...}, "hacking": {...}}). Once loaded in a
browser, the page's body gets `data-rendered` = the number of images that decoded (a test reads it).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from preftune.figures import png_data_uri

DPI = 110
"""Resolution of the plots, embedded and written as PNG files."""


def gold_reward_plot(methods: dict[str, dict[str, Any]], label: str = "gold reward") -> Figure:
    """Horizontal bars: mean gold reward per method with its interval."""
    names = list(methods)
    means = [methods[n]["gold_reward"] for n in names]
    lows = [m - methods[n]["gold_reward_ci"][0] for n, m in zip(names, means, strict=True)]
    highs = [methods[n]["gold_reward_ci"][1] - m for n, m in zip(names, means, strict=True)]
    figure = Figure(figsize=(6, 0.45 * len(names) + 1.2))
    axes = figure.add_subplot()
    axes.barh(names, means, xerr=[lows, highs], color="#4c72b0", capsize=3)
    axes.axvline(0, color="black", linewidth=0.6)
    axes.invert_yaxis()
    axes.set_xlabel(f"{label} (mean, 95% CI)")
    return figure


def reward_kl_plot(methods: dict[str, dict[str, Any]], label: str = "gold reward") -> Figure:
    """Gold reward against KL to the reference, one point per method that has a KL; methods are told
    apart by colour and marker in a legend (text labels beside close points overlap)."""
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    markers = "osD^vP*Xh<>"
    shown = [(name, row) for name, row in methods.items() if row.get("kl") is not None]
    for index, (name, row) in enumerate(shown):
        axes.scatter(
            row["kl"],
            row["gold_reward"],
            marker=markers[index % len(markers)],
            s=60,
            color=f"C{index % 10}",
            label=name,
            zorder=3,
        )
    axes.set_xlabel("KL to the reference (nats per response)")
    axes.set_ylabel(label)
    if shown:
        axes.legend(loc="best", fontsize=8)
    return figure


def hacking_plot(history: list[dict[str, float]]) -> Figure:
    """Proxy and gold reward (left axis) and response length (right axis) over training steps."""
    steps = [row["step"] for row in history]
    figure = Figure(figsize=(6.5, 4))
    axes = figure.add_subplot()
    axes.plot(steps, [row["eval/reward"] for row in history], marker="o", label="proxy reward (optimised)")
    axes.plot(steps, [row["eval/gold_reward"] for row in history], marker="o", label="gold reward (held out)")
    axes.set_xlabel("training step")
    axes.set_ylabel("reward")
    lengths = axes.twinx()
    lengths.plot(steps, [row["eval/length"] for row in history], color="gray", linestyle="--", label="length")
    lengths.set_ylabel("response length (tokens)")
    handles = [*axes.get_legend_handles_labels()[0], *lengths.get_legend_handles_labels()[0]]
    axes.legend(handles=handles, loc="upper left", fontsize=8)  # one legend for both axes
    return figure


def _table(methods: dict[str, dict[str, Any]], reward_label: str) -> str:
    def cell(value: Any, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows = []
    for name, row in methods.items():
        low, high = row["gold_reward_ci"]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{row['gold_reward']:.3f}</td><td>[{low:.3f}, {high:.3f}]</td>"
            f"<td>{cell(row.get('proxy_reward'))}</td><td>{cell(row.get('win_rate_vs_sft'))}</td>"
            f"<td>{cell(row.get('kl'), 2)}</td><td>{cell(row.get('length'), 1)}</td></tr>"
        )
    header = (
        f"<tr><th>policy</th><th>{html.escape(reward_label)}</th><th>95% CI</th><th>judge reward</th>"
        "<th>win rate vs reference</th><th>KL to reference</th><th>length</th></tr>"
    )
    return f"<table>{header}{''.join(rows)}</table>"


def _samples_table(samples: dict[str, list[dict[str, Any]]]) -> str:
    """A few responses of each policy: prompt, response and their scores."""
    rows = []
    for name, items in samples.items():
        for item in items:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in item.items() if isinstance(v, float))
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(item['prompt']))}</td>"
                f"<td>{html.escape(str(item['response']))}</td><td>{html.escape(scores)}</td></tr>"
            )
    header = "<tr><th>policy</th><th>prompt</th><th>response</th><th>scores</th></tr>"
    return f"<h2>Samples</h2><table>{header}{''.join(rows)}</table>"


def write_report(
    summary: dict[str, Any],
    out_dir: Path,
    hacking_history: list[dict[str, float]] | None = None,
    reward_label: str = "gold reward",
    samples: dict[str, list[dict[str, Any]]] | None = None,
) -> Path:
    """report.html (and the PNGs) in `out_dir`; returns the HTML's path. `reward_label` names the reward of
    the methods' `gold_reward` entries (e.g. "judge reward" when the prompts have no gold reward);
    `samples`, by policy, are shown in a table (dicts with prompt, response and float scores)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = summary["methods"]
    images = {
        f"{reward_label.capitalize()} by method": png_data_uri(
            gold_reward_plot(methods, reward_label), DPI, out_dir / "gold_reward.png"
        ),
        f"{reward_label.capitalize()} against KL to the reference": png_data_uri(
            reward_kl_plot(methods, reward_label), DPI, out_dir / "reward_kl.png"
        ),
    }
    if hacking_history:
        images["Reward hacking: proxy vs gold reward during PPO"] = png_data_uri(
            hacking_plot(hacking_history), DPI, out_dir / "hacking.png"
        )
    hacking_section = ""
    if "hacking" in summary:
        hacking = summary["hacking"]
        verdict = "flagged" if hacking["flagged"] else "not flagged"
        hacking_section = f"<h2>Reward hacking: {verdict}</h2><p>{html.escape(str(hacking['evidence']))}</p>"
    figures = "".join(
        f'<figure><img alt="{html.escape(title)}" src="{uri}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for title, uri in images.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>preftune report</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
img{{max-width:100%}}</style></head>
<body onload="document.body.dataset.rendered=[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length">
<h1>preftune report</h1>
<p>Held-out prompts; {html.escape(reward_label)} with 95% intervals (gold reward: the synthetic world's "what
people really prefer"); win rate and KL against the reference policy.</p>
{_table(methods, reward_label)}
{hacking_section}
{figures}
{_samples_table(samples) if samples else ""}
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path
