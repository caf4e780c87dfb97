/* The chunked gated delta rule for float32 on a CPU, forward and backward, one (batch row, head) at a time.

   Computes what lmsleep/ops/chunk_fast.py computes, in its notation, and its backward the same way. Per chunk of C tokens,
   with G = cumsum(g), Γ = exp(G), D_ij = exp(G_i − G_j) (j ≤ i) and S the state entering the chunk:

       A = strict lower part of (β·K Kᵀ) ⊙ D       T = (I + A)⁻¹
       U = T diag(β) (V − Γ·K S)                    P = lower part of (q Kᵀ) ⊙ D  (q already scaled)
       O = Γ·q S + P U                              S' = Γ_C S + (K · Γ_C/Γ)ᵀ U

   Why it is faster than the same algorithm in torch ops: everything one (row, head) needs (its state,
   one chunk of q, k, v, the C×C matrices) stays in the core's cache for the whole sequence, no
   intermediate tensor is ever written to memory, and there is no per-op dispatch, so small chunks cost
   nothing extra. The products run through one small matrix kernel (`multiply`) written with GCC vector
   extensions, which the compiler maps to the machine's widest SIMD registers (-march=native).

   The backward walks the chunks from the last, with the states entering each chunk and U saved by the
   forward, and recomputes the rest of a chunk (D, A, T, P: C×C work) rather than storing it:

       dU = Pᵀ dO + (K · Γ_C/Γ) dS'                 Y = Tᵀ dU   (so dV = β·Y)
       dA = −Y Uᵀ, dP = dO Uᵀ (each ⊙ D on its part), and dS = Γ_C dS' + (Γ·q)ᵀ dO − (Γ·β·K)ᵀ Y;
       dq, dk, dβ from those, and dG_i = q_i·dq_i − k_i·dk_i + 2 β_i k_i·d(β·K)_i (+ ⟨S', dS'⟩ at the
       chunk's last token), as chunk_fast.py's backward explains; dg is the reverse cumsum of dG.

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

/* Y[rows × cols] = Xᵀ for X[cols × rows] (row strides ldx, ldy), times `factor`. */
static void transpose(int rows, int cols, const float *X, int ldx, float *Y, int ldy, float factor) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) Y[i * ldy + j] = factor * X[j * ldx + i];
}

static float dot(int n, const float *a, const float *b) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* Working memory carved from one zeroed, aligned block; every piece a whole number of vectors. */
typedef struct {
    float *memory, *cursor;
} Arena;

static float *take(Arena *arena, size_t floats) {
    float *piece = arena->cursor;
    arena->cursor += (floats + LANES - 1) / LANES * LANES;
    return piece;
}

/* One chunk's inputs and everything of it that does not depend on the state. */
typedef struct {
    int K, V, C, Kp, Vp, Cp;
    float scale;
    float *KQ;       /* [2C][Kp]: K rows, then scaled q rows */
    float *KT;       /* [Kp][Cp]: Kᵀ */
    float *values;   /* [C][Vp] */
    float *G, *decay, *to_end, *beta, *down, *up;  /* [C]: G, Γ, Γ_C/Γ, β, scratch */
    float *pair;     /* [C][Cp]: D */
    float *products; /* [2C][Cp]: K Kᵀ, q Kᵀ, then P in the second half */
    float *A;        /* [C][Cp]: strict lower part */
    float *T;        /* [C][Cp]: (I + A)⁻¹ */
    float *P;        /* = products + C·Cp */
} Chunk;

static size_t chunk_floats(int Kp, int Vp, int C, int Cp) {
    return (size_t)2 * C * Kp + (size_t)Kp * Cp + (size_t)C * Vp + 6 * (size_t)(Cp + LANES) + 5 * (size_t)C * Cp;
}

static void chunk_init(Chunk *c, Arena *arena, int K, int V, int C, float scale) {
    c->K = K, c->V = V, c->C = C, c->scale = scale;
    c->Kp = round_up(K), c->Vp = round_up(V), c->Cp = round_up(C);
    c->KQ = take(arena, (size_t)2 * C * c->Kp);
    c->KT = take(arena, (size_t)c->Kp * c->Cp);
    c->values = take(arena, (size_t)C * c->Vp);
    float **vectors[] = {&c->G, &c->decay, &c->to_end, &c->beta, &c->down, &c->up};
    for (int n = 0; n < 6; n++) *vectors[n] = take(arena, c->Cp);
    c->pair = take(arena, (size_t)C * c->Cp);
    c->products = take(arena, (size_t)2 * C * c->Cp);
    c->A = take(arena, (size_t)C * c->Cp);
    c->T = take(arena, (size_t)C * c->Cp);
    c->P = c->products + C * c->Cp;
}

