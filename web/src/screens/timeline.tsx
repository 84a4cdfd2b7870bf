// The activity timeline of a customer: who changed what, when and why, with field diffs.
import { useEffect, useState } from "preact/hooks";
import { get } from "../api";
import { dateTime, locale, t, v } from "../i18n";
import { person } from "../people";
import { useSignal } from "../signal";
import { ErrorBox, Loading } from "../ui";

export interface Change {
  field: string;
  before: unknown;
  after: unknown;
}

export interface TimelineEntry {
  position: number;
  event_id: string;
  type: string;
  aggregate_type: string;
  aggregate_id: string;
  aggregate_version: number;
  occurred_at: string;
  recorded_at: string;
  actor_id: string;
  actor_role: string;
  reason: string | null;
  data: Record<string, unknown>;
  changes: Change[] | null;
}

/** An ISO 8601 time as the API writes it (e.g. 2026-12-04T12:09:36.404673+00:00). */
export const ISO_TIME = /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})/g;

/** A text with the ISO times in it written in the user's locale. */
export function withLocalTimes(text: string): string {
  return text.replace(ISO_TIME, (m) => dateTime(m));
}

/** A short human form of a value in a diff. */
export function show(value: unknown): string {
  if (value === null || value === undefined) return "—";
  if (typeof value === "string") return withLocalTimes(value);
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (Array.isArray(value)) return value.map(show).join(", ");
  if (typeof value === "object") {
    const o = value as Record<string, unknown>;
    if ("value" in o && "kind" in o) return `${o.kind}: ${o.value}`;
    const entries = Object.entries(o);
    if (entries.length === 0) return "∅";
    return entries.map(([k, x]) => `${k}: ${show(x)}`).join("; ");
  }
  return String(value);
}

const PEOPLE_FIELDS = new Set(["owner_id", "assignee_id", "manager_id", "author_id"]);

/** A value in a diff; user ids by name where the caller may know it. */
export function showField(field: string, value: unknown): string {
  return PEOPLE_FIELDS.has(field) && typeof value === "string" ? person(value) : show(value);
}

/** "CustomerDetailsChanged" -> "Customer details changed" ("Sla" -> "SLA"). */
export function eventLabel(type: string): string {
  const words = type.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase().replace(/\bsla\b/g, "SLA");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export function Diff({ changes }: { changes: Change[] }) {
  if (!changes.length) return null;
  return (
    <table class="diff">
      <thead>
        <tr>
          <th>{t("field")}</th>
          <th>{t("before")}</th>
          <th>{t("after")}</th>
        </tr>
      </thead>
      <tbody>
        {changes.map((c) => (
          <tr key={c.field}>
            <td class="field">{c.field}</td>
            <td class="before">{showField(c.field, c.before)}</td>
            <td class="after">{showField(c.field, c.after)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function TimelineEntries({ items }: { items: TimelineEntry[] }) {
  useSignal(locale);
  return (
    <ol class="timeline" data-testid="timeline">
      {items.map((e) => (
        <li key={e.event_id} class={`tl-${e.aggregate_type}`}>
          <div class="tl-head">
            <strong class="tl-type">{eventLabel(e.type)}</strong>
            <span class="muted">
              {dateTime(e.occurred_at)} · {t("by")} <span class="actor" title={e.actor_id}>{person(e.actor_id)}</span> ({v(e.actor_role)})
            </span>
          </div>
          {e.reason && <div class="tl-reason">“{e.reason}”</div>}
          {e.recorded_at.slice(0, 16) !== e.occurred_at.slice(0, 16) && (
            <div class="muted small">{t("recorded", { when: dateTime(e.recorded_at) })}</div>
          )}
          {e.changes && <Diff changes={e.changes.filter((c) => !c.field.startsWith("modified_on") && !c.field.startsWith("created_on"))} />}
        </li>
      ))}
    </ol>
  );
}

/** A page of the timeline, newest first: `next_before` pages back to older events. */
interface TimelinePage {
  items: TimelineEntry[];
  next_before: number | null;
}

export const TIMELINE_PAGE = 50;

/** The customer's timeline, newest first, a page at a time ("show older" loads the next). */
export function Timeline({ customerId, version }: { customerId: string; version: unknown }) {
  useSignal(locale);
  const [items, setItems] = useState<TimelineEntry[]>([]);
  const [before, setBefore] = useState<number | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<unknown>(null);
  const [tick, setTick] = useState(0);

  async function load(from: number | null, signal?: AbortSignal) {
    setLoading(true);
    setError(null);
    try {
      const page = await get<TimelinePage>(
        `/customers/${customerId}/timeline`, { order: "newest", limit: TIMELINE_PAGE, before: from }, signal,
      );
      if (signal?.aborted) return;
      setItems((old) => (from === null ? page.items : [...old, ...page.items]));
      setBefore(page.next_before);
    } catch (e) {
      if (!signal?.aborted) setError(e);
    } finally {
      if (!signal?.aborted) setLoading(false);
    }
  }
  useEffect(() => {
    const ctrl = new AbortController();
    void load(null, ctrl.signal);
    return () => ctrl.abort();
  }, [customerId, version, tick]);

  return (
    <div class="timeline-pages">
      {error ? <ErrorBox error={error} onRetry={() => (items.length ? load(before) : setTick((n) => n + 1))} /> : null}
      {items.length > 0 && <TimelineEntries items={items} />}
      {!loading && !error && items.length === 0 && <p class="empty">{t("noResults")}</p>}
      {loading && <Loading />}
      {before !== null && !loading && (
        <button type="button" class="more" data-testid="timeline-older" onClick={() => load(before)}>
          {t("showOlder")}
        </button>
      )}
    </div>
  );
}
