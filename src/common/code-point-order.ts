/**
 * common/code-point-order — the one order of names DogFS uses everywhere: Unicode code-point order,
 * which is UTF-8 byte order (what clients in any language, and S3 listings, expect), unlike JavaScript's
 * `<` on UTF-16 code units.
 */

/** Compares two strings in code-point (= UTF-8 byte) order. */
export function compareNames(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    // Surrogates (0xD800..0xDFFF) encode code points above 0xFFFF, so they sort after 0xE000..0xFFFF:
    // shift them up and the BMP's top range down, as ICU's code-point-order comparison does.
    if (x >= 0xd800 && y >= 0xd800) {
      x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
      y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
    }
    return x - y;
  }
  return a.length - b.length;
}
