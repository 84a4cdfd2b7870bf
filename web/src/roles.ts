// What each role may see and do in the UI. The API decides (403 otherwise); this mirrors
// its write scopes (readapi/auth.py WRITE_SCOPES) so the UI offers only what will work.

const WRITE_SCOPES: Record<string, string[]> = {
  admin: ["customer", "customer.marketing", "opportunity", "interaction", "service", "task"],
  manager: ["customer", "customer.marketing", "opportunity", "interaction", "service", "task"],
  sales_rep: ["customer", "customer.marketing", "opportunity", "interaction", "task"],
  service_agent: ["interaction", "service", "task"],
  marketing: ["customer.marketing"],
  analyst: [],
  auditor: [],
  data_admin: ["customer", "customer.marketing"],
  integration: ["customer", "customer.marketing", "opportunity", "interaction", "service"],
};

export function can(role: string, scope: string): boolean {
  return (WRITE_SCOPES[role] ?? []).includes(scope);
}

/** The people's roles that may work records of a scope (e.g. be offered as an assignee). */
export function rolesWith(scope: string): string[] {
  return Object.keys(WRITE_SCOPES).filter((r) => r !== "integration" && can(r, scope));
}

/** The record types each role may read at all (others: 403): readapi/access.py READABLE,
 *  which tests/unit/test_access_declaration.py compares with this table. */
const READABLE: Record<string, string[]> = {
  admin: ["customer", "opportunity", "interaction", "service_request", "task"],
  manager: ["customer", "opportunity", "interaction", "service_request", "task"],
  sales_rep: ["customer", "opportunity", "interaction", "service_request", "task"],
  service_agent: ["customer", "interaction", "service_request", "task"],
  marketing: ["customer"],
  analyst: ["customer", "opportunity", "interaction", "service_request", "task"],
  auditor: ["customer", "opportunity", "interaction", "service_request", "task"],
  data_admin: ["customer", "opportunity", "interaction", "service_request", "task"],
  integration: ["customer", "opportunity", "interaction", "service_request", "task"],
};

/** Whether the role may read records of this type (the API answers 403 otherwise). */
export function canRead(role: string, type: string): boolean {
  return (READABLE[role] ?? []).includes(type);
}

/** Roles that see personal data masked (and may not search by it). */
export const masked = (role: string) => role === "analyst";
export const canAnalytics = (role: string) => ["analyst", "manager", "admin"].includes(role);
export const canAuditExport = (role: string) => ["auditor", "admin"].includes(role);

export type Screen = "customers" | "pipeline" | "service" | "tasks" | "dashboard" | "audit";

/** The screens of the navigation for a role, in order. */
export function screensFor(role: string): Screen[] {
  switch (role) {
    case "sales_rep":
      return ["tasks", "customers", "pipeline"];
    case "service_agent":
      return ["service", "tasks", "customers"];
    case "manager":
    case "admin":
      return ["dashboard", "customers", "pipeline", "service", "tasks", "audit"];
    case "analyst":
      return ["dashboard", "customers"];
    case "auditor":
      return ["audit", "customers"];
    case "marketing": // reads customers only: no tasks, deals or requests
      return ["customers"];
    case "data_admin":
      return ["customers", "tasks"];
    default:
      return ["customers"];
  }
}
