import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import {
  ApiError,
  currentSession,
  onSessionChange,
  sessionExpired,
  sessionRestored,
  signIn,
  signOut,
  type Session,
} from "./api";
import { LOCALES, locale, setLocale, t, v, type Key, type Locale } from "./i18n";
import { navigate, useRoute } from "./router";
import { loadPeople, peopleVersion } from "./people";
import { screensFor, type Screen } from "./roles";
import { useSignal } from "./signal";
import { Link, Toasts } from "./ui";
import { AuditScreen } from "./screens/audit";
import { CustomerPage } from "./screens/customer";
import { CustomerList } from "./screens/customers";
import { Dashboard } from "./screens/dashboard";
import { PipelineBoard } from "./screens/pipeline";
import { ServiceQueue } from "./screens/service";
import { TasksScreen } from "./screens/tasks";
import "./styles.css";

/** The session, or undefined while the page still asks the server whether the browser's
 * session cookie signs it in (after a reload). */
function useSession(): Session | null | undefined {
  const now = () => (sessionRestored() || currentSession() ? currentSession() : undefined);
  const [s, setS] = useState(now());
  useEffect(() => {
    setS(now());
    return onSessionChange(() => setS(now()));
  }, []);
  return s;
}

function LanguageSwitch() {
  const current = useSignal(locale);
  return (
    <label class="lang">
      <span class="sr-only">{t("language")}</span>
      <select
        data-testid="language"
        value={current}
        onChange={(e) => setLocale((e.currentTarget as HTMLSelectElement).value as Locale)}
      >
        {LOCALES.map((l) => (
          <option key={l.code} value={l.code}>
            {l.label}
          </option>
        ))}
      </select>
    </label>
  );
}

function SignIn() {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [expired] = useState(sessionExpired);
  const [busy, setBusy] = useState(false);
  useSignal(locale);
  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await signIn(username.trim(), password);
    } catch (err) {
      setError(err instanceof ApiError && err.status === 401 ? t("badCredentials") : String((err as Error).message));
    } finally {
      setBusy(false);
    }
  }
  return (
    <main class="signin">
      <form class="card signin-form" onSubmit={submit} aria-labelledby="signin-title">
        <div class="signin-head">
          <h1 id="signin-title">{t("app")}</h1>
          <LanguageSwitch />
        </div>
        <label>
          {t("username")}
          <input
            name="username"
            autocomplete="username"
            required
            value={username}
            onInput={(e) => setUsername(e.currentTarget.value)}
          />
        </label>
        <label>
          {t("password")}
          <input
            name="password"
            type="password"
            autocomplete="current-password"
            required
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </label>
        {expired && !error && <p class="muted">{t("sessionExpired")}</p>}
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy}>
          {t("signIn")}
        </button>
      </form>
    </main>
  );
}

const SCREEN_LABEL: Record<Screen, Key> = {
  customers: "customers",
  pipeline: "pipeline",
  service: "service",
  tasks: "tasks",
  dashboard: "dashboard",
  audit: "audit",
};

function Shell({ session }: { session: Session }) {
  useSignal(locale);
  useSignal(peopleVersion);
  const { parts } = useRoute();
  useEffect(() => { void loadPeople(session); }, [session.user.id]);
  const [menuOpen, setMenuOpen] = useState(false);
  const screens = screensFor(session.user.role);
  const screen = (parts[0] ?? "") as Screen;
  useEffect(() => {
    if (!screens.includes(screen) && !(screen === "customers" && parts[1])) navigate(`/${screens[0]}`, true);
  }, [screen]);
  useEffect(() => setMenuOpen(false), [parts.join("/")]);

  // A screen the role is not offered (e.g. the address of the previous user's screen) is
  // never shown, nor its data asked for: the effect above moves to the role's first screen.
  const allowed = screens.includes(screen) || (screen === "customers" && !!parts[1]);
  let content;
  switch (allowed ? screen : undefined) {
    case "customers":
      content = parts[1] ? <CustomerPage id={parts[1]} session={session} /> : <CustomerList session={session} />;
      break;
    case "pipeline":
      content = <PipelineBoard session={session} />;
      break;
    case "service":
      content = <ServiceQueue session={session} />;
      break;
    case "tasks":
      content = <TasksScreen session={session} />;
      break;
    case "dashboard":
      content = <Dashboard />;
      break;
    case "audit":
      content = <AuditScreen session={session} id={parts[1]} />;
      break;
    default:
      content = null;
  }
  return (
    <div class="shell">
      <header class="topbar">
        <button
          type="button"
          class="icon menu-button"
          aria-label={t("menu")}
          aria-expanded={menuOpen}
          data-testid="menu"
          onClick={() => setMenuOpen(!menuOpen)}
        >
          ☰
        </button>
        <Link href={`/${screens[0]}`} class="brand">
          {t("app")}
        </Link>
        <nav class={menuOpen ? "nav open" : "nav"} aria-label={t("menu")}>
          {screens.map((s) => (
            <Link key={s} href={`/${s}`} class={s === screen ? "active" : ""}>
              {t(SCREEN_LABEL[s])}
            </Link>
          ))}
        </nav>
        <div class="user">
          <LanguageSwitch />
          <span class="who" title={`${session.user.username} (${session.user.role})`} data-testid="who">
            {session.user.display_name || session.user.username}
            <small>{v(session.user.role)}</small>
          </span>
          <button type="button" class="link" data-testid="sign-out" onClick={() => void signOut()}>
            {t("signOut")}
          </button>
        </div>
      </header>
      <main class="content">{content}</main>
    </div>
  );
}

function App() {
  const session = useSession();
  return (
    <>
      {session === undefined ? (
        <main class="signin" aria-busy="true" data-testid="restoring" />
      ) : session ? (
        <Shell session={session} />
      ) : (
        <SignIn />
      )}
      <Toasts />
    </>
  );
}

render(<App />, document.getElementById("app")!);
