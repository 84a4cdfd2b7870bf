// Small shared pieces: loading data, errors, toasts, links, dialogs.
import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "./api";
import { t } from "./i18n";
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

export function errorText(e: unknown): string {
  if (e instanceof ApiError) {
    if (e.status === 404) return t("notFound");
    if (e.status === 403) return `${t("forbidden")} ${e.message}`;
    if (e.code === "read-model-behind" || e.code === "read-model-missing") return t("notYetBuilt");
    return e.field ? `${e.message} (${e.field})` : e.message;
  }
  return e instanceof Error ? e.message : String(e);
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

/** Runs an async action once at a time; ``busy`` while it runs; errors become toasts. */
export function useAction(): [boolean, (fn: () => Promise<void>) => Promise<void>] {
  const [busy, setBusy] = useState(false);
  const run = useCallback(async (fn: () => Promise<void>) => {
    setBusy(true);
    try {
      await fn();
    } catch (e) {
      toastError(e);
    } finally {
      setBusy(false);
    }
  }, []);
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
