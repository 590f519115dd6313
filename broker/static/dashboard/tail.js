// Live tail of one channel for the dashboard.
//
// Preferred: the JS SDK's building blocks (SseParser, Deduper from the `unbroken-channel`
// package), loaded from its ESM build, which the broker serves at /dashboard/sdk/ when
// client_sdk/js/dist/esm exists (run `npm run build` in client_sdk/js). We stream /events with
// fetch so the read token travels in a header, and resume from the last id after any drop.
// SSEChannel itself is not used: it opens a new channel, and the dashboard attaches to an
// existing one.
//
// Fallback, when the build is absent (the dashboard must work without a build step): the
// browser's EventSource, which resumes by itself with Last-Event-ID; the token goes in ?token=.
//
// `?tail=eventsource` in the page URL forces the fallback (the browser test covers both paths).

const TERMINAL = new Set(['end', 'error', 'cancelled']);

async function loadSdk() {
  if (new URLSearchParams(location.search).get('tail') === 'eventsource') return null;
  try {
    const sdk = await import('/dashboard/sdk/index.js');
    return sdk.SseParser && sdk.Deduper ? sdk : null;
  } catch {
    return null; // 404: the SDK is not built on this broker
  }
}

/**
 * Tail `channelId` after `lastId` (or from its start). Calls onEvent({id, type, data}) for each
 * event (type message | end | error | cancelled | gap) and onMode(text) with the mechanism in use.
 * `getToken()` returns a read token (async). Returns a function that stops the tail.
 */
export async function tail({ channelId, lastId, getToken, onEvent, onMode }) {
  const sdk = await loadSdk();
  const url = `/v1/channels/${encodeURIComponent(channelId)}/events`;
  return sdk
    ? tailWithSdk(sdk, url, lastId, getToken, onEvent, onMode)
    : tailWithEventSource(url, lastId, getToken, onEvent, onMode);
}

function tailWithSdk(sdk, url, lastId, getToken, onEvent, onMode) {
  const dedupe = new sdk.Deduper(lastId || undefined);
  const controller = new AbortController();
  let stopped = false;
  let ended = false;
  let delay = 500;
  onMode('live · JS SDK (fetch + SseParser)');

  const parser = new sdk.SseParser({
    comment() {},
    event(ev) {
      if (ev.event === 'gap') onEvent({ type: 'gap', data: JSON.parse(ev.data) });
      // `reconnect` needs nothing here: the broker closes the stream next and we resume.
      if (!['message', 'end', 'error', 'cancelled'].includes(ev.event) || !dedupe.accept(ev.id)) return;
      onEvent({ id: ev.id, type: ev.event, data: JSON.parse(ev.data) });
      if (TERMINAL.has(ev.event)) ended = true;
    },
  });

  (async () => {
    let token = await getToken();
    while (!stopped && !ended) {
      const query = dedupe.lastId ? `?last_event_id=${encodeURIComponent(dedupe.lastId)}` : '';
      try {
        const res = await fetch(url + query, {
          headers: { Authorization: `Bearer ${token}` },
          signal: controller.signal,
        });
        if (res.status === 204) { ended = true; break; }
        if (res.status === 401 || res.status === 403) token = await getToken();
        else if (res.status === 410 || res.status === 404) { onMode('channel gone'); return; }
        else if (res.ok && res.body) {
          delay = 500;
          const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            parser.feed(value);
          }
          parser.reset();
          continue; // closed after an end, a reconnect notice or max_duration: resume at once
        }
      } catch (err) {
        if (stopped) return;
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10_000);
    }
    if (ended) onMode('ended');
  })();

  return () => { stopped = true; controller.abort(); };
}

function tailWithEventSource(url, lastId, getToken, onEvent, onMode) {
  let source = null;
  let stopped = false;
  onMode('live · EventSource (JS SDK build not found)');
  (async () => {
    const token = await getToken();
    if (stopped) return;
    const params = new URLSearchParams({ token });
    if (lastId) params.set('last_event_id', lastId);
    source = new EventSource(`${url}?${params}`);
    const handle = (type) => (e) => {
      // A named `error` event shares its name with EventSource's connection-error event;
      // only the former is a MessageEvent.
      if (!(e instanceof MessageEvent)) return;
      onEvent({ id: e.lastEventId || undefined, type, data: JSON.parse(e.data) });
      if (TERMINAL.has(type)) { source.close(); onMode('ended'); }
    };
    for (const type of ['message', 'end', 'error', 'cancelled', 'gap']) {
      source.addEventListener(type, handle(type));
    }
  })();
  return () => { stopped = true; if (source) source.close(); };
}
