/* The mixing buffer and stream mixtures (see xc_mixbuf.h). */
#include "xc_mixbuf.h"
#include "xc_error.h"
#include "xc_log.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct xc_mixbuf {
    xc_mix_spec_t m;
    int lanes, d2;
    long slots, batch;
    long off[XC_MIX_MAX], cap[XC_MIX_MAX], count[XC_MIX_MAX];
    float *rows;          /* (slots, d2); owned */
    xc_tokmeta_t *tm;     /* (slots); owned */
    int64_t table[XC_MIX_MAX][3]; /* checkpoint: capacity, fill, name hash per lane */
};

/* ------------------------------------------------------------ mixtures -- */
static int tag_char(int c) { return isalnum(c) || c == '.' || c == '_' || c == ':' || c == '/' || c == '-'; }

/* Parses one "NAME:WEIGHT" entry of [s, e) into slot i. */
static int parse_entry(const char *s, const char *e, xc_mix_spec_t *m, char *why, size_t wl)
{
    while (s < e && isspace((unsigned char)*s)) s++;
    while (e > s && isspace((unsigned char)e[-1])) e--;
    const char *colon = NULL;
    for (const char *p = s; p < e; p++)
        if (*p == ':') colon = p; /* the last one: tags may hold ':' */
    if (!colon) {
        xc_why(why, wl, "stream_mix entry '%.*s' is not NAME:WEIGHT (e.g. web:0.5)", (int)(e - s), s);
        return XC_ECONFIG;
    }
    const char *ne = colon;
    while (ne > s && isspace((unsigned char)ne[-1])) ne--;
    size_t nl = (size_t)(ne - s);
    int ok = nl >= 1 && nl <= XC_PROTO_STREAM_MAX;
    for (size_t i = 0; i < nl && ok; i++) ok = tag_char((unsigned char)s[i]);
    if (nl == 1 && s[0] == '*') ok = 1;
    if (!ok) {
        xc_why(why, wl, "stream_mix: '%.*s' is not a stream tag (1-%d bytes of [A-Za-z0-9._:/-]) or '*'", (int)nl, s,
               XC_PROTO_STREAM_MAX);
        return XC_ECONFIG;
    }
    char num[64];
    size_t vl = (size_t)(e - colon - 1);
    snprintf(num, sizeof num, "%.*s", (int)(vl < sizeof num - 1 ? vl : sizeof num - 1), colon + 1);
    char *end;
    double w = strtod(num, &end);
    while (*end && isspace((unsigned char)*end)) end++;
    if (end == num || *end || !(w > 0) || !isfinite(w)) {
        xc_why(why, wl, "stream_mix: the weight of '%.*s' must be a number > 0, got '%s'", (int)nl, s, num);
        return XC_ECONFIG;
    }
    for (int i = 0; i < m->n; i++)
        if (strlen(m->name[i]) == nl && memcmp(m->name[i], s, nl) == 0) {
            xc_why(why, wl, "stream_mix names '%.*s' twice", (int)nl, s);
            return XC_ECONFIG;
        }
    if (m->n == XC_MIX_MAX) {
        xc_why(why, wl, "stream_mix has more than %d streams", XC_MIX_MAX);
        return XC_ECONFIG;
    }
    memcpy(m->name[m->n], s, nl);
    m->name[m->n][nl] = 0;
    if (nl == 1 && s[0] == '*') m->other = m->n;
    m->share[m->n++] = w;
    return XC_OK;
}

int xc_mix_parse(const char *text, xc_mix_spec_t *out, char *why, size_t why_len)
{
    xc_mix_spec_t m;
    memset(&m, 0, sizeof m);
    m.other = -1;
    const char *p = text ? text : "";
    while (*p && isspace((unsigned char)*p)) p++;
    if (*p) {
        for (;;) {
            const char *comma = strchr(p, ',');
            const char *e = comma ? comma : p + strlen(p);
            int rc = parse_entry(p, e, &m, why, why_len);
            if (rc) return rc;
            if (!comma) break;
            p = comma + 1;
        }
        double sum = 0;
        for (int i = 0; i < m.n; i++) sum += m.share[i];
        for (int i = 0; i < m.n; i++) m.share[i] /= sum;
    }
    *out = m;
    return XC_OK;
}

int xc_mix_lanes(const xc_mix_spec_t *m) { return m->n > 0 ? m->n : 1; }