/* Lay out the chunk of tokens start … start + count − 1 (zero-padded to C) and compute G, Γ, Γ_C/Γ, D,
   A, T and P. */
static void chunk_prepare(Chunk *c, const float *const inputs[5], const long token_strides[5], long start,
                          int count) {
    const int K = c->K, V = c->V, C = c->C, Kp = c->Kp, Vp = c->Vp, Cp = c->Cp;
    float running = 0.0f;
    for (int i = 0; i < C; i++) {
        float *krow = c->KQ + i * Kp, *qrow = c->KQ + (C + i) * Kp, *vrow = c->values + i * Vp;
        if (i < count) {
            const long t = start + i;
            const float *qt = inputs[0] + t * token_strides[0];
            memcpy(krow, inputs[1] + t * token_strides[1], K * sizeof(float));
            for (int d = 0; d < K; d++) qrow[d] = qt[d] * c->scale;
            memcpy(vrow, inputs[2] + t * token_strides[2], V * sizeof(float));
            running += inputs[3][t * token_strides[3]];
            c->beta[i] = inputs[4][t * token_strides[4]];
        } else {
            memset(krow, 0, K * sizeof(float));
            memset(qrow, 0, K * sizeof(float));
            memset(vrow, 0, V * sizeof(float));
            c->beta[i] = 0.0f;
        }
        c->G[i] = running;
        c->decay[i] = expf(running);
    }
    for (int j = 0; j < C; j++) c->to_end[j] = expf(c->G[C - 1] - c->G[j]);
    transpose(K, C, c->KQ, Kp, c->KT, Cp, 1.0f);

    /* [K Kᵀ; q Kᵀ], then A = β_i (k_i·k_j) D_ij (j < i) and P = (q_i·k_j) D_ij (j ≤ i). */
    multiply(2 * C, K, Cp, c->KQ, Kp, c->KT, Cp, c->products, Cp, 0);
    pair_decays(C, c->G, c->pair, Cp, c->down, c->up);
    for (int i = 0; i < C; i++) {
        for (int j = 0; j < i; j++) c->A[i * Cp + j] = c->beta[i] * c->products[i * Cp + j] * c->pair[i * Cp + j];
        for (int j = 0; j <= i; j++) c->P[i * Cp + j] *= c->pair[i * Cp + j];
        for (int j = i + 1; j < Cp; j++) c->P[i * Cp + j] = 0.0f;
    }
    /* T = (I + A)⁻¹ row by row: T_i = e_i − Σ_{j<i} A_ij T_j. */
    for (int i = 0; i < C; i++) {
        float *row = c->T + i * Cp;
        memset(row, 0, Cp * sizeof(float));
        row[i] = 1.0f;
        for (int j = 0; j < i; j++) {
            const float a = c->A[i * Cp + j];
            const float *other = c->T + j * Cp;
            for (int l = 0; l <= j; l++) row[l] -= a * other[l];
        }
    }
}

/* Pointers to one (row, head)'s first token of each input, and the inputs' time strides. */
static void locate(const float *const all[5], const long *strides, long b, long h, const float *inputs[5],
                   long token_strides[5]) {
    for (int n = 0; n < 5; n++) {
        inputs[n] = all[n] + b * strides[3 * n] + h * strides[3 * n + 2];
        token_strides[n] = strides[3 * n + 1];
    }
}

static int chunk_count(int T, int C) { return (T + C - 1) / C; }

/* One (row, head), the whole sequence. When saved_states is given, it receives the state entering each
   chunk and the last ([chunks + 1][K][V]) and saved_u the chunks' U ([chunks · C][V]). */
