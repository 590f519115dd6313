// A scripted in-memory fetch for the channel's unit tests (no broker): the POST that opens a
// channel answers OPEN, and every stream request hands the test a controller to push SSE text,
// end or fail it. Follows the fetch contract the SDK relies on (WHATWG Fetch: Response.status,
// Response.body.getReader().read() -> {done, value: Uint8Array}, abort through the signal).
const enc = new TextEncoder();
export const OPEN = {
  id: 'ch_t',
  state: 'open',
  read_token: 'RT',
  channel_token: { unbroken: 1, broker: 'http://b', channel: 'ch_t', token: 'WT' },
  heartbeat: 15,
  urls: { events: 'http://b/v1/channels/ch_t/events', stream: 'http://b/v1/channels/ch_t/stream', ws: 'ws://b/v1/channels/ch_t/ws', poll: 'http://b/v1/channels/ch_t/poll' },
};

export function scriptedEnv({ openStatus = 201, openBody = OPEN, onPost } = {}) {
  const streams = [];
  const waiters = [];
  const posts = [];
  const fetch = async (url, init = {}) => {
    if (init.method === 'POST') {
      posts.push({ url, headers: init.headers, body: init.body });
      // onPost may answer ({status, body}) or throw (a network failure, as fetch rejects).
      const answer = onPost ? await onPost(url, init) : undefined;
      if (answer) return { status: answer.status, headers: { get: () => null }, text: async () => JSON.stringify(answer.body) };
      return { status: openStatus, headers: { get: () => null }, text: async () => JSON.stringify(openBody) };
    }
    const queue = [];
    let pull;
    const s = {
      url,
      headers: init.headers,
      status: 200,
      push(text) { queue.push({ value: enc.encode(text), done: false }); if (pull) pull(); },
      end() { queue.push({ done: true }); if (pull) pull(); },
      fail() { queue.push(new Error('reset')); if (pull) pull(); },
    };
    streams.push(s);
    waiters.splice(0).forEach((w) => w());
    if (init.signal) init.signal.addEventListener('abort', () => s.fail());
    await Promise.resolve(); // an answer is never synchronous
    if (s.status !== 200) return { status: s.status, headers: { get: () => null }, text: async () => s.body || '', body: null };
    return {
      status: 200,
      headers: { get: () => 'text/event-stream' },
      text: async () => '',
      body: {
        getReader: () => ({
          async read() {
            while (!queue.length) await new Promise((r) => (pull = r));
            const item = queue.shift();
            if (item instanceof Error) throw item;
            return item;
          },
          cancel: async () => {},
        }),
      },
    };
  };
  const env = { fetch, AbortController, ReadableStream };
  const nextStream = async (n) => {
    while (streams.length < n) await new Promise((r) => waiters.push(r));
    return streams[n - 1];
  };
  return { env, streams, posts, nextStream };
}

export const ev = (id, data, type = 'message') => `id: ${id}\nevent: ${type}\ndata: ${JSON.stringify(data)}\n\n`;

