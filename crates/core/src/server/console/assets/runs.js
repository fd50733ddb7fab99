// Runs: the list (filters, newest first, keyset paging) and the run page (trigger outputs,
// steps with inputs, outputs, attempts and outbound requests; replay).

import { h, fill, message, errorBox, time, duration, badge, json, facts, link, route, whenChanged } from "./dom.js";
import { get, post, query } from "./api.js";

const STATUSES = ["queued", "running", "succeeded", "failed"];

export async function runsPage(main, context) {
  const q = context.query;
  const flows = await get("/api/flows").then((a) => a.flows ?? []).catch(() => []);
  const table = h("div", { id: "runs-table" });
  const more = h("div", { class: "pager" });
  fill(main, h("h1", {}, "Runs"), filterForm(q, flows), table, more);
  const params = { flow: q.flow, status: q.status, since: toMs(q.since), until: toMs(q.until), before: q.before, request: q.request, limit: q.limit ?? 50 };
  const update = whenChanged((answer) => {
    fill(table, runsTable(answer.runs ?? []));
    fill(more, pager(q, answer.next_cursor));
  });
  update(await get(`/api/runs${query(params)}`));
  // The first page follows new runs; an older page stays as it was read.
  if (!q.before) context.live(async () => update(await get(`/api/runs${query(params)}`)));
}

function toMs(value) {
  if (!value) return null;
  return /^\d+$/.test(value) ? value : String(new Date(value).getTime());
}

// datetime-local values are local time without zone; the route keeps them as typed.
function filterForm(q, flows) {
  const form = h("form", { class: "filters", "aria-label": "Filter runs", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(form);
    location.hash = route("/runs", Object.fromEntries([...data.entries()].filter(([, v]) => v)));
  } },
  field("Flow", h("select", { id: "filter-flow", name: "flow" },
    h("option", { value: "" }, "All flows"),
    flows.map((f) => h("option", { value: f.id, selected: f.id === q.flow }, f.id)))),
  field("Status", h("select", { id: "filter-status", name: "status" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === q.status }, s)))),
  field("From", h("input", { id: "filter-since", name: "since", type: "datetime-local", value: localInput(q.since) })),
  field("Until", h("input", { id: "filter-until", name: "until", type: "datetime-local", value: localInput(q.until) })),
  h("div", { class: "filter-buttons" },
    h("button", { type: "submit" }, "Show runs"),
    h("a", { href: "#/runs", class: "button secondary" }, "Clear")));
  return form;
}

function field(label, control) {
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control);
}

function localInput(value) {
  if (!value) return "";
  const date = /^\d+$/.test(value) ? new Date(Number(value)) : new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 16);
}

function pager(q, cursor) {
  const links = [];
  if (q.before) links.push(h("a", { href: `#${route("/runs", { ...q, before: null })}`, class: "button secondary" }, "Newest"));
  if (cursor) links.push(h("a", { href: `#${route("/runs", { ...q, before: cursor })}`, class: "button", id: "older" }, "Older"));
  return links;
}

