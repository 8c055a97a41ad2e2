/* Ingest (xc_svc_internal.h, PROTOCOL.md 1): every batch is checked and
 * converted on the loop thread (O(bytes), needed to ack or nack it), queued for
 * the trainer, and answered with exactly one ack or nack. Refusals are counted
 * per class, logged within a budget, and aggregated into alert events. */
#include "xc_svc_internal.h"
#include "xc_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XC_SVC_REFUSE_CODE(c) c,
const int xc_svc_refuse_codes[XC_SVC_N_REFUSE] = {XC_SVC_REFUSALS(XC_SVC_REFUSE_CODE)};
#undef XC_SVC_REFUSE_CODE

/* The counter slot of a refusal code (an unlisted one counts as malformed). */
static int refuse_index(int code)
{
    for (int i = 0; i < XC_SVC_N_REFUSE; i++)
        if (xc_svc_refuse_codes[i] == code) return i;
    return 2; /* XC_EPROTO */
}

/* ----------------------------------------------------------- refusals -- */
/* Every refused batch gets its nack; the count, the log line (within the
 * per-second budget, so a flood cannot fill the log) and the aggregated alert
 * are kept per class. */
static void refuse(xc_svc_t *s, const xc_svc_envelope_t *env, const xc_batch_hdr_t *h, int code,
                   const char *why)
{
    int i = refuse_index(code);
    s->cnt.refused[i]++;
    s->cnt.batches_refused++;
    if (s->log_budget[i] > 0) {
        s->log_budget[i]--;
        xc_log(XC_LOG_WARN, "refused batch%s%llu from '%s': %s: %s", h && h->has_seq ? " seq " : "",
               h && h->has_seq ? (unsigned long long)h->seq : 0ull, h ? h->producer : "",
               xc_errname(code), why);
    } else {
        s->log_suppressed[i]++;
    }
    s->alert_count[i]++;
    snprintf(s->alert_producer[i], sizeof s->alert_producer[i], "%s", h ? h->producer : "");
    snprintf(s->alert_reason[i], sizeof s->alert_reason[i], "%s", why);
    xc_buf_reset(&s->out);
    if (xc_proto_nack_encode(&s->out, h, code, why) == 0)
        xc_svc_send_reply(s, s->ingest, env, s->out.data, s->out.len);
}

/* Publishes aggregated refusal alerts (at most one per class per second) and
 * the count of suppressed log lines. */
void xc_svc_flush_alerts(xc_svc_t *s, int force)
{
    double now = xc_svc_mono_s();
    for (int i = 0; i < XC_SVC_N_REFUSE; i++) {
        s->log_budget[i] = XC_SVC_LOG_BUDGET;
        if (s->log_suppressed[i]) {
            xc_log(XC_LOG_WARN, "%llu more %s refusals not logged", (unsigned long long)s->log_suppressed[i],
                   xc_errname(xc_svc_refuse_codes[i]));
            s->log_suppressed[i] = 0;
        }
        if (!s->alert_count[i] || (!force && now - s->alert_last[i] < 1.0)) continue;
        char msg[XC_PROTO_REASON_MAX + 96];
        snprintf(msg, sizeof msg, "%llu batch(es) refused with %s; last: %s",
                 (unsigned long long)s->alert_count[i], xc_errname(xc_svc_refuse_codes[i]), s->alert_reason[i]);
        xc_mpw_t w;
        xc_buf_reset(&s->out);
        xc_mpw_init(&w, &s->out);
        xc_proto_event_begin(&w, XC_EVENT_ALERT, s->cfg.name, xc_svc_unix_s());
        xc_mpw_kv_str(&w, "kind", "refused");
        xc_mpw_kv_str(&w, "code", xc_errname(xc_svc_refuse_codes[i]));
        xc_mpw_kv_str(&w, "producer", s->alert_producer[i]);
        xc_mpw_kv_uint(&w, "count", s->alert_count[i]);
        xc_mpw_kv_str(&w, "message", msg);
        xc_mpw_map_end(&w);
        if (xc_mpw_finish(&w) == 0) xc_svc_event_send(s, XC_EVENT_ALERT, &s->out);
        s->alert_count[i] = 0;
        s->alert_last[i] = now;
    }
}

/* ------------------------------------------------------- vocabularies -- */
/* A vocabulary message (PROTOCOL.md 1.5): checked like a batch, handed to the
 * examples store (copied; the trainer applies it between steps) and acked
 * with its piece count, or nacked (a full arena says which key to raise). */
