import { UnbrokenError } from '../errors.js';
import { withQuery } from '../http.js';
import { SseReader, checkStatus } from './framing.js';
import type { Transport } from './types.js';

/** fetch with a readable body (browsers, Node 18+, expo/fetch): SSE framing on `/events`. */
export const fetchTransport: Transport = {
  name: 'fetch',
  wire: 'sse',
  supported: (host) => host.streamingFetch,
  connect(host, req, on) {
    const env = host.env;
    const ctl = env.AbortController ? new env.AbortController() : undefined;
    let closed = false;
    let cancelRead: (() => void) | undefined;
    const url = withQuery(req.urls.events, { last_event_id: req.lastEventId });
    const headers: Record<string, string> = { ...req.headers, Authorization: 'Bearer ' + req.token, Accept: 'text/event-stream' };
    const finish = (err?: UnbrokenError) => {
      if (closed) return;
      closed = true;
      on.closed(err);
    };
    host.fetch!(url, { headers, signal: ctl && ctl.signal, cache: 'no-store' })
      .then(async (res) => {
        if (closed) return;
        if (!res.body || res.status !== 200) {
          const body = await res.text().catch(() => '');
          if (!checkStatus(res.status, body, { ...on, closed: finish }, res.headers.get('retry-after'))) return;
          return finish(new UnbrokenError('protocol_error', 'response has no readable body'));
        }
        const reader = res.body.getReader();
        cancelRead = () => void reader.cancel().catch(() => {});
        const sse = new SseReader(on);
        for (;;) {
          const { done, value } = await reader.read();
          if (closed) return;
          if (done) return finish();
          if (value) sse.push(value);
        }
      })
      .catch((e: unknown) => {
        finish(e instanceof UnbrokenError ? e : new UnbrokenError('network_error', String((e as Error)?.message || e), { retryable: true }));
      });
    return {
      close() {
        closed = true;
        if (cancelRead) cancelRead();
        if (ctl) ctl.abort();
      },
    };
  },
};
