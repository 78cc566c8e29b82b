/*
 * Known-answer vectors for DogFS's Reed-Solomon codec, computed by Intel ISA-L itself.
 * Build and run (needs libisal-dev):
 *   cc -O2 -o /tmp/gen-vectors test/codec/vectors/gen-vectors.c -lisal && /tmp/gen-vectors > test/codec/vectors/isal-rs.json
 * For each policy and shard length: data bytes from a fixed xorshift generator, the coding matrix from
 * gf_gen_cauchy1_matrix, parity from ec_init_tables + ec_encode_data. A plain executable links libisal
 * normally; the symbol clash with node's gf_mul only exists inside node.
 */
#include <isa-l/erasure_code.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint32_t state = 0x9e3779b9u;
static uint8_t next_byte(void) {
  state ^= state << 13;
  state ^= state >> 17;
  state ^= state << 5;
  return (uint8_t)(state >> 24);
}

static void print_hex(const uint8_t *p, int n) {
  putchar('"');
  for (int i = 0; i < n; i++) printf("%02x", p[i]);
  putchar('"');
}

int main(void) {
  static const int policies[][2] = {{3, 2}, {4, 2}, {6, 3}, {10, 4}, {1, 1}, {17, 3}};
  static const int lengths[] = {1, 31, 64, 100, 257};
  int first = 1;
  printf("{\"generator\":\"ISA-L gf_gen_cauchy1_matrix + ec_init_tables + ec_encode_data\",\"xorshiftSeed\":%u,\"vectors\":[\n", state);
  for (size_t p = 0; p < sizeof policies / sizeof policies[0]; p++) {
    int k = policies[p][0], m = policies[p][1];
    for (size_t l = 0; l < sizeof lengths / sizeof lengths[0]; l++) {
      int len = lengths[l];
      uint8_t *matrix = malloc((size_t)(k + m) * k);
      uint8_t *tables = malloc((size_t)32 * k * m);
      uint8_t *data[32], *parity[32];
      gf_gen_cauchy1_matrix(matrix, k + m, k);
      ec_init_tables(k, m, &matrix[k * k], tables);
      for (int i = 0; i < k; i++) {
        data[i] = malloc(len);
        for (int b = 0; b < len; b++) data[i][b] = next_byte();
      }
      for (int i = 0; i < m; i++) parity[i] = malloc(len);
      ec_encode_data(len, k, m, tables, data, parity);
      printf("%s{\"k\":%d,\"m\":%d,\"length\":%d,\"matrix\":", first ? "" : ",\n", k, m, len);
      print_hex(matrix, (k + m) * k);
      printf(",\"data\":[");
      for (int i = 0; i < k; i++) { if (i) putchar(','); print_hex(data[i], len); }
      printf("],\"parity\":[");
      for (int i = 0; i < m; i++) { if (i) putchar(','); print_hex(parity[i], len); }
      printf("]}");
      first = 0;
      for (int i = 0; i < k; i++) free(data[i]);
      for (int i = 0; i < m; i++) free(parity[i]);
      free(matrix);
      free(tables);
    }
  }
  printf("\n]}\n");
  return 0;
}
