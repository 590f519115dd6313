import { UnbrokenError, httpError } from '../errors.js';
import { httpRequest, withQuery, type Pending } from '../http.js';
import type { Transport, WireEvent } from './types.js';

interface PollBody {
  events: { id: string; type: 'message' | 'end' | 'error' | 'cancelled'; data: unknown }[];
  last_event_id?: string | null;
  ended: boolean;
  gap: { first_id: string } | null;
}

/**
 * Long-poll: plain requests the broker holds until events come. The only HTTP transport that
 * works on every host (uni App-Vue included, where nothing streams). The first request of a
 * connection asks for a 1 s hold so it proves the path works within the first-byte timeout.
 */
export const pollTransport: Transport = {
  name: 'poll',
  wire: 'poll',
  supported: (host) => !!(host.fetch || (host.mp && host.mp.request) || host.env.XMLHttpRequest),
  quietMs: (req) => req.pollTimeout * 1000,
  connect(host, req, on) {
    let closed = false;
    let pending: Pending | undefined;
    let last = req.lastEventId;
    let hold = 1;
    const finish = (err?: UnbrokenError) => {
      if (closed) return;
      closed = true;
      on.closed(err);
    };
    const loop = () => {
      if (closed) return;
      const url = withQuery(req.urls.poll, { last_event_id: last, timeout: hold });
      pending = httpRequest(host, {
        method: 'GET',
        url,
        headers: { ...req.headers, Authorization: 'Bearer ' + req.token },
        timeout: (hold + 10) * 1000,
      });
      hold = req.pollTimeout;
      pending.promise.then(
        (res) => {
          if (closed) return;
          // 204: the channel ended before our position (tests/conformance/status.json: `ended`).
          if (res.status === 204) {
            on.activity();
            on.event({ type: 'end', data: null });
            return finish();
          }
          if (res.status !== 200) return finish(httpError(res.status, res.text, res.header('retry-after')));
          let body: PollBody;
          try {
            body = JSON.parse(res.text) as PollBody;
          } catch {
            return finish(new UnbrokenError('protocol_error', 'poll answer is not JSON', { retryable: true }));
          }
          on.activity();
          if (body.gap) on.event({ type: 'gap', data: body.gap });
          for (const ev of body.events || []) {
            if (closed) return;
            on.event({ type: ev.type, id: ev.id, data: ev.data } as WireEvent);
          }
          if (body.last_event_id) last = body.last_event_id;
          if (body.ended) {
            if (!(body.events || []).some((e) => e.type !== 'message')) on.event({ type: 'end', data: null });
            return finish();
          }
          loop();
        },
        (err: UnbrokenError) => finish(err),
      );
    };
    loop();
    return {
      close() {
        closed = true;
        // Abandon, not free: on uni App-Vue the native request runs on until the broker's hold ends.
        if (pending) pending.cancel();
      },
    };
  },
};
