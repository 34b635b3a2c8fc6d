// The JSON API client: every failure becomes an ApiError carrying the server's message and,
// where one request field is to blame, its name (e.g. `config.method.sigma`).

export class ApiError extends Error {
  constructor(status, message, field = null) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

export async function api(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  return send(path, init);
}

/** A request whose body is sent as it is (a file), with its content type. */
export async function apiUpload(path, body, contentType) {
  return send(path, { method: 'POST', headers: { Accept: 'application/json', 'Content-Type': contentType }, body });
}

async function send(path, init) {
  let response;
  try {
    response = await fetch(`/api/v1${path}`, init);
  } catch (e) {
    throw new ApiError(0, `Cannot reach the server (${e.message}).`);
  }
  if (response.status === 401) {
    // The session ended (expired, logged out elsewhere, token revoked): log in again, then return here.
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiError(401, 'Your session has ended: log in again.');
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // A non-JSON body (a proxy's error page): report the status line below.
  }
  if (!response.ok) {
    const message = data && data.error ? data.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message, data && data.field ? data.field : null);
  }
  return data;
}

/** The JSON the server embedded in the page (`<script id="page-data">`). */
export function pageData() {
  const node = document.getElementById('page-data');
  return node ? JSON.parse(node.textContent) : {};
}
