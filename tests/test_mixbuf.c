/* Tests of the mixing buffer and stream mixtures (daemon/mixbuf.c): parsing
 * and its refusals; the stream -> lane rule (named, "*", refused); lane
 * capacities; the per-batch quota (sums to B, never more than one token off
 * B x share, mean B x share over many draws, an exact 50/50 every time); the
 * draw (every token drawn once, each batch's composition read back from the
 * tokens themselves, uniform within a lane); the plain one-lane draw equal,
 * random number for random number, to an independent implementation of the
 * PROTOCOL.md 1.4 draw; the checkpoint lane table's restore rules; and the
 * queue's lanes (a full lane never blocks another). */
#include "xc_error.h"
#include "xc_mixbuf.h"
#include "xc_queue.h"
#include "xc_rng.h"
#include "xc_test.h"

#define D2 4

static void test_parse(void)
{
    xc_mix_spec_t m;
    char why[256];
    XC_REQUIRE(xc_mix_parse("web:0.5,chat:0.5", &m, why, sizeof why) == 0, "%s", why);
    XC_CHECK(m.n == 2 && !strcmp(m.name[0], "web") && !strcmp(m.name[1], "chat") && m.other == -1, "names");
    XC_CHECK_CLOSE(m.share[0], 0.5, 0, 1e-12);
    XC_REQUIRE(xc_mix_parse(" web : 3 , chat:1, * : 4 ", &m, why, sizeof why) == 0, "%s", why);
    XC_CHECK(m.n == 3 && m.other == 2 && !strcmp(m.name[2], "*"), "star");
    XC_CHECK_CLOSE(m.share[0], 3.0 / 8, 0, 1e-12);
    XC_CHECK_CLOSE(m.share[2], 0.5, 0, 1e-12);
    XC_REQUIRE(xc_mix_parse("ns:web:1,ns:chat:1", &m, why, sizeof why) == 0, "%s", why);
    XC_CHECK(!strcmp(m.name[0], "ns:web"), "a tag holding ':' (%s)", m.name[0]);
    XC_CHECK(xc_mix_parse("", &m, why, sizeof why) == 0 && m.n == 0, "empty: no mixture");
    const char *bad[] = {"web", "web:0", "web:-1", "web:x", "web:0.5,web:0.5", "we b:1", ":1", "web:nan",
                         "web:1,", "abcdefghijabcdefghijabcdefghijabc:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why[0] = 0;
        XC_CHECK(xc_mix_parse(bad[i], &m, why, sizeof why) == XC_ECONFIG && strstr(why, "stream_mix"),
                 "'%s' refused with a reason naming the key: %s", bad[i], why);
    }
}

static void test_lane_rule(void)
{
    xc_mix_spec_t m, none = {.n = 0, .other = -1};
    char why[256];
    XC_CHECK(xc_mix_lane(&none, "web") == 0 && xc_mix_lane(&none, "") == 0 && xc_mix_lanes(&none) == 1,
             "no mixture: one lane for everything");
    XC_REQUIRE(xc_mix_parse("web:1,chat:1", &m, why, sizeof why) == 0, "%s", why);
    XC_CHECK(xc_mix_lane(&m, "web") == 0 && xc_mix_lane(&m, "chat") == 1, "named");
    XC_CHECK(xc_mix_lane(&m, "code") == -1 && xc_mix_lane(&m, "") == -1, "unknown and untagged refused");
    XC_REQUIRE(xc_mix_parse("*:1,web:1", &m, why, sizeof why) == 0, "%s", why);
    XC_CHECK(xc_mix_lane(&m, "web") == 1 && xc_mix_lane(&m, "code") == 0 && xc_mix_lane(&m, "") == 0,
             "unknown and untagged to '*'");
    XC_CHECK(xc_mix_lane(&m, "*") == 0, "a stream literally named '*' cannot be sent; it maps to '*'");
}

