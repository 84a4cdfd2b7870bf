// English and Simplified Chinese; numbers, dates and money through Intl in the chosen locale.
import { signal } from "./signal";

export type Locale = "en" | "zh-CN";
export const LOCALES: { code: Locale; label: string }[] = [
  { code: "en", label: "English" },
  { code: "zh-CN", label: "简体中文" },
];
const KEY = "crm.locale";

function initial(): Locale {
  const saved = localStorage.getItem(KEY);
  if (saved === "en" || saved === "zh-CN") return saved;
  return navigator.language.toLowerCase().startsWith("zh") ? "zh-CN" : "en";
}

export const locale = signal<Locale>(initial());

export function setLocale(l: Locale): void {
  localStorage.setItem(KEY, l);
  document.documentElement.lang = l;
  locale.set(l);
}
document.documentElement.lang = locale.get();

const en = {
  app: "CRM",
  signIn: "Sign in",
  signOut: "Sign out",
  username: "Username",
  password: "Password",
  badCredentials: "Wrong username or password.",
  sessionExpired: "Your session has ended; please sign in again.",
  signedInAs: "Signed in as",
  language: "Language",
  menu: "Menu",
  customers: "Customers",
  customer: "Customer",
  pipeline: "Pipeline",
  service: "Service queue",
  tasks: "My tasks",
  customerTasks: "Tasks",
  dashboard: "Dashboard",
  audit: "Audit",
  search: "Search",
  searchPlaceholder: "Name, e-mail or phone",
  lifecycle: "Lifecycle stage",
  segment: "Segment",
  owner: "Owner",
  sort: "Sort",
  any: "Any",
  mine: "Mine",
  loadMore: "Load more",
  showOlder: "Show older",
  loading: "Loading…",
  noResults: "Nothing found.",
  results: "{n} results",
  name: "Name",
  kind: "Kind",
  industry: "Industry",
  country: "Country",
  preferredLanguage: "Preferred language",
  source: "Source",
  tags: "Tags",
  lastActivity: "Last activity",
  created: "Created",
  openPipeline: "Open pipeline",
  lifetimePurchases: "Lifetime purchases",
  openRequests: "Open requests",
  details: "Details",
  contacts: "Contacts",
  edit: "Edit",
  save: "Save",
  cancel: "Cancel",
  remove: "Remove",
  add: "Add",
  reason: "Reason",
  reasonRequired: "Reason (required)",
  value: "Value",
  label: "Label",
  saved: "Saved.",
  nothingChanged: "Nothing changed.",
  conflictTitle: "Someone changed this customer after you opened it",
  conflictIntro: "Your changes were not saved. Here is what changed since you loaded version {from} (now version {to}):",
  conflictYours: "Your change",
  conflictTheirs: "Now",
  conflictWhen: "Loaded",
  reapply: "Re-apply my changes on top",
  discard: "Discard my changes",
  field: "Field",
  before: "Before",
  after: "After",
  by: "by",
  opportunities: "Opportunities",
  serviceRequests: "Service requests",
  purchases: "Purchases",
  timeline: "Timeline",
  activity: "Activity",
  amount: "Amount",
  stage: "Stage",
  status: "Status",
  priority: "Priority",
  subject: "Subject",
  due: "Due",
  dueAt: "Due {when}",
  order: "Order",
  date: "Date",
  lines: "Lines",
  changeStage: "Change stage",
  classify: "Classify",
  apply: "Apply",
  notFound: "Not found, or not yours to see.",
  forbidden: "Your role may not do this.",
  error: "Something went wrong",
  retry: "Retry",
  total: "Total",
  weighted: "Weighted",
  deals: "{n} deals",
  won: "Won",
  lost: "Lost",
  lossReason: "Loss reason",
  markLost: "Mark lost",
  moveTo: "Move to",
  moved: "Moved to {stage}.",
  dragHint: "Drag a card to another column, or use its menu.",
  pipelineName: "Pipeline",
  assignee: "Assignee",
  unassigned: "Unassigned",
  assignToMe: "Assign to me",
  assign: "Assign",
  comment: "Comment",
  comments: "Comments",
  addComment: "Add comment",
  internal: "Internal",
  customerVisible: "Visible to customer",
  resolve: "Resolve",
  resolution: "Resolution",
  resolved: "Resolved.",
  open: "Open",
  openedAt: "Opened",
  slaDue: "SLA due",
  firstResponse: "First response",
  timeLeft: "{t} left",
  overdueBy: "overdue by {t}",
  age: "open for {t}",
  noSla: "no SLA due",
  firstResponseDue: "First response due",
  resolutionDue: "Resolution due",
  assignedToMe: "Assigned to me",
  allOpen: "All open",
  complete: "Complete",
  completed: "Completed.",
  notifications: "Notifications",
  noNotifications: "No notifications.",
  noTasks: "No open tasks.",
  overdue: "Overdue",
  kpiPipeline: "Open pipeline by stage",
  kpiForecast: "Weighted forecast by close month",
  kpiFunnel: "Funnel (reached each stage)",
  kpiSla: "SLA met (first response / resolution)",
  kpiCsat: "Customer satisfaction",
  kpiSegments: "Customer classes",
  currency: "Currency",
  analyticsUnavailable: "The analytics are not available right now.",
  asOf: "As of",
  recordAsOf: "The record as of {when}",
  didNotExist: "The customer did not exist then.",
  history: "History with field changes",
  exportAudit: "Download audit export",
  exported: "Export downloaded.",
  chooseCustomer: "Choose a customer to audit",
  actor: "Actor",
  recorded: "recorded {when}",
  version: "Version",
  now: "Now",
  yes: "Yes",
  no: "No",
  email: "E-mail",
  phone: "Phone",
  address: "Address",
  primary: "Primary",
  person: "Person",
  company: "Company",
  back: "Back",
  notYetBuilt: "The read models are catching up; try again in a moment.",
  newContact: "New contact",
  personalMasked: "Personal data is masked for your role.",
  hidden: "hidden",
  result: "{n} result",
  deal: "{n} deal",
  sectionFailed: "This section could not be loaded.",
  networkError: "The server cannot be reached; please try again.",
  conflictReloaded: "Someone else changed this record meanwhile. It has been reloaded: please check it and try again.",
  invalidField: "Please check {field}: {why}",
  whyRequired: "it is required.",
  whyTooLong: "it is too long.",
  whyTooShort: "it is too short.",
  whyFormat: "the value has the wrong format.",
  whyInvalid: "the value is not accepted.",
  whyCountry: "use a two-letter country code in capitals, such as DE or CN.",
  whyLanguage: "use a language code such as en or zh-CN.",
  whyEmail: "use an e-mail address such as name@example.com.",
  whyPerson: "choose a person from the list.",
  personSearch: "Type a name or username",
  noMatch: "No one matches.",
} as const;

