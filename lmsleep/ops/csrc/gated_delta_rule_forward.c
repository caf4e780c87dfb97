/* Forward of the chunked gated delta rule for float32 on a CPU, one (batch row, head) at a time.

   Computes what lmsleep/ops/chunk_fast.py's forward computes, in its notation. Per chunk of C tokens,
   with G = cumsum(g), Γ = exp(G), D_ij = exp(G_i − G_j) (j ≤ i) and S the state entering the chunk:

       A = strict lower part of (β·K Kᵀ) ⊙ D       T = (I + A)⁻¹
       U = T diag(β) (V − Γ·K S)                    P = lower part of (q Kᵀ) ⊙ D  (q already scaled)
       O = Γ·q S + P U                              S' = Γ_C S + (K · Γ_C/Γ)ᵀ U

   Why it is faster than the same algorithm in torch ops: everything one (row, head) needs (its state,
   one chunk of q, k, v, the C×C matrices) stays in the core's cache for the whole sequence, no
   intermediate tensor is ever written to memory, and there is no per-op dispatch, so small chunks cost
   nothing extra. The products run through one small matrix kernel (`multiply`) written with GCC vector
   extensions, which the compiler maps to the machine's widest SIMD registers (-march=native).

   Every buffer is padded to whole vectors (16 floats) with zeros, and the last chunk is padded with
   tokens whose q = k = v = 0, β = 0 and g = 0, which change nothing.
   Called from Python through ctypes (lmsleep/ops/native.py) for a range of (row, head) pairs, so that
   threads can share the work; the GIL is released while it runs. */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

static int round_up(int n) { return (n + LANES - 1) / LANES * LANES; }

/* Y[m × p] (+)= X[m × n] · M[n × p]. p is a multiple of LANES; Y and M rows are LANES-aligned.
   Four rows of Y by up to four vectors of columns are held in registers across the whole sum. */
#define ROWS 4
static void multiply(int m, int n, int p, const float *X, int ldx, const float *M, int ldm, float *Y, int ldy,
                     int accumulate) {
    int j = 0;
    for (; j + 4 * LANES <= p; j += 4 * LANES) {
        int i = 0;
        for (; i + ROWS <= m; i += ROWS) {
            vec acc[ROWS][4];
            for (int r = 0; r < ROWS; r++)
                for (int c = 0; c < 4; c++)
                    acc[r][c] = accumulate ? *(const vec *)(Y + (i + r) * ldy + j + c * LANES) : (vec){0};
            for (int d = 0; d < n; d++) {
                const vec *row = (const vec *)(M + d * ldm + j);
                vec m0 = row[0], m1 = row[1], m2 = row[2], m3 = row[3];
                for (int r = 0; r < ROWS; r++) {
                    float x = X[(i + r) * ldx + d];
                    acc[r][0] += x * m0;
                    acc[r][1] += x * m1;
                    acc[r][2] += x * m2;
                    acc[r][3] += x * m3;
                }
            }
            for (int r = 0; r < ROWS; r++)
                for (int c = 0; c < 4; c++) *(vec *)(Y + (i + r) * ldy + j + c * LANES) = acc[r][c];
        }
        for (; i < m; i++) {
            vec acc[4];
            for (int c = 0; c < 4; c++) acc[c] = accumulate ? *(const vec *)(Y + i * ldy + j + c * LANES) : (vec){0};
            for (int d = 0; d < n; d++) {
                const vec *row = (const vec *)(M + d * ldm + j);
                float x = X[i * ldx + d];
                for (int c = 0; c < 4; c++) acc[c] += x * row[c];
            }
            for (int c = 0; c < 4; c++) *(vec *)(Y + i * ldy + j + c * LANES) = acc[c];
        }
    }
    for (; j < p; j += LANES) {
        int i = 0;
        for (; i + ROWS <= m; i += ROWS) {
            vec acc[ROWS];
            for (int r = 0; r < ROWS; r++) acc[r] = accumulate ? *(const vec *)(Y + (i + r) * ldy + j) : (vec){0};
            for (int d = 0; d < n; d++) {
                vec m0 = *(const vec *)(M + d * ldm + j);
                for (int r = 0; r < ROWS; r++) acc[r] += X[(i + r) * ldx + d] * m0;
            }
            for (int r = 0; r < ROWS; r++) *(vec *)(Y + (i + r) * ldy + j) = acc[r];
        }
        for (; i < m; i++) {
            vec acc = accumulate ? *(const vec *)(Y + i * ldy + j) : (vec){0};
            for (int d = 0; d < n; d++) acc += X[i * ldx + d] * *(const vec *)(M + d * ldm + j);
            *(vec *)(Y + i * ldy + j) = acc;
        }
    }
}

