/* One TinyRule step over one tensor in two passes, nothing allocated (innerloop/optim/learned/tiny.py is the
   reference; the rule's docstring has the formulas).

   Built by innerloop/optim/learned/_tiny_fast.py with -DREAL=float|double -DREAL_IS_DOUBLE=0|1 -DNM=<momenta, 1-3>
   -DHID=<hidden units>.
   tiny_sums (pass 1) reads g and the state (m [n, NM] row-major, v [n]) and writes nothing but the sums of squares,
   in double, of the NF = 3 + 2 NM feature columns (g, m_1..m_NM, r, g / r, m_1 / r .. m_NM / r; r = sqrt(v + eps))
   of the new state; ss[0] (the sum of g^2) is inf/nan iff a gradient is (in float; in double also on overflow), so
   the caller can refuse a bad gradient before anything is written.
   tiny_apply (pass 2) recomputes the new state and writes it, divides each feature column by its RMS over the tensor,
   runs the per-coordinate MLP NF -> HID (ReLU) -> 2 plus the linear skip NF -> 2, and writes u = d exp(a mag) b into
   out (or, with in_place, adds scale * u to out = p). */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define NF (3 + 2 * NM)

#if REAL_IS_DOUBLE
#define SQRT sqrt
#define FLOOR floor
#else
#define SQRT sqrtf
#define FLOOR floorf
#endif

#if REAL_IS_DOUBLE
typedef int64_t IBITS;
#define EXP_BIAS 1023
#define MANT 52
#define EXP_CLAMP 700.0
#else
typedef int32_t IBITS;
#define EXP_BIAS 127
#define MANT 23
#define EXP_CLAMP 80.0f
#endif

/* exp(x) for |x| <= EXP_CLAMP, vectorisable: x = k ln2 + r, |r| <= ln2 / 2, Taylor polynomial of r (degree 13 in
   double, 8 in float: truncation below the type's rounding), times 2^k built from its bits. */
static inline REAL exp_simd(REAL x) {
    x = x > (REAL)EXP_CLAMP ? (REAL)EXP_CLAMP : x;
    x = x < (REAL)-EXP_CLAMP ? (REAL)-EXP_CLAMP : x;
    REAL k = FLOOR(x * (REAL)1.4426950408889634 + (REAL)0.5);
    REAL r = x - k * (REAL)0.6931471803691238;
    r = r - k * (REAL)1.9082149292705877e-10;
#if REAL_IS_DOUBLE
    REAL q = 1.0 / 6227020800.0;
    q = q * r + 1.0 / 479001600.0;
    q = q * r + 1.0 / 39916800.0;
    q = q * r + 1.0 / 3628800.0;
    q = q * r + 1.0 / 362880.0;
    q = q * r + 1.0 / 40320.0;
    q = q * r + 1.0 / 5040.0;
#else
    REAL q = 1.0f / 40320.0f;
    q = q * r + 1.0f / 5040.0f;
#endif
    q = q * r + (REAL)(1.0 / 720.0);
    q = q * r + (REAL)(1.0 / 120.0);
    q = q * r + (REAL)(1.0 / 24.0);
    q = q * r + (REAL)(1.0 / 6.0);
    q = q * r + (REAL)0.5;
    q = q * r + (REAL)1.0;
    q = q * r + (REAL)1.0;
    IBITS bits = ((IBITS)k + EXP_BIAS) << MANT;
    REAL two_k;
    memcpy(&two_k, &bits, sizeof two_k);
    return q * two_k;
}

/* consts: decays[NM], rms_decay, eps, norm_eps, exp_mult, step_mult, scale, in_place (1: out += scale * u),
   1 - rms_decay. */

#define NEW_STATE(i)                                                                                                   \
    REAL gi = g[i];                                                                                                    \
    REAL vi = rms_decay * v[i] + omv * (gi * gi);                                                                      \
    REAL r = SQRT(vi + eps);                                                                                           \
    REAL inv_r = (REAL)1 / r;                                                                                          \
    REAL mi[NM];                                                                                                       \
    for (int j = 0; j < NM; j++) mi[j] = dec[j] * m[(i) * NM + j] + omd[j] * gi;

