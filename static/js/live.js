// Live updates over the server's Server-Sent Events. Each event's id is its journal sequence
// number, so a dropped connection resumes exactly after the last event seen (the browser sends
// Last-Event-ID); `after` only sets where the first connection starts.

const EVENT_TYPES = ['status', 'started', 'metrics', 'progress', 'log', 'artifact', 'certificate'];

/** Subscribes `handlers` (by event type, plus `open`) to a stream; shows the connection state
 * in `indicator` (an element with `data-state`). Returns the EventSource. */
export function subscribe(path, after, handlers, indicator) {
  const source = new EventSource(`/api/v1${path}?after=${after}`);
  const show = (state, text) => {
    if (!indicator) return;
    indicator.dataset.state = state;
    indicator.textContent = text;
  };
  source.addEventListener('open', () => {
    show('live', 'live');
    if (handlers.open) handlers.open();
  });
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) show('offline', 'offline');
    else show('connecting', 'reconnecting…');
  });
  for (const type of EVENT_TYPES) {
    if (!handlers[type]) continue;
    source.addEventListener(type, (event) => handlers[type](JSON.parse(event.data)));
  }
  window.addEventListener('pagehide', () => source.close());
  return source;
}
