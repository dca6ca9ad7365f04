/**
 * The set-up the browser suites share: for one test file, the real system and its gateway in this
 * process, the page's bundle built when stale, and Debian's Chromium driven by playwright-core. Every
 * browser context a test opens is closed after it, and what a suite's pages put in `problems` (each
 * suite decides what counts: uncaught errors, CSP violations, 5xx answers) fails that test.
 */
import { existsSync } from "node:fs";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { afterAll, afterEach, beforeAll, expect } from "vitest";
import type { GatewayApp } from "../gateway/app.js";
import { buildWeb, webBuildIsStale } from "../web/build.js";
import { type System, startSystem, startTestGateway } from "./system.js";

export const CHROMIUM = "/usr/bin/chromium";
/** The viewport a context has unless told: a desktop window. */
export const DESKTOP = { width: 1280, height: 900 } as const;

export interface WebShop {
  readonly sys: System;
  readonly gw: GatewayApp;
  /** Problems the suite's pages reported during the current test: must be none when it ends. */
  readonly problems: string[];
  /**
   * A fresh browser profile on the gateway (or on `baseURL`, another gateway of the test's) at `viewport`
   * ({@link DESKTOP} unless told); `init` runs in each of its pages before the page's own script.
   */
  context(init?: string, baseURL?: string, viewport?: { width: number; height: number }): Promise<BrowserContext>;
}

/** Registers the file's hooks: the system started with `system`'s services' settings, the gateway with `gateway`'s. */
export function webShop(system: Parameters<typeof startSystem>[0] = {}, gateway: Record<string, string> = {}): WebShop {
  let sys: System | undefined;
  let gw: GatewayApp | undefined;
  let browser: Browser | undefined;
  const problems: string[] = [];
  const contexts: BrowserContext[] = [];

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (.ci/run does)`);
    if (webBuildIsStale()) await buildWeb();
    sys = await startSystem(system);
    gw = await startTestGateway(sys, gateway);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  }, 60_000);

  afterEach(async () => {
    for (const c of contexts.splice(0)) await c.close();
    expect(problems.splice(0)).toEqual([]);
  });

  afterAll(async () => {
    await browser?.close();
    await gw?.stop();
    await sys?.[Symbol.asyncDispose]();
  });

  const started = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error("the web shop is not started: use it inside a test");
    return v;
  };
  return {
    get sys() {
      return started(sys);
    },
    get gw() {
      return started(gw);
    },
    problems,
    async context(init, baseURL = started(gw).url, viewport = DESKTOP) {
      const context = await started(browser).newContext({ viewport, baseURL });
      contexts.push(context);
      if (init) await context.addInitScript({ content: init });
      return context;
    },
  };
}

/** Signs `page` in as `user` through the page's development sign-in. */
export async function signInAs(page: Page, user: "alice" | "bob" | "operator"): Promise<void> {
  await page.goto("/");
  await page.getByTestId(`signin-${user}`).click();
  await page.getByTestId("whoami").filter({ hasText: user }).waitFor();
}