export type Key = keyof typeof en;

const zh: Record<Key, string> = {
  app: "CRM",
  signIn: "登录",
  signOut: "退出登录",
  username: "用户名",
  password: "密码",
  badCredentials: "用户名或密码错误。",
  sessionExpired: "您的会话已结束，请重新登录。",
  signedInAs: "当前用户",
  language: "语言",
  menu: "菜单",
  customers: "客户",
  customer: "客户",
  pipeline: "销售管道",
  service: "服务队列",
  tasks: "我的任务",
  customerTasks: "任务",
  dashboard: "仪表板",
  audit: "审计",
  search: "搜索",
  searchPlaceholder: "姓名、邮箱或电话",
  lifecycle: "生命周期阶段",
  segment: "客户分群",
  owner: "负责人",
  sort: "排序",
  any: "全部",
  mine: "我的",
  loadMore: "加载更多",
  showOlder: "显示更早的记录",
  loading: "加载中…",
  noResults: "没有找到结果。",
  results: "{n} 条结果",
  name: "名称",
  kind: "类型",
  industry: "行业",
  country: "国家/地区",
  preferredLanguage: "首选语言",
  source: "来源",
  tags: "标签",
  lastActivity: "最近活动",
  created: "创建时间",
  openPipeline: "进行中的商机金额",
  lifetimePurchases: "累计购买",
  openRequests: "未结服务请求",
  details: "详细信息",
  contacts: "联系方式",
  edit: "编辑",
  save: "保存",
  cancel: "取消",
  remove: "删除",
  add: "添加",
  reason: "原因",
  reasonRequired: "原因（必填）",
  value: "值",
  label: "标签",
  saved: "已保存。",
  nothingChanged: "没有任何更改。",
  conflictTitle: "在您打开后，有人修改了此客户",
  conflictIntro: "您的更改尚未保存。以下是自您加载的版本 {from} 以来的变化（当前版本 {to}）：",
  conflictYours: "您的更改",
  conflictTheirs: "当前值",
  conflictWhen: "加载时",
  reapply: "在最新版本上重新应用我的更改",
  discard: "放弃我的更改",
  field: "字段",
  before: "之前",
  after: "之后",
  by: "操作人",
  opportunities: "商机",
  serviceRequests: "服务请求",
  purchases: "购买记录",
  timeline: "时间线",
  activity: "活动",
  amount: "金额",
  stage: "阶段",
  status: "状态",
  priority: "优先级",
  subject: "主题",
  due: "截止",
  dueAt: "截止 {when}",
  order: "订单",
  date: "日期",
  lines: "行数",
  changeStage: "更改阶段",
  classify: "分群",
  apply: "应用",
  notFound: "未找到，或您无权查看。",
  forbidden: "您的角色无权执行此操作。",
  error: "出错了",
  retry: "重试",
  total: "合计",
  weighted: "加权",
  deals: "{n} 个商机",
  won: "赢单",
  lost: "丢单",
  lossReason: "丢单原因",
  markLost: "标记为丢单",
  moveTo: "移动到",
  moved: "已移动到 {stage}。",
  dragHint: "将卡片拖到另一列，或使用卡片菜单。",
  pipelineName: "管道",
  assignee: "处理人",
  unassigned: "未分配",
  assignToMe: "分配给我",
  assign: "分配",
  comment: "评论",
  comments: "评论",
  addComment: "添加评论",
  internal: "内部",
  customerVisible: "客户可见",
  resolve: "解决",
  resolution: "解决方案",
  resolved: "已解决。",
  open: "打开",
  openedAt: "创建于",
  slaDue: "SLA 截止",
  firstResponse: "首次响应",
  timeLeft: "剩余 {t}",
  overdueBy: "已超时 {t}",
  age: "已打开 {t}",
  noSla: "无 SLA 截止时间",
  firstResponseDue: "首次响应截止",
  resolutionDue: "解决截止",
  assignedToMe: "分配给我的",
  allOpen: "全部未结",
  complete: "完成",
  completed: "已完成。",
  notifications: "通知",
  noNotifications: "没有通知。",
  noTasks: "没有未完成的任务。",
  overdue: "已逾期",
  kpiPipeline: "各阶段进行中的商机金额",
  kpiForecast: "按预计成交月份的加权预测",
  kpiFunnel: "漏斗（到达各阶段的商机）",
  kpiSla: "SLA 达成率（首次响应 / 解决）",
  kpiCsat: "客户满意度",
  kpiSegments: "客户分类",
  currency: "币种",
  analyticsUnavailable: "分析数据暂时不可用。",
  asOf: "截至",
  recordAsOf: "截至 {when} 的记录",
  didNotExist: "该客户当时尚不存在。",
  history: "历史记录及字段变更",
  exportAudit: "下载审计导出",
  exported: "导出已下载。",
  chooseCustomer: "选择要审计的客户",
  actor: "操作人",
  recorded: "记录于 {when}",
  version: "版本",
  now: "现在",
  yes: "是",
  no: "否",
  email: "邮箱",
  phone: "电话",
  address: "地址",
  primary: "主要",
  person: "个人",
  company: "公司",
  back: "返回",
  notYetBuilt: "读取模型正在追赶，请稍后再试。",
  newContact: "新联系方式",
  personalMasked: "您的角色看到的个人数据已被遮盖。",
  hidden: "已隐藏",
  result: "{n} 条结果",
  deal: "{n} 个商机",
  sectionFailed: "此部分无法加载。",
  networkError: "无法连接服务器，请重试。",
  conflictReloaded: "此记录已被他人修改，已重新加载：请检查后重试。",
  invalidField: "请检查{field}：{why}",
  whyRequired: "此项必填。",
  whyTooLong: "内容过长。",
  whyTooShort: "内容过短。",
  whyFormat: "格式不正确。",
  whyInvalid: "该值不被接受。",
  whyCountry: "请使用两位大写国家代码，例如 DE 或 CN。",
  whyLanguage: "请使用语言代码，例如 en 或 zh-CN。",
  whyEmail: "请使用电子邮件地址，例如 name@example.com。",
  whyPerson: "请从列表中选择一个人。",
  personSearch: "输入姓名或用户名",
  noMatch: "没有匹配的人。",
};

