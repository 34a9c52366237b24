// The API reference: fetches /openapi.json and renders every operation (parameters, bodies,
// responses, examples) and every schema. The DOM is built with textContent only, so nothing in
// the document can inject markup.
"use strict";

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
};

const refName = (ref) => ref.split("/").pop();
const anchor = (method, path) => `op-${method}-${path.replace(/[^a-zA-Z0-9]+/g, "-")}`;

// A one-line summary of a schema: its type, or a link to the named schema.
function typeOf(schema) {
  if (!schema) return "any";
  if (schema.$ref) {
    const name = refName(schema.$ref);
    return el("a", { href: `#schema-${name}` }, name);
  }
  for (const key of ["oneOf", "anyOf", "allOf"]) {
    if (schema[key]) {
      const span = el("span");
      schema[key].forEach((s, i) => {
        if (i) span.append(key === "allOf" ? " & " : " | ");
        span.append(typeOf(s));
      });
      return span;
    }
  }
  let type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "any";
  if (schema.type === "array" || (Array.isArray(schema.type) && schema.type.includes("array"))) {
    const span = el("span", {}, `${type} of `, typeOf(schema.items));
    return span;
  }
  if (schema.format) type += ` (${schema.format})`;
  if (schema.enum) type += `: ${schema.enum.join(", ")}`;
  return type;
}

function constraints(schema) {
  if (!schema) return "";
  const parts = [];
  if (schema.minimum !== undefined) parts.push(`≥ ${schema.minimum}`);
  if (schema.exclusiveMinimum !== undefined) parts.push(`> ${schema.exclusiveMinimum}`);
  if (schema.maximum !== undefined) parts.push(`≤ ${schema.maximum}`);
  return parts.join(", ");
}

function example(value) {
  return el("pre", { class: "example" }, el("code", {}, JSON.stringify(value, null, 2)));
}

function parameters(op) {
  if (!op.parameters?.length) return null;
  const body = el("tbody");
  for (const p of op.parameters) {
    const limits = constraints(p.schema);
    body.append(el("tr", {},
      el("td", {}, el("code", {}, p.name), p.required ? " (required)" : ""),
      el("td", {}, p.in),
      el("td", {}, typeOf(p.schema), limits ? ` ${limits}` : ""),
      el("td", {}, p.description || "", p.example !== undefined ? el("div", { class: "muted" },
        "e.g. ", el("code", {}, String(p.example))) : null)));
  }
  return el("table", { class: "params" },
    el("caption", {}, "Parameters"),
    el("thead", {}, el("tr", {}, ...["Name", "In", "Type", "Description"].map((h) =>
      el("th", { scope: "col" }, h)))),
    body);
}

function contentList(content) {
  const list = el("ul", { class: "content" });
  for (const [type, media] of Object.entries(content || {})) {
    const item = el("li", {}, el("code", {}, type), ": ", typeOf(media.schema));
    if (media.example !== undefined) item.append(example(media.example));
    list.append(item);
  }
  return list;
}

function requestBody(op) {
  if (!op.requestBody) return null;
  return el("div", { class: "body" },
    el("h4", {}, "Request body"),
    op.requestBody.description ? el("p", {}, op.requestBody.description) : null,
    contentList(op.requestBody.content));
}

function responses(op) {
  const list = el("dl", { class: "responses" });
  for (const [status, r] of Object.entries(op.responses || {})) {
    const dd = el("dd", {}, r.description || "");
    if (r.content) dd.append(contentList(r.content));
    if (r.headers) {
      const names = Object.keys(r.headers).join(", ");
      dd.append(el("div", { class: "muted" }, `Headers: ${names}`));
    }
    list.append(el("dt", { class: `status s${status[0]}` }, status), dd);
  }
  return el("div", {}, el("h4", {}, "Responses"), list);
}

function operation(path, method, op) {
  const section = el("section", { class: "card op", id: anchor(method, path) },
    el("h3", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), " ",
      el("code", {}, path)),
    op.summary ? el("p", {}, op.summary) : null,
    op.description ? el("p", { class: "muted" }, op.description) : null,
    parameters(op), requestBody(op), responses(op));
  return section;
}

function schemaSection(name, schema) {
  const section = el("section", { class: "card schema", id: `schema-${name}` },
    el("h3", {}, el("code", {}, name)),
    schema.description ? el("p", {}, schema.description) : null);
  const props = Object.entries(schema.properties || {});
  if (props.length) {
    const required = new Set(schema.required || []);
    const body = el("tbody");
    for (const [prop, s] of props) {
      const limits = constraints(s);
      body.append(el("tr", {},
        el("td", {}, el("code", {}, prop), required.has(prop) ? " (required)" : ""),
        el("td", {}, typeOf(s), limits ? ` ${limits}` : ""),
        el("td", {}, s.description || "")));
    }
    section.append(el("table", { class: "params" },
      el("thead", {}, el("tr", {}, ...["Field", "Type", "Description"].map((h) =>
        el("th", { scope: "col" }, h)))), body));
  } else {
    section.append(el("p", {}, "Type: ", typeOf(schema)));
  }
  if (schema.example !== undefined) section.append(example(schema.example));
  return section;
}

async function render() {
  const main = document.getElementById("api");
  const status = document.getElementById("status");
  let doc;
  try {
    const r = await fetch("/openapi.json");
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    doc = await r.json();
  } catch (e) {
    status.textContent = `Cannot load /openapi.json: ${e.message}`;
    status.className = "error";
    return;
  }
  document.getElementById("title").textContent = `${doc.info.title} ${doc.info.version} API`;
  document.getElementById("intro").textContent = doc.info.description || "";
  const toc = document.getElementById("toc");
  toc.append(el("h2", {}, "Operations"));
  const tags = (doc.tags || []).map((t) => t.name);
  const byTag = new Map(tags.map((t) => [t, []]));
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = op.tags?.[0] || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push([path, method, op]);
    }
  }
  const fragment = document.createDocumentFragment();
  let count = 0;
  for (const [tag, ops] of byTag) {
    if (!ops.length) continue;
    const description = (doc.tags || []).find((t) => t.name === tag)?.description;
    fragment.append(el("h2", { class: "tag" }, tag),
      description ? el("p", { class: "muted" }, description) : null);
    const links = el("ul");
    for (const [path, method, op] of ops) {
      fragment.append(operation(path, method, op));
      links.append(el("li", {}, el("a", { href: `#${anchor(method, path)}` },
        `${method.toUpperCase()} ${path}`)));
      count++;
    }
    toc.append(el("h3", {}, tag), links);
  }
  fragment.append(el("h2", { class: "tag" }, "Schemas"));
  for (const [name, schema] of Object.entries(doc.components?.schemas || {})) {
    fragment.append(schemaSection(name, schema));
  }
  status.remove();
  main.append(fragment);
  main.dataset.operations = String(count);
}

render();
