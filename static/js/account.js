// Shows "Log out" when a browser session exists. The session cookie itself is HttpOnly; the
// server sets a readable marker cookie beside it for this.
const form = document.getElementById('logout-form');
if (form && document.cookie.split(';').some((c) => c.trim().startsWith('crt_signed_in='))) {
  form.hidden = false;
}

// MLflow's client prints links into its own UI (`/#/experiments/1/runs/7`): open our page instead.
const mlflowLink = /^#\/experiments\/(\d+)(?:\/runs\/(\d+))?/.exec(location.hash);
if (mlflowLink && location.pathname === '/') {
  location.replace(mlflowLink[2] ? `/runs/${mlflowLink[2]}` : `/experiments/${mlflowLink[1]}`);
}
