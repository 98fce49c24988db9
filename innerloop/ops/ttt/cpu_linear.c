/* Fused TTT-Linear forward (dual form) for the CPU: one (batch row, head) at a time, its inner weights in L1/L2.
 *
 * Compiled by innerloop/ops/_cbuild.py with -DREAL=float|double and -DHD=<head dim>; called through ctypes by
 * cpu_linear.py. Same math as chunk.py / _scan_linear.py (README.md, "dual form"), per full mini-batch of b tokens:
 *   Z = XK W + w_b, G = d/dZ 1/2 ||gamma LN0(Z) + beta - (XV - XK)||^2        (G = Z - XV without LayerNorm)
 *   attn[r][s] = tau_r lr_s (XQ_r . XK_s + 1) for s <= r
 *   zbar = XQ W + w_b - attn G,  out = XQ + gamma LN0(zbar) + beta            (out = zbar without LayerNorm)
 *   W -= sum_s tau_{b-1} lr_s XK_s^T G_s,  w_b -= sum_s tau_{b-1} lr_s G_s
 * Layouts (contiguous REAL): q, k, v, out [B, T, H, HD]; lr [B, T, H]; tau [b]; lnw, lnb [H, HD] (NULL: no LN);
 * W [B, H, HD, HD] and wb [B, H, HD] hold the initial weights and are updated in place.
 * Rows r = bb * H + h in [r0, r1) are done by one call; scratch holds 4 * b * HD + b * b REALs. The sums over a
 * row are vectorized (omp simd reductions, -fopenmp-simd), so their order differs from PyTorch's by rounding only.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
#ifndef HD
#define HD 64
#endif

typedef int64_t i64;

/* Mean and 1 / sqrt(variance + eps) of one row (population variance, as LayerNorm). */
static inline void row_stats(const REAL *restrict z, REAL eps, REAL *mean, REAL *rstd) {
    REAL mu = 0, var = 0;
#pragma omp simd reduction(+ : mu)
    for (int j = 0; j < HD; j++) mu += z[j];
    mu /= HD;
#pragma omp simd reduction(+ : var)
    for (int j = 0; j < HD; j++) var += (z[j] - mu) * (z[j] - mu);
    *mean = mu;
    *rstd = (REAL)1 / sqrt(var / HD + eps);
}

/* G = ln_fused_l2_bwd(z, t) for one row (gamma, beta may be NULL: G = z - t). */
static inline void inner_grad(REAL *restrict g, const REAL *restrict z, const REAL *restrict t,
                              const REAL *restrict gam, const REAL *restrict bet, REAL eps) {
    if (!gam) {
        for (int j = 0; j < HD; j++) g[j] = z[j] - t[j];
        return;
    }
    REAL mu, rstd;
    row_stats(z, eps, &mu, &rstd);
    REAL gy[HD], xh[HD], s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
    for (int j = 0; j < HD; j++) {
        xh[j] = (z[j] - mu) * rstd;
        gy[j] = (gam[j] * xh[j] + bet[j] - t[j]) * gam[j];
        s1 += gy[j];
        s2 += gy[j] * xh[j];
    }
    for (int j = 0; j < HD; j++) g[j] = (HD * gy[j] - s1 - xh[j] * s2) * (rstd / HD);
}

/* out = xq + gamma LN0(zb) + beta. */
static inline void ln_out(REAL *restrict out, const REAL *restrict zb, const REAL *restrict xq,
                          const REAL *restrict gam, const REAL *restrict bet, REAL eps) {
    REAL mu, rstd;
    row_stats(zb, eps, &mu, &rstd);
    for (int j = 0; j < HD; j++) out[j] = xq[j] + gam[j] * (zb[j] - mu) * rstd + bet[j];
}

/* acc[j] = bias[j] + sum_k x[k] W[k][j] */
static inline void row_times_w(REAL *restrict acc, const REAL *restrict x, const REAL *restrict W,
                               const REAL *restrict bias) {
    REAL a[HD];
    memcpy(a, bias, sizeof a);
    for (int k = 0; k < HD; k++) {
        const REAL xk = x[k];
        const REAL *Wk = W + k * HD;
        for (int j = 0; j < HD; j++) a[j] += xk * Wk[j];
    }
    memcpy(acc, a, sizeof a);
}

