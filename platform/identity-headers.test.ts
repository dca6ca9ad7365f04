/** Identity metadata a handler would not see (identity-headers.ts): pure, no server. */
import { describe, expect, it } from "vitest";
import { unreadableIdentity } from "./identity-headers.js";

describe("unreadableIdentity", () => {
  it("lets through identity grpc-js keeps, and calls with none, for identity.ts to judge", () => {
    expect(unreadableIdentity([])).toBeUndefined();
    expect(unreadableIdentity(["x-shopmesh-subject", "alice", "x-shopmesh-roles", "customer,admin"])).toBeUndefined();
    // Printable, however wrong: identity.ts refuses it with the rest of its rule.
    expect(unreadableIdentity(["x-shopmesh-subject", "alice, bob", "x-shopmesh-roles", "root"])).toBeUndefined();
    expect(unreadableIdentity(["x-other-bin", "YQ==", "x-note", "jos\u00e9"])).toBeUndefined();
  });

  it("finds a value grpc-js would drop, and a -bin spelling of either key", () => {
    expect(unreadableIdentity(["x-shopmesh-subject", "jos\u00e9"])).toMatch(/x-shopmesh-subject/);
    expect(unreadableIdentity(["x-shopmesh-subject", "alice", "x-shopmesh-subject", "alice\u00a0"])).toBeDefined();
    expect(unreadableIdentity(["x-shopmesh-subject", "alice", "x-shopmesh-roles", "admin\t"])).toMatch(/roles/);
    expect(unreadableIdentity(["x-shopmesh-subject-bin", "YWxpY2U="])).toMatch(/-bin/);
    expect(unreadableIdentity(["x-shopmesh-roles-bin", "YWRtaW4="])).toMatch(/-bin/);
  });
});
