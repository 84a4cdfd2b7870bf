// The service queue: open requests by priority with SLA time left; open one to assign,
// comment, change its status or resolve it.
import { useEffect, useState } from "preact/hooks";
import { get, write, type Page, type Schemas, type Session } from "../api";
import { dateTime, duration, locale, t, v } from "../i18n";
import { person } from "../people";
import { can, rolesWith } from "../roles";
import { useSignal } from "../signal";
import { useRoute } from "../router";
import { Dialog, ErrorBox, FieldError, Link, Loading, PersonPicker, plain, Show, toast, txt, useAction, useLoad, useNow } from "../ui";

/** A row of GET /service-requests (masked values are "***"). */
type RequestRow = Schemas["ServiceRequest"];

interface RequestRecord {
  version: number;
  data: {
    subject: string;
    description: string;
    status: string;
    priority: string;
    assignee_id: string | null;
    resolution: string | null;
    comments: { body: string; visibility: string; author_id?: string; at?: string; commented_at?: string }[] | Record<string, unknown>;
  };
}

const OPEN_STATUSES = ["open", "in_progress", "waiting_on_customer", "reopened"];
const NEXT_STATUS: Record<string, string[]> = {
  open: ["in_progress", "waiting_on_customer"],
  in_progress: ["waiting_on_customer"],
  waiting_on_customer: ["in_progress"],
  reopened: ["in_progress", "waiting_on_customer"],
  resolved: ["closed", "reopened"],
  closed: ["reopened"],
};

export function SlaCell({ row, now }: { row: RequestRow; now: number }) {
  if (!row.sla_due_at) {
    return <span class="muted" title={t("noSla")}>{t("age", { t: duration(now - new Date(row.opened_at).getTime()) })}</span>;
  }
  const left = new Date(row.sla_due_at).getTime() - now;
  return (
    <span class={left < 0 ? "sla late" : left < 3_600_000 ? "sla soon" : "sla"} title={dateTime(row.sla_due_at)} data-testid="sla-left">
      {left < 0 ? t("overdueBy", { t: duration(left) }) : t("timeLeft", { t: duration(left) })}
    </span>
  );
}

function commentsOf(data: RequestRecord["data"]): { body: string; visibility: string; who: string; when: string }[] {
  const raw = Array.isArray(data.comments) ? data.comments : Object.values(data.comments ?? {});
  return (raw as Record<string, unknown>[]).map((c) => ({
    body: String(c.body ?? ""),
    visibility: String(c.visibility ?? ""),
    who: String(c.author_id ?? c.actor_id ?? ""),
    when: String(c.at ?? c.commented_at ?? c.occurred_at ?? ""),
  }));
}

function RequestPanel({ row, session, onClose, onChanged }: {
  row: RequestRow; session: Session; onClose: () => void; onChanged: () => void;
}) {
  const rec = useLoad((signal) => get<RequestRecord>(`/service-requests/${row.id}/current`, {}, signal), [row.id]);
  const [assignee, setAssignee] = useState("");
  const [comment, setComment] = useState("");
  const [visibility, setVisibility] = useState("internal");
  const [resolution, setResolution] = useState("");
  const [assignError, setAssignError] = useState<unknown>(null);
  const [busy, run] = useAction(rec.reload);
  const editable = can(session.user.role, "service");

  function act(path: string, body: unknown, withVersion: boolean, done: string) {
    return run(async () => {
      const version = rec.data?.version ?? row.version;
      await write(`/service-requests/${row.id}${path}`, body, withVersion ? version : undefined);
      toast(done);
      rec.reload();
      onChanged();
    });
  }

  return (
    <Dialog title={plain(row.subject)} onClose={onClose}>
      <Show state={rec}>
        {(r) => (
          <div class="stack request-panel" data-testid="request-panel">
            <div class="chips">
              <span class={`badge pr-${r.data.priority}`}>{v(r.data.priority)}</span>
              <span class="badge" data-testid="request-status">{v(r.data.status)}</span>
              <span class="muted">{t("assignee")}: {r.data.assignee_id ? person(r.data.assignee_id) : t("unassigned")}</span>
            </div>
            <Link href={`/customers/${row.customer_id}`}>{txt(row.customer_name)}</Link>
            {(row.first_response_due_at || row.resolution_due_at) && (
              <dl class="sla-times" data-testid="sla-times">
                {row.first_response_due_at && (
                  <div class={row.first_response_at ? "met" : ""}>
                    <dt>{t("firstResponseDue")}</dt>
                    <dd>{dateTime(row.first_response_due_at)}</dd>
                  </div>
                )}
                {row.resolution_due_at && (
                  <div>
                    <dt>{t("resolutionDue")}</dt>
                    <dd>{dateTime(row.resolution_due_at)}</dd>
                  </div>
                )}
              </dl>
            )}
            {r.data.description && <p>{txt(r.data.description)}</p>}
            {r.data.resolution && <p><strong>{t("resolution")}:</strong> {txt(r.data.resolution)}</p>}
            <h3>{t("comments")}</h3>
            <ul class="comments">
              {commentsOf(r.data).map((c, i) => (
                <li key={i}>
                  <span class="muted small">{c.when ? dateTime(c.when) : ""} {person(c.who)} · {c.visibility === "customer" ? t("customerVisible") : t("internal")}</span>
                  <div>{txt(c.body)}</div>
                </li>
              ))}
            </ul>
            {editable && (
              <>
                <form class="inline-form" onSubmit={(e) => { e.preventDefault(); void act("/comments", { body: comment.trim(), visibility }, false, t("saved")).then(() => setComment("")); }}>
                  <input required placeholder={t("addComment")} value={comment} onInput={(e) => setComment(e.currentTarget.value)} aria-label={t("comment")} />
                  <select value={visibility} onChange={(e) => setVisibility(e.currentTarget.value)} aria-label={t("comment")}>
                    <option value="internal">{t("internal")}</option>
                    <option value="customer">{t("customerVisible")}</option>
                  </select>
                  <button type="submit" disabled={busy}>{t("comment")}</button>
                </form>
                <div class="inline-form">
                  <button type="button" disabled={busy || r.data.assignee_id === session.user.id} onClick={() => act("/assignment", { assignee_id: session.user.id }, true, t("saved"))} data-testid="assign-me">
                    {t("assignToMe")}
                  </button>
                  <PersonPicker value={assignee} only={rolesWith("service")} onChange={(id) => { setAssignee(id); setAssignError(null); }} label={t("assignee")} testid="assignee-picker" />
                  <button
                    type="button"
                    disabled={busy || !assignee}
                    data-testid="assign"
                    onClick={() => run(async () => {
                      try {
                        await write(`/service-requests/${row.id}/assignment`, { assignee_id: assignee }, rec.data?.version ?? row.version);
                      } catch (e) {
                        setAssignError(e);
                        throw e;
                      }
                      setAssignError(null);
                      toast(t("saved"));
                      rec.reload();
                      onChanged();
                    })}
                  >
                    {t("assign")}
                  </button>
                  <FieldError error={assignError} name="assignee_id" />
                </div>
                {(NEXT_STATUS[r.data.status] ?? []).length > 0 && (
                  <div class="inline-form">
                    {(NEXT_STATUS[r.data.status] ?? []).map((s) => (
                      <button key={s} type="button" disabled={busy} onClick={() => act("/status", { status: s }, true, t("saved"))}>{v(s)}</button>
                    ))}
                  </div>
                )}
                {OPEN_STATUSES.includes(r.data.status) && (
                  <form class="stack" onSubmit={(e) => { e.preventDefault(); void act("/resolution", { resolution: resolution.trim() }, true, t("resolved")); }}>
                    <label>
                      {t("resolution")}
                      <textarea required rows={2} value={resolution} onInput={(e) => setResolution(e.currentTarget.value)} data-testid="resolution" />
                    </label>
                    <div class="actions">
                      <button type="submit" class="primary" disabled={busy} data-testid="resolve">{t("resolve")}</button>
                    </div>
                  </form>
                )}
              </>
            )}
          </div>
        )}
      </Show>
    </Dialog>
  );
}

