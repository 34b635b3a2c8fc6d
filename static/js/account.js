// Shows "Log out" when a browser session exists. The session cookie itself is HttpOnly; the
// server sets a readable marker cookie beside it for this.
const form = document.getElementById('logout-form');
if (form && document.cookie.split(';').some((c) => c.trim().startsWith('crt_signed_in='))) {
  form.hidden = false;
}
