/* simd_kernel — DogFS's own GF(2^8) kernel with runtime CPU dispatch (see simd_kernel.c). */
#ifndef DOGFS_SIMD_KERNEL_H
#define DOGFS_SIMD_KERNEL_H
#include <stddef.h>

typedef void (*simd_kernel_fn)(const unsigned char *matrix, int k, int rows, unsigned char *const *in,
                               unsigned char *const *out, size_t len);

/* Builds the tables and picks the best kernel for this CPU; `force` names a kernel to use instead
 * (if the CPU supports it), or is NULL/empty. */
void simd_kernel_init(const char *force);
/* "avx512+gfni", "avx2+gfni", "avx2" or "scalar". */
const char *simd_kernel_name(void);
/* out[r] = XOR_j matrix[r*k + j] · in[j], over len bytes. */
void simd_kernel_run(const unsigned char *matrix, int k, int rows, unsigned char *const *in,
                     unsigned char *const *out, size_t len);
#endif
