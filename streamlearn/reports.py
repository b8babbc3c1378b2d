"""Self-contained HTML reports (offline evaluation, the daily drift job): one file, no script,
no external asset, so it opens anywhere it is copied to. Charts are inline SVG with axes, a
legend and each point's value on hover; every text from data is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

from streamlearn.daily import DailyReport, Served
from streamlearn.evaluation import Evaluation, Figures

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
W, H, LEFT, RIGHT, TOP, BOTTOM = 560, 260, 56, 16, 28, 48

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px;
       color: #222; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #e4e4e4; border-radius: 6px; padding: 6px; }
figcaption { font-weight: 600; padding: 2px 6px; }
svg text { font-size: 11px; fill: #444; }
.note { color: #666; }
.alarm { color: #b00020; font-weight: 600; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    diagonal: bool = False,
    xs: Mapping[str, Sequence[float]] | None = None,
    colours: Mapping[str, str] | None = None,
) -> str:
    """An SVG line chart: one line per series over ``labels`` (or over numeric ``xs`` per
    series, for a reliability curve, with the ``diagonal`` of perfect calibration)."""
    values = [v for vs in series.values() for v in vs if v is not None]
    iw, ih = W - LEFT - RIGHT, H - TOP - BOTTOM
    if xs is not None:  # both axes from 0, on one scale, for the diagonal
        lo, hi = 0.0, max([1e-9, *values, *(x for v in xs.values() for x in v)]) * 1.05
        x_lo, x_hi = 0.0, hi

        def px(x: float) -> float:
            return LEFT + (x - x_lo) / (x_hi - x_lo) * iw

    else:
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        pad = (hi - lo) * 0.1 or max(abs(hi) * 0.1, 0.01)
        lo, hi = (lo - pad if lo - pad > 0 or lo < 0 else 0.0), hi + pad
        x_lo, x_hi = 0.0, float(len(labels))

        def px(x: float) -> float:  # each day in the middle of its slot
            return LEFT + (x + 0.5) / max(len(labels), 1) * iw

    def py(y: float) -> float:
        return TOP + ih - (y - lo) / (hi - lo) * ih

    out = [
        f"<figure><figcaption>{_e(title)}</figcaption>"
        f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{_e(title)}">'
    ]
    for t in _ticks(lo, hi):
        out.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
            'stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>'
        )
    if xs is not None:
        for t in _ticks(x_lo, x_hi):
            out.append(
                f'<text x="{px(t):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{t:.2g}</text>'
            )
        if diagonal:
            top = min(hi, x_hi)
            out.append(
                f'<line x1="{px(0):.1f}" y1="{py(0):.1f}" x2="{px(top):.1f}" y2="{py(top):.1f}" '
                'stroke="#999" stroke-dasharray="4 4"><title>perfectly calibrated</title></line>'
            )
    else:
        step = max(1, len(labels) // 8)
        for i, label in enumerate(labels):
            if i % step == 0:
                out.append(
                    f'<text x="{px(i):.1f}" y="{H - BOTTOM + 16}" '
                    f'text-anchor="middle">{_e(label)}</text>'
                )
    out.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + ih}" stroke="#999"/>'
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{TOP + ih}" y2="{TOP + ih}" stroke="#999"/>'
    )
    for k, (name, vs) in enumerate(series.items()):
        colour = (colours or {}).get(name, COLOURS[k % len(COLOURS)])
        at = list(xs[name]) if xs is not None else list(range(len(vs)))
        points = [(px(x), py(v), x, v) for x, v in zip(at, vs, strict=True) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        for x, y, raw_x, v in points:
            where = f"{raw_x:.3g}" if xs is not None else labels[int(raw_x)]
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}">'
                f"<title>{_e(name)} · {_e(where)}: {v:.4g}</title></circle>"
            )
        lx = LEFT + 8 + k * 110
        out.append(
            f'<rect x="{lx}" y="{H - 18}" width="12" height="4" fill="{colour}"/>'
            f'<text x="{lx + 16}" y="{H - 13}">{_e(name)}</text>'
        )
    out.append("</svg></figure>")
    return "".join(out)


def page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{_e(title)}</h1>{body}</body></html>"
    )


def evaluation_html(ev: Evaluation) -> str:
    names = {v: f"v{v}" for v in ev.versions}
    head = "".join(f"<th>{_e(names[v])}</th>" for v in ev.versions)
    rows = []
    for label, get in _ROWS:
        cells = "".join(f"<td>{get(ev.period[v])}</td>" for v in ev.versions)
        rows.append(f"<tr><td>{_e(label)}</td>{cells}</tr>")
    days = list(ev.days)
    charts = [
        line_chart(
            title,
            days,
            {names[v]: [getattr(ev.days[d][v], field) for d in days] for v in ev.versions},
        )
        for title, field in _CHARTS
    ]
    # The conversion rate is the days' (the same for every version), beside what each predicted.
    rates = {"conversion rate": [ev.days[d][ev.versions[0]].conversion_rate for d in days]}
    means = {
        f"{names[v]} mean score": [ev.days[d][v].mean_score for d in days] for v in ev.versions
    }
    same = {f"{names[v]} mean": COLOURS[k % len(COLOURS)] for k, v in enumerate(ev.versions)}
    charts.append(
        line_chart(
            "Conversion rate and each version's mean score",
            days,
            rates | means,
            colours={"conversion rate": "#222", **same},
        )
    )
    charts.append(
        line_chart(
            "Reliability over the period: conversion rate by mean score",
            [],
            {names[v]: [b.conversion_rate for b in ev.curves[v]] for v in ev.versions},
            xs={names[v]: [b.mean_score for b in ev.curves[v]] for v in ev.versions},
            diagonal=True,
        )
    )
    per_day = []
    for d in days:
        cells = "".join(
            f"<td>{_fmt(ev.days[d][v].roc_auc)}</td><td>{_fmt(ev.days[d][v].log_loss)}</td>"
            for v in ev.versions
        )
        n = ev.days[d][ev.versions[0]].examples
        rate = ev.days[d][ev.versions[0]].conversion_rate
        per_day.append(f"<tr><td>{_e(d)}</td><td>{n}</td><td>{rate:.4f}</td>{cells}</tr>")
    day_head = "".join(
        f"<th>{_e(names[v])} AUC</th><th>{_e(names[v])} log loss</th>" for v in ev.versions
    )
    body = (
        f'<p class="note">Model <b>{_e(ev.model)}</b>, versions '
        f"{_e(', '.join(names.values()))}, scored without learning on the archived examples "
        f"from {_e(ev.start)} to {_e(ev.end)} (UTC days). Calibration is the mean score over "
        "the conversion rate: 1 is calibrated, above 1 over-predicts.</p>"
        f"<h2>Over the period</h2><table><tr><th></th>{head}</tr>{''.join(rows)}</table>"
        f'<h2>Per day</h2><div class="charts">{"".join(charts)}</div>'
        f"<table><tr><th>day</th><th>examples</th><th>conversion</th>{day_head}</tr>"
        f"{''.join(per_day)}</table>"
    )
    return page(f"Offline evaluation: {ev.model}", body)


_ROWS: tuple[tuple[str, Callable[[Figures], str]], ...] = (
    ("examples", lambda f: str(f.examples)),
    ("conversion rate", lambda f: _fmt(f.conversion_rate)),
    ("ROC AUC", lambda f: _fmt(f.roc_auc)),
    ("log loss", lambda f: _fmt(f.log_loss)),
    ("mean score", lambda f: _fmt(f.mean_score)),
    ("calibration", lambda f: _fmt(f.calibration, 3)),
)
_CHARTS = (
    ("ROC AUC", "roc_auc"),
    ("Log loss", "log_loss"),
    ("Calibration (mean score / conversion rate)", "calibration"),
)


def daily_html(report: DailyReport, psi_shift: float) -> str:
    """The daily drift job's report: verdict, concept, data, latent drift and join health."""
    r = report
    verdict = (
        '<p class="alarm">Retraining: ' + "; ".join(_e(t) for t in r.triggers) + "</p>"
        if r.triggers
        else '<p class="note">No retraining rule met.</p>'
    )
    served: list[tuple[str, Callable[[Served], str]]] = [
        ("examples", lambda s: str(s.examples)),
        ("per day", lambda s: f"{s.examples / s.days:.0f}"),
        ("conversion rate", lambda s: _fmt(s.conversion_rate)),
        ("served log loss", lambda s: _fmt(s.log_loss)),
        ("calibration", lambda s: _fmt(s.calibration, 3)),
        ("dead letters per day", lambda s: f"{s.dead_letters / s.days:.1f}"),
        ("scores from", lambda s: _e(s.by)),
    ]
    concept = "".join(
        f"<tr><td>{_e(label)}</td><td>{get(r.today)}</td><td>{get(r.before)}</td></tr>"
        for label, get in served
    )
    days = list(r.per_day)
    chart = line_chart(
        "Served log loss per day",
        days,
        {"log loss": [r.per_day[d]["log_loss"] for d in days]},
    ) + line_chart(
        "Conversion rate per day",
        days,
        {"conversion rate": [r.per_day[d]["conversion_rate"] for d in days]},
    )
    psi_rows = "".join(
        f"<tr><td>{_e(name)}</td><td{' class=alarm' if v >= psi_shift else ''}>{v:.4f}</td></tr>"
        for name, v in r.psi.items()
    )
    if r.latent is None:
        latent = (
            '<p class="note">No learned item factors (not a one-hot factorization machine).</p>'
        )
    else:
        ref = r.latent.reference_mean_shift_per_day
        moved = ", ".join(f"{_e(i)} {s:.3f}" for i, s in r.latent.moved_most)
        latent = (
            f"<p>{r.latent.items} items seen; their latent factors moved by "
            f"{r.latent.mean_shift:.4f} (mean relative shift) during the day, against "
            f"{_fmt(ref)} per day over the reference. Moved most: {moved}.</p>"
        )
    joined = _fmt(r.impressions_joined, 3)
    body = (
        f'<p class="note">Model <b>{_e(r.model)}</b>, champion v{_e(r.champion)}: '
        f"{_e(r.day)} against {_e(r.reference[0])} to {_e(r.reference[1])} (UTC days), from the "
        "event archive.</p>"
        f"{verdict}<h2>Concept: what was served</h2>"
        f"<table><tr><th></th><th>{_e(r.day)}</th><th>reference</th></tr>{concept}</table>"
        f'<div class="charts">{chart}</div>'
        f"<h2>Data: population stability index (shift from {psi_shift:g})</h2>"
        f"<table><tr><th>feature</th><th>PSI</th></tr>{psi_rows}</table>"
        f"<h2>Latent</h2>{latent}"
        f"<h2>Join health</h2><p>Impressions of the day that became examples: {joined} "
        "(dead letters and examples per day above).</p>"
    )
    return page(f"Daily drift report: {r.model}, {r.day}", body)
