// Drives one headless Chromium page for a Rust test (tests/src/browser.rs).
//
// The test keeps the logic; this only does what it is told. Commands arrive on stdin,
// one JSON object a line, and each gets one JSON line on stdout: {"ok": true, ...} or
// {"ok": false, "error": "..."}. Anything else the browser says goes to stderr.
//
//   {"cmd": "goto", "url": "..."}
//   {"cmd": "fill", "selector": "...", "text": "..."}
//   {"cmd": "click", "selector": "..."}
//   {"cmd": "wait", "selector": "...", "state": "visible" | "attached" | "detached" | "hidden"}
//   {"cmd": "text", "selector": "..."}            -> {"text": "..."} (first match)
//   {"cmd": "attr", "selector": "...", "name": "..."} -> {"value": "..." | null}
//   {"cmd": "count", "selector": "..."}           -> {"count": n}
//   {"cmd": "screenshot", "path": "..."}
//   {"cmd": "errors"}                             -> {"errors": [...]} page errors so far
//   {"cmd": "close"}
//
// Environment: CHROMIUM (default /usr/bin/chromium), TIMEOUT_MS per command (10000).

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const timeout = Number(process.env.TIMEOUT_MS || 10000);
// A fresh profile every run, removed on exit: nothing carries over between tests.
const profile = mkdtempSync(join(tmpdir(), "portcullis-chromium-"));

const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  // As root (CI runs as root) Chromium's sandbox cannot start; everything that would
  // reach out to the network on its own is off.
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  timeout: 60000,
});
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(timeout);
const errors = [];
page.on("pageerror", (e) => errors.push("page error: " + e.message));
page.on("console", (m) => {
  if (m.type() === "error") errors.push("console error: " + m.text());
  process.stderr.write(`[page ${m.type()}] ${m.text()}\n`);
});

async function run(c) {
  switch (c.cmd) {
    case "goto":
      await page.goto(c.url, { waitUntil: "load" });
      return {};
    case "fill":
      await page.locator(c.selector).first().fill(c.text);
      return {};
    case "click":
      await page.locator(c.selector).first().click();
      return {};
    case "wait":
      await page.locator(c.selector).first().waitFor({ state: c.state || "visible" });
      return {};
    case "text":
      return { text: await page.locator(c.selector).first().textContent() };
    case "attr":
      return { value: await page.locator(c.selector).first().getAttribute(c.name) };
    case "count":
      return { count: await page.locator(c.selector).count() };
    case "screenshot":
      await page.screenshot({ path: c.path, fullPage: true });
      return {};
    case "errors":
      return { errors };
    case "close":
      return {};
    default:
      throw new Error("unknown command " + JSON.stringify(c.cmd));
  }
}

async function shutdown(code) {
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}

process.stdout.write(JSON.stringify({ ok: true, ready: true }) + "\n");
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  let c = {};
  try {
    c = JSON.parse(line);
    answer = Object.assign({ ok: true }, await run(c));
  } catch (e) {
    answer = { ok: false, error: String((e && e.message) || e) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
  if (c.cmd === "close") break;
}
await shutdown(0);
