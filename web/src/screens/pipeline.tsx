// The pipeline board: opportunities by stage with totals; drag a card to another column
// (pointer events: mouse, pen and touch) or use its menu to change the stage, win or lose it.
import { useRef, useState } from "preact/hooks";
import { get, write, type Page, type Schemas, type Session } from "../api";
import { compactMoney, date, locale, money, t, v } from "../i18n";
import { can } from "../roles";
import { useSignal } from "../signal";
import { useRoute } from "../router";
import { count, Dialog, Link, plain, Show, toast, txt, useAction, useLoad } from "../ui";

/** GET /opportunities/board and one of its columns. */
type Board = Schemas["PipelineBoard"];
type Column = Schemas["BoardStage"];

/** A row of GET /opportunities (masked values are "***"). */
export type Opportunity = Schemas["Opportunity"];

const LOSS_REASONS = ["price", "competitor", "no_budget", "no_decision", "timing", "product_fit", "other"];

function columnKey(c: Column): string {
  return c.closed ? c.stage : c.stage; // won / lost are their own columns
}

/**
 * Where a deal may go (aggregates/pipeline.py and opportunity.py): an open deal moves back
 * one stage or forward any number, or is won or lost; a won or lost deal is only reopened
 * into a stage (never moved between won and lost).
 */
export function allowedTargets(o: Pick<Opportunity, "stage" | "status">, stages: Column[]): string[] {
  const open = stages.filter((c) => !c.closed).map((c) => c.stage);
  if (o.status !== "open") return open;
  const i = open.indexOf(o.stage);
  const moves = [...(i > 0 ? [open[i - 1]] : []), ...open.slice(i + 1)];
  return [...moves, ...stages.filter((c) => c.closed).map((c) => c.stage)];
}

async function loadBoard(pipeline: string, owner: string | null, signal: AbortSignal) {
  const board = await get<Board>("/opportunities/board", { pipeline, owner_id: owner }, signal);
  const cards = await Promise.all(
    board.stages.map((c) =>
      get<Page<Opportunity>>("/opportunities", {
        pipeline,
        owner_id: owner,
        ...(c.closed ? { status: c.stage } : { stage: c.stage, status: "open" }),
        sort: c.closed ? "-updated_at" : "-amount",
        limit: 25,
      }, signal),
    ),
  );
  return { board, cards: Object.fromEntries(board.stages.map((c, i) => [columnKey(c), cards[i]])) as Record<string, Page<Opportunity>> };
}

function Totals({ totals }: { totals: Record<string, string> }) {
  const entries = Object.entries(totals);
  if (!entries.length) return <span class="muted">—</span>;
  return (
    <span class="totals">
      {entries.map(([cur, amt]) => (
        <span key={cur} title={money(amt, cur)}>{compactMoney(Number(amt), cur)}</span>
      ))}
    </span>
  );
}

interface Drag {
  id: string;
  from: string;
  x: number;
  y: number;
  startX: number;
  startY: number;
  active: boolean;
  over: string | null;
  width: number;
}

