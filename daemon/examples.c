/* Live max-activating examples (see xc_examples.h). */
#include "xc_examples.h"
#include "xc_error.h"
#include "xc_rng.h"
#include "xc_stfile.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SRC_NAME 128   /* bytes per source: producer \0 stream \0 */
#define META_N 14      /* trainer.examples.meta */
#define RESET_MAX 1024 /* latent resets waiting for the owner */
#define VREC_HDR 48    /* a vocabulary record's header */

/* One vocabulary chunk in the arena (8-byte aligned), followed by
 * uint32 offs[n + 1] (into the bytes that follow them) and the bytes. */
typedef struct {
    uint32_t size;  /* whole record, padded to 8 */
    uint32_t n, first, dead;
    char stream[XC_EX_STREAM_MAX];
} vrec_t;

/* A queued vocabulary chunk: a ready record, copied into the arena by the owner. */
typedef struct vreq {
    struct vreq *next;
    int replace;    /* first == 0: the stream's older records die */
    vrec_t *rec;    /* owned */
} vreq_t;

typedef struct {
    uint32_t j;
    uint16_t slot, pad;
    int64_t step0;
} pending_t;

struct xc_examples {
    xc_examples_config_t c;
    long F;
    int S, WL;                /* slots per latent (top + random), window length 2W + 1 */
    pthread_mutex_t mu;       /* guards every field below against readers on other threads */

    xc_example_t *ex;         /* (F, S) owned; slots [0, top_n) top, then the reservoir */
    uint32_t *win;            /* (F, S, WL) owned, rounded up to whole u64 words */
    size_t win_words;
    uint64_t *counts;         /* (F, 2) owned: activations seen, top slots used */
    float *minact;            /* (F) owned: smallest top activation (when the top is full) */
    uint8_t *minslot;         /* (F) owned */
    char *srcs;               /* (XC_EX_MAX_SOURCES, SRC_NAME) owned */
    uint64_t meta[META_N];    /* n_sources, ring head, ring count, vocab used, W, top_n,
                               * random_n, store_tokens, vocab_bytes, F, rng[4] */
    xc_rng_t rng;

    xc_tokmeta_t *ring;       /* (T) owned: the document store */
    long T;
    uint32_t *ht;             /* (H) owned: index into ring (slot + 1; 0 empty) */
    size_t hmask;

    uint8_t *arena;           /* vocab_bytes, owned */
    size_t used;              /* arena bytes in use */

    pending_t *pend;          /* (XC_EX_PENDING_MAX) owned */
    uint32_t *cuts;           /* (F x S) owned: slots filled in this update, windows to cut */
    long ncuts;
    int npend;

    vreq_t *vq, **vq_tail;    /* requests from other threads, owned */
    size_t vq_bytes;
    long resets[RESET_MAX];
    int nresets, reset_all;
};

void xc_examples_config_default(xc_examples_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->top_n = 20;
    c->random_n = 5;
    c->window = 16;
    c->store_tokens = 262144;
    c->vocab_bytes = 8u << 20;
    c->seed = 1;
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 1;
    while (p < n) p <<= 1;
    return p;
}

static size_t win_words(const xc_examples_config_t *c, long F)
{
    size_t n = (size_t)F * (size_t)(c->top_n + c->random_n) * (size_t)(2 * c->window + 1);
    return (n + 1) / 2;
}

size_t xc_examples_memory(const xc_examples_config_t *c, long F)
{
    size_t S = (size_t)(c->top_n + c->random_n);
    return (size_t)F * S * sizeof(xc_example_t) + win_words(c, F) * 8 + (size_t)F * (16 + 5) +
           (size_t)c->store_tokens * sizeof(xc_tokmeta_t) + pow2_at_least(2 * (size_t)c->store_tokens) * 4 +
           c->vocab_bytes + XC_EX_MAX_SOURCES * SRC_NAME + XC_EX_PENDING_MAX * sizeof(pending_t);
}

static void clear_examples(xc_examples_t *x)
{
    memset(x->ex, 0, sizeof *x->ex * (size_t)x->F * x->S);
    memset(x->win, 0xff, x->win_words * 8);
    memset(x->counts, 0, sizeof *x->counts * 2 * (size_t)x->F);
    memset(x->minslot, 0, (size_t)x->F);
    for (long j = 0; j < x->F; j++) x->minact[j] = 0.0f;
    x->npend = 0;
}

