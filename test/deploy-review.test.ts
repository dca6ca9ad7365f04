/**
 * A review of the Kubernetes + Istio deployment (2026-12-04), as someone who applies it to a kind
 * cluster with Istio tomorrow: what the API server, istiod's validating webhook and the Istio CRDs'
 * own rules would refuse, and what the manifests grant that the code's design denies. Offline, like
 * test/deploy.test.ts (whose checks are not repeated): the overlays rendered with `kubectl
 * kustomize`, the rules taken from Istio's source. Each `describe` is one finding.
 */
import { execFileSync } from "node:child_process";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { locationOf } from "../platform/db.js";
import { HistoryStore } from "../services/history/store.js";
import { InventoryStore } from "../services/inventory/store.js";
import { NotificationStore } from "../services/notification/store.js";
import { OrderStore } from "../services/order/store.js";
import { PaymentStore } from "../services/payment/store.js";
import { renderOverlays } from "./overlays.js";
import { startPostgres, type TestPostgres } from "./postgres.js";

interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  // biome-ignore lint/suspicious/noExplicitAny: rendered YAML, read field by field
  [key: string]: any;
}

const rendered = renderOverlays<Obj>();
const overlays = [...rendered.keys()];

/** Every string value under `value`, with its path. */
function* strings(value: unknown, path: string): Generator<[string, string]> {
  if (typeof value === "string") yield [path, value];
  else if (Array.isArray(value)) for (const [i, v] of value.entries()) yield* strings(v, `${path}[${i}]`);
  else if (value !== null && typeof value === "object")
    for (const [k, v] of Object.entries(value)) yield* strings(v, `${path}.${k}`);
}

describe("Istio durations are ones istiod accepts (a stream route's `timeout: 0s` was refused)", () => {
  // istiod's validating webhook checks every duration with ValidateDuration (pkg/config/validation/
  // agent/validation.go: "duration must be greater than 1ms", "only durations to ms precision are
  // supported"), and the CRDs carry the same rule in CEL (`duration(self) >= duration('1ms')`), so
  // `kubectl apply` refuses the object: `timeout: 0s` on the WatchOrder routes failed `make deploy`.
  // No timeout at all is written by leaving `timeout` out: Istio's route default is none
  // (pilot/pkg/networking/core/route/route.go setTimeout: Notimeout unless the route sets one).
  const DURATION = /^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$/;
  const NS_PER = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 6e10, h: 3.6e12 } as const;

  it.each(overlays)("%s: every duration in an Istio object is at least 1 ms, to the millisecond", (overlay) => {
    const problems: string[] = [];
    let durations = 0;
    for (const o of rendered.get(overlay) ?? []) {
      if (!o.apiVersion.includes("istio.io/")) continue;
      for (const [path, v] of strings(o.spec, "spec")) {
        const m = DURATION.exec(v);
        if (!m) continue;
        durations++;
        const ns = Number(m[1]) * NS_PER[m[2] as keyof typeof NS_PER];
        if (ns < 1e6) problems.push(`${o.kind}/${o.metadata.name} ${path}: ${v} < 1ms`);
        else if (ns % 1e6 !== 0) problems.push(`${o.kind}/${o.metadata.name} ${path}: ${v} finer than 1ms`);
      }
    }
    expect(durations, "the routes' timeouts at least").toBeGreaterThan(0);
    expect(problems).toEqual([]);
  });
});