/* Four rows at once (each W row loaded once for all four): acc_r[j] = bias[j] + sum_k x_r[k] W[k][j]. */
static inline void rows4_times_w(REAL *restrict o0, REAL *restrict o1, REAL *restrict o2, REAL *restrict o3,
                                 const REAL *restrict x0, const REAL *restrict x1, const REAL *restrict x2,
                                 const REAL *restrict x3, const REAL *restrict W, const REAL *restrict bias) {
    REAL a0[HD], a1[HD], a2[HD], a3[HD];
    memcpy(a0, bias, sizeof a0);
    memcpy(a1, bias, sizeof a1);
    memcpy(a2, bias, sizeof a2);
    memcpy(a3, bias, sizeof a3);
    for (int k = 0; k < HD; k++) {
        const REAL y0 = x0[k], y1 = x1[k], y2 = x2[k], y3 = x3[k];
        const REAL *Wk = W + k * HD;
        for (int j = 0; j < HD; j++) {
            const REAL w = Wk[j];
            a0[j] += y0 * w;
            a1[j] += y1 * w;
            a2[j] += y2 * w;
            a3[j] += y3 * w;
        }
    }
    memcpy(o0, a0, sizeof a0);
    memcpy(o1, a1, sizeof a1);
    memcpy(o2, a2, sizeof a2);
    memcpy(o3, a3, sizeof a3);
}

void ttt_linear_fwd(const REAL *q, const REAL *k, const REAL *v, const REAL *lr, const REAL *tau, const REAL *lnw,
                    const REAL *lnb, REAL *W, REAL *wb, REAL *out, i64 T, i64 H, i64 b, REAL eps, i64 r0, i64 r1,
                    REAL *scratch) {
    REAL *Z = scratch, *G = Z + b * HD, *ZQ = G + b * HD, *TG = ZQ + b * HD, *attn = TG + b * HD;
    const i64 n = T / b;
    const REAL tl = tau[b - 1];
    for (i64 r = r0; r < r1; r++) {
        const i64 bb = r / H, h = r % H;
        REAL *Wr = W + r * HD * HD, *br = wb + r * HD;
        const REAL *gam = lnw ? lnw + h * HD : NULL, *bet = lnb ? lnb + h * HD : NULL;
        for (i64 i = 0; i < n; i++) {
            const i64 t0 = i * b;
#define ROW(p, j) ((p) + ((bb * T + t0 + (j)) * H + h) * HD)
            i64 j0 = 0;  /* Z = XK W + w_b, ZQ = XQ W + w_b: four rows at a time, then the rest */
            for (; j0 + 1 < b; j0 += 2)
                rows4_times_w(Z + j0 * HD, Z + (j0 + 1) * HD, ZQ + j0 * HD, ZQ + (j0 + 1) * HD, ROW(k, j0),
                              ROW(k, j0 + 1), ROW(q, j0), ROW(q, j0 + 1), Wr, br);
            for (; j0 < b; j0++) {
                row_times_w(Z + j0 * HD, ROW(k, j0), Wr, br);
                row_times_w(ZQ + j0 * HD, ROW(q, j0), Wr, br);
            }
            for (i64 j = 0; j < b; j++) {  /* G = inner grad */
                const REAL *xk = ROW(k, j), *xv = ROW(v, j);
                REAL *tg = TG + j * HD;
                if (gam)
                    for (int c = 0; c < HD; c++) tg[c] = xv[c] - xk[c];
                else
                    memcpy(tg, xv, HD * sizeof(REAL));
                inner_grad(G + j * HD, Z + j * HD, tg, gam, bet, eps);
            }
            for (i64 rr = 0; rr < b; rr++) {  /* attn row rr, zbar row rr, output row rr */
                const REAL *xq = ROW(q, rr);
                for (i64 s = 0; s <= rr; s++) {
                    const REAL *xk = ROW(k, s);
                    REAL dot = 1;
#pragma omp simd reduction(+ : dot)
                    for (int c = 0; c < HD; c++) dot += xq[c] * xk[c];
                    attn[rr * b + s] = tau[rr] * lr[(bb * T + t0 + s) * H + h] * dot;
                }
                REAL zb[HD];
                memcpy(zb, ZQ + rr * HD, sizeof zb);
                for (i64 s = 0; s <= rr; s++) {
                    const REAL a = attn[rr * b + s];
                    const REAL *gs = G + s * HD;
                    for (int c = 0; c < HD; c++) zb[c] -= a * gs[c];
                }
                if (gam)
                    ln_out(ROW(out, rr), zb, xq, gam, bet, eps);
                else
                    memcpy(ROW(out, rr), zb, sizeof zb);
            }
            REAL cs[b];
            for (i64 s = 0; s < b; s++) cs[s] = tl * lr[(bb * T + t0 + s) * H + h];
            for (int kk = 0; kk < HD; kk++) {  /* W -= sum_s (tau_last lr_s XK_s)^T G_s, one row of W at a time */
                REAL a[HD];
                REAL *Wk = Wr + kk * HD;
                memcpy(a, Wk, sizeof a);
                for (i64 s = 0; s < b; s++) {
                    const REAL f = cs[s] * ROW(k, s)[kk];
                    const REAL *gs = G + s * HD;
                    for (int c = 0; c < HD; c++) a[c] -= f * gs[c];
                }
                memcpy(Wk, a, sizeof a);
            }
            for (i64 s = 0; s < b; s++)
                for (int c = 0; c < HD; c++) br[c] -= cs[s] * G[s * HD + c];
#undef ROW
        }
    }
}
