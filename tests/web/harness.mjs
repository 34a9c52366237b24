// What the browser tests share: Debian's Chromium launched for this closed network, and a
// checklist that prints each check and fails the process at the end if any failed.
import { chromium } from "playwright-core";

/** Headless Chromium; without these flags it keeps calling hosts this network refuses. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

const failures = [];

/** Records one check and prints it. */
export function check(ok, what) {
  console.log(`  ${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures.push(what);
}

/** Exits 1 when a check failed, else prints `done`. */
export function finish(done) {
  if (failures.length) {
    console.error(`${failures.length} check(s) failed`);
    process.exit(1);
  }
  console.log(done);
}
