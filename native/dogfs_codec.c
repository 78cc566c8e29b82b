/*
 * dogfs_codec — the native Reed-Solomon backend: a thin N-API layer over Intel ISA-L.
 *
 * ISA-L is not linked: it is dlopen()ed at load time with RTLD_DEEPBIND. Why: the node binary exports
 * symbols of its own with the same names as some of ISA-L's (OpenSSL's curve448 `gf_mul`, for one), and
 * a library loaded into node normally resolves its calls through the global scope first — so ISA-L's
 * ec_encode_data_base → gf_mul would call node's gf_mul and crash. RTLD_DEEPBIND makes libisal's own
 * definitions bind before the global ones. Debian ships no static libisal.a to link privately, and
 * dlopen also means the addon builds without libisal-dev and simply reports ISA-L missing at run time.
 * DOGFS_ISAL_BIND=global loads without RTLD_DEEPBIND: only the test that proves the trap uses it.
 * DOGFS_ISAL_LIBRARY=<path> loads that file instead of libisal.so.2 (tests point it nowhere to prove
 * the fallback).
 *
 * Exports (all argument checking is done by the TypeScript caller; these check only what keeps the
 * process safe: types, counts and buffer sizes):
 *   loadError: string | null            why ISA-L could not be loaded, or null
 *   library: string                     the library that was loaded
 *   encode(tables, k, rows, inputs[], outputs[], length)         ec_encode_data on this thread
 *   encodeAsync(tables, k, rows, inputs[], outputs[], length) → Promise<void>, on the libuv pool
 *   genCauchyMatrix(k, m) → Uint8Array      gf_gen_cauchy1_matrix(a, k+m, k)
 *   invertMatrix(matrix, n) → Uint8Array | null    gf_invert_matrix
 *   initTables(k, rows, matrix) → Uint8Array       ec_init_tables
 *   gfMul(a, b) → number                            ISA-L's gf_mul (the symbol node also exports)
 *   hostExportsGfMul: boolean        whether the process (node) exports a gf_mul of its own
 *   benchEncode(tables, k, rows, length, iterations) → seconds   ec_encode_data in a C loop on
 *                                     C-allocated buffers: the "ISA-L itself" reference for benches
 *   crc32c(data, initial?) → number   CRC-32C by ISA-L's crc32_iscsi (throws if ISA-L lacks it)
 *   hasCrc32c: boolean                 whether it can
 * and, needing no ISA-L, our own kernel (simd_kernel.c):
 *   simdKernel: string                  which kernel the CPU got ("avx512+gfni", ..., "scalar")
 *   simdEncode(matrix, k, rows, inputs[], outputs[], length)       matrix is rows×k coefficients
 *   simdEncodeAsync(matrix, k, rows, inputs[], outputs[], length) → Promise<void>
 * and, for the process rather than the codec (the only native code DogFS has):
 *   retainFreedMemory(mmapThreshold, trimThreshold) → boolean   glibc mallopt: blocks below
 *                                     mmapThreshold come from the heap, and up to trimThreshold freed
 *                                     bytes stay mapped for reuse; false where there is no glibc
 *   alignedBuffer(bytes, alignment) → Buffer   `bytes` (> 0, a multiple of `alignment`) of zeroed memory
 *                                     whose address is a multiple of `alignment` (a power of two, 512 B
 *                                     to 2 MiB; at 2 MiB, advised to be huge pages): what O_DIRECT file
 *                                     writes need and no JS allocation promises. Freed when collected.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "simd_kernel.h"

#define MAX_SHARDS 256

typedef void (*ec_encode_data_fn)(int len, int k, int rows, unsigned char *gftbls, unsigned char **data,
                                  unsigned char **coding);
typedef void (*ec_init_tables_fn)(int k, int rows, unsigned char *a, unsigned char *gftbls);
typedef void (*gf_gen_cauchy1_matrix_fn)(unsigned char *a, int m, int k);
typedef int (*gf_invert_matrix_fn)(unsigned char *in, unsigned char *out, const int n);
typedef unsigned char (*gf_mul_fn)(unsigned char a, unsigned char b);
typedef unsigned int (*crc32_iscsi_fn)(unsigned char *buffer, int len, unsigned int init_crc);

static struct {
  void *handle;
  const char *library;
  char error[512];
  ec_encode_data_fn ec_encode_data;
  ec_init_tables_fn ec_init_tables;
  gf_gen_cauchy1_matrix_fn gf_gen_cauchy1_matrix;
  gf_invert_matrix_fn gf_invert_matrix;
  gf_mul_fn gf_mul;
  crc32_iscsi_fn crc32_iscsi; /* optional: CRC-32C, NULL if this ISA-L lacks it */
} isal;

