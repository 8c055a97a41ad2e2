/* Activation normalisation (xc_norm.h): the reference's RunningStatWelford and
 * NormalizableMixin, in C. */
#include "xc_norm.h"

#include "xc_error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int xc_norm_init(xc_norm_t *z, int d, xc_norm_mode_t mode, float target_rms)
{
    memset(z, 0, sizeof *z);
    if (d < 1 || mode < XC_NORM_OFF || mode > XC_NORM_NEURON || !(target_rms > 0)) return XC_EINVAL;
    z->mode = mode;
    z->d = d;
    z->target_rms = target_rms;
    z->scale[0] = z->scale[1] = 1.0f;
    size_t n = 2 * (size_t)d;
    /* all owned by z; xc_norm_free */
    z->w_mean = calloc(n, sizeof(double));
    z->w_m2 = calloc(n, sizeof(double));
    z->w_tmp = calloc(2 * n, sizeof(double));
    z->mean = malloc(n * sizeof(float));
    z->std = malloc(n * sizeof(float));
    if (!z->w_mean || !z->w_m2 || !z->w_tmp || !z->mean || !z->std) {
        xc_norm_free(z);
        return XC_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) z->mean[i] = z->std[i] = NAN; /* the reference's "no normaliser" */
    return XC_OK;
}

void xc_norm_free(xc_norm_t *z)
{
    if (!z) return;
    free(z->w_mean);
    free(z->w_m2);
    free(z->w_tmp);
    free(z->mean);
    free(z->std);
    z->w_mean = z->w_m2 = z->w_tmp = NULL;
    z->mean = z->std = NULL;
    z->ready = 0;
}

/* Why per batch and not per token: this is RunningStatWelford.update exactly
 * (batch mean and M2 in float64, then one merge), so the statistics are the
 * reference's for the same tokens in the same batches, and the merge keeps the
 * cancellation of a naive sum of squares away. */
void xc_norm_add(xc_norm_t *z, const float *x, long n)
{
    if (n < 1 || z->ready) return;
    size_t d2 = 2 * (size_t)z->d;
    double *bm = z->w_tmp, *bq = z->w_tmp + d2;
    memset(bm, 0, d2 * sizeof(double));
    memset(bq, 0, d2 * sizeof(double));
    for (long b = 0; b < n; b++)
        for (size_t i = 0; i < d2; i++) bm[i] += x[(size_t)b * d2 + i];
    for (size_t i = 0; i < d2; i++) bm[i] /= (double)n;
    for (long b = 0; b < n; b++)
        for (size_t i = 0; i < d2; i++) {
            double c = x[(size_t)b * d2 + i] - bm[i];
            bq[i] += c * c;
        }
    double cnt = (double)z->count, tot = cnt + (double)n;
    for (size_t i = 0; i < d2; i++) {
        double delta = bm[i] - z->w_mean[i];
        z->w_mean[i] += delta * (double)n / tot;
        z->w_m2[i] += bq[i] + delta * delta * cnt * (double)n / tot;
    }
    z->count += (uint64_t)n;
}

int xc_norm_finish(xc_norm_t *z)
{
    if (z->mode == XC_NORM_OFF) return XC_OK;
    if (z->count < 2) return XC_ESTATE;
    size_t d = (size_t)z->d;
    for (int m = 0; m < 2; m++) {
        double tv = 0;
        for (size_t i = m * d; i < (m + 1) * d; i++) {
            double var = z->w_m2[i] / (double)(z->count - 1);
            z->mean[i] = (float)z->w_mean[i];
            z->std[i] = (float)sqrt(var);
            if (!isfinite(z->mean[i]) || !isfinite(z->std[i])) return XC_ENONFINITE;
            tv += (double)z->std[i] * z->std[i];
        }
        if (!(tv > 0)) return XC_ENONFINITE;
        /* target_rms / sqrt(total_var + 1e-8) (global); the reference registers ones otherwise */
        z->scale[m] = z->mode == XC_NORM_GLOBAL ? (float)(z->target_rms / sqrt(tv + 1e-8)) : 1.0f;
        if (!isfinite(z->scale[m]) || !(z->scale[m] > 0)) return XC_ENONFINITE;
    }
    z->ready = 1;
    return XC_OK;
}

void xc_norm_restore(xc_norm_t *z, const float *mean, const float *std, const float scale[2])
{
    size_t n = 2 * (size_t)z->d;
    memcpy(z->mean, mean, n * sizeof(float));
    memcpy(z->std, std, n * sizeof(float));
    z->scale[0] = scale[0];
    z->scale[1] = scale[1];
    z->ready = z->mode != XC_NORM_OFF;
}

