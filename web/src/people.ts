// Names for the ids of users (owners, assignees, actors). Admins and managers may read the
// user directory (GET /users: a manager their own team); everyone knows their own name.
// Ids without a known name are shown shortened.
import { get, type Session } from "./api";
import { signal } from "./signal";

const names = signal<Map<string, string>>(new Map());
export const peopleVersion = names;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

interface UserRow {
  id: string;
  display_name: string;
  username: string;
}

export async function loadPeople(session: Session): Promise<void> {
  const map = new Map(names.get());
  map.set(session.user.id, session.user.display_name || session.user.username);
  names.set(map);
  if (!["admin", "manager"].includes(session.user.role)) return;
  try {
    const page = await get<{ items: UserRow[] }>("/users", { limit: 200 });
    const next = new Map(names.get());
    for (const u of page.items) next.set(u.id, u.display_name || u.username);
    names.set(next);
  } catch {
    /* no directory for this caller: ids stay shortened */
  }
}

/** A user's display name, or the id (shortened when it is a UUID). */
export function person(id: string | null | undefined): string {
  if (!id) return "—";
  return names.get().get(id) ?? (UUID.test(id) ? id.slice(0, 8) : id);
}

/** Every user whose name is known here, by name. */
export function knownPeople(): [string, string][] {
  return [...names.get().entries()].sort((a, b) => a[1].localeCompare(b[1]));
}
