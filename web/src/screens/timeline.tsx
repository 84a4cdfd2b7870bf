// The activity timeline of a customer: who changed what, when and why, with field diffs.
import { useEffect, useState } from "preact/hooks";
import { get } from "../api";
import { dateTime, locale, t, v } from "../i18n";
import { person } from "../people";
import { useSignal } from "../signal";
import { ErrorBox, Loading, MASK } from "../ui";

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
  if (value === MASK) return t("hidden");
  if (typeof value === "string") return withLocalTimes(value);
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (Array.isArray(value)) return value.map(show).join(", ");
  if (typeof value === "object") {
    const o = value as Record<string, unknown>;
    if ("value" in o && "kind" in o) return `${o.kind}: ${show(o.value)}`;
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

// Event types and record fields in Simplified Chinese (English is derived from the names).
const EVENTS_ZH: Record<string, string> = {
  CustomerRegistered: "客户已登记", CustomerDetailsChanged: "客户信息已修改",
  ContactAdded: "已添加联系方式", ContactRemoved: "已删除联系方式",
  CustomerOwnerReassigned: "客户负责人已变更", CustomerShared: "客户已共享",
  CustomerUnshared: "客户已取消共享", CustomerLifecycleStageChanged: "生命周期阶段已变更",
  CustomerClassified: "客户已分群", CustomerTagged: "已添加标签", CustomerUntagged: "已移除标签",
  CustomerConsentSet: "联系同意已设置", CustomerPreferencesSet: "偏好已设置",
  CustomerPurchaseRecorded: "已记录购买", CustomerPersonalDataErased: "个人数据已删除",
  InteractionLogged: "已记录互动",
  OpportunityOpened: "商机已创建", OpportunityStageChanged: "商机阶段已变更",
  OpportunityAmountChanged: "商机金额已修改", OpportunityCloseDateChanged: "预计成交日期已修改",
  OpportunityOwnerChanged: "商机负责人已变更", OpportunityWon: "商机赢单", OpportunityLost: "商机丢单",
  OpportunityReopened: "商机已重新打开", OpportunityShared: "商机已共享",
  OpportunityUnshared: "商机已取消共享",
  ServiceRequestOpened: "服务请求已创建", ServiceRequestAssigned: "服务请求已分派",
  ServiceRequestCommented: "服务请求已评论", ServiceRequestPriorityChanged: "服务请求优先级已变更",
  ServiceRequestStatusChanged: "服务请求状态已变更", ServiceRequestResolved: "服务请求已解决",
  ServiceRequestSatisfactionRated: "已评价满意度", ServiceRequestSlaSet: "服务请求 SLA 已设定",
  TaskCreated: "任务已创建", TaskCompleted: "任务已完成", TaskCancelled: "任务已取消",
  TaskCommented: "任务已评论", TaskDueChanged: "任务截止时间已修改", TaskReassigned: "任务已转派",
  AuditExported: "审计记录已导出",
};

const FIELDS_ZH: Record<string, string> = {
  name: "名称", kind: "类型", industry: "行业", country: "国家/地区", source: "来源",
  preferred_language: "首选语言", owner_id: "负责人", assignee_id: "处理人", contacts: "联系方式",
  lifecycle_stage: "生命周期阶段", segment: "客户分群", tags: "标签", consents: "联系同意",
  preferences: "偏好", purchases: "购买记录", shared_with: "共享给", title: "标题",
  amount: "金额", currency: "币种", stage: "阶段", pipeline: "销售管道", probability: "赢率",
  expected_close_date: "预计成交日期", status: "状态", priority: "优先级", subject: "主题",
  description: "描述", channel: "渠道", type: "类型", comments: "评论", due_at: "截止时间",
  customer_id: "客户", related_id: "关联记录", opportunity_id: "商机", rating: "满意度评分",
  resolution: "解决方案", first_response_due_at: "首次响应截止", resolution_due_at: "解决截止",
  sla_priority: "SLA 优先级", lost_reason: "丢单原因", won_at: "赢单时间", closed_at: "关闭时间",
  opened_at: "创建时间", summary: "摘要", direction: "方向", occurred_at: "发生时间",
};

/** "CustomerDetailsChanged" -> "Customer details changed" ("Sla" -> "SLA"); in Chinese
 * from the table above. */
export function eventLabel(type: string): string {
  if (locale.get() === "zh-CN" && EVENTS_ZH[type]) return EVENTS_ZH[type];
  const words = type.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase().replace(/\bsla\b/g, "SLA");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** A record field's name in the user's language (the API's name in English). */
export function fieldLabel(field: string): string {
  return (locale.get() === "zh-CN" && FIELDS_ZH[field]) || field;
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
            <td class="field" title={c.field}>{fieldLabel(c.field)}</td>
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
