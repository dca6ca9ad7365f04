import { AsyncLocalStorage, AsyncResource } from "node:async_hooks";
import { spawnSync } from "node:child_process";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { installLeanAsyncBind, nodeBindsWithAccessor } from "./async-bind.js";

describe("the lean AsyncResource.bind", () => {
  const nodeBind = AsyncResource.prototype.bind;
  const nodeHadAccessor = nodeBindsWithAccessor();
  let restore: () => void;
  beforeAll(() => {
    restore = installLeanAsyncBind();
  });
  afterAll(() => restore());

  it("replaces Node's where Node attaches the deprecated accessor, and drops only that", () => {
    expect(AsyncResource.prototype.bind !== nodeBind).toBe(nodeHadAccessor);
    const fn = (_a: number, _b: number) => 0;
    const bound = new AsyncResource("t").bind(fn);
    expect(Object.hasOwn(bound, "asyncResource")).toBe(false);
    expect(bound.length).toBe(2);
    expect(bound.name).toBe("bound");
    expect(Object.getOwnPropertyDescriptor(bound, "length")).toMatchObject({ writable: false, enumerable: false });
    expect(Object.keys(bound)).toEqual([]); // Node's accessor was enumerable
    // With a `this` to pin: sized and named as Node's (a bound runInAsyncScope would say length 0).
    const pinned = (new AsyncResource("t").bind as (f: typeof fn, thisArg: unknown) => typeof fn)(fn, {});
    expect(pinned.length).toBe(2);
    expect(pinned.name).toBe("bound runInAsyncScope");
    expect(Object.hasOwn(pinned, "asyncResource")).toBe(false);
  });

  it("installs once: a second install changes nothing, and the first one's restore puts Node's back", () => {
    const lean = AsyncResource.prototype.bind;
    const again = installLeanAsyncBind();
    expect(AsyncResource.prototype.bind).toBe(lean);
    again();
    expect(AsyncResource.prototype.bind).toBe(lean);
    restore();
    expect(AsyncResource.prototype.bind).toBe(nodeBind);
    restore = installLeanAsyncBind();
    expect(AsyncResource.prototype.bind !== nodeBind).toBe(nodeHadAccessor);
  });

  it("restores only its own: a bind installed after it by someone else stays", () => {
    const lean = AsyncResource.prototype.bind;
    const theirs = function (this: AsyncResource, fn: (...args: unknown[]) => unknown) {
      return lean.call(this, fn);
    } as typeof lean;
    AsyncResource.prototype.bind = theirs;
    try {
      restore();
      expect(AsyncResource.prototype.bind).toBe(theirs);
    } finally {
      AsyncResource.prototype.bind = nodeBind;
      restore = installLeanAsyncBind();
    }
  });

  it("runs the function in the resource's async context, with its `this` and arguments", () => {
    const als = new AsyncLocalStorage<string>();
    const resource = als.run("where it was made", () => new AsyncResource("t"));
    const seen: unknown[] = [];
    function record(this: unknown, ...args: unknown[]) {
      seen.push(als.getStore(), this, args);
      return "answer";
    }
    const self = { me: 1 };
    const free = resource.bind(record);
    const pinned = (resource.bind as (fn: typeof record, thisArg: unknown) => typeof record)(record, self);
    const result = als.run("where it was called", () => [free.call(self, 1, 2), pinned.call({ other: 2 }, 3)]);
    expect(result).toEqual(["answer", "answer"]);
    expect(seen).toEqual(["where it was made", self, [1, 2], "where it was made", self, [3]]);
    // The static form goes through the prototype's, and so does AsyncLocalStorage.snapshot().
    expect(als.run("static", () => AsyncResource.bind(() => als.getStore()))()).toBe("static");
    const snapshot = als.run("snapshot", () => AsyncLocalStorage.snapshot());
    expect(snapshot(() => als.getStore())).toBe("snapshot");
  });

  it("refuses a non-function, and `new`, as Node does", () => {
    const bind = AsyncResource.prototype.bind as (fn: unknown) => unknown;
    expect(() => bind.call(new AsyncResource("t"), 42)).toThrow(
      expect.objectContaining({ code: "ERR_INVALID_ARG_TYPE" }),
    );
    // Node's is a class method: not a constructor.
    const Bind = new AsyncResource("t").bind as unknown as new (fn: unknown) => unknown;
    expect(() => new Bind(() => {})).toThrow(TypeError);
  });

  it("keeps a node:http2 request in its caller's async context (http2's client binds one per request)", async () => {
    const server = http2.createServer();
    server.on("stream", (stream) => {
      stream.respond({ ":status": 200 });
      stream.end("ok");
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const session = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    const als = new AsyncLocalStorage<number>();
    // Requested while the session connects: Node then runs each request's bound function later, from
    // the 'connect' event, so only the bind carries the caller's context (once connected, Node runs it
    // at once, in the caller's context whatever bind does — a test that waited for 'connect' would
    // pass a bind that drops the context).
    expect(session.connecting).toBe(true);
    try {
      const stores = await Promise.all(
        [1, 2, 3].map((n) =>
          als.run(
            n,
            () =>
              new Promise<[number | undefined, string]>((resolve, reject) => {
                const stream = session.request({ ":path": `/${n}` });
                let body = "";
                stream.setEncoding("utf8");
                stream.on("response", () => {
                  stream.on("data", (chunk: string) => {
                    body += chunk;
                  });
                  stream.on("end", () => resolve([als.getStore(), body]));
                });
                stream.on("error", reject);
              }),
          ),
        ),
      );
      expect(stores).toEqual([
        [1, "ok"],
        [2, "ok"],
        [3, "ok"],
      ]);
    } finally {
      session.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe("every service process", () => {
  // A Node that attaches no accessor (nothing to replace) passes it either way.
  it("runs with the lean bind: runService installs it before the service starts", () => {
    // In a process of its own: this worker's bind is whatever the tests above left.
    const script = `
        import { AsyncResource } from "node:async_hooks";
        import { runService } from ${JSON.stringify(new URL("./lifecycle.ts", import.meta.url).href)};
        const config = { LOG_LEVEL: "silent", LOG_FORMAT: "json", OTEL_EXPORTER_OTLP_ENDPOINT: "", TRACE_FILE: "",
          TRACE_FILE_MAX_BYTES: 1, TRACE_SAMPLE_RATIO: 1, TRACE_READ_SAMPLE_RATIO: 1 };
        await runService("probe", () => config, async () => {
          const bound = new AsyncResource("probe").bind(() => {});
          process.stdout.write(JSON.stringify({ accessor: Object.hasOwn(bound, "asyncResource") }));
          process.exit(0);
        });`;
    const child = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      encoding: "utf8",
      timeout: 30_000,
    });
    expect(child.status, child.stderr).toBe(0);
    expect(JSON.parse(child.stdout), child.stderr).toEqual({ accessor: false });
  }, 40_000);
});
