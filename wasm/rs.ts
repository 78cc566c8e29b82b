/**
 * wasm/rs.ts — the WebAssembly SIMD kernel of DogFS's portable Reed-Solomon backend (AssemblyScript;
 * built by scripts/build-wasm.mjs into wasm/rs.wasm, which is committed).
 *
 * One operation: outputs[r] = XOR_j c[r][j]·inputs[j] over GF(2^8), the way ISA-L does it: each
 * coefficient c has two 16-byte tables (c·x for the low nibble x, c·(x<<4) for the high nibble), so
 * c·b = low[b & 15] ^ high[b >> 4], and i8x16.swizzle does 16 such lookups at once. The tables use
 * ISA-L's ec_init_tables layout: 32 bytes per (row, column), rows of `cols` entries.
 *
 * Memory is owned by the JavaScript side (src/codec/wasm.ts): it copies a block of each input into
 * linear memory at input + j·stride, calls `mulAdd`, and copies the outputs from output + r·stride.
 * `length` must be a multiple of 32 (the caller pads; bytes past the real length are ignored).
 * Nothing is allocated here: the module uses the stub runtime and exports its memory.
 *
 * Loop order (measured fastest in V8, ~25% over keeping all outputs in registers): for each 2 KiB
 * chunk, for each input j, hold that input's 16-byte tables for every output row in registers and
 * stream the chunk, XOR-ing products into the outputs, which stay in L1 cache for the whole chunk.
 * V8 lowers each i8x16.swizzle to a saturating add plus PSHUFB, so table reloads and loop overhead,
 * not lookups, were what this order removes.
 *
 * rows1..rows4 are the same loop unrolled for 1-4 output rows, on purpose: each row's tables must be
 * separate locals to stay in SIMD registers, and AssemblyScript has no macros to write that once.
 */

/** First byte of linear memory free for the caller (after this module's static data). */
export function heapBase(): usize {
  return __heap_base;
}

function rows1(tables: usize, cols: i32, input: usize, output: usize, stride: usize, length: usize): void {
  const mask = i8x16.splat(0x0f);
  for (let chunk: usize = 0; chunk < length; chunk += 2048) {
    const end: usize = min(chunk + 2048, length);
    let src = input;
    let table = tables;
    for (let j = 0; j < cols; j++) {
      const tl0 = v128.load(table);
      const th0 = v128.load(table, 16);
      if (j === 0) {
        for (let pos = chunk; pos < end; pos += 32) {
          const x0 = v128.load(src + pos, 0);
          const lo0 = v128.and(x0, mask);
          const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
          const x1 = v128.load(src + pos, 16);
          const lo1 = v128.and(x1, mask);
          const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
          v128.store(output + pos, v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0)), 0);
          v128.store(output + pos, v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1)), 16);
        }
      } else {
        for (let pos = chunk; pos < end; pos += 32) {
          const x0 = v128.load(src + pos, 0);
          const lo0 = v128.and(x0, mask);
          const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
          const x1 = v128.load(src + pos, 16);
          const lo1 = v128.and(x1, mask);
          const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
          v128.store(
            output + pos,
            v128.xor(v128.load(output + pos, 0), v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0))),
            0,
          );
          v128.store(
            output + pos,
            v128.xor(v128.load(output + pos, 16), v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1))),
            16,
          );
        }
      }
      src += stride;
      table += 32;
    }
  }
}

function rows2(tables: usize, cols: i32, input: usize, output: usize, stride: usize, length: usize): void {
  const mask = i8x16.splat(0x0f);
  const rowStride: usize = (<usize>cols) << 5;
  for (let chunk: usize = 0; chunk < length; chunk += 2048) {
    const end: usize = min(chunk + 2048, length);
    let src = input;
    let table = tables;
    for (let j = 0; j < cols; j++) {
      const tl0 = v128.load(table);
      const th0 = v128.load(table, 16);
      const tl1 = v128.load(table + 1 * rowStride);
      const th1 = v128.load(table + 1 * rowStride, 16);
      if (j === 0) {
        for (let pos = chunk; pos < end; pos += 32) {
          const x0 = v128.load(src + pos, 0);
          const lo0 = v128.and(x0, mask);
          const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
          const x1 = v128.load(src + pos, 16);
          const lo1 = v128.and(x1, mask);
          const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
          v128.store(output + pos, v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0)), 0);
          v128.store(output + pos, v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1)), 16);
          v128.store(
            output + 1 * stride + pos,
            v128.xor(i8x16.swizzle(tl1, lo0), i8x16.swizzle(th1, hi0)),
            0,
          );
          v128.store(
            output + 1 * stride + pos,
            v128.xor(i8x16.swizzle(tl1, lo1), i8x16.swizzle(th1, hi1)),
            16,
          );
        }
      } else {
        for (let pos = chunk; pos < end; pos += 32) {
          const x0 = v128.load(src + pos, 0);
          const lo0 = v128.and(x0, mask);
          const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
          const x1 = v128.load(src + pos, 16);
          const lo1 = v128.and(x1, mask);
          const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
          v128.store(
            output + pos,
            v128.xor(v128.load(output + pos, 0), v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0))),
            0,
          );
          v128.store(
            output + pos,
            v128.xor(v128.load(output + pos, 16), v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1))),
            16,
          );
          v128.store(
            output + 1 * stride + pos,
            v128.xor(
              v128.load(output + 1 * stride + pos, 0),
              v128.xor(i8x16.swizzle(tl1, lo0), i8x16.swizzle(th1, hi0)),
            ),
            0,
          );
          v128.store(
            output + 1 * stride + pos,
            v128.xor(
              v128.load(output + 1 * stride + pos, 16),
              v128.xor(i8x16.swizzle(tl1, lo1), i8x16.swizzle(th1, hi1)),
            ),
            16,
          );
        }
      }
      src += stride;
      table += 32;
    }
  }
}

