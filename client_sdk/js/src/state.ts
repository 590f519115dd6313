/**
 * A channel's life as the app sees it. `open` and `reconnecting` alternate while the line drops
 * and comes back; `ended` (the writer's `end` or `error`), `cancelled` (a reader's cancel) and
 * `closed` (the app's `close()`, or a fatal problem such as an expired token) are final.
 */
export const State = {
  Idle: 'idle',
  Connecting: 'connecting',
  Open: 'open',
  Reconnecting: 'reconnecting',
  Ended: 'ended',
  Cancelled: 'cancelled',
  Closed: 'closed',
} as const;

export type ChannelState = (typeof State)[keyof typeof State];

export function isFinal(s: ChannelState): boolean {
  return s === State.Ended || s === State.Cancelled || s === State.Closed;
}