static void test_capacities(void)
{
    xc_mix_spec_t m;
    char why[256];
    long cap[XC_MIX_MAX];
    XC_REQUIRE(xc_mix_parse("web:1,chat:1", &m, why, sizeof why) == 0, "%s", why);
    XC_CHECK(xc_mix_capacities(&m, 512, cap) == 512 && cap[0] == 256 && cap[1] == 256, "even split");
    XC_REQUIRE(xc_mix_parse("a:1,b:1,c:1", &m, why, sizeof why) == 0, "%s", why);
    long sum = xc_mix_capacities(&m, 100, cap);
    XC_CHECK(sum == 102 && cap[0] == 34 && cap[2] == 34, "thirds round up: %ld", sum);
}

/* Quotas: always sum to B, never farther than one token from B x share, and
 * on average B x share (systematic sampling is unbiased). */
static void test_quota(void)
{
    xc_mix_spec_t m;
    char why[256];
    xc_rng_t r;
    long q[XC_MIX_MAX];
    XC_REQUIRE(xc_mix_parse("web:1,chat:1", &m, why, sizeof why) == 0, "%s", why);
    xc_rng_seed(&r, 1);
    uint64_t before = r.s[0];
    xc_mix_quota(&m, 256, &r, q);
    XC_CHECK(q[0] == 128 && q[1] == 128 && r.s[0] == before, "50/50 of 256: exact, no random number used");
    xc_mix_quota(&m, 255, &r, q);
    XC_CHECK(q[0] + q[1] == 255 && (q[0] == 127 || q[0] == 128), "odd B: %ld + %ld", q[0], q[1]);

    XC_REQUIRE(xc_mix_parse("a:1,b:2,c:4,d:0.5", &m, why, sizeof why) == 0, "%s", why);
    const long B = 97, N = 200000;
    double mean[4] = {0};
    for (long it = 0; it < N; it++) {
        xc_mix_quota(&m, B, &r, q);
        long s = 0;
        for (int l = 0; l < 4; l++) {
            double want = (double)B * m.share[l];
            XC_CHECK(fabs((double)q[l] - want) < 1.0, "lane %d: %ld tokens for B x share = %g", l, q[l], want);
            s += q[l];
            mean[l] += (double)q[l] / N;
        }
        XC_CHECK(s == B, "quota sums to %ld", s);
        if (xc_test_failed_) return;
    }
    for (int l = 0; l < 4; l++) /* the rounding is Bernoulli(frac): sd <= 0.5 / sqrt(N) */
        XC_CHECK(fabs(mean[l] - (double)B * m.share[l]) < 6 * 0.5 / sqrt((double)N), "lane %d mean %.5f vs %.5f", l,
                 mean[l], (double)B * m.share[l]);
}

/* A token's first value says which lane (stream) it came from, its second a
 * unique serial: each draw's composition is read from the tokens. */
static long g_serial;
static void put_tokens(xc_mixbuf_t *mb, int lane, long n)
{
    float x[64 * D2];
    for (long i = 0; i < n; i++) {
        x[i * D2 + 0] = (float)lane;
        x[i * D2 + 1] = (float)g_serial++;
        x[i * D2 + 2] = x[i * D2 + 3] = 0.5f;
    }
    xc_mixbuf_put(mb, lane, x, NULL, n);
}

