// Names for the ids of users (owners, assignees, actors), from GET /people (every caller
// may read colleagues' names and roles). Ids without a known name (systems, scripts) are
// shown shortened.
import { get, type Session } from "./api";
import { signal } from "./signal";

const names = signal<Map<string, string>>(new Map());
export const peopleVersion = names;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

interface PersonRow {
  id: string;
  username?: string;
  display_name: string | null;
  role: string;
}

const roles = new Map<string, string>();
const usernames = new Map<string, string>();

export async function loadPeople(session: Session): Promise<void> {
  const map = new Map(names.get());
  map.set(session.user.id, session.user.display_name || session.user.username);
  usernames.set(session.user.id, session.user.username);
  roles.set(session.user.id, session.user.role);
  names.set(map);
  try {
    const page = await get<{ items: PersonRow[] }>("/people");
    const next = new Map(names.get());
    for (const u of page.items) {
      if (u.display_name || u.username) next.set(u.id, u.display_name || u.username || u.id);
      if (u.username) usernames.set(u.id, u.username);
      roles.set(u.id, u.role);
    }
    names.set(next);
  } catch {
    /* not readable now: ids stay shortened */
  }
}

/** A user's display name, or the id (shortened when it is a UUID). */
export function person(id: string | null | undefined): string {
  if (!id) return "—";
  return names.get().get(id) ?? (UUID.test(id) ? id.slice(0, 8) : id);
}

/** Every user whose name is known here (of one of ``only`` roles when given), by name:
 * [id, name, username]. */
export function knownPeople(only?: string[]): [string, string, string][] {
  return [...names.get().entries()]
    .filter(([id]) => !only || only.includes(roles.get(id) ?? ""))
    .map(([id, name]): [string, string, string] => [id, name, usernames.get(id) ?? ""])
    .sort((a, b) => a[1].localeCompare(b[1]));
}
