"""report.html of `preftune audit`: self-contained (plots embedded as base64 PNG), no scripts.

Sections: flags; dataset hygiene; length and position bias; annotators (table and plots of
flip rates and fatigue curves); groups (table and a plot of length bias by group).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from preftune.figures import png_data_uri

_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    "th{background:#f3f3f3}.warning{color:#a40000}.info{color:#555}img{max-width:100%}"
)
DPI = 100
"""Resolution of the embedded plots."""
ANNOTATOR_COLUMNS = (
    "n",
    "n_overlap",
    "group",
    "agreement",
    "flip_rate",
    "fatigue_slope",
    "fatigue_ci",
    "length_bias",
    "share_chosen_longer",
    "share_chose_first",
)
GROUP_COLUMNS = (
    "n",
    "num_annotators",
    "agreement_with_other_groups",
    "mean_flip_rate",
    "share_chosen_longer",
    "length_bias",
    "length_bias_ci",
)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return html.escape("-" if value is None else str(value))


def _key_table(audit: dict[str, Any], prefix: str) -> str:
    rows = [
        f"<tr><td>{html.escape(k[len(prefix) :])}</td><td>{_cell(v)}</td></tr>"
        for k, v in audit.items()
        if k.startswith(prefix)
    ]
    return f"<table><tr><th>measure</th><th>value</th></tr>{''.join(rows)}</table>" if rows else ""


def _entity_table(audit: dict[str, Any], prefix: str, columns: tuple[str, ...]) -> str:
    names = sorted({k[len(prefix) :].split("/")[0] for k in audit if k.startswith(prefix)})
    if not names:
        return ""
    header = "".join(f"<th>{c}</th>" for c in ("id", *columns))
    rows = [
        "<tr><td>"
        + html.escape(name)
        + "</td>"
        + "".join(f"<td>{_cell(audit.get(f'{prefix}{name}/{c}'))}</td>" for c in columns)
        + "</tr>"
        for name in names
    ]
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def flip_rate_plot(names: list[str], flip_rates: list[float | None]) -> Figure:
    """Bars: each annotator's Dawid-Skene flip rate."""
    figure = Figure(figsize=(max(4.0, 0.4 * len(names) + 1.5), 3))
    axes = figure.add_subplot()
    axes.bar(names, [r if r is not None else 0.0 for r in flip_rates], color="#4c72b0")
    axes.set_ylabel("estimated flip rate")
    axes.tick_params(axis="x", labelrotation=90, labelsize=7)
    return figure


def fatigue_plot(bins: dict[str, list[float | None]], pooled: dict[str, Any] | None) -> Figure:
    """Agreement with the others' consensus by fifth of the session, one line per annotator (pooled in black)."""
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    centers = [(b + 0.5) / 5 for b in range(5)]
    for name, values in bins.items():
        axes.plot(centers, [v if v is not None else float("nan") for v in values], alpha=0.5, label=name)
    if pooled is not None:
        axes.plot(
            centers,
            [v if v is not None else float("nan") for v in pooled["bins"]],
            color="black",
            linewidth=2.5,
            label="all",
        )
    axes.set_xlabel("position in session (order / session length)")
    axes.set_ylabel("agreement with the others' consensus")
    if len(bins) <= 16:
        axes.legend(fontsize=6, ncol=2)
    return figure


def group_length_plot(series: dict[str, list]) -> Figure:
    """Bars: each group's length bias (excess towards the longer response vs the other groups) with 95% CI."""
    figure = Figure(figsize=(5, 3))
    axes = figure.add_subplot()
    values = [v if v is not None else 0.0 for v in series["length_bias"]]
    errors = [1.96 * s if s is not None else 0.0 for s in series["length_bias_se"]]
    axes.bar(series["groups"], values, yerr=errors, capsize=4, color="#dd8452")
    axes.axhline(0, color="black", linewidth=0.6)
    axes.set_ylabel("length bias vs other groups")
    return figure


def write_audit_report(audit: dict[str, Any], plots: dict[str, Any], out_dir: Path) -> Path:
    """Write report.html into `out_dir` from audit.json's content and the plot series; returns its path."""
    flags = "".join(
        f"<li class='{flag['severity']}'><b>{html.escape(flag['finding'])}</b> ({flag['severity']}): "
        f"{html.escape(flag['evidence'])}</li>"
        for flag in audit["flags"]
    )
    parts = [
        f"<h1>Preference data audit</h1><p>{html.escape(str(audit.get('dataset/source')))}</p>",
        f"<h2>Findings</h2><ul>{flags or '<li>none</li>'}</ul>",
        "<h2>What this audit can and cannot see</h2><ul>"
        + "".join(f"<li>{html.escape(limit)}</li>" for limit in audit.get("limits", []))
        + "</ul>",
        "<h2>Dataset hygiene</h2>" + _key_table(audit, "dataset/"),
        "<h2>Length bias</h2>" + _key_table(audit, "length_bias/"),
    ]
    if any(k.startswith("position_bias/") for k in audit):
        parts.append("<h2>Position bias</h2>" + _key_table(audit, "position_bias/"))
    if "annotators" in plots:
        parts.append("<h2>Annotators</h2>" + _key_table(audit, "agreement/") + _key_table(audit, "fatigue/"))
        parts.append(_entity_table(audit, "annotators/", ANNOTATOR_COLUMNS))
        parts.append(
            f"<img alt='flip rates' src='{png_data_uri(flip_rate_plot(plots['annotators'], plots['flip_rate']), DPI)}'>"
        )
        if plots.get("fatigue_bins"):
            uri = png_data_uri(fatigue_plot(plots["fatigue_bins"], plots.get("fatigue_pooled")), DPI)
            parts.append(f"<img alt='fatigue curves' src='{uri}'>")
    if "group_length" in plots:
        parts.append("<h2>Groups</h2>" + _entity_table(audit, "groups/", GROUP_COLUMNS))
        parts.append(_key_table(audit, "group_divergence/"))
        parts.append(
            f"<img alt='length bias by group' src='{png_data_uri(group_length_plot(plots['group_length']), DPI)}'>"
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>preftune audit</title><style>{_STYLE}"
        f"</style></head><body>{''.join(parts)}</body></html>"
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
