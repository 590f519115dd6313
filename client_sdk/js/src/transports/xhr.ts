import { UnbrokenError } from '../errors.js';
import { withQuery } from '../http.js';
import { SseReader, checkStatus } from './framing.js';
import type { Transport } from './types.js';

/**
 * XHR with progressive `responseText` (old browsers, React Native). responseText only grows,
 * so each request is a bounded window on `/stream` and we read the new tail on every progress.
 */
export const xhrTransport: Transport = {
  name: 'xhr',
  wire: 'chunked',
  supported: (host) => typeof host.env.XMLHttpRequest === 'function',
  connect(host, req, on) {
    let closed = false;
    let seen = 0;
    let statusChecked = false;
    const xhr = new host.env.XMLHttpRequest!();
    const sse = new SseReader(on);
    const finish = (err?: UnbrokenError) => {
      if (closed) return;
      closed = true;
      xhr.onprogress = xhr.onreadystatechange = xhr.onerror = null;
      on.closed(err);
    };
    const pump = () => {
      if (closed || xhr.readyState < 3) return;
      if (!statusChecked) {
        statusChecked = true;
        if (xhr.status === 0) return finish(new UnbrokenError('network_error', 'XHR failed', { retryable: true }));
        if (xhr.status !== 200) {
          if (xhr.readyState === 4 || xhr.status === 204) checkStatus(xhr.status, xhr.responseText, { ...on, closed: finish });
          else statusChecked = false; // wait for the whole error body
          return;
        }
      }
      const text = xhr.responseText;
      if (text.length > seen) {
        const piece = text.slice(seen);
        seen = text.length;
        try {
          sse.push(piece);
        } catch (e) {
          return finish(e as UnbrokenError);
        }
      }
      if (xhr.readyState === 4) finish();
    };
    xhr.onprogress = pump;
    xhr.onreadystatechange = pump;
    xhr.onerror = () => finish(new UnbrokenError('network_error', 'XHR failed', { retryable: true }));
    xhr.open('GET', withQuery(req.urls.stream, { last_event_id: req.lastEventId, max_duration: req.window }));
    for (const k in req.headers) xhr.setRequestHeader(k, req.headers[k]);
    xhr.setRequestHeader('Authorization', 'Bearer ' + req.token);
    xhr.send(null);
    return {
      close() {
        if (closed) return;
        closed = true;
        xhr.onprogress = xhr.onreadystatechange = xhr.onerror = null;
        xhr.abort();
      },
    };
  },
};
