// Placeholder shell script; the console's front end replaces it.
const session = await fetch("/api/session").then((r) => r.json());
document.getElementById("app").textContent = `Signed in (${session.via}).`;