static void load_isal(void) {
  const char *candidates[] = {"libisal.so.2", "libisal.so"};
  const char *bind = getenv("DOGFS_ISAL_BIND");
  const char *override = getenv("DOGFS_ISAL_LIBRARY"); /* a path, e.g. a non-standard install */
  size_t candidate_count = sizeof candidates / sizeof candidates[0];
  if (override && *override) {
    candidates[0] = override;
    candidate_count = 1;
  }
  int flags = RTLD_NOW | RTLD_LOCAL;
#ifdef RTLD_DEEPBIND
  if (!(bind && strcmp(bind, "global") == 0)) flags |= RTLD_DEEPBIND;
#else
  (void)bind;
#endif
  isal.error[0] = 0;
  for (size_t i = 0; i < candidate_count && !isal.handle; i++) {
    isal.handle = dlopen(candidates[i], flags);
    if (isal.handle) isal.library = candidates[i];
    else snprintf(isal.error, sizeof isal.error, "%s", dlerror());
  }
  if (!isal.handle) return;
  isal.ec_encode_data = (ec_encode_data_fn)dlsym(isal.handle, "ec_encode_data");
  isal.ec_init_tables = (ec_init_tables_fn)dlsym(isal.handle, "ec_init_tables");
  isal.gf_gen_cauchy1_matrix = (gf_gen_cauchy1_matrix_fn)dlsym(isal.handle, "gf_gen_cauchy1_matrix");
  isal.gf_invert_matrix = (gf_invert_matrix_fn)dlsym(isal.handle, "gf_invert_matrix");
  isal.gf_mul = (gf_mul_fn)dlsym(isal.handle, "gf_mul");
  isal.crc32_iscsi = (crc32_iscsi_fn)dlsym(isal.handle, "crc32_iscsi");
  if (!isal.ec_encode_data || !isal.ec_init_tables || !isal.gf_gen_cauchy1_matrix || !isal.gf_invert_matrix ||
      !isal.gf_mul) {
    snprintf(isal.error, sizeof isal.error, "%s lacks an erasure-code symbol", isal.library);
    dlclose(isal.handle);
    isal.handle = NULL;
    /* Every symbol goes with the library: one kept (crc32_iscsi) would point into unmapped code. */
    isal.ec_encode_data = NULL;
    isal.ec_init_tables = NULL;
    isal.gf_gen_cauchy1_matrix = NULL;
    isal.gf_invert_matrix = NULL;
    isal.gf_mul = NULL;
    isal.crc32_iscsi = NULL;
  }
}

/* ---- argument helpers: on failure they throw a JS error and return 0 ---- */

#define CHECK_NAPI(call)                                                                                      \
  do {                                                                                                        \
    if ((call) != napi_ok) {                                                                                  \
      napi_throw_error(env, NULL, "dogfs_codec: N-API call failed: " #call);                                \
      return 0;                                                                                               \
    }                                                                                                         \
  } while (0)

static int get_bytes(napi_env env, napi_value value, unsigned char **data, size_t *length) {
  bool is_typed = false;
  CHECK_NAPI(napi_is_typedarray(env, value, &is_typed));
  if (!is_typed) {
    napi_throw_type_error(env, NULL, "dogfs_codec: expected a Uint8Array");
    return 0;
  }
  napi_typedarray_type type;
  void *pointer = NULL;
  CHECK_NAPI(napi_get_typedarray_info(env, value, &type, length, &pointer, NULL, NULL));
  if (type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "dogfs_codec: expected a Uint8Array");
    return 0;
  }
  /* A zero-length view may have a NULL data pointer; ISA-L never touches it then. */
  *data = (unsigned char *)pointer;
  return 1;
}

static int get_int(napi_env env, napi_value value, int min, int max, int *out) {
  int32_t v = 0;
  if (napi_get_value_int32(env, value, &v) != napi_ok || v < min || v > max) {
    napi_throw_range_error(env, NULL, "dogfs_codec: integer argument out of range");
    return 0;
  }
  *out = v;
  return 1;
}

