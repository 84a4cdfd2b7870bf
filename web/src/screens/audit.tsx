// The audit view: a customer's history with field diffs, the record as of any date
// (``as_of``, rebuilt from the events), and the signed audit export.
import { useEffect, useState } from "preact/hooks";
import { ApiError, download, get, type Page, type Schemas, type Session } from "../api";
import { dateTime, locale, t, v } from "../i18n";
import { person } from "../people";
import { canAuditExport, masked } from "../roles";
import { navigate } from "../router";
import { useSignal } from "../signal";
import { ErrorBox, Link, Loading, Show, toast, txt, useAction, useDebounced, useLoad } from "../ui";
import type { CustomerRow } from "./customers";
import { Diff, TimelineEntries, fieldLabel, showField, type Change, type TimelineEntry } from "./timeline";

/** GET /customers/{id}/current, or rebuilt as of a time. */
type RecordView = Schemas["RecordOut"];

const HIDDEN = new Set(["created_on", "modified_on", "personal_data_erased"]);

function CustomerPicker({ session }: { session: Session }) {
  const [q, setQ] = useState("");
  const term = useDebounced(q.trim(), 250);
  const personal = !masked(session.user.role);
  const list = useLoad(
    (signal) => get<Page<CustomerRow>>("/customers", { q: personal ? term : "", limit: 20 }, signal),
    [term],
  );
  return (
    <section>
      <h1>{t("audit")}</h1>
      <p>{t("chooseCustomer")}</p>
      {personal && (
        <input type="search" placeholder={t("searchPlaceholder")} value={q} onInput={(e) => setQ(e.currentTarget.value)} data-testid="audit-search" />
      )}
      <Show state={list}>
        {(page) => (
          <ul class="rows picker">
            {page.items.map((c) => (
              <li key={c.id}>
                <Link href={`/audit/${c.id}`} class="strong">{txt(c.name)}</Link>
                <span class="muted small">{v(c.lifecycle_stage)} · {person(c.owner_id)}</span>
              </li>
            ))}
          </ul>
        )}
      </Show>
    </section>
  );
}

/** datetime-local value (local time, minutes) of an epoch ms. */
function localInput(ms: number): string {
  const d = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function changesBetween(then: Record<string, unknown>, now: Record<string, unknown>): Change[] {
  const out: Change[] = [];
  for (const key of new Set([...Object.keys(then), ...Object.keys(now)])) {
    if (HIDDEN.has(key)) continue;
    if (JSON.stringify(then[key] ?? null) !== JSON.stringify(now[key] ?? null)) {
      out.push({ field: key, before: then[key] ?? null, after: now[key] ?? null });
    }
  }
  return out;
}

function AsOf({ id, start }: { id: string; start: number }) {
  useSignal(locale);
  const end = Date.now();
  const [at, setAt] = useState(end);
  const when = useDebounced(at, 200);
  const [record, setRecord] = useState<RecordView | null | undefined>(undefined);
  const [current, setCurrent] = useState<RecordView | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    get<RecordView>(`/customers/${id}/current`).then(setCurrent, setError);
  }, [id]);
  useEffect(() => {
    const ctrl = new AbortController();
    setError(null);
    get<RecordView>(`/customers/${id}`, { as_of: new Date(when).toISOString() }, ctrl.signal).then(
      (r) => setRecord(r),
      (e) => {
        if (e instanceof ApiError && e.status === 404) setRecord(null);
        else if (!(e instanceof DOMException)) setError(e);
      },
    );
    return () => ctrl.abort();
  }, [id, when]);
  const day = 86_400_000;
  const steps = Math.max(1, Math.ceil((end - start) / day));
  return (
    <section class="card as-of" data-testid="as-of" data-as-of={new Date(when).toISOString()}>
      <h2>{t("recordAsOf", { when: dateTime(new Date(when).toISOString()) })}</h2>
      <div class="as-of-controls">
        <input
          type="range"
          min={0}
          max={steps}
          value={Math.round((at - start) / day)}
          aria-label={t("asOf")}
          data-testid="as-of-slider"
          onInput={(e) => {
            const n = Number(e.currentTarget.value);
            setAt(n >= steps ? end : start + n * day);
          }}
        />
        <input
          type="datetime-local"
          value={localInput(at)}
          aria-label={t("asOf")}
          data-testid="as-of-input"
          onChange={(e) => {
            const ms = new Date(e.currentTarget.value).getTime();
            if (!Number.isNaN(ms)) setAt(ms);
          }}
        />
        <button type="button" onClick={() => setAt(Date.now())}>{t("now")}</button>
      </div>
      {error ? <ErrorBox error={error} /> : null}
      {record === undefined ? <Loading /> : record === null ? (
        <p class="empty" data-testid="as-of-missing">{t("didNotExist")}</p>
      ) : (
        <>
          <p class="muted small">{t("version")} <span data-testid="as-of-version">{record.version}</span></p>
          <dl class="details" data-testid="as-of-record">
            {Object.entries(record.data).filter(([k]) => !HIDDEN.has(k)).map(([k, val]) => (
              <div key={k}>
                <dt title={k}>{fieldLabel(k)}</dt>
                <dd data-field={k}>{showField(k, val)}</dd>
              </div>
            ))}
          </dl>
          {current && current.version !== record.version && (
            <>
              <h3>{t("now")} ({t("version")} {current.version})</h3>
              <Diff changes={changesBetween(record.data, current.data)} />
            </>
          )}
        </>
      )}
    </section>
  );
}

function AuditCustomer({ id, session }: { id: string; session: Session }) {
  useSignal(locale);
  const timeline = useLoad(
    async (signal) => (await get<{ items: TimelineEntry[] }>(`/customers/${id}/timeline`, { limit: 1000 }, signal)).items,
    [id],
  );
  const record = useLoad((signal) => get<CustomerRow>(`/customers/${id}`, {}, signal), [id]);
  const [busy, run] = useAction();
  return (
    <section class="audit">
      <div class="page-head">
        <div>
          <Link href="/audit" class="muted small">← {t("audit")}</Link>
          <h1>{t("audit")}: <Link href={`/customers/${id}`}>{record.data?.name ? txt(record.data.name) : id.slice(0, 8)}</Link></h1>
        </div>
        {canAuditExport(session.user.role) && (
          <button
            type="button"
            class="primary"
            disabled={busy}
            data-testid="audit-export"
            onClick={() => run(async () => {
              await download(`/customers/${id}/audit-export`, `audit-${id}.zip`);
              toast(t("exported"));
              timeline.reload();
            })}
          >
            ⤓ {t("exportAudit")}
          </button>
        )}
      </div>
      <Show state={timeline}>
        {(items) => (
          <div class="columns">
            <div class="main-col">
              <AsOf id={id} start={items.length ? new Date(items[0].occurred_at).getTime() - 86_400_000 : Date.now() - 365 * 86_400_000} />
            </div>
            <aside class="side-col card">
              <h2>{t("history")}</h2>
              <TimelineEntries items={items.slice().reverse()} />
            </aside>
          </div>
        )}
      </Show>
    </section>
  );
}

export function AuditScreen({ session, id }: { session: Session; id?: string }) {
  useEffect(() => {
    if (id && !/^[0-9a-f-]{36}$/i.test(id)) navigate("/audit", true);
  }, [id]);
  return id ? <AuditCustomer id={id} session={session} /> : <CustomerPicker session={session} />;
}