#define CONSTANTS                                                                                                      \
    const REAL rms_decay = consts[NM], eps = consts[NM + 1];                                                           \
    const REAL omv = consts[NM + 7];                                                                            \
    REAL dec[NM], omd[NM];                                                                                             \
    for (int j = 0; j < NM; j++) {                                                                                     \
        dec[j] = consts[j];                                                                                            \
        omd[j] = (REAL)1 - consts[j];                                                                                  \
    }

/* ss[NF]: sums of squares of the feature columns, column order g, m_1..m_NM, r, g / r, m_1 / r .. m_NM / r */
void tiny_sums(int64_t n, const REAL *g, const REAL *m, const REAL *v, const REAL *consts, double *ss) {
    CONSTANTS
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
    for (int64_t i = 0; i < n; i++) {
        NEW_STATE(i)
        REAL gr = gi * inv_r;
        s0 += (double)(gi * gi);
        s1 += (double)(r * r);
        s2 += (double)(gr * gr);
        REAL m0r = mi[0] * inv_r;
        s3 += (double)(mi[0] * mi[0]);
        s4 += (double)(m0r * m0r);
#if NM >= 2
        REAL m1r = mi[1] * inv_r;
        s5 += (double)(mi[1] * mi[1]);
        s6 += (double)(m1r * m1r);
#endif
#if NM >= 3
        REAL m2r = mi[2] * inv_r;
        s7 += (double)(mi[2] * mi[2]);
        s8 += (double)(m2r * m2r);
#endif
    }
    double msum[3] = {s3, s5, s7}, mrsum[3] = {s4, s6, s8};
    ss[0] = s0;
    for (int j = 0; j < NM; j++) ss[1 + j] = msum[j];
    ss[1 + NM] = s1;
    ss[2 + NM] = s2;
    for (int j = 0; j < NM; j++) ss[3 + NM + j] = mrsum[j];
}

/* ss[NF] from tiny_sums on the same inputs. w1 [HID, NF], b1 [HID] (progress features folded in), w2 [2, HID],
   b2 [2], skip [2, NF] (zeros for no skip). Writes m, v and out. */
void tiny_apply(int64_t n, const REAL *g, REAL *m, REAL *v, REAL *out, const REAL *w1, const REAL *b1,
                const REAL *w2, const REAL *b2, const REAL *skip, const REAL *consts, const double *ss) {
    CONSTANTS
    const REAL norm_eps = consts[NM + 2], exp_mult = consts[NM + 3], step_mult = consts[NM + 4];
    const REAL scale = consts[NM + 5];
    const int in_place = consts[NM + 6] != 0;
    REAL inv[NF];
    for (int f = 0; f < NF; f++) {
        REAL mean = (REAL)(ss[f] / (double)(n > 0 ? n : 1));
        inv[f] = (REAL)1 / SQRT(mean + norm_eps);
    }
    /* the column scales folded into the first layer and the skip */
    REAL w1s[HID][NF], sk0[NF], sk1[NF], w20[HID], w21[HID], b1s[HID];
    for (int h = 0; h < HID; h++) {
        for (int f = 0; f < NF; f++) w1s[h][f] = w1[h * NF + f] * inv[f];
        b1s[h] = b1[h];
        w20[h] = w2[h];
        w21[h] = w2[HID + h];
    }
    for (int f = 0; f < NF; f++) {
        sk0[f] = skip[f] * inv[f];
        sk1[f] = skip[NF + f] * inv[f];
    }
    const REAL c0 = b2[0], c1 = b2[1];
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        NEW_STATE(i)
        v[i] = vi;
        for (int j = 0; j < NM; j++) m[i * NM + j] = mi[j];
        REAL x[NF];
        x[0] = gi;
        for (int j = 0; j < NM; j++) x[1 + j] = mi[j];
        x[1 + NM] = r;
        x[2 + NM] = gi * inv_r;
        for (int j = 0; j < NM; j++) x[3 + NM + j] = mi[j] * inv_r;
        REAL d = c0, mag = c1;
        for (int f = 0; f < NF; f++) {
            d += sk0[f] * x[f];
            mag += sk1[f] * x[f];
        }
        for (int h = 0; h < HID; h++) {
            REAL a = b1s[h];
            for (int f = 0; f < NF; f++) a += w1s[h][f] * x[f];
            a = a > 0 ? a : 0;
            d += w20[h] * a;
            mag += w21[h] * a;
        }
        REAL u = d * exp_simd(mag * exp_mult) * step_mult;
        if (in_place)
            out[i] += scale * u;
        else
            out[i] = u;
    }
}