/* Fill `pointers` from a JS array of Uint8Arrays, each of at least `min_length` bytes. */
static int get_pointer_array(napi_env env, napi_value array, int count, size_t min_length,
                             unsigned char **pointers) {
  bool is_array = false;
  uint32_t n = 0;
  CHECK_NAPI(napi_is_array(env, array, &is_array));
  if (!is_array || napi_get_array_length(env, array, &n) != napi_ok || (int)n != count) {
    napi_throw_type_error(env, NULL, "dogfs_codec: expected an array of the right number of shards");
    return 0;
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value element;
    size_t length = 0;
    CHECK_NAPI(napi_get_element(env, array, i, &element));
    if (!get_bytes(env, element, &pointers[i], &length)) return 0;
    if (length < min_length) {
      napi_throw_range_error(env, NULL, "dogfs_codec: shard shorter than the length to code");
      return 0;
    }
  }
  return 1;
}

static int require_isal(napi_env env) {
  if (isal.handle) return 1;
  napi_throw_error(env, NULL, "dogfs_codec: ISA-L is not loaded");
  return 0;
}

/* The common part of encode and encodeAsync. */
typedef struct {
  int own;               /* 1: our kernel, `tables` is the rows×k matrix; 0: ISA-L, ec_init_tables layout */
  unsigned char *tables;
  int k, rows, length;
  unsigned char *inputs[MAX_SHARDS];
  unsigned char *outputs[MAX_SHARDS];
} encode_job;

static int parse_encode(napi_env env, napi_callback_info info, int own, encode_job *job, napi_value *argv) {
  size_t argc = 6;
  job->own = own;
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 6) {
    napi_throw_type_error(env, NULL, "dogfs_codec: encode(tables, k, rows, inputs, outputs, length)");
    return 0;
  }
  size_t table_length = 0;
  if ((!own && !require_isal(env)) || !get_bytes(env, argv[0], &job->tables, &table_length) ||
      !get_int(env, argv[1], 1, MAX_SHARDS, &job->k) || !get_int(env, argv[2], 1, MAX_SHARDS, &job->rows) ||
      !get_int(env, argv[5], 0, INT32_MAX, &job->length))
    return 0;
  if (table_length < (size_t)(own ? 1 : 32) * job->k * job->rows) {
    napi_throw_range_error(env, NULL, "dogfs_codec: tables too small for k × rows");
    return 0;
  }
  return get_pointer_array(env, argv[3], job->k, (size_t)job->length, job->inputs) &&
         get_pointer_array(env, argv[4], job->rows, (size_t)job->length, job->outputs);
}

static void run_encode(const encode_job *job) {
  if (job->own)
    simd_kernel_run(job->tables, job->k, job->rows, (unsigned char *const *)job->inputs,
                    (unsigned char *const *)job->outputs, (size_t)job->length);
  else if (job->length > 0)
    isal.ec_encode_data(job->length, job->k, job->rows, job->tables, (unsigned char **)job->inputs,
                        (unsigned char **)job->outputs);
}

static napi_value encode_with(napi_env env, napi_callback_info info, int own) {
  encode_job job;
  napi_value argv[6];
  if (parse_encode(env, info, own, &job, argv)) run_encode(&job);
  return NULL;
}

static napi_value encode(napi_env env, napi_callback_info info) { return encode_with(env, info, 0); }
static napi_value simd_encode(napi_env env, napi_callback_info info) { return encode_with(env, info, 1); }

/* ---- async: the same work on the libuv thread pool, the JS arrays kept alive by a reference ---- */

typedef struct {
  encode_job job;
  napi_ref keep_alive; /* an array holding tables, inputs and outputs */
  napi_deferred deferred;
  napi_async_work work;
} async_encode;

static void async_execute(napi_env env, void *data) {
  (void)env;
  run_encode(&((async_encode *)data)->job);
}

static void async_complete(napi_env env, napi_status status, void *data) {
  async_encode *task = (async_encode *)data;
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  if (status == napi_ok) {
    napi_resolve_deferred(env, task->deferred, undefined);
  } else {
    napi_value message, error;
    napi_create_string_utf8(env, "dogfs_codec: async encode cancelled", NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &error);
    napi_reject_deferred(env, task->deferred, error);
  }
  napi_delete_reference(env, task->keep_alive);
  napi_delete_async_work(env, task->work);
  free(task);
}

