// One customer: details and contacts (editable, with conflict handling), lifecycle and
// segment, opportunities, service requests, tasks, purchases and the activity timeline.
import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, get, write, type Page, type Schemas, type Session } from "../api";
import { date, dateTime, locale, money, moneyMap, relative, t, v } from "../i18n";
import { person } from "../people";
import { can, canRead, screensFor, type Screen } from "../roles";
import { useSignal } from "../signal";
import { FieldError, Link, Loading, problemField, Show, toast, toastError, txt, useAction, useLoad } from "../ui";
import type { CustomerRow } from "./customers";
import { LIFECYCLE, SEGMENTS } from "./customers";
import { Timeline, show } from "./timeline";

/** GET /customers/{id}: the read model's row. */
export type Customer = CustomerRow;

/** An item of GET /customers/{id}/events. */
type EventItem = Schemas["StoredEventOut"];

const DETAIL_FIELDS = ["name", "industry", "country", "preferred_language", "source"] as const;
type DetailField = (typeof DETAIL_FIELDS)[number];
type Details = Record<DetailField, string>;
const DETAIL_LABEL = {
  name: "name", industry: "industry", country: "country", preferred_language: "preferredLanguage", source: "source",
} as const;
const TRANSITIONS: Record<string, string[]> = {
  lead: ["prospect", "customer"], prospect: ["lead", "customer"], customer: ["churned"], churned: ["customer", "prospect"],
};

function detailsOf(c: Record<string, unknown>): Details {
  const out = {} as Details;
  for (const f of DETAIL_FIELDS) out[f] = (c[f] as string | null) ?? "";
  return out;
}

function changedFields(base: Details, edited: Details): Partial<Details> {
  const out: Partial<Details> = {};
  for (const f of DETAIL_FIELDS) if (edited[f].trim() !== base[f]) out[f] = edited[f].trim();
  return out;
}

interface Conflict {
  loadedVersion: number;
  currentVersion: number;
  current: Details;
  events: EventItem[];
}