static void handle_vocab(xc_svc_t *s, const xc_svc_envelope_t *env, const xc_frame_t *f, int nb)
{
    xc_batch_hdr_t h;
    char why[XC_PROTO_REASON_MAX];
    int rc = xc_proto_vocab_check(f, (size_t)nb, (size_t)s->cfg.max_msg_bytes, &h, why, sizeof why);
    if (!rc) {
        uint32_t *lens = malloc(sizeof *lens * (size_t)h.n); /* owned here: the frame need not be aligned */
        if (!lens) {
            rc = XC_ENOMEM;
            snprintf(why, sizeof why, "out of memory for %llu piece lengths", (unsigned long long)h.n);
        } else {
            const uint8_t *b = f[1].data;
            for (uint64_t i = 0; i < h.n; i++)
                lens[i] = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 | (uint32_t)b[4 * i + 2] << 16 |
                          (uint32_t)b[4 * i + 3] << 24;
            rc = xc_examples_submit_vocab(xc_trainer_examples(s->trainer), h.stream, h.first, (uint32_t)h.n, lens,
                                          f[2].data, f[2].len, why, sizeof why);
            free(lens);
        }
    }
    if (rc) {
        refuse(s, env, &h, rc, why);
        return;
    }
    xc_log(XC_LOG_INFO, "vocabulary of stream '%s' from '%s': %llu pieces from id %u", h.stream, h.producer,
           (unsigned long long)h.n, h.first);
    xc_queue_counts_t qc;
    xc_queue_counts(s->queue, &qc);
    xc_buf_reset(&s->out);
    if (xc_proto_ack_encode(&s->out, h.seq, h.n, qc.capacity - qc.depth) == 0)
        xc_svc_send_reply(s, s->ingest, env, s->out.data, s->out.len);
}

/* Tallies accepted tokens per producer id, so that status says what fed the
 * run (`xcoder report` shows its planted-feature section for runs fed by
 * `xcoder synth` alone). Bounded: ids beyond the first XC_SVC_PRODUCERS
 * are summed together. */
static void count_producer(xc_svc_t *s, const char *id, uint64_t n)
{
    for (int i = 0; i < s->n_producers; i++)
        if (!strcmp(s->producers[i].id, id)) {
            s->producers[i].tokens += n;
            return;
        }
    if (s->n_producers == XC_SVC_PRODUCERS) {
        s->producers_other += n;
        return;
    }
    snprintf(s->producers[s->n_producers].id, sizeof s->producers[0].id, "%s", id);
    s->producers[s->n_producers++].tokens = n;
}

static void ack_pushed(xc_svc_t *s, const xc_svc_envelope_t *env, const xc_qitem_t *item);
static void hold(xc_svc_t *s, const xc_svc_envelope_t *env, const xc_qitem_t *item);

/* -------------------------------------------------------------- ingest -- */
/* One ingest message: the checks of PROTOCOL.md 1 in order (stopping, frame
 * count, header, shape, lengths, values), the conversion to f32 into memory
 * the queue then owns, and the ack carrying the queue's free slots as credit.
 * The caller checked that the queue has room before reading the message. */