export function runsTable(runs) {
  if (!runs.length) return message("note", "No runs match.");
  return h("table", { class: "list" },
    h("caption", { class: "offscreen" }, "Runs, newest first"),
    h("thead", {}, h("tr", {}, ["Run", "Flow", "Status", "Created", "Took", "Failed step / error"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, runs.map((run) => h("tr", { "data-run": run.id, "data-status": run.status },
      h("td", {}, link(`/runs/${encodeURIComponent(run.id)}`, h("span", { class: "mono" }, shortId(run.id))),
        run.replay_of ? h("span", { class: "muted" }, " (replay)") : null),
      h("td", { class: "nowrap" }, link(route("/runs", { flow: run.flow_id }), run.flow_id)),
      h("td", {}, badge(run.status)),
      h("td", {}, time(run.created_at_ms)),
      h("td", { class: "nowrap" }, run.finished_at_ms && run.started_at_ms ? duration(run.finished_at_ms - run.started_at_ms) : "—"),
      h("td", { class: "error-cell" }, run.failed_step ? h("span", { class: "mono" }, `${run.failed_step}: `) : null, run.error ?? "")))));
}

/** The end of an id: time-ordered ids (UUIDv7) share their beginning, not their end. */
export function shortId(id) {
  return id.length > 13 ? `…${id.slice(-12)}` : id;
}

export async function runPage(main, context) {
  const [id] = context.params;
  const body = h("div", {});
  const dialog = h("dialog", { id: "replay-dialog", "aria-labelledby": "replay-title" });
  const heading = h("h1", {}, `Run ${shortId(id)}`);
  fill(main, h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, link("/runs", "Runs"), " / ", id),
    heading, body, dialog);
  const flows = await get("/api/flows").then((a) => a.flows ?? []).catch(() => []);
  // Screen readers hear the status change that a live update brings.
  const announcer = h("p", { class: "offscreen", role: "status", "aria-live": "polite" });
  main.append(announcer);
  let shownStatus = null;
  const update = whenChanged((run) => {
    if (shownStatus && shownStatus !== run.status) announcer.textContent = `The run is now ${run.status}.`;
    shownStatus = run.status;
    fill(body, runView(run, flows, dialog));
  });
  const first = await get(`/api/runs/${encodeURIComponent(id)}`);
  heading.textContent = `Run ${shortId(id)} of ${first.flow_id}`;
  update(first);
  context.live(async () => {
    if (dialog.open) return;
    update(await get(`/api/runs/${encodeURIComponent(id)}`));
  });
}

function runView(run, flows, dialog) {
  const flow = flows.find((f) => f.id === run.flow_id);
  return h("div", { class: "run", "data-status": run.status },
    h("section", { "aria-labelledby": "summary-heading", class: "card" },
      h("h2", { id: "summary-heading" }, "Summary"),
      facts([
        ["Status", h("span", { id: "run-status" }, badge(run.status))],
        ["Flow", link(`/flows/${encodeURIComponent(run.flow_id)}`, run.flow_id)],
        ["Run id", h("span", { class: "mono" }, run.id)],
        run.request_id ? ["Request", link(route("/requests", { flow: run.flow_id }), h("span", { class: "mono" }, run.request_id))] : null,
        run.replay_of ? ["Replay of", link(`/runs/${encodeURIComponent(run.replay_of)}`, h("span", { class: "mono" }, run.replay_of))] : null,
        ["Created", time(run.created_at_ms)],
        ["Started", time(run.started_at_ms)],
        ["Finished", time(run.finished_at_ms)],
        run.finished_at_ms && run.started_at_ms ? ["Took", duration(run.finished_at_ms - run.started_at_ms)] : null,
      ]),
      run.error ? message("error", h("strong", {}, run.failed_step ? `Step ${run.failed_step} failed: ` : "Failed: "), run.error) : null,
      replayControls(run, flow, dialog)),
    recordsView(run),
    h("section", { "aria-labelledby": "trigger-heading" },
      h("h2", { id: "trigger-heading" }, "Trigger outputs"),
      h("details", {}, h("summary", {}, "What the trigger gave the steps"), json(run.trigger))),
    h("section", { "aria-labelledby": "steps-heading" },
      h("h2", { id: "steps-heading" }, "Steps"),
      (run.steps ?? []).length ? run.steps.map((step) => stepView(step, run)) : message("note", "No step has started yet."),
      notRun(run, flow)));
}

// The flow's steps this run did not reach (or whose path it did not take).
function notRun(run, flow) {
  const seen = new Set((run.steps ?? []).map((s) => s.step_id));
  const rest = flattenSteps(flow?.steps).filter((s) => !seen.has(s.id));
  if (!rest.length) return null;
  const why = run.status === "queued" || run.status === "running" ? "not run yet" : "not run";
  return h("div", { class: "card step step-pending" },
    h("h3", {}, `Steps ${why}`),
    h("ul", {}, rest.map((s) => h("li", {}, h("span", { class: "mono" }, s.id), " ", h("span", { class: "mono muted" }, s.type ?? "")))));
}

function stepView(step, run) {
  const failed = step.status === "failed";
  return h("article", { class: `card step step-${step.status}`, "data-step": step.step_id, "aria-labelledby": `step-${step.step_id}` },
    h("h3", { id: `step-${step.step_id}` }, h("span", { class: "mono" }, step.step_id), " ", h("span", { class: "type mono muted" }, step.step_type), " ", badge(step.status)),
    facts([
      ["Started", time(step.started_at_ms)],
      ["Finished", time(step.finished_at_ms)],
      step.finished_at_ms ? ["Took", duration(step.finished_at_ms - step.started_at_ms)] : null,
      ["Attempts", String(step.attempts ?? 0)],
      step.reused_from ? ["Outputs reused from", link(`/runs/${encodeURIComponent(step.reused_from)}`, h("span", { class: "mono" }, step.reused_from))] : null,
    ]),
    step.error ? message("error", step.error_code ? h("span", { class: "mono" }, `${step.error_code}: `) : null, step.error) : null,
    exchangesView(step),
    attemptsView(step),
    h("details", { open: failed }, h("summary", {}, "Inputs (rendered)"), json(step.inputs)),
    h("details", {}, h("summary", {}, "Outputs"), json(step.outputs)));
}

function attemptsView(step) {
  const attempts = step.attempt_log ?? [];
  if (!attempts.length) return null;
  return h("div", {}, h("h4", {}, "Attempts"),
    h("table", { class: "list attempts" },
      h("thead", {}, h("tr", {}, ["#", "Started", "Outcome", "Took", "Then waited", "Error"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, attempts.map((a) => h("tr", {},
        h("td", {}, String(a.number)),
        h("td", {}, time(a.started_at_ms)),
        h("td", {}, badge(a.outcome), a.outcome_unknown ? h("span", { class: "muted" }, " (may have taken effect)") : null),
        h("td", { class: "nowrap" }, duration(a.finished_at_ms - a.started_at_ms)),
        h("td", {}, a.retry_in_ms !== null && a.retry_in_ms !== undefined ? duration(a.retry_in_ms) : "—"),
        h("td", { class: "error-cell" }, a.error_code ? h("span", { class: "mono" }, `${a.error_code}: `) : null, a.error ?? ""))))));
}

// Outbound requests, by attempt when the attempts kept theirs.
function exchangesView(step) {
  const rows = [];
  const attempts = step.attempt_log ?? [];
  if (attempts.some((a) => (a.exchanges ?? []).length)) {
    for (const a of attempts) for (const x of a.exchanges ?? []) rows.push([a.number, x]);
  } else {
    for (const x of step.exchanges ?? []) rows.push([null, x]);
  }
  if (!rows.length) return null;
  return h("div", {}, h("h4", {}, "Outbound requests"),
    h("table", { class: "list exchanges" },
      h("thead", {}, h("tr", {}, ["Attempt", "Method", "URL", "Status", "Took", "Error"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map(([number, x]) => h("tr", { class: x.status && x.status < 400 ? "" : "bad" },
        h("td", {}, number === null ? "—" : String(number)),
        h("td", { class: "mono" }, x.method),
        h("td", { class: "mono url" }, x.url),
        h("td", { class: "mono" }, x.status === null || x.status === undefined ? "no answer" : String(x.status)),
        h("td", { class: "nowrap" }, duration(x.duration_ms)),
        h("td", { class: "error-cell" }, x.error ?? ""))))));
}

// ServiceNow records a step created: the record's number, linked on the instance it was sent to.
function recordsView(run) {
  const records = [];
  for (const step of run.steps ?? []) {
    const out = step.outputs;
    if (!out || !out.sys_id || !out.table) continue;
    const exchange = (step.exchanges ?? []).find((x) => x.url.includes("/api/now/"));
    const origin = exchange ? new URL(exchange.url).origin : null;
    const label = `${out.number ?? out.sys_id} (${out.table})`;
    const href = origin ? `${origin}/nav_to.do?uri=${encodeURIComponent(`${out.table}.do?sys_id=${out.sys_id}`)}` : null;
    records.push(h("li", {}, href ? h("a", { href, rel: "noopener noreferrer", target: "_blank" }, label) : label,
      h("span", { class: "muted" }, ` by step ${step.step_id}`)));
  }
  if (!records.length) return null;
  return h("section", { "aria-labelledby": "records-heading", class: "card" },
    h("h2", { id: "records-heading" }, "ServiceNow records created"), h("ul", {}, records));
}

// Step types that create something in the remote system when they run again.
function creates(type) {
  return type === "halo.create_ticket" || type === "halo.add_action" || type.startsWith("servicenow.");
}

function flattenSteps(list, out = []) {
  for (const step of list ?? []) {
    if (typeof step !== "object") continue;
    out.push(step);
    for (const entries of Object.values(step.paths ?? {})) flattenSteps(entries, out);
  }
  return out;
}

function replayControls(run, flow, dialog) {
  if (run.status !== "failed" && run.status !== "succeeded") {
    return h("p", { class: "muted" }, "Replay is possible once the run has finished.");
  }
  const buttons = [];
  if (run.status === "failed" && run.failed_step) {
    buttons.push(h("button", { type: "button", id: "replay-failed",
      onclick: () => confirmReplay(run, flow, dialog, { from_step: run.failed_step }) },
    `Replay from the failed step (${run.failed_step})`));
  }
  buttons.push(h("button", { type: "button", class: run.status === "failed" ? "secondary" : "", id: "replay-trigger",
    onclick: () => confirmReplay(run, flow, dialog, { from: "trigger" }) }, "Replay from the trigger"));
  return h("div", { class: "actions replay" }, buttons);
}

/** The steps a replay runs again: all of the flow's from the trigger, else from the step on. */
function stepsRunAgain(run, flow, from) {
  const known = flow ? flattenSteps(flow.steps) : [];
  const list = known.length ? known.map((s) => ({ id: s.id, type: s.type }))
    : (run.steps ?? []).map((s) => ({ id: s.step_id, type: s.step_type }));
  if (from.from === "trigger") return list;
  const start = list.findIndex((s) => s.id === from.from_step);
  return start < 0 ? list : list.slice(start);
}

function confirmReplay(run, flow, dialog, from) {
  const again = stepsRunAgain(run, flow, from);
  const creating = again.filter((s) => creates(s.type ?? ""));
  const reused = (run.steps ?? []).filter((s) => !again.some((a) => a.id === s.step_id) && s.status === "succeeded");
  const where = from.from === "trigger" ? "from the trigger: every step runs again" : `from step ${from.from_step}`;
  const error = h("div", {});
  const confirm = h("button", { type: "button", id: "replay-confirm", onclick: async () => {
    confirm.disabled = true;
    try {
      const answer = await post(`/api/runs/${encodeURIComponent(run.id)}/replay`, from);
      dialog.close();
      location.hash = `#/runs/${encodeURIComponent(answer.run_id)}`;
    } catch (e) {
      confirm.disabled = false;
      fill(error, errorBox(e));
    }
  } }, "Replay");
  fill(dialog,
    h("h2", { id: "replay-title" }, "Replay this run?"),
    h("p", {}, `A new run starts with the same trigger outputs, ${where}.`),
    reused.length ? h("p", {}, "Outputs of ", reused.map((s, i) => [i ? ", " : "", h("code", {}, s.step_id)]), " are reused, not sent again.") : null,
    creating.length
      ? message("error", h("strong", {}, "This can create records again. "),
        "These steps create something each time they run: ",
        h("ul", {}, creating.map((s) => h("li", {}, h("code", {}, s.id), ` (${s.type})`))),
        "If the failed attempt already created it (see its outbound requests), the replay may create a duplicate.")
      : message("ok", "No step that runs again creates records: replaying cannot create duplicates."),
    error,
    h("div", { class: "actions" }, confirm,
      h("button", { type: "button", class: "secondary", onclick: () => dialog.close() }, "Cancel")));
  dialog.showModal();
  confirm.focus();
}
