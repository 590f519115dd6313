import type { ChannelToken, SSEChannelOptions } from './channel.js';
import { httpError } from './errors.js';
import type { Host } from './host.js';
import { httpRequest } from './http.js';
import type { ChannelUrls } from './transports/types.js';

/** The broker's answer to `POST /v1/channels` (attach builds the same from what it was given). */
export interface OpenResponse {
  id: string;
  read_token: string;
  /** Absent for an attached channel: only the opener holds the write token. */
  channel_token?: ChannelToken;
  heartbeat?: number;
  urls: ChannelUrls;
}

/**
 * `POST /v1/channels`. A POST that fails on the network while the app is (or went) in background
 * is not an answer: phones freeze or cut requests of hidden apps, so it is sent again when the
 * app is shown instead of rejecting `open()` after the timeout.
 */
export async function createChannel(
  host: Host,
  opts: SSEChannelOptions,
  app: { hides(): number; whenShown(): Promise<void> },
): Promise<OpenResponse> {
  const headers: Record<string, string> = { ...opts.headers, 'Content-Type': 'application/json' };
  const key = typeof opts.token === 'function' ? await opts.token() : opts.token;
  if (key) headers.Authorization = 'Bearer ' + key;
  const timeout = (opts.timeouts && opts.timeouts.open) ?? 15000;
  for (;;) {
    const hidesBefore = app.hides();
    let res;
    try {
      res = await httpRequest(host, {
        method: 'POST',
        url: opts.broker.replace(/\/+$/, '') + '/v1/channels',
        headers,
        body: JSON.stringify(opts.name ? { name: opts.name } : {}),
        timeout,
      }).promise;
    } catch (e) {
      // Hidden while in flight: the host may have frozen or cut it. Send it again once shown.
      if (app.hides() !== hidesBefore && (e as { retryable?: boolean }).retryable) {
        await app.whenShown();
        continue;
      }
      throw e;
    }
    if (res.status !== 201 && res.status !== 200) throw httpError(res.status, res.text);
    return JSON.parse(res.text) as OpenResponse;
  }
}
