/* The chunked gated delta rule for float32 on a CPU, forward and backward, one (batch row, head) at a time.

   Computes what lmsleep/ops/delta_rule/chunk_fast.py computes, in its notation, and its backward the
   same way. Per chunk of C tokens, with G = cumsum(g), Γ = exp(G), D_ij = exp(G_i − G_j) (j ≤ i) and S
   the state entering the chunk:

       A = strict lower part of (β·K Kᵀ) ⊙ D       T = (I + A)⁻¹
       U = T diag(β) (V − Γ·K S)                    P = lower part of (q Kᵀ) ⊙ D  (q already scaled)
       O = Γ·q S + P U                              S' = Γ_C S + (K · Γ_C/Γ)ᵀ U

   Why it is faster than the same algorithm in torch ops: everything one (row, head) needs (its state,
   one chunk of q, k, v, the C×C matrices) stays in the core's cache for the whole sequence, no
   intermediate tensor is ever written to memory, and there is no per-op dispatch, so small chunks cost
   nothing extra. The products run through one small matrix kernel (`multiply`) written with GCC vector
   extensions, which the compiler maps to the machine's widest SIMD registers (-march=native).

   The backward walks the chunks from the last, with U and the states entering every few chunks saved by
   the forward; it recomputes the states in between (S' above, from U) and the rest of a chunk (D, A, T,
   P: C×C work) rather than storing them:

       dU = Pᵀ dO + (K · Γ_C/Γ) dS'                 Y = Tᵀ dU   (so dV = β·Y)
       dA = −Y Uᵀ, dP = dO Uᵀ (each ⊙ D on its part), and dS = Γ_C dS' + (Γ·q)ᵀ dO − (Γ·β·K)ᵀ Y;
       dq, dk, dβ from those, and dG_i = q_i·dq_i − k_i·dk_i + 2 β_i k_i·d(β·K)_i (+ ⟨S', dS'⟩ at the
       chunk's last token), as chunk_fast.py's backward explains; dg is the reverse cumsum of dG.

   Every buffer is padded to whole blocks of PAD = 16 floats (a whole number of vectors on every width
   below) with zeros, and so is every chunk: it is laid out as C = ⌈length / 16⌉·16 rows, those past its tokens (and past the end of the sequence) standing for
   tokens whose q = k = v = 0, β = 0 and g = 0, which change nothing.
   Called from Python through ctypes (lmsleep/ops/delta_rule/library.py; native.py wraps it as an
   autograd Function) for a range of (row, head) pairs, so that threads can share the work; the GIL is
   released while it runs. */

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The vector width, in floats, is the widest the target has, chosen when the file is compiled (the build's
   -march): 16 with AVX-512, 8 with AVX or AVX2, 4 otherwise (SSE, ARM NEON). The register blocking of
   `multiply` follows it: COLS vectors of columns by ROWS rows of accumulators, as many as the target's
   vector registers hold (32 with AVX-512 or NEON, 16 with AVX2 or SSE) with room for the operands.
   -DLMSLEEP_LANES=n picks the width by hand (for tests). */
#ifndef LMSLEEP_LANES
#if defined(__AVX512F__)
#define LMSLEEP_LANES 16
#elif defined(__AVX__)
#define LMSLEEP_LANES 8
#else
#define LMSLEEP_LANES 4
#endif
#endif
#define LANES LMSLEEP_LANES
#if defined(__AVX512F__) || defined(__aarch64__)
#define COLS 4  /* 32 vector registers: 16 accumulators */
#else
#define COLS 2  /* 16 vector registers: 8 accumulators */
#endif
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));
#define PAD 16  /* every row padded to a multiple of this many floats, whatever the width (the layout Python sizes) */

/* The width the library was built with (library.py reports it). */
int lmsleep_gdr_lanes(void) { return LANES; }

static int round_up(int n) { return (n + PAD - 1) / PAD * PAD; }

/* Y[m × p] = init_scale · init + X[m × n] · M[n × p], where init (row stride ldy, may be Y itself) is NULL
   for zeros. p is a multiple of LANES; Y, init and M rows are LANES-aligned. ROWS rows of Y by up to COLS
   vectors of columns are held in registers across the whole sum. */
