// The page's behaviour: variants from /v1/models (refreshed every 5 s), an image from a file
// or a drop, POST /classify, the top-5 as bars, and the latency/accuracy chart drawn as SVG.
"use strict";

const state = { models: [], selected: null, precision: "fp32", file: null, gridNames: "" };
const byId = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

/** Median latency measured here, else the router's prediction; and which of the two it is. */
function latency(m) {
  if (m.latency_ms.p50 != null) return { ms: m.latency_ms.p50, measured: true };
  if (m.latency_ms.predicted != null) return { ms: m.latency_ms.predicted, measured: false };
  return null;
}

const fmtMs = (ms) => (ms < 10 ? ms.toFixed(2) : ms.toFixed(1)) + " ms";
const alphaText = (a) => (Number.isInteger(a) ? a.toFixed(1) : String(a));

/** The API key the user gave (kept for this tab only), as request headers. */
function authHeaders() {
  const key = sessionStorage.getItem("apiKey");
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** A 401 means the server runs with --api-key: ask for it. */
function askForKey() {
  byId("key-form").hidden = false;
  byId("api-key").focus();
}

byId("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("apiKey", byId("api-key").value);
  byId("key-form").hidden = true;
  setStatus("");
  loadModels();
});

function setStatus(text, isError) {
  const s = byId("status");
  s.textContent = text;
  s.classList.toggle("error", Boolean(isError));
}

async function loadModels() {
  try {
    const r = await fetch("/v1/models", { headers: authHeaders() });
    if (r.status === 401) {
      askForKey();
      throw new Error("the API key is missing or wrong");
    }
    if (!r.ok) throw new Error(`/v1/models answered ${r.status}`);
    state.models = (await r.json()).models;
    if (!state.selected) {
      const d = state.models.find((m) => m.default) || state.models[0];
      state.selected = d ? d.name : null;
      if (d) state.precision = d.precision;
    }
    renderPrecisions();
    renderGrid();
    renderChart();
  } catch (e) {
    setStatus(`Cannot read the variants: ${e.message}`, true);
  }
}

/** The number formats the server has variants in, fp32 first. */
const precisions = () => [...new Set(state.models.map((m) => m.precision))].sort();

/**
 * One radio button per precision above the grid, and the same choice for targets; both hidden
 * while the server has a single precision. Built again only when the set changes.
 */
function renderPrecisions() {
  const all = precisions();
  const box = byId("precisions");
  const key = all.join(",");
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  box.hidden = all.length < 2;
  byId("target-precision-row").hidden = all.length < 2;
  for (const old of box.querySelectorAll("label")) old.remove();
  const select = byId("target-precision");
  while (select.options.length > 1) select.remove(1);
  for (const p of all) {
    const label = document.createElement("label");
    const radio = document.createElement("input");
    radio.type = "radio";
    radio.name = "precision";
    radio.value = p;
    radio.checked = p === state.precision;
    radio.addEventListener("change", () => choosePrecision(p));
    label.append(radio, ` ${p}`);
    box.appendChild(label);
    select.add(new Option(p, p));
  }
}

/** Shows the grid of `precision`, keeping the selected cell when it exists there too. */
function choosePrecision(precision) {
  const current = state.models.find((m) => m.name === state.selected);
  state.precision = precision;
  const twin = current && state.models.find((m) => m.precision === precision &&
    m.alpha === current.alpha && m.resolution === current.resolution);
  if (twin) {
    state.selected = twin.name;
  } else {
    // No twin of that cell: the most accurate of the precision, so that Classify sends a
    // variant of the grid on show.
    const shown = state.models.filter((m) => m.precision === precision);
    const best = shown.reduce((a, m) => ((m.accuracy.top1 ?? -1) > (a.accuracy.top1 ?? -1) ? m : a), shown[0]);
    if (best) state.selected = best.name;
  }
  renderGrid();
}