static napi_value encode_async_with(napi_env env, napi_callback_info info, int own) {
  async_encode *task = calloc(1, sizeof *task);
  napi_value argv[6], holder, promise, name;
  if (!task) {
    napi_throw_error(env, NULL, "dogfs_codec: out of memory");
    return NULL;
  }
  if (!parse_encode(env, info, own, &task->job, argv)) {
    free(task);
    return NULL;
  }
  if (napi_create_array_with_length(env, 3, &holder) != napi_ok || napi_set_element(env, holder, 0, argv[0]) != napi_ok ||
      napi_set_element(env, holder, 1, argv[3]) != napi_ok || napi_set_element(env, holder, 2, argv[4]) != napi_ok ||
      napi_create_reference(env, holder, 1, &task->keep_alive) != napi_ok) {
    free(task);
    napi_throw_error(env, NULL, "dogfs_codec: could not keep buffers alive");
    return NULL;
  }
  napi_create_string_utf8(env, "dogfs_codec.encode", NAPI_AUTO_LENGTH, &name);
  if (napi_create_promise(env, &task->deferred, &promise) != napi_ok ||
      napi_create_async_work(env, NULL, name, async_execute, async_complete, task, &task->work) != napi_ok ||
      napi_queue_async_work(env, task->work) != napi_ok) {
    napi_delete_reference(env, task->keep_alive);
    free(task);
    napi_throw_error(env, NULL, "dogfs_codec: could not queue async work");
    return NULL;
  }
  return promise;
}

static napi_value encode_async(napi_env env, napi_callback_info info) { return encode_async_with(env, info, 0); }
static napi_value simd_encode_async(napi_env env, napi_callback_info info) {
  return encode_async_with(env, info, 1);
}

/* ---- ISA-L's own matrix functions, exposed so tests can compare them with ours ---- */

static napi_value new_bytes(napi_env env, size_t length, unsigned char **data) {
  napi_value buffer;
  if (napi_create_buffer(env, length, (void **)data, &buffer) != napi_ok) {
    napi_throw_error(env, NULL, "dogfs_codec: out of memory");
    return NULL;
  }
  return buffer;
}

static napi_value gen_cauchy_matrix(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int k, m;
  unsigned char *out;
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 2 || !require_isal(env) || !get_int(env, argv[0], 1, MAX_SHARDS, &k) ||
      !get_int(env, argv[1], 1, MAX_SHARDS - k, &m))
    return NULL;
  napi_value result = new_bytes(env, (size_t)(k + m) * k, &out);
  if (result) isal.gf_gen_cauchy1_matrix(out, k + m, k);
  return result;
}

static napi_value invert_matrix(napi_env env, napi_callback_info info) {
  size_t argc = 2, length = 0;
  napi_value argv[2];
  unsigned char *in, *out, *copy;
  int n;
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 2 || !require_isal(env) || !get_bytes(env, argv[0], &in, &length) ||
      !get_int(env, argv[1], 1, MAX_SHARDS, &n))
    return NULL;
  if (length < (size_t)n * n) {
    napi_throw_range_error(env, NULL, "dogfs_codec: matrix too small");
    return NULL;
  }
  copy = malloc((size_t)n * n); /* gf_invert_matrix destroys its input */
  if (!copy) return NULL;
  memcpy(copy, in, (size_t)n * n);
  napi_value result = new_bytes(env, (size_t)n * n, &out);
  if (result && isal.gf_invert_matrix(copy, out, n) != 0) napi_get_null(env, &result);
  free(copy);
  return result;
}

static napi_value init_tables(napi_env env, napi_callback_info info) {
  size_t argc = 3, length = 0;
  napi_value argv[3];
  unsigned char *matrix, *out;
  int k, rows;
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 3 || !require_isal(env) || !get_int(env, argv[0], 1, MAX_SHARDS, &k) ||
      !get_int(env, argv[1], 1, MAX_SHARDS, &rows) || !get_bytes(env, argv[2], &matrix, &length))
    return NULL;
  if (length < (size_t)k * rows) {
    napi_throw_range_error(env, NULL, "dogfs_codec: matrix too small");
    return NULL;
  }
  napi_value result = new_bytes(env, (size_t)32 * k * rows, &out);
  if (result) isal.ec_init_tables(k, rows, matrix, out);
  return result;
}