static void test_draw_mixture(void)
{
    xc_mix_spec_t m;
    char why[256];
    int err;
    XC_REQUIRE(xc_mix_parse("web:0.5,chat:0.5", &m, why, sizeof why) == 0, "%s", why);
    const long B = 64, C = 256;
    xc_mixbuf_t *mb = xc_mixbuf_new(&m, C, B, D2, &err);
    XC_REQUIRE(mb, "new: %s", xc_strerror(err));
    XC_CHECK(xc_mixbuf_lanes(mb) == 2 && xc_mixbuf_room(mb, 0) == 128 && xc_mixbuf_room(mb, 1) == 128, "lanes");
    xc_rng_t r;
    xc_rng_seed(&r, 7);
    float batch[64 * D2];
    xc_tokmeta_t tm[64];
    long counts[XC_MIX_MAX];
    char *seen = calloc(1 << 16, 1);
    XC_REQUIRE(seen, "memory");
    g_serial = 0;
    put_tokens(mb, 0, 64), put_tokens(mb, 0, 64);
    XC_CHECK(!xc_mixbuf_ready(mb) && xc_mixbuf_room(mb, 0) == 0, "one lane full is not enough");
    long drawn = 0;
    for (int step = 0; step < 200; step++) {
        /* the fast stream (web) tops up at once, the slow one (chat) only as much as was drawn */
        put_tokens(mb, 0, xc_mixbuf_room(mb, 0));
        put_tokens(mb, 1, xc_mixbuf_room(mb, 1) > 64 ? 64 : xc_mixbuf_room(mb, 1));
        if (xc_mixbuf_room(mb, 1)) put_tokens(mb, 1, xc_mixbuf_room(mb, 1));
        XC_REQUIRE(xc_mixbuf_ready(mb), "ready at step %d", step);
        xc_mixbuf_draw(mb, &r, batch, tm, counts);
        long n_web = 0;
        for (long i = 0; i < B; i++) {
            int lane = (int)batch[i * D2];
            long serial = (long)batch[i * D2 + 1];
            n_web += lane == 0;
            XC_CHECK(i < counts[0] ? lane == 0 : lane == 1, "batch row %ld from lane %d (counts %ld/%ld)", i, lane,
                     counts[0], counts[1]);
            XC_CHECK(serial < (1 << 16) && !seen[serial], "token %ld drawn twice", serial);
            if (serial < (1 << 16)) seen[serial] = 1;
            XC_CHECK(tm[i].id == XC_EX_NONE && tm[i].src == XC_EX_NOSRC, "context 'none' travels with it");
        }
        XC_CHECK(n_web == 32 && counts[0] == 32 && counts[1] == 32, "step %d: %ld web tokens of %ld", step, n_web, B);
        drawn += B;
        if (xc_test_failed_) break;
    }
    XC_CHECK(xc_mixbuf_buffered(mb, -1) == 256 - 64 && xc_mixbuf_buffered(mb, 1) == 128 - 32, "fill after a draw");
    long undrawn = 0; /* every serial put in is either drawn or still buffered */
    for (long s = 0; s < g_serial; s++) undrawn += !seen[s];
    XC_CHECK(undrawn == xc_mixbuf_buffered(mb, -1), "%ld tokens neither drawn nor buffered", undrawn - xc_mixbuf_buffered(mb, -1));
    free(seen);
    xc_mixbuf_destroy(&mb);
    XC_CHECK(mb == NULL, "destroy clears");
}

/* Within a lane the draw is uniform: each slot of a full lane is picked first
 * equally often. */
static void test_draw_uniform(void)
{
    xc_mix_spec_t m;
    char why[256];
    int err;
    XC_REQUIRE(xc_mix_parse("a:1,b:3", &m, why, sizeof why) == 0, "%s", why);
    xc_mixbuf_t *mb = xc_mixbuf_new(&m, 16, 4, D2, &err); /* lanes of 4 and 12; 1 + 3 per batch */
    XC_REQUIRE(mb, "new");
    xc_rng_t r;
    xc_rng_seed(&r, 3);
    float batch[4 * D2];
    xc_tokmeta_t tm[4];
    long hits[4] = {0}, N = 40000;
    for (long it = 0; it < N; it++) {
        float x[12 * D2];
        for (int l = 0; l < 2; l++) {
            long room = xc_mixbuf_room(mb, l), have = xc_mixbuf_buffered(mb, l);
            for (long i = 0; i < room; i++) x[i * D2] = (float)(have + i), x[i * D2 + 1] = (float)l;
            xc_mixbuf_put(mb, l, x, NULL, room);
        }
        /* lane a's slots hold 0..3 after a fresh fill only on the first round; relabel them */
        xc_mixbuf_draw(mb, &r, batch, tm, NULL);
        hits[(long)batch[0] & 3]++;
        xc_mixbuf_destroy(&mb);
        mb = xc_mixbuf_new(&m, 16, 4, D2, &err);
        XC_REQUIRE(mb, "new");
    }
    for (int i = 0; i < 4; i++) /* binomial(N, 1/4): sd = sqrt(N 3/16) ~ 87 */
        XC_CHECK(fabs((double)hits[i] - N / 4.0) < 6 * sqrt(N * 3.0 / 16), "slot %d drawn %ld of %ld", i, hits[i], N);
    xc_mixbuf_destroy(&mb);
}

