// The web page in a real browser (Debian's headless Chromium through playwright-core): upload a
// real image, choose a variant with the keyboard, classify, and check that the top-1 label is
// the one the API gives for the same image and variant, that the chart shows every variant with
// a Pareto front, that the precision switch reaches the 8-bit twin, that nothing overflows a
// phone-sized screen, that the API reference at /docs renders every operation of /openapi.json,
// and that the console stays clean.
// Usage: node page.test.mjs BASE_URL IMAGE SCREENSHOT_DIR [VARIANTS]
import { check, finish, launch } from "./harness.mjs";
import { readFile } from "node:fs/promises";
import { mkdirSync } from "node:fs";
import path from "node:path";

const [base, image, shots, expectedVariants = "16"] = process.argv.slice(2);
const variant = "mobilenet_v1_0.5_160";

// What the API says, for the same image and variant.
const api = await fetch(`${base}/classify?model=${variant}&top_k=5`, {
  method: "POST",
  headers: { "content-type": "image/jpeg" },
  body: await readFile(image),
});
const expected = (await api.json()).predictions[0].label;

const browser = await launch();
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + "/");
  await page.waitForFunction((n) => document.querySelector("#chart")?.dataset.points === n,
    expectedVariants, { timeout: 30000 });
  check(true, `chart shows ${expectedVariants} variants`);
  check(await page.locator("#chart circle").count() === Number(expectedVariants), "one dot per variant");
  const front = (await page.locator("#chart polyline.front").getAttribute("points")) || "";
  const onFront = front.trim() ? front.trim().split(/\s+/).length : 0;
  check(onFront >= 2, `Pareto front drawn (${onFront} variants on it)`);

  await page.setInputFiles("#file", image);
  // The preview has no size, so is not visible, until the browser has decoded the image: wait
  // for that (isVisible alone raced it and failed a CI run).
  const previewShown = await page.locator("#preview").waitFor({ state: "visible", timeout: 10000 })
    .then(() => true, () => false);
  check(previewShown, "preview shown");
  // Keyboard: focus the variant's cell and press Space.
  const cell = page.locator(`button[data-name="${variant}"]`);
  await cell.focus();
  await page.keyboard.press("Space");
  check(await cell.getAttribute("aria-pressed") === "true", `${variant} chosen with the keyboard`);
  await page.locator("#classify").click();
  await page.waitForFunction(() => document.querySelectorAll("#bars li").length === 5);
  const top1 = await page.locator("#bars li .label span").first().textContent();
  check(top1 === expected, `top-1 "${top1}" is the API's "${expected}"`);
  const answered = await page.locator("#answered").textContent();
  check(answered.includes(variant), `answered by ${variant}`);
  // With 8-bit variants loaded: the precision switch moves the choice to the same cell in int8,
  // and the answer comes from that variant; the chart rings their dots.
  const listed = (await (await fetch(`${base}/v1/models`)).json()).models;
  const int8 = listed.filter((m) => m.precision === "int8").length;
  check(await page.locator("#chart circle.int8").count() === int8, `${int8} dots ringed as int8`);
  if (int8 > 0) {
    await page.locator("#precisions input[value=int8]").check();
    const twin = page.locator(`button[data-name="${variant}_quant"]`);
    check(await twin.getAttribute("aria-pressed") === "true", `int8 moves the choice to ${variant}_quant`);
    await page.locator("#classify").click();
    await page.waitForFunction((v) => document.querySelector("#answered")?.textContent.includes(v),
      `${variant}_quant`, { timeout: 30000 });
    check(true, `answered by ${variant}_quant`);
    await page.locator("#precisions input[value=fp32]").check();
    check(await cell.getAttribute("aria-pressed") === "true", `fp32 moves it back to ${variant}`);
  }
  mkdirSync(shots, { recursive: true });
  const desktop = path.join(shots, "page-desktop.png");
  await page.screenshot({ path: desktop, fullPage: true });

  // A phone-sized screen: nothing wider than the viewport.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `no horizontal overflow at 390 px (${overflow} px)`);
  const phone = path.join(shots, "page-phone.png");
  await page.screenshot({ path: phone, fullPage: true });

  // The API reference renders every operation of the OpenAPI document, offline.
  const doc = await (await fetch(`${base}/openapi.json`)).json();
  const described = Object.values(doc.paths).reduce((n, item) => n + Object.keys(item).length, 0);
  const docs = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  docs.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  docs.on("pageerror", (e) => errors.push(String(e)));
  await docs.goto(base + "/docs");
  await docs.waitForFunction(() => document.querySelector("#api")?.dataset.operations);
  const rendered = Number(await docs.locator("#api").getAttribute("data-operations"));
  check(rendered === described && described > 0, `/docs renders ${rendered} of ${described} operations`);
  check(await docs.locator("#op-post--classify").isVisible(), "/docs describes POST /classify");
  check(await docs.locator("#toc a", { hasText: "POST /v2/models/{name}/infer" }).count() === 1,
    "/docs lists the OIP infer operation");
  const docsShot = path.join(shots, "docs-desktop.png");
  await docs.screenshot({ path: docsShot });
  await docs.setViewportSize({ width: 390, height: 844 });
  const docsOverflow = await docs.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(docsOverflow <= 0, `/docs: no horizontal overflow at 390 px (${docsOverflow} px)`);

  check(errors.length === 0, `no console errors${errors.length ? ": " + errors.join(" | ") : ""}`);
  console.log(`screenshots: ${desktop} ${phone} ${docsShot}`);
} finally {
  await browser.close();
}
finish("page: all checks passed");
