/**
 * Credentials written in NATS_URL (`nats://user:pass@host:4222`) are used, as NATS_USER and
 * NATS_PASSWORD are: the Node client never sends a URL's own, so it connected anonymously and a
 * server with users refused it ("Authorization Violation", a stack trace, restarted for ever).
 */
import { describe, expect, it } from "vitest";
import { startNats } from "../test/nats.js";
import { capturedLogger } from "../test/system.js";
import { connectBus, serversOf } from "./bus.js";

describe("serversOf", () => {
  it("takes the first credentials written in the servers, and leaves them out of every server", () => {
    expect(serversOf("nats://a:p%40ss@h1:4222,tls://b:q@h2:4223,h3:4224")).toEqual({
      servers: ["nats://h1:4222", "tls://h2:4223", "h3:4224"],
      auth: { user: "a", pass: "p@ss" },
    });
    expect(serversOf("u@h:1")).toEqual({ servers: ["h:1"], auth: { user: "u", pass: "" } });
    expect(serversOf("nats://h:4222")).toEqual({ servers: ["nats://h:4222"] });
  });
});

it("a NATS_URL with a user and password connects to a server with users, and its password is not logged", async () => {
  await using nats = await startNats('authorization { user: "shop", password: "s3cret/pw" }');
  const { log, lines } = capturedLogger();
  const url = nats.url.replace("nats://", "nats://shop:s3cret%2Fpw@");
  const bus = await connectBus(url, "bus-url-test", log);
  try {
    expect(bus.nc.info?.server_id).toBeTruthy();
    await expect(bus.nc.request("$JS.API.INFO", undefined, { timeout: 5_000 })).resolves.toBeDefined();
  } finally {
    await bus.close();
  }
  expect(JSON.stringify(lines)).not.toContain("s3cret");
  expect(JSON.stringify(lines)).toContain("connected to NATS JetStream");
});
