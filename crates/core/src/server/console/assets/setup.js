// Trigger setup: what to enter in Halo for a flow (its trigger URL with recipients, the
// authentication, the two webhooks and their event rules), with a test webhook.

import { h, fill, message, errorBox, copyField, facts, link, json } from "./dom.js";
import { get, post } from "./api.js";

export async function setupPage(main, context) {
  const [id] = context.params;
  const recipientsInput = h("input", {
    id: "recipients", name: "recipients", type: "text", autocomplete: "off",
    "aria-describedby": "recipients-help", value: context.query.recipients ?? "",
  });
  const result = h("div", { id: "setup-result", "aria-live": "polite" });
  const testResult = h("div", { id: "test-result" });
  const form = h("form", { class: "inline-form", onsubmit: (event) => { event.preventDefault(); refresh(); } },
    h("label", { for: "recipients" }, "Recipients"),
    recipientsInput,
    h("button", { type: "submit" }, "Show the URL"),
    h("p", { id: "recipients-help", class: "muted" },
      "Who the flow notifies: user names or group names, separated by commas (for example: epearson, Antares Team). They are URL-encoded into the trigger URL."));
  const testButton = h("button", { type: "button", id: "send-test", onclick: () => sendTest(id, recipients(), testResult) },
    "Send a test webhook");
  fill(main,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, link("/flows", "Flows"), " / ", link(`/flows/${encodeURIComponent(id)}`, id), " / setup"),
    h("h1", {}, `Set up the trigger of ${id}`),
    h("section", { "aria-labelledby": "recipients-heading" }, h("h2", { id: "recipients-heading" }, "1. Recipients"), form),
    result,
    h("section", { "aria-labelledby": "test-heading" },
      h("h2", { id: "test-heading" }, "Try it"),
      h("p", {}, "Posts a sample Halo ticket webhook to this flow, through the same path as a real one, and starts a run."),
      testButton, testResult));

  function recipients() {
    return recipientsInput.value.split(",").map((r) => r.trim()).filter(Boolean);
  }
  let timer = null;
  recipientsInput.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  });
  async function refresh() {
    try {
      fill(result, setupView(await loadSetup(id, recipients())));
    } catch (error) {
      fill(result, errorBox(error));
    }
  }
  await refresh();
}

async function loadSetup(id, recipients) {
  try {
    // One `recipients=` per name: a comma inside a name stays part of it.
    const search = new URLSearchParams(recipients.map((r) => ["recipients", r])).toString();
    return await get(`/api/flows/${encodeURIComponent(id)}/setup${search ? `?${search}` : ""}`);
  } catch (error) {
    if (error.status !== 404 || error.message.includes(id)) throw error;
    return fallbackSetup(id, recipients);
  }
}

// A server without the setup endpoint: the URL from /api/flows, and a note for the rest.
async function fallbackSetup(id, recipients) {
  const flow = ((await get("/api/flows")).flows ?? []).find((f) => f.id === id);
  if (!flow) throw Object.assign(new Error(`No flow with id ${id} is loaded.`), { status: 404, code: "not_found" });
  const base = new URL(flow.trigger?.url ?? flow.trigger_url ?? `/triggers/${id}`, location.origin).href;
  const list = recipients.map(encodeURIComponent).join(",");
  const url = list ? `${base}${base.includes("?") ? "&" : "?"}recipients=${list}` : base;
  return { flow: id, trigger_url: url, auth: flow.trigger?.auth ?? null, webhooks: null };
}

function setupView(setup) {
  return h("div", {},
    h("section", { "aria-labelledby": "url-heading" },
      h("h2", { id: "url-heading" }, "2. Trigger URL"),
      h("p", {}, "In Halo, under Configuration › Integrations › Webhooks, create the webhook with this URL (method POST, content type JSON)."),
      copyField("Trigger URL", setup.trigger_url, "trigger-url"),
      /<[A-Za-z0-9_]+>/.test(setup.trigger_url)
        ? h("p", { class: "muted", id: "secret-placeholder" }, "Replace ", h("code", {}, setup.trigger_url.match(/<[A-Za-z0-9_]+>/)[0]),
          " with the value of that secret: haloflow never shows secret values.")
        : null),
    h("section", { "aria-labelledby": "auth-heading" },
      h("h2", { id: "auth-heading" }, "3. Authentication"),
      authView(setup.auth)),
    h("section", { "aria-labelledby": "webhooks-heading" },
      h("h2", { id: "webhooks-heading" }, "4. Webhooks and their events"),
      webhooksView(setup.webhooks)));
}