describe("each service connects to PostgreSQL as a role of its own (all five shared the superuser)", () => {
  // docs/security.md's threat model gives each service "their own database ... their own data", and
  // the mesh and NATS tell the five apart (a principal, a NATS user each), but every DATABASE_URL
  // named POSTGRES_USER, the image's superuser: a notification pod could read or rewrite payment's
  // and inventory's tables (or run COPY ... TO PROGRAM on the database's pod). Now roles.sh, run by
  // the image when it initialises its volume, creates one login role per service, which may create
  // its own schema and nothing else, and each Deployment's DATABASE_URL names that role.
  const objs = rendered.get("kind") ?? [];
  const secretData = (name: string, key: string): string | undefined => {
    const secret = objs.find((o) => o.kind === "Secret" && o.metadata.name === name);
    const b64 = secret?.data?.[key];
    return b64 === undefined ? secret?.stringData?.[key] : Buffer.from(b64, "base64").toString("utf8");
  };
  const envOf = (container: {
    env?: Array<{ name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }>;
  }) =>
    Object.fromEntries(
      (container.env ?? []).map((e) => {
        const ref = e.valueFrom?.secretKeyRef;
        return [e.name, ref ? secretData(ref.name, ref.key) : e.value];
      }),
    ) as Record<string, string | undefined>;
  const postgres = objs.find((o) => o.kind === "StatefulSet" && o.metadata.name === "postgres");
  const pgContainer = postgres?.spec.template.spec.containers[0];
  const pgEnv = pgContainer ? envOf(pgContainer) : {};
  const users = objs
    .filter((o) => o.kind === "Deployment")
    .map((d) => ({ name: d.metadata.name as string, env: envOf(d.spec.template.spec.containers[0]) }))
    .filter((d) => d.env.DATABASE_URL !== undefined);
  const init = objs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("postgres-init"));
  const script = init?.data?.["roles.sh"] as string | undefined;

  it("every DATABASE_URL names its own service's role, never the superuser, with the password PostgreSQL gives it", () => {
    expect(users.map((u) => u.name).sort()).toEqual(["history", "inventory", "notification", "order", "payment"]);
    for (const u of users) {
      const url = new URL(String(u.env.DATABASE_URL));
      expect(decodeURIComponent(url.username), u.name).toBe(u.name);
      expect(decodeURIComponent(url.username), u.name).not.toBe(pgEnv.POSTGRES_USER);
      expect(decodeURIComponent(url.password), u.name).toBe(pgEnv[`${u.name.toUpperCase()}_DB_PASSWORD`]);
      expect(url.pathname, u.name).toBe(`/${pgEnv.POSTGRES_DB}`);
    }
    // The script is where the image runs it, once, when it initialises the volume.
    const mount = pgContainer?.volumeMounts?.find(
      (m: { mountPath: string }) => m.mountPath === "/docker-entrypoint-initdb.d",
    );
    const volume = postgres?.spec.template.spec.volumes?.find((v: { name: string }) => v.name === mount?.name);
    expect(volume?.configMap?.name).toBe(init?.metadata.name);
    expect(script, "roles.sh").toBeDefined();
  });

  describe("on a real PostgreSQL, roles.sh as the image runs it", () => {
    let server: TestPostgres;
    let db: string;
    const urlOf = (role: string) => `postgres://${role}@127.0.0.1:${server.port}/${db}`;
    beforeAll(async () => {
      server = await startPostgres();
      db = new URL(await server.createDatabase("review")).pathname.slice(1);
      execFileSync("bash", ["-c", `set -Eeo pipefail\n${script}`], {
        env: {
          ...process.env,
          ...pgEnv,
          POSTGRES_USER: "postgres",
          POSTGRES_DB: db,
          PGHOST: "127.0.0.1",
          PGPORT: String(server.port),
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
    }, 60_000);
    afterAll(async () => {
      await server?.[Symbol.asyncDispose]();
    });

    it("no role can take another service's schema name before that service first starts, nor the history rebuild's", async () => {
      const client = new pg.Client({ connectionString: urlOf("inventory") });
      await client.connect();
      try {
        for (const u of users.filter((x) => x.name !== "inventory")) {
          // What a taken-over inventory pod would try before payment's first start: take the name.
          await client.query(`CREATE SCHEMA IF NOT EXISTS shopmesh_${u.name}`).catch(() => {});
          const { rows } = await client.query<{ owner: string }>(
            "SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = $1",
            [`shopmesh_${u.name}`],
          );
          expect(rows[0]?.owner, u.name).toBe(u.name);
          await expect(client.query(`CREATE TABLE shopmesh_${u.name}.squat (a int)`), u.name).rejects.toMatchObject({
            code: "42501",
          });
        }
        // The name the history rebuild builds its view under, aside: taken by another role (CREATE on the
        // database was every role's), the rebuild's DROP SCHEMA failed "must be owner", every time.
        await expect(client.query("CREATE SCHEMA shopmesh_history_rebuilding")).rejects.toMatchObject({
          code: "42501",
        });
      } finally {
        await client.end();
      }
      const history = new pg.Client({ connectionString: urlOf("history") });
      await history.connect();
      try {
        await history.query("CREATE SCHEMA shopmesh_history_rebuilding");
        await history.query("DROP SCHEMA shopmesh_history_rebuilding");
      } finally {
        await history.end();
      }
    });

    it("each service migrates its own schema as its role; none is a superuser or reaches another's tables", async () => {
      const stores = {
        inventory: InventoryStore,
        payment: PaymentStore,
        order: OrderStore,
        notification: NotificationStore,
        history: HistoryStore,
      };
      for (const u of users) {
        const open = stores[u.name as keyof typeof stores];
        const location = locationOf(u.name, {
          DATABASE_URL: urlOf(u.name),
          DATABASE_SCHEMA: "",
          DATABASE_POOL_SIZE: 2,
          DB_PATH: "",
        });
        const store = await open.open(location);
        await store.close();
      }
      const client = new pg.Client({ connectionString: urlOf("notification") });
      await client.connect();
      try {
        const { rows } = await client.query<{ rolsuper: boolean }>(
          "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
        );
        expect(rows[0]?.rolsuper).toBe(false);
        await expect(client.query("SELECT count(*) FROM shopmesh_payment.schema_version")).rejects.toMatchObject({
          code: "42501",
        });
        await expect(client.query("CREATE ROLE intruder SUPERUSER")).rejects.toMatchObject({ code: "42501" });
      } finally {
        await client.end();
      }
    });
  });
});

describe("the ingress reads the token where the gateway does, nowhere else (it also took ?access_token=)", () => {
  // A jwtRule without fromHeaders/fromParams gets Envoy's default locations: the Authorization
  // header with the Bearer prefix, and the `access_token` query parameter. The gateway reads only
  // the one Authorization header, `Bearer <token>` (gateway/auth.ts authorizationOf and its
  // /^Bearer .../): a token in the query passed the ingress's require-JWT rule, was logged with
  // the path by the gateway's sidecar (the Telemetry's access log), and was refused by the gateway.
  it.each(overlays)(
    "%s: every jwtRule names the Authorization header with the Bearer prefix, no query, no cookie",
    async (overlay) => {
      const { authorizationOf } = await import("../gateway/auth.js");
      expect(authorizationOf(["Authorization", "Bearer abc"])).toBe("Bearer abc");
      const rules = (rendered.get(overlay) ?? [])
        .filter((o) => o.kind === "RequestAuthentication")
        .flatMap((o) => o.spec?.jwtRules ?? []);
      expect(rules.length).toBeGreaterThan(0);
      for (const r of rules) {
        expect(r.fromHeaders, r.issuer).toEqual([{ name: "Authorization", prefix: "Bearer " }]);
        expect(r.fromParams ?? [], r.issuer).toEqual([]);
        expect(r.fromCookies ?? [], r.issuer).toEqual([]);
      }
    },
  );
});

describe("every pod's Istio proxy is a native sidecar, said (Istio's auto-detection decided it)", () => {
  // The process stops after a preStop sleep and drains for up to SHUTDOWN_GRACE_MS, acking NATS and
  // giving its saga leases back to PostgreSQL, all through its sidecar. A classic sidecar gets
  // SIGTERM with the pod and leaves terminationDrainDuration (5 s) later, just as that drain begins;
  // a native one (an init container that always restarts) is stopped by kubelet after the process.
  // Istio 1.27+ makes it native only by auto-detection — every node's kubelet at 1.33 or newer
  // (pkg/kube/inject/webhook.go DetectNativeSidecar: any older node turns it off for all), or not
  // at all with ENABLE_NATIVE_SIDECARS=false — so the pods say it (the annotation takes precedence).
  it.each(overlays)("%s: every shopmesh pod template asks for sidecar.istio.io/nativeSidecar", (overlay) => {
    const pods = (rendered.get(overlay) ?? []).filter((o) => ["Deployment", "StatefulSet", "Job"].includes(o.kind));
    expect(pods.length).toBeGreaterThan(0);
    const missing = pods
      .filter((o) => o.spec?.template?.metadata?.annotations?.["sidecar.istio.io/nativeSidecar"] !== "true")
      .map((o) => `${o.kind}/${o.metadata.name}`);
    expect(missing).toEqual([]);
  });
});