/* exp(G_i − G_j) for all i, j of a chunk into pair[i][j] (row stride ld), for the lower part j ≤ i.
   When the log-decays of the chunk span less than 80, it is the product exp(G_i − G_0) · exp(G_0 − G_j)
   of two factors in [e⁻⁸⁰, e⁸⁰] (no overflow, no denormal), so 2C exponentials instead of C²/2. */
static void pair_decays(int C, const float *G, float *pair, int ld, float *down, float *up) {
    float low = G[0], high = G[0];
    for (int i = 1; i < C; i++) {
        low = G[i] < low ? G[i] : low;
        high = G[i] > high ? G[i] : high;
    }
    if (high - low < 80.0f) {
        for (int i = 0; i < C; i++) {
            down[i] = expf(G[i] - G[0]);
            up[i] = expf(G[0] - G[i]);
        }
        for (int i = 0; i < C; i++)
            for (int j = 0; j <= i; j++) pair[i * ld + j] = down[i] * up[j];
    } else {
        for (int i = 0; i < C; i++)
            for (int j = 0; j <= i; j++) pair[i * ld + j] = expf(G[i] - G[j]);
    }
}

/* One (row, head): the whole sequence, chunk by chunk. Strides are in floats, for [batch, time, heads, ·]
   inputs whose last dimension is contiguous. Returns 0, or 1 if memory could not be had. */
static int one_sequence(const float *q, const float *k, const float *v, const float *g, const float *beta,
                        const long *token_strides, const float *state_in, float *state_out, float *out,
                        long out_token_stride, int T, int K, int V, int C, float scale) {
    const int Kp = round_up(K), Vp = round_up(V), Cp = round_up(C);
    size_t sizes[] = {
        (size_t)Kp * Vp,      /* S */
        (size_t)2 * C * Kp,   /* [K; q] of the chunk */
        (size_t)Kp * Cp,      /* Kᵀ, then (K · Γ_C/Γ)ᵀ */
        (size_t)2 * C * Cp,   /* [K Kᵀ; q Kᵀ], then [T diag(β); P] */
        (size_t)C * Cp,       /* pair decays D */
        (size_t)C * Vp,       /* V, then V − Γ·K S */
        (size_t)2 * C * Vp,   /* [K S; q S], then [U; O] */
        (size_t)C * Cp,       /* A, strict lower part */
        (size_t)4 * Cp,       /* G, Γ, and the two decay factors */
    };
    enum { NBUF = sizeof(sizes) / sizeof(sizes[0]) };
    size_t total = 0;
    for (int b = 0; b < NBUF; b++) total += sizes[b];
    float *memory = aligned_alloc(64, (total * sizeof(float) + 63) / 64 * 64);
    if (!memory) return 1;
    memset(memory, 0, total * sizeof(float));
    float *buffers[NBUF];
    float *cursor = memory;
    for (int b = 0; b < NBUF; b++) {
        buffers[b] = cursor;
        cursor += sizes[b];
    }
    float *S = buffers[0], *KQ = buffers[1], *KT = buffers[2], *products = buffers[3], *pair = buffers[4];
    float *R = buffers[5], *KQS = buffers[6], *A = buffers[7], *G = buffers[8];
    float *decay = G + Cp, *down = G + 2 * Cp, *up = G + 3 * Cp;
    float *Tb = products, *P = products + C * Cp;  /* T diag(β) overwrites K Kᵀ */
    float *U = KQS, *O = KQS + C * Vp;             /* U overwrites K S, O overwrites q S in place */

    if (state_in)
        for (int d = 0; d < K; d++) memcpy(S + d * Vp, state_in + (long)d * V, V * sizeof(float));

    for (int start = 0; start < T; start += C) {
        const int c = T - start < C ? T - start : C;
        float bet[C];
        /* Lay the chunk out: K rows then scaled q rows; V; G = cumsum(g); β. Padded tokens are zero. */
        float running = 0.0f;
        for (int i = 0; i < C; i++) {
            float *krow = KQ + i * Kp, *qrow = KQ + (C + i) * Kp, *vrow = R + i * Vp;
            if (i < c) {
                long t = start + i;
                memcpy(krow, k + t * token_strides[1], K * sizeof(float));
                for (int d = 0; d < K; d++) qrow[d] = q[t * token_strides[0] + d] * scale;
                memcpy(vrow, v + t * token_strides[2], V * sizeof(float));
                running += g[t * token_strides[3]];
                bet[i] = beta[t * token_strides[4]];
            } else {
                memset(krow, 0, K * sizeof(float));
                memset(qrow, 0, K * sizeof(float));
                memset(vrow, 0, V * sizeof(float));
                bet[i] = 0.0f;
            }
            G[i] = running;
            decay[i] = expf(running);
        }
        for (int d = 0; d < K; d++)
            for (int j = 0; j < C; j++) KT[d * Cp + j] = KQ[j * Kp + d];

        /* [K Kᵀ; q Kᵀ], then A = β_i (k_i·k_j) D_ij (j < i) and P = (q_i·k_j) D_ij (j ≤ i). */
        multiply(2 * C, K, Cp, KQ, Kp, KT, Cp, products, Cp, 0);
        pair_decays(C, G, pair, Cp, down, up);
        for (int i = 0; i < C; i++) {
            for (int j = 0; j < i; j++) A[i * Cp + j] = bet[i] * products[i * Cp + j] * pair[i * Cp + j];
            for (int j = 0; j <= i; j++) P[i * Cp + j] *= pair[i * Cp + j];
            for (int j = i + 1; j < Cp; j++) P[i * Cp + j] = 0.0f;
        }
        /* T = (I + A)⁻¹ row by row (T_i = e_i − Σ_{j<i} A_ij T_j), then T diag(β), over K Kᵀ. */
        for (int i = 0; i < C; i++) {
            float *row = Tb + i * Cp;
            memset(row, 0, Cp * sizeof(float));
            row[i] = 1.0f;
            for (int j = 0; j < i; j++) {
                const float a = A[i * Cp + j];
                const float *other = Tb + j * Cp;
                for (int l = 0; l <= j; l++) row[l] -= a * other[l];
            }
        }
        for (int i = 0; i < C; i++)
            for (int j = 0; j <= i; j++) Tb[i * Cp + j] *= bet[j];

        /* [K S; q S]; V − Γ·K S; U = T diag(β) (V − Γ·K S); O = Γ·q S + P U. */
        multiply(2 * C, K, Vp, KQ, Kp, S, Vp, KQS, Vp, 0);
        for (int i = 0; i < C; i++) {
            const float gamma = decay[i];
            float *r = R + i * Vp, *ks = KQS + i * Vp, *qs = KQS + (C + i) * Vp;
            for (int e = 0; e < Vp; e++) {
                r[e] -= gamma * ks[e];
                qs[e] *= gamma;
            }
        }
        multiply(C, C, Vp, Tb, Cp, R, Vp, U, Vp, 0);
        multiply(C, C, Vp, P, Cp, U, Vp, O, Vp, 1);
        for (int i = 0; i < c; i++) memcpy(out + (start + i) * out_token_stride, O + i * Vp, V * sizeof(float));

        /* S' = Γ_C S + (K · Γ_C/Γ)ᵀ U. */
        const float last = G[C - 1];
        for (int j = 0; j < C; j++) up[j] = expf(last - G[j]);
        for (int d = 0; d < K; d++)
            for (int j = 0; j < C; j++) KT[d * Cp + j] *= up[j];
        const float chunk_decay = decay[C - 1];
        for (int d = 0; d < K; d++)
            for (int e = 0; e < Vp; e++) S[d * Vp + e] *= chunk_decay;
        multiply(K, C, Vp, KT, Cp, U, Vp, S, Vp, 1);
    }
    for (int d = 0; d < K; d++) memcpy(state_out + (long)d * V, S + d * Vp, V * sizeof(float));
    free(memory);
    return 0;
}