/* One lane: the draw PROTOCOL.md 1.4 states (pick j below the fill, take it,
 * move the last token into the hole), written here again, gives the same
 * batches from the same seed. */
static void test_plain_draw_unchanged(void)
{
    xc_mix_spec_t none = {.n = 0, .other = -1};
    int err;
    const long B = 8, C = 32;
    xc_mixbuf_t *mb = xc_mixbuf_new(&none, C, B, D2, &err);
    XC_REQUIRE(mb, "new");
    XC_CHECK(xc_mixbuf_lanes(mb) == 1 && xc_mixbuf_room(mb, 0) == C, "one lane of C");
    float ref[32 * D2], batch[8 * D2], want[8 * D2];
    xc_tokmeta_t tm[8];
    long fill = 0, serial = 0;
    xc_rng_t r1, r2;
    xc_rng_seed(&r1, 99);
    xc_rng_seed(&r2, 99);
    for (int step = 0; step < 50; step++) {
        float x[32 * D2];
        long room = C - fill;
        for (long i = 0; i < room; i++)
            for (int k = 0; k < D2; k++) x[i * D2 + k] = (float)(serial + i) + 0.25f * (float)k;
        memcpy(ref + fill * D2, x, sizeof(float) * (size_t)(room * D2));
        xc_mixbuf_put(mb, 0, x, NULL, room);
        serial += room;
        fill = C;
        for (long i = 0; i < B; i++) {
            long j = (long)xc_rng_below(&r2, (uint64_t)fill);
            memcpy(want + i * D2, ref + j * D2, sizeof(float) * D2);
            fill--;
            if (j != fill) memcpy(ref + j * D2, ref + fill * D2, sizeof(float) * D2);
        }
        XC_REQUIRE(xc_mixbuf_ready(mb), "ready");
        xc_mixbuf_draw(mb, &r1, batch, tm, NULL);
        XC_CHECK(memcmp(batch, want, sizeof batch) == 0, "step %d: batch differs from the plain draw", step);
        XC_CHECK(memcmp(r1.s, r2.s, sizeof r1.s) == 0, "step %d: random numbers used differ", step);
        if (xc_test_failed_) break;
    }
    xc_mixbuf_destroy(&mb);
}

/* The checkpoint's lane table: restored only into the same mixture. */
static void test_restore(void)
{
    xc_mix_spec_t m, m2, none = {.n = 0, .other = -1};
    char why[256];
    int err;
    XC_REQUIRE(xc_mix_parse("web:1,chat:1", &m, why, sizeof why) == 0, "%s", why);
    XC_REQUIRE(xc_mix_parse("web:1,code:1", &m2, why, sizeof why) == 0, "%s", why);
    xc_mixbuf_t *a = xc_mixbuf_new(&m, 64, 16, D2, &err), *b = xc_mixbuf_new(&m, 64, 16, D2, &err),
                *c = xc_mixbuf_new(&m2, 64, 16, D2, &err), *p = xc_mixbuf_new(&none, 64, 16, D2, &err);
    XC_REQUIRE(a && b && c && p, "new");
    g_serial = 0;
    put_tokens(a, 0, 20), put_tokens(a, 1, 7);
    int64_t meta[2] = {xc_mixbuf_buffered(a, -1), 64};
    int64_t *ta = xc_mixbuf_lane_table(a);
    /* "load" a's table into b and c, as the checkpoint loader copies views */
    xc_mixbuf_lane_table_clear(b);
    memcpy(xc_mixbuf_lane_table(b), ta, sizeof(int64_t) * 6);
    XC_CHECK(xc_mixbuf_restore(b, meta, why, sizeof why) == 27 && xc_mixbuf_buffered(b, 0) == 20 &&
                 xc_mixbuf_buffered(b, 1) == 7, "same mixture: restored per lane (%s)", why);
    xc_mixbuf_lane_table_clear(c);
    memcpy(xc_mixbuf_lane_table(c), ta, sizeof(int64_t) * 6);
    XC_CHECK(xc_mixbuf_restore(c, meta, why, sizeof why) == 0 && strstr(why, "'code'"), "another mixture: %s", why);
    xc_mixbuf_lane_table_clear(b);
    XC_CHECK(xc_mixbuf_restore(b, meta, why, sizeof why) == 0 && strstr(why, "without stream_mix"),
             "no lanes saved: %s", why);
    XC_CHECK(xc_mixbuf_restore(p, meta, why, sizeof why) == 27 && xc_mixbuf_buffered(p, 0) == 27, "one lane");
    int64_t other[2] = {27, 128};
    XC_CHECK(xc_mixbuf_restore(p, other, why, sizeof why) == 0 && strstr(why, "128 slots"), "another size: %s", why);
    xc_mixbuf_destroy(&a), xc_mixbuf_destroy(&b), xc_mixbuf_destroy(&c), xc_mixbuf_destroy(&p);
}

