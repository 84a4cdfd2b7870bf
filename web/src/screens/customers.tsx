// The customer list: search as you type, filters, sort, endless scrolling on the API's cursors.
import { useEffect, useRef, useState } from "preact/hooks";
import { get, type Page, type Schemas, type Session } from "../api";
import { locale, moneyMap, relative, t, v } from "../i18n";
import { knownPeople, peopleVersion, person } from "../people";
import { masked } from "../roles";
import { navigate, useRoute } from "../router";
import { useSignal } from "../signal";
import { count, ErrorBox, Link, Loading, txt, useDebounced } from "../ui";

/** A row of GET /customers (masked values are "***"). */
export type CustomerRow = Schemas["Customer"];

export const LIFECYCLE = ["lead", "prospect", "customer", "churned"];
export const SEGMENTS = ["high_value", "potential", "at_risk", "standard"];

export function CustomerList({ session }: { session: Session }) {
  useSignal(locale);
  useSignal(peopleVersion);
  const { query } = useRoute();
  const personal = !masked(session.user.role);
  const [q, setQ] = useState(query.get("q") ?? "");
  const [stage, setStage] = useState(query.get("lifecycle_stage") ?? "");
  const [segment, setSegment] = useState(query.get("segment") ?? "");
  const [owner, setOwner] = useState(query.get("owner") ?? "");
  const [sort, setSort] = useState(query.get("sort") ?? "-last_activity_at");
  const term = useDebounced(q.trim(), 250);
  const [rows, setRows] = useState<CustomerRow[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [total, setTotal] = useState<number | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<unknown>(null);
  const generation = useRef(0);
  const sentinel = useRef<HTMLDivElement>(null);

  const params = {
    q: personal ? term : "",
    lifecycle_stage: stage,
    segment,
    owner_id: owner === "mine" ? session.user.id : owner,
    sort,
  };
  const key = JSON.stringify(params);

  async function fetchPage(after: string | null) {
    const gen = after ? generation.current : ++generation.current;
    setLoading(true);
    setError(null);
    try {
      const page = await get<Page<CustomerRow>>("/customers", {
        ...params, limit: 30, cursor: after, include_total: after ? null : true,
      });
      if (gen !== generation.current) return; // a newer search started meanwhile
      setRows((old) => (after ? [...old, ...page.items] : page.items));
      setCursor(page.next_cursor);
      if (!after) setTotal(page.total);
    } catch (e) {
      if (gen === generation.current) setError(e);
    } finally {
      if (gen === generation.current) setLoading(false);
    }
  }

  useEffect(() => {
    // Keep the filters in the address, so back and reload return to the same list.
    const p = new URLSearchParams();
    if (q.trim()) p.set("q", q.trim());
    if (stage) p.set("lifecycle_stage", stage);
    if (segment) p.set("segment", segment);
    if (owner) p.set("owner", owner);
    if (sort !== "-last_activity_at") p.set("sort", sort);
    const s = p.toString();
    history.replaceState(null, "", `/customers${s ? `?${s}` : ""}`);
    void fetchPage(null);
  }, [key]);

  // Endless scrolling: the next page loads when the end of the list comes into view.
  useEffect(() => {
    const el = sentinel.current;
    if (!el || !cursor) return;
    const io = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && !loading) void fetchPage(cursor);
    }, { rootMargin: "200px" });
    io.observe(el);
    return () => io.disconnect();
  }, [cursor, loading]);

  return (
    <section class="customers">
      <div class="page-head">
        <h1>{t("customers")}</h1>
        {total !== null && <span class="muted" data-testid="total">{count(total, "result", "results")}</span>}
      </div>
      <div class="filters">
        {personal && (
          <label class="grow">
            <span class="sr-only">{t("search")}</span>
            <input
              type="search"
              data-testid="customer-search"
              placeholder={t("searchPlaceholder")}
              value={q}
              onInput={(e) => setQ(e.currentTarget.value)}
            />
          </label>
        )}
        <label>
          <span>{t("lifecycle")}</span>
          <select value={stage} onChange={(e) => setStage(e.currentTarget.value)} data-testid="filter-stage">
            <option value="">{t("any")}</option>
            {LIFECYCLE.map((s) => <option key={s} value={s}>{v(s)}</option>)}
          </select>
        </label>
        <label>
          <span>{t("segment")}</span>
          <select value={segment} onChange={(e) => setSegment(e.currentTarget.value)}>
            <option value="">{t("any")}</option>
            {SEGMENTS.map((s) => <option key={s} value={s}>{v(s)}</option>)}
          </select>
        </label>
        <label>
          <span>{t("owner")}</span>
          <select value={owner} onChange={(e) => setOwner(e.currentTarget.value)}>
            <option value="">{t("any")}</option>
            <option value="mine">{t("mine")}</option>
            {knownPeople(["sales_rep", "manager", "admin"]).filter(([id]) => id !== session.user.id).map(([id, name]) => (
              <option key={id} value={id}>{name}</option>
            ))}
          </select>
        </label>
        <label>
          <span>{t("sort")}</span>
          <select value={sort} onChange={(e) => setSort(e.currentTarget.value)}>
            <option value="-last_activity_at">{t("lastActivity")} ↓</option>
            <option value="last_activity_at">{t("lastActivity")} ↑</option>
            <option value="-created_at">{t("created")} ↓</option>
            <option value="created_at">{t("created")} ↑</option>
            {personal && <option value="name">{t("name")} A–Z</option>}
            {personal && <option value="-name">{t("name")} Z–A</option>}
          </select>
        </label>
      </div>
      {!personal && <p class="muted">{t("personalMasked")}</p>}
      {error ? <ErrorBox error={error} onRetry={() => fetchPage(null)} /> : null}
      <table class="list customer-table" data-testid="customer-list">
        <thead>
          <tr>
            <th>{t("name")}</th>
            <th>{t("lifecycle")}</th>
            <th>{t("segment")}</th>
            <th>{t("owner")}</th>
            <th>{t("openPipeline")}</th>
            <th>{t("lastActivity")}</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((c) => (
            <tr key={c.id} onClick={() => navigate(`/customers/${c.id}`)} class="clickable">
              <td data-label={t("name")}>
                <Link href={`/customers/${c.id}`} class="strong">{txt(c.name)}</Link>
                <div class="muted small">{c.emails[0] ?? c.phones[0] ? txt(c.emails[0] ?? c.phones[0]) : ""}</div>
              </td>
              <td data-label={t("lifecycle")}><span class={`badge stage-${c.lifecycle_stage}`}>{v(c.lifecycle_stage)}</span></td>
              <td data-label={t("segment")}>{v(c.segment)}</td>
              <td data-label={t("owner")} title={c.owner_id ?? ""}>{person(c.owner_id)}</td>
              <td data-label={t("openPipeline")} class="num">{moneyMap(c.open_pipeline)}</td>
              <td data-label={t("lastActivity")}>{relative(c.last_activity_at)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {!loading && !error && rows.length === 0 && <p class="empty">{t("noResults")}</p>}
      {loading && <Loading />}
      {cursor && !loading && (
        <button type="button" class="more" onClick={() => fetchPage(cursor)}>{t("loadMore")}</button>
      )}
      <div ref={sentinel} class="sentinel" />
    </section>
  );
}
