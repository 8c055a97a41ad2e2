/* Live max-activating examples: for every latent, the top-N token occurrences
 * by activation seen in training, plus a uniform random sample (a reservoir) of
 * its activating occurrences, each with its stream, document, position and a
 * window of +-W token ids around it. Top examples alone mislead (they show the
 * extreme, not the typical), hence the reservoir.
 *
 * Where the ids come from: producers send token ids, (document, position)
 * pairs and a stream tag with their batches (PROTOCOL.md 1.1). Every token of a
 * popped batch enters a bounded ring of recent tokens (the document store,
 * indexed by (source, document, position)); windows are cut from it when an
 * occurrence enters a heap or the reservoir. A window whose right side had not
 * arrived yet is completed at the next steps (at most XC_EX_PENDING_MAX such
 * windows, each retried for XC_EX_PENDING_STEPS steps).
 *
 * Vocabularies (token id -> text piece) are registered per stream tag; the
 * stream "" holds the default one (used for streams without their own).
 *
 * Memory, stated and fixed at creation (S = top_n + random_n, W = window):
 *   examples  F x S x (32 + 4 (2W + 1)) bytes   (at F = 16384, S = 25, W = 16: 67 MB)
 *   store     store_tokens x 24 bytes           (ring 16 B + index 8 B per token)
 *   vocab     vocab_bytes                       (one arena for every stream)
 *
 * Threads: one owner thread (the trainer) calls every function that changes
 * the object; queries (xc_examples_encode, _count, _get) and the requests
 * (xc_examples_submit_vocab, _request_reset) may come from any thread: they
 * take the object's lock; requests are applied by the owner in
 * xc_examples_apply, between steps, so a checkpoint's copy (taken by the owner)
 * never races a change. */
#ifndef XC_EXAMPLES_H
#define XC_EXAMPLES_H

#include <stddef.h>
#include <stdint.h>

#include "xc_engine.h"
#include "xc_proto.h"

#define XC_EX_NONE 0xFFFFFFFFu     /* an absent token id */
#define XC_EX_NOSRC 0xFFFFu        /* a token of no known source */
#define XC_EX_MAX_SOURCES 256      /* (producer, stream) pairs remembered */
#define XC_EX_MAX_VOCABS 64        /* streams with a vocabulary */
#define XC_EX_STREAM_MAX 32        /* bytes in a stream tag (= XC_PROTO_STREAM_MAX) */
#define XC_EX_PIECE_MAX 1024       /* bytes in one vocabulary piece */
#define XC_EX_PENDING_MAX 4096
#define XC_EX_PENDING_STEPS 64

/* One token's context, carried with it from the ingest socket through the
 * queue and the mixing buffer (16 bytes). */
typedef struct {
    uint32_t id;       /* token id, XC_EX_NONE if not sent */
    uint32_t doc, pos; /* document and position in it (when flags & XC_TM_POS) */
    uint16_t src;      /* source index (xc_examples_source), XC_EX_NOSRC if none */
    uint16_t flags;
} xc_tokmeta_t;
#define XC_TM_POS 1u

/* One example as stored (32 bytes); its window is kept beside it. */
typedef struct {
    float act;         /* the activation f (unscaled, as selected by the step) */
    uint32_t id;       /* token id, XC_EX_NONE if not sent */
    uint32_t doc, pos;
    uint16_t src, flags; /* XC_EXF_* */
    int16_t left, right; /* window tokens present before / after it */
    int64_t step;      /* training step that saw it */
} xc_example_t;
#define XC_EXF_USED 1u
#define XC_EXF_POS 2u
#define XC_EXF_PENDING 4u  /* the right side of the window may still arrive */

typedef struct {
    int top_n;            /* top examples per latent (0: none) */
    int random_n;         /* reservoir sample per latent (0: none) */
    int window;           /* W: tokens each side of an example */
    long store_tokens;    /* document store capacity, tokens (>= 2W + 1) */
    size_t vocab_bytes;   /* vocabulary arena, bytes (multiple of 8) */
    uint64_t seed;        /* the reservoir's draws */
} xc_examples_config_t;

typedef struct xc_examples xc_examples_t;

/* Fills the defaults: 20 top, 5 random, W = 16, 262144 store tokens, 8 MiB. */
void xc_examples_config_default(xc_examples_config_t *c);
/* Bytes the object holds for a dictionary of F latents. */
size_t xc_examples_memory(const xc_examples_config_t *c, long F);