export function ServiceQueue({ session }: { session: Session }) {
  useSignal(locale);
  const now = useNow();
  const [scope, setScope] = useState<"mine" | "all">(session.user.role === "service_agent" ? "mine" : "all");
  const [rows, setRows] = useState<RequestRow[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<unknown>(null);
  const [selected, setSelected] = useState<RequestRow | null>(null);
  const [tick, setTick] = useState(0);

  async function load(after: string | null) {
    setLoading(true);
    setError(null);
    try {
      const page = await get<Page<RequestRow>>("/service-requests", {
        status: OPEN_STATUSES, sort: "priority", limit: 40, cursor: after,
        assignee_id: scope === "mine" ? session.user.id : null,
      });
      setRows((old) => (after ? [...old, ...page.items] : page.items));
      setCursor(page.next_cursor);
    } catch (e) {
      setError(e);
    } finally {
      setLoading(false);
    }
  }
  useEffect(() => { void load(null); }, [scope, tick]);
  const { query } = useRoute();
  const wanted = query.get("request");
  useEffect(() => {
    if (!wanted) return;
    get<RequestRow>(`/service-requests/${wanted}`).then(setSelected, (e) => setError(e));
  }, [wanted]);

  return (
    <section class="service">
      <div class="page-head">
        <h1>{t("service")}</h1>
        <div class="segmented" role="group">
          <button type="button" class={scope === "mine" ? "on" : ""} onClick={() => setScope("mine")}>{t("assignedToMe")}</button>
          <button type="button" class={scope === "all" ? "on" : ""} onClick={() => setScope("all")} data-testid="scope-all">{t("allOpen")}</button>
        </div>
      </div>
      {error ? <ErrorBox error={error} onRetry={() => load(null)} /> : null}
      <table class="list" data-testid="queue">
        <thead>
          <tr>
            <th>{t("subject")}</th>
            <th>{t("priority")}</th>
            <th>{t("customer")}</th>
            <th>{t("status")}</th>
            <th>{t("assignee")}</th>
            <th>{t("slaDue")}</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((r) => (
            <tr key={r.id} class="clickable" data-id={r.id} data-testid="request-row" onClick={() => setSelected(r)}>
              <td data-label={t("subject")}><button type="button" class="link strong">{txt(r.subject)}</button></td>
              <td data-label={t("priority")}><span class={`badge pr-${r.priority}`}>{v(r.priority)}</span></td>
              <td data-label={t("customer")}>{txt(r.customer_name)}</td>
              <td data-label={t("status")}>{v(r.status)}</td>
              <td data-label={t("assignee")} title={r.assignee_id ?? ""}>{r.assignee_id ? person(r.assignee_id) : t("unassigned")}</td>
              <td data-label={t("slaDue")}><SlaCell row={r} now={now} /></td>
            </tr>
          ))}
        </tbody>
      </table>
      {!loading && !error && rows.length === 0 && <p class="empty">{t("noResults")}</p>}
      {loading && <Loading />}
      {cursor && !loading && <button type="button" class="more" onClick={() => load(cursor)}>{t("loadMore")}</button>}
      {selected && (
        <RequestPanel
          row={selected}
          session={session}
          onClose={() => setSelected(null)}
          onChanged={() => setTick((n) => n + 1)}
        />
      )}
    </section>
  );
}
