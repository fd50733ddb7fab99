// Requests (trigger requests with their verdict, suppressed ones under their parent) and
// Sync back (ServiceNow webhooks, integrator scans, ticket links).

import { h, fill, message, errorBox, time, badge, link, route, json, whenChanged } from "./dom.js";
import { get, query } from "./api.js";
import { shortId } from "./runs.js";

/** run, suppressed, duplicate or rejected; the server's own word when it gives one. */
export function verdict(request) {
  if (request.verdict) return request.verdict;
  if (request.status === "rejected" || request.error_code) return "rejected";
  if (request.suppressed_under) return "suppressed";
  if ((request.run_ids ?? []).length) return "run";
  return "duplicate";
}

const VERDICTS = ["run", "suppressed", "duplicate", "rejected"];

export async function requestsPage(main, context) {
  const q = context.query;
  const flows = await get("/api/flows").then((a) => a.flows ?? []).catch(() => []);
  const table = h("div", { id: "requests-table" });
  const more = h("div", { class: "pager" });
  fill(main, h("h1", {}, "Requests"),
    h("p", { class: "muted" }, "Trigger requests as they arrived, newest first. Events that flood control suppressed are listed under the request whose run they were folded into."),
    filterForm(q, flows), table, more);
  const params = { flow: q.flow, suppressed: q.suppressed, verdict: q.verdict, before: q.before, limit: q.limit ?? 50 };
  const update = whenChanged((answer) => {
    fill(table, requestsTable(answer.requests ?? []));
    fill(more, answer.next_cursor
      ? h("a", { class: "button", id: "older", href: `#${route("/requests", { ...q, before: answer.next_cursor })}` }, "Older")
      : null);
  });
  update(await get(`/api/requests${query(params)}`));
  if (!q.before) context.live(async () => update(await get(`/api/requests${query(params)}`)));
}

function filterForm(q, flows) {
  const form = h("form", { class: "filters", "aria-label": "Filter requests", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(form);
    location.hash = route("/requests", Object.fromEntries([...data.entries()].filter(([, v]) => v)));
  } },
  h("div", { class: "field" }, h("label", { for: "req-flow" }, "Flow"),
    h("select", { id: "req-flow", name: "flow" }, h("option", { value: "" }, "All flows"),
      flows.map((f) => h("option", { value: f.id, selected: f.id === q.flow }, f.id)))),
  h("div", { class: "field" }, h("label", { for: "req-verdict" }, "Verdict"),
    h("select", { id: "req-verdict", name: "verdict" },
      h("option", { value: "" }, "Any verdict"),
      VERDICTS.map((v) => h("option", { value: v, selected: v === q.verdict || (v === "suppressed" && q.suppressed === "true") }, v)))),
  h("div", { class: "filter-buttons" }, h("button", { type: "submit" }, "Show requests"),
    h("a", { href: "#/requests", class: "button secondary" }, "Clear")));
  return form;
}