const DICTS: Record<Locale, Record<Key, string>> = { en, "zh-CN": zh };

/** The text of ``key`` in the current locale, with {name} placeholders filled. */
export function t(key: Key, vars: Record<string, string | number> = {}): string {
  const text = DICTS[locale.get()][key] ?? en[key];
  return text.replace(/\{(\w+)\}/g, (_, name: string) => String(vars[name] ?? `{${name}}`));
}

// Values of the API's enumerations, shown in the user's language.
const VALUES: Record<Locale, Record<string, string>> = {
  en: {
    lead: "Lead", prospect: "Prospect", customer: "Customer", churned: "Churned",
    high_value: "High value", potential: "Potential", at_risk: "At risk", standard: "Standard",
    qualification: "Qualification", needs_analysis: "Needs analysis", proposal: "Proposal",
    negotiation: "Negotiation", review: "Review", offer: "Offer", commitment: "Commitment",
    won: "Won", lost: "Lost", open: "Open", in_progress: "In progress",
    waiting_on_customer: "Waiting on customer", resolved: "Resolved", closed: "Closed",
    reopened: "Reopened", completed: "Completed", cancelled: "Cancelled",
    low: "Low", normal: "Normal", high: "High", urgent: "Urgent",
    price: "Price", competitor: "Competitor", no_budget: "No budget", no_decision: "No decision",
    timing: "Timing", product_fit: "Product fit", other: "Other",
    default: "New business", renewal: "Renewal",
    person: "Person", company: "Company", email: "E-mail", phone: "Phone", address: "Address",
    churned_class: "Churned", occasional: "Occasional",
    task_due_soon: "Task due soon", task_overdue: "Task overdue", sla_breach: "SLA breached",
    survey_invitation: "Satisfaction survey",
    admin: "admin", manager: "manager", sales_rep: "sales rep", service_agent: "service agent",
    marketing: "marketing", analyst: "analyst", auditor: "auditor", data_admin: "data admin",
    integration: "integration",
  },
  "zh-CN": {
    lead: "线索", prospect: "潜在客户", customer: "客户", churned: "已流失",
    high_value: "高价值", potential: "潜力", at_risk: "有流失风险", standard: "标准",
    qualification: "资格确认", needs_analysis: "需求分析", proposal: "方案报价",
    negotiation: "谈判", review: "评估", offer: "报价", commitment: "承诺",
    won: "赢单", lost: "丢单", open: "待处理", in_progress: "处理中",
    waiting_on_customer: "等待客户", resolved: "已解决", closed: "已关闭",
    reopened: "已重新打开", completed: "已完成", cancelled: "已取消",
    low: "低", normal: "普通", high: "高", urgent: "紧急",
    price: "价格", competitor: "竞争对手", no_budget: "无预算", no_decision: "未决策",
    timing: "时机", product_fit: "产品不匹配", other: "其他",
    default: "新业务", renewal: "续约", occasional: "偶尔购买",
    task_due_soon: "任务即将到期", task_overdue: "任务已逾期", sla_breach: "SLA 已违约",
    survey_invitation: "满意度调查",
    admin: "管理员", manager: "经理", sales_rep: "销售代表", service_agent: "客服专员",
    marketing: "市场", analyst: "分析师", auditor: "审计员", data_admin: "数据管理员",
    integration: "系统集成",
    person: "个人", company: "公司", email: "邮箱", phone: "电话", address: "地址",
    churned_class: "已流失",
  },
};