int xc_mix_lane(const xc_mix_spec_t *m, const char *stream)
{
    if (m->n == 0) return 0;
    for (int i = 0; i < m->n; i++)
        if (i != m->other && strcmp(m->name[i], stream ? stream : "") == 0) return i;
    return m->other;
}

long xc_mix_capacities(const xc_mix_spec_t *m, long capacity, long *cap)
{
    long sum = 0;
    if (m->n == 0) {
        cap[0] = capacity;
        return capacity;
    }
    for (int i = 0; i < m->n; i++) {
        /* the 1e-9 keeps an exact product (0.5 x 512) from rounding up */
        cap[i] = (long)ceil((double)capacity * m->share[i] - 1e-9);
        if (cap[i] < 1) cap[i] = 1;
        sum += cap[i];
    }
    return sum;
}

void xc_mix_quota(const xc_mix_spec_t *m, long B, xc_rng_t *rng, long *q)
{
    if (m->n == 0) {
        q[0] = B;
        return;
    }
    double frac[XC_MIX_MAX];
    long given = 0;
    for (int i = 0; i < m->n; i++) {
        double x = (double)B * m->share[i];
        double fl = floor(x + 1e-9);
        q[i] = (long)fl;
        frac[i] = x - fl > 1e-9 ? x - fl : 0.0;
        given += q[i];
    }
    long R = B - given;
    if (R <= 0) return;
    /* systematic sampling: points u, u+1, ..., u+R-1 on the line of the
     * fractional parts laid end to end; each part < 1 holds at most one */
    double u = xc_rng_uniform(rng), cum = 0, next = u;
    int got[XC_MIX_MAX] = {0};
    long picked = 0;
    for (int i = 0; i < m->n && picked < R; i++) {
        if (frac[i] <= 0) continue;
        cum += frac[i];
        if (next < cum) {
            q[i]++, got[i] = 1, picked++;
            next += 1.0;
        }
    }
    /* rounding of the parts' sum may leave the last point just past the end */
    for (int i = m->n - 1; i >= 0 && picked < R; i--)
        if (frac[i] > 0 && !got[i]) q[i]++, got[i] = 1, picked++;
}

/* ------------------------------------------------------------- buffer -- */
/* FNV-1a of a lane's name, stored with the checkpoint so that a changed
 * mixture does not restore tokens into the wrong lanes. */
static int64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return (int64_t)(h >> 1);
}

xc_mixbuf_t *xc_mixbuf_new(const xc_mix_spec_t *m, long capacity, long batch, int d2, int *err)
{
    *err = XC_EINVAL;
    if (capacity < batch || batch < 1 || d2 < 1) return NULL;
    xc_mixbuf_t *mb = calloc(1, sizeof *mb); /* owned by the caller; xc_mixbuf_destroy */
    *err = XC_ENOMEM;
    if (!mb) return NULL;
    mb->m = *m;
    mb->lanes = xc_mix_lanes(m);
    mb->d2 = d2;
    mb->batch = batch;
    mb->slots = xc_mix_capacities(m, capacity, mb->cap);
    for (int l = 1; l < mb->lanes; l++) mb->off[l] = mb->off[l - 1] + mb->cap[l - 1];
    mb->rows = malloc((size_t)mb->slots * (size_t)d2 * sizeof(float));
    mb->tm = malloc((size_t)mb->slots * sizeof *mb->tm);
    if (!mb->rows || !mb->tm) {
        xc_mixbuf_destroy(&mb);
        return NULL;
    }
    for (long i = 0; i < mb->slots; i++) mb->tm[i] = (xc_tokmeta_t){XC_EX_NONE, 0, 0, XC_EX_NOSRC, 0};
    *err = XC_OK;
    return mb;
}

void xc_mixbuf_destroy(xc_mixbuf_t **pmb)
{
    xc_mixbuf_t *mb = pmb ? *pmb : NULL;
    if (!mb) return;
    free(mb->rows);
    free(mb->tm);
    free(mb);
    *pmb = NULL;
}

int xc_mixbuf_lanes(const xc_mixbuf_t *mb) { return mb->lanes; }

long xc_mixbuf_room(const xc_mixbuf_t *mb, int lane) { return mb->cap[lane] - mb->count[lane]; }

long xc_mixbuf_buffered(const xc_mixbuf_t *mb, int lane)
{
    if (lane >= 0) return mb->count[lane];
    long n = 0;
    for (int l = 0; l < mb->lanes; l++) n += mb->count[l];
    return n;
}

