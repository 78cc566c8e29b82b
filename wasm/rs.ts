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
 * rows1..rows4 are the same loop unrolled for 1-4 output rows, on purpose: each output's accumulators
 * must be separate locals to stay in SIMD registers, and AssemblyScript has no macros to write that once.
 */

/** First byte of linear memory free for the caller (after this module's static data). */
export function heapBase(): usize {
  return __heap_base;
}

// 1 output row(s), 32 bytes per step.
function rows1(tables: usize, cols: i32, input: usize, output: usize, stride: usize, length: usize): void {
  const mask = i8x16.splat(0x0f);
  for (let pos: usize = 0; pos < length; pos += 32) {
    let acc0_0 = i8x16.splat(0);
    let acc0_1 = i8x16.splat(0);
    let src = input + pos;
    let table = tables;
    for (let j = 0; j < cols; j++) {
      const x0 = v128.load(src, 0);
      const lo0 = v128.and(x0, mask);
      const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
      const x1 = v128.load(src, 16);
      const lo1 = v128.and(x1, mask);
      const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
      const tl0 = v128.load(table);
      const th0 = v128.load(table, 16);
      acc0_0 = v128.xor(acc0_0, v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0)));
      acc0_1 = v128.xor(acc0_1, v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1)));
      src += stride;
      table += 32;
    }
    v128.store(output + pos, acc0_0, 0);
    v128.store(output + pos, acc0_1, 16);
  }
}

// 2 output row(s), 32 bytes per step.
function rows2(tables: usize, cols: i32, input: usize, output: usize, stride: usize, length: usize): void {
  const mask = i8x16.splat(0x0f);
  const rowStride: usize = (<usize>cols) << 5;
  for (let pos: usize = 0; pos < length; pos += 32) {
    let acc0_0 = i8x16.splat(0);
    let acc0_1 = i8x16.splat(0);
    let acc1_0 = i8x16.splat(0);
    let acc1_1 = i8x16.splat(0);
    let src = input + pos;
    let table = tables;
    for (let j = 0; j < cols; j++) {
      const x0 = v128.load(src, 0);
      const lo0 = v128.and(x0, mask);
      const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
      const x1 = v128.load(src, 16);
      const lo1 = v128.and(x1, mask);
      const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
      const tl0 = v128.load(table);
      const th0 = v128.load(table, 16);
      acc0_0 = v128.xor(acc0_0, v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0)));
      acc0_1 = v128.xor(acc0_1, v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1)));
      const tl1 = v128.load(table + 1 * rowStride);
      const th1 = v128.load(table + 1 * rowStride, 16);
      acc1_0 = v128.xor(acc1_0, v128.xor(i8x16.swizzle(tl1, lo0), i8x16.swizzle(th1, hi0)));
      acc1_1 = v128.xor(acc1_1, v128.xor(i8x16.swizzle(tl1, lo1), i8x16.swizzle(th1, hi1)));
      src += stride;
      table += 32;
    }
    v128.store(output + pos, acc0_0, 0);
    v128.store(output + pos, acc0_1, 16);
    v128.store(output + 1 * stride + pos, acc1_0, 0);
    v128.store(output + 1 * stride + pos, acc1_1, 16);
  }
}

// 3 output row(s), 32 bytes per step.
function rows3(tables: usize, cols: i32, input: usize, output: usize, stride: usize, length: usize): void {
  const mask = i8x16.splat(0x0f);
  const rowStride: usize = (<usize>cols) << 5;
  for (let pos: usize = 0; pos < length; pos += 32) {
    let acc0_0 = i8x16.splat(0);
    let acc0_1 = i8x16.splat(0);
    let acc1_0 = i8x16.splat(0);
    let acc1_1 = i8x16.splat(0);
    let acc2_0 = i8x16.splat(0);
    let acc2_1 = i8x16.splat(0);
    let src = input + pos;
    let table = tables;
    for (let j = 0; j < cols; j++) {
      const x0 = v128.load(src, 0);
      const lo0 = v128.and(x0, mask);
      const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
      const x1 = v128.load(src, 16);
      const lo1 = v128.and(x1, mask);
      const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
      const tl0 = v128.load(table);
      const th0 = v128.load(table, 16);
      acc0_0 = v128.xor(acc0_0, v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0)));
      acc0_1 = v128.xor(acc0_1, v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1)));
      const tl1 = v128.load(table + 1 * rowStride);
      const th1 = v128.load(table + 1 * rowStride, 16);
      acc1_0 = v128.xor(acc1_0, v128.xor(i8x16.swizzle(tl1, lo0), i8x16.swizzle(th1, hi0)));
      acc1_1 = v128.xor(acc1_1, v128.xor(i8x16.swizzle(tl1, lo1), i8x16.swizzle(th1, hi1)));
      const tl2 = v128.load(table + 2 * rowStride);
      const th2 = v128.load(table + 2 * rowStride, 16);
      acc2_0 = v128.xor(acc2_0, v128.xor(i8x16.swizzle(tl2, lo0), i8x16.swizzle(th2, hi0)));
      acc2_1 = v128.xor(acc2_1, v128.xor(i8x16.swizzle(tl2, lo1), i8x16.swizzle(th2, hi1)));
      src += stride;
      table += 32;
    }
    v128.store(output + pos, acc0_0, 0);
    v128.store(output + pos, acc0_1, 16);
    v128.store(output + 1 * stride + pos, acc1_0, 0);
    v128.store(output + 1 * stride + pos, acc1_1, 16);
    v128.store(output + 2 * stride + pos, acc2_0, 0);
    v128.store(output + 2 * stride + pos, acc2_1, 16);
  }
}

