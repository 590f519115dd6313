// Compiled with --strict against dist/esm/*.d.ts by test/package.test.mjs: the public types
// must be precise enough for app code like this without `any` leaking errors, and the typed
// event map must reject a listener of the wrong shape or an unknown event.
import {
  SSEChannel,
  State,
  TransportMemory,
  deserializeChannel,
  deserializeSSEChannel,
  UnbrokenError,
  type AdapterName,
  type ChannelState,
  type MessageMeta,
  type TransportName,
} from 'unbroken-channel';

async function main(): Promise<void> {
  const channel = new SSEChannel({
    broker: 'https://broker.example.com',
    transport: ['mp-request', 'ws', 'poll'],
    timeouts: { idle: 30000, upgrade: 5000 },
    memory: new TransportMemory(),
    persist: 'answer',
  });
  channel.on('message', (data: unknown, meta: MessageMeta) => {
    const t: TransportName = meta.transport;
    const a: AdapterName = meta.adapter;
    void t, a, data;
  });
  channel.on('state', (s: ChannelState) => void (s === State.Cancelled));
  channel.on('error', (e: UnbrokenError) => void e.code);
  channel.on('cancelled', (info) => {
    const reason: string | null = info.reason;
    void reason;
  });
  channel.on('transport', (wire, adapter) => void [wire, adapter]);
  // @ts-expect-error: a message listener's meta is MessageMeta, not a number
  channel.on('message', (_data: unknown, meta: number) => void meta);
  // @ts-expect-error: no such event
  channel.on('finished', () => {});
  await channel.open();
  await channel.cancel('stop');
  channel.reconnect();
  const token: string = JSON.stringify(channel);
  const writer = deserializeChannel(token, { coalesce: 0 });
  const r = await writer.write({ text: 'hi' });
  const ids: string[] = r.ids;
  void ids;
  const { reason } = await deserializeSSEChannel(token).waitCancelled();
  void reason;
  for await (const data of channel) void data;
  channel.close();
  const again: SSEChannel | undefined = SSEChannel.restore({ broker: 'https://broker.example.com', persist: 'answer', fromStart: true });
  const attached = SSEChannel.attach({ broker: 'https://broker.example.com', channel: 'ch_1', readToken: 'rt', lastEventId: '1-0' });
  void again, attached;
}
void main;