static int forward_one(const float *const inputs[5], const long token_strides[5], const float *state_in,
                       float *state_out, float *out, long out_token_stride, int T, int K, int V, int C,
                       float scale, float *saved_states, float *saved_u) {
    const int Kp = round_up(K), Vp = round_up(V), Cp = round_up(C);
    const size_t total = chunk_floats(Kp, Vp, C, Cp) + (size_t)Kp * Vp + (size_t)C * Cp + 2 * (size_t)C * Vp
                         + 8 * LANES;
    Arena arena = {aligned_alloc(64, (total * sizeof(float) + 63) / 64 * 64), NULL};
    if (!arena.memory) return 1;
    memset(arena.memory, 0, total * sizeof(float));
    arena.cursor = arena.memory;
    Chunk c;
    chunk_init(&c, &arena, K, V, C, scale);
    float *S = take(&arena, (size_t)Kp * Vp);
    float *Tb = take(&arena, (size_t)C * Cp);     /* T diag(β) */
    float *KQS = take(&arena, (size_t)2 * C * Vp); /* [K S; q S], then [U; O] */
    float *U = KQS, *O = KQS + C * Vp, *R = c.values;

    if (state_in)
        for (int d = 0; d < K; d++) memcpy(S + d * Vp, state_in + (long)d * V, V * sizeof(float));
    for (int start = 0, index = 0; start < T; start += C, index++) {
        const int count = T - start < C ? T - start : C;
        if (saved_states)
            for (int d = 0; d < K; d++) memcpy(saved_states + ((long)index * K + d) * V, S + d * Vp, V * sizeof(float));
        chunk_prepare(&c, inputs, token_strides, start, count);
        for (int i = 0; i < C; i++)
            for (int j = 0; j <= i; j++) Tb[i * Cp + j] = c.T[i * Cp + j] * c.beta[j];

        /* [K S; q S]; R = V − Γ·K S; U = T diag(β) R; O = Γ·q S + P U. */
        multiply(2 * C, K, Vp, c.KQ, Kp, S, Vp, KQS, Vp, 0);
        for (int i = 0; i < C; i++) {
            const float gamma = c.decay[i];
            float *r = R + i * Vp, *ks = KQS + i * Vp, *qs = KQS + (C + i) * Vp;
            for (int e = 0; e < Vp; e++) {
                r[e] -= gamma * ks[e];
                qs[e] *= gamma;
            }
        }
        multiply(C, C, Vp, Tb, Cp, R, Vp, U, Vp, 0);
        multiply(C, C, Vp, c.P, Cp, U, Vp, O, Vp, 1);
        for (int i = 0; i < count; i++) memcpy(out + (start + i) * out_token_stride, O + i * Vp, V * sizeof(float));
        if (saved_u)
            for (int i = 0; i < C; i++) memcpy(saved_u + ((long)index * C + i) * V, U + i * Vp, V * sizeof(float));

        /* S' = Γ_C S + (K · Γ_C/Γ)ᵀ U. */
        for (int d = 0; d < K; d++)
            for (int j = 0; j < C; j++) c.KT[d * Cp + j] *= c.to_end[j];
        const float chunk_decay = c.decay[C - 1];
        for (int d = 0; d < K; d++)
            for (int e = 0; e < Vp; e++) S[d * Vp + e] *= chunk_decay;
        multiply(K, C, Vp, c.KT, Cp, U, Vp, S, Vp, 1);
    }
    for (int d = 0; d < K; d++) memcpy(state_out + (long)d * V, S + d * Vp, V * sizeof(float));
    if (saved_states) memcpy(saved_states + (long)chunk_count(T, C) * K * V, state_out, (size_t)K * V * sizeof(float));
    free(arena.memory);
    return 0;
}

/* The backward of one (row, head): from dO (grad_out, time stride out_token_stride) and dS of the final
   state (grad_final, [K][V], or NULL for zeros), the gradients of q, k, v, g, β (token strides
   grad_strides = K, V and 1 times heads) and of the initial state ([K][V]). */