function rows3(tables: usize, cols: i32, input: usize, output: usize, stride: usize, length: usize): void {
  const mask = i8x16.splat(0x0f);
  const rowStride: usize = (<usize>cols) << 5;
  for (let chunk: usize = 0; chunk < length; chunk += 2048) {
    const end: usize = min(chunk + 2048, length);
    let src = input;
    let table = tables;
    for (let j = 0; j < cols; j++) {
      const tl0 = v128.load(table);
      const th0 = v128.load(table, 16);
      const tl1 = v128.load(table + 1 * rowStride);
      const th1 = v128.load(table + 1 * rowStride, 16);
      const tl2 = v128.load(table + 2 * rowStride);
      const th2 = v128.load(table + 2 * rowStride, 16);
      if (j === 0) {
        for (let pos = chunk; pos < end; pos += 32) {
          const x0 = v128.load(src + pos, 0);
          const lo0 = v128.and(x0, mask);
          const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
          const x1 = v128.load(src + pos, 16);
          const lo1 = v128.and(x1, mask);
          const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
          v128.store(output + pos, v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0)), 0);
          v128.store(output + pos, v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1)), 16);
          v128.store(
            output + 1 * stride + pos,
            v128.xor(i8x16.swizzle(tl1, lo0), i8x16.swizzle(th1, hi0)),
            0,
          );
          v128.store(
            output + 1 * stride + pos,
            v128.xor(i8x16.swizzle(tl1, lo1), i8x16.swizzle(th1, hi1)),
            16,
          );
          v128.store(
            output + 2 * stride + pos,
            v128.xor(i8x16.swizzle(tl2, lo0), i8x16.swizzle(th2, hi0)),
            0,
          );
          v128.store(
            output + 2 * stride + pos,
            v128.xor(i8x16.swizzle(tl2, lo1), i8x16.swizzle(th2, hi1)),
            16,
          );
        }
      } else {
        for (let pos = chunk; pos < end; pos += 32) {
          const x0 = v128.load(src + pos, 0);
          const lo0 = v128.and(x0, mask);
          const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
          const x1 = v128.load(src + pos, 16);
          const lo1 = v128.and(x1, mask);
          const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
          v128.store(
            output + pos,
            v128.xor(v128.load(output + pos, 0), v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0))),
            0,
          );
          v128.store(
            output + pos,
            v128.xor(v128.load(output + pos, 16), v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1))),
            16,
          );
          v128.store(
            output + 1 * stride + pos,
            v128.xor(
              v128.load(output + 1 * stride + pos, 0),
              v128.xor(i8x16.swizzle(tl1, lo0), i8x16.swizzle(th1, hi0)),
            ),
            0,
          );
          v128.store(
            output + 1 * stride + pos,
            v128.xor(
              v128.load(output + 1 * stride + pos, 16),
              v128.xor(i8x16.swizzle(tl1, lo1), i8x16.swizzle(th1, hi1)),
            ),
            16,
          );
          v128.store(
            output + 2 * stride + pos,
            v128.xor(
              v128.load(output + 2 * stride + pos, 0),
              v128.xor(i8x16.swizzle(tl2, lo0), i8x16.swizzle(th2, hi0)),
            ),
            0,
          );
          v128.store(
            output + 2 * stride + pos,
            v128.xor(
              v128.load(output + 2 * stride + pos, 16),
              v128.xor(i8x16.swizzle(tl2, lo1), i8x16.swizzle(th2, hi1)),
            ),
            16,
          );
        }
      }
      src += stride;
      table += 32;
    }
  }
}

