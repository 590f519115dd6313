import type { BackoffOptions } from './backoff.js';
import type { UnbrokenError } from './errors.js';
import type { AppStateLike, Env, WebSocketCtor } from './host.js';
import type { TransportMemory } from './memory.js';
import type { ChannelStorage } from './persist.js';
import type { ChannelState } from './state.js';
import type { AdapterName, TransportName } from './transports/types.js';

// The public shapes of a channel: its options, what it hands a backend, and its events.

export interface ChannelToken {
  unbroken: 1;
  broker: string;
  channel: string;
  token: string;
}

export interface Timeouts {
  /** ms for `POST /v1/channels` (default 15000). */
  open?: number;
  /** ms a transport has to deliver its first byte before the next one is tried (default 8000). */
  firstByte?: number;
  /** ms of silence (no byte, no heartbeat) that means a dead connection (default 2.5 x heartbeat). */
  idle?: number;
  /** s one chunked/XHR/EventSource request may live before it resumes (default 50). */
  window?: number;
  /** s the broker may hold a long-poll (default 25). */
  poll?: number;
  /** ms before the preferred transport is tried again after a fallback (default 2000, doubling to 5 min). */
  upgrade?: number;
}

export interface SSEChannelOptions {
  /** Base URL of the broker, e.g. `https://broker.example.com`. */
  broker: string;
  /** Client-chosen channel name (`^[A-Za-z0-9_.:-]{1,128}$`); generated when absent. */
  name?: string;
  /**
   * `auto` (default) picks by capability and falls back; or a wire transport (`sse`, `chunked`,
   * `ws`, `poll`), an adapter (`fetch`, `eventsource`, `xhr`, `mp-request`, `websocket`), or an
   * ordered list of them.
   */
  transport?: 'auto' | TransportName | AdapterName | (TransportName | AdapterName)[];
  /** Extra headers for every request (where the host lets us set them). */
  headers?: Record<string, string>;
  /** App key for brokers whose open policy is `key`: a string or a (possibly async) provider. */
  token?: string | (() => string | Promise<string>);
  timeouts?: Timeouts;
  backoff?: BackoffOptions;
  /** Host APIs to use instead of the globals (tests, or a custom fetch). */
  env?: Env;
  /** WebSocket constructor for Node < 22: `import WebSocket from 'ws'`. */
  WebSocket?: WebSocketCtor;
  /** Resume on app show / page visible / network back (default true). */
  lifecycle?: boolean;
  /** React Native: pass `AppState` from 'react-native' so foregrounding resumes at once. */
  appState?: AppStateLike;
  /** Share one `new TransportMemory()` between an app's channels to start on what worked last. */
  memory?: TransportMemory;
  /**
   * Save `{broker, channel, readToken, lastEventId}` under this key while the channel runs, so
   * `SSEChannel.restore({broker, persist: key})` rejoins it after the app was killed. Removed
   * when the channel ends, is cancelled or closed.
   */
  persist?: string;
  /** Where `persist` saves (default: uni/wx/my/tt `*StorageSync`, else `localStorage`). */
  storage?: ChannelStorage;
  /** Current time in ms (default `Date.now`); tests inject a clock. */
  clock?: () => number;
}

export interface AttachOptions extends SSEChannelOptions {
  /** Id of the existing channel. */
  channel: string;
  /** Its read token (`channel.readToken` of the one that opened it). */
  readToken: string;
  /** Resume after this id (default: from the start of the channel's history). */
  lastEventId?: string;
  /** The broker's heartbeat in s, when known (sizes the watchdog; default 15). */
  heartbeat?: number;
}

export interface MessageMeta {
  id?: string;
  /** The wire transport that delivered it: `sse`, `chunked`, `ws` or `poll`. */
  transport: TransportName;
  /** How this SDK spoke it here (`fetch`, `websocket`, `mp-request`, ...). */
  adapter: AdapterName;
}

export interface CancelledInfo {
  reason: string | null;
}

/** Every event a channel emits, with its listener's signature. */
export interface ChannelEvents {
  message: (data: any, meta: MessageMeta) => void;
  end: (data: any) => void;
  cancelled: (info: CancelledInfo) => void;
  error: (err: UnbrokenError) => void;
  state: (state: ChannelState) => void;
  open: () => void;
  close: () => void;
  gap: (info: { first_id: string }) => void;
  transport: (name: TransportName, adapter: AdapterName) => void;
}