// 4 output row(s), 32 bytes per step.
function rows4(tables: usize, cols: i32, input: usize, output: usize, stride: usize, length: usize): void {
  const mask = i8x16.splat(0x0f);
  const rowStride: usize = (<usize>cols) << 5;
  for (let pos: usize = 0; pos < length; pos += 32) {
    let acc0_0 = i8x16.splat(0);
    let acc0_1 = i8x16.splat(0);
    let acc1_0 = i8x16.splat(0);
    let acc1_1 = i8x16.splat(0);
    let acc2_0 = i8x16.splat(0);
    let acc2_1 = i8x16.splat(0);
    let acc3_0 = i8x16.splat(0);
    let acc3_1 = i8x16.splat(0);
    let src = input + pos;
    let table = tables;
    for (let j = 0; j < cols; j++) {
      const x0 = v128.load(src, 0);
      const lo0 = v128.and(x0, mask);
      const hi0 = v128.and(i16x8.shr_u(x0, 4), mask);
      const x1 = v128.load(src, 16);
      const lo1 = v128.and(x1, mask);
      const hi1 = v128.and(i16x8.shr_u(x1, 4), mask);
      const tl0 = v128.load(table);
      const th0 = v128.load(table, 16);
      acc0_0 = v128.xor(acc0_0, v128.xor(i8x16.swizzle(tl0, lo0), i8x16.swizzle(th0, hi0)));
      acc0_1 = v128.xor(acc0_1, v128.xor(i8x16.swizzle(tl0, lo1), i8x16.swizzle(th0, hi1)));
      const tl1 = v128.load(table + 1 * rowStride);
      const th1 = v128.load(table + 1 * rowStride, 16);
      acc1_0 = v128.xor(acc1_0, v128.xor(i8x16.swizzle(tl1, lo0), i8x16.swizzle(th1, hi0)));
      acc1_1 = v128.xor(acc1_1, v128.xor(i8x16.swizzle(tl1, lo1), i8x16.swizzle(th1, hi1)));
      const tl2 = v128.load(table + 2 * rowStride);
      const th2 = v128.load(table + 2 * rowStride, 16);
      acc2_0 = v128.xor(acc2_0, v128.xor(i8x16.swizzle(tl2, lo0), i8x16.swizzle(th2, hi0)));
      acc2_1 = v128.xor(acc2_1, v128.xor(i8x16.swizzle(tl2, lo1), i8x16.swizzle(th2, hi1)));
      const tl3 = v128.load(table + 3 * rowStride);
      const th3 = v128.load(table + 3 * rowStride, 16);
      acc3_0 = v128.xor(acc3_0, v128.xor(i8x16.swizzle(tl3, lo0), i8x16.swizzle(th3, hi0)));
      acc3_1 = v128.xor(acc3_1, v128.xor(i8x16.swizzle(tl3, lo1), i8x16.swizzle(th3, hi1)));
      src += stride;
      table += 32;
    }
    v128.store(output + pos, acc0_0, 0);
    v128.store(output + pos, acc0_1, 16);
    v128.store(output + 1 * stride + pos, acc1_0, 0);
    v128.store(output + 1 * stride + pos, acc1_1, 16);
    v128.store(output + 2 * stride + pos, acc2_0, 0);
    v128.store(output + 2 * stride + pos, acc2_1, 16);
    v128.store(output + 3 * stride + pos, acc3_0, 0);
    v128.store(output + 3 * stride + pos, acc3_1, 16);
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