static napi_value gf_mul(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  int a, b;
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 2 || !require_isal(env) || !get_int(env, argv[0], 0, 255, &a) || !get_int(env, argv[1], 0, 255, &b))
    return NULL;
  napi_create_uint32(env, isal.gf_mul((unsigned char)a, (unsigned char)b), &result);
  return result;
}

/* crc32c(data, initial) → CRC-32C of data continuing from `initial` (0 to start), as @node-rs/crc32.
 * ISA-L's crc32_iscsi keeps the register un-inverted, hence the two inversions. */
static napi_value crc32c(napi_env env, napi_callback_info info) {
  size_t argc = 2, length = 0;
  napi_value argv[2], result;
  unsigned char *data;
  uint32_t crc = 0;
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !get_bytes(env, argv[0], &data, &length)) return NULL;
  if (argc > 1 && napi_get_value_uint32(env, argv[1], &crc) != napi_ok) {
    napi_throw_type_error(env, NULL, "dogfs_codec: crc32c initial value must be a uint32");
    return NULL;
  }
  if (!isal.crc32_iscsi) {
    napi_throw_error(env, NULL, "dogfs_codec: ISA-L crc32_iscsi is not loaded");
    return NULL;
  }
  crc = ~crc;
  while (length > 0) { /* ISA-L takes an int length */
    const int piece = length > (1u << 30) ? (1 << 30) : (int)length;
    crc = isal.crc32_iscsi(data, piece, crc);
    data += piece;
    length -= (size_t)piece;
  }
  napi_create_uint32(env, ~crc, &result);
  return result;
}

/* ---- benchmark reference: ISA-L in a C loop, no JavaScript in between ---- */

/* CPU time of this thread: per-core throughput, unaffected by other processes sharing the machine. */
static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static napi_value bench_encode(napi_env env, napi_callback_info info) {
  size_t argc = 5, table_length = 0;
  napi_value argv[5], result;
  unsigned char *tables, *inputs[MAX_SHARDS], *outputs[MAX_SHARDS];
  int k, rows, length, iterations;
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 5 || !require_isal(env) || !get_bytes(env, argv[0], &tables, &table_length) ||
      !get_int(env, argv[1], 1, MAX_SHARDS, &k) || !get_int(env, argv[2], 1, MAX_SHARDS, &rows) ||
      !get_int(env, argv[3], 1, 1 << 30, &length) || !get_int(env, argv[4], 1, INT32_MAX, &iterations))
    return NULL;
  if (table_length < (size_t)32 * k * rows) {
    napi_throw_range_error(env, NULL, "dogfs_codec: tables too small");
    return NULL;
  }
  unsigned char *block = NULL;
  if (posix_memalign((void **)&block, 64, (size_t)(k + rows) * length) != 0) {
    napi_throw_error(env, NULL, "dogfs_codec: out of memory");
    return NULL;
  }
  for (size_t i = 0; i < (size_t)(k + rows) * length; i++) block[i] = (unsigned char)(i * 2654435761u >> 24);
  for (int i = 0; i < k; i++) inputs[i] = block + (size_t)i * length;
  for (int i = 0; i < rows; i++) outputs[i] = block + (size_t)(k + i) * length;
  isal.ec_encode_data(length, k, rows, tables, inputs, outputs); /* warm up */
  double start = now_seconds();
  for (int i = 0; i < iterations; i++) isal.ec_encode_data(length, k, rows, tables, inputs, outputs);
  double elapsed = now_seconds() - start;
  free(block);
  napi_create_double(env, elapsed, &result);
  return result;
}

/* ---- allocator: keep freed memory for reuse (see retainFreedMemory in src/codec/native.ts) ---- */

static napi_value retain_freed_memory(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  int mmap_threshold, trim_threshold, ok = 0;
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  /* glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit systems. */
  if (argc != 2 || !get_int(env, argv[0], 0, 32 << 20, &mmap_threshold) ||
      !get_int(env, argv[1], 0, INT32_MAX, &trim_threshold))
    return NULL;
#ifdef __GLIBC__
  ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 && mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1;
#endif
  napi_get_boolean(env, ok, &result);
  return result;
}

