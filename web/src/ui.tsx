// Small shared pieces: loading data, errors, toasts, links, dialogs.
import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "./api";
import { locale, t, type Key } from "./i18n";
import { knownPeople, person, peopleVersion } from "./people";
import { linkHandler } from "./router";
import { signal, useSignal } from "./signal";

export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload: () => void;
}

/** Runs ``load`` now and whenever ``deps`` change; stale answers are dropped. */
export function useLoad<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[]): Loaded<T> {
  const [state, setState] = useState<{ data?: T; error?: unknown; loading: boolean }>({ loading: true });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    const ctrl = new AbortController();
    setState((s) => ({ ...s, loading: true }));
    load(ctrl.signal).then(
      (data) => !ctrl.signal.aborted && setState({ data, loading: false }),
      (error) => !ctrl.signal.aborted && setState({ error, loading: false }),
    );
    return () => ctrl.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((n) => n + 1), []);
  return { data: state.data, error: state.error, loading: state.loading, reload };
}

/** What a role that may not read personal data sees in its place (readapi/encoding.py). */
export const MASK = "***";

/** A text value as shown: masked values as a "hidden" label, empty ones as a dash. */
export function txt(value: string | null | undefined): ComponentChildren {
  if (value === MASK) return <span class="masked" data-masked="1">{t("hidden")}</span>;
  return value === null || value === undefined || value === "" ? "—" : value;
}

/** The same for a value that must be plain text (a title attribute, a dialog title). */
export function plain(value: string | null | undefined): string {
  return value === MASK ? t("hidden") : value ?? "";
}

/** "1 result" or "3 results", in the user's language. */
export function count(n: number, one: Key, many: Key): string {
  const text = new Intl.NumberFormat(locale.get()).format(n);
  return t(new Intl.PluralRules(locale.get()).select(n) === "one" ? one : many, { n: text });
}

// The labels of fields a problem may name (the last part of its ``field``).
const FIELD_LABEL: Record<string, Key> = {
  name: "name", industry: "industry", country: "country", preferred_language: "preferredLanguage",
  source: "source", value: "value", label: "label", assignee_id: "assignee", owner_id: "owner",
  reason: "reason", subject: "subject", kind: "kind",
};
const FIELD_WHY: Record<string, Key> = {
  country: "whyCountry", preferred_language: "whyLanguage", assignee_id: "whyPerson", owner_id: "whyPerson",
};

/** The field a 422 names (its last part, e.g. "value" of "contact.value"), if any. */
export function problemField(e: unknown): string | undefined {
  if (!(e instanceof ApiError) || e.status !== 422 || !e.field) return undefined;
  return e.field.split(".").pop();
}

/** A 422's problem in words for the user: which field, and what to do. */
function invalidText(e: ApiError): string {
  const name = problemField(e) ?? "";
  const errors = e.problem.errors;
  const type = Array.isArray(errors) && errors[0] && typeof errors[0] === "object" ? String((errors[0] as Record<string, unknown>).type ?? "") : "";
  let why: Key = FIELD_WHY[name] ?? "whyInvalid";
  if (type === "missing") why = "whyRequired";
  else if (type.endsWith("too_long")) why = "whyTooLong";
  else if (type.endsWith("too_short")) why = "whyTooShort";
  else if (!FIELD_WHY[name] && type.includes("pattern")) why = "whyFormat";
  else if (!FIELD_WHY[name] && name === "value" && /e-?mail/i.test(e.message)) why = "whyEmail";
  const label = FIELD_LABEL[name];
  return t("invalidField", { field: label ? t(label) : name || "?", why: t(why) });
}

/** An API failure in words for the user (never the server's technical text). */
export function errorText(e: unknown): string {
  if (e instanceof ApiError) {
    if (e.status === 404) return t("notFound");
    if (e.status === 403) return t("forbidden");
    if (e.status === 409) return t("conflictReloaded");
    if (e.status === 422) return invalidText(e);
    if (e.status === 0) return t("networkError");
    if (e.code === "read-model-behind" || e.code === "read-model-missing") return t("notYetBuilt");
    return e.message;
  }
  return e instanceof Error ? e.message : String(e);
}

/** The problem next to the field it names, when it names ``name``. */
export function FieldError({ error, name }: { error: unknown; name: string }) {
  if (problemField(error) !== name) return null;
  return <small class="field-error" role="alert" data-testid={`field-error-${name}`}>{errorText(error)}</small>;
}

/**
 * A person picked by name or username, for an owner or assignee: type part of a name and
 * choose from the matches (from GET /people); ``onChange`` gets the person's id.
 */
