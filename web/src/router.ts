// Client routes on the History API; `crm serve` answers index.html for any of them.
import { signal, useSignal } from "./signal";

export const path = signal(location.pathname + location.search);

export function navigate(to: string, replace = false): void {
  if (to === location.pathname + location.search) return;
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  path.set(to);
  window.scrollTo(0, 0);
}

window.addEventListener("popstate", () => path.set(location.pathname + location.search));

export function useRoute(): { parts: string[]; query: URLSearchParams } {
  const p = useSignal(path);
  const [pathname, search = ""] = p.split("?");
  return { parts: pathname.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(search) };
}

/** An <a> click that navigates inside the app (modifier clicks open a new tab as usual). */
export function linkHandler(e: MouseEvent): void {
  const a = (e.currentTarget as HTMLAnchorElement);
  if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.getAttribute("href") ?? "/");
}