xc_examples_t *xc_examples_new(const xc_examples_config_t *c, long F, int *err)
{
    *err = XC_ECONFIG;
    if (F < 1 || c->top_n < 0 || c->random_n < 0 || c->top_n > 255 || c->random_n > 255 ||
        c->top_n + c->random_n > 255 || c->window < 0 || c->window > 1024 ||
        c->store_tokens < 2L * c->window + 1 || c->store_tokens > (1L << 30) || c->vocab_bytes % 8 ||
        c->vocab_bytes > (1ul << 31))
        return NULL;
    *err = XC_ENOMEM;
    xc_examples_t *x = calloc(1, sizeof *x); /* owned by the caller: xc_examples_destroy */
    if (!x) return NULL;
    x->c = *c;
    x->F = F;
    x->S = c->top_n + c->random_n;
    x->WL = 2 * c->window + 1;
    x->T = c->store_tokens;
    size_t H = pow2_at_least(2 * (size_t)x->T);
    x->hmask = H - 1;
    x->win_words = win_words(c, F);
    x->ex = malloc(sizeof *x->ex * (size_t)F * (x->S ? x->S : 1));
    x->win = malloc(x->win_words * 8 + 8);
    x->counts = malloc(sizeof *x->counts * 2 * (size_t)F);
    x->minact = malloc(sizeof *x->minact * (size_t)F);
    x->minslot = malloc((size_t)F);
    x->srcs = calloc(XC_EX_MAX_SOURCES, SRC_NAME);
    x->ring = calloc((size_t)x->T, sizeof *x->ring);
    x->ht = calloc(H, sizeof *x->ht);
    x->arena = calloc(1, c->vocab_bytes + 8);
    x->pend = malloc(sizeof *x->pend * XC_EX_PENDING_MAX);
    x->cuts = malloc(sizeof *x->cuts * (size_t)F * (x->S ? x->S : 1));
    if (!x->ex || !x->win || !x->counts || !x->minact || !x->minslot || !x->srcs || !x->ring || !x->ht ||
        !x->arena || !x->pend || !x->cuts || pthread_mutex_init(&x->mu, NULL)) {
        x->S = -1; /* the mutex was not made */
        xc_examples_destroy(&x);
        return NULL;
    }
    clear_examples(x);
    xc_rng_seed(&x->rng, c->seed ^ 0x6578616d706c6573ull); /* "examples" */
    x->vq_tail = &x->vq;
    *err = XC_OK;
    return x;
}

void xc_examples_destroy(xc_examples_t **px)
{
    xc_examples_t *x = px ? *px : NULL;
    if (!x) return;
    while (x->vq) {
        vreq_t *r = x->vq;
        x->vq = r->next;
        free(r->rec);
        free(r);
    }
    if (x->S >= 0) pthread_mutex_destroy(&x->mu);
    free(x->ex), free(x->win), free(x->counts), free(x->minact), free(x->minslot);
    free(x->srcs), free(x->ring), free(x->ht), free(x->arena), free(x->pend), free(x->cuts);
    free(x);
    *px = NULL;
}

const xc_examples_config_t *xc_examples_config(const xc_examples_t *x) { return &x->c; }

/* ------------------------------------------------------------ sources -- */
uint16_t xc_examples_source(xc_examples_t *x, const char *producer, const char *stream)
{
    char key[SRC_NAME];
    size_t pl, sl;
    memset(key, 0, sizeof key);
    producer = producer ? producer : "";
    stream = stream ? stream : "";
    pl = strnlen(producer, XC_PROTO_PRODUCER_MAX);
    sl = strnlen(stream, XC_EX_STREAM_MAX);
    memcpy(key, producer, pl);
    memcpy(key + pl + 1, stream, sl);
    for (uint64_t i = 0; i < x->meta[0]; i++)
        if (memcmp(x->srcs + i * SRC_NAME, key, SRC_NAME) == 0) return (uint16_t)i;
    if (x->meta[0] >= XC_EX_MAX_SOURCES) return XC_EX_NOSRC;
    pthread_mutex_lock(&x->mu);
    memcpy(x->srcs + x->meta[0] * SRC_NAME, key, SRC_NAME);
    uint16_t s = (uint16_t)x->meta[0]++;
    pthread_mutex_unlock(&x->mu);
    return s;
}

static const char *src_stream(const xc_examples_t *x, uint16_t src)
{
    if (src >= x->meta[0]) return "";
    const char *p = x->srcs + (size_t)src * SRC_NAME;
    return p + strlen(p) + 1;
}

int xc_examples_source_name(xc_examples_t *x, uint16_t src, char *producer, size_t pl, char *stream, size_t sl)
{
    int rc = XC_ENOTFOUND;
    pthread_mutex_lock(&x->mu);
    if (src < x->meta[0]) {
        const char *p = x->srcs + (size_t)src * SRC_NAME;
        if (producer && pl) snprintf(producer, pl, "%s", p);
        if (stream && sl) snprintf(stream, sl, "%s", p + strlen(p) + 1);
        rc = XC_OK;
    }
    pthread_mutex_unlock(&x->mu);
    return rc;
}

