/* Fused selective scan (Mamba-1 SSM) for the CPU: one pass over time per block of W channels, the state in L1.
 *
 * Compiled once per element type by cpu_fused.py (-DREAL=float or -DREAL=double) and called through ctypes.
 * Math and gradients: README.md in this folder. Layouts (all contiguous, REAL):
 *   u, delta, y, du, ddelta   [B, T, E]
 *   Bm, Cm                    [B, T, N]
 *   At                        [N, Ep]        A transposed, channels padded with zeros to Ep = W * ceil(E / W)
 *   Dp                        [Ep]           skip D padded (may be NULL: no skip; dD is sum(dy * u), left to the caller)
 *   h0, hT, dhT, dh0          [B, E, N]      (h0 / dhT may be NULL: zeros)
 *   ck                        [B, K, N, Ep]  state at the start of every chunk of c tokens, K = ceil(T / c) (forward:
 *                                            NULL = not needed, no backward will follow)
 *   dAp                       [B, N, Ep]     dA per batch row (summed over rows by the caller)
 *   dBp, dCp                  [nEb, B, T, N] dB, dC per channel block (summed over blocks by the caller)
 * A "block" is (b, eb): batch row b, channels [eb * W, eb * W + W). Blocks [blk0, blk1) are done by one call, so the
 * caller can split the blocks over threads (ctypes releases the GIL). Lanes past E run on zeros and are never stored.
 * The exponential is our own (range reduction + Taylor polynomial) so that the lane loops vectorize with any libm.
 */
#include <stdint.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
#define W 16

typedef int64_t i64;

#if defined(__GNUC__) && !defined(__clang__)
#define SIMD _Pragma("GCC ivdep")
#else
#define SIMD
#endif

static inline REAL exp_real(REAL x) {
    /* exp(x) = 2^k * exp(r), k = rint(x / ln 2), |r| <= ln2 / 2; Taylor to the order that is exact in REAL. */
    const REAL LOG2E = (REAL)1.4426950408889634, LN2_HI = (REAL)0.693145751953125,
               LN2_LO = (REAL)1.428606820309417232e-06;
#if REAL_IS_DOUBLE
    const REAL LO = -708.0, HI = 709.0;
#else
    const REAL LO = -87.0f, HI = 88.0f;
#endif
    REAL xc = x < LO ? LO : (x > HI ? HI : x);
    REAL k = __builtin_rint(xc * LOG2E);
    REAL r = (xc - k * LN2_HI) - k * LN2_LO;
#if REAL_IS_DOUBLE
    REAL p = 1.0 / 6227020800.0;                 /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t bits = ((int64_t)(int32_t)k + 1023) << 52;
    union { int64_t i; double f; } s = {bits};
#else
    REAL p = 1.0f / 5040.0f;                     /* 1/7! */
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    union { int32_t i; float f; } s = {bits};
#endif
    return x < LO ? (REAL)0 : p * s.f;
}

/* Load W lanes of row (b, t) of a [B, T, E] tensor starting at channel e0; lanes >= wn are zero. */
static inline void load_lanes(REAL *dst, const REAL *src, int wn) {
    if (wn == W) {
        memcpy(dst, src, W * sizeof(REAL));
    } else {
        for (int w = 0; w < W; w++) dst[w] = w < wn ? src[w] : (REAL)0;
    }
}

static inline void store_lanes(REAL *dst, const REAL *src, int wn) {
    if (wn == W) {
        memcpy(dst, src, W * sizeof(REAL));
    } else {
        for (int w = 0; w < wn; w++) dst[w] = src[w];
    }
}

/* h[n][w] <- state[b, e0 + w, n] from a [B, E, N] tensor (zeros if NULL or past E). */
static void load_state(REAL *h, const REAL *s, i64 b, i64 E, i64 N, i64 e0, int wn) {
    for (i64 n = 0; n < N; n++)
        for (int w = 0; w < W; w++)
            h[n * W + w] = (s && w < wn) ? s[(b * E + e0 + w) * N + n] : (REAL)0;
}

