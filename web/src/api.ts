// The client of the public HTTP API (/api/v1): bearer token, problem+json errors,
// ETag / If-Match, and read-your-writes through the event-log position of each write.
//
// The access token lives in this module's memory only (never in localStorage or
// sessionStorage). The sign-in session is kept by the server's httpOnly refresh cookie:
// on start-up (a reload, a new tab) the page asks /auth/session/refresh for a token, with
// the CSRF token of the readable crm_csrf cookie in X-CSRF-Token.

import type { components } from "./api-types";

export const BASE = "/api/v1";

/** The signed-in user, as the sign-in answers name them. */
export type User = Schemas["UserOut"];

export interface Session {
  token: string;
  user: User;
  expires_at: number; // ms since the epoch
  issued_at: number; // ms since the epoch
}

/** An application/problem+json answer (RFC 9457), or a network failure. */
export class ApiError extends Error {
  constructor(
    public status: number,
    public problem: Record<string, unknown>,
  ) {
    super(String(problem.detail ?? problem.title ?? `HTTP ${status}`));
  }
  get field(): string | undefined {
    const f = this.problem.field;
    return typeof f === "string" ? f : undefined;
  }
  get code(): string | undefined {
    const c = this.problem.code;
    return typeof c === "string" ? c : undefined;
  }
}

/** The API's shapes, generated from its OpenAPI document (web/openapi.json, `npm run types`). */
export type Schemas = components["schemas"];

/** What a command route answers. */
export type WriteResult = Schemas["WriteResponse"];

/** One page of a list: its rows, the cursor of the next page and the total (when asked). */
export type Page<T> = Omit<Schemas["CustomerPage"], "items"> & { items: T[] };

const SESSION_PATH = "/auth/session";
const CSRF_COOKIE = "crm_csrf";
const POSITION_KEY = "crm.position";
const EXPIRED_KEY = "crm.expired";

/** True once after the API refused the session's token (it expired): say so at sign-in. */
export function sessionExpired(): boolean {
  const expired = sessionStorage.getItem(EXPIRED_KEY) === "1";
  sessionStorage.removeItem(EXPIRED_KEY);
  return expired;
}

let session: Session | null = null;
// False until the start-up refresh (through the cookie) has answered.
let restored = false;
// The highest event-log position this browser has written: every read of a read model
// waits (bounded, on the server) until the read models have applied it.
let position = Number(sessionStorage.getItem(POSITION_KEY) ?? "0") || 0;
const listeners = new Set<() => void>();

export function currentSession(): Session | null {
  return session;
}

/** True once the page knows whether the browser's session cookie still signs it in. */
export function sessionRestored(): boolean {
  return restored;
}

/** The CSRF token of the session (the readable crm_csrf cookie), or null when none. */
function csrfToken(): string | null {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === CSRF_COOKIE) return decodeURIComponent(value.join("="));
  }
  return null;
}

export function onSessionChange(fn: () => void): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function setSession(s: Session | null): void {
  // Positions belong to what this session wrote; a new session starts from none.
  position = 0;
  sessionStorage.removeItem(POSITION_KEY);
  keep(s);
}

function keep(s: Session | null, tell = true): void {
  session = s;
  scheduleRefresh();
  listeners.forEach((fn) => fn());
  if (tell) channel?.postMessage(s ? { kind: "session", session: s } : { kind: "signed-out" });
}

// Tabs of this browser share one session cookie: a tab that signs in, refreshes or signs
// out tells the others (in memory, never through storage), and they follow.
type Told = { kind: "session"; session: Session } | { kind: "signed-out" };
const channel = typeof BroadcastChannel !== "undefined" ? new BroadcastChannel("crm.session") : null;
channel?.addEventListener("message", (e: MessageEvent<Told>) => {
  if (e.data.kind === "session") {
    if (!session || session.user.id !== e.data.session.user.id) {
      position = 0;
      sessionStorage.removeItem(POSITION_KEY);
    }
    keep(e.data.session, false);
  } else if (session) {
    setSessionQuietly(null);
  }
});

function setSessionQuietly(s: Session | null): void {
  position = 0;
  sessionStorage.removeItem(POSITION_KEY);
  keep(s, false);
}

// -- keeping a working user signed in -------------------------------------------------
// Tokens live minutes. Shortly before the token expires it is exchanged for a new one
// (POST /auth/refresh) if the user did anything since it was issued; an idle session
// runs out, and the user signs in again with a message saying why.
let lastActivity = Date.now();
let refreshTimer: ReturnType<typeof setTimeout> | undefined;
if (typeof window !== "undefined") {
  for (const ev of ["pointerdown", "keydown", "wheel", "touchstart"]) {
    window.addEventListener(ev, () => { lastActivity = Date.now(); }, { passive: true, capture: true });
  }
  // A sleeping tab's timers are late: check again when it is seen.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") scheduleRefresh();
  });
}

