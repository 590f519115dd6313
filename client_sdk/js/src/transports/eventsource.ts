import { UnbrokenError } from '../errors.js';
import { withQuery } from '../http.js';
import { sseToWire } from './framing.js';
import type { Transport } from './types.js';

/**
 * Native EventSource (browsers). It cannot send headers, so the token goes in the query, and it
 * hides comment lines, so the broker's `: hb` heartbeats are invisible to the watchdog: we ask
 * for bounded streams (`max_duration`) whose `reconnect` notice proves the line is alive.
 * Its own auto-reconnect is not used: we close on the first error and resume ourselves, since
 * only we know the last id we delivered.
 */
export const eventSourceTransport: Transport = {
  name: 'eventsource',
  wire: 'sse',
  supported: (host) => typeof host.env.EventSource === 'function',
  connect(host, req, on) {
    let closed = false;
    // Each stream ends (with a visible `reconnect` notice) before the watchdog would fire.
    const window = Math.max(1, Math.min(req.window, Math.floor((req.idle * 0.8) / 1000)));
    const url = withQuery(req.urls.events, { token: req.token, last_event_id: req.lastEventId, max_duration: window });
    const es = new host.env.EventSource!(url);
    const finish = (err?: UnbrokenError) => {
      if (closed) return;
      closed = true;
      es.close();
      on.closed(err);
    };
    es.addEventListener('open', () => on.activity());
    for (const type of ['message', 'end', 'error', 'cancelled', 'gap', 'reconnect']) {
      es.addEventListener(type, (ev) => {
        if (closed) return;
        // A connection failure is also dispatched as `error`, but without data.
        if (typeof ev.data !== 'string') {
          return finish(new UnbrokenError('network_error', 'EventSource connection failed', { retryable: true }));
        }
        on.activity();
        try {
          const wire = sseToWire(type, ev.data, ev.lastEventId || undefined);
          // EventSource keeps the last id across events; notices have none of their own.
          if (wire && (type === 'gap' || type === 'reconnect')) wire.id = undefined;
          if (wire) on.event(wire);
        } catch (e) {
          finish(e as UnbrokenError);
        }
      });
    }
    return {
      close() {
        closed = true;
        es.close();
      },
    };
  },
};
