/**
 * Where a channel keeps `{broker, channel, readToken, lastEventId}` so an app killed mid-answer
 * can rejoin it after a restart. Synchronous key-value stores only (the event handlers that save
 * run inside delivery): uni-app's `uni.setStorageSync(key, data)` / `getStorageSync(key)` /
 * `removeStorageSync(key)` (https://uniapp.dcloud.net.cn/api/storage/storage.html; data is "any
 * JSON-serialisable value", keys prefixed `uni-`, `uni_`, `dcloud-`, `dcloud_` are reserved),
 * the same three on `wx`/`my`/`tt` (WeChat: getStorageSync answers '' for a missing key), and
 * the browser's `localStorage` (strings only).
 */
export interface ChannelStorage {
  get(key: string): string | undefined;
  set(key: string, value: string): void;
  remove(key: string): void;
}

/** What a channel saves; `SSEChannel.attach()` takes the same fields. */
export interface SavedChannel {
  broker: string;
  channel: string;
  readToken: string;
  lastEventId?: string;
  heartbeat?: number;
}

interface SyncStorageApi {
  setStorageSync?(key: string, data: unknown): void;
  getStorageSync?(key: string): unknown;
  removeStorageSync?(key: string): void;
}
interface WebStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export const KEY_PREFIX = 'unbroken:';

/** The host's own storage, found by capability: uni, then the mini-program APIs, then localStorage. */
export function detectStorage(env: { [name: string]: unknown }): ChannelStorage | undefined {
  for (const name of ['uni', 'wx', 'my', 'tt', 'qq', 'swan']) {
    const api = env[name] as SyncStorageApi | undefined;
    if (api && typeof api.setStorageSync === 'function' && typeof api.getStorageSync === 'function') return fromSyncApi(api);
  }
  const ls = env.localStorage as WebStorage | undefined;
  if (ls && typeof ls.getItem === 'function') {
    return {
      get: (k) => ls.getItem(k) ?? undefined,
      set: (k, v) => ls.setItem(k, v),
      remove: (k) => ls.removeItem(k),
    };
  }
  return undefined;
}

function fromSyncApi(api: SyncStorageApi): ChannelStorage {
  return {
    get(k) {
      const v = api.getStorageSync!(k);
      return typeof v === 'string' && v !== '' ? v : undefined;
    },
    set: (k, v) => api.setStorageSync!(k, v),
    remove(k) {
      if (typeof api.removeStorageSync === 'function') api.removeStorageSync(k);
      else api.setStorageSync!(k, '');
    },
  };
}

export function readSaved(storage: ChannelStorage, key: string): SavedChannel | undefined {
  let text: string | undefined;
  try {
    text = storage.get(KEY_PREFIX + key);
  } catch {
    return undefined;
  }
  if (!text) return undefined;
  try {
    const s = JSON.parse(text) as Partial<SavedChannel>;
    if (typeof s.broker === 'string' && typeof s.channel === 'string' && typeof s.readToken === 'string') return s as SavedChannel;
  } catch {
    // Someone else's value under our key: ignore it.
  }
  return undefined;
}

/** Storage failures (quota, a private window) must never break delivery: they only lose resume. */
export function writeSaved(storage: ChannelStorage, key: string, saved: SavedChannel | undefined): void {
  try {
    if (saved) storage.set(KEY_PREFIX + key, JSON.stringify(saved));
    else storage.remove(KEY_PREFIX + key);
  } catch {
    // See above.
  }
}
