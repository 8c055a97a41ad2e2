/* The geometric median that initialises b_dec (method.md 1): the point that
 * minimises the sum of Euclidean distances to the first batch's activations,
 * which, unlike the mean, a few outlier tokens cannot drag away. */
#include "xc_engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Weiszfeld's iteration from the mean, as the reference trainer: each step is
 * the mean of the points weighted by 1 / distance to the current guess, until
 * the guess moves less than tol or max_iter steps ran. Sums in double so the
 * result does not depend on the point order's rounding more than it must. On a
 * failed allocation out is left untouched (callers start from b_dec = 0). */
void xc_geometric_median(const float *pts, long n, int dim, long stride, int max_iter, double tol,
                         float *out)
{
    double *g = calloc((size_t)dim, sizeof *g), *ng = calloc((size_t)dim, sizeof *ng);
    if (!g || !ng) goto out;
    for (long b = 0; b < n; b++)
        for (int i = 0; i < dim; i++) g[i] += pts[b * stride + i];
    for (int i = 0; i < dim; i++) g[i] /= (double)n;
    for (int it = 0; it < max_iter; it++) {
        double wsum = 0, shift = 0;
        memset(ng, 0, sizeof(double) * (size_t)dim);
        for (long b = 0; b < n; b++) {
            const float *p = pts + b * stride;
            double dd = 0;
            for (int i = 0; i < dim; i++) dd += (p[i] - g[i]) * (p[i] - g[i]);
            /* a point on the current guess would get weight 1/0: clamp the distance */
            double w = 1.0 / fmax(sqrt(dd), 1e-12);
            wsum += w;
            for (int i = 0; i < dim; i++) ng[i] += w * p[i];
        }
        for (int i = 0; i < dim; i++) {
            ng[i] /= wsum;
            shift += (ng[i] - g[i]) * (ng[i] - g[i]);
            g[i] = ng[i];
        }
        if (sqrt(shift) < tol) break;
    }
    for (int i = 0; i < dim; i++) out[i] = (float)g[i];
out:
    free(g);
    free(ng);
}