static int backward_one(const float *const inputs[5], const long token_strides[5], const float *saved_states,
                        const float *saved_u, const float *grad_out, long out_token_stride,
                        const float *grad_final, float *const grads[5], const long grad_strides[5],
                        float *grad_initial, int T, int K, int V, int C, float scale) {
    const int Kp = round_up(K), Vp = round_up(V), Cp = round_up(C);
    const size_t total = chunk_floats(Kp, Vp, C, Cp) + 5 * (size_t)Kp * Vp + 2 * (size_t)Kp * Cp
                         + 8 * (size_t)C * Vp + 12 * (size_t)C * Kp + 8 * (size_t)C * Cp + 24 * LANES;
    Arena arena = {aligned_alloc(64, (total * sizeof(float) + 63) / 64 * 64), NULL};
    if (!arena.memory) return 1;
    memset(arena.memory, 0, total * sizeof(float));
    arena.cursor = arena.memory;
    Chunk c;
    chunk_init(&c, &arena, K, V, C, scale);
    float *ST = take(&arena, (size_t)Vp * Kp);         /* Sᵀ of the state entering the chunk */
    float *dS = take(&arena, (size_t)Kp * Vp);         /* dS' of the state leaving it */
    float *dST = take(&arena, (size_t)Vp * Kp);
    float *dS_in = take(&arena, (size_t)Kp * Vp);      /* dS of the state entering it */
    float *U = take(&arena, (size_t)C * Vp);
    float *UT = take(&arena, (size_t)Vp * Cp);
    float *dOY = take(&arena, (size_t)2 * C * Vp);     /* [dO; Y] */
    float *dO = dOY, *Y = dOY + C * Vp;
    float *dU = take(&arena, (size_t)C * Vp);
    float *PT = take(&arena, (size_t)C * Cp), *TT = take(&arena, (size_t)C * Cp);
    float *Kend = take(&arena, (size_t)C * Kp);        /* K · Γ_C/Γ */
    float *OYS = take(&arena, (size_t)2 * C * Kp);     /* [dO; Y] Sᵀ, then dq̃ in the first half */
    float *pairs = take(&arena, (size_t)2 * C * Cp);   /* [dO; Y] Uᵀ, then [dP ⊙ D; −dA ⊙ D] */
    float *pairsK = take(&arena, (size_t)2 * C * Kp);  /* that times K, then −d(β·K) in the second half */
    float *dK = take(&arena, (size_t)C * Kp);
    float *dPT = take(&arena, (size_t)C * Cp), *dAT = take(&arena, (size_t)C * Cp);
    float *betaK = take(&arena, (size_t)C * Kp);
    float *QgT = take(&arena, (size_t)Kp * Cp), *KgbT = take(&arena, (size_t)Kp * Cp);
    float *dG = take(&arena, Cp), *dbeta_k = take(&arena, Cp);

    if (grad_final)
        for (int d = 0; d < K; d++) memcpy(dS + d * Vp, grad_final + (long)d * V, V * sizeof(float));
    const int chunks = chunk_count(T, C);
    for (int index = chunks - 1; index >= 0; index--) {
        const long start = (long)index * C;
        const int count = T - start < C ? (int)(T - start) : C;
        chunk_prepare(&c, inputs, token_strides, start, count);
        const float *S = saved_states + (long)index * K * V, *S_next = S + (long)K * V;
        transpose(V, K, S, V, ST, Kp, 1.0f);
        for (int i = 0; i < C; i++) memcpy(U + i * Vp, saved_u + (start + i) * V, V * sizeof(float));
        transpose(V, C, U, Vp, UT, Cp, 1.0f);
        for (int i = 0; i < C; i++) {
            if (i < count) memcpy(dO + i * Vp, grad_out + (start + i) * out_token_stride, V * sizeof(float));
            else memset(dO + i * Vp, 0, V * sizeof(float));
        }

        /* dU = Pᵀ dO + (K · Γ_C/Γ) dS';  Y = Tᵀ dU. */
        transpose(C, C, c.P, Cp, PT, Cp, 1.0f);
        multiply(C, C, Vp, PT, Cp, dO, Vp, dU, Vp, 0);
        for (int j = 0; j < C; j++)
            for (int d = 0; d < K; d++) Kend[j * Kp + d] = c.KQ[j * Kp + d] * c.to_end[j];
        multiply(C, K, Vp, Kend, Kp, dS, Vp, dU, Vp, 1);
        transpose(C, C, c.T, Cp, TT, Cp, 1.0f);
        multiply(C, C, Vp, TT, Cp, dU, Vp, Y, Vp, 0);

        /* [dO; Y] Sᵀ and [dO; Y] Uᵀ; the latter ⊙ D: dP on and below the diagonal, −dA below it. */
        multiply(2 * C, V, Kp, dOY, Vp, ST, Kp, OYS, Kp, 0);
        multiply(2 * C, V, Cp, dOY, Vp, UT, Cp, pairs, Cp, 0);
        for (int i = 0; i < C; i++) {
            float *dP = pairs + i * Cp, *nA = pairs + (C + i) * Cp;
            const float *D = c.pair + i * Cp;
            for (int j = 0; j < Cp; j++) {
                dP[j] = j <= i ? dP[j] * D[j] : 0.0f;
                nA[j] = j < i ? nA[j] * D[j] : 0.0f;
            }
        }
        multiply(2 * C, C, Kp, pairs, Cp, c.KQ, Kp, pairsK, Kp, 0);

        /* dq̃ = Γ·(dO Sᵀ) + (dP ⊙ D) K;  −d(β·K)-like term W = −(dA ⊙ D) K + Γ·(Y Sᵀ). */
        for (int i = 0; i < C; i++) {
            const float gamma = c.decay[i];
            float *dq = OYS + i * Kp, *w = pairsK + (C + i) * Kp;
            const float *pk = pairsK + i * Kp, *ys = OYS + (C + i) * Kp;
            for (int d = 0; d < Kp; d++) {
                dq[d] = gamma * dq[d] + pk[d];
                w[d] += gamma * ys[d];
            }
        }
        /* dk = (Γ_C/Γ)·(U dS'ᵀ) + (dP ⊙ D)ᵀ q̃ + (dA ⊙ D)ᵀ (β·K) − β·W. */
        transpose(V, K, dS, Vp, dST, Kp, 1.0f);
        multiply(C, V, Kp, U, Vp, dST, Kp, dK, Kp, 0);
        for (int j = 0; j < C; j++)
            for (int d = 0; d < Kp; d++) dK[j * Kp + d] *= c.to_end[j];
        transpose(C, C, pairs, Cp, dPT, Cp, 1.0f);
        multiply(C, C, Kp, dPT, Cp, c.KQ + C * Kp, Kp, dK, Kp, 1);
        transpose(C, C, pairs + C * Cp, Cp, dAT, Cp, -1.0f);
        for (int j = 0; j < C; j++)
            for (int d = 0; d < Kp; d++) betaK[j * Kp + d] = c.beta[j] * c.KQ[j * Kp + d];
        multiply(C, C, Kp, dAT, Cp, betaK, Kp, dK, Kp, 1);
        for (int i = 0; i < C; i++) {
            const float *w = pairsK + (C + i) * Kp;
            for (int d = 0; d < Kp; d++) dK[i * Kp + d] -= c.beta[i] * w[d];
        }

        /* dβ, dG, and the outputs of the chunk's real tokens. */
        for (int i = 0; i < C; i++) {
            const float *k = c.KQ + i * Kp, *q = c.KQ + (C + i) * Kp;
            dbeta_k[i] = -dot(K, k, pairsK + (C + i) * Kp);
            dG[i] = dot(K, q, OYS + i * Kp) - dot(K, k, dK + i * Kp) + 2.0f * c.beta[i] * dbeta_k[i];
        }
        float leaving = 0.0f;  /* ⟨S', dS'⟩ */
        for (int d = 0; d < K; d++) leaving += dot(V, S_next + (long)d * V, dS + d * Vp);
        dG[C - 1] += leaving;
        float suffix = 0.0f;
        for (int i = C - 1; i >= 0; i--) {
            suffix += dG[i];
            if (i >= count) continue;
            const long t = start + i;
            float *dq = grads[0] + t * grad_strides[0], *dk = grads[1] + t * grad_strides[1];
            float *dv = grads[2] + t * grad_strides[2];
            for (int d = 0; d < K; d++) {
                dq[d] = scale * OYS[i * Kp + d];
                dk[d] = dK[i * Kp + d];
            }
            for (int e = 0; e < V; e++) dv[e] = c.beta[i] * Y[i * Vp + e];
            grads[3][t * grad_strides[3]] = suffix;
            grads[4][t * grad_strides[4]] = dot(V, Y + i * Vp, c.values + i * Vp) + dbeta_k[i];
        }

        /* dS = Γ_C dS' + (Γ·q̃)ᵀ dO − (Γ·β·K)ᵀ Y. */
        for (int i = 0; i < C; i++)
            for (int d = 0; d < K; d++) {
                QgT[d * Cp + i] = c.decay[i] * c.KQ[(C + i) * Kp + d];
                KgbT[d * Cp + i] = -c.decay[i] * c.beta[i] * c.KQ[i * Kp + d];
            }
        const float chunk_decay = c.decay[C - 1];
        for (int d = 0; d < K; d++)
            for (int e = 0; e < Vp; e++) dS_in[d * Vp + e] = chunk_decay * dS[d * Vp + e];
        multiply(K, C, Vp, QgT, Cp, dO, Vp, dS_in, Vp, 1);
        multiply(K, C, Vp, KgbT, Cp, Y, Vp, dS_in, Vp, 1);
        float *swap = dS;
        dS = dS_in, dS_in = swap;
    }
    for (int d = 0; d < K; d++) memcpy(grad_initial + (long)d * V, dS + d * Vp, V * sizeof(float));
    free(arena.memory);
    return 0;
}

