// Flows: every loaded flow with its trigger, its steps as a graph, its runs of the last 24 h
// and the problems of a rejected reload.

import { h, fill, message, errorBox, time, link, route, badge, whenChanged } from "./dom.js";
import { get, post } from "./api.js";

const DAY_MS = 24 * 60 * 60 * 1000;
const STATUSES = ["queued", "running", "succeeded", "failed"];
const AUTH_WORDS = {
  url_key: "key in the URL",
  basic: "Basic authentication",
  header: "key in a header",
  none: "no authentication",
};

export async function flowsPage(main, context) {
  const answer = await get("/api/flows");
  const reloadBox = h("div", { id: "reload" });
  const list = h("div", { class: "cards" });
  fill(main,
    h("div", { class: "page-head" },
      h("h1", {}, "Flows"),
      h("button", { type: "button", onclick: () => reload(reloadBox, list) }, "Reload flows from disk")),
    reloadBox, list);
  const update = whenChanged((value) => showFlows(value, reloadBox, list));
  update(answer);
  context.live(async () => update(await get("/api/flows")));
}

function showFlows(answer, reloadBox, list) {
  fill(reloadBox, reloadState(answer.reload));
  const flows = answer.flows ?? [];
  fill(list, flows.length
    ? flows.map((flow) => flowCard(flow, false))
    : message("note", "No flows are loaded. Put flow files in the flows directory and reload."));
}

async function reload(reloadBox, list) {
  try {
    fill(reloadBox, message("note", "Reloading…"));
    const state = await post("/api/flows/reload");
    showFlows({ ...(await get("/api/flows")), reload: state }, reloadBox, list);
  } catch (error) {
    fill(reloadBox, errorBox(error));
  }
}

function reloadState(reload) {
  if (!reload) return null;
  if (reload.ok) {
    return h("p", { class: "muted" }, "Last reload: ", time(reload.at_ms), ", all flows valid.");
  }
  return message("error",
    h("strong", {}, "The last reload was rejected; the flows below are the ones still running. "),
    "Reload at ", time(reload.at_ms), ":",
    h("ul", {}, (reload.problems ?? []).map((problem) => h("li", { class: "mono" }, problem))));
}

export async function flowPage(main, context) {
  const [id] = context.params;
  const answer = await get("/api/flows");
  const flow = (answer.flows ?? []).find((f) => f.id === id);
  if (!flow) {
    fill(main, h("h1", {}, "Flow not found"),
      message("error", `No flow with id ${id} is loaded. `, link("/flows", "See all flows.")));
    return;
  }
  const card = h("div", {});
  fill(main, h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, link("/flows", "Flows"), " / ", flow.id),
    h("h1", {}, flow.name || flow.id), card);
  const update = whenChanged((value) => fill(card, flowCard(value, true)));
  update(flow);
  context.live(async () => {
    const fresh = ((await get("/api/flows")).flows ?? []).find((f) => f.id === id);
    if (fresh) update(fresh);
  });
}

function flowCard(flow, detailed) {
  const title = detailed ? null : h("h2", {}, link(`/flows/${encodeURIComponent(flow.id)}`, flow.name || flow.id));
  return h("article", { class: "card flow", "data-flow": flow.id, "aria-label": flow.name || flow.id },
    title,
    h("p", { class: "muted mono" }, flow.id),
    flow.description ? h("p", {}, flow.description) : null,
    h("div", { class: "flow-body" },
      h("div", {},
        h(detailed ? "h2" : "h3", {}, "Steps"),
        graph(flow)),
      h("div", {},
        h(detailed ? "h2" : "h3", {}, "Runs in the last 24 h"),
        runCounts(flow),
        h("p", { class: "actions" },
          h("a", { class: "button", href: `#/flows/${encodeURIComponent(flow.id)}/setup` }, "Set up the trigger"),
          h("a", { class: "button secondary", href: `#${route("/runs", { flow: flow.id })}` }, "All runs")))));
}

function runCounts(flow) {
  const counts = flow.runs_24h;
  if (!counts) return h("p", { class: "muted" }, "Not available from this server.");
  const since = Date.now() - DAY_MS;
  return h("ul", { class: "counts" }, STATUSES.map((status) =>
    h("li", {},
      h("a", { href: `#${route("/runs", { flow: flow.id, status, since })}`, "aria-label": `${counts[status] ?? 0} ${status} runs of ${flow.id} in the last 24 hours` },
        h("span", { class: "count" }, String(counts[status] ?? 0)), " ", badge(status)))));
}

/** The flow as the designer's canvas draws it: trigger, then steps; branches as columns. */
export function graph(flow) {
  const byId = new Map();
  collect(flow.steps ?? [], byId);
  const trigger = flow.trigger ?? {};
  const auth = AUTH_WORDS[trigger.auth?.type] ?? "";
  return h("ol", { class: "graph", "aria-label": `Steps of ${flow.id}` },
    h("li", { class: "node trigger" },
      h("div", { class: "box" }, h("span", { class: "kind" }, "Trigger"), h("strong", {}, trigger.type ?? "trigger"), h("span", { class: "muted" }, auth))),
    steps(topLevel(flow.steps ?? []), byId));
}

// Steps named in a path are drawn there, not again at the top (older servers list them flat).
function topLevel(list) {
  const nested = new Set();
  for (const step of list) {
    for (const entries of Object.values(step.paths ?? {})) {
      for (const entry of entries) nested.add(typeof entry === "string" ? entry : entry.id);
    }
  }
  return list.filter((step) => !nested.has(step.id));
}

function collect(list, byId) {
  for (const step of list) {
    if (typeof step !== "object") continue;
    byId.set(step.id, step);
    for (const entries of Object.values(step.paths ?? {})) collect(entries, byId);
  }
}

function steps(list, byId) {
  return list.map((entry) => {
    const step = typeof entry === "string" ? (byId.get(entry) ?? { id: entry }) : entry;
    const paths = Object.entries(step.paths ?? {});
    return h("li", { class: paths.length ? "node branching" : "node", "data-step": step.id },
      h("div", { class: "box" },
        h("strong", {}, step.name || step.id),
        step.name ? h("span", { class: "mono muted" }, step.id) : null,
        h("span", { class: "type mono" }, step.type ?? ""),
        step.connection ? h("span", { class: "muted" }, `via ${step.connection}`) : null),
      paths.length ? h("div", { class: "branches" }, paths.map(([name, entries]) =>
        h("div", { class: "branch" },
          h("span", { class: "path-label" }, `path ${name}`),
          h("ol", { class: "graph" }, entries.length ? steps(entries, byId) : h("li", { class: "node empty" }, h("div", { class: "box muted" }, "nothing")))))) : null);
  });
}
