// Drives a running code-server (with the infill-ls .vsix installed) in Debian's headless Chromium:
// opens add.py, types at the end of `return`, waits for the ghost text, screenshots it, accepts it with Tab,
// saves; then selects the file and runs "infill: Explain selection" and waits for the explanation editor.
// Usage: node vscode_e2e.mjs URL OUT_DIR  -- prints one JSON line of results on stdout ({ok, steps, ...}).

import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const [url, outDir] = process.argv.slice(2);
const result = { ok: false, steps: [], ghost: null, explanation: null, status: null, timings: {} };
const t0 = Date.now();
const step = (name) => {
  result.steps.push(`${((Date.now() - t0) / 1000).toFixed(1)}s ${name}`);
  process.stderr.write(`[vscode-e2e] ${name}\n`);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
  ], // Playwright gives each launch a fresh, empty --user-data-dir of its own
});
const page = await (await browser.newContext({ viewport: { width: 1100, height: 560 } })).newPage();
page.setDefaultTimeout(60_000);
const shot = (name) => page.screenshot({ path: path.join(outDir, name) });

async function statusLabel() {
  const item = page.locator('[id="infill-ls.infill-ls.infill.status"]');
  return (await item.count()) ? (await item.first().getAttribute("aria-label")) ?? "" : "";
}

try {
  await page.goto(url);
  await page.locator(".monaco-workbench").waitFor();
  step("workbench loaded");

  // Open add.py from the explorer.
  const file = page.getByRole("treeitem", { name: /add\.py/ });
  await file.first().waitFor();
  await file.first().click();
  const editor = page.locator(".editor-instance .monaco-editor").first();
  await editor.waitFor();
  await page.locator(".view-line", { hasText: "return" }).first().waitFor();
  step("add.py open");

  // The extension starts infill-ls; wait for the model to be ready (status bar item's label).
  const readyStart = Date.now();
  for (;;) {
    const label = await statusLabel();
    if (label.includes("ready")) break;
    if (label.includes("error")) throw new Error(`model error: ${label}`);
    if (Date.now() - readyStart > 120_000) throw new Error(`model not ready after 120 s (status: "${label}")`);
    await page.waitForTimeout(250);
  }
  result.timings.ready_s = (Date.now() - readyStart) / 1000;
  step("model ready");

  // Type " " after "    return" and wait for the ghost text.
  await page.locator(".view-line", { hasText: "return" }).first().click();
  await page.keyboard.press("End");
  const typed = Date.now();
  await page.keyboard.type(" ");
  const ghost = page.locator(".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text");
  await ghost.first().waitFor({ timeout: 60_000 });
  result.timings.ghost_s = (Date.now() - typed) / 1000;
  result.ghost = (await ghost.allInnerTexts()).join("\n").replace(/\u00a0/g, " ");
  step(`ghost text: ${JSON.stringify(result.ghost)}`);
  await page.waitForTimeout(300);
  await shot("vscode-ghost-text.png");
  result.status = await statusLabel();

  // Accept with Tab and save.
  await page.keyboard.press("Tab");
  await ghost.first().waitFor({ state: "detached", timeout: 10_000 }).catch(() => {});
  await page.keyboard.press("Control+S");
  await page.waitForTimeout(1000);
  result.line2 = (await page.locator(".view-line").allInnerTexts()).map((s) => s.replace(/\u00a0/g, " "));
  step("accepted with Tab and saved");

  // Explain: select all, run the command from the command palette.
  await page.locator(".view-line", { hasText: "def add" }).first().click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("F1");
  const input = page.locator(".quick-input-widget input");
  await input.waitFor();
  await input.fill(">infill: Explain selection");
  await page.locator(".quick-input-list .monaco-list-row", { hasText: "Explain selection" }).first().waitFor();
  await page.keyboard.press("Enter");
  step("ran infill: Explain selection");
  const explainStart = Date.now();
  const tab = page.locator(".tabs-container .tab", { hasText: /Untitled|\.md/ });
  await tab.first().waitFor({ timeout: 120_000 });
  await page.waitForTimeout(800);
  result.timings.explain_s = (Date.now() - explainStart) / 1000;
  result.explanation = (await page.locator(".editor-group-container.active .view-line").allInnerTexts())
    .map((s) => s.replace(/\u00a0/g, " ")).join("\n");
  result.tabs = await page.locator(".tabs-container .tab").allInnerTexts();
  step("explanation shown");
  await shot("vscode-explain.png");
  result.ok = true;
} catch (error) {
  result.error = String(error && error.stack ? error.stack : error);
  await shot("vscode-failure.png").catch(() => {});
} finally {
  await browser.close();
  fs.writeFileSync(path.join(outDir, "result.json"), JSON.stringify(result, null, 2));
  process.stdout.write(JSON.stringify(result) + "\n");
}