#define ROWS 4
#define START(offset) (init ? init_scale * *(const vec *)(init + (offset)) : (vec){0})
static void multiply(int m, int n, int p, const float *X, int ldx, const float *M, int ldm, float *Y, int ldy,
                     const float *init, float init_scale) {
    int j = 0;
    for (; j + COLS * LANES <= p; j += COLS * LANES) {
        int i = 0;
        for (; i + ROWS <= m; i += ROWS) {
            vec acc[ROWS][COLS];
            for (int r = 0; r < ROWS; r++)
                for (int c = 0; c < COLS; c++) acc[r][c] = START((i + r) * ldy + j + c * LANES);
            for (int d = 0; d < n; d++) {
                const vec *row = (const vec *)(M + d * ldm + j);
                vec operand[COLS];
                for (int c = 0; c < COLS; c++) operand[c] = row[c];
                for (int r = 0; r < ROWS; r++) {
                    const float x = X[(i + r) * ldx + d];
                    for (int c = 0; c < COLS; c++) acc[r][c] += x * operand[c];
                }
            }
            for (int r = 0; r < ROWS; r++)
                for (int c = 0; c < COLS; c++) *(vec *)(Y + (i + r) * ldy + j + c * LANES) = acc[r][c];
        }
        for (; i < m; i++) {
            vec acc[COLS];
            for (int c = 0; c < COLS; c++) acc[c] = START(i * ldy + j + c * LANES);
            for (int d = 0; d < n; d++) {
                const vec *row = (const vec *)(M + d * ldm + j);
                const float x = X[i * ldx + d];
                for (int c = 0; c < COLS; c++) acc[c] += x * row[c];
            }
            for (int c = 0; c < COLS; c++) *(vec *)(Y + i * ldy + j + c * LANES) = acc[c];
        }
    }
    for (; j < p; j += LANES) {
        int i = 0;
        for (; i + ROWS <= m; i += ROWS) {
            vec acc[ROWS];
            for (int r = 0; r < ROWS; r++) acc[r] = START((i + r) * ldy + j);
            for (int d = 0; d < n; d++) {
                const vec m0 = *(const vec *)(M + d * ldm + j);
                for (int r = 0; r < ROWS; r++) acc[r] += X[(i + r) * ldx + d] * m0;
            }
            for (int r = 0; r < ROWS; r++) *(vec *)(Y + (i + r) * ldy + j) = acc[r];
        }
        for (; i < m; i++) {
            vec acc = START(i * ldy + j);
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

typedef int lane_index __attribute__((vector_size(LANES * sizeof(int))));

/* A LANES × LANES tile transposed in registers: log2(LANES) rounds, round h exchanging blocks of h lanes
   between rows h apart (row r takes the lower block of each 2h-lane pair from r and r + h, row r + h the
   upper), so that after h = LANES/2, …, 2, 1 row i holds column i. Lane l of the lower mask takes lane
   2h·⌊l/2h⌋ + l mod 2h of the first row while l mod 2h < h, else that lane − h of the second (index + LANES);
   the upper mask the same, h lanes on. Written out per width, since a shuffle needs constant masks. */
#define ROUNDS (LANES == 16 ? 4 : LANES == 8 ? 3 : 2)
#if LANES == 16
static const lane_index lower_blocks[ROUNDS] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
    {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
    {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
    {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
};
static const lane_index upper_blocks[ROUNDS] = {
    {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
    {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
    {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
    {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31},
};
#elif LANES == 8
static const lane_index lower_blocks[ROUNDS] = {
    {0, 1, 2, 3, 8, 9, 10, 11},
    {0, 1, 8, 9, 4, 5, 12, 13},
    {0, 8, 2, 10, 4, 12, 6, 14},
};
static const lane_index upper_blocks[ROUNDS] = {
    {4, 5, 6, 7, 12, 13, 14, 15},
    {2, 3, 10, 11, 6, 7, 14, 15},
    {1, 9, 3, 11, 5, 13, 7, 15},
};
#elif LANES == 4
static const lane_index lower_blocks[ROUNDS] = {{0, 1, 4, 5}, {0, 4, 2, 6}};
static const lane_index upper_blocks[ROUNDS] = {{2, 3, 6, 7}, {1, 5, 3, 7}};
#else
#error "LMSLEEP_LANES must be 4, 8 or 16"
#endif

/* Y[rows × cols] = factor · Xᵀ for X[cols × rows]; rows and cols multiples of LANES, row strides ldx and
   ldy multiples of LANES, X and Y aligned. */
static void transpose(int rows, int cols, const float *X, int ldx, float *Y, int ldy, float factor) {
    for (int j0 = 0; j0 < cols; j0 += LANES)
        for (int i0 = 0; i0 < rows; i0 += LANES) {
            vec tile[LANES];
#pragma GCC unroll 16
            for (int r = 0; r < LANES; r++) tile[r] = *(const vec *)(X + (j0 + r) * ldx + i0);
#pragma GCC unroll 4
            for (int round = 0; round < ROUNDS; round++) {
                const int h = (LANES / 2) >> round;
#pragma GCC unroll 16
                for (int r = 0; r < LANES; r++)
                    if (!(r & h)) {
                        vec a = tile[r], b = tile[r + h];
                        tile[r] = __builtin_shuffle(a, b, lower_blocks[round]);
                        tile[r + h] = __builtin_shuffle(a, b, upper_blocks[round]);
                    }
            }
#pragma GCC unroll 16
            for (int r = 0; r < LANES; r++) *(vec *)(Y + (i0 + r) * ldy + j0) = factor * tile[r];
        }
}

/* a·b, summed in LANES partial sums (faster, and for long vectors more accurate, than one running sum). */
static float dot(int n, const float *a, const float *b) {
    vec partial = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES) {
        vec x, y;
        memcpy(&x, a + i, sizeof x);
        memcpy(&y, b + i, sizeof y);
        partial += x * y;
    }
    /* Halves folded onto each other: log2(LANES) shuffles and adds rather than LANES − 1 scalar adds. */
    for (int half = LANES / 2; half >= 1; half /= 2) {
        lane_index across;
        for (int l = 0; l < LANES; l++) across[l] = (l + half) % LANES;
        partial += __builtin_shuffle(partial, across);
    }
    float sum = partial[0];
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* Y[i][j] = X[i][j] · row_factors[i] (or · column_factors[j]; a NULL factor is 1) for i < n, j < width. */
static void scaled_copy(int n, int width, const float *X, int ldx, float *Y, int ldy, const float *row_factors,
                        const float *column_factors) {
    for (int i = 0; i < n; i++) {
        const float f = row_factors ? row_factors[i] : 1.0f;
        if (column_factors)
            for (int j = 0; j < width; j++) Y[i * ldy + j] = f * X[i * ldx + j] * column_factors[j];
        else
            for (int j = 0; j < width; j++) Y[i * ldy + j] = f * X[i * ldx + j];
    }
}

/* Working memory carved from one zeroed, aligned block, every piece a whole number of vectors. Laid out
   twice: a first pass with no memory only counts (`take` returns NULL), then `arena_open` allocates what
   it counted and the second pass hands out the pieces. */
typedef struct {
    float *memory;
    size_t used;
} Arena;

static int arena_open(Arena *arena) {
    const size_t bytes = (arena->used * sizeof(float) + 63) / 64 * 64;
    arena->memory = aligned_alloc(64, bytes ? bytes : 64);
    if (!arena->memory) return 1;
    memset(arena->memory, 0, bytes);
    arena->used = 0;
    return 0;
}

static float *take(Arena *arena, size_t floats) {
    float *piece = arena->memory ? arena->memory + arena->used : NULL;
    arena->used += (floats + PAD - 1) / PAD * PAD;
    return piece;
}

/* One chunk's inputs and everything of it that does not depend on the state. C is the padded row count. */
typedef struct {
    int K, V, C, Kp, Vp;
    float scale;
    float *KQ;       /* [2C][Kp]: K rows, then scaled q rows */
    float *KT, *QT;  /* [Kp][C]: Kᵀ, and q̃ᵀ (the latter for the backward only) */
    float *values;   /* [C][Vp] */
    float *G, *decay, *to_end, *beta, *down, *up;  /* [C]: G, Γ, Γ_C/Γ, β, scratch */
    float *pair;     /* [C][C]: D */
    float *products; /* [2C][C]: K Kᵀ, q Kᵀ, then P in the second half */
    float *A;        /* [C][C]: strict lower part */
    float *T;        /* [C][C]: (I + A)⁻¹ */
    float *P;        /* = products + C·C */
} Chunk;

static void chunk_init(Chunk *c, Arena *arena, int K, int V, int C, float scale) {
    c->K = K, c->V = V, c->C = C, c->scale = scale;
    c->Kp = round_up(K), c->Vp = round_up(V);
    c->KQ = take(arena, (size_t)2 * C * c->Kp);
    c->KT = take(arena, (size_t)c->Kp * C);
    c->QT = take(arena, (size_t)c->Kp * C);
    c->values = take(arena, (size_t)C * c->Vp);
    float **vectors[] = {&c->G, &c->decay, &c->to_end, &c->beta, &c->down, &c->up};
    for (int n = 0; n < 6; n++) *vectors[n] = take(arena, C);
    c->pair = take(arena, (size_t)C * C);
    c->products = take(arena, (size_t)2 * C * C);
    c->A = take(arena, (size_t)C * C);
    c->T = take(arena, (size_t)C * C);
    c->P = c->products + C * C;
}

/* Lay out the tokens start … start + count − 1 (rows past them zero) and compute G, Γ, Γ_C/Γ and Kᵀ:
   all that carrying the state across the chunk needs (`advance_state`). With `keys_only`, the q and v
   rows are left as they were. */
static void chunk_load(Chunk *c, const float *const inputs[5], const long token_strides[5], long start, int count,
                       int keys_only) {
    const int K = c->K, V = c->V, C = c->C, Kp = c->Kp, Vp = c->Vp;
    float running = 0.0f;
    for (int i = 0; i < C; i++) {
        float *krow = c->KQ + i * Kp, *qrow = c->KQ + (C + i) * Kp, *vrow = c->values + i * Vp;
        if (i < count) {
            const long t = start + i;
            memcpy(krow, inputs[1] + t * token_strides[1], K * sizeof(float));
            if (!keys_only) {
                const float *qt = inputs[0] + t * token_strides[0];
                for (int d = 0; d < K; d++) qrow[d] = qt[d] * c->scale;
                memcpy(vrow, inputs[2] + t * token_strides[2], V * sizeof(float));
            }
            running += inputs[3][t * token_strides[3]];
            c->beta[i] = inputs[4][t * token_strides[4]];
        } else {
            memset(krow, 0, K * sizeof(float));
            if (!keys_only) {
                memset(qrow, 0, K * sizeof(float));
                memset(vrow, 0, V * sizeof(float));
            }
            c->beta[i] = 0.0f;
        }
        c->G[i] = running;
        c->decay[i] = expf(running);
    }
    for (int j = 0; j < C; j++) c->to_end[j] = expf(c->G[C - 1] - c->G[j]);
    transpose(Kp, C, c->KQ, Kp, c->KT, C, 1.0f);
}

/* S_out = Γ_C S_in + (K · Γ_C/Γ)ᵀ U for a chunk laid out by `chunk_load` (S_out may be S_in). Scales Kᵀ
   in place. The forward and the backward's recomputation both go through here, so that the states the
   backward recomputes are bit for bit those of the forward. */
static void advance_state(Chunk *c, const float *U, const float *S_in, float *S_out) {
    scaled_copy(c->K, c->C, c->KT, c->C, c->KT, c->C, NULL, c->to_end);
    multiply(c->K, c->C, c->Vp, c->KT, c->C, U, c->Vp, S_out, c->Vp, S_in, c->decay[c->C - 1]);
}

/* `chunk_load`, then D, A, T and P; q̃ᵀ too when `with_qt`. */
static void chunk_prepare(Chunk *c, const float *const inputs[5], const long token_strides[5], long start,
                          int count, int with_qt) {
    const int K = c->K, C = c->C, Kp = c->Kp;
    chunk_load(c, inputs, token_strides, start, count, 0);
    if (with_qt) transpose(Kp, C, c->KQ + C * Kp, Kp, c->QT, C, 1.0f);

    /* [K Kᵀ; q Kᵀ], then A = β_i (k_i·k_j) D_ij (j < i) and P = (q_i·k_j) D_ij (j ≤ i). */
    multiply(2 * C, K, C, c->KQ, Kp, c->KT, C, c->products, C, NULL, 0.0f);
    pair_decays(C, c->G, c->pair, C, c->down, c->up);
    for (int i = 0; i < C; i++) {
        for (int j = 0; j < i; j++) c->A[i * C + j] = c->beta[i] * c->products[i * C + j] * c->pair[i * C + j];
        for (int j = 0; j < C; j++) c->P[i * C + j] = j <= i ? c->P[i * C + j] * c->pair[i * C + j] : 0.0f;
    }
    /* T = (I + A)⁻¹ row by row: T_i = e_i − Σ_{j<i} A_ij T_j. */
    for (int i = 0; i < C; i++) {
        float *row = c->T + i * C;
        memset(row, 0, C * sizeof(float));
        row[i] = 1.0f;
        for (int j = 0; j < i; j++) {
            const float a = c->A[i * C + j];
            const float *other = c->T + j * C;
            for (int l = 0; l <= j; l++) row[l] -= a * other[l];
        }
    }
}

/* One (row, head) of the inputs: its batch row and head, its first token in each input, and the inputs'
   time strides. */
typedef struct {
    long b, h;
    const float *inputs[5];
    long token_strides[5];
} Sequence;

static Sequence locate(const float *const all[5], const long *strides, int pair, int heads) {
    Sequence seq = {pair / heads, pair % heads, {NULL}, {0}};
    for (int n = 0; n < 5; n++) {
        seq.inputs[n] = all[n] + seq.b * strides[3 * n] + seq.h * strides[3 * n + 2];
        seq.token_strides[n] = strides[3 * n + 1];
    }
    return seq;
}

static long chunk_count(int T, int length) { return (T + length - 1) / length; }

/* The forward keeps the state entering every `state_stride`-th chunk only, one per SPAN tokens (or every
   chunk, for chunks of SPAN tokens or more): a state (K·V floats) outweighs a short chunk's inputs, and
   writing them all to memory and reading them back cost more than the backward's recomputing the
   others from those kept and U (`advance_state`, a small part of a chunk's work). */
#define SPAN 64
static int state_stride(int length) { return length < SPAN ? SPAN / length : 1; }

/* What the forward keeps per (row, head) for the backward, in floats: the states entering chunks 0, R,
   2R, … (R = state_stride; [⌈chunks / R⌉][Kp][Vp]), and every chunk's U ([chunks][C][Vp]). */
void lmsleep_gdr_saved_sizes(int T, int K, int V, int length, long sizes[2]) {
    const long chunks = chunk_count(T, length), stride = state_stride(length);
    sizes[0] = (chunks + stride - 1) / stride * round_up(K) * round_up(V);
    sizes[1] = chunks * round_up(length) * round_up(V);
}

/* One (row, head), the whole sequence, in chunks of `length` tokens. saved_states and saved_u (or NULL)
   receive what the backward needs, as lmsleep_gdr_saved_sizes lays it out. */
static int forward_one(const float *const inputs[5], const long token_strides[5], const float *state_in,
                       float *state_out, float *out, long out_token_stride, int T, int K, int V, int length,
                       float scale, float *saved_states, float *saved_u) {
    const int Kp = round_up(K), Vp = round_up(V), C = round_up(length), stride = state_stride(length);
    Arena arena = {NULL, 0};
    Chunk c;
    float *S, *Tb, *KQS;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && arena_open(&arena)) return 1;
        chunk_init(&c, &arena, K, V, C, scale);
        S = take(&arena, (size_t)Kp * Vp);
        Tb = take(&arena, (size_t)C * C);       /* T diag(β) */
        KQS = take(&arena, (size_t)2 * C * Vp); /* [K S; q S], then [U; O] */
    }
    float *U = KQS, *O = KQS + C * Vp, *R = c.values;

    if (state_in)
        for (int d = 0; d < K; d++) memcpy(S + d * Vp, state_in + (long)d * V, V * sizeof(float));
    long index = 0;
    for (long start = 0; start < T; start += length, index++) {
        const int count = T - start < length ? (int)(T - start) : length;
        if (saved_states && index % stride == 0)
            memcpy(saved_states + index / stride * Kp * Vp, S, (size_t)Kp * Vp * sizeof(float));
        chunk_prepare(&c, inputs, token_strides, start, count, 0);
        scaled_copy(C, C, c.T, C, Tb, C, NULL, c.beta);

        /* [K S; q S]; R = V − Γ·K S; U = T diag(β) R; O = Γ·q S + P U. */
        multiply(2 * C, K, Vp, c.KQ, Kp, S, Vp, KQS, Vp, NULL, 0.0f);
        for (int i = 0; i < C; i++) {
            const float gamma = c.decay[i];
            float *r = R + i * Vp, *ks = KQS + i * Vp, *qs = KQS + (C + i) * Vp;
            for (int e = 0; e < Vp; e++) {
                r[e] -= gamma * ks[e];
                qs[e] *= gamma;
            }
        }
        multiply(C, C, Vp, Tb, C, R, Vp, U, Vp, NULL, 0.0f);
        multiply(C, C, Vp, c.P, C, U, Vp, O, Vp, O, 1.0f);
        for (int i = 0; i < count; i++) memcpy(out + (start + i) * out_token_stride, O + i * Vp, V * sizeof(float));
        if (saved_u) memcpy(saved_u + index * C * Vp, U, (size_t)C * Vp * sizeof(float));

        advance_state(&c, U, S, S);  /* S' = Γ_C S + (K · Γ_C/Γ)ᵀ U */
    }
    for (int d = 0; d < K; d++) memcpy(state_out + (long)d * V, S + d * Vp, V * sizeof(float));
    free(arena.memory);
    return 0;
}

/* The backward of one (row, head): from dO (grad_out, time stride out_token_stride) and dS of the final
   state (grad_final, [K][V], or NULL for zeros), the gradients of q, k, v, g, β (time strides
   grad_strides) and of the initial state ([K][V]). */
static int backward_one(const float *const inputs[5], const long token_strides[5], const float *saved_states,
                        const float *saved_u, const float *grad_out, long out_token_stride,
                        const float *grad_final, float *const grads[5], const long grad_strides[5],
                        float *grad_initial, int T, int K, int V, int length, float scale) {
    const int Kp = round_up(K), Vp = round_up(V), C = round_up(length), stride = state_stride(length);
    const long chunks = chunk_count(T, length), state_size = (long)Kp * Vp;
    Arena arena = {NULL, 0};
    Chunk c;
    float *states, *ST, *dS, *dS_in, *dSU, *UT, *dOY, *dU, *PT, *TT, *Kend, *OYS, *pairs, *pairsK, *dK, *dPT, *dAT, *QgT, *KgbT, *dG, *dbeta_k, *gamma_beta;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && arena_open(&arena)) return 1;
        chunk_init(&c, &arena, K, V, C, scale);
        states = take(&arena, (size_t)stride * state_size);  /* the states leaving each chunk of a group */
        ST = take(&arena, (size_t)Vp * Kp);         /* Sᵀ of the state entering the chunk */
        dS = take(&arena, (size_t)Kp * Vp);         /* dS' of the state leaving it */
        dS_in = take(&arena, (size_t)Kp * Vp);      /* dS of the state entering it */
        dSU = take(&arena, (size_t)Kp * C);         /* dS' Uᵀ */
        UT = take(&arena, (size_t)Vp * C);
        dOY = take(&arena, (size_t)2 * C * Vp);     /* [dO; Y] */
        dU = take(&arena, (size_t)C * Vp);
        PT = take(&arena, (size_t)C * C), TT = take(&arena, (size_t)C * C);
        Kend = take(&arena, (size_t)C * Kp);        /* K · Γ_C/Γ, then β·K */
        OYS = take(&arena, (size_t)2 * C * Kp);     /* [dO; Y] Sᵀ, then dq̃ in the first half */
        pairs = take(&arena, (size_t)2 * C * C);    /* [dO; Y] Uᵀ, then [dP ⊙ D; −dA ⊙ D] */
        pairsK = take(&arena, (size_t)2 * C * Kp);  /* that times K, then −d(β·K) in the second half */
        dK = take(&arena, (size_t)C * Kp);
        dPT = take(&arena, (size_t)C * C), dAT = take(&arena, (size_t)C * C);
        QgT = take(&arena, (size_t)Kp * C), KgbT = take(&arena, (size_t)Kp * C);
        dG = take(&arena, C), dbeta_k = take(&arena, C), gamma_beta = take(&arena, C);
    }
    float *dO = dOY, *Y = dOY + C * Vp;
    if (grad_final)
        for (int d = 0; d < K; d++) memcpy(dS + d * Vp, grad_final + (long)d * V, V * sizeof(float));
    for (long index = chunks - 1; index >= 0; index--) {
        /* Chunks go in groups of `stride` whose first one's entering state was saved. Entering a group
           from its end, the states leaving each of its chunks are recomputed from that one and U. */
        const long first = index / stride * stride;
        const float *saved = saved_states + first / stride * state_size;
        if (index == chunks - 1 || index % stride == stride - 1)
            for (long j = first; j <= index; j++) {
                const long start = j * length;
                chunk_load(&c, inputs, token_strides, start, T - start < length ? (int)(T - start) : length, 1);
                advance_state(&c, saved_u + j * C * Vp, j == first ? saved : states + (j - first - 1) * state_size,
                              states + (j - first) * state_size);
            }
        const long start = index * length;
        const int count = T - start < length ? (int)(T - start) : length;
        chunk_prepare(&c, inputs, token_strides, start, count, 1);
        const float *S = index == first ? saved : states + (index - first - 1) * state_size;
        const float *S_next = states + (index - first) * state_size, *U = saved_u + index * C * Vp;
        if (index > 0)  /* the next chunk's U (and the previous group's saved state), read while this one computes */
            for (long e = 0; e < (long)C * Vp + (index == first ? state_size : 0); e += 64 / sizeof(float))
                __builtin_prefetch(e < (long)C * Vp ? U - C * Vp + e : saved - state_size + (e - (long)C * Vp));
        transpose(Vp, Kp, S, Vp, ST, Kp, 1.0f);
        transpose(Vp, C, U, Vp, UT, C, 1.0f);
        for (int i = 0; i < C; i++) {
            if (i < count) memcpy(dO + i * Vp, grad_out + (start + i) * out_token_stride, V * sizeof(float));
            else memset(dO + i * Vp, 0, V * sizeof(float));
        }

        /* dU = Pᵀ dO + (K · Γ_C/Γ) dS';  Y = Tᵀ dU. */
        transpose(C, C, c.P, C, PT, C, 1.0f);
        multiply(C, C, Vp, PT, C, dO, Vp, dU, Vp, NULL, 0.0f);
        scaled_copy(C, Kp, c.KQ, Kp, Kend, Kp, c.to_end, NULL);
        multiply(C, K, Vp, Kend, Kp, dS, Vp, dU, Vp, dU, 1.0f);
        transpose(C, C, c.T, C, TT, C, 1.0f);
        multiply(C, C, Vp, TT, C, dU, Vp, Y, Vp, NULL, 0.0f);

        /* [dO; Y] Sᵀ and [dO; Y] Uᵀ; the latter ⊙ D: dP on and below the diagonal, −dA below it. */
        multiply(2 * C, V, Kp, dOY, Vp, ST, Kp, OYS, Kp, NULL, 0.0f);
        multiply(2 * C, V, C, dOY, Vp, UT, C, pairs, C, NULL, 0.0f);
        for (int i = 0; i < C; i++) {
            float *dP = pairs + i * C, *nA = pairs + (C + i) * C;
            const float *D = c.pair + i * C;
            for (int j = 0; j < C; j++) {
                dP[j] = j <= i ? dP[j] * D[j] : 0.0f;
                nA[j] = j < i ? nA[j] * D[j] : 0.0f;
            }
        }
        multiply(2 * C, C, Kp, pairs, C, c.KQ, Kp, pairsK, Kp, NULL, 0.0f);

        /* dq̃ = Γ·(dO Sᵀ) + (dP ⊙ D) K;  W = −(dA ⊙ D) K + Γ·(Y Sᵀ). */
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
        multiply(K, V, C, dS, Vp, UT, C, dSU, C, NULL, 0.0f);  /* dS' Uᵀ, rows past K stay zero */
        transpose(C, Kp, dSU, C, dK, Kp, 1.0f);
        scaled_copy(C, Kp, dK, Kp, dK, Kp, c.to_end, NULL);
        transpose(C, C, pairs, C, dPT, C, 1.0f);
        multiply(C, C, Kp, dPT, C, c.KQ + C * Kp, Kp, dK, Kp, dK, 1.0f);
        transpose(C, C, pairs + C * C, C, dAT, C, -1.0f);
        float *betaK = Kend;
        scaled_copy(C, Kp, c.KQ, Kp, betaK, Kp, c.beta, NULL);
        multiply(C, C, Kp, dAT, C, betaK, Kp, dK, Kp, dK, 1.0f);
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
        dG[C - 1] += dot(Kp * Vp, S_next, dS);  /* ⟨S', dS'⟩ */
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
        for (int i = 0; i < C; i++) gamma_beta[i] = -c.decay[i] * c.beta[i];
        scaled_copy(K, C, c.QT, C, QgT, C, NULL, c.decay);
        scaled_copy(K, C, c.KT, C, KgbT, C, NULL, gamma_beta);
        multiply(K, C, Vp, QgT, C, dO, Vp, dS_in, Vp, dS, c.decay[C - 1]);
        multiply(K, C, Vp, KgbT, C, Y, Vp, dS_in, Vp, dS_in, 1.0f);
        float *swap = dS;
        dS = dS_in, dS_in = swap;
    }
    for (int d = 0; d < K; d++) memcpy(grad_initial + (long)d * V, dS + d * Vp, V * sizeof(float));
    free(arena.memory);
    return 0;
}

/* Inputs: float32 q, k [batch, time, heads, K], v [batch, time, heads, V], g, beta [batch, time, heads],
   each with a contiguous last dimension and strides (in floats) strides[3n + 0, 1, 2] for the batch, time
   and heads of input n = q, k, v, g, beta; chunks of `length` tokens. Both functions run (row, head)
   pairs first … last − 1 (row-major over [batch, heads]) and return 0, or 1 if memory could not be had. */

/* state_in (NULL for zeros) and state_out: contiguous [batch, heads, K, V]; out: contiguous [batch, time,
   heads, V]; saved_states and saved_u (both NULL, or each as many floats per (row, head) as
   lmsleep_gdr_saved_sizes says, contiguous and 64-byte aligned) keep what the backward needs. */
int lmsleep_gdr_forward(const float *q, const float *k, const float *v, const float *g, const float *beta,
                        const long *strides, const float *state_in, float *state_out, float *out, int heads, int T,
                        int K, int V, int length, float scale, int first, int last, float *saved_states,
                        float *saved_u) {
    const float *const all[5] = {q, k, v, g, beta};
    long sizes[2];
    lmsleep_gdr_saved_sizes(T, K, V, length, sizes);
    for (int pair = first; pair < last; pair++) {
        const Sequence seq = locate(all, strides, pair, heads);
        if (forward_one(seq.inputs, seq.token_strides, state_in ? state_in + (long)pair * K * V : NULL,
                        state_out + (long)pair * K * V, out + (seq.b * T * heads + seq.h) * V, (long)heads * V, T, K, V,
                        length, scale, saved_states ? saved_states + pair * sizes[0] : NULL,
                        saved_u ? saved_u + pair * sizes[1] : NULL))
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
                         float *dbeta, float *grad_initial, int heads, int T, int K, int V, int length, float scale,
                         int first, int last) {
    const float *const all[5] = {q, k, v, g, beta};
    const long grad_strides[5] = {(long)heads * K, (long)heads * K, (long)heads * V, heads, heads};
    long sizes[2];
    lmsleep_gdr_saved_sizes(T, K, V, length, sizes);
    for (int pair = first; pair < last; pair++) {
        const Sequence seq = locate(all, strides, pair, heads);
        const long token = seq.b * T * heads + seq.h;  /* (b, t = 0, h) in [batch, time, heads] */
        float *const grads[5] = {dq + token * K, dk + token * K, dv + token * V, dg + token, dbeta + token};
        if (backward_one(seq.inputs, seq.token_strides, saved_states + pair * sizes[0], saved_u + pair * sizes[1],
                         grad_out + token * V, (long)heads * V, grad_final ? grad_final + (long)pair * K * V : NULL,
                         grads, grad_strides, grad_initial + (long)pair * K * V, T, K, V, length, scale))
            return 1;
    }
    return 0;
}