function authView(auth) {
  if (!auth) return message("note", "This server does not say which authentication the trigger takes.");
  const rows = [["Choose in Halo", h("strong", {}, auth.halo_setting ?? auth.type)]];
  if (auth.username) rows.push(["User name", copyField("User name", auth.username, "auth-username")]);
  if (auth.param) rows.push(["URL parameter", h("span", { class: "mono" }, auth.param)]);
  if (auth.header) rows.push(["Header", copyField("Header name", auth.header, "auth-header")]);
  if (auth.secret_name) {
    rows.push(["Secret", h("span", {}, "the value of the secret ", h("code", {}, auth.secret_name),
      " (haloflow never shows secret values; read it where your secrets are kept)")]);
  }
  return facts(rows);
}

function webhooksView(webhooks) {
  if (!webhooks) {
    return message("note", "The webhook plan is not available from this server. `haloflow halo setup` creates the webhooks for you.");
  }
  if (!webhooks.length) return message("note", "This trigger needs no Halo webhook.");
  return h("div", { class: "cards" }, webhooks.map((webhook, index) => webhookCard(webhook, index)));
}

// The webhook plan comes from the trigger's integration. Known fields are laid out as Halo's
// form asks for them; any other field is shown as it comes.
const WEBHOOK_FIELDS = [
  ["name", "Name", true],
  ["url", "URL", true],
  ["method", "Method", false],
  ["content_type", "Content type", false],
  ["authentication", "Authentication", false],
  ["username", "User name", true],
];

function webhookCard(webhook, index) {
  const route = webhook.route ? ` (${String(webhook.route).replace(/_/g, " ")} agent)` : "";
  const rows = [];
  const plain = [];
  for (const [key, label, copy] of WEBHOOK_FIELDS) {
    const value = webhook[key];
    if (value === null || value === undefined) continue;
    if (copy) rows.push(copyField(label, String(value), `webhook-${index}-${key}`));
    else plain.push([label, h("span", { class: "mono" }, String(value))]);
  }
  const rule = webhook.event || webhook.rule
    ? h("div", { class: "event-rule" },
      h("h4", {}, "Event"),
      h("p", {}, "Fires on ", h("strong", {}, webhook.event ?? "the event"),
        webhook.rule ? [" when ", h("strong", {}, webhook.rule)] : null, "."))
    : null;
  const known = new Set([...WEBHOOK_FIELDS.map(([k]) => k), "title", "route", "event", "rule", "halo"]);
  const other = Object.entries(webhook).filter(([k, v]) => !known.has(k) && v !== null && v !== undefined);
  return h("article", { class: "card webhook", "data-route": webhook.route ?? null },
    h("h3", {}, `Webhook ${index + 1}${route}`),
    rows, facts(plain), rule,
    other.length ? facts(other.map(([k, v]) => [k.replace(/_/g, " "), typeof v === "object" ? eventView(v) : String(v)])) : null,
    webhook.halo ? h("details", {}, h("summary", {}, "What `haloflow halo setup` sends to Halo's API for it"), json(webhook.halo)) : null);
}

function eventView(value) {
  if (Array.isArray(value)) return h("ul", {}, value.map((v) => h("li", {}, eventView(v))));
  if (typeof value === "object") {
    return facts(Object.entries(value).map(([k, v]) =>
      [k.replace(/_/g, " "), typeof v === "object" && v !== null ? eventView(v) : String(v)]));
  }
  return String(value);
}

async function sendTest(id, recipients, out) {
  fill(out, message("note", "Sending the sample webhook…"));
  try {
    const body = recipients.length ? { recipients } : {};
    const answer = await post(`/api/flows/${encodeURIComponent(id)}/test`, body);
    const runs = answer.run_ids ?? [];
    fill(out, message("ok",
      runs.length ? [`Sent. It started ${runs.length === 1 ? "a run" : `${runs.length} runs`}: `,
        runs.map((run, i) => [i ? ", " : "", h("a", { href: `#/runs/${encodeURIComponent(run)}`, class: "test-run" }, `open run ${run}`)])]
        : "Sent, but it started no run.",
      answer.suppressed ? ` ${answer.suppressed} event(s) suppressed by flood control.` : "",
      answer.duplicates ? ` ${answer.duplicates} duplicate(s).` : "",
      answer.request_id ? [" ", h("span", { class: "muted" }, `Request ${answer.request_id}.`)] : ""));
  } catch (error) {
    fill(out, error.status === 404 && !error.message.includes(id)
      ? message("note", "Sending a test webhook is not available from this server.")
      : errorBox(error));
  }
}