/** An enumeration value (stage, status, priority...) in the user's language. */
export function v(value: string | null | undefined): string {
  if (value === null || value === undefined || value === "") return "—";
  return VALUES[locale.get()][value] ?? value.replace(/_/g, " ");
}

// -- formatting -----------------------------------------------------------------------
export function money(amount: string | number | null | undefined, currency: string): string {
  if (amount === null || amount === undefined || amount === "") return "—";
  const n = typeof amount === "number" ? amount : Number(amount);
  try {
    return new Intl.NumberFormat(locale.get(), { style: "currency", currency }).format(n);
  } catch {
    return `${number(n)} ${currency}`;
  }
}

export function compactMoney(amount: number, currency: string): string {
  try {
    return new Intl.NumberFormat(locale.get(), {
      style: "currency", currency, notation: "compact", maximumFractionDigits: 1,
    }).format(amount);
  } catch {
    return `${number(amount)} ${currency}`;
  }
}

/** Amounts per currency, e.g. {"EUR": "12.00", "USD": "3"}, each in its own currency. */
export function moneyMap(m: Record<string, string> | null | undefined): string {
  const entries = Object.entries(m ?? {});
  if (!entries.length) return "—";
  return entries.map(([cur, amt]) => money(amt, cur)).join(" · ");
}

