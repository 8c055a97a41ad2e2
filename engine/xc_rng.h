/* Deterministic PRNG (xoshiro256**, seeded by splitmix64): the same seed gives the
 * same stream on every machine, which checkpoints and tests rely on. */
#ifndef XC_RNG_H
#define XC_RNG_H

#include <stdint.h>

typedef struct { uint64_t s[4]; } xc_rng_t;

void xc_rng_seed(xc_rng_t *r, uint64_t seed);
uint64_t xc_rng_u64(xc_rng_t *r);
/* Uniform in [0, 1). */
double xc_rng_uniform(xc_rng_t *r);
/* Uniform integer in [0, n), n > 0, without modulo bias. */
uint64_t xc_rng_below(xc_rng_t *r, uint64_t n);
/* Standard normal (Box-Muller; one value per call, no hidden cache). */
double xc_rng_normal(xc_rng_t *r);

#endif