static void free_aligned(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

static napi_value aligned_buffer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  int bytes, alignment;
  void *memory = NULL;
  CHECK_NAPI(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 2 || !get_int(env, argv[0], 1, INT32_MAX, &bytes) || !get_int(env, argv[1], 512, 2 << 20, &alignment))
    return NULL;
  if ((alignment & (alignment - 1)) != 0 || bytes % alignment != 0) {
    napi_throw_range_error(env, NULL, "alignment must be a power of two dividing bytes");
    return NULL;
  }
  if (posix_memalign(&memory, (size_t)alignment, (size_t)bytes) != 0) {
    napi_throw_error(env, NULL, "posix_memalign failed");
    return NULL;
  }
#ifdef MADV_HUGEPAGE
  /* Huge pages where the kernel gives them: a direct write from one is one segment per 2 MiB rather
     than one per 4 KiB page, so the block layer need not split it (virtio-blk here takes 254 segments). */
  if (alignment >= (2 << 20)) madvise(memory, (size_t)bytes, MADV_HUGEPAGE);
#endif
  /* Zeroed: a padded tail block written from it never carries stale process memory to disk. */
  memset(memory, 0, (size_t)bytes);
  if (napi_create_external_buffer(env, (size_t)bytes, memory, free_aligned, NULL, &result) != napi_ok) {
    free(memory);
    napi_throw_error(env, NULL, "napi_create_external_buffer failed");
    return NULL;
  }
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  load_isal();
  simd_kernel_init(getenv("DOGFS_SIMD_KERNEL"));
  napi_value value;
  napi_create_string_utf8(env, simd_kernel_name(), NAPI_AUTO_LENGTH, &value);
  napi_set_named_property(env, exports, "simdKernel", value);
  if (isal.handle) napi_get_null(env, &value);
  else napi_create_string_utf8(env, isal.error[0] ? isal.error : "libisal not found", NAPI_AUTO_LENGTH, &value);
  napi_set_named_property(env, exports, "loadError", value);
  napi_create_string_utf8(env, isal.library ? isal.library : "", NAPI_AUTO_LENGTH, &value);
  napi_set_named_property(env, exports, "library", value);
  napi_get_boolean(env,
#ifdef RTLD_DEEPBIND
                   !(getenv("DOGFS_ISAL_BIND") && strcmp(getenv("DOGFS_ISAL_BIND"), "global") == 0),
#else
                   false,
#endif
                   &value);
  napi_set_named_property(env, exports, "deepBind", value);
  napi_get_boolean(env, isal.handle != NULL && isal.crc32_iscsi != NULL, &value);
  napi_set_named_property(env, exports, "hasCrc32c", value);
  {
    void *host = dlsym(RTLD_DEFAULT, "gf_mul");
    napi_get_boolean(env, host != NULL && (!isal.gf_mul || host != (void *)isal.gf_mul), &value);
    napi_set_named_property(env, exports, "hostExportsGfMul", value);
  }
  napi_property_descriptor functions[] = {
      {"encode", NULL, encode, NULL, NULL, NULL, napi_default, NULL},
      {"encodeAsync", NULL, encode_async, NULL, NULL, NULL, napi_default, NULL},
      {"genCauchyMatrix", NULL, gen_cauchy_matrix, NULL, NULL, NULL, napi_default, NULL},
      {"invertMatrix", NULL, invert_matrix, NULL, NULL, NULL, napi_default, NULL},
      {"initTables", NULL, init_tables, NULL, NULL, NULL, napi_default, NULL},
      {"gfMul", NULL, gf_mul, NULL, NULL, NULL, napi_default, NULL},
      {"benchEncode", NULL, bench_encode, NULL, NULL, NULL, napi_default, NULL},
      {"simdEncode", NULL, simd_encode, NULL, NULL, NULL, napi_default, NULL},
      {"crc32c", NULL, crc32c, NULL, NULL, NULL, napi_default, NULL},
      {"simdEncodeAsync", NULL, simd_encode_async, NULL, NULL, NULL, napi_default, NULL},
      {"retainFreedMemory", NULL, retain_freed_memory, NULL, NULL, NULL, napi_default, NULL},
      {"alignedBuffer", NULL, aligned_buffer, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof functions / sizeof functions[0], functions);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