/* Inputs: float32 q, k [batch, time, heads, K], v [batch, time, heads, V], g, beta [batch, time, heads],
   each with a contiguous last dimension and strides (in floats) strides[3n + 0, 1, 2] for the batch, time
   and heads of input n = q, k, v, g, beta. Both functions run (row, head) pairs first … last − 1
   (row-major over [batch, heads]) and return 0, or 1 if memory could not be had. */

/* state_in (NULL for zeros) and state_out: contiguous [batch, heads, K, V]; out: contiguous [batch, time,
   heads, V]; saved_states (NULL, or contiguous [batch, heads, chunks + 1, K, V]) and saved_u (NULL, or
   [batch, heads, chunks · C, V]) keep what the backward needs. */
int lmsleep_gdr_forward(const float *q, const float *k, const float *v, const float *g, const float *beta,
                        const long *strides, const float *state_in, float *state_out, float *out, int heads, int T,
                        int K, int V, int C, float scale, int first, int last, float *saved_states,
                        float *saved_u) {
    const float *const all[5] = {q, k, v, g, beta};
    const long chunks = chunk_count(T, C);
    for (int pair = first; pair < last; pair++) {
        const long b = pair / heads, h = pair % heads;
        const float *inputs[5];
        long token_strides[5];
        locate(all, strides, b, h, inputs, token_strides);
        if (forward_one(inputs, token_strides, state_in ? state_in + (long)pair * K * V : NULL,
                        state_out + (long)pair * K * V, out + (b * T * heads + h) * V, (long)heads * V, T, K, V,
                        C, scale, saved_states ? saved_states + pair * (chunks + 1) * K * V : NULL,
                        saved_u ? saved_u + pair * chunks * C * V : NULL))
            return 1;
    }
    return 0;
}