function DetailsEditor({ customer, onSaved }: { customer: Customer; onSaved: () => void }) {
  // What the user loaded: the base of their edit, kept until they save or discard.
  const [base, setBase] = useState<{ version: number; details: Details }>({
    version: customer.version, details: detailsOf(customer as unknown as Record<string, unknown>),
  });
  const [form, setForm] = useState<Details>(base.details);
  const [reason, setReason] = useState("");
  const [conflict, setConflict] = useState<Conflict | null>(null);
  // A refused value is shown next to its field, in words (not as a toast).
  const [fieldError, setFieldError] = useState<unknown>(null);
  const [busy, run] = useAction(undefined, (e) => {
    const f = problemField(e);
    if (!f || !(DETAIL_FIELDS as readonly string[]).includes(f)) return false;
    setFieldError(e);
    return true;
  });
  const changes = changedFields(base.details, form);

  async function save(version: number) {
    if (!Object.keys(changes).length) {
      toast(t("nothingChanged"));
      return;
    }
    const body: Record<string, unknown> = {};
    for (const [k, val] of Object.entries(changes)) body[k] = val === "" ? null : val;
    if (reason.trim()) body.reason = reason.trim();
    try {
      await write(`/customers/${customer.id}`, body, version, "PATCH");
      setFieldError(null);
      setConflict(null);
      setReason("");
      toast(t("saved"));
      onSaved();
    } catch (e) {
      if (e instanceof ApiError && e.status === 409 && e.field === "If-Match") {
        // Someone saved first: show what changed since our version, from the event store.
        const current = await get<{ version: number; data: Record<string, unknown> }>(`/customers/${customer.id}/current`);
        const events = await get<{ items: EventItem[] }>(`/customers/${customer.id}/events`, { after_version: base.version });
        setConflict({
          loadedVersion: base.version, currentVersion: current.version,
          current: detailsOf(current.data), events: events.items,
        });
        return;
      }
      throw e;
    }
  }

  function reapply() {
    if (!conflict) return;
    // The user's changes on top of the current record: the new base is what is there now.
    setBase({ version: conflict.currentVersion, details: conflict.current });
    void run(async () => {
      const body: Record<string, unknown> = {};
      for (const [k, val] of Object.entries(changes)) body[k] = val === "" ? null : val;
      if (reason.trim()) body.reason = reason.trim();
      try {
        await write(`/customers/${customer.id}`, body, conflict.currentVersion, "PATCH");
        setConflict(null);
        setReason("");
        toast(t("saved"));
        onSaved();
      } catch (e) {
        if (e instanceof ApiError && e.status === 409) {
          setConflict(null);
          toastError(e);
          onSaved();
          return;
        }
        throw e;
      }
    });
  }

  function discard() {
    setConflict(null);
    onSaved();
  }

  return (
    <form
      class="details-form"
      data-testid="details-form"
      onSubmit={(e) => {
        e.preventDefault();
        void run(() => save(base.version));
      }}
    >
      <div class="grid2">
        {DETAIL_FIELDS.map((f) => (
          <label key={f}>
            {t(DETAIL_LABEL[f])}
            <input
              name={f}
              value={form[f]}
              disabled={!!conflict}
              aria-invalid={problemField(fieldError) === f}
              onInput={(e) => setForm({ ...form, [f]: e.currentTarget.value })}
            />
            <FieldError error={fieldError} name={f} />
          </label>
        ))}
        <label>
          {t("reason")}
          <input name="reason" value={reason} disabled={!!conflict} onInput={(e) => setReason(e.currentTarget.value)} />
        </label>
      </div>
      {conflict ? (
        <div class="conflict" role="alert" data-testid="conflict">
          <h3>{t("conflictTitle")}</h3>
          <p>{t("conflictIntro", { from: conflict.loadedVersion, to: conflict.currentVersion })}</p>
          <table class="diff">
            <thead>
              <tr>
                <th>{t("field")}</th>
                <th>{t("conflictWhen")}</th>
                <th>{t("conflictTheirs")}</th>
                <th>{t("conflictYours")}</th>
              </tr>
            </thead>
            <tbody>
              {DETAIL_FIELDS.filter((f) => conflict.current[f] !== base.details[f] || f in changes).map((f) => (
                <tr key={f} class={conflict.current[f] !== base.details[f] ? "changed" : ""}>
                  <td class="field">{t(DETAIL_LABEL[f])}</td>
                  <td class="before">{show(base.details[f] || null)}</td>
                  <td class="theirs">{show(conflict.current[f] || null)}</td>
                  <td class="after">{f in changes ? show(changes[f] || null) : "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {conflict.events.length > 0 && (
            <ul class="conflict-events">
              {conflict.events.map((e) => (
                <li key={e.aggregate_version}>
                  {dateTime(e.occurred_at)} · {e.type} · {t("by")} <span title={e.actor_id}>{person(e.actor_id)}</span>
                  {e.reason ? ` — “${e.reason}”` : ""}
                </li>
              ))}
            </ul>
          )}
          <div class="actions">
            <button type="button" class="primary" data-testid="reapply" disabled={busy} onClick={reapply}>
              {t("reapply")}
            </button>
            <button type="button" onClick={discard}>{t("discard")}</button>
          </div>
        </div>
      ) : (
        <div class="actions">
          <button type="submit" class="primary" data-testid="save-details" disabled={busy}>{t("save")}</button>
        </div>
      )}
    </form>
  );
}

function Contacts({ customer, editable, onSaved }: { customer: Customer; editable: boolean; onSaved: () => void }) {
  const [kind, setKind] = useState("email");
  const [value, setValue] = useState("");
  const [label, setLabel] = useState("");
  const [contactError, setContactError] = useState<unknown>(null);
  const [busy, run] = useAction(onSaved, (e) => {
    if (problemField(e) !== "value" && problemField(e) !== "label") return false;
    setContactError(e);
    return true;
  });
  return (
    <div>
      <ul class="contacts">
        {customer.contacts.map((c) => (
          <li key={c.contact_id}>
            <span class="badge">{v(c.kind)}</span> {txt(c.value)}
            {c.person_name && <span class="muted"> · {txt(c.person_name)}</span>}
            {c.label && <span class="muted"> · {c.label}</span>}
            {c.primary && <span class="muted"> · {t("primary")}</span>}
            {editable && (
              <button
                type="button"
                class="link danger"
                disabled={busy}
                onClick={() => run(async () => {
                  await write(`/customers/${customer.id}/contacts/removal`, { contact_id: c.contact_id }, customer.version);
                  onSaved();
                })}
              >
                {t("remove")}
              </button>
            )}
          </li>
        ))}
      </ul>
      {editable && (
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            void run(async () => {
              await write(`/customers/${customer.id}/contacts`, { contact: { kind, value: value.trim(), label: label.trim() } });
              setContactError(null);
              setValue("");
              setLabel("");
              onSaved();
            });
          }}
        >
          <select value={kind} onChange={(e) => setKind(e.currentTarget.value)} aria-label={t("kind")}>
            {["email", "phone", "address"].map((k) => <option key={k} value={k}>{v(k)}</option>)}
          </select>
          <input required placeholder={t("value")} value={value} onInput={(e) => setValue(e.currentTarget.value)} aria-label={t("value")} />
          <input placeholder={t("label")} value={label} onInput={(e) => setLabel(e.currentTarget.value)} aria-label={t("label")} />
          <button type="submit" disabled={busy}>{t("add")}</button>
          <FieldError error={contactError} name="value" />
          <FieldError error={contactError} name="label" />
        </form>
      )}
    </div>
  );
}

