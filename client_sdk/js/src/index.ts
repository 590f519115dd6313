export { SSEChannel } from './channel.js';
export type { AttachOptions, CancelledInfo, ChannelEvents, ChannelToken, MessageMeta, SSEChannelOptions, Timeouts } from './channel.js';
export { State } from './state.js';
export type { ChannelState } from './state.js';
export { TransportMemory } from './memory.js';
export type { ChannelStorage, SavedChannel } from './persist.js';
export { ChannelWriter, deserializeChannel, deserializeSSEChannel, parseToken } from './writer.js';
export type { CancelInfo, WriteResult, WriterOptions } from './writer.js';
export { UnbrokenError } from './errors.js';
export type { ErrorCode } from './errors.js';
export type { AdapterName, TransportName } from './transports/types.js';
export { WIRE_TRANSPORTS } from './transports/index.js';
export type { Env } from './host.js';
// Building blocks, exported for tests, custom transports and the broker's dashboard.
export { Utf8Decoder } from './utf8.js';
export { SseParser } from './sse.js';
export type { SseEvent } from './sse.js';
export { compareIds, Deduper } from './ids.js';
export { Backoff } from './backoff.js';