/* ------------------------------------------------------ document store -- */
static inline size_t key_hash(uint16_t src, uint32_t doc, uint32_t pos)
{
    uint64_t z = (((uint64_t)doc << 32) | pos) ^ ((uint64_t)src * 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (size_t)(z ^ (z >> 31));
}

static inline int same_key(const xc_tokmeta_t *a, uint16_t src, uint32_t doc, uint32_t pos)
{
    return a->src == src && a->doc == doc && a->pos == pos;
}

/* The ring slot holding (src, doc, pos), or -1. */
static long store_find(const xc_examples_t *x, uint16_t src, uint32_t doc, uint32_t pos)
{
    size_t i = key_hash(src, doc, pos) & x->hmask;
    while (x->ht[i]) {
        const xc_tokmeta_t *t = &x->ring[x->ht[i] - 1];
        if (same_key(t, src, doc, pos)) return (long)x->ht[i] - 1;
        i = (i + 1) & x->hmask;
    }
    return -1;
}

/* The slot of (src, doc, pos) when its document sits contiguously in the ring
 * (the usual case: a document arrives in order), where `near` holds position
 * `near_pos` of it: one comparison instead of a hash probe; else the index. */
static long store_find_near(const xc_examples_t *x, uint16_t src, uint32_t doc, uint32_t pos, long near,
                            uint32_t near_pos)
{
    if (near >= 0) {
        long g = (near + ((long)pos - (long)near_pos)) % x->T;
        if (g < 0) g += x->T;
        if ((uint64_t)g < x->meta[2] && same_key(&x->ring[g], src, doc, pos)) return g;
    }
    return store_find(x, src, doc, pos);
}

/* Removes index entry i (linear probing, backward-shift deletion: no tombstones). */
static void ht_delete_at(xc_examples_t *x, size_t i)
{
    size_t j = i;
    x->ht[i] = 0;
    for (;;) {
        j = (j + 1) & x->hmask;
        if (!x->ht[j]) return;
        const xc_tokmeta_t *t = &x->ring[x->ht[j] - 1];
        size_t k = key_hash(t->src, t->doc, t->pos) & x->hmask;
        /* entry j may move to the hole i unless its home k lies cyclically in (i, j] */
        int in_range = i <= j ? (k > i && k <= j) : (k > i || k <= j);
        if (!in_range) {
            x->ht[i] = x->ht[j];
            x->ht[j] = 0;
            i = j;
        }
    }
}

static void ht_remove_slot(xc_examples_t *x, long slot)
{
    const xc_tokmeta_t *t = &x->ring[slot];
    size_t i = key_hash(t->src, t->doc, t->pos) & x->hmask;
    while (x->ht[i]) {
        if (x->ht[i] == (uint32_t)slot + 1) {
            ht_delete_at(x, i);
            return;
        }
        i = (i + 1) & x->hmask;
    }
}

static void ht_insert(xc_examples_t *x, long slot)
{
    const xc_tokmeta_t *t = &x->ring[slot];
    size_t i = key_hash(t->src, t->doc, t->pos) & x->hmask;
    while (x->ht[i]) {
        if (same_key(&x->ring[x->ht[i] - 1], t->src, t->doc, t->pos)) break; /* a resent token: newest wins */
        i = (i + 1) & x->hmask;
    }
    x->ht[i] = (uint32_t)slot + 1;
}

/* Appends tokens in stream order, evicting the oldest when the ring is full.
 * Done under the lock: readers cut no windows, but the owner's update does, and
 * the ring is part of the checkpointed state. */
void xc_examples_store(xc_examples_t *x, const xc_tokmeta_t *meta, long n)
{
    pthread_mutex_lock(&x->mu);
    for (long i = 0; i < n; i++) {
        const xc_tokmeta_t *m = &meta[i];
        if (!(m->flags & XC_TM_POS) || m->src == XC_EX_NOSRC) continue;
        long slot = (long)x->meta[1];
        if ((long)x->meta[2] == x->T) ht_remove_slot(x, slot);
        else x->meta[2]++;
        x->ring[slot] = *m;
        ht_insert(x, slot);
        x->meta[1] = (uint64_t)((slot + 1) % x->T);
    }
    pthread_mutex_unlock(&x->mu);
}

/* ----------------------------------------------------------- windows -- */
/* Extends e's window to the right from e->right + 1 as far as the store
 * has the document; 1 when it is complete. */
static int extend_right(xc_examples_t *x, xc_example_t *e, uint32_t *w, long center)
{
    int W = x->c.window;
    while (e->right < W) {
        uint32_t p = e->pos + (uint32_t)e->right + 1;
        if (p < e->pos) return 1; /* position overflow: the document ends there */
        long s = store_find_near(x, e->src, e->doc, p, center, e->pos);
        if (s < 0) return 0;
        w[W + e->right + 1] = x->ring[s].id;
        e->right++;
    }
    return 1;
}

/* Fills slot (j, slot) with one occurrence. Its window is cut at the end of the
 * update (cut_windows), once per slot: a slot refilled within one step (a
 * latent's smallest top example beaten twice, the reservoir) costs one cut. */
#define XC_EXF_CUT 0x8000u /* transient: window still to cut (never seen outside an update) */
static void put(xc_examples_t *x, long j, int slot, const xc_tokmeta_t *m, float v, long step)
{
    size_t k = (size_t)j * x->S + slot;
    xc_example_t *e = &x->ex[k];
    int pending_cut = (e->flags & XC_EXF_CUT) != 0;
    *e = (xc_example_t){v, m->id, m->doc, m->pos, m->src, XC_EXF_USED | XC_EXF_CUT, 0, 0, step};
    if ((m->flags & XC_TM_POS) && m->src != XC_EX_NOSRC) e->flags |= XC_EXF_POS;
    if (!pending_cut) x->cuts[x->ncuts++] = (uint32_t)k;
}

/* Cuts the window of entry k from the store (the owner, under the lock). */
static void cut_window(xc_examples_t *x, size_t k)
{
    xc_example_t *e = &x->ex[k];
    uint32_t *w = x->win + k * x->WL;
    int W = x->c.window;
    e->flags &= (uint16_t)~XC_EXF_CUT;
    for (int i = 0; i < x->WL; i++) w[i] = XC_EX_NONE;
    w[W] = e->id;
    if (!(e->flags & XC_EXF_POS)) return;
    long center = W ? store_find(x, e->src, e->doc, e->pos) : -1; /* neighbours are usually next to it */
    while (e->left < W && e->pos >= (uint32_t)e->left + 1) {
        long s = store_find_near(x, e->src, e->doc, e->pos - (uint32_t)e->left - 1, center, e->pos);
        if (s < 0) break;
        w[W - e->left - 1] = x->ring[s].id;
        e->left++;
    }
    if (!extend_right(x, e, w, center) && x->npend < XC_EX_PENDING_MAX) {
        e->flags |= XC_EXF_PENDING;
        x->pend[x->npend++] = (pending_t){(uint32_t)(k / (size_t)x->S), (uint16_t)(k % (size_t)x->S), 0, e->step};
    }
}

/* Windows whose right side had not arrived: try again; give up after
 * XC_EX_PENDING_STEPS steps. */
static void retry_pending(xc_examples_t *x, long step)
{
    int k = 0;
    for (int i = 0; i < x->npend; i++) {
        pending_t p = x->pend[i];
        xc_example_t *e = &x->ex[(size_t)p.j * x->S + p.slot];
        if (!(e->flags & XC_EXF_PENDING)) continue; /* replaced meanwhile */
        uint32_t *w = x->win + ((size_t)p.j * x->S + p.slot) * x->WL;
        if (extend_right(x, e, w, store_find(x, e->src, e->doc, e->pos)) || step - p.step0 > XC_EX_PENDING_STEPS) {
            e->flags &= (uint16_t)~XC_EXF_PENDING;
            continue;
        }
        x->pend[k++] = p;
    }
    x->npend = k;
}

static void rescan_min(xc_examples_t *x, long j)
{
    const xc_example_t *e = &x->ex[(size_t)j * x->S];
    int m = 0;
    for (int s = 1; s < x->c.top_n; s++)
        if (e[s].act < e[m].act) m = s;
    x->minslot[j] = (uint8_t)m;
    x->minact[j] = e[m].act;
}

/* The hot path: per selected (token, latent) one counter, one comparison with
 * the latent's smallest top activation and (past the first random_n) one draw
 * for the reservoir (Algorithm R: the k-th activation replaces a uniform slot
 * with probability random_n / k). Windows are cut only on insertion. */
void xc_examples_update(xc_examples_t *x, const xc_tokmeta_t *meta, long B, const long *row_ptr, const int *col,
                        const float *val, long step)
{
    const int N = x->c.top_n, R = x->c.random_n;
    if (N + R == 0) return;
    pthread_mutex_lock(&x->mu);
    if (x->npend) retry_pending(x, step);
    for (long b = 0; b < B; b++) {
        const xc_tokmeta_t *m = &meta[b];
        for (long e = row_ptr[b]; e < row_ptr[b + 1]; e++) {
            long j = col[e];
            float v = val[e];
            uint64_t *cnt = &x->counts[2 * j];
            uint64_t seen = ++cnt[0];
            if (R) {
                if (seen <= (uint64_t)R) put(x, j, N + (int)(seen - 1), m, v, step);
                else {
                    uint64_t r = xc_rng_below(&x->rng, seen);
                    if (r < (uint64_t)R) put(x, j, N + (int)r, m, v, step);
                }
            }
            if (!N) continue;
            if (cnt[1] < (uint64_t)N) {
                put(x, j, (int)cnt[1]++, m, v, step);
                if (cnt[1] == (uint64_t)N) rescan_min(x, j);
            } else if (v > x->minact[j]) {
                put(x, j, x->minslot[j], m, v, step);
                rescan_min(x, j);
            }
        }
    }
    for (long i = 0; i < x->ncuts; i++) cut_window(x, x->cuts[i]);
    x->ncuts = 0;
    pthread_mutex_unlock(&x->mu);
}

/* -------------------------------------------------------- vocabularies -- */
/* Copies s[0, n) into out, replacing every invalid UTF-8 sequence by U+FFFD;
 * returns the bytes written (at most 3n). */
static size_t utf8_clean(const uint8_t *s, size_t n, uint8_t *out)
{
    size_t o = 0, i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        int ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++) ok = (s[i + k] & 0xc0) == 0x80;
        if (ok && len > 1) {
            uint32_t cp = len == 2 ? c & 0x1fu : len == 3 ? c & 0x0fu : c & 0x07u;
            for (size_t k = 1; k < len; k++) cp = (cp << 6) | (s[i + k] & 0x3fu);
            uint32_t lo = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
            ok = cp >= lo && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff);
        }
        if (ok) {
            memcpy(out + o, s + i, len);
            o += len, i += len;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3, i += 1;
        }
    }
    return o;
}

