// Progressive enhancement of the sign-in form (it works without this): the page the user
// asked for keeps its console route (#/runs/...), which the server never sees.
const next = document.querySelector("input[name=next]");
if (next && location.hash.startsWith("#/") && !next.value.includes("#")) {
  next.value += location.hash;
}