export function number(n: number | null | undefined, digits = 0): string {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  return new Intl.NumberFormat(locale.get(), { maximumFractionDigits: digits }).format(n);
}

export function percent(n: number | null | undefined): string {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  return new Intl.NumberFormat(locale.get(), { style: "percent", maximumFractionDigits: 0 }).format(n);
}

export function dateTime(iso: string | null | undefined): string {
  if (!iso) return "—";
  return new Intl.DateTimeFormat(locale.get(), { dateStyle: "medium", timeStyle: "short" }).format(new Date(iso));
}

export function date(iso: string | null | undefined): string {
  if (!iso) return "—";
  // A plain date (2026-03-01) is a calendar day: show it as such, not shifted by a zone.
  const d = iso.length === 10 ? new Date(`${iso}T00:00:00`) : new Date(iso);
  return new Intl.DateTimeFormat(locale.get(), { dateStyle: "medium" }).format(d);
}

export function monthLabel(iso: string): string {
  return new Intl.DateTimeFormat(locale.get(), { year: "numeric", month: "short" }).format(new Date(iso));
}

/** A duration in the largest fitting unit, e.g. "3 hours", "2 days" (Intl, the locale's words). */
export function duration(ms: number): string {
  const abs = Math.abs(ms);
  const units: [Intl.NumberFormatOptions["unit"], number][] = [
    ["day", 86_400_000], ["hour", 3_600_000], ["minute", 60_000],
  ];
  for (const [unit, size] of units) {
    if (abs >= size || unit === "minute") {
      return new Intl.NumberFormat(locale.get(), {
        style: "unit", unit, unitDisplay: "long", maximumFractionDigits: 0,
      }).format(Math.floor(abs / size));
    }
  }
  return "";
}

export function relative(iso: string | null | undefined): string {
  if (!iso) return "—";
  const diff = new Date(iso).getTime() - Date.now();
  const abs = Math.abs(diff);
  const rtf = new Intl.RelativeTimeFormat(locale.get(), { numeric: "auto" });
  if (abs < 3_600_000) return rtf.format(Math.round(diff / 60_000), "minute");
  if (abs < 86_400_000) return rtf.format(Math.round(diff / 3_600_000), "hour");
  if (abs < 30 * 86_400_000) return rtf.format(Math.round(diff / 86_400_000), "day");
  return date(iso);
}