/** When to refresh: a minute before expiry (a quarter of the time left when shorter). */
function refreshAt(s: Session): number {
  const left = s.expires_at - Date.now();
  return s.expires_at - Math.min(60_000, Math.max(0, left) / 4);
}

function scheduleRefresh(): void {
  clearTimeout(refreshTimer);
  const s = session;
  if (!s) return;
  const due = refreshAt(s) - Date.now();
  refreshTimer = setTimeout(() => void onRefreshDue(s), Math.max(0, due));
}

async function onRefreshDue(s: Session): Promise<void> {
  if (session !== s) return;
  const worked = lastActivity >= s.issued_at;
  if (!worked || s.expires_at <= Date.now()) {
    // Idle through the token's life (or asleep past its end): the session ends here (and,
    // on the server, its cookie no longer refreshes once this token has expired).
    if (s.expires_at <= Date.now()) {
      sessionStorage.setItem(EXPIRED_KEY, "1");
      setSessionQuietly(null);
    } else {
      refreshTimer = setTimeout(() => void onRefreshDue(s), s.expires_at - Date.now());
    }
    return;
  }
  try {
    await refreshSession();
  } catch (e) {
    // A 401 ended the session in request(); anything else (offline): try again soon.
    if (session === s && !(e instanceof ApiError && e.status === 401)) {
      refreshTimer = setTimeout(() => void onRefreshDue(s), Math.min(15_000, Math.max(1_000, s.expires_at - Date.now())));
    }
  }
}

/** A new token for the session of the refresh cookie (new id, fresh expiry, current role). */
export async function refreshSession(): Promise<Session | null> {
  const before = session;
  if (!before) return null;
  let answer: TokenAnswer;
  try {
    answer = await cookieRefresh();
  } catch (e) {
    if (e instanceof ApiError && (e.status === 401 || e.status === 403) && session === before) {
      sessionStorage.setItem(EXPIRED_KEY, "1");
      setSessionQuietly(null);
    }
    throw e;
  }
  if (session !== before) return session; // signed out or refreshed meanwhile
  const s = sessionOf(answer);
  keep(s);
  return s;
}

function cookieRefresh(): Promise<TokenAnswer> {
  const csrf = csrfToken();
  if (!csrf) return Promise.reject(new ApiError(401, { status: 401, title: "Unauthorized", detail: "no session" }));
  return request<TokenAnswer>(`${SESSION_PATH}/refresh`, {
    method: "POST",
    readAfter: false,
    auth: false,
    headers: { "X-CSRF-Token": csrf },
  });
}

function sessionOf(answer: TokenAnswer): Session {
  const now = Date.now();
  return { token: answer.access_token, user: answer.user, expires_at: now + answer.expires_in * 1000, issued_at: now };
}

/** On start-up: the session of the browser's cookie, if it still has one (a reload, a new tab). */
async function restoreSession(): Promise<void> {
  try {
    if (csrfToken()) {
      const answer = await cookieRefresh();
      lastActivity = Date.now(); // opening a page is using it
      if (!session) keep(sessionOf(answer), false);
    }
  } catch {
    /* no session (ended, signed out, or the server is away): the sign-in screen */
  } finally {
    restored = true;
    listeners.forEach((fn) => fn());
  }
}

export function lastPosition(): number {
  return position;
}

function remember(p: number | null | undefined): void {
  if (typeof p === "number" && p > position) {
    position = p;
    sessionStorage.setItem(POSITION_KEY, String(p));
  }
}

export interface Options {
  method?: string;
  body?: unknown;
  ifMatch?: number | null;
  /** Send X-Min-Position (reads of read models); default true for GET. */
  readAfter?: boolean;
  signal?: AbortSignal;
  raw?: boolean;
  auth?: boolean;
  headers?: Record<string, string>;
}

