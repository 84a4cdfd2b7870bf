"""The analytics report: the KPIs with charts, one self-contained HTML file (inline SVG,
no scripts, no external resources)."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

import duckdb

from analytics.clv import customer_lifetime_values
from analytics.sandbox import rows_of
from analytics.schema import macro_call
from analytics.store import tracked_position

PALETTE = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"]
CLASS_COLOURS = {"high-value": "#16a34a", "potential": "#2563eb", "at-risk": "#f59e0b",
                 "churned": "#dc2626", "occasional": "#94a3b8"}


def collect(con: duckdb.DuckDBPyConnection, *, as_of: datetime | None = None,
            horizon_weeks: float = 52.0) -> dict[str, Any]:
    """Every figure of the report, read from one snapshot of the analytics database; the
    customer classes and lifetime value as of ``as_of`` (default now)."""
    cutoff = as_of if as_of is not None else datetime.now(UTC)

    def q(sql: str) -> list[dict[str, Any]]:
        return rows_of(con.sql(sql).to_arrow_table())

    con.execute("BEGIN TRANSACTION READ ONLY")
    try:
        data: dict[str, Any] = {
            "position": tracked_position(con),
            "as_of": q("SELECT as_of FROM analytics_as_of")[0]["as_of"],
            "events": q("SELECT count(*) AS n FROM fact_events")[0]["n"],
            "customers": q("SELECT count(*) AS n FROM dim_customer")[0]["n"],
            "pipeline_by_stage": q("SELECT * FROM kpi_pipeline_by_stage"),
            "funnel": q("""SELECT pipeline, stage, stage_order, sum(reached) AS reached
                           FROM kpi_funnel GROUP BY ALL ORDER BY pipeline, stage_order"""),
            "win_rate": q("SELECT * FROM kpi_win_rate WHERE owner_id IS NULL AND period IS NULL"),
            "win_rate_by_owner": q("""SELECT * FROM kpi_win_rate WHERE owner_id IS NOT NULL
                                      ORDER BY pipeline, owner_id"""),
            "sales_cycle": q("SELECT * FROM kpi_sales_cycle WHERE period IS NULL"),
            "time_in_stage": q("SELECT * FROM kpi_time_in_stage"),
            "forecast_weighted": q("SELECT * FROM kpi_forecast_weighted"),
            "forecast_historical": q("SELECT * FROM kpi_forecast_historical"),
            "sla_total": q("SELECT * FROM kpi_sla WHERE period IS NULL"),
            "sla_by_month": q("""SELECT * FROM kpi_sla WHERE period IS NOT NULL
                                 AND priority IS NULL ORDER BY period"""),
            "backlog": q("SELECT * FROM kpi_backlog"),
            "csat_total": q("""SELECT * FROM kpi_csat WHERE period IS NULL AND agent_id IS NULL
                               AND channel IS NULL AND request_type IS NULL"""),
            "csat_by_month": q("SELECT * FROM kpi_csat WHERE period IS NOT NULL ORDER BY period"),
            "csat_by_agent": q("SELECT * FROM kpi_csat WHERE agent_id IS NOT NULL ORDER BY agent_id"),
            "classes": q(f"SELECT * FROM {macro_call('customer_classes_at', cutoff)}"),
            "churn": q("SELECT * FROM kpi_churn_rate"),
            "repeat": q("SELECT * FROM kpi_repeat_purchase"),
            "aov": q("SELECT * FROM kpi_aov WHERE period IS NULL"),
            "clv_inputs": q(f"SELECT * FROM {macro_call('clv_inputs_at', cutoff)}"),
        }
    finally:
        con.execute("ROLLBACK")
    clv = customer_lifetime_values(data.pop("clv_inputs"), horizon_weeks=horizon_weeks,
                                   as_of=cutoff)
    for entry in clv["currencies"].values():
        entry.pop("customer_values", None)
    data["clv"] = clv
    return data


# -- charts --------------------------------------------------------------------------------
def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "–"
    x = _num(v)
    if abs(x) >= 1_000_000:
        return f"{x / 1_000_000:,.1f} M"
    if abs(x) >= 10_000:
        return f"{x / 1_000:,.0f} k"
    return f"{x:,.{digits}f}"


def _pct(v: Any) -> str:
    return "–" if v is None else f"{_num(v) * 100:.0f} %"


def bar_chart(labels: list[str], series: dict[str, list[float]], *, title: str,
              width: int = 560, height: int = 260, horizontal: bool = False,
              colours: list[str] | None = None, value_format: str = "{:,.0f}") -> str:
    """Grouped bars as inline SVG."""
    colours = colours or PALETTE
    e = html.escape
    top, bottom, left, right = 34, 48, 56, 12
    if horizontal:
        left = 160
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([v for vals in series.values() for v in vals] + [0.0]) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{e(title)}">',
             f'<text x="{left}" y="20" class="ct">{e(title)}</text>']
    n, k = max(len(labels), 1), max(len(series), 1)
    if horizontal:
        band = plot_h / n
        for i, label in enumerate(labels):
            y0 = top + i * band
            parts.append(f'<text x="{left - 6}" y="{y0 + band / 2 + 4:.1f}" class="lb" '
                         f'text-anchor="end">{e(label)}</text>')
            for j, (_, vals) in enumerate(series.items()):
                w = plot_w * 0.85 * vals[i] / peak
                bh = band * 0.7 / k
                y = y0 + band * 0.15 + j * bh
                parts.append(f'<rect x="{left}" y="{y:.1f}" width="{max(w, 0.5):.1f}" '
                             f'height="{bh:.1f}" fill="{colours[j % len(colours)]}" rx="2"/>')
                parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bh / 2 + 4:.1f}" class="vl">'
                             f'{e(value_format.format(vals[i]))}</text>')
    else:
        band = plot_w / n
        parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
                     f'y2="{top + plot_h}" class="ax"/>')
        for g in range(1, 5):
            y = top + plot_h - plot_h * g / 4
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                         f'class="gr"/><text x="{left - 6}" y="{y + 4:.1f}" class="lb" '
                         f'text-anchor="end">{e(_fmt(peak * g / 4))}</text>')
        for i, label in enumerate(labels):
            x0 = left + i * band
            for j, (_, vals) in enumerate(series.items()):
                bw = band * 0.75 / k
                h = plot_h * vals[i] / peak
                x = x0 + band * 0.125 + j * bw
                parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bw:.1f}" '
                             f'height="{max(h, 0.5):.1f}" fill="{colours[j % len(colours)]}" rx="2">'
                             f'<title>{e(label)}: {e(value_format.format(vals[i]))}</title></rect>')
            if n <= 14 or i % max(1, n // 12) == 0:
                parts.append(f'<text x="{x0 + band / 2:.1f}" y="{top + plot_h + 16}" class="lb" '
                             f'text-anchor="middle">{e(label)}</text>')
    if len(series) > 1:
        x = left
        for j, name in enumerate(series):
            parts.append(f'<rect x="{x}" y="{height - 16}" width="10" height="10" '
                         f'fill="{colours[j % len(colours)]}"/><text x="{x + 14}" '
                         f'y="{height - 7}" class="lb">{e(name)}</text>')
            x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def line_chart(labels: list[str], series: dict[str, list[float | None]], *, title: str,
               width: int = 560, height: int = 260, y_max: float | None = None,
               y_format: str = "{:.1f}") -> str:
    """Lines with points as inline SVG (gaps where a value is missing)."""
    e = html.escape
    top, bottom, left, right = 34, 48, 56, 12
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for vals in series.values() for v in vals if v is not None]
    peak = y_max if y_max is not None else (max(values + [0.0]) or 1.0)
    n = max(len(labels), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{e(title)}">',
             f'<text x="{left}" y="20" class="ct">{e(title)}</text>']
    for g in range(0, 5):
        y = top + plot_h - plot_h * g / 4
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                     f'class="gr"/><text x="{left - 6}" y="{y + 4:.1f}" class="lb" '
                     f'text-anchor="end">{e(y_format.format(peak * g / 4))}</text>')

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (plot_w * (i + 0.5) / n)
        return x, top + plot_h - plot_h * min(v, peak) / peak

    for j, (name, vals) in enumerate(series.items()):
        colour = PALETTE[j % len(PALETTE)]
        pts = [xy(i, v) for i, v in enumerate(vals) if v is not None]
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                         'stroke-width="2.5"/>')
        for i, v in enumerate(vals):
            if v is not None:
                x, y = xy(i, v)
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}">'
                             f'<title>{e(labels[i])} {e(name)}: {e(y_format.format(v))}</title>'
                             '</circle>')
    for i, label in enumerate(labels):
        if n <= 14 or i % max(1, n // 12) == 0:
            x, _ = xy(i, 0)
            parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" class="lb" '
                         f'text-anchor="middle">{e(label)}</text>')
    if len(series) > 1:
        x = left
        for j, name in enumerate(series):
            parts.append(f'<rect x="{x}" y="{height - 16}" width="10" height="10" '
                         f'fill="{PALETTE[j % len(PALETTE)]}"/><text x="{x + 14}" '
                         f'y="{height - 7}" class="lb">{e(name)}</text>')
            x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def _month(v: Any) -> str:
    return str(v)[:7] if v else "none"


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, heading, kind) with kind text | num | money | pct | hours."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for _, h, _ in columns)
    body = []
    for r in rows:
        cells = []
        for key, _, kind in columns:
            v = r.get(key)
            text = (_pct(v) if kind == "pct" else _fmt(v, 1) if kind == "hours"
                    else _fmt(v) if kind in ("num", "money") else ("–" if v is None else str(v)))
            cells.append(f'<td class="{"n" if kind != "text" else ""}">{e(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _main_currency(rows: list[dict[str, Any]], amount: str) -> str | None:
    totals: dict[str, float] = {}
    for r in rows:
        if r.get("currency"):
            totals[r["currency"]] = totals.get(r["currency"], 0.0) + _num(r.get(amount))
    return max(totals, key=lambda c: totals[c]) if totals else None


def render(data: dict[str, Any]) -> str:
    """The report as one HTML document."""
    e = html.escape
    tiles: list[tuple[str, str, str]] = []
    overall: dict[str, Any] = next(iter(data["win_rate"]), {})
    tiles.append(("Win rate", _pct(overall.get("win_rate")),
                  f"{overall.get('won', 0)} won, {overall.get('lost', 0)} lost"))
    cycles = data["sales_cycle"]
    if cycles:
        avg = sum(_num(r["avg_cycle_days"]) * _num(r["won"]) for r in cycles) / max(
            1.0, sum(_num(r["won"]) for r in cycles))
        tiles.append(("Sales cycle", f"{avg:.0f} days", "average, won deals"))
    sla: dict[str, Any] = next(iter(data["sla_total"]), {})
    tiles.append(("SLA first response", _pct(sla.get("first_response_compliance")),
                  f"resolution {_pct(sla.get('resolution_compliance'))}"))
    csat: dict[str, Any] = next(iter(data["csat_total"]), {})
    tiles.append(("CSAT", f"{_num(csat.get('avg_rating')):.2f} / 5" if csat else "–",
                  f"{_pct(csat.get('satisfied_share'))} rated 4–5"))
    backlog = sum(_num(r["requests"]) for r in data["backlog"])
    overdue = sum(_num(r["overdue"]) for r in data["backlog"])
    tiles.append(("Service backlog", f"{backlog:.0f}", f"{overdue:.0f} past target"))
    for r in data["aov"]:
        tiles.append((f"Average order ({r['currency']})", _fmt(r["average_order_value"]),
                      f"{r['orders']} orders"))
    for r in data["repeat"]:
        tiles.append((f"Repeat purchase ({r['currency']})", _pct(r["repeat_purchase_rate_orders"]),
                      f"{r['repeat_buyers_orders']} of {r['buyers']} buyers ordered twice or more; "
                      f"{r['repeat_buyers_days']} on two days or more"))
    churn = [r for r in data["churn"] if r.get("churn_rate") is not None]
    if churn:
        last = churn[-1]
        tiles.append(("Churn rate", _pct(last["churn_rate"]), f"in {_month(last['period'])}"))
    for cur, entry in data["clv"]["currencies"].items():
        if "total_clv" in entry:
            tiles.append((f"Lifetime value ({cur})", _fmt(entry["mean_clv"]),
                          f"mean per buyer, next {data['clv']['horizon_weeks']:.0f} weeks "
                          f"from {data['clv']['as_of'][:10]}"))

    charts: list[tuple[str, str, str]] = []
    pbs = data["pipeline_by_stage"]
    cur = _main_currency(pbs, "amount")
    if cur:
        rows = [r for r in pbs if r["currency"] == cur]
        charts.append(("Pipeline by stage", bar_chart(
            [f"{r['stage']}" + (f" ({r['pipeline']})" if r["pipeline"] != "default" else "")
             for r in rows],
            {"amount": [_num(r["amount"]) for r in rows],
             "weighted": [_num(r["weighted_amount"]) for r in rows]},
            title=f"Open pipeline by stage, {cur}", horizontal=True, height=60 + 30 * len(rows)),
            "Open opportunities' amount and probability-weighted amount per stage."))
    funnel = data["funnel"]
    if funnel:
        main = max({r["pipeline"] for r in funnel},
                   key=lambda p: sum(_num(r["reached"]) for r in funnel if r["pipeline"] == p))
        rows = [r for r in funnel if r["pipeline"] == main]
        charts.append(("Funnel", bar_chart(
            [r["stage"] for r in rows], {"reached": [_num(r["reached"]) for r in rows]},
            title=f"Opportunities reaching each stage, {main} pipeline",
            horizontal=True, height=60 + 30 * len(rows), colours=["#7c3aed"]),
            "Every opportunity opened, counted at the furthest stage it reached and all "
            "stages before it; won is the last step."))
    fw, fh = data["forecast_weighted"], data["forecast_historical"]
    cur = _main_currency(fw, "pipeline_amount")
    if cur:
        months = sorted({_month(r["close_month"]) for r in fw if r["currency"] == cur})
        w = {_month(r["close_month"]): _num(r["weighted_amount"]) for r in fw if r["currency"] == cur}
        h = {_month(r["close_month"]): _num(r["expected_amount"]) for r in fh if r["currency"] == cur}
        charts.append(("Forecast", bar_chart(
            months, {"stage probability": [w.get(m, 0.0) for m in months],
                     "historical win rate": [h.get(m, 0.0) for m in months]},
            title=f"Forecast by expected close month, {cur}"),
            "Open pipeline weighted by each stage's probability, and by the share of past "
            "deals won from the stage each deal is in."))
    sm = data["sla_by_month"]
    if sm:
        charts.append(("SLA", line_chart(
            [_month(r["period"]) for r in sm],
            {"first response met": [None if r["first_response_compliance"] is None
                                    else _num(r["first_response_compliance"]) * 100 for r in sm],
             "resolution met": [None if r["resolution_compliance"] is None
                                else _num(r["resolution_compliance"]) * 100 for r in sm]},
            title="SLA compliance by month opened (%)", y_max=100.0, y_format="{:.0f}"),
            "Share of service requests that met their first-response and resolution targets."))
    cm = data["csat_by_month"]
    if cm:
        charts.append(("CSAT", line_chart(
            [_month(r["period"]) for r in cm], {"average rating": [_num(r["avg_rating"]) for r in cm]},
            title="Customer satisfaction by month (1-5)", y_max=5.0),
            "Average satisfaction rating of resolved requests, by month rated."))
    cl = data["classes"]
    if cl:
        charts.append(("Customer classes", bar_chart(
            [r["customer_class"] for r in cl],
            {"customers": [_num(r["customers"]) for r in cl]},
            title="Customers by RFM class", colours=["#2563eb"]),
            f"Recency, frequency (orders) and monetary scores from purchases and activity, "
            f"as of {data['clv']['as_of'][:16]} UTC."))
        # each class's bar in its own colour
        charts[-1] = (charts[-1][0], _recolour(charts[-1][1], [r["customer_class"] for r in cl]),
                      charts[-1][2])

    tile_html = "".join(f'<div class="tile"><div class="tl">{e(t)}</div><div class="tv">{e(v)}'
                        f'</div><div class="ts">{e(s)}</div></div>' for t, v, s in tiles)
    chart_html = "".join(f'<section class="chart"><h2>{e(t)}</h2>{svg}<p>{e(note)}</p></section>'
                         for t, svg, note in charts)
    tables = [
        ("Win rate by owner", _table(data["win_rate_by_owner"], [
            ("pipeline", "pipeline", "text"), ("owner_id", "owner", "text"), ("won", "won", "num"),
            ("lost", "lost", "num"), ("win_rate", "win rate", "pct")])),
        ("Time in stage", _table(data["time_in_stage"], [
            ("pipeline", "pipeline", "text"), ("stage", "stage", "text"),
            ("spells", "stays", "num"), ("avg_days", "avg days", "hours"),
            ("median_days", "median days", "hours")])),
        ("Service backlog", _table(data["backlog"], [
            ("priority", "priority", "text"), ("status", "status", "text"),
            ("requests", "requests", "num"), ("overdue", "past target", "num"),
            ("oldest_hours", "oldest (h)", "hours")])),
        ("CSAT by agent", _table(data["csat_by_agent"], [
            ("agent_id", "agent", "text"), ("ratings", "ratings", "num"),
            ("avg_rating", "average", "hours"), ("satisfied_share", "rated 4-5", "pct")])),
        ("Lifetime value model", _table([
            {"currency": c, "customers": v.get("customers_fitted") or v.get("customers"),
             "total": v.get("total_clv"),
             "mean": v.get("mean_clv"), "note": v.get("error", "BG/NBD + Gamma-Gamma")}
            for c, v in data["clv"]["currencies"].items()], [
            ("currency", "currency", "text"), ("customers", "buyers", "num"),
            ("total", "total CLV", "money"), ("mean", "mean CLV", "money"),
            ("note", "model", "text")])),
    ]
    table_html = "".join(f'<section class="tbl"><h2>{e(t)}</h2>{h}</section>' for t, h in tables)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CRM analytics report</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f1f5f9;color:#0f172a}}
header{{background:#0f172a;color:#f8fafc;padding:20px 32px}}
header h1{{margin:0;font-size:22px}} header p{{margin:4px 0 0;color:#cbd5e1;font-size:13px}}
main{{padding:20px 32px}}
.tiles{{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}}
.tile{{background:#fff;border-radius:10px;padding:12px 14px;box-shadow:0 1px 2px #0001}}
.tl{{font-size:12px;color:#475569}} .tv{{font-size:24px;font-weight:650;margin:4px 0}}
.ts{{font-size:11px;color:#64748b}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(580px,1fr));gap:14px;margin-top:16px}}
.chart,.tbl{{background:#fff;border-radius:10px;padding:10px 14px;box-shadow:0 1px 2px #0001}}
h2{{font-size:15px;margin:6px 0}} p{{font-size:12px;color:#475569;margin:4px 0}}
svg .ct{{font-size:13px;font-weight:600;fill:#0f172a}} svg .lb{{font-size:11px;fill:#475569}}
svg .vl{{font-size:10px;fill:#334155}} svg .ax{{stroke:#94a3b8}} svg .gr{{stroke:#e2e8f0}}
table{{border-collapse:collapse;font-size:12px;width:100%}}
th,td{{padding:4px 8px;border-bottom:1px solid #e2e8f0;text-align:left}} td.n{{text-align:right}}
</style></head><body>
<header><h1>CRM analytics</h1>
<p>As of {e(str(data['as_of'])[:16])} (latest event; customer classes and lifetime value
as of {e(data['clv']['as_of'][:16])} UTC, purchases after it ignored) · log position {data['position']:,} ·
{data['events']:,} events · {data['customers']:,} customers · generated {generated} ·
money per currency, never summed across currencies</p></header>
<main><div class="tiles">{tile_html}</div>
<div class="grid">{chart_html}</div>
<div class="grid">{table_html}</div></main></body></html>
"""


def _recolour(svg: str, classes: list[str]) -> str:
    """Give each bar of the class chart its class's colour (bars appear in label order)."""
    out, rest = [], svg
    for name in classes:
        i = rest.find('fill="#2563eb" rx="2">')
        if i < 0:
            break
        out.append(rest[:i] + f'fill="{CLASS_COLOURS.get(name, "#64748b")}" rx="2">')
        rest = rest[i + len('fill="#2563eb" rx="2">'):]
    return "".join(out) + rest