/** Parents first, each followed by the requests suppressed under it (when on this page). */
function requestsTable(requests) {
  if (!requests.length) return message("note", "No requests match.");
  const byId = new Map(requests.map((r) => [r.id, r]));
  const shownUnder = new Set(requests.filter((r) => r.suppressed_under && byId.has(r.suppressed_under)).map((r) => r.id));
  const rows = [];
  for (const request of requests) {
    if (shownUnder.has(request.id)) continue;
    rows.push(requestRow(request, false));
    const children = requests.filter((r) => r.suppressed_under === request.id);
    children.sort((a, b) => a.received_at_ms - b.received_at_ms);
    children.forEach((child, i) => rows.push(requestRow(child, true, i + 1)));
  }
  return h("table", { class: "list requests" },
    h("caption", { class: "offscreen" }, "Trigger requests, newest first, suppressed ones under their parent"),
    h("thead", {}, h("tr", {}, ["Received", "Flow", "Verdict", "HTTP", "Events", "Runs", "Suppressed"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows));
}

function requestRow(request, child, position) {
  const word = verdict(request);
  const attrs = { "data-request": request.id, "data-verdict": word, class: child ? "child" : "" };
  if (child) attrs["data-parent"] = request.suppressed_under;
  return h("tr", attrs,
    h("td", {}, child ? h("span", { class: "tree", "aria-hidden": "true" }, "└ ") : null, time(request.received_at_ms),
      h("div", { class: "mono muted small" }, request.id)),
    h("td", { class: "nowrap" }, request.flow_id),
    h("td", {}, badge(word),
      child ? h("span", { class: "muted" }, ` #${position} under ${shortId(request.suppressed_under)}`) : null,
      !child && request.suppressed_under ? h("span", { class: "muted" }, ` under ${shortId(request.suppressed_under)}`) : null,
      request.error_message ? h("div", { class: "error-cell" }, request.error_message) : null),
    h("td", { class: "mono" }, String(request.http_status)),
    h("td", {}, String(request.event_count)),
    h("td", {}, (request.run_ids ?? []).map((id, i) => [i ? ", " : "", link(`/runs/${encodeURIComponent(id)}`, h("span", { class: "mono" }, shortId(id)))])),
    h("td", {}, request.suppressed_count ? h("span", { class: "suppressed-count" }, `${request.suppressed_count} suppressed`) : ""));
}

export async function syncPage(main, context) {
  const loading = () => h("p", { class: "muted loading" }, "Loading…");
  const webhooks = h("div", {}, loading());
  const scans = h("div", {}, loading());
  const links = h("div", {}, loading());
  fill(main, h("h1", {}, "Sync back"),
    h("section", { "aria-labelledby": "sn-webhooks" }, h("h2", { id: "sn-webhooks" }, "ServiceNow webhooks received"), webhooks),
    h("section", { "aria-labelledby": "sn-scans" }, h("h2", { id: "sn-scans" }, "Integrator scans"), scans),
    h("section", { "aria-labelledby": "sn-links", id: "links" }, h("h2", { id: "sn-links" }, "Halo tickets linked to ServiceNow records"), links));
  const showWebhooks = whenChanged((answer) => fill(webhooks, syncRequests(answer.requests ?? [])));
  const showScans = whenChanged((answer) => fill(scans, scansTable(answer.scans ?? [])));
  const refresh = async () => {
    await Promise.all([
      get(`/api/requests${query({ flow_prefix: "servicenow:", limit: 50 })}`).then(showWebhooks, (e) => fill(webhooks, errorBox(e))),
      get("/api/integrator").then(showScans, (e) => fill(scans, errorBox(e))),
    ]);
  };
  await refresh();
  await linksTable(links);
  context.live(refresh);
}

function syncRequests(requests) {
  const received = requests.filter((r) => r.flow_id.startsWith("servicenow:"));
  if (!received.length) return message("note", "No ServiceNow webhook has arrived yet.");
  return h("table", { class: "list" },
    h("thead", {}, h("tr", {}, ["Received", "Connection", "Verdict", "HTTP", "Outcome", "Runs"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, received.map((r) => h("tr", {},
      h("td", {}, time(r.received_at_ms)),
      h("td", { class: "mono" }, r.flow_id.replace(/^servicenow:/, "")),
      h("td", {}, badge(verdict(r)), r.error_message ? h("div", { class: "error-cell" }, r.error_message) : null),
      h("td", { class: "mono" }, String(r.http_status)),
      h("td", {}, r.outcome ? h("details", {}, h("summary", {}, "What was done"), json(r.outcome)) : "—"),
      h("td", {}, (r.run_ids ?? []).map((id, i) => [i ? ", " : "", link(`/runs/${encodeURIComponent(id)}`, h("span", { class: "mono" }, shortId(id)))]))))));
}

function scansTable(scans) {
  if (!scans.length) return message("note", "The integrator has not scanned yet (or no ServiceNow connection is configured).");
  return h("table", { class: "list" },
    h("thead", {}, h("tr", {}, ["Connection", "Started", "Finished", "Records", "Created", "Updated", "Notes", "Errors"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, scans.map((s) => {
      const r = s.result ?? {};
      const errors = Array.isArray(r.errors) ? r.errors : [];
      return h("tr", {},
        h("td", { class: "mono" }, s.connection),
        h("td", {}, time(s.started_at_ms)),
        h("td", {}, time(s.finished_at_ms)),
        ...["records", "created", "updated", "notes"].map((k) => h("td", {}, String(r[k] ?? 0))),
        h("td", { class: errors.length ? "error-cell" : "" }, errors.length
          ? h("ul", {}, errors.map((e) => h("li", {}, typeof e === "string" ? e : JSON.stringify(e))))
          : "none"));
    })));
}

async function linksTable(out) {
  let answer;
  try {
    answer = await get("/api/servicenow/links");
  } catch (error) {
    fill(out, error.status === 404
      ? message("note", "Listing links is not available from this server.")
      : errorBox(error));
    return;
  }
  const links = answer.links ?? [];
  if (!links.length) return fill(out, message("note", "No Halo ticket is linked to a ServiceNow record yet."));
  fill(out, h("table", { class: "list" },
    h("thead", {}, h("tr", {}, ["Halo ticket", "ServiceNow record", "Created by", "Created", "Updated"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, links.map((l) => h("tr", {},
      h("td", {}, h("span", { class: "mono" }, `${l.ticket_connection} #${l.ticket_id}`)),
      h("td", {}, h("span", { class: "mono" }, `${l.number ?? l.remote_id} (${l.remote_table}, ${l.remote})`)),
      h("td", {}, l.created_by === "ticket" ? "Halo" : "ServiceNow"),
      h("td", {}, time(l.created_at_ms)),
      h("td", {}, time(l.updated_at_ms)))))));
}
