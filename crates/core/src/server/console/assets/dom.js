// Small DOM helpers. Data only ever reaches the page through textContent and attributes,
// never innerHTML, so a ticket summary cannot inject markup.

/** Creates an element: h("a", {href: "#/runs", class: "x"}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A time in the browser's local time, with the ISO time as tooltip. */
export function time(ms) {
  if (ms === null || ms === undefined) return h("span", { class: "muted" }, "—");
  const date = new Date(ms);
  return h("time", { datetime: date.toISOString(), title: date.toISOString() }, date.toLocaleString());
}

/** A duration in ms as "850 ms", "2.4 s", "3 min 5 s". */
export function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
}

/** A status badge; the word is always shown, colour only repeats it. */
export function badge(status) {
  const word = String(status ?? "unknown");
  return h("span", { class: `badge badge-${word.replace(/[^a-z_]/g, "")}` }, word);
}

/** JSON shown as preformatted text. */
export function json(value) {
  return h("pre", { class: "json", tabindex: "0" }, JSON.stringify(value ?? null, null, 2));
}

/** A copy button for `text` that says when it copied. */
export function copyButton(name, getText) {
  const status = h("span", { class: "copy-status", role: "status", "aria-live": "polite" });
  const button = h("button", {
    type: "button",
    class: "copy",
    "aria-label": name,
    onclick: async () => {
      const text = typeof getText === "function" ? getText() : getText;
      const ok = await copyText(text);
      status.textContent = ok ? "Copied" : "Select the text and copy it (the browser refused)";
      setTimeout(() => { status.textContent = ""; }, 2500);
    },
  }, "Copy");
  return h("span", { class: "copy-wrap" }, button, status);
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Plain http on another host has no clipboard API: fall back to a selected textarea.
    const area = h("textarea", { class: "offscreen", "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand && document.execCommand("copy");
    area.remove();
    return Boolean(ok);
  }
}

/** A labelled value with its copy button. */
export function copyField(label, value, id) {
  return h("div", { class: "copy-field" },
    h("label", { for: id }, label),
    h("div", { class: "copy-row" },
      h("input", { id, type: "text", readonly: true, value, class: "mono", spellcheck: "false" }),
      copyButton(`Copy the ${label.replace(/^[A-Z][a-z]/, (c) => c.toLowerCase())}`, () => document.getElementById(id)?.value ?? value)));
}

/** A plain message box: kind is "error", "note" or "ok". */
export function message(kind, ...text) {
  const role = kind === "error" ? "alert" : "status";
  return h("div", { class: `message message-${kind}`, role }, ...text);
}

/** A definition list from [term, value] pairs (values may be nodes). */
export function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(Boolean).map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

/** A link to a route in the console. */
export function link(route, ...text) {
  return h("a", { href: `#${route}` }, ...text);
}

/** Builds a hash route with a query from an object, leaving out empty values. */
export function route(path, query = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") params.set(key, value);
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

/** An error shown plainly: the API's own message, with its code and HTTP status. */
export function errorBox(error) {
  if (error && typeof error.status === "number" && error.code) {
    return message("error", error.message,
      h("span", { class: "muted" }, ` (${error.code}${error.status ? `, HTTP ${error.status}` : ""})`));
  }
  console.error(error);
  return message("error", String(error?.message ?? error));
}

/** Calls `render(value)` only when `value` differs from the last one it saw, so a live
 * update that changes nothing leaves the page (and the keyboard focus) alone. */
export function whenChanged(render) {
  let last = null;
  return (value) => {
    const text = JSON.stringify(value);
    if (text === last) return;
    last = text;
    render(value);
  };
}
