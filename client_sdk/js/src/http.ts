import { UnbrokenError } from './errors.js';
import type { Host } from './host.js';

export interface HttpRequest {
  method: 'GET' | 'POST';
  url: string;
  headers: Record<string, string>;
  body?: string;
  /** ms; the request is abandoned (and reported as `timeout`) after this. */
  timeout: number;
}
export interface HttpResponse {
  status: number;
  text: string;
  header(name: string): string | undefined;
}
export interface Pending {
  promise: Promise<HttpResponse>;
  /** Stop waiting. On uni App-Vue this does not free the native request, so callers bound it. */
  cancel(): void;
}

/** One plain request over whatever the host has: fetch, the mini-program request, or XHR. */
export function httpRequest(host: Host, req: HttpRequest): Pending {
  let cancel = () => {};
  const promise = new Promise<HttpResponse>((resolve, reject) => {
    let settled = false;
    const done = (err: UnbrokenError | null, res?: HttpResponse) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(res!);
    };
    const timer = setTimeout(() => {
      abort();
      done(new UnbrokenError('timeout', 'request timed out after ' + req.timeout + ' ms', { retryable: true }));
    }, req.timeout);
    let abort = () => {};
    cancel = () => {
      abort();
      done(new UnbrokenError('closed', 'request cancelled', { retryable: true }));
    };
    const fail = (message: string) => done(new UnbrokenError('network_error', message, { retryable: true }));
    const { env, mp } = host;

    if (host.fetch) {
      const ctl = env.AbortController ? new env.AbortController() : undefined;
      abort = () => ctl && ctl.abort();
      host
        .fetch(req.url, { method: req.method, headers: req.headers, body: req.body, signal: ctl && ctl.signal, cache: 'no-store' })
        .then((r) => r.text().then((text) => done(null, { status: r.status, text, header: (n) => r.headers.get(n) ?? undefined })))
        .catch((e: unknown) => fail(String((e as Error)?.message || e)));
    } else if (mp && mp.request) {
      // success/fail must be passed or uni returns a Promise instead of a task.
      const task = mp.request({
        url: req.url,
        method: req.method,
        header: req.headers,
        headers: req.headers, // Alipay's spelling
        data: req.body,
        dataType: 'text', // uni/wx would JSON.parse the body themselves otherwise
        responseType: 'text',
        timeout: req.timeout + 1000,
        success: (res) => {
          const text = typeof res.data === 'string' ? res.data : res.data == null ? '' : JSON.stringify(res.data);
          const headers = lowerKeys(res.header);
          done(null, { status: Number(res.statusCode), text, header: (n) => headers[n.toLowerCase()] });
        },
        fail: (err) => fail((err && err.errMsg) || 'request failed'),
      });
      abort = () => task && 'abort' in task && typeof task.abort === 'function' && task.abort();
    } else if (env.XMLHttpRequest) {
      const xhr = new env.XMLHttpRequest();
      abort = () => xhr.abort();
      xhr.open(req.method, req.url);
      for (const k in req.headers) xhr.setRequestHeader(k, req.headers[k]);
      xhr.onreadystatechange = () => {
        if (xhr.readyState !== 4) return;
        if (xhr.status === 0) fail('network error');
        else done(null, { status: xhr.status, text: xhr.responseText, header: () => undefined });
      };
      xhr.send(req.body ?? null);
    } else {
      done(new UnbrokenError('no_transport', 'this runtime has no fetch, request API or XMLHttpRequest'));
    }
  });
  return { promise, cancel };
}

export function lowerKeys(h: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (h) for (const k in h) out[k.toLowerCase()] = h[k];
  return out;
}

export function withQuery(url: string, params: Record<string, string | number | undefined>): string {
  const parts: string[] = [];
  for (const k in params) {
    const v = params[k];
    if (v !== undefined && v !== '') parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(String(v)));
  }
  if (!parts.length) return url;
  return url + (url.indexOf('?') < 0 ? '?' : '&') + parts.join('&');
}
