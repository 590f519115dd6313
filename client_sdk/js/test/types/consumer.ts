// Compiled with --strict against dist/esm/*.d.ts by test/package.test.mjs: the public types
// must be precise enough for app code like this without `any` leaking errors.
import { SSEChannel, deserializeChannel, UnbrokenError, type ChannelState, type MessageMeta, type TransportName } from 'unbroken-channel';

async function main(): Promise<void> {
  const channel = new SSEChannel({ broker: 'https://broker.example.com', transport: ['chunked', 'poll'], timeouts: { idle: 30000 } });
  channel.on('message', (data: unknown, meta: MessageMeta) => {
    const t: TransportName = meta.transport;
    void t;
    void data;
  });
  channel.on('state', (s: ChannelState) => void s);
  channel.on('error', (e: UnbrokenError) => void e.code);
  await channel.open();
  const token: string = JSON.stringify(channel);
  const writer = deserializeChannel(token);
  const r = await writer.write({ text: 'hi' });
  const ids: string[] = r.ids;
  void ids;
  for await (const data of channel) void data;
  channel.close();
}
void main;