int xc_mixbuf_ready(const xc_mixbuf_t *mb)
{
    for (int l = 0; l < mb->lanes; l++)
        if (mb->count[l] < mb->cap[l]) return 0;
    return 1;
}

void xc_mixbuf_put(xc_mixbuf_t *mb, int lane, const float *x, const xc_tokmeta_t *tm, long n)
{
    long at = mb->off[lane] + mb->count[lane];
    memcpy(mb->rows + (size_t)at * mb->d2, x, (size_t)n * mb->d2 * sizeof(float));
    if (tm) memcpy(mb->tm + at, tm, (size_t)n * sizeof *tm);
    else xc_tokmeta_fill(mb->tm + at, n, NULL, NULL);
    mb->count[lane] += n;
}

/* Per lane: pick a slot uniformly, copy it out, move the lane's last token
 * into the hole (each token's context moves with it). With one lane this is
 * the plain draw of PROTOCOL.md 1.4, random number for random number. */
void xc_mixbuf_draw(xc_mixbuf_t *mb, xc_rng_t *rng, float *batch, xc_tokmeta_t *batch_tm, long *counts)
{
    size_t row = (size_t)mb->d2 * sizeof(float);
    long q[XC_MIX_MAX], i = 0;
    xc_mix_quota(&mb->m, mb->batch, rng, q);
    for (int l = 0; l < mb->lanes; l++) {
        float *base = mb->rows + (size_t)mb->off[l] * mb->d2;
        xc_tokmeta_t *tb = mb->tm + mb->off[l];
        for (long k = 0; k < q[l]; k++, i++) {
            long j = (long)xc_rng_below(rng, (uint64_t)mb->count[l]);
            memcpy(batch + (size_t)i * mb->d2, base + (size_t)j * mb->d2, row);
            batch_tm[i] = tb[j];
            long last = --mb->count[l];
            if (j != last) {
                memcpy(base + (size_t)j * mb->d2, base + (size_t)last * mb->d2, row);
                tb[j] = tb[last];
            }
        }
        if (counts) counts[l] = q[l];
    }
}

float *xc_mixbuf_rows(xc_mixbuf_t *mb, long *slots)
{
    if (slots) *slots = mb->slots;
    return mb->rows;
}

xc_tokmeta_t *xc_mixbuf_context(xc_mixbuf_t *mb) { return mb->tm; }

int64_t *xc_mixbuf_lane_table(xc_mixbuf_t *mb)
{
    for (int l = 0; l < mb->lanes; l++) {
        mb->table[l][0] = mb->cap[l];
        mb->table[l][1] = mb->count[l];
        mb->table[l][2] = name_hash(mb->m.n ? mb->m.name[l] : "");
    }
    return &mb->table[0][0];
}

void xc_mixbuf_lane_table_clear(xc_mixbuf_t *mb)
{
    for (int l = 0; l < XC_MIX_MAX; l++) mb->table[l][0] = mb->table[l][1] = mb->table[l][2] = -1;
}

long xc_mixbuf_restore(xc_mixbuf_t *mb, const int64_t meta[2], char *why, size_t why_len)
{
    if (why_len) why[0] = 0;
    for (int l = 0; l < XC_MIX_MAX; l++) mb->count[l] = 0;
    if (meta[1] != mb->slots) {
        if (meta[1] > 0) xc_why(why, why_len, "the saved buffer has %lld slots, this one %ld", (long long)meta[1], mb->slots);
        return 0;
    }
    if (meta[0] <= 0 || meta[0] > mb->slots) return 0;
    if (mb->m.n == 0) {
        mb->count[0] = (long)meta[0];
        return mb->count[0];
    }
    long total = 0;
    for (int l = 0; l < mb->lanes; l++) {
        const int64_t *t = mb->table[l];
        if (t[0] != mb->cap[l] || t[2] != name_hash(mb->m.name[l]) || t[1] < 0 || t[1] > t[0]) {
            xc_why(why, why_len, t[0] < 0 ? "the checkpoint has no stream lanes (it was written without "
                   "stream_mix)" : "stream_mix differs from the checkpoint's (lane %d: '%s')", l, mb->m.name[l]);
            return 0;
        }
        total += (long)t[1];
    }
    if (total != meta[0]) {
        xc_why(why, why_len, "the lanes hold %ld tokens, the buffer says %lld", total, (long long)meta[0]);
        return 0;
    }
    for (int l = 0; l < mb->lanes; l++) mb->count[l] = (long)mb->table[l][1];
    return total;
}