function query(params: Record<string, string | number | boolean | string[] | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

export function url(path: string, params: Parameters<typeof query>[0] = {}): string {
  return `${BASE}${path}${query(params)}`;
}

async function problemOf(r: Response): Promise<ApiError> {
  let body: Record<string, unknown> = { status: r.status, title: r.statusText };
  try {
    const text = await r.text();
    if (text) {
      const parsed = JSON.parse(text) as unknown;
      if (parsed && typeof parsed === "object") body = parsed as Record<string, unknown>;
    }
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(r.status, body);
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

/** One request; throws ApiError on any non-2xx. 401 ends the session. */
export async function request<T>(path: string, opts: Options = {}): Promise<T> {
  const method = opts.method ?? "GET";
  const headers: Record<string, string> = { Accept: "application/json", ...opts.headers };
  if (opts.auth !== false && session) headers.Authorization = `Bearer ${session.token}`;
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  if (opts.ifMatch !== undefined && opts.ifMatch !== null) headers["If-Match"] = `"${opts.ifMatch}"`;
  if (method !== "GET") headers["Idempotency-Key"] = crypto.randomUUID();
  const readAfter = opts.readAfter ?? method === "GET";
  if (readAfter && position > 0) headers["X-Min-Position"] = String(position);
  for (let attempt = 0; ; attempt++) {
    let r: Response;
    try {
      r = await fetch(path.startsWith("/") && !path.startsWith(BASE) ? BASE + path : path, {
        method,
        headers,
        body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
        signal: opts.signal,
        credentials: "same-origin",
      });
    } catch (e) {
      if (e instanceof DOMException && e.name === "AbortError") throw e;
      throw new ApiError(0, { title: "Network error", detail: String(e) });
    }
    // The read models are behind the position we wrote: the server says when to retry.
    if (r.status === 503 && attempt < 4) {
      const problem = await problemOf(r.clone());
      if (problem.code === "read-model-behind") {
        const retry = Number(r.headers.get("Retry-After") ?? "1");
        await sleep(Math.min(5, Math.max(0.2, retry)) * 1000);
        continue;
      }
    }
    // A position past the end of the log (the server's data was reset): forget it.
    if (r.status === 422 && headers["X-Min-Position"] && attempt < 4) {
      const problem = await problemOf(r.clone());
      if (problem.field === "x_min_position" || problem.field === "min_position") {
        position = 0;
        sessionStorage.removeItem(POSITION_KEY);
        delete headers["X-Min-Position"];
        continue;
      }
    }
    if (r.status === 401 && opts.auth !== false && session) {
      sessionStorage.setItem(EXPIRED_KEY, "1");
      setSession(null);
    }
    if (!r.ok) throw await problemOf(r);
    if (opts.raw) return r as unknown as T;
    if (r.status === 204) return undefined as T;
    const data = (await r.json()) as T;
    if (method !== "GET") remember((data as unknown as WriteResult).position);
    return data;
  }
}

export const get = <T>(path: string, params: Parameters<typeof query>[0] = {}, signal?: AbortSignal) =>
  request<T>(path + query(params), { signal });

/** A command: POST (or PATCH) with the record's version as If-Match when given. */
export const write = (path: string, body: unknown, ifMatch?: number | null, method = "POST") =>
  request<WriteResult>(path, { method, body, ifMatch });

/** A record of a read model with its version (the ETag). */
export async function getRecord<T extends { version: number }>(path: string): Promise<T> {
  return get<T>(path);
}

// -- sign-in ------------------------------------------------------------------------
/** What POST /auth/session and /auth/session/refresh answer. */
type TokenAnswer = Schemas["TokenOut"];

/** Sign in: the token (kept in memory) and the session's cookies (set by the server). */
export async function signIn(username: string, password: string): Promise<Session> {
  const answer = await request<TokenAnswer>(SESSION_PATH, {
    method: "POST",
    body: { username, password },
    auth: false,
  });
  const s = sessionOf(answer);
  setSession(s);
  return s;
}

/** Sign out: the server revokes the session and clears its cookies; every tab follows. */
export async function signOut(): Promise<void> {
  const csrf = csrfToken();
  try {
    // First the server (a reload right after must not find the session still there).
    await request<void>(SESSION_PATH, {
      method: "DELETE",
      auth: false,
      readAfter: false,
      headers: csrf ? { "X-CSRF-Token": csrf } : {},
    });
  } catch {
    /* offline: the cookie ends with the token's life on the server */
  } finally {
    setSession(null);
  }
}

/** Download a file answer (e.g. the audit export zip) with the bearer token. */
export async function download(path: string, filename: string): Promise<void> {
  const r = await request<Response>(path, { raw: true, readAfter: false });
  const blob = await r.blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

/** Every page of a list, following next_cursor (bounded). */
export async function all<T>(path: string, params: Parameters<typeof query>[0], max = 1000): Promise<T[]> {
  const out: T[] = [];
  let cursor: string | null = null;
  do {
    const page: Page<T> = await get<Page<T>>(path, { ...params, limit: 200, cursor });
    out.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && out.length < max);
  return out;
}

// A session kept by the cookie from an earlier page (a reload, another tab) goes on.
if (typeof window !== "undefined") void restoreSession();