function renderGrid() {
  const table = byId("grid");
  const shown = state.models.filter((m) => m.precision === state.precision);
  const alphas = [...new Set(shown.map((m) => m.alpha))].sort((a, b) => b - a);
  const rhos = [...new Set(shown.map((m) => m.resolution))].sort((a, b) => b - a);
  const names = shown.map((m) => m.name).join(",");
  if (names !== state.gridNames) {
    // Built once per set of variants; later refreshes only update the cells' text, so that
    // keyboard focus stays where it is.
    state.gridNames = names;
    const headRow = table.tHead.rows[0];
    while (headRow.cells.length > 1) headRow.deleteCell(1);
    for (const r of rhos) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = r;
      headRow.appendChild(th);
    }
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const a of alphas) {
      const row = body.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = alphaText(a);
      row.appendChild(th);
      for (const r of rhos) {
        const cell = row.insertCell();
        const m = shown.find((x) => x.alpha === a && x.resolution === r);
        if (!m) continue;
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.name = m.name;
        b.addEventListener("click", () => {
          state.selected = m.name;
          renderGrid();
        });
        cell.appendChild(b);
      }
    }
  }
  for (const b of table.querySelectorAll("button[data-name]")) {
    const m = state.models.find((x) => x.name === b.dataset.name);
    const lat = latency(m);
    const top1 = m.accuracy.top1 != null ? `${m.accuracy.top1.toFixed(1)}%` : "top-1 ?";
    b.replaceChildren(document.createTextNode(top1));
    const span = document.createElement("span");
    span.className = "lat";
    span.textContent = lat ? (lat.measured ? "" : "~") + fmtMs(lat.ms) : "no latency yet";
    b.appendChild(span);
    b.setAttribute("aria-pressed", String(m.name === state.selected));
    b.classList.toggle("default", m.default);
    b.setAttribute(
      "aria-label",
      `${m.name}: top-1 ${top1}, ${lat ? fmtMs(lat.ms) : "no latency yet"}` +
        (m.default ? ", default" : "")
    );
  }
}

/** Indices of the points on the Pareto front (faster first): none faster and more accurate. */
function paretoFront(points) {
  const order = points.map((p, i) => i).sort((a, b) => points[a].x - points[b].x || points[b].y - points[a].y);
  const front = [];
  let best = -Infinity;
  for (const i of order) {
    if (points[i].y > best) {
      front.push(i);
      best = points[i].y;
    }
  }
  return front;
}

function renderChart() {
  const chart = byId("chart");
  chart.replaceChildren();
  const W = 640, H = 360, L = 56, R = 16, T = 14, B = 46;
  const points = [];
  for (const m of state.models) {
    const lat = latency(m);
    if (!lat || m.accuracy.top1 == null) continue;
    points.push({ x: lat.ms, y: m.accuracy.top1, measured: lat.measured, name: m.name, int8: m.precision === "int8" });
  }
  chart.dataset.points = String(points.length);
  if (points.length === 0) {
    svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, chart).textContent = "No variant measured yet";
    return;
  }
  // Latency on a log axis: the grid spans some 30x from the smallest to the largest variant.
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const x0 = Math.log10(Math.min(...xs) / 1.4), x1 = Math.log10(Math.max(...xs) * 1.4);
  const y0 = Math.floor(Math.min(...ys) / 5) * 5 - 2, y1 = Math.ceil(Math.max(...ys) / 5) * 5 + 2;
  const px = (v) => L + ((Math.log10(v) - x0) / (x1 - x0 || 1)) * (W - L - R);
  const py = (v) => H - B - ((v - y0) / (y1 - y0 || 1)) * (H - T - B);
  for (let e = Math.floor(x0); e <= Math.ceil(x1); e++) {
    for (const k of [1, 2, 5]) {
      const v = k * 10 ** e;
      if (Math.log10(v) < x0 || Math.log10(v) > x1) continue;
      svg("line", { class: "grid", x1: px(v), x2: px(v), y1: T, y2: H - B }, chart);
      svg("text", { x: px(v), y: H - B + 16, "text-anchor": "middle" }, chart).textContent = v >= 1 ? v : v.toFixed(2);
    }
  }
  for (let v = Math.ceil(y0 / 5) * 5; v <= y1; v += 5) {
    svg("line", { class: "grid", x1: L, x2: W - R, y1: py(v), y2: py(v) }, chart);
    svg("text", { x: L - 6, y: py(v) + 4, "text-anchor": "end" }, chart).textContent = `${v}%`;
  }
  svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }, chart);
  svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }, chart);
  svg("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" }, chart).textContent =
    "median latency per image (ms, log scale)";
  svg("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", transform: `rotate(-90 14 ${(T + H - B) / 2})` }, chart).textContent =
    "ImageNet top-1";
  const front = paretoFront(points);
  svg("polyline", { class: "front", points: front.map((i) => `${px(points[i].x)},${py(points[i].y)}`).join(" ") }, chart);
  points.forEach((p, i) => {
    const classes = [p.measured ? "" : "predicted", front.includes(i) ? "on-front" : "", p.int8 ? "int8" : ""]
      .join(" ").replace(/\s+/g, " ").trim();
    const c = svg("circle", { cx: px(p.x), cy: py(p.y), r: 5, class: classes, "data-name": p.name }, chart);
    svg("title", {}, c).textContent =
      `${p.name}: ${fmtMs(p.x)}${p.measured ? "" : " (predicted)"}, top-1 ${p.y.toFixed(1)}%`;
  });
}

