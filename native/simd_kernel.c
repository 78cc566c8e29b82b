/*
 * simd_kernel — DogFS's own GF(2^8) matrix-times-shards kernel, for machines without ISA-L.
 *
 *   out[r][i] = XOR over j of matrix[r*k + j] · in[j][i]     (field polynomial 0x11d, as ISA-L)
 *
 * Picked once at load by what the CPU supports (runtime dispatch; each kernel is compiled for its own
 * instruction set with a target attribute, so the addon still loads on older CPUs):
 *   avx512+gfni  one GF2P8AFFINEQB per coefficient per 64 bytes: multiplication by a constant c is
 *                linear over GF(2), so it is an 8×8 bit matrix, which that instruction applies;
 *   avx2+gfni    the same on 32-byte vectors;
 *   avx2         ISA-L's method: split-nibble lookup tables with VPSHUFB;
 *   scalar       a 64 KiB multiplication table (reported as such: the wasm backend is faster).
 */
#include "simd_kernel.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DOGFS_X86 1
#endif

static unsigned char gf_exp[512];
static unsigned char gf_log[256];
static unsigned char gf_mul_table[256][256];
static uint64_t gf_affine[256];
static unsigned char gf_nibble[256][32]; /* c·x for x < 16, then c·(x << 4) */

static unsigned char mul(unsigned char a, unsigned char b) {
  if (a == 0 || b == 0) return 0;
  return gf_exp[gf_log[a] + gf_log[b]];
}

static void init_tables(void) {
  unsigned x = 1;
  for (int i = 0; i < 255; i++) {
    gf_exp[i] = (unsigned char)x;
    gf_log[x] = (unsigned char)i;
    x <<= 1;
    if (x & 0x100) x ^= 0x11d;
  }
  for (int i = 255; i < 512; i++) gf_exp[i] = gf_exp[i - 255];
  for (int c = 0; c < 256; c++) {
    for (int v = 0; v < 256; v++) gf_mul_table[c][v] = mul((unsigned char)c, (unsigned char)v);
    /* GF2P8AFFINEQB: result bit i = parity(A.byte[7 - i] & x), so byte 7-i of A has bit j set when
     * bit i of c·2^j is set (column j of the bit matrix of "multiply by c" is c·2^j). */
    uint64_t a = 0;
    for (int i = 0; i < 8; i++) {
      unsigned row = 0;
      for (int j = 0; j < 8; j++)
        if ((mul((unsigned char)c, (unsigned char)(1u << j)) >> i) & 1) row |= 1u << j;
      a |= (uint64_t)row << (8 * (7 - i));
    }
    gf_affine[c] = a;
    for (int v = 0; v < 16; v++) {
      gf_nibble[c][v] = mul((unsigned char)c, (unsigned char)v);
      gf_nibble[c][16 + v] = mul((unsigned char)c, (unsigned char)(v << 4));
    }
  }
}

/* ---- scalar ---- */

static void scalar_range(const unsigned char *matrix, int k, int rows, unsigned char *const *in,
                         unsigned char *const *out, size_t start, size_t len) {
  for (int r = 0; r < rows; r++) {
    unsigned char *o = out[r];
    for (size_t i = start; i < len; i++) {
      unsigned char s = 0;
      for (int j = 0; j < k; j++) s ^= gf_mul_table[matrix[r * k + j]][in[j][i]];
      o[i] = s;
    }
  }
}

static void scalar_kernel(const unsigned char *matrix, int k, int rows, unsigned char *const *in,
                          unsigned char *const *out, size_t len) {
  scalar_range(matrix, k, rows, in, out, 0, len);
}

#ifdef DOGFS_X86

/* Rows are done in groups of up to GROUP so each input vector is loaded once per group and the
 * accumulators stay in registers; the group body is inlined with a constant size so it unrolls. */
#define GROUP 6

/* A kernel: rows in groups of GROUP, each group's body inlined with its size as a constant. */
#define DEFINE_KERNEL(prefix, target)                                                                       \
  target static void prefix##_kernel(const unsigned char *matrix, int k, int rows, unsigned char *const *in, \
                                     unsigned char *const *out, size_t len) {                               \
    for (int r = 0; r < rows; r += GROUP) {                                                                 \
      const unsigned char *m = matrix + (size_t)r * k;                                                      \
      switch (rows - r >= GROUP ? GROUP : rows - r) {                                                       \
        case 6: prefix##_group(6, m, k, in, out + r, len); break;                                           \
        case 5: prefix##_group(5, m, k, in, out + r, len); break;                                           \
        case 4: prefix##_group(4, m, k, in, out + r, len); break;                                           \
        case 3: prefix##_group(3, m, k, in, out + r, len); break;                                           \
        case 2: prefix##_group(2, m, k, in, out + r, len); break;                                           \
        default: prefix##_group(1, m, k, in, out + r, len); break;                                          \
      }                                                                                                     \
    }                                                                                                       \
  }

/* ---- AVX-512 + GFNI ---- */

#define TARGET_512 __attribute__((target("avx512f,avx512bw,gfni")))