static uint32_t *vrec_offs(vrec_t *r) { return (uint32_t *)((uint8_t *)r + VREC_HDR); }
static const char *vrec_bytes(const vrec_t *r)
{
    return (const char *)r + VREC_HDR + sizeof(uint32_t) * ((size_t)r->n + 1);
}

/* Live bytes of the arena outside `stream` (or all, stream NULL) and the number
 * of distinct live streams other than it. */
static size_t arena_live(const xc_examples_t *x, const char *stream, int *streams)
{
    char seen[XC_EX_MAX_VOCABS + 1][XC_EX_STREAM_MAX];
    int ns = 0;
    size_t live = 0;
    for (size_t off = 0; off < x->used;) {
        const vrec_t *r = (const vrec_t *)(x->arena + off);
        off += r->size;
        if (r->dead || (stream && strncmp(r->stream, stream, XC_EX_STREAM_MAX) == 0)) continue;
        live += r->size;
        int k = 0;
        while (k < ns && strncmp(seen[k], r->stream, XC_EX_STREAM_MAX)) k++;
        if (k == ns && ns <= XC_EX_MAX_VOCABS) memcpy(seen[ns++], r->stream, XC_EX_STREAM_MAX);
    }
    if (streams) *streams = ns;
    return live;
}

int xc_examples_submit_vocab(xc_examples_t *x, const char *stream, uint32_t first, uint32_t n, const uint32_t *lens,
                             const char *bytes, size_t bytes_len, char *why, size_t wl)
{
    size_t total = 0;
    stream = stream ? stream : "";
    if (strlen(stream) >= XC_EX_STREAM_MAX) {
        xc_why(why, wl, "stream tag '%.40s' is longer than %d bytes", stream, XC_EX_STREAM_MAX - 1);
        return XC_EINVAL;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (lens[i] > XC_EX_PIECE_MAX) {
            xc_why(why, wl, "piece %u is %u bytes; at most %d", first + i, lens[i], XC_EX_PIECE_MAX);
            return XC_EINVAL;
        }
        total += lens[i];
    }
    if (total != bytes_len) {
        xc_why(why, wl, "the piece lengths add up to %zu bytes but %zu were sent", total, bytes_len);
        return XC_EINVAL;
    }
    size_t cap = VREC_HDR + sizeof(uint32_t) * ((size_t)n + 1) + 3 * total + 8;
    vrec_t *r = calloc(1, cap); /* owned by the request, then freed by apply */
    vreq_t *q = calloc(1, sizeof *q);
    if (!r || !q) {
        free(r), free(q);
        xc_why(why, wl, "out of memory for a vocabulary of %u pieces", n);
        return XC_ENOMEM;
    }
    uint32_t *offs = vrec_offs(r);
    uint8_t *out = (uint8_t *)&offs[n + 1];
    size_t o = 0, in = 0;
    for (uint32_t i = 0; i < n; i++) {
        offs[i] = (uint32_t)o;
        o += utf8_clean((const uint8_t *)bytes + in, lens[i], out + o);
        in += lens[i];
    }
    offs[n] = (uint32_t)o;
    r->size = (uint32_t)((VREC_HDR + sizeof(uint32_t) * ((size_t)n + 1) + o + 7) & ~(size_t)7);
    r->n = n;
    r->first = first;
    memcpy(r->stream, stream, strlen(stream));
    q->rec = r;
    q->replace = first == 0;

    pthread_mutex_lock(&x->mu);
    int streams;
    size_t live = arena_live(x, q->replace ? stream : NULL, &streams);
    int rc = XC_OK;
    if (live + x->vq_bytes + r->size > x->c.vocab_bytes) {
        xc_why(why, wl, "the vocabularies would take %zu bytes; examples_vocab_bytes is %zu: raise it",
               live + x->vq_bytes + r->size, x->c.vocab_bytes);
        rc = XC_ETOOBIG;
    } else if (streams >= XC_EX_MAX_VOCABS) {
        xc_why(why, wl, "%d streams have a vocabulary already (the most kept)", XC_EX_MAX_VOCABS);
        rc = XC_ETOOBIG;
    } else {
        *x->vq_tail = q;
        x->vq_tail = &q->next;
        x->vq_bytes += r->size;
    }
    pthread_mutex_unlock(&x->mu);
    if (rc) free(r), free(q);
    return rc;
}

