// The console's entry: the shell, hash routing and live updates (polling while visible).

import { h, fill, message, errorBox } from "./dom.js";
import { loadSession, logout } from "./api.js";
import { flowsPage, flowPage } from "./flows.js";
import { setupPage } from "./setup.js";
import { runsPage, runPage } from "./runs.js";
import { requestsPage, syncPage } from "./requests.js";

const POLL_MS = 2000;

const ROUTES = [
  [/^\/flows$/, flowsPage, "flows"],
  [/^\/flows\/([^/]+)$/, flowPage, "flows"],
  [/^\/flows\/([^/]+)\/setup$/, setupPage, "flows"],
  [/^\/runs$/, runsPage, "runs"],
  [/^\/runs\/([^/]+)$/, runPage, "runs"],
  [/^\/requests$/, requestsPage, "requests"],
  [/^\/sync$/, syncPage, "sync"],
];

// The page on screen: its live-update callbacks stop when another page opens.
let current = { id: 0, pollers: [] };

function parseHash() {
  const hash = location.hash.replace(/^#/, "") || "/flows";
  const [path, search = ""] = hash.split("?");
  return { path, query: Object.fromEntries(new URLSearchParams(search)) };
}

async function show() {
  // An in-page anchor (#main) is not a route: the page on screen stays.
  if (location.hash && !location.hash.startsWith("#/")) return;
  const { path, query } = parseHash();
  const main = document.getElementById("main");
  const page = { id: current.id + 1, pollers: [] };
  current = page;
  const match = ROUTES.map(([pattern, render, section]) => [pattern.exec(path), render, section])
    .find(([found]) => found);
  markNav(match ? match[2] : null);
  const [found, render] = match ?? [];
  let params = null;
  try {
    // A route such as #/runs/%E0 does not decode: it is not found, rather than an exception
    // out of the hash handler that leaves the page stuck.
    params = found?.slice(1).map(decodeURIComponent);
  } catch {
    params = null;
  }
  if (!params) {
    fill(main, h("h1", { tabindex: "-1" }, "Not found"),
      message("error", `There is no console page ${path}. `, h("a", { href: "#/flows" }, "Go to the flows.")));
    focusHeading(main);
    return;
  }
  const context = {
    params,
    query,
    // Registers a refresh that runs every 2 s while this page is open and visible.
    live: (refresh) => page.pollers.push(refresh),
    isCurrent: () => current === page,
  };
  // Each page renders into a view of its own: a slow page that finishes after the user has
  // moved on writes into a detached view, not over the page on screen.
  const view = h("div", { class: "view" }, h("p", { class: "muted", role: "status" }, "Loading…"));
  fill(main, view);
  try {
    await render(view, context);
  } catch (error) {
    if (current !== page) return;
    fill(view, h("h1", { tabindex: "-1" }, "Could not load this page"), errorBox(error));
  }
  if (current === page) focusHeading(main);
}

function focusHeading(main) {
  const heading = main.querySelector("h1");
  if (heading && !main.contains(document.activeElement)) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
  document.title = heading ? `${heading.textContent} · haloflow console` : "haloflow console";
}

function markNav(section) {
  for (const a of document.querySelectorAll("#nav a[data-section]")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

let polling = false;

async function poll() {
  if (polling || document.visibilityState !== "visible") return;
  polling = true;
  const page = current;
  const status = document.getElementById("live-status");
  try {
    for (const refresh of page.pollers) {
      if (current !== page) break;
      await refresh();
    }
    status.textContent = "";
    status.hidden = true;
  } catch (error) {
    if (current === page) {
      status.hidden = false;
      status.textContent = `Live update failed: ${error?.message ?? error}`;
    }
  } finally {
    polling = false;
  }
}

async function start() {
  let session;
  try {
    session = await loadSession();
  } catch {
    return; // 401: the API sent us to the login page.
  }
  const who = document.getElementById("who");
  const logoutButton = document.getElementById("logout");
  if (session.via === "open") {
    who.textContent = "Open access (admin listener)";
    logoutButton.hidden = true;
  } else {
    who.textContent = session.user ? `Signed in as ${session.user}` : "Signed in";
    logoutButton.hidden = session.via !== "session";
  }
  logoutButton.addEventListener("click", logout);
  // The skip link moves the focus without changing the route in the hash.
  document.querySelector(".skip")?.addEventListener("click", (event) => {
    event.preventDefault();
    document.getElementById("main").focus();
  });
  window.addEventListener("hashchange", show);
  document.addEventListener("visibilitychange", poll);
  setInterval(poll, POLL_MS);
  if (!location.hash) history.replaceState(null, "", "#/flows");
  await show();
}

start();
