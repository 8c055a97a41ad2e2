/* Per-latent statistics in POSIX shared memory: the layout (version 2), the
 * latent classes, and the C writer and reader. Documented in proto/SHM.md.
 *
 * The object is /xcoderd.<instance> (shm_open name). It is written only by the
 * daemon and read lock-free by any number of processes through a seqlock: the
 * writer makes `seq` odd, writes, then makes it even again; a reader copies the
 * arrays between two reads of an unchanged even `seq`. Each update also stores
 * a 64-bit FNV-1a checksum of the array region, so a reader can prove that its
 * copy is not torn. All fields are little-endian, naturally aligned, and the
 * header is a plain C struct of fixed size so that readers in other languages
 * (Python's struct/numpy) can decode it from the offsets documented below. */
#ifndef XC_SHM_H
#define XC_SHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define XC_SHM_MAGIC 0x4d485358u /* "XSHM" little-endian */
#define XC_SHM_LAYOUT_VERSION 2u /* 2: the chat betas' standard errors (arrays 24-27), flag bit 2 */
#define XC_SHM_MAX_ARRAYS 32

/* Latent classes (by relative decoder norm; dead wins over all).
 * X(enum, value, name): the one list of them. */
#define XC_CLASS_MAP(X)                  \
    X(XC_CLASS_OTHER, 0, "other")         \
    X(XC_CLASS_SHARED, 1, "shared")       \
    X(XC_CLASS_CHAT_ONLY, 2, "chat_only") \
    X(XC_CLASS_BASE_ONLY, 3, "base_only") \
    X(XC_CLASS_DEAD, 4, "dead")
enum {
#define XC_CLASS_ENUM(e, v, name) e = v,
    XC_CLASS_MAP(XC_CLASS_ENUM)
#undef XC_CLASS_ENUM
    XC_CLASS_N = 5
};
/* The slot of class_counts[] after the classes: latents flagged chat-specific
 * (XC_FLAG_CHAT_SPECIFIC), named "chat_specific" wherever counts are shown. */
#define XC_COUNT_CHAT_SPECIFIC 5
#define XC_COUNT_CHAT_SPECIFIC_NAME "chat_specific"
/* flags: bit set per latent */
#define XC_FLAG_CHAT_SPECIFIC 0x01u /* Delta >= chat_only_min, nu_err < nu_err_max, nu_rec < nu_rec_max */
#define XC_FLAG_SCALING_EXACT 0x02u /* the chat-specific test used the exact pass's nu (else the running one) */
#define XC_FLAG_NU_UNSTABLE 0x04u   /* that nu is unstable: |beta_chat| < scaling_nu_min_z x its standard error
                                     * (either target), or undefined; never chat-specific then */