/* Drops dead records by sliding the live ones down (owner, under the lock). */
static void arena_compact(xc_examples_t *x)
{
    size_t in = 0, out = 0;
    while (in < x->used) {
        vrec_t *r = (vrec_t *)(x->arena + in);
        size_t sz = r->size;
        if (!r->dead) {
            memmove(x->arena + out, r, sz);
            out += sz;
        }
        in += sz;
    }
    x->used = out;
}

static void arena_add(xc_examples_t *x, const vrec_t *r, int replace)
{
    if (replace)
        for (size_t off = 0; off < x->used;) {
            vrec_t *o = (vrec_t *)(x->arena + off);
            if (strncmp(o->stream, r->stream, XC_EX_STREAM_MAX) == 0) o->dead = 1;
            off += o->size;
        }
    if (x->used + r->size > x->c.vocab_bytes) arena_compact(x);
    if (x->used + r->size > x->c.vocab_bytes) return; /* checked at submit; cannot happen */
    memcpy(x->arena + x->used, r, r->size);
    x->used += r->size;
}

void xc_examples_apply(xc_examples_t *x)
{
    pthread_mutex_lock(&x->mu);
    while (x->vq) {
        vreq_t *q = x->vq;
        x->vq = q->next;
        arena_add(x, q->rec, q->replace);
        x->vq_bytes -= q->rec->size;
        free(q->rec);
        free(q);
    }
    x->vq_tail = &x->vq;
    if (x->reset_all) clear_examples(x);
    else
        for (int i = 0; i < x->nresets; i++) {
            long j = x->resets[i];
            memset(&x->ex[(size_t)j * x->S], 0, sizeof *x->ex * (size_t)x->S);
            memset(&x->win[(size_t)j * x->S * x->WL], 0xff, sizeof *x->win * (size_t)x->S * x->WL);
            x->counts[2 * j] = x->counts[2 * j + 1] = 0;
            x->minact[j] = 0.0f;
            x->minslot[j] = 0;
        }
    x->reset_all = 0;
    x->nresets = 0;
    x->meta[3] = x->used;
    pthread_mutex_unlock(&x->mu);
}

int xc_examples_request_reset(xc_examples_t *x, long j)
{
    int rc = XC_OK;
    if (j >= x->F) return XC_ENOTFOUND;
    pthread_mutex_lock(&x->mu);
    if (j < 0) x->reset_all = 1;
    else if (x->nresets < RESET_MAX) x->resets[x->nresets++] = j;
    else rc = XC_EAGAIN;
    pthread_mutex_unlock(&x->mu);
    return rc;
}

