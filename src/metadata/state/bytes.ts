/**
 * metadata/state/bytes — the compact binary codec under commands, results and snapshots.
 *
 * Why hand-written rather than protobuf: these bytes never leave the metadata replicas (Raft log entries
 * and snapshots, not RPC messages — those stay in proto/), and the state machine needs exact, validated
 * values rather than protobuf's everything-optional messages plus a translation layer. Every encoding
 * starts with a format version byte, so the format can evolve. Encoding is deterministic (no maps, no
 * floating point: integers are unsigned LEB128 varints up to 2^53 - 1, strings are length-prefixed
 * UTF-8). Decoding checks every length and range and throws StateCodecError naming what was wrong; the
 * callers turn that into an INVALID_ARGUMENT result.
 */

export class StateCodecError extends Error {
  override name = 'StateCodecError';
}

const encoder = new TextEncoder();
// ignoreBOM: a name may begin with U+FEFF; the default decoder would drop it (and a snapshot restored
// with it would hold another name than the replica that wrote it).
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export class ByteWriter {
  private buf: Uint8Array;
  private pos = 0;

  constructor(initial = 256) {
    this.buf = new Uint8Array(initial);
  }

  get length(): number {
    return this.pos;
  }

  private reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
  }

  u8(v: number): this {
    this.reserve(1);
    this.buf[this.pos++] = v & 0xff;
    return this;
  }

  bool(v: boolean): this {
    return this.u8(v ? 1 : 0);
  }

  /** Unsigned varint, 0 <= v <= 2^53 - 1 (arithmetic, not 32-bit bit operations). */
  uint(v: number): this {
    if (!Number.isSafeInteger(v) || v < 0)
      throw new StateCodecError(`cannot encode ${v} as an unsigned integer`);
    this.reserve(8);
    while (v >= 0x80) {
      this.buf[this.pos++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.pos++] = v;
    return this;
  }

  u32(v: number): this {
    this.reserve(4);
    this.put32(this.pos, v);
    this.pos += 4;
    return this;
  }

  private put32(at: number, v: number): void {
    const b = this.buf;
    b[at] = v & 0xff;
    b[at + 1] = (v >>> 8) & 0xff;
    b[at + 2] = (v >>> 16) & 0xff;
    b[at + 3] = (v >>> 24) & 0xff;
  }

  bytes(v: Uint8Array): this {
    this.uint(v.length);
    this.reserve(v.length);
    this.buf.set(v, this.pos);
    this.pos += v.length;
    return this;
  }

  string(v: string): this {
    // ASCII fast path writes code units directly; otherwise encode in place after the length prefix.
    let ascii = true;
    for (let i = 0; i < v.length; i++) {
      if (v.charCodeAt(i) >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) {
      this.uint(v.length);
      this.reserve(v.length);
      for (let i = 0; i < v.length; i++) this.buf[this.pos++] = v.charCodeAt(i);
      return this;
    }
    return this.bytes(encoder.encode(v));
  }

  /** Reserves a fixed 4-byte little-endian slot to fill in later with `patchU32`. */
  placeholderU32(): number {
    const at = this.pos;
    this.u32(0);
    return at;
  }

  patchU32(at: number, v: number): void {
    this.put32(at, v);
  }

  /** A view of bytes [from, to) written so far (valid until the next write). */
  view(from: number, to: number): Uint8Array {
    return this.buf.subarray(from, to);
  }

  /** Drops the first `n` bytes, keeping the rest (for chunked output). */
  shift(n: number): void {
    this.buf.copyWithin(0, n, this.pos);
    this.pos -= n;
  }

  /** Appends bytes without a length prefix. */
  bytesRaw(v: Uint8Array): this {
    this.reserve(v.length);
    this.buf.set(v, this.pos);
    this.pos += v.length;
    return this;
  }

  /** The bytes written so far (a copy, so the writer may be reused). */
  finish(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }

  /** Hands out the bytes written so far and starts again empty. */
  take(): Uint8Array {
    const out = this.buf.slice(0, this.pos);
    this.pos = 0;
    return out;
  }
}

export class ByteReader {
  private pos = 0;

  constructor(
    private readonly buf: Uint8Array,
    private readonly what: string,
  ) {}

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number, field: string): void {
    if (this.pos + n > this.buf.length)
      throw new StateCodecError(`${this.what}: truncated at byte ${this.pos} reading ${field}`);
  }

  /** Reads the leading format-version byte and refuses any other version than `expected`. */
  version(expected: number): void {
    const version = this.u8('version');
    if (version !== expected)
      throw new StateCodecError(`${this.what}: format version ${version}, expected ${expected}`);
  }

  u8(field: string): number {
    this.need(1, field);
    return this.buf[this.pos++]!;
  }

  bool(field: string): boolean {
    const v = this.u8(field);
    if (v > 1) throw new StateCodecError(`${this.what}: ${field} is ${v}, not a boolean`);
    return v === 1;
  }

  uint(field: string, max = Number.MAX_SAFE_INTEGER): number {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8(field);
      value += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) {
        if (!Number.isSafeInteger(value) || value > max)
          throw new StateCodecError(`${this.what}: ${field} = ${value} is out of range (max ${max})`);
        return value;
      }
      scale *= 0x80;
    }
    throw new StateCodecError(`${this.what}: ${field} is an overlong integer`);
  }

  u32(field: string): number {
    this.need(4, field);
    const b = this.buf;
    const at = this.pos;
    this.pos += 4;
    return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
  }

  bytes(field: string, maxLength: number): Uint8Array {
    const n = this.uint(`${field} length`, maxLength);
    this.need(n, field);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  string(field: string, maxBytes = 1 << 20): string {
    const raw = this.bytes(field, maxBytes);
    // Short ASCII strings (ids, names, policies) skip the decoder: most strings here are such.
    if (raw.length <= 64) {
      let ascii = true;
      for (let i = 0; i < raw.length; i++) {
        if (raw[i]! >= 0x80) {
          ascii = false;
          break;
        }
      }
      if (ascii) return String.fromCharCode.apply(null, raw as unknown as number[]);
    }
    try {
      return decoder.decode(raw);
    } catch {
      throw new StateCodecError(`${this.what}: ${field} is not valid UTF-8`);
    }
  }

  /** An array count, bounded so a corrupt count cannot make us allocate without limit. */
  count(field: string, max: number): number {
    return this.uint(`${field} count`, max);
  }

  end(): void {
    if (this.pos !== this.buf.length)
      throw new StateCodecError(`${this.what}: ${this.buf.length - this.pos} unexpected trailing bytes`);
  }
}