static void store_state(REAL *s, const REAL *h, i64 b, i64 E, i64 N, i64 e0, int wn) {
    for (i64 n = 0; n < N; n++)
        for (int w = 0; w < wn; w++) s[(b * E + e0 + w) * N + n] = h[n * W + w];
}

/* One step h <- exp(d A) h + (d u) B_t; writes the decays to a_out if not NULL; returns y_t = h C_t in acc. */
static inline void step(REAL *restrict h, REAL *restrict a_out, const REAL *restrict d, const REAL *restrict x,
                        const REAL *restrict At, i64 Ep, const REAL *restrict Bt, const REAL *restrict Ct,
                        i64 N, REAL *restrict acc) {
    for (int w = 0; w < W; w++) acc[w] = 0;
    for (i64 n = 0; n < N; n++) {
        const REAL bn = Bt[n], cn = Ct[n];
        const REAL *An = At + n * Ep;
        REAL *hn = h + n * W;
        SIMD for (int w = 0; w < W; w++) {
            REAL a = exp_real(d[w] * An[w]);
            REAL hv = a * hn[w] + x[w] * bn;
            hn[w] = hv;
            acc[w] += hv * cn;
            if (a_out) a_out[n * W + w] = a;
        }
    }
}

void scan_fwd(const REAL *u, const REAL *delta, const REAL *At, const REAL *Dp, const REAL *Bm, const REAL *Cm,
              const REAL *h0, REAL *y, REAL *hT, REAL *ck, i64 Bn, i64 T, i64 E, i64 N, i64 c, i64 blk0, i64 blk1,
              REAL *scratch) {
    const i64 nEb = (E + W - 1) / W, Ep = nEb * W, K = (T + c - 1) / c;
    REAL *h = scratch;  /* N * W */
    (void)Bn;
    for (i64 blk = blk0; blk < blk1; blk++) {
        const i64 b = blk / nEb, e0 = (blk % nEb) * W;
        const int wn = (int)(E - e0 < W ? E - e0 : W);
        load_state(h, h0, b, E, N, e0, wn);
        for (i64 t = 0; t < T; t++) {
            if (ck && t % c == 0) {
                REAL *dst = ck + ((b * K + t / c) * N) * Ep + e0;
                for (i64 n = 0; n < N; n++) memcpy(dst + n * Ep, h + n * W, W * sizeof(REAL));
            }
            const i64 row = (b * T + t);
            REAL d[W], uu[W], x[W], acc[W];
            load_lanes(d, delta + row * E + e0, wn);
            load_lanes(uu, u + row * E + e0, wn);
            for (int w = 0; w < W; w++) x[w] = d[w] * uu[w];
            step(h, NULL, d, x, At + e0, Ep, Bm + row * N, Cm + row * N, N, acc);
            if (Dp)
                for (int w = 0; w < W; w++) acc[w] += Dp[e0 + w] * uu[w];
            store_lanes(y + row * E + e0, acc, wn);
        }
        store_state(hT, h, b, E, N, e0, wn);
    }
}

/* Reverse scan, chunk by chunk from the last: recompute the chunk's states and decays from its checkpoint, then
 * g_t = dy_t C_t + a_{t+1} g_{t+1} backwards, accumulating every input gradient (README.md). */