/* Looks up the piece of id in stream (exact stream first, then the default ""). */
static const char *piece_of(const xc_examples_t *x, const char *stream, uint32_t id, size_t *len)
{
    for (int pass = 0; pass < 2; pass++) {
        const char *want = pass ? "" : stream;
        if (pass && !*stream) break;
        for (size_t off = 0; off < x->used;) {
            vrec_t *r = (vrec_t *)(x->arena + off);
            off += r->size;
            if (r->dead || strncmp(r->stream, want, XC_EX_STREAM_MAX) || id < r->first || id - r->first >= r->n)
                continue;
            const uint32_t *offs = vrec_offs(r);
            *len = offs[id - r->first + 1] - offs[id - r->first];
            if (*len == 0) return NULL;
            return vrec_bytes(r) + offs[id - r->first];
        }
    }
    return NULL;
}

static int has_vocab(const xc_examples_t *x, const char *stream)
{
    for (size_t off = 0; off < x->used;) {
        const vrec_t *r = (const vrec_t *)(x->arena + off);
        off += r->size;
        if (!r->dead && (strncmp(r->stream, stream, XC_EX_STREAM_MAX) == 0 || r->stream[0] == 0)) return 1;
    }
    return 0;
}

int xc_examples_piece(xc_examples_t *x, const char *stream, uint32_t id, char *out, size_t out_len)
{
    size_t len = 0;
    pthread_mutex_lock(&x->mu);
    const char *p = piece_of(x, stream ? stream : "", id, &len);
    if (p && out_len) snprintf(out, out_len, "%.*s", (int)len, p);
    pthread_mutex_unlock(&x->mu);
    return p ? XC_OK : XC_ENOTFOUND;
}

/* Reads a vocabulary JSON (see the header) into one request for stream "". */
int xc_examples_load_vocab_file(xc_examples_t *x, const char *path, char *why, size_t wl)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    xc_buf_t mp;
    xc_mp_doc_t *doc = NULL;
    uint32_t *lens = NULL;
    char *bytes = NULL;
    int rc = XC_EIO;
    xc_buf_init(&mp);
    if (!f) {
        xc_why(why, wl, "cannot open vocabulary file %s: %s", path, strerror(errno));
        return XC_EIO;
    }
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (size < 0 || fseek(f, 0, SEEK_SET) || !(text = malloc((size_t)size + 1)) ||
        fread(text, 1, (size_t)size, f) != (size_t)size) {
        xc_why(why, wl, "cannot read vocabulary file %s", path);
        goto out;
    }
    rc = xc_json_to_mp(text, (size_t)size, &mp, why, wl);
    if (!rc) rc = xc_mp_doc_parse(mp.data, mp.len, &doc, why, wl);
    if (rc) {
        rc = XC_EINVAL;
        goto out;
    }
    xc_mp_node_t root = xc_mp_root(doc), voc = root;
    int spm = 0;
    if (xc_mp_type(root) == XC_MP_MAP && xc_mp_type(xc_mp_get(root, "model")) == XC_MP_MAP) {
        voc = xc_mp_get(xc_mp_get(root, "model"), "vocab"); /* tokenizer.json */
        spm = 1;
    }
    size_t n = xc_mp_len(voc), maxid = 0, total = 0;
    int is_map = xc_mp_type(voc) == XC_MP_MAP;
    if (!is_map && xc_mp_type(voc) != XC_MP_ARRAY) {
        xc_why(why, wl, "%s: expected a JSON array of strings, an object {piece: id} or a tokenizer.json", path);
        rc = XC_EINVAL;
        goto out;
    }
    /* ids: the index (array) or the value (object); pieces in id order */
    for (size_t i = 0; i < n; i++) {
        int64_t id = (int64_t)i;
        if (is_map && (xc_mp_as_i64(xc_mp_map_val(voc, i), &id) || id < 0 || id > 0x7fffffff)) {
            xc_why(why, wl, "%s: entry %zu has no integer id", path, i);
            rc = XC_EINVAL;
            goto out;
        }
        if ((size_t)id + 1 > maxid) maxid = (size_t)id + 1;
    }
    lens = calloc(maxid ? maxid : 1, sizeof *lens);
    const char **ptrs = calloc(maxid ? maxid : 1, sizeof *ptrs);
    if (!lens || !ptrs) {
        free(ptrs);
        rc = XC_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        xc_mp_node_t s = is_map ? xc_mp_map_key(voc, i) : xc_mp_at(voc, i);
        int64_t id = (int64_t)i;
        if (is_map) xc_mp_as_i64(xc_mp_map_val(voc, i), &id);
        if (xc_mp_type(s) == XC_MP_ARRAY) s = xc_mp_at(s, 0); /* Unigram: [piece, score] */
        const char *p;
        size_t len;
        if (xc_mp_as_str(s, &p, &len) || len > XC_EX_PIECE_MAX) continue; /* no piece for this id */
        ptrs[id] = p;
        lens[id] = (uint32_t)len;
    }
    for (size_t i = 0; i < maxid; i++) total += lens[i];
    bytes = malloc(total + 1);
    if (!bytes) {
        free(ptrs);
        rc = XC_ENOMEM;
        goto out;
    }
    size_t o = 0;
    for (size_t i = 0; i < maxid; i++) {
        size_t start = o;
        for (uint32_t k = 0; k < lens[i]; k++) {
            /* SentencePiece's word boundary U+2581 (e2 96 81) is a space */
            if (spm && k + 2 < lens[i] && memcmp(ptrs[i] + k, "\xe2\x96\x81", 3) == 0) {
                bytes[o++] = ' ';
                k += 2;
            } else {
                bytes[o++] = ptrs[i][k];
            }
        }
        lens[i] = (uint32_t)(o - start);
    }
    free(ptrs);
    rc = xc_examples_submit_vocab(x, "", 0, (uint32_t)maxid, lens, bytes, o, why, wl);
    if (!rc) xc_examples_apply(x);
