/* A stand-alone caller of the native gated delta rule, for checking builds that Python cannot load: the
   library built for another CPU (ARM, run under qemu-user) or another vector width. It includes the
   library's source, so it is built with whatever flags are being checked.

       driver INPUT OUTPUT

   INPUT: int32 B, T, H, K, V, length, has_state; float32 scale; then float32 q, k [B,T,H,K], v [B,T,H,V],
   g, beta [B,T,H], initial state [B,H,K,V] (if has_state), grad_out [B,T,H,V], grad_final [B,H,K,V], all
   contiguous. OUTPUT: int32 lanes, then float32 out, final state, dq, dk, dv, dg, dbeta, d(initial state).
   tests/test_native_widths.py writes the inputs and compares the outputs with the float64 reference. */
#include <stdio.h>

#include "../../lmsleep/ops/delta_rule/csrc/gated_delta_rule.c"

static float *read_floats(FILE *file, long n) {
    float *x = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64 + 64);
    if (!x || fread(x, sizeof(float), n, file) != (size_t)n) return NULL;
    return x;
}

static float *zeros(long n) {
    float *x = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64 + 64);
    if (x) memset(x, 0, n * sizeof(float));
    return x;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT OUTPUT\n", argv[0]);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    int dims[7];
    float scale;
    if (!in || fread(dims, sizeof(int), 7, in) != 7 || fread(&scale, sizeof(float), 1, in) != 1) return 3;
    const int B = dims[0], T = dims[1], H = dims[2], K = dims[3], V = dims[4], length = dims[5];
    const long nk = (long)B * T * H * K, nv = (long)B * T * H * V, ng = (long)B * T * H, ns = (long)B * H * K * V;
    float *q = read_floats(in, nk), *k = read_floats(in, nk), *v = read_floats(in, nv);
    float *g = read_floats(in, ng), *beta = read_floats(in, ng);
    float *state = dims[6] ? read_floats(in, ns) : NULL;
    float *grad_out = read_floats(in, nv), *grad_final = read_floats(in, ns);
    fclose(in);
    if (!q || !k || !v || !g || !beta || (dims[6] && !state) || !grad_out || !grad_final) return 3;

    const long strides[15] = {(long)T * H * K, H * K, K, (long)T * H * K, H * K, K, (long)T * H * V, H * V, V,
                              (long)T * H, H, 1, (long)T * H, H, 1};
    long sizes[2];
    lmsleep_gdr_saved_sizes(T, K, V, length, sizes);
    float *saved_states = zeros(B * H * sizes[0]), *saved_u = zeros(B * H * sizes[1]);
    float *out = zeros(nv), *final_state = zeros(ns);
    float *dq = zeros(nk), *dk = zeros(nk), *dv = zeros(nv), *dg = zeros(ng), *dbeta = zeros(ng), *dinit = zeros(ns);
    if (lmsleep_gdr_forward(q, k, v, g, beta, strides, state, final_state, out, H, T, K, V, length, scale, 0, B * H,
                            saved_states, saved_u) ||
        lmsleep_gdr_backward(q, k, v, g, beta, strides, saved_states, saved_u, grad_out, grad_final, dq, dk, dv, dg,
                             dbeta, dinit, H, T, K, V, length, scale, 0, B * H))
        return 4;

    FILE *result = fopen(argv[2], "wb");
    const int lanes = lmsleep_gdr_lanes();
    const float *outputs[8] = {out, final_state, dq, dk, dv, dg, dbeta, dinit};
    const long counts[8] = {nv, ns, nk, nk, nv, ng, ng, ns};
    if (!result || fwrite(&lanes, sizeof(int), 1, result) != 1) return 5;
    for (int n = 0; n < 8; n++)
        if (fwrite(outputs[n], sizeof(float), counts[n], result) != (size_t)counts[n]) return 5;
    return fclose(result) ? 5 : 0;
}