/* NULL on failure (*err: XC_ENOMEM, XC_ECONFIG for bad sizes). The object owns
 * all its memory; free with xc_examples_destroy. */
xc_examples_t *xc_examples_new(const xc_examples_config_t *c, long dict_size, int *err);
void xc_examples_destroy(xc_examples_t **x);
const xc_examples_config_t *xc_examples_config(const xc_examples_t *x);

/* Owner: the source index of (producer, stream) (interned; the table keeps
 * XC_EX_MAX_SOURCES, after which XC_EX_NOSRC). NULL strings count as "". */
uint16_t xc_examples_source(xc_examples_t *x, const char *producer, const char *stream);
/* Owner: n tokens in stream order into the document store (those without
 * XC_TM_POS or a source are skipped). */
void xc_examples_store(xc_examples_t *x, const xc_tokmeta_t *meta, long n);
/* Owner: one training step's selection (CSR over the batch's tokens, as
 * xc_engine_selection gives it) with the batch's token metadata meta[B]. */
void xc_examples_update(xc_examples_t *x, const xc_tokmeta_t *meta, long B, const long *row_ptr,
                        const int *col, const float *val, long step);
/* Owner: applies requested vocabularies and resets (between steps). */
void xc_examples_apply(xc_examples_t *x);

/* Any thread: registers pieces [first, first + n) of stream's vocabulary
 * (first = 0 replaces the stream's vocabulary; a later chunk appends). lens[n]
 * byte lengths, bytes their concatenation (invalid UTF-8 is replaced by
 * U+FFFD). Copied; applied at the owner's next xc_examples_apply. 0, or
 * XC_ETOOBIG (the arena or the table of vocabularies is full; why says what
 * to raise), XC_EINVAL (a piece over XC_EX_PIECE_MAX bytes, a chunk that does
 * not continue the stream's vocabulary). */
int xc_examples_submit_vocab(xc_examples_t *x, const char *stream, uint32_t first, uint32_t n,
                             const uint32_t *lens, const char *bytes, size_t bytes_len, char *why,
                             size_t why_len);
/* Owner (start-up): a vocabulary file for stream "" (the default): a JSON
 * array of strings (id = index), an object {piece: id} (vocab.json), or a
 * Hugging Face tokenizer.json (model.vocab). Applied at once. */
int xc_examples_load_vocab_file(xc_examples_t *x, const char *path, char *why, size_t why_len);
/* Any thread: forget latent j's examples (j < 0: every latent's) at the next apply. */
int xc_examples_request_reset(xc_examples_t *x, long j);

/* Any thread: latent j's examples into a reply under construction (inside an
 * open map): j, window, top_n, random_n, seen, top [...], random [...] (at most
 * max_n of each; PROTOCOL.md "examples"). */
int xc_examples_encode(xc_examples_t *x, long j, long max_n, xc_mpw_t *w);
/* Any thread: copies latent j's examples of one kind (0 top, best first; 1
 * random, in slot order) into out[max] with their windows into win[max][2W+1]
 * (may be NULL); returns the count. *seen: activations counted for j. */
int xc_examples_get(xc_examples_t *x, long j, int kind, xc_example_t *out, uint32_t *win, int max,
                    uint64_t *seen);
/* Any thread: the text of token id in stream (the default vocabulary if the
 * stream has none) copied into out (NUL-terminated); 0, or XC_ENOTFOUND. */
int xc_examples_piece(xc_examples_t *x, const char *stream, uint32_t id, char *out, size_t out_len);
/* Any thread: the names of source src. 0 or XC_ENOTFOUND. */
int xc_examples_source_name(xc_examples_t *x, uint16_t src, char *producer, size_t pl, char *stream,
                            size_t sl);

/* Owner: the state as checkpoint views (fixed sizes): trainer.examples.* .
 * After a restore wrote into them, call xc_examples_state_restored (rebuilds
 * the store's index and the pending list). */
#define XC_EXAMPLES_VIEWS 7
int xc_examples_state_views(xc_examples_t *x, xc_state_view_t *out, int max);
void xc_examples_state_restored(xc_examples_t *x);

/* Pure helper for the ingest path: fills meta[n] from the batch's optional
 * token-id frame (n u32 LE) and position frame (n x (doc, pos) u32 LE). */
void xc_tokmeta_fill(xc_tokmeta_t *meta, long n, const void *tokens, const void *pos);

#endif