function rows4(tables: usize, cols: i32, input: usize, output: usize, stride: usize, length: usize): void {
  const mask = i8x16.splat(0x0f);
  const rowStride: usize = (<usize>cols) << 5;
  for (let chunk: usize = 0; chunk < length; chunk += 2048) {
    const end: usize = min(chunk + 2048, length);
    let src = input;
    let table = tables;
    for (let j = 0; j < cols; j++) {
      const tl0 = v128.load(table);
      const th0 = v128.load(table, 16);
      const tl1 = v128.load(table + 1 * rowStride);
      const th1 = v128.load(table + 1 * rowStride, 16);
      const tl2 = v128.load(table + 2 * rowStride);
      const th2 = v128.load(table + 2 * rowStride, 16);
      const tl3 = v128.load(table + 3 * rowStride);
      const th3 = v128.load(table + 3 * rowStride, 16);
      if (j === 0) {
        for (let pos = chunk; pos < end; pos += 32) {
          const x0 = v128.load(src + pos, 0);
          const lo0 = v128.and(x0, mask);
          const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
          const x1 = v128.load(src + pos, 16);
          const lo1 = v128.and(x1, mask);
          const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
          v128.store(output + pos, v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0)), 0);
          v128.store(output + pos, v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1)), 16);
          v128.store(
            output + 1 * stride + pos,
            v128.xor(i8x16.swizzle(tl1, lo0), i8x16.swizzle(th1, hi0)),
            0,
          );
          v128.store(
            output + 1 * stride + pos,
            v128.xor(i8x16.swizzle(tl1, lo1), i8x16.swizzle(th1, hi1)),
            16,
          );
          v128.store(
            output + 2 * stride + pos,
            v128.xor(i8x16.swizzle(tl2, lo0), i8x16.swizzle(th2, hi0)),
            0,
          );
          v128.store(
            output + 2 * stride + pos,
            v128.xor(i8x16.swizzle(tl2, lo1), i8x16.swizzle(th2, hi1)),
            16,
          );
          v128.store(
            output + 3 * stride + pos,
            v128.xor(i8x16.swizzle(tl3, lo0), i8x16.swizzle(th3, hi0)),
            0,
          );
          v128.store(
            output + 3 * stride + pos,
            v128.xor(i8x16.swizzle(tl3, lo1), i8x16.swizzle(th3, hi1)),
            16,
          );
        }
      } else {
        for (let pos = chunk; pos < end; pos += 32) {
          const x0 = v128.load(src + pos, 0);
          const lo0 = v128.and(x0, mask);
          const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
          const x1 = v128.load(src + pos, 16);
          const lo1 = v128.and(x1, mask);
          const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
          v128.store(
            output + pos,
            v128.xor(v128.load(output + pos, 0), v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0))),
            0,
          );
          v128.store(
            output + pos,
            v128.xor(v128.load(output + pos, 16), v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1))),
            16,
          );
          v128.store(
            output + 1 * stride + pos,
            v128.xor(
              v128.load(output + 1 * stride + pos, 0),
              v128.xor(i8x16.swizzle(tl1, lo0), i8x16.swizzle(th1, hi0)),
            ),
            0,
          );
          v128.store(
            output + 1 * stride + pos,
            v128.xor(
              v128.load(output + 1 * stride + pos, 16),
              v128.xor(i8x16.swizzle(tl1, lo1), i8x16.swizzle(th1, hi1)),
            ),
            16,
          );
          v128.store(
            output + 2 * stride + pos,
            v128.xor(
              v128.load(output + 2 * stride + pos, 0),
              v128.xor(i8x16.swizzle(tl2, lo0), i8x16.swizzle(th2, hi0)),
            ),
            0,
          );
          v128.store(
            output + 2 * stride + pos,
            v128.xor(
              v128.load(output + 2 * stride + pos, 16),
              v128.xor(i8x16.swizzle(tl2, lo1), i8x16.swizzle(th2, hi1)),
            ),
            16,
          );
          v128.store(
            output + 3 * stride + pos,
            v128.xor(
              v128.load(output + 3 * stride + pos, 0),
              v128.xor(i8x16.swizzle(tl3, lo0), i8x16.swizzle(th3, hi0)),
            ),
            0,
          );
          v128.store(
            output + 3 * stride + pos,
            v128.xor(
              v128.load(output + 3 * stride + pos, 16),
              v128.xor(i8x16.swizzle(tl3, lo1), i8x16.swizzle(th3, hi1)),
            ),
            16,
          );
        }
      }
      src += stride;
      table += 32;
    }
  }
}

/**
 * outputs[r] = XOR_j c[r][j]·inputs[j] for `rows` outputs and `cols` inputs. Rows are done four at a
 * time so each input vector is loaded once per four outputs and the accumulators stay in registers.
 */
export function mulAdd(
  tables: usize,
  cols: i32,
  rows: i32,
  input: usize,
  output: usize,
  stride: usize,
  length: usize,
): void {
  const rowTables: usize = (<usize>cols) << 5;
  let r = 0;
  while (rows - r >= 4) {
    rows4(tables + <usize>r * rowTables, cols, input, output + <usize>r * stride, stride, length);
    r += 4;
  }
  const rest = rows - r;
  const t = tables + <usize>r * rowTables;
  const o = output + <usize>r * stride;
  if (rest === 3) rows3(t, cols, input, o, stride, length);
  else if (rest === 2) rows2(t, cols, input, o, stride, length);
  else if (rest === 1) rows1(t, cols, input, o, stride, length);
}