static inline __attribute__((always_inline)) TARGET_512 void gfni512_group(
    const int g, const unsigned char *matrix, int k, unsigned char *const *in, unsigned char *const *out,
    size_t len) {
  size_t pos = 0;
  for (; pos + 64 <= len; pos += 64) {
    __m512i acc[GROUP];
    for (int r = 0; r < g; r++) acc[r] = _mm512_setzero_si512();
    for (int j = 0; j < k; j++) {
      const __m512i x = _mm512_loadu_si512((const void *)(in[j] + pos));
      for (int r = 0; r < g; r++)
        acc[r] = _mm512_xor_si512(
            acc[r], _mm512_gf2p8affine_epi64_epi8(x, _mm512_set1_epi64((long long)gf_affine[matrix[r * k + j]]), 0));
    }
    for (int r = 0; r < g; r++) _mm512_storeu_si512((void *)(out[r] + pos), acc[r]);
  }
  if (pos < len) { /* the tail, with masked loads and stores: no scalar loop, no over-read */
    const __mmask64 mask = (__mmask64)(~0ULL >> (64 - (len - pos)));
    __m512i acc[GROUP];
    for (int r = 0; r < g; r++) acc[r] = _mm512_setzero_si512();
    for (int j = 0; j < k; j++) {
      const __m512i x = _mm512_maskz_loadu_epi8(mask, (const void *)(in[j] + pos));
      for (int r = 0; r < g; r++)
        acc[r] = _mm512_xor_si512(
            acc[r], _mm512_gf2p8affine_epi64_epi8(x, _mm512_set1_epi64((long long)gf_affine[matrix[r * k + j]]), 0));
    }
    for (int r = 0; r < g; r++) _mm512_mask_storeu_epi8((void *)(out[r] + pos), mask, acc[r]);
  }
}

DEFINE_KERNEL(gfni512, TARGET_512)

/* ---- AVX2 + GFNI ---- */

#define TARGET_256G __attribute__((target("avx2,gfni")))

static inline __attribute__((always_inline)) TARGET_256G void gfni256_group(
    const int g, const unsigned char *matrix, int k, unsigned char *const *in, unsigned char *const *out,
    size_t len) {
  size_t pos = 0;
  for (; pos + 32 <= len; pos += 32) {
    __m256i acc[GROUP];
    for (int r = 0; r < g; r++) acc[r] = _mm256_setzero_si256();
    for (int j = 0; j < k; j++) {
      const __m256i x = _mm256_loadu_si256((const __m256i *)(in[j] + pos));
      for (int r = 0; r < g; r++)
        acc[r] = _mm256_xor_si256(
            acc[r], _mm256_gf2p8affine_epi64_epi8(x, _mm256_set1_epi64x((long long)gf_affine[matrix[r * k + j]]), 0));
    }
    for (int r = 0; r < g; r++) _mm256_storeu_si256((__m256i *)(out[r] + pos), acc[r]);
  }
  if (pos < len) scalar_range(matrix, k, g, in, out, pos, len);
}

DEFINE_KERNEL(gfni256, TARGET_256G)

/* ---- AVX2, split-nibble VPSHUFB (ISA-L's method) ---- */

#define TARGET_256 __attribute__((target("avx2")))

static inline __attribute__((always_inline)) TARGET_256 void avx2_group(
    const int g, const unsigned char *matrix, int k, unsigned char *const *in, unsigned char *const *out,
    size_t len) {
  const __m256i low_mask = _mm256_set1_epi8(0x0f);
  size_t pos = 0;
  for (; pos + 32 <= len; pos += 32) {
    __m256i acc[GROUP];
    for (int r = 0; r < g; r++) acc[r] = _mm256_setzero_si256();
    for (int j = 0; j < k; j++) {
      const __m256i x = _mm256_loadu_si256((const __m256i *)(in[j] + pos));
      const __m256i lo = _mm256_and_si256(x, low_mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi64(x, 4), low_mask);
      for (int r = 0; r < g; r++) {
        const unsigned char *t = gf_nibble[matrix[r * k + j]];
        const __m256i tl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t));
        const __m256i th = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t + 16)));
        acc[r] = _mm256_xor_si256(acc[r], _mm256_xor_si256(_mm256_shuffle_epi8(tl, lo), _mm256_shuffle_epi8(th, hi)));
      }
    }
    for (int r = 0; r < g; r++) _mm256_storeu_si256((__m256i *)(out[r] + pos), acc[r]);
  }
  if (pos < len) scalar_range(matrix, k, g, in, out, pos, len);
}

DEFINE_KERNEL(avx2, TARGET_256)

#endif /* DOGFS_X86 */

static simd_kernel_fn chosen = scalar_kernel;
static const char *chosen_name = "scalar";

void simd_kernel_init(const char *force) {
  init_tables();
  chosen = scalar_kernel;
  chosen_name = "scalar";
#ifdef DOGFS_X86
  __builtin_cpu_init();
  const int has_avx2 = __builtin_cpu_supports("avx2");
  const int has_gfni = __builtin_cpu_supports("gfni");
  const int has_512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  /* `force` (DOGFS_SIMD_KERNEL) picks a lower tier, so tests can run each one this CPU supports. */
  const int allow = !force || !*force;
  if (has_512 && has_gfni && (allow || strcmp(force, "avx512+gfni") == 0)) {
    chosen = gfni512_kernel;
    chosen_name = "avx512+gfni";
  } else if (has_avx2 && has_gfni && (allow || strcmp(force, "avx2+gfni") == 0)) {
    chosen = gfni256_kernel;
    chosen_name = "avx2+gfni";
  } else if (has_avx2 && (allow || strcmp(force, "avx2") == 0)) {
    chosen = avx2_kernel;
    chosen_name = "avx2";
  }
#else
  (void)force;
#endif
}

const char *simd_kernel_name(void) { return chosen_name; }

void simd_kernel_run(const unsigned char *matrix, int k, int rows, unsigned char *const *in,
                     unsigned char *const *out, size_t len) {
  if (len > 0) chosen(matrix, k, rows, in, out, len);
}
