/* Scanner example, in plain C over the saganet C API: prints the library's build, pools a
 * feature map whose answer is known, and shows how an error comes back. Exit 0 when all is right.
 * (The inference engine, with slides and tiles, arrives with the engine work.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <saganet/saganet.h>

int main(void) {
  enum { B = 2, C = 3, H = 4, W = 5 };
  static float features[B * C * H * W], gate[B * H * W], mask[B * H * W], z[B * C], weights[B * H * W];
  printf("%s\n", saganet_build_info());
  /* Channel c of image b is the constant 10*b + c wherever the mask is 1, and 1000 (debris)
   * where it is 0: the masked pooling must return 10*b + c exactly, never see the 1000s. */
  for (int b = 0; b < B; ++b)
    for (int p = 0; p < H * W; ++p) {
      int valid = (p % 3) != 0;
      mask[b * H * W + p] = (float)valid;
      gate[b * H * W + p] = 0.5f * (float)(p % 4);
      for (int c = 0; c < C; ++c) features[(b * C + c) * H * W + p] = valid ? (float)(10 * b + c) : 1000.0f;
    }
  if (saganet_gate_mask_pool(features, SAGANET_NCHW, gate, mask, B, C, H, W, 1e-6f, z, weights) != SAGANET_OK) {
    fprintf(stderr, "scanner: %s\n", saganet_last_error());
    return 1;
  }
  int ok = 1;
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c) {
      printf("z[%d][%d] = %.4f\n", b, c, z[b * C + c]);
      ok &= fabsf(z[b * C + c] - (float)(10 * b + c)) < 1e-3f;
    }
  /* A bad call returns a status and a message; nothing is thrown or printed by the library. */
  saganet_status s = saganet_gate_mask_pool(features, SAGANET_NCHW, gate, mask, B, -1, H, W, 1e-6f, z, NULL);
  printf("bad call -> status %d: %s\n", (int)s, saganet_last_error());
  ok &= s == SAGANET_INVALID_ARGUMENT;
  printf(ok ? "scanner: OK\n" : "scanner: WRONG RESULT\n");
  return ok ? 0 : 1;
}