function Classification({ customer, session, onSaved }: { customer: Customer; session: Session; onSaved: () => void }) {
  const [stage, setStage] = useState("");
  const [stageReason, setStageReason] = useState("");
  const [segment, setSegment] = useState("");
  const [segmentReason, setSegmentReason] = useState("");
  const [busy, run] = useAction(onSaved);
  const role = session.user.role;
  return (
    <div class="classification">
      {can(role, "customer") && (
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            void run(async () => {
              await write(`/customers/${customer.id}/lifecycle`, { stage, reason: stageReason.trim() }, customer.version);
              setStage("");
              setStageReason("");
              onSaved();
            });
          }}
        >
          <label>
            {t("lifecycle")}
            <select required value={stage} onChange={(e) => setStage(e.currentTarget.value)} data-testid="lifecycle-select">
              <option value="">{v(customer.lifecycle_stage)} →</option>
              {(TRANSITIONS[customer.lifecycle_stage] ?? LIFECYCLE).map((s) => <option key={s} value={s}>{v(s)}</option>)}
            </select>
          </label>
          <input required placeholder={t("reasonRequired")} value={stageReason} onInput={(e) => setStageReason(e.currentTarget.value)} aria-label={t("reason")} />
          <button type="submit" disabled={busy}>{t("apply")}</button>
        </form>
      )}
      {can(role, "customer.marketing") && (
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            void run(async () => {
              await write(`/customers/${customer.id}/classification`, { segment, reason: segmentReason.trim() }, customer.version);
              setSegment("");
              setSegmentReason("");
              onSaved();
            });
          }}
        >
          <label>
            {t("segment")}
            <select required value={segment} onChange={(e) => setSegment(e.currentTarget.value)}>
              <option value="">{v(customer.segment)} →</option>
              {SEGMENTS.filter((s) => s !== customer.segment).map((s) => <option key={s} value={s}>{v(s)}</option>)}
            </select>
          </label>
          <input required placeholder={t("reasonRequired")} value={segmentReason} onInput={(e) => setSegmentReason(e.currentTarget.value)} aria-label={t("reason")} />
          <button type="submit" disabled={busy}>{t("classify")}</button>
        </form>
      )}
    </div>
  );
}

type Opp = Schemas["Opportunity"];
type Req = Schemas["ServiceRequest"];
type TaskRow = Schemas["Task"];
type Purchase = { amount: string; currency: string; purchased_at: string; lines: number };

/** One related list: it loads, and fails, on its own; a short message if it cannot load. */
function Panel<T>({ title, testid, load, deps, children }: {
  title: string; testid: string; load: (signal: AbortSignal) => Promise<T[]>; deps: unknown[];
  children: (item: T) => ComponentChildren;
}) {
  const state = useLoad(load, deps);
  return (
    <section class="card" data-testid={testid}>
      <h2>{title} {state.data && <span class="count">{state.data.length}</span>}</h2>
      {state.error ? (
        <p class="muted small" role="status" data-testid="section-failed">
          {t("sectionFailed")}{" "}
          <button type="button" class="link" onClick={state.reload}>{t("retry")}</button>
        </p>
      ) : state.data === undefined ? (
        <Loading />
      ) : (
        <ul class="rows">{state.data.map(children)}</ul>
      )}
    </section>
  );
}

/** A link to the screen that shows the record, when the role's menu has that screen. */
function To({ role, screen, href, children }: { role: string; screen: Screen; href: string; children: ComponentChildren }) {
  return screensFor(role).includes(screen) ? <Link href={href} class="grow">{children}</Link> : <span class="grow">{children}</span>;
}

