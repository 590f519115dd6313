/**
 * Incremental parser for the text/event-stream framing (WHATWG HTML §9.2.6), fed with text in
 * arbitrary pieces. A CR at the end of one piece may be the first half of a CRLF, so it is held
 * until the next piece says whether an LF follows.
 */
export interface SseEvent {
  /** `undefined` when the event had no `id:` line (gap/reconnect notices). */
  id?: string;
  event: string;
  data: string;
}

export interface SseSink {
  event(ev: SseEvent): void;
  /** Any comment line (the broker's `: hb`), or a `retry:` field: proof of life. */
  comment(text: string): void;
}

export class SseParser {
  private buf = '';
  private pendingCR = false;
  private data: string[] = [];
  private eventType = '';
  private id: string | undefined;
  private first = true;

  constructor(private readonly sink: SseSink) {}

  feed(text: string): void {
    if (!text) return;
    if (this.first) {
      this.first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.pendingCR) {
      this.pendingCR = false;
      if (text.charCodeAt(0) === 10) text = text.slice(1);
    }
    let buf = this.buf + text;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const c = buf.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(buf.slice(start, i));
      if (c === 13) {
        if (i + 1 === buf.length) {
          this.pendingCR = true;
        } else if (buf.charCodeAt(i + 1) === 10) {
          i++;
        }
      }
      start = i + 1;
    }
    buf = buf.slice(start);
    this.buf = buf;
  }

  /** The stream closed: an event without its blank line is discarded, per the spec. */
  reset(): void {
    this.buf = '';
    this.pendingCR = false;
    this.data = [];
    this.eventType = '';
    this.id = undefined;
  }

  private line(line: string): void {
    if (line === '') {
      if (this.data.length) {
        this.sink.event({ id: this.id, event: this.eventType || 'message', data: this.data.join('\n') });
      }
      this.data = [];
      this.eventType = '';
      this.id = undefined;
      return;
    }
    const colon = line.indexOf(':');
    if (colon === 0) {
      this.sink.comment(line.slice(1).trim());
      return;
    }
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    switch (field) {
      case 'data':
        this.data.push(value);
        break;
      case 'event':
        this.eventType = value;
        break;
      case 'id':
        if (value.indexOf('\0') < 0) this.id = value;
        break;
      case 'retry':
        this.sink.comment('retry');
        break;
    }
  }
}