function setFile(file) {
  if (!file) return;
  state.file = file;
  const img = byId("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  img.alt = `Preview of ${file.name}`;
  img.hidden = false;
  byId("drop-text").hidden = true;
  byId("classify").disabled = false;
  setStatus(`${file.name} (${Math.round(file.size / 1024)} KiB) ready`);
}

function query() {
  const q = new URLSearchParams({ top_k: "5" });
  if (document.querySelector("input[name=mode]:checked").value === "grid") {
    if (state.selected) q.set("model", state.selected);
    return q;
  }
  const maxLatency = byId("max-latency").value, minTop1 = byId("min-top1").value;
  if (maxLatency) q.set("max_latency_ms", maxLatency);
  if (minTop1) q.set("min_top1", minTop1);
  const precision = byId("target-precision").value;
  if (precision) q.set("precision", precision);
  if (byId("fallback").checked) q.set("fallback", "fastest");
  return q;
}

async function classify() {
  if (!state.file) return;
  const button = byId("classify");
  button.disabled = true;
  setStatus("Classifying…");
  try {
    const r = await fetch(`/classify?${query()}`, {
      method: "POST",
      headers: { "content-type": state.file.type || "application/octet-stream", ...authHeaders() },
      body: state.file,
    });
    // Our errors are JSON; a proxy's may not be.
    const body = await r.json().catch(() => null);
    if (r.status === 401) askForKey();
    if (!r.ok || body === null) {
      setStatus(body && body.error ? body.error.message : `error ${r.status}`, true);
      return;
    }
    showAnswer(body);
    setStatus("Done");
    loadModels();
  } catch (e) {
    setStatus(`The request failed: ${e.message}`, true);
  } finally {
    button.disabled = false;
  }
}

function showAnswer(body) {
  const met = body.target_met == null ? "" : body.target_met ? " (target met)" : " (target not met)";
  byId("answered").textContent = `Answered by ${body.model}${met}`;
  const bars = byId("bars");
  bars.replaceChildren();
  for (const p of body.predictions) {
    const li = document.createElement("li");
    const label = document.createElement("div");
    label.className = "label";
    const name = document.createElement("span");
    name.textContent = p.label;
    const pct = document.createElement("span");
    pct.textContent = `${(p.score * 100).toFixed(1)}%`;
    label.append(name, pct);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "presentation");
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(0.5, p.score * 100)}%`;
    bar.appendChild(fill);
    li.append(label, bar);
    bars.appendChild(li);
  }
  const t = body.timings_ms;
  byId("timings").textContent =
    `decode ${fmtMs(t.decode)} · preprocess ${fmtMs(t.preprocess)} · queue ${fmtMs(t.queue)} · ` +
    `inference ${fmtMs(t.inference)} · total ${fmtMs(t.total)}`;
}

function wire() {
  const drop = byId("drop");
  byId("file").addEventListener("change", (e) => setFile(e.target.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    setFile(e.dataTransfer.files[0]);
  });
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => {
      const grid = radio.value === "grid" && radio.checked;
      byId("grid-mode").hidden = !grid;
      byId("target-mode").hidden = grid;
    });
  }
  byId("classify").addEventListener("click", classify);
  loadModels();
  setInterval(loadModels, 5000);
}

wire();