/* saved_states, saved_u: as the forward wrote them; grad_out: contiguous [batch, time, heads, V];
   grad_final: contiguous [batch, heads, K, V] or NULL (zeros); dq, dk, dv, dg, dbeta: contiguous like q,
   k, v, g, beta; grad_initial: contiguous [batch, heads, K, V]. */
int lmsleep_gdr_backward(const float *q, const float *k, const float *v, const float *g, const float *beta,
                         const long *strides, const float *saved_states, const float *saved_u,
                         const float *grad_out, const float *grad_final, float *dq, float *dk, float *dv, float *dg,
                         float *dbeta, float *grad_initial, int heads, int T, int K, int V, int C, float scale,
                         int first, int last) {
    const float *const all[5] = {q, k, v, g, beta};
    const long chunks = chunk_count(T, C);
    const long grad_strides[5] = {(long)heads * K, (long)heads * K, (long)heads * V, heads, heads};
    for (int pair = first; pair < last; pair++) {
        const long b = pair / heads, h = pair % heads;
        const float *inputs[5];
        long token_strides[5];
        locate(all, strides, b, h, inputs, token_strides);
        const long token = b * T * heads + h;  /* (b, t = 0, h) in [batch, time, heads] */
        float *const grads[5] = {dq + token * K, dk + token * K, dv + token * V, dg + token, dbeta + token};
        if (backward_one(inputs, token_strides, saved_states + pair * (chunks + 1) * K * V,
                         saved_u + pair * chunks * C * V, grad_out + token * V, (long)heads * V,
                         grad_final ? grad_final + (long)pair * K * V : NULL, grads, grad_strides,
                         grad_initial + (long)pair * K * V, T, K, V, C, scale))
            return 1;
    }
    return 0;
}