export function PipelineBoard({ session }: { session: Session }) {
  useSignal(locale);
  const [pipeline, setPipeline] = useState("default");
  const [mine, setMine] = useState(session.user.role === "sales_rep");
  const owner = mine ? session.user.id : null;
  const state = useLoad((signal) => loadBoard(pipeline, owner, signal), [pipeline, owner]);
  const [drag, setDrag] = useState<Drag | null>(null);
  const dragRef = useRef<Drag | null>(null);
  const [losing, setLosing] = useState<Opportunity | null>(null);
  const [lossReason, setLossReason] = useState("price");
  const [busy, run] = useAction(state.reload);
  const editable = can(session.user.role, "opportunity");
  const wanted = useRoute().query.get("deal");

  function find(id: string): Opportunity | undefined {
    const cards = state.data?.cards ?? {};
    for (const page of Object.values(cards)) {
      const o = page.items.find((x) => x.id === id);
      if (o) return o;
    }
    return undefined;
  }

  async function move(o: Opportunity, target: string) {
    const from = o.status === "open" ? o.stage : o.status;
    if (target === from) return;
    if (target === "lost") {
      setLossReason("price");
      setLosing(o);
      return;
    }
    await run(async () => {
      if (target === "won") {
        await write(`/opportunities/${o.id}/won`, {}, o.version);
      } else if (o.status !== "open") {
        await write(`/opportunities/${o.id}/reopen`, { stage: target, reason: "reopened on the pipeline board" }, o.version);
      } else {
        await write(`/opportunities/${o.id}/stage`, { stage: target }, o.version);
      }
      toast(t("moved", { stage: v(target) }));
      state.reload();
    });
  }

  // -- pointer dragging -------------------------------------------------------------
  function columnAt(x: number, y: number): string | null {
    const el = document.elementFromPoint(x, y)?.closest<HTMLElement>("[data-column]");
    return el?.dataset.column ?? null;
  }

  function onPointerDown(e: PointerEvent, o: Opportunity) {
    if (!editable || e.button !== 0) return;
    const target = e.target as HTMLElement;
    if (target.closest("select, button, a")) return;
    if (e.pointerType === "touch" && !target.closest(".handle")) return; // touch scrolls unless on the handle
    const card = e.currentTarget as HTMLElement;
    card.setPointerCapture(e.pointerId);
    const d: Drag = {
      id: o.id, from: o.status === "open" ? o.stage : o.status, x: e.clientX, y: e.clientY,
      startX: e.clientX, startY: e.clientY, active: false, over: null, width: card.offsetWidth,
    };
    dragRef.current = d;
    setDrag(d);
  }

  function onPointerMove(e: PointerEvent) {
    const d = dragRef.current;
    if (!d) return;
    const active = d.active || Math.hypot(e.clientX - d.startX, e.clientY - d.startY) > 6;
    const next = { ...d, x: e.clientX, y: e.clientY, active, over: active ? columnAt(e.clientX, e.clientY) : null };
    dragRef.current = next;
    setDrag(next);
    if (active) e.preventDefault();
  }

  function onPointerUp(e: PointerEvent) {
    const d = dragRef.current;
    dragRef.current = null;
    setDrag(null);
    if (!d || !d.active) return;
    const target = columnAt(e.clientX, e.clientY);
    const o = find(d.id);
    const stages = state.data?.board.stages ?? [];
    if (o && target && target !== d.from && allowedTargets(o, stages).includes(target)) void move(o, target);
  }

  const dragged = drag?.active ? find(drag.id) : undefined;

  return (
    <section class="pipeline">
      <div class="page-head">
        <h1>{t("pipeline")}</h1>
        <div class="filters">
          <label>
            <span>{t("pipelineName")}</span>
            <select value={pipeline} onChange={(e) => setPipeline(e.currentTarget.value)} data-testid="pipeline-select">
              <option value="default">{v("default")}</option>
              <option value="renewal">{v("renewal")}</option>
            </select>
          </label>
          <label class="check">
            <input type="checkbox" checked={mine} onChange={(e) => setMine(e.currentTarget.checked)} />
            {t("mine")}
          </label>
        </div>
      </div>
      {editable && <p class="muted small">{t("dragHint")}</p>}
      <Show state={state}>
        {({ board, cards }) => (
          <>
            <div class="board-summary">
              <span>{count(board.open.count, "deal", "deals")}</span>
              <span>{t("total")}: <Totals totals={board.open.totals} /></span>
              <span>{t("weighted")}: <Totals totals={board.open.weighted_totals} /></span>
            </div>
            <div class={`board ${drag?.active ? "dragging" : ""}`} data-testid="board">
              {board.stages.map((c) => {
                const key = columnKey(c);
                const page = cards[key];
                return (
                  <div
                    key={key}
                    class={`column ${c.closed ? `closed ${c.stage}` : ""} ${drag?.active && drag.over === key ? "over" : ""}`}
                    data-column={key}
                    data-testid={`column-${key}`}
                  >
                    <header>
                      <h2>{v(c.stage)}</h2>
                      <span class="muted small">{c.closed ? "" : `${c.probability}%`}</span>
                      <div class="col-stats">
                        <span class="count" data-testid={`count-${key}`}>{c.count}</span>
                        <Totals totals={c.totals} />
                      </div>
                    </header>
                    <ul class="cards">
                      {page.items.map((o) => (
                        <li
                          key={o.id}
                          class={`deal ${drag?.active && drag.id === o.id ? "ghosted" : ""} ${editable ? "draggable" : ""} ${o.id === wanted ? "highlight" : ""}`}
                          data-id={o.id}
                          data-testid="deal"
                          onPointerDown={(e) => onPointerDown(e, o)}
                          onPointerMove={onPointerMove}
                          onPointerUp={onPointerUp}
                          onPointerCancel={() => { dragRef.current = null; setDrag(null); }}
                        >
                          {editable && <span class="handle" aria-hidden="true">⠿</span>}
                          <div class="deal-title">{txt(o.title)}</div>
                          <Link href={`/customers/${o.customer_id}`} class="small">{txt(o.customer_name)}</Link>
                          <div class="deal-foot">
                            <strong class="num">{money(o.amount, o.currency)}</strong>
                            <span class="muted small">{date(o.expected_close)}</span>
                          </div>
                          {editable && (
                            <select
                              class="move"
                              aria-label={t("moveTo")}
                              value=""
                              disabled={busy}
                              onChange={(e) => {
                                const to = e.currentTarget.value;
                                e.currentTarget.value = "";
                                if (to) void move(o, to);
                              }}
                            >
                              <option value="">{t("moveTo")}…</option>
                              {allowedTargets(o, board.stages).map((s) => (
                                <option key={s} value={s}>{v(s)}</option>
                              ))}
                            </select>
                          )}
                        </li>
                      ))}
                      {page.next_cursor && <li class="muted small more-cards">+ {Math.max(0, c.count - page.items.length)}</li>}
                    </ul>
                  </div>
                );
              })}
            </div>
          </>
        )}
      </Show>
      {dragged && drag && (
        <div class="deal drag-ghost" style={{ left: `${drag.x - 20}px`, top: `${drag.y - 16}px`, width: `${drag.width}px` }}>
          <div class="deal-title">{txt(dragged.title)}</div>
          <strong class="num">{money(dragged.amount, dragged.currency)}</strong>
        </div>
      )}
      {losing && (
        <Dialog title={`${t("markLost")}: ${plain(losing.title)}`} onClose={() => setLosing(null)}>
          <form
            class="stack"
            onSubmit={(e) => {
              e.preventDefault();
              const o = losing;
              setLosing(null);
              void run(async () => {
                await write(`/opportunities/${o.id}/lost`, { loss_reason: lossReason }, o.version);
                toast(t("moved", { stage: v("lost") }));
                state.reload();
              });
            }}
          >
            <label>
              {t("lossReason")}
              <select value={lossReason} onChange={(e) => setLossReason(e.currentTarget.value)}>
                {LOSS_REASONS.map((r) => <option key={r} value={r}>{v(r)}</option>)}
              </select>
            </label>
            <div class="actions">
              <button type="submit" class="primary">{t("markLost")}</button>
              <button type="button" onClick={() => setLosing(null)}>{t("cancel")}</button>
            </div>
          </form>
        </Dialog>
      )}
    </section>
  );
}