out:
    if (f) fclose(f);
    free(text), free(lens), free(bytes);
    xc_mp_doc_free(&doc);
    xc_buf_free(&mp);
    return rc;
}

/* ------------------------------------------------------------- queries -- */
static int cmp_top(const void *a, const void *b)
{
    const xc_example_t *x = a, *y = b;
    if (x->act != y->act) return x->act > y->act ? -1 : 1;
    if (x->src != y->src) return x->src < y->src ? -1 : 1;
    if (x->doc != y->doc) return x->doc < y->doc ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Under the lock: the used slots of one kind, as indices sorted for output. */
static int slots_of(const xc_examples_t *x, long j, int kind, int *idx)
{
    int lo = kind ? x->c.top_n : 0, hi = kind ? x->S : x->c.top_n, n = 0;
    const xc_example_t *e = &x->ex[(size_t)j * x->S];
    for (int s = lo; s < hi; s++)
        if (e[s].flags & XC_EXF_USED) idx[n++] = s;
    if (kind == 0) /* insertion sort by cmp_top (n <= 255) */
        for (int a = 1; a < n; a++)
            for (int b = a; b > 0 && cmp_top(&e[idx[b - 1]], &e[idx[b]]) > 0; b--) {
                int t = idx[b];
                idx[b] = idx[b - 1];
                idx[b - 1] = t;
            }
    return n;
}

int xc_examples_get(xc_examples_t *x, long j, int kind, xc_example_t *out, uint32_t *win, int max, uint64_t *seen)
{
    int idx[256], n;
    if (j < 0 || j >= x->F) return XC_ENOTFOUND;
    pthread_mutex_lock(&x->mu);
    n = slots_of(x, j, kind, idx);
    if (n > max) n = max;
    for (int i = 0; i < n; i++) {
        out[i] = x->ex[(size_t)j * x->S + idx[i]];
        if (win) memcpy(win + (size_t)i * x->WL, x->win + ((size_t)j * x->S + idx[i]) * x->WL, sizeof *win * x->WL);
    }
    if (seen) *seen = x->counts[2 * j];
    pthread_mutex_unlock(&x->mu);
    return n;
}

static void encode_one(xc_examples_t *x, const xc_example_t *e, const uint32_t *w, xc_mpw_t *mw)
{
    int W = x->c.window;
    const char *p = e->src < x->meta[0] ? x->srcs + (size_t)e->src * SRC_NAME : "";
    const char *stream = e->src < x->meta[0] ? src_stream(x, e->src) : "";
    xc_mpw_map_begin(mw);
    xc_mpw_kv_double(mw, "act", e->act);
    xc_mpw_kv_int(mw, "step", e->step);
    xc_mpw_kv_str(mw, "producer", p);
    xc_mpw_kv_str(mw, "stream", stream);
    if (e->flags & XC_EXF_POS) {
        xc_mpw_kv_uint(mw, "doc", e->doc);
        xc_mpw_kv_uint(mw, "pos", e->pos);
    } else {
        xc_mpw_kv_nil(mw, "doc");
        xc_mpw_kv_nil(mw, "pos");
    }
    if (e->id != XC_EX_NONE) xc_mpw_kv_uint(mw, "token", e->id);
    else xc_mpw_kv_nil(mw, "token");
    xc_mpw_str(mw, "tokens");
    xc_mpw_array_begin(mw);
    for (int i = W - e->left; i <= W + e->right; i++) {
        if (w[i] == XC_EX_NONE) xc_mpw_nil(mw);
        else xc_mpw_uint(mw, w[i]);
    }
    xc_mpw_array_end(mw);
    xc_mpw_kv_int(mw, "at", e->left);
    if (has_vocab(x, stream)) {
        xc_mpw_str(mw, "pieces");
        xc_mpw_array_begin(mw);
        for (int i = W - e->left; i <= W + e->right; i++) {
            size_t len = 0;
            const char *s = w[i] == XC_EX_NONE ? NULL : piece_of(x, stream, w[i], &len);
            if (s) xc_mpw_strn(mw, s, len);
            else xc_mpw_nil(mw);
        }
        xc_mpw_array_end(mw);
    }
    xc_mpw_map_end(mw);
}

int xc_examples_encode(xc_examples_t *x, long j, long max_n, xc_mpw_t *w)
{
    int idx[256];
    if (j < 0 || j >= x->F) return XC_ENOTFOUND;
    pthread_mutex_lock(&x->mu);
    xc_mpw_kv_int(w, "j", j);
    xc_mpw_kv_int(w, "window", x->c.window);
    xc_mpw_kv_int(w, "top_n", x->c.top_n);
    xc_mpw_kv_int(w, "random_n", x->c.random_n);
    xc_mpw_kv_uint(w, "seen", x->counts[2 * j]);
    for (int kind = 0; kind < 2; kind++) {
        int n = slots_of(x, j, kind, idx);
        if (max_n >= 0 && n > max_n) n = (int)max_n;
        xc_mpw_str(w, kind ? "random" : "top");
        xc_mpw_array_begin(w);
        for (int i = 0; i < n; i++) {
            size_t k = (size_t)j * x->S + idx[i];
            encode_one(x, &x->ex[k], x->win + k * x->WL, w);
        }
        xc_mpw_array_end(w);
    }
    pthread_mutex_unlock(&x->mu);
    return XC_OK;
}

/* --------------------------------------------------------- checkpoints -- */
int xc_examples_state_views(xc_examples_t *x, xc_state_view_t *v, int max)
{
    if (max < XC_EXAMPLES_VIEWS) return 0;
    uint64_t *m = x->meta;
    m[3] = x->used;
    m[4] = (uint64_t)x->c.window, m[5] = (uint64_t)x->c.top_n, m[6] = (uint64_t)x->c.random_n;
    m[7] = (uint64_t)x->T, m[8] = x->c.vocab_bytes, m[9] = (uint64_t)x->F;
    memcpy(&m[10], x->rng.s, sizeof x->rng.s);
    long S = x->S ? x->S : 1;
    v[0] = (xc_state_view_t){"trainer.examples.meta", XC_ST_U64, 1, {META_N, 0, 0}, m, sizeof x->meta, 0};
    v[1] = (xc_state_view_t){"trainer.examples.entries", XC_ST_U64, 3, {x->F, S, 4}, x->ex,
                             sizeof *x->ex * (size_t)x->F * (size_t)S, 0};
    v[2] = (xc_state_view_t){"trainer.examples.windows", XC_ST_U64, 1, {(long)x->win_words, 0, 0}, x->win,
                             x->win_words * 8, 0};
    v[3] = (xc_state_view_t){"trainer.examples.counts", XC_ST_U64, 2, {x->F, 2, 0}, x->counts,
                             sizeof *x->counts * 2 * (size_t)x->F, 0};
    v[4] = (xc_state_view_t){"trainer.examples.store", XC_ST_U64, 2, {x->T, 2, 0}, x->ring,
                             sizeof *x->ring * (size_t)x->T, 0};
    v[5] = (xc_state_view_t){"trainer.examples.sources", XC_ST_U64, 2, {XC_EX_MAX_SOURCES, SRC_NAME / 8, 0}, x->srcs,
                             (size_t)XC_EX_MAX_SOURCES * SRC_NAME, 0};
    v[6] = (xc_state_view_t){"trainer.examples.vocab", XC_ST_U64, 1, {(long)(x->c.vocab_bytes / 8), 0, 0}, x->arena,
                             x->c.vocab_bytes, 0};
    return XC_EXAMPLES_VIEWS;
}

/* After a restore: a state of other sizes (a changed examples_* key) is
 * dropped whole rather than half-read; otherwise the derived arrays, the
 * store's index and the pending windows are rebuilt. */
void xc_examples_state_restored(xc_examples_t *x)
{
    uint64_t *m = x->meta;
    pthread_mutex_lock(&x->mu);
    int fits = m[4] == (uint64_t)x->c.window && m[5] == (uint64_t)x->c.top_n && m[6] == (uint64_t)x->c.random_n &&
               m[7] == (uint64_t)x->T && m[8] == x->c.vocab_bytes && m[9] == (uint64_t)x->F &&
               m[0] <= XC_EX_MAX_SOURCES && m[2] <= (uint64_t)x->T && m[1] < (uint64_t)x->T && m[3] <= x->c.vocab_bytes;
    if (!fits) {
        clear_examples(x);
        memset(x->ring, 0, sizeof *x->ring * (size_t)x->T);
        memset(x->srcs, 0, (size_t)XC_EX_MAX_SOURCES * SRC_NAME);
        memset(m, 0, sizeof x->meta);
        x->used = 0;
    } else {
        x->used = m[3];
        memcpy(x->rng.s, &m[10], sizeof x->rng.s);
    }
    memset(x->ht, 0, sizeof *x->ht * (x->hmask + 1));
    long count = (long)m[2], head = (long)m[1];
    for (long i = 0; i < count; i++) ht_insert(x, (head - count + i + x->T) % x->T); /* oldest first */
    x->npend = 0;
    for (long j = 0; j < x->F; j++) {
        if (x->c.top_n && x->counts[2 * j + 1] >= (uint64_t)x->c.top_n) rescan_min(x, j);
        for (int s = 0; s < x->S; s++) {
            const xc_example_t *e = &x->ex[(size_t)j * x->S + s];
            if ((e->flags & XC_EXF_PENDING) && x->npend < XC_EX_PENDING_MAX)
                x->pend[x->npend++] = (pending_t){(uint32_t)j, (uint16_t)s, 0, e->step};
        }
    }
    pthread_mutex_unlock(&x->mu);
}

/* ------------------------------------------------------------- ingest -- */
void xc_tokmeta_fill(xc_tokmeta_t *meta, long n, const void *tokens, const void *pos)
{
    const uint8_t *t = tokens, *p = pos;
    for (long i = 0; i < n; i++) {
        xc_tokmeta_t *m = &meta[i];
        m->id = XC_EX_NONE;
        m->doc = m->pos = 0;
        m->src = XC_EX_NOSRC;
        m->flags = 0;
        if (t) m->id = (uint32_t)t[4 * i] | (uint32_t)t[4 * i + 1] << 8 | (uint32_t)t[4 * i + 2] << 16 |
                       (uint32_t)t[4 * i + 3] << 24;
        if (p) {
            const uint8_t *q = p + 8 * i;
            m->doc = (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
            m->pos = (uint32_t)q[4] | (uint32_t)q[5] << 8 | (uint32_t)q[6] << 16 | (uint32_t)q[7] << 24;
            m->flags |= XC_TM_POS;
        }
    }
}