/* Per-latent arrays, in this order in the object. */
typedef enum {
    XC_SHM_DELTA_NORM = 0, /* f32 relative decoder norm */
    XC_SHM_COSINE,         /* f32 cos(d_base, d_chat) */
    XC_SHM_NORM_BASE,      /* f32 ||d_base|| */
    XC_SHM_NORM_CHAT,      /* f32 ||d_chat|| */
    XC_SHM_FREQ,           /* f32 firing frequency (EMA) */
    XC_SHM_MEAN_ACT,       /* f32 mean activation when firing */
    XC_SHM_MAX_ACT,        /* f32 max activation */
    XC_SHM_LAST_STEP,      /* i64 last training step the latent fired at, -1 never */
    XC_SHM_BETA_ERR_BASE,  /* f32 beta, error target, base (NaN = undefined) */
    XC_SHM_BETA_ERR_CHAT,  /* f32 */
    XC_SHM_BETA_REC_BASE,  /* f32 beta, reconstruction target, base */
    XC_SHM_BETA_REC_CHAT,  /* f32 */
    XC_SHM_NU_ERR,         /* f32 nu^eps = beta_err_base / beta_err_chat */
    XC_SHM_NU_REC,         /* f32 nu^r */
    XC_SHM_ACTIVE,         /* f64 activations behind beta (EMA-weighted when running) */
    XC_SHM_EXACT_BETA_ERR_BASE, /* f32 the last exact pass (NaN until one completes) */
    XC_SHM_EXACT_BETA_ERR_CHAT, /* f32 */
    XC_SHM_EXACT_BETA_REC_BASE, /* f32 */
    XC_SHM_EXACT_BETA_REC_CHAT, /* f32 */
    XC_SHM_EXACT_NU_ERR,   /* f32 */
    XC_SHM_EXACT_NU_REC,   /* f32 */
    XC_SHM_EXACT_ACTIVE,   /* f64 */
    XC_SHM_CLASS,          /* u8 XC_CLASS_* */
    XC_SHM_FLAGS,          /* u8 XC_FLAG_* */
    XC_SHM_BETA_ERR_CHAT_SE,       /* f32 standard error of beta_err_chat (running; NaN undefined) */
    XC_SHM_BETA_REC_CHAT_SE,       /* f32 standard error of beta_rec_chat (running) */
    XC_SHM_EXACT_BETA_ERR_CHAT_SE, /* f32 the same, of the last exact pass */
    XC_SHM_EXACT_BETA_REC_CHAT_SE, /* f32 */
    XC_SHM_NARRAYS
} xc_shm_array_t;

enum { XC_SHM_F32 = 1, XC_SHM_F64 = 2, XC_SHM_I64 = 3, XC_SHM_U8 = 4 };

typedef struct {
    uint64_t offset;    /* bytes from the start of the object */
    uint32_t dtype;     /* XC_SHM_F32 ... */
    uint32_t elem_size; /* bytes per element */
} xc_shm_array_desc_t;

/* Fixed header at offset 0 (size 1024 bytes, padded). Offsets of the fields are
 * part of the layout version. */
typedef struct {
    uint32_t magic;          /*   0 XC_SHM_MAGIC */
    uint32_t layout_version; /*   4 */
    uint32_t header_size;    /*   8 sizeof(xc_shm_header_t) */
    uint32_t n_arrays;       /*  12 XC_SHM_NARRAYS */
    uint64_t total_size;     /*  16 bytes of the whole object */
    uint32_t n_latents;      /*  24 */
    uint32_t d;              /*  28 */
    uint32_t model;          /*  32 0 = batchtopk, 1 = l1 */
    uint32_t writer_pid;     /*  36 */
    uint64_t seq;            /*  40 seqlock: odd while an update is being written */
    uint64_t gen;            /*  48 number of completed updates */
    uint64_t checksum;       /*  56 FNV-1a 64 of the array region, for this gen */
    int64_t step;            /*  64 training steps completed */
    uint64_t tokens;         /*  72 tokens trained on */
    double updated_unix;     /*  80 wall-clock time of this update */
    double loss;             /*  88 */
    double recon_l2;         /*  96 */
    double recon_mse;        /* 104 */
    double aux;              /* 112 */
    double fve_base;         /* 120 */
    double fve_chat;         /* 128 */
    double l0;               /* 136 */
    double dead_fraction;    /* 144 */
    double theta;            /* 152 */
    double tokens_per_s;     /* 160 */
    int64_t scaling_step;    /* 168 step of the dictionary behind the exact_* arrays, -1 none */
    uint64_t scaling_tokens; /* 176 tokens in that exact pass */
    uint32_t class_counts[8];/* 184 latents per XC_CLASS_*; [XC_COUNT_CHAT_SPECIFIC] = chat-specific */
    uint32_t alive;          /* 216 1 while the writer runs, 0 after a clean close */
    uint32_t reserved0;      /* 220 */
    float thresholds[6];     /* 224 chat_only_min, base_only_max, shared_lo, shared_hi, nu_err_max, nu_rec_max */
    uint8_t pad0[8];         /* 248 */
    xc_shm_array_desc_t arrays[XC_SHM_MAX_ARRAYS]; /* 256 .. 768 */
    char owner[256];         /* 768 the writer's run_dir, NUL-terminated ("" unknown) */
} xc_shm_header_t;

