export { SSEChannel } from './channel.js';
export type { ChannelState, ChannelToken, MessageMeta, SSEChannelOptions, Timeouts } from './channel.js';
export { ChannelWriter, deserializeChannel, parseToken } from './writer.js';
export type { WriteResult, WriterOptions } from './writer.js';
export { UnbrokenError } from './errors.js';
export type { ErrorCode } from './errors.js';
export type { TransportName } from './transports/types.js';
export type { Env } from './host.js';
// Building blocks, exported for tests and for custom transports.
export { Utf8Decoder } from './utf8.js';
export { SseParser } from './sse.js';
export type { SseEvent } from './sse.js';
export { compareIds, Deduper } from './ids.js';
export { Backoff } from './backoff.js';