export function PersonPicker({ value, onChange, only, label, testid }: {
  value: string; onChange: (id: string) => void; only?: string[]; label: string; testid?: string;
}) {
  useSignal(peopleVersion);
  const [text, setText] = useState(value ? person(value) : "");
  const [open, setOpen] = useState(false);
  const [active, setActive] = useState(0);
  const q = text.trim().toLowerCase();
  const matches = knownPeople(only).filter(([id, name, username]) =>
    !q || name.toLowerCase().includes(q) || username.toLowerCase().includes(q) || id === q).slice(0, 8);
  function choose(id: string) {
    onChange(id);
    setText(person(id));
    setOpen(false);
  }
  return (
    <div class="picker" data-testid={testid}>
      <input
        role="combobox"
        aria-label={label}
        aria-expanded={open}
        aria-autocomplete="list"
        placeholder={t("personSearch")}
        value={text}
        onInput={(e) => {
          setText(e.currentTarget.value);
          setOpen(true);
          setActive(0);
          onChange("");
        }}
        onFocus={() => setOpen(true)}
        onBlur={() => setTimeout(() => setOpen(false), 150)}
        onKeyDown={(e) => {
          if (e.key === "ArrowDown") { setActive(Math.min(active + 1, matches.length - 1)); e.preventDefault(); }
          else if (e.key === "ArrowUp") { setActive(Math.max(active - 1, 0)); e.preventDefault(); }
          else if (e.key === "Enter" && open && matches[active]) { choose(matches[active][0]); e.preventDefault(); }
          else if (e.key === "Escape") setOpen(false);
        }}
      />
      {open && q && (
        <ul class="picker-list" role="listbox">
          {matches.length === 0 && <li class="muted">{t("noMatch")}</li>}
          {matches.map(([id, name, username], i) => (
            <li
              key={id}
              role="option"
              aria-selected={i === active}
              class={i === active ? "active" : ""}
              data-id={id}
              onMouseDown={(e) => { e.preventDefault(); choose(id); }}
            >
              {name} <span class="muted small">{username}</span>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

export function ErrorBox({ error, onRetry }: { error: unknown; onRetry?: () => void }) {
  return (
    <div class="error" role="alert">
      <strong>{error instanceof ApiError && error.status === 404 ? "" : `${t("error")}: `}</strong>
      {errorText(error)}
      {onRetry && (
        <button type="button" class="link" onClick={onRetry}>
          {t("retry")}
        </button>
      )}
    </div>
  );
}

export function Loading() {
  return (
    <div class="loading" aria-busy="true">
      {t("loading")}
    </div>
  );
}

/** Loading, error or the content. */
export function Show<T>({ state, children }: { state: Loaded<T>; children: (data: T) => ComponentChildren }) {
  if (state.error) return <ErrorBox error={state.error} onRetry={state.reload} />;
  if (state.data === undefined) return <Loading />;
  return <>{children(state.data)}</>;
}

export function Link({ href, children, class: cls }: { href: string; children: ComponentChildren; class?: string }) {
  return (
    <a href={href} class={cls} onClick={linkHandler}>
      {children}
    </a>
  );
}

// -- toasts -------------------------------------------------------------------------------
interface Toast {
  id: number;
  text: string;
  kind: "ok" | "error";
}
const toasts = signal<Toast[]>([]);
let nextToast = 1;

export function toast(text: string, kind: "ok" | "error" = "ok"): void {
  const id = nextToast++;
  toasts.set([...toasts.get(), { id, text, kind }]);
  setTimeout(() => toasts.set(toasts.get().filter((x) => x.id !== id)), kind === "ok" ? 3500 : 7000);
}

export function toastError(e: unknown): void {
  toast(errorText(e), "error");
}

export function Toasts() {
  const list = useSignal(toasts);
  return (
    <div class="toasts" aria-live="polite">
      {list.map((x) => (
        <div key={x.id} class={`toast ${x.kind}`} role={x.kind === "error" ? "alert" : "status"}>
          {x.text}
        </div>
      ))}
    </div>
  );
}

// -- a modal dialog -------------------------------------------------------------------
export function Dialog({ title, onClose, children }: { title: string; onClose: () => void; children: ComponentChildren }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
    return () => d?.close();
  }, []);
  return (
    <dialog ref={ref} class="dialog" onClose={onClose} onCancel={onClose}>
      <header>
        <h2>{title}</h2>
        <button type="button" class="icon" aria-label={t("cancel")} onClick={onClose}>
          ×
        </button>
      </header>
      {children}
    </dialog>
  );
}

/**
 * Runs an async action once at a time; ``busy`` while it runs; errors become toasts in
 * words, and a 409 (the record changed meanwhile, e.g. after a double click) reloads
 * through ``onConflict`` and says so. ``onError`` may take an error first (return true).
 */
export function useAction(onConflict?: () => void, onError?: (e: unknown) => boolean): [boolean, (fn: () => Promise<void>) => Promise<void>] {
  const [busy, setBusy] = useState(false);
  const busyRef = useRef(false);
  const run = useCallback(async (fn: () => Promise<void>) => {
    if (busyRef.current) return; // a second click while the first runs does nothing
    busyRef.current = true;
    setBusy(true);
    try {
      await fn();
    } catch (e) {
      if (onError?.(e)) return;
      if (e instanceof ApiError && e.status === 409) onConflict?.();
      toastError(e);
    } finally {
      busyRef.current = false;
      setBusy(false);
    }
  }, [onConflict, onError]);
  return [busy, run];
}

/** A debounced copy of ``value``. */
export function useDebounced<T>(value: T, ms: number): T {
  const [out, setOut] = useState(value);
  useEffect(() => {
    const h = setTimeout(() => setOut(value), ms);
    return () => clearTimeout(h);
  }, [value, ms]);
  return out;
}

/** Re-render every ``ms`` (for "time left" counters). */
export function useNow(ms = 30_000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const h = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(h);
  }, [ms]);
  return now;
}

export function Badge({ value, kind }: { value: string; kind?: string }) {
  return <span class={`badge ${kind ?? ""}`}>{value}</span>;
}
