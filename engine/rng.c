/* xoshiro256** (Blackman and Vigna), seeded through splitmix64 (see xc_rng.h). */
#include "xc_rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* splitmix64 spreads any seed, 0 included, over the 256-bit state, which
 * xoshiro needs to be not all zero. */
void xc_rng_seed(xc_rng_t *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

uint64_t xc_rng_u64(xc_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}

double xc_rng_uniform(xc_rng_t *r) { return (double)(xc_rng_u64(r) >> 11) * 0x1.0p-53; }

/* Rejection of the top partial block of 2^64 values keeps every residue
 * equally likely. */
uint64_t xc_rng_below(xc_rng_t *r, uint64_t n)
{
    uint64_t lim = UINT64_MAX - UINT64_MAX % n, v;
    do v = xc_rng_u64(r);
    while (v >= lim);
    return v % n;
}

double xc_rng_normal(xc_rng_t *r)
{
    double u1 = 1.0 - xc_rng_uniform(r); /* (0, 1]: log() stays finite */
    double u2 = xc_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
