// My open tasks (soonest due first) and my notifications.
import { get, write, type Page, type Schemas, type Session } from "../api";
import { dateTime, locale, relative, t, v } from "../i18n";
import { can } from "../roles";
import { useSignal } from "../signal";
import { useRoute } from "../router";
import { Link, Show, toast, txt, useAction, useLoad } from "../ui";
import { withLocalTimes } from "./timeline";

/** A row of GET /tasks (masked values are "***"). */
type Task = Schemas["Task"];

/** An item of GET /notifications. */
type Notification = Schemas["NotificationOut"];

export function TasksScreen({ session }: { session: Session }) {
  useSignal(locale);
  const { query } = useRoute();
  const wanted = query.get("task");
  const tasks = useLoad(async (signal) => {
    const page = await get<Page<Task>>("/tasks", { mine: true, status: "open", sort: "due_at", limit: 100 }, signal);
    // A task opened from a customer page is shown first, even when it is not the caller's.
    if (wanted && !page.items.some((x) => x.id === wanted)) {
      try {
        page.items.unshift(await get<Task>(`/tasks/${wanted}`, {}, signal));
      } catch {
        /* gone or out of reach: the list alone */
      }
    }
    // The customers' names, for the links (one read each; a customer out of reach keeps the word).
    const ids = [...new Set(page.items.map((x) => x.customer_id).filter((x): x is string => !!x))];
    const names = new Map<string, string>();
    await Promise.all(ids.map(async (id) => {
      try {
        names.set(id, (await get<{ name: string }>(`/customers/${id}`, {}, signal)).name);
      } catch {
        /* not readable: "Customer" */
      }
    }));
    return { items: page.items, names };
  }, [wanted]);
  const notes = useLoad((signal) => get<{ items: Notification[] }>("/notifications", { limit: 50 }, signal), []);
  const [busy, run] = useAction(tasks.reload);
  const editable = can(session.user.role, "task");
  return (
    <section class="tasks-screen">
      <div class="columns">
        <div class="main-col">
          <h1>{t("tasks")}</h1>
          <Show state={tasks}>
            {(page) =>
              page.items.length === 0 ? (
                <p class="empty">{t("noTasks")}</p>
              ) : (
                <ul class="task-list" data-testid="tasks">
                  {page.items.map((x) => {
                    const overdue = x.due_at !== null && new Date(x.due_at).getTime() < Date.now();
                    return (
                      <li key={x.id} class={`card task ${overdue ? "overdue" : ""} ${x.id === wanted ? "highlight" : ""}`} data-id={x.id}>
                        <div class="grow">
                          <strong>{txt(x.title)}</strong>
                          {x.description && <div class="muted small">{txt(x.description)}</div>}
                          <div class="small">
                            <span class={overdue ? "sla late" : "muted"} title={dateTime(x.due_at)}>
                              {overdue ? `${t("overdue")} · ` : ""}{t("dueAt", { when: relative(x.due_at) })}
                            </span>
                            {x.customer_id && <> · <Link href={`/customers/${x.customer_id}`}>{page.names.has(x.customer_id) ? txt(page.names.get(x.customer_id)) : t("customer")}</Link></>}
                          </div>
                        </div>
                        {editable && x.status === "open" && (
                          <button
                            type="button"
                            disabled={busy}
                            onClick={() => run(async () => {
                              await write(`/tasks/${x.id}/complete`, {}, x.version);
                              toast(t("completed"));
                              tasks.reload();
                            })}
                          >
                            ✓ {t("complete")}
                          </button>
                        )}
                      </li>
                    );
                  })}
                </ul>
              )
            }
          </Show>
        </div>
        <aside class="side-col">
          <h2>{t("notifications")}</h2>
          <Show state={notes}>
            {(n) =>
              n.items.length === 0 ? (
                <p class="empty">{t("noNotifications")}</p>
              ) : (
                <ul class="notes" data-testid="notifications">
                  {n.items.map((x) => (
                    <li key={x.id} class={`card note ${x.kind}`}>
                      <span class="badge">{v(x.kind)}</span>
                      <div>{withLocalTimes(x.message)}</div>
                      <div class="muted small">{relative(x.created_at)}</div>
                    </li>
                  ))}
                </ul>
              )
            }
          </Show>
        </aside>
      </div>
    </section>
  );
}
