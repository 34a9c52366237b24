// The page against a server started with an API key: it asks for the key, and once given, reads
// the variants with it. The console may show the first 401 (the browser logs refused fetches),
// nothing else.
// Usage: node auth.test.mjs BASE_URL KEY VARIANTS
import { check, finish, launch } from "./harness.mjs";

const [base, key, expectedVariants] = process.argv.slice(2);

const anonymous = await fetch(`${base}/v1/models`);
check(anonymous.status === 401, `/v1/models without the key: ${anonymous.status}`);

const browser = await launch();
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("401")) errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + "/");
  await page.locator("#key-form").waitFor({ state: "visible" });
  check(true, "the page asks for the key");
  await page.fill("#api-key", "not-the-right-key-at-all");
  await page.locator("#key-form button").click();
  await page.locator("#key-form").waitFor({ state: "visible" });
  check(true, "a wrong key is asked again");
  await page.fill("#api-key", key);
  await page.locator("#key-form button").click();
  await page.waitForFunction((n) => document.querySelector("#chart")?.dataset.points === n,
    expectedVariants, { timeout: 30000 });
  check(await page.locator("#key-form").isHidden(), `with the key: ${expectedVariants} variants`);
  check(errors.length === 0, `no other console errors${errors.length ? ": " + errors.join(" | ") : ""}`);
} finally {
  await browser.close();
}
finish("page with an API key: all checks passed");