void scan_bwd(const REAL *u, const REAL *delta, const REAL *At, const REAL *Dp, const REAL *Bm, const REAL *Cm,
              const REAL *ck,
              const REAL *dy, const REAL *dhT, REAL *du, REAL *ddelta, REAL *dAp, REAL *dBp, REAL *dCp, REAL *dh0,
              i64 Bn, i64 T, i64 E, i64 N, i64 c, i64 blk0, i64 blk1, REAL *scratch) {
    const i64 nEb = (E + W - 1) / W, Ep = nEb * W, K = (T + c - 1) / c, NW = N * W;
    REAL *g = scratch, *dA = g + NW, *hs = dA + NW, *as = hs + (c + 1) * NW;  /* hs[0] = chunk start state */
    for (i64 blk = blk0; blk < blk1; blk++) {
        const i64 b = blk / nEb, eb = blk % nEb, e0 = eb * W;
        const int wn = (int)(E - e0 < W ? E - e0 : W);
        const REAL *A0 = At + e0;
        load_state(g, dhT, b, E, N, e0, wn);
        memset(dA, 0, NW * sizeof(REAL));
        for (i64 k = K - 1; k >= 0; k--) {
            const i64 s = k * c, nt = (T - s < c ? T - s : c);
            const REAL *src = ck + ((b * K + k) * N) * Ep + e0;
            for (i64 n = 0; n < N; n++) memcpy(hs + n * W, src + n * Ep, W * sizeof(REAL));
            for (i64 j = 0; j < nt; j++) {  /* recompute h_{s+j} into hs[j + 1], exp(d A) into as[j] */
                const i64 row = b * T + s + j;
                REAL d[W], x[W], acc[W];
                load_lanes(d, delta + row * E + e0, wn);
                load_lanes(x, u + row * E + e0, wn);
                for (int w = 0; w < W; w++) x[w] *= d[w];
                memcpy(hs + (j + 1) * NW, hs + j * NW, NW * sizeof(REAL));
                step(hs + (j + 1) * NW, as + j * NW, d, x, A0, Ep, Bm + row * N, Cm + row * N, N, acc);
            }
            for (i64 j = nt - 1; j >= 0; j--) {
                const i64 t = s + j, row = b * T + t;
                REAL d[W], uu[W], x[W], gy[W], gB[W], gs[W];
                load_lanes(d, delta + row * E + e0, wn);
                load_lanes(uu, u + row * E + e0, wn);
                load_lanes(gy, dy + row * E + e0, wn);
                for (int w = 0; w < W; w++) { x[w] = d[w] * uu[w]; gB[w] = 0; gs[w] = 0; }
                const REAL *Bt = Bm + row * N, *Ct = Cm + row * N;
                const REAL *hcur = hs + (j + 1) * NW, *hprev = hs + j * NW, *a = as + j * NW;
                REAL *dBt = dBp + ((eb * Bn + b) * T + t) * N, *dCt = dCp + ((eb * Bn + b) * T + t) * N;
                for (i64 n = 0; n < N; n++) {
                    const REAL bn = Bt[n], cn = Ct[n];
                    const REAL *An = A0 + n * Ep;
                    REAL *gn = g + n * W, *dAn = dA + n * W;
                    const REAL *hc = hcur + n * W, *hp = hprev + n * W, *an = a + n * W;
                    REAL sB = 0, sC = 0;
#pragma omp simd reduction(+ : sB, sC)
                    for (int w = 0; w < W; w++) {
                        REAL gv = gn[w] + gy[w] * cn;        /* dL/dh_t */
                        REAL gam = gv * an[w] * hp[w];       /* dL/d(Δ_t A) */
                        dAn[w] += gam * d[w];
                        gs[w] += gam * An[w];
                        gB[w] += gv * bn;
                        sB += gv * x[w];
                        sC += gy[w] * hc[w];
                        gn[w] = an[w] * gv;                  /* part of dL/dh_{t-1} */
                    }
                    dBt[n] = sB;
                    dCt[n] = sC;
                }
                REAL dd[W], dx[W];
                for (int w = 0; w < W; w++) { dd[w] = gs[w] + gB[w] * uu[w]; dx[w] = gB[w] * d[w]; }
                if (Dp)
                    for (int w = 0; w < W; w++) dx[w] += Dp[e0 + w] * gy[w];
                store_lanes(ddelta + row * E + e0, dd, wn);
                store_lanes(du + row * E + e0, dx, wn);
            }
        }
        store_state(dh0, g, b, E, N, e0, wn);
        for (i64 n = 0; n < N; n++) memcpy(dAp + (b * N + n) * Ep + e0, dA + n * W, W * sizeof(REAL));
    }
}