/* float32 arithmetic in the reference's order: (x - mean) then * a, or / (std + 1e-8). */
void xc_norm_apply(const xc_norm_t *z, float *x, long n)
{
    if (!z->ready) return;
    size_t d = (size_t)z->d, d2 = 2 * d;
    const float eps = 1e-8f;
    for (long b = 0; b < n; b++) {
        float *r = x + (size_t)b * d2;
        for (int m = 0; m < 2; m++) {
            const float *mu = z->mean + m * d, *sd = z->std + m * d;
            float *v = r + m * d, a = z->scale[m];
            if (z->mode == XC_NORM_GLOBAL)
                for (size_t i = 0; i < d; i++) v[i] = (v[i] - mu[i]) * a;
            else
                for (size_t i = 0; i < d; i++) v[i] = (v[i] - mu[i]) / (sd[i] + eps);
        }
    }
}

void xc_norm_unapply(const xc_norm_t *z, float *x, long n)
{
    if (!z->ready) return;
    size_t d = (size_t)z->d, d2 = 2 * d;
    const float eps = 1e-8f;
    for (long b = 0; b < n; b++) {
        float *r = x + (size_t)b * d2;
        for (int m = 0; m < 2; m++) {
            const float *mu = z->mean + m * d, *sd = z->std + m * d;
            float *v = r + m * d, a = z->scale[m] + eps;
            if (z->mode == XC_NORM_GLOBAL)
                for (size_t i = 0; i < d; i++) v[i] = v[i] / a + mu[i];
            else
                for (size_t i = 0; i < d; i++) v[i] = v[i] * (sd[i] + eps) + mu[i];
        }
    }
}

void xc_norm_fve_weights(const xc_norm_t *z, float *w)
{
    size_t d = (size_t)z->d;
    for (int m = 0; m < 2; m++)
        for (size_t i = m * d; i < (m + 1) * d; i++) {
            double f = !z->ready ? 1.0 : z->mode == XC_NORM_GLOBAL ? 1.0 / ((double)z->scale[m] + 1e-8)
                                                                   : (double)z->std[i] + 1e-8;
            w[i] = (float)(f * f);
        }
}

int xc_norm_beta_factor(const xc_norm_t *z, int m, double *factor)
{
    *factor = 1.0;
    if (!z->ready) return XC_OK;
    if (z->mode != XC_NORM_GLOBAL) return XC_EINVAL;
    *factor = (double)z->scale[1] / (double)z->scale[m];
    return XC_OK;
}

int xc_norm_nu_factor(const xc_norm_t *z, double *factor) { return xc_norm_beta_factor(z, 0, factor); }

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The median of each model's token norms in this batch (upper median for an
 * even count: one of the norms, no interpolation), then the rule. A sort per
 * batch is O(n log n) on n floats: nothing beside the O(n d) norms. */
long xc_norm_outliers(const float *x, long n, int d, double factor, double median[2], float *scratch,
                      unsigned char *keep)
{
    size_t d2 = 2 * (size_t)d;
    long dropped = 0;
    for (long b = 0; b < n; b++) keep[b] = 1;
    if (!(factor > 0) || n < 1) return 0;
    for (int m = 0; m < 2; m++) {
        if (n >= 16) {
            for (long b = 0; b < n; b++) {
                const float *v = x + (size_t)b * d2 + (size_t)m * d;
                double s = 0;
                for (int i = 0; i < d; i++) s += (double)v[i] * v[i];
                scratch[b] = (float)sqrt(s);
            }
            qsort(scratch, (size_t)n, sizeof(float), cmp_float);
            median[m] = scratch[n / 2];
        }
        if (!(median[m] > 0)) continue;
        double lim = factor * median[m];
        for (long b = 0; b < n; b++) {
            if (!keep[b]) continue;
            const float *v = x + (size_t)b * d2 + (size_t)m * d;
            double s = 0;
            for (int i = 0; i < d; i++) s += (double)v[i] * v[i];
            if (sqrt(s) > lim) keep[b] = 0, dropped++;
        }
    }
    return dropped;
}

int xc_norm_scaling_to_original(const xc_norm_t *z, xc_scaling_stats_t *s, long n)
{
    double f0, f1;
    if (!z->ready || xc_norm_beta_factor(z, 0, &f0) || xc_norm_beta_factor(z, 1, &f1)) return 0;
    for (long j = 0; j < n; j++) {
        s[j].beta_err[0] = (float)(s[j].beta_err[0] * f0);
        s[j].beta_rec[0] = (float)(s[j].beta_rec[0] * f0);
        s[j].beta_err[1] = (float)(s[j].beta_err[1] * f1);
        s[j].beta_rec[1] = (float)(s[j].beta_rec[1] * f1);
        s[j].nu_err = (float)(s[j].nu_err * f0 / f1);
        s[j].nu_rec = (float)(s[j].nu_rec * f0 / f1);
    }
    return 1;
}