/* The forward for (row, head) pairs first … last − 1 of float32 q, k [batch, time, heads, K], v [batch, time,
   heads, V] and g, beta [batch, time, heads], each with a contiguous last dimension (q, k, v) and the strides
   (in floats) `strides[3 · n + 0, 1, 2]` for the batch, time and heads of input n = q, k, v, g, beta.
   state_in (NULL for zeros) and state_out are contiguous [batch, heads, K, V]; out is contiguous
   [batch, time, heads, V]. Returns 0 on success, 1 if memory could not be had. */
int lmsleep_gdr_forward(const float *q, const float *k, const float *v, const float *g, const float *beta,
                        const long *strides, const float *state_in, float *state_out, float *out, int heads, int T,
                        int K, int V, int C, float scale, int first, int last) {
    for (int pair = first; pair < last; pair++) {
        const long b = pair / heads, h = pair % heads;
        const float *inputs[5] = {q, k, v, g, beta};
        long token_strides[5];
        for (int n = 0; n < 5; n++) {
            inputs[n] += b * strides[3 * n] + h * strides[3 * n + 2];
            token_strides[n] = strides[3 * n + 1];
        }
        const float *initial = state_in ? state_in + (long)pair * K * V : NULL;
        if (one_sequence(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], token_strides, initial,
                         state_out + (long)pair * K * V, out + (b * T * heads + h) * V, (long)heads * V, T, K, V,
                         C, scale))
            return 1;
    }
    return 0;
}
