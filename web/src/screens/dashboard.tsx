// The analytics KPIs as charts: pipeline, forecast, funnel, SLA, CSAT and customer classes.
import { useState } from "preact/hooks";
import { get } from "../api";
import { Columns, HBars } from "../charts";
import { compactMoney, locale, monthLabel, number, percent, t, v } from "../i18n";
import { useSignal } from "../signal";
import { Show, useLoad } from "../ui";

type Row = Record<string, string | number | null>;
interface Kpi {
  rows: Row[];
}

const KPIS = ["pipeline_by_stage", "forecast_weighted", "funnel", "sla", "csat", "customer_classes"] as const;
type KpiName = (typeof KPIS)[number];

const num = (x: string | number | null | undefined) => (x === null || x === undefined ? 0 : Number(x));

export function Dashboard() {
  useSignal(locale);
  const [currency, setCurrency] = useState("EUR");
  const [pipeline, setPipeline] = useState("default");
  const state = useLoad(async (signal) => {
    const answers = await Promise.all(KPIS.map((k) => get<Kpi>(`/analytics/kpis/${k}`, {}, signal)));
    return Object.fromEntries(KPIS.map((k, i) => [k, answers[i].rows])) as Record<KpiName, Row[]>;
  }, []);

  return (
    <section class="dashboard">
      <div class="page-head">
        <h1>{t("dashboard")}</h1>
        <div class="filters">
          <label>
            <span>{t("pipelineName")}</span>
            <select value={pipeline} onChange={(e) => setPipeline(e.currentTarget.value)}>
              <option value="default">{v("default")}</option>
              <option value="renewal">{v("renewal")}</option>
            </select>
          </label>
          <label>
            <span>{t("currency")}</span>
            <select value={currency} onChange={(e) => setCurrency(e.currentTarget.value)} data-testid="currency">
              {["EUR", "USD", "GBP", "CNY"].map((c) => <option key={c} value={c}>{c}</option>)}
            </select>
          </label>
        </div>
      </div>
      <Show state={state}>
        {(k) => {
          const stages = k.pipeline_by_stage.filter((r) => r.pipeline === pipeline && r.currency === currency)
            .sort((a, b) => num(a.stage_order) - num(b.stage_order));
          const forecast = k.forecast_weighted.filter((r) => r.currency === currency && r.close_month)
            .sort((a, b) => String(a.close_month).localeCompare(String(b.close_month)));
          // The funnel over every month: sum of opportunities that reached each stage.
          const funnel = new Map<string, { order: number; reached: number }>();
          for (const r of k.funnel.filter((r) => r.pipeline === pipeline)) {
            const e = funnel.get(String(r.stage)) ?? { order: num(r.stage_order), reached: 0 };
            e.reached += num(r.reached);
            funnel.set(String(r.stage), e);
          }
          const funnelBars = [...funnel.entries()].sort((a, b) => a[1].order - b[1].order);
          const start = funnelBars[0]?.[1].reached || 1;
          // Compliance by month opened (the KPI's rows per period over every priority).
          const sla = k.sla.filter((r) => r.period !== null && r.priority === null)
            .sort((a, b) => String(a.period).localeCompare(String(b.period)));
          const slaAll = k.sla.find((r) => r.period === null && r.priority === null);
          const csatAll = k.csat.find((r) => r.period === null && r.agent_id === null && r.channel === null && r.request_type === null);
          const csatTypes = k.csat.filter((r) => r.period === null && r.agent_id === null && r.channel === null && r.request_type !== null);
          return (
            <div class="dash-grid">
              <section class="card" data-testid="kpi-pipeline">
                <h2>{t("kpiPipeline")}</h2>
                <HBars
                  title={t("kpiPipeline")}
                  bars={stages.map((r) => ({
                    label: v(String(r.stage)), value: num(r.amount), inner: num(r.weighted_amount),
                    text: `${compactMoney(num(r.amount), currency)} (${number(num(r.opportunities))})`,
                  }))}
                />
                <p class="legend"><span><i class="swatch s0" />{t("total")}</span><span><i class="swatch inner" />{t("weighted")}</span></p>
              </section>
              <section class="card">
                <h2>{t("kpiForecast")}</h2>
                <Columns
                  title={t("kpiForecast")}
                  labels={forecast.map((r) => monthLabel(String(r.close_month)))}
                  series={[
                    { name: t("total"), values: forecast.map((r) => num(r.pipeline_amount)) },
                    { name: t("weighted"), values: forecast.map((r) => num(r.weighted_amount)) },
                  ]}
                  format={(n) => compactMoney(n, currency)}
                />
              </section>
              <section class="card">
                <h2>{t("kpiFunnel")}</h2>
                <HBars
                  title={t("kpiFunnel")}
                  bars={funnelBars.map(([stage, e]) => ({
                    label: v(stage), value: e.reached, text: `${number(e.reached)} · ${percent(e.reached / start)}`,
                  }))}
                />
              </section>
              <section class="card">
                <h2>{t("kpiSla")}</h2>
                {slaAll && (
                  <p class="big">
                    {percent(num(slaAll.first_response_compliance))} / {percent(num(slaAll.resolution_compliance))}
                    <span class="muted small"> · {number(num(slaAll.requests))}</span>
                  </p>
                )}
                <Columns
                  title={t("kpiSla")}
                  labels={sla.map((r) => monthLabel(String(r.period)))}
                  series={[
                    { name: t("firstResponse"), values: sla.map((r) => num(r.first_response_compliance) * 100) },
                    { name: t("resolution"), values: sla.map((r) => num(r.resolution_compliance) * 100) },
                  ]}
                  format={(n) => percent(n / 100)}
                />
              </section>
              <section class="card">
                <h2>{t("kpiCsat")}</h2>
                {csatAll && (
                  <p class="big">
                    {number(num(csatAll.avg_rating), 2)} / 5
                    <span class="muted small"> · {percent(num(csatAll.satisfied_share))} 4–5 · {number(num(csatAll.ratings))}</span>
                  </p>
                )}
                <HBars
                  title={t("kpiCsat")}
                  bars={csatTypes.map((r) => ({ label: v(String(r.request_type)), value: num(r.avg_rating), text: number(num(r.avg_rating), 2) }))}
                />
              </section>
              <section class="card">
                <h2>{t("kpiSegments")}</h2>
                <HBars
                  title={t("kpiSegments")}
                  bars={k.customer_classes.map((r) => ({
                    label: v(String(r.customer_class).replace("-", "_")), value: num(r.customers), text: number(num(r.customers)),
                  }))}
                />
              </section>
            </div>
          );
        }}
      </Show>
    </section>
  );
}