typedef struct {
    float chat_only_min; /* Delta >= this: chat-only (0.9) */
    float base_only_max; /* Delta <= this: base-only (0.1) */
    float shared_lo, shared_hi; /* shared: lo <= Delta < hi (0.4, 0.6) */
    float nu_err_max, nu_rec_max; /* chat-specific: nu_err < 0.2 and nu_rec < 0.5 */
} xc_class_thresholds_t;

void xc_class_thresholds_default(xc_class_thresholds_t *t);
/* XC_CLASS_* of a latent. */
int xc_latent_class(float delta_norm, int dead, const xc_class_thresholds_t *t);
/* 1 if chat-specific (NaN nu never is: pass NaN for an unstable nu). */
int xc_latent_chat_specific(float delta_norm, float nu_err, float nu_rec, const xc_class_thresholds_t *t);
const char *xc_class_name(int cls);

/* Object name for an instance: "/xcoderd.<instance>". 0 or XC_EINVAL (bad name). */
int xc_shm_name(const char *instance, char *out, size_t out_len);
uint64_t xc_shm_checksum(const void *data, size_t len);

/* ---- writer (the daemon) ---- */
typedef struct xc_shm_writer xc_shm_writer_t;
/* Creates (replacing any stale object of that name) and maps the object; owner
 * (the daemon's run_dir, may be NULL) is recorded in the header. An object whose
 * writer is another live process (alive = 1, writer_pid running) is not stale:
 * NULL with *err = XC_ESTATE and why naming that writer's pid and owner.
 * Otherwise NULL on failure with *err and a reason in why. */
xc_shm_writer_t *xc_shm_writer_open(const char *instance, uint32_t n_latents, uint32_t d, uint32_t model,
                                    mode_t mode, const char *owner, int *err, char *why, size_t why_len);
xc_shm_header_t *xc_shm_writer_header(xc_shm_writer_t *w);
void *xc_shm_writer_array(xc_shm_writer_t *w, xc_shm_array_t a);
/* Bracket an update: begin makes seq odd; end stores the checksum, gen and time,
 * then makes seq even. */
void xc_shm_writer_begin(xc_shm_writer_t *w);
void xc_shm_writer_end(xc_shm_writer_t *w);
/* Unmaps; with unlink_it also marks the object dead and removes its name, but
 * only while the name still refers to this writer's object (never one that
 * another writer has created since). */
void xc_shm_writer_close(xc_shm_writer_t **w, int unlink_it);

/* ---- reader (any local process) ---- */
typedef struct xc_shm_reader xc_shm_reader_t;
/* Maps the object read-only. NULL on failure with *err (XC_ENOTFOUND when there
 * is no such object, XC_ECORRUPT for a foreign or incompatible one). */
xc_shm_reader_t *xc_shm_reader_open(const char *instance, int *err);
void xc_shm_reader_close(xc_shm_reader_t **r);

/* A consistent copy: header plus the array region; owned by the caller, free
 * with xc_shm_snapshot_free. */
typedef struct {
    xc_shm_header_t hdr;
    uint8_t *data;  /* whole object copy (total_size bytes); arrays at hdr.arrays[i].offset */
    int retries;    /* seqlock retries this snapshot needed */
} xc_shm_snapshot_t;
/* Retries while the writer is mid-update, up to max_retries (then XC_EAGAIN).
 * Verifies the checksum: XC_ECORRUPT if a stable copy does not match. */
int xc_shm_reader_snapshot(xc_shm_reader_t *r, xc_shm_snapshot_t *out, int max_retries);
const void *xc_shm_snapshot_array(const xc_shm_snapshot_t *s, xc_shm_array_t a);
void xc_shm_snapshot_free(xc_shm_snapshot_t *s);

#endif