void xc_svc_handle_ingest(xc_svc_t *s, xc_svc_mmsg_t *mm)
{
    xc_svc_envelope_t env;
    xc_batch_hdr_t h;
    xc_frame_t f[XC_SVC_MAX_FRAMES];
    char why[XC_PROTO_REASON_MAX];
    int b0 = xc_svc_envelope_split(mm, &env), nb = mm->n - b0, rc;

    memset(&h, 0, sizeof h);
    for (int i = 0; i < nb; i++) {
        f[i].data = zmq_msg_data(&mm->m[b0 + i]);
        f[i].len = zmq_msg_size(&mm->m[b0 + i]);
    }
    if (s->stopping) {
        if (nb > 0) xc_proto_batch_hdr_decode(f[0].data, f[0].len, &h, why, sizeof why);
        refuse(s, &env, &h, XC_ESHUTDOWN, "the daemon is shutting down; batch not accepted");
        return;
    }
    if (nb > 0 && !(xc_auth_roles_of(&mm->m[b0]) & (XC_ROLE_PRODUCER | XC_ROLE_ADMIN))) {
        xc_proto_batch_hdr_decode(f[0].data, f[0].len, &h, why, sizeof why);
        refuse(s, &env, &h, XC_EPERM, "this client's key may not push batches (it needs the producer "
               "role: the daemon's operator adds its public key to allow_producers)");
        return;
    }
    if (!mm->extra && nb > 0 && nb <= 4 && xc_proto_ingest_is_vocab(f[0].data, f[0].len)) {
        handle_vocab(s, &env, f, nb);
        return;
    }
    if (s->cfg.max_tokens > 0 && xc_trainer_budget_reached(s->trainer)) {
        char msg[XC_PROTO_REASON_MAX];
        if (nb > 0) xc_proto_batch_hdr_decode(f[0].data, f[0].len, &h, why, sizeof why);
        snprintf(msg, sizeof msg, "token budget reached (max_tokens = %ld): training has stopped and the final "
                 "checkpoint is written; batch not accepted", s->cfg.max_tokens);
        refuse(s, &env, &h, XC_ESTATE, msg);
        return;
    }
    if (mm->extra || nb > 4) {
        if (nb > 0) xc_proto_batch_hdr_decode(f[0].data, f[0].len, &h, why, sizeof why);
        snprintf(why, sizeof why, "%d body frames; a batch has at most 4 (header, payload, tokens, positions)",
                 nb + mm->extra);
        refuse(s, &env, &h, XC_EPROTO, why);
        return;
    }
    xc_batch_limits_t lim = {(uint32_t)s->cfg.d, (size_t)s->cfg.max_msg_bytes};
    rc = xc_proto_batch_check(f, (size_t)nb, &lim, &h, why, sizeof why);
    if (rc) {
        refuse(s, &env, &h, rc, why);
        return;
    }
    int lane = xc_mix_lane(&s->mix, h.stream);
    if (lane < 0) {
        snprintf(why, sizeof why, "%s%s%s is not in stream_mix (%.64s): tag it with one of its streams, or add "
                 "'*:WEIGHT' to train others too", h.stream[0] ? "stream '" : "an untagged batch", h.stream,
                 h.stream[0] ? "'" : "", s->cfg.stream_mix);
        refuse(s, &env, &h, XC_EINVAL, why);
        return;
    }
    size_t count = (size_t)h.n * 2 * h.d;
    xc_qitem_t item;
    memset(&item, 0, sizeof item);
    item.x = malloc(count * sizeof(float)); /* owned by the queue after a push */
    if (!item.x) {
        snprintf(why, sizeof why, "out of memory for %llu tokens; retry later or send smaller batches",
                 (unsigned long long)h.n);
        refuse(s, &env, &h, XC_ENOMEM, why);
        return;
    }
    rc = xc_proto_payload_to_f32(&h, f[1].data, item.x, why, sizeof why);
    if (!rc) rc = xc_proto_payload_check_range(&h, item.x, (float)s->cfg.max_abs_value, why, sizeof why);
    if (rc) {
        free(item.x);
        refuse(s, &env, &h, rc, why);
        return;
    }
    if (h.has_tokens || h.has_pos) { /* the tokens' context travels with them (examples) */
        item.meta = malloc((size_t)h.n * sizeof *item.meta); /* owned with item.x */
        if (!item.meta) {
            free(item.x);
            refuse(s, &env, &h, XC_ENOMEM, "out of memory for the token ids; retry later");
            return;
        }
        xc_tokmeta_fill(item.meta, (long)h.n, h.has_tokens ? f[2].data : NULL,
                        h.has_pos ? f[h.has_tokens ? 3 : 2].data : NULL);
    }
    item.n = (long)h.n;
    item.lane = lane;
    item.seq = h.seq;
    memcpy(item.producer, h.producer, sizeof item.producer);
    memcpy(item.stream, h.stream, sizeof item.stream);
    if (s->mix.n > 0 && xc_queue_lane_full(s->queue, lane)) { /* the stream is ahead: its producer waits */
        hold(s, &env, &item);
        return;
    }
    if (xc_queue_push(s->queue, &item)) { /* cannot happen: room was checked before reading */
        free(item.x);
        free(item.meta);
        refuse(s, &env, &h, XC_EAGAIN, "queue full; retry");
        return;
    }
    ack_pushed(s, &env, &item);
}

/* ------------------------------------------------------ stream mixture -- */
/* The ack of a batch now in the queue; credit: the free slots of its lane. */
static void ack_pushed(xc_svc_t *s, const xc_svc_envelope_t *env, const xc_qitem_t *item)
{
    xc_queue_counts_t qc;
    count_producer(s, item->producer, (uint64_t)item->n);
    xc_queue_counts(s->queue, &qc);
    xc_buf_reset(&s->out);
    if (xc_proto_ack_encode(&s->out, item->seq, (uint64_t)item->n, qc.capacity - qc.lane_depth[item->lane]) == 0)
        xc_svc_send_reply(s, s->ingest, env, s->out.data, s->out.len);
}

/* Holds a checked batch whose stream lane is full (the loop stops reading
 * ingest once stream_hold batches are held: svc_loop.c). Takes item's memory. */
static void hold(xc_svc_t *s, const xc_svc_envelope_t *env, const xc_qitem_t *item)
{
    xc_svc_held_t *hd = &s->held[s->n_held++];
    hd->env = *env;
    hd->item = *item;
    s->lane_held_tokens[item->lane] += (uint64_t)item->n;
    s->lane_held_batches[item->lane]++;
    s->lane_holds[item->lane]++;
}

void xc_svc_release_held(xc_svc_t *s, int refuse_code)
{
    long kept = 0;
    for (long i = 0; i < s->n_held; i++) {
        xc_svc_held_t *hd = &s->held[i];
        int l = hd->item.lane;
        if (refuse_code) {
            xc_batch_hdr_t h;
            memset(&h, 0, sizeof h);
            h.seq = hd->item.seq;
            h.has_seq = 1;
            snprintf(h.producer, sizeof h.producer, "%s", hd->item.producer);
            refuse(s, &hd->env, &h, refuse_code, "the daemon is shutting down; batch (held for its stream) not accepted");
        } else if (xc_queue_lane_full(s->queue, l) || xc_queue_push(s->queue, &hd->item)) {
            s->held[kept++] = *hd; /* still no room: stays, in order */
            continue;
        } else {
            ack_pushed(s, &hd->env, &hd->item);
            hd->item.x = NULL, hd->item.meta = NULL; /* the queue owns them now */
        }
        free(hd->item.x);
        free(hd->item.meta);
        s->lane_held_tokens[l] -= (uint64_t)hd->item.n;
        s->lane_held_batches[l]--;
    }
    s->n_held = kept;
}
