// Live tail of one channel for the dashboard.
//
// Preferred: the JS SDK itself (`SSEChannel.attach` from the `unbroken-channel` package), loaded
// from its ESM build, which the broker serves at /dashboard/sdk/ when client_sdk/js/dist/esm
// exists (run `npm run build` in client_sdk/js). attach() joins the existing channel with a read
// token and resumes from the last id after any drop, on whichever transport works, exactly as an
// app does; when the token expires, the tail attaches again with a fresh one.
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
    return sdk.SSEChannel && typeof sdk.SSEChannel.attach === 'function' ? sdk : null;
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
    ? tailWithSdk(sdk, channelId, lastId, getToken, onEvent, onMode)
    : tailWithEventSource(url, lastId, getToken, onEvent, onMode);
}

function tailWithSdk(sdk, channelId, lastId, getToken, onEvent, onMode) {
  let channel = null;
  let stopped = false;
  let last = lastId || undefined;
  onMode('live · JS SDK (SSEChannel)');

  const follow = async () => {
    const readToken = await getToken();
    if (stopped) return;
    channel = sdk.SSEChannel.attach({ broker: location.origin, channel: channelId, readToken, lastEventId: last });
    const ch = channel;
    // Terminal events carry no id of their own in the SDK's callbacks: the channel's last id is it.
    ch.on('message', (data, meta) => { last = meta.id; onEvent({ id: meta.id, type: 'message', data }); });
    ch.on('gap', (data) => onEvent({ type: 'gap', data }));
    ch.on('transport', (wire, adapter) => onMode(`live · JS SDK (SSEChannel, ${wire} via ${adapter})`));
    ch.on('end', (data) => { onEvent({ id: ch.lastEventId, type: 'end', data }); onMode('ended'); });
    ch.on('cancelled', (data) => { onEvent({ id: ch.lastEventId, type: 'cancelled', data }); onMode('cancelled'); });
    ch.on('error', (err) => {
      if (err.code === 'channel_error') {
        onEvent({ id: ch.lastEventId, type: 'error', data: err.data });
        onMode('ended');
      } else if (/^token_/.test(err.code) && !stopped) {
        follow(); // the read token expired: attach again with a fresh one, from the last id
      } else {
        onMode(err.code === 'channel_gone' ? 'channel gone' : `stopped: ${err.code}`);
      }
    });
    await ch.open();
  };
  follow().catch((err) => onMode(`stopped: ${err.message}`));
  return () => { stopped = true; if (channel) channel.close(); };
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