/* Queue lanes: a full lane refuses only its own pushes; pops take a given lane. */
static void test_queue_lanes(void)
{
    xc_queue_t *q = xc_queue_new_lanes(2, 2, NULL, NULL);
    XC_REQUIRE(q, "new");
    XC_CHECK(xc_queue_new_lanes(2, 0, NULL, NULL) == NULL && xc_queue_new_lanes(2, XC_QUEUE_LANES_MAX + 1, NULL, NULL) == NULL,
             "lane count bounds");
    xc_qitem_t it, out;
    for (int i = 0; i < 3; i++) {
        memset(&it, 0, sizeof it);
        it.x = malloc(sizeof(float));
        it.n = 5;
        it.seq = (uint64_t)i;
        it.lane = 0;
        int rc = xc_queue_push(q, &it);
        XC_CHECK(i < 2 ? rc == 0 : rc == XC_EAGAIN, "push %d into lane 0: %d", i, rc);
        if (rc) free(it.x);
    }
    XC_CHECK(xc_queue_lane_full(q, 0) && !xc_queue_lane_full(q, 1) && !xc_queue_full(q), "lane 0 full, lane 1 not");
    memset(&it, 0, sizeof it);
    it.x = malloc(sizeof(float));
    it.n = 3, it.seq = 7, it.lane = 1;
    XC_CHECK(xc_queue_push(q, &it) == 0, "lane 1 takes a batch while lane 0 is full");
    xc_queue_counts_t c;
    xc_queue_counts(q, &c);
    XC_CHECK(c.lanes == 2 && c.lane_depth[0] == 2 && c.lane_depth[1] == 1 && c.lane_queued[1] == 3 &&
                 c.lane_acked[0] == 10 && c.depth == 3 && c.tokens_acked == 13, "counts per lane");
    XC_CHECK(xc_queue_try_pop_lane(q, 1, &out) == 0 && out.seq == 7, "pop lane 1");
    free(out.x);
    XC_CHECK(xc_queue_try_pop_lane(q, 1, &out) == XC_EAGAIN, "lane 1 empty");
    it.lane = 2;
    XC_CHECK(xc_queue_push(q, &it) == XC_EINVAL, "no lane 2");
    xc_queue_wait(q, 10, 2u); /* lane 1 empty: times out (no hang, no busy return needed) */
    xc_queue_destroy(&q);
}

int main(void)
{
    XC_RUN(test_parse);
    XC_RUN(test_lane_rule);
    XC_RUN(test_capacities);
    XC_RUN(test_quota);
    XC_RUN(test_draw_mixture);
    XC_RUN(test_draw_uniform);
    XC_RUN(test_plain_draw_unchanged);
    XC_RUN(test_restore);
    XC_RUN(test_queue_lanes);
    XC_TEST_EXIT();
}
