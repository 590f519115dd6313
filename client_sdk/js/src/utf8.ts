/**
 * Incremental UTF-8 decoder.
 *
 * Mini-program runtimes have no TextDecoder with `{stream: true}` (WeChat has none at all on
 * devices), and their chunk callbacks split bytes anywhere, including inside a multi-byte
 * character. So we carry the unfinished tail of a sequence over to the next chunk ourselves.
 * Invalid bytes become U+FFFD, as the WHATWG decoder does, so one bad byte never stalls a stream.
 */
export class Utf8Decoder {
  private pending: number[] = [];

  /** Decode `bytes`, keeping an incomplete trailing sequence for the next call. */
  decode(bytes: Uint8Array): string {
    let input = bytes;
    if (this.pending.length) {
      const joined = new Uint8Array(this.pending.length + bytes.length);
      joined.set(this.pending, 0);
      joined.set(bytes, this.pending.length);
      input = joined;
      this.pending = [];
    }
    let out = '';
    let codes: number[] = [];
    const n = input.length;
    let i = 0;
    while (i < n) {
      const b = input[i];
      if (b < 0x80) {
        codes.push(b);
        i++;
      } else {
        const need = b >= 0xf0 && b <= 0xf4 ? 3 : b >= 0xe0 ? (b <= 0xef ? 2 : 0) : b >= 0xc2 && b <= 0xdf ? 1 : 0;
        if (need === 0) {
          codes.push(0xfffd);
          i++;
        } else {
          let cp = b & (0x3f >> need);
          let j = 1;
          let bad = false;
          for (; j <= need; j++) {
            if (i + j >= n) break;
            const c = input[i + j];
            if (!isValidContinuation(b, j, c)) {
              bad = true;
              break;
            }
            cp = (cp << 6) | (c & 0x3f);
          }
          if (bad) {
            codes.push(0xfffd);
            i += j; // resync at the byte that broke the sequence
          } else if (j <= need) {
            // Ran out of input inside a sequence: keep it for the next chunk.
            for (let k = i; k < n; k++) this.pending.push(input[k]);
            break;
          } else {
            if (cp > 0xffff) {
              cp -= 0x10000;
              codes.push(0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
            } else {
              codes.push(cp);
            }
            i += need + 1;
          }
        }
      }
      // Flush in slices: String.fromCharCode.apply has an argument-count limit.
      if (codes.length >= 4096) {
        out += String.fromCharCode.apply(null, codes);
        codes = [];
      }
    }
    if (codes.length) out += String.fromCharCode.apply(null, codes);
    return out;
  }

  /** End of input: an unfinished sequence is one replacement character. */
  flush(): string {
    const had = this.pending.length > 0;
    this.pending = [];
    return had ? '\ufffd' : '';
  }
}

// The second byte of E0/ED/F0/F4 sequences has a narrower range (no overlongs, no surrogates,
// nothing past U+10FFFF); every other continuation byte is 80..BF.
function isValidContinuation(lead: number, index: number, c: number): boolean {
  if (index === 1) {
    if (lead === 0xe0) return c >= 0xa0 && c <= 0xbf;
    if (lead === 0xed) return c >= 0x80 && c <= 0x9f;
    if (lead === 0xf0) return c >= 0x90 && c <= 0xbf;
    if (lead === 0xf4) return c >= 0x80 && c <= 0x8f;
  }
  return c >= 0x80 && c <= 0xbf;
}

/** Normalise what hosts hand us (ArrayBuffer on wx/uni-app x, Uint8Array on uni H5, string). */
export function toBytes(data: unknown): Uint8Array | string {
  if (typeof data === 'string') return data;
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (data && typeof data === 'object' && 'byteLength' in data && 'buffer' in data) {
    const v = data as { buffer: ArrayBuffer; byteOffset: number; byteLength: number };
    return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  }
  // Some hosts hand an ArrayBuffer from another realm, where instanceof fails.
  if (data && typeof data === 'object' && 'byteLength' in data) return new Uint8Array(data as ArrayBuffer);
  return '';
}