/** The customer's deals, requests, tasks and purchases: only those the role may read. */
function RelatedLists({ customer, role }: { customer: Customer; role: string }) {
  const id = customer.id;
  const deps = [id, customer.version];
  return (
    <div class="related">
      {canRead(role, "opportunity") && (
        <Panel<Opp> title={t("opportunities")} testid="related-opportunities" deps={deps}
          load={async (signal) => (await get<Page<Opp>>("/opportunities", { customer_id: id, limit: 50 }, signal)).items}>
          {(o) => (
            <li key={o.id}>
              <To role={role} screen="pipeline" href={`/pipeline?deal=${o.id}`}>{txt(o.title)}</To>
              <span class={`badge st-${o.status}`}>{v(o.status === "open" ? o.stage : o.status)}</span>
              <span class="num">{money(o.amount, o.currency)}</span>
            </li>
          )}
        </Panel>
      )}
      {canRead(role, "service_request") && (
        <Panel<Req> title={t("serviceRequests")} testid="related-requests" deps={deps}
          load={async (signal) => (await get<Page<Req>>("/service-requests", { customer_id: id, limit: 50 }, signal)).items}>
          {(r) => (
            <li key={r.id}>
              <To role={role} screen="service" href={`/service?request=${r.id}`}>{txt(r.subject)}</To>
              <span class={`badge pr-${r.priority}`}>{v(r.priority)}</span>
              <span class="badge">{v(r.status)}</span>
            </li>
          )}
        </Panel>
      )}
      {canRead(role, "task") && (
        <Panel<TaskRow> title={t("customerTasks")} testid="related-tasks" deps={deps}
          load={async (signal) => (await get<Page<TaskRow>>("/tasks", { customer_id: id, limit: 50 }, signal)).items}>
          {(x) => (
            <li key={x.id}>
              <To role={role} screen="tasks" href={`/tasks?task=${x.id}`}>{txt(x.title)}</To>
              <span class="badge">{v(x.status)}</span>
              <span class="muted">{relative(x.due_at)}</span>
            </li>
          )}
        </Panel>
      )}
      <Panel<[string, Purchase]> title={t("purchases")} testid="related-purchases" deps={deps}
        load={async (signal) => {
          const current = await get<{ data: { purchases: Record<string, Purchase> } }>(`/customers/${id}/current`, {}, signal);
          return Object.entries(current.data.purchases ?? {}).sort((a, b) => b[1].purchased_at.localeCompare(a[1].purchased_at));
        }}>
        {([order, p]) => (
          <li key={order}>
            <span class="grow">{order}</span>
            <span class="muted">{date(p.purchased_at)}</span>
            <span class="num">{money(p.amount, p.currency)}</span>
          </li>
        )}
      </Panel>
    </div>
  );
}

export function CustomerPage({ id, session }: { id: string; session: Session }) {
  useSignal(locale);
  const state = useLoad((signal) => get<Customer>(`/customers/${id}`, {}, signal), [id]);
  const [editing, setEditing] = useState(false);
  useEffect(() => setEditing(false), [id]);
  const editable = can(session.user.role, "customer");
  return (
    <Show state={state}>
      {(c) => (
        <article class="customer-page" data-testid="customer-page" data-version={c.version}>
          <div class="page-head">
            <div>
              <Link href="/customers" class="muted small">← {t("customers")}</Link>
              <h1 data-testid="customer-name">{txt(c.name)}</h1>
              <div class="chips">
                <span class="badge">{v(c.kind)}</span>
                <span class={`badge stage-${c.lifecycle_stage}`} data-testid="lifecycle">{v(c.lifecycle_stage)}</span>
                {c.segment && <span class="badge">{v(c.segment)}</span>}
                {c.tags.map((tag) => <span key={tag} class="badge tag">#{tag}</span>)}
              </div>
            </div>
            {editable && (
              <button type="button" onClick={() => setEditing(!editing)} data-testid="edit-details">
                {editing ? t("cancel") : t("edit")}
              </button>
            )}
          </div>
          <div class="kpis">
            <div><span>{t("owner")}</span><strong title={c.owner_id ?? ""}>{person(c.owner_id)}</strong></div>
            <div><span>{t("openPipeline")}</span><strong>{moneyMap(c.open_pipeline)}</strong></div>
            <div><span>{t("lifetimePurchases")}</span><strong>{moneyMap(c.lifetime_purchases)}</strong></div>
            <div><span>{t("openRequests")}</span><strong>{c.open_requests}</strong></div>
            <div><span>{t("lastActivity")}</span><strong>{relative(c.last_activity_at)}</strong></div>
          </div>
          <div class="columns">
            <div class="main-col">
              <section class="card">
                <h2>{t("details")}</h2>
                {editing ? (
                  <DetailsEditor key={`${c.id}`} customer={c} onSaved={() => { setEditing(false); state.reload(); }} />
                ) : (
                  <dl class="details" data-testid="details">
                    {DETAIL_FIELDS.map((f) => (
                      <div key={f}>
                        <dt>{t(DETAIL_LABEL[f])}</dt>
                        <dd data-field={f}>{txt(c[f] as string | null)}</dd>
                      </div>
                    ))}
                    <div><dt>{t("created")}</dt><dd>{dateTime(c.created_at)}</dd></div>
                  </dl>
                )}
              </section>
              <section class="card">
                <h2>{t("contacts")}</h2>
                <Contacts customer={c} editable={editable} onSaved={state.reload} />
              </section>
              {(can(session.user.role, "customer") || can(session.user.role, "customer.marketing")) && (
                <section class="card">
                  <h2>{t("lifecycle")} / {t("segment")}</h2>
                  <Classification customer={c} session={session} onSaved={state.reload} />
                </section>
              )}
              <RelatedLists customer={c} role={session.user.role} />
            </div>
            <aside class="side-col card">
              <h2>{t("timeline")}</h2>
              <Timeline customerId={c.id} version={c.version} />
            </aside>
          </div>
        </article>
      )}
    </Show>
  );
}

export { toastError };
