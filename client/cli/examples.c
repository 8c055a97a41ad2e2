/* `xcoder examples J`: a latent's live max-activating examples (PROTOCOL.md
 * 2.3), each window rendered as one line of text with the activating token in
 * [[ ]] (the rendering rule every client shares, proto/example_text.c); also
 * the few lines `xcoder latent J` and `xcoder report` show. */
#include "xc_cli.h"
#include "xc_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WIN_MAX 2049 /* 2 x examples_window (<= 1024) + 1 */

/* One example's text line into out (NUL-terminated). */
static int example_text(const xc_client_value_t *ex, xc_buf_t *out)
{
    const xc_client_value_t *toks = xc_client_value_get(ex, "tokens"), *pcs = xc_client_value_get(ex, "pieces");
    static int64_t ids[WIN_MAX];
    static const char *ps[WIN_MAX];
    static size_t lens[WIN_MAX];
    if (!toks || toks->type != XC_VAL_ARRAY || toks->u.a.n > WIN_MAX) return XC_EINVAL;
    size_t n = toks->u.a.n;
    for (size_t i = 0; i < n; i++) {
        const xc_client_value_t *t = &toks->u.a.items[i];
        const xc_client_value_t *p = pcs && pcs->type == XC_VAL_ARRAY && i < pcs->u.a.n ? &pcs->u.a.items[i] : NULL;
        ids[i] = t->type == XC_VAL_UINT ? (int64_t)t->u.u : t->type == XC_VAL_INT ? t->u.i : -1;
        ps[i] = p && p->type == XC_VAL_STR ? p->u.s.ptr : NULL;
        lens[i] = ps[i] ? p->u.s.len : 0;
    }
    xc_buf_reset(out);
    xc_proto_render_window(out, n, (long)xc_client_value_getnum(ex, "at", -1), ids, ps, lens);
    xc_buf_append(out, "", 1);
    return out->err;
}

/* Prints up to max examples of one kind ("top" / "random") of a reply, one line each. */
static void print_kind(FILE *f, const xc_client_value_t *r, const char *kind, long max, const char *indent)
{
    const xc_client_value_t *arr = xc_client_value_get(r, kind);
    xc_buf_t b;
    xc_buf_init(&b);
    for (size_t i = 0; arr && arr->type == XC_VAL_ARRAY && i < arr->u.a.n && (long)i < max; i++) {
        const xc_client_value_t *ex = &arr->u.a.items[i];
        char where[96];
        double doc = xc_client_value_getnum(ex, "doc", -1), pos = xc_client_value_getnum(ex, "pos", -1);
        const char *stream = xc_client_value_getstr(ex, "stream", "");
        if (doc == doc && doc >= 0) snprintf(where, sizeof where, "%s doc %.0f:%.0f", *stream ? stream : "-", doc, pos);
        else snprintf(where, sizeof where, "%s", *stream ? stream : "-");
        if (example_text(ex, &b)) continue;
        fprintf(f, "%s%9.4g  %-22s %s\n", indent, xc_client_value_getnum(ex, "act", 0), where, (const char *)b.data);
    }
    xc_buf_free(&b);
}

/* The latent's examples as lines (top first, then random); nothing when the
 * daemon has none or does not know the op. Used by latent and report. */
void xc_cli_print_examples(FILE *f, xc_client_t *c, long j, long top, long random, const char *indent)
{
    xc_client_arg_t args[2] = {{"j", XC_ARG_INT, j, 0, NULL}, {"n", XC_ARG_INT, top > random ? top : random, 0, NULL}};
    xc_client_value_t *r = NULL;
    if (xc_client_request(c, "examples", args, 2, &r) < 0 || !r) return;
    const xc_client_value_t *t = xc_client_value_get(r, "top");
    if (t && t->type == XC_VAL_ARRAY && t->u.a.n) {
        fprintf(f, "%stop examples (of %.0f activations seen):\n", indent, xc_client_value_getnum(r, "seen", 0));
        print_kind(f, r, "top", top, indent);
        if (random > 0) {
            fprintf(f, "%srandom examples:\n", indent);
            print_kind(f, r, "random", random, indent);
        }
    }
    xc_client_value_free(&r);
}

int xc_cli_cmd_examples(xc_cli_args_t *a)
{
    long j, n;
    int rc, out = XC_CLI_OK;
    if (xc_cli_opt(a, "checkpoint")) return xc_cli_examples_offline(a);
    if (a->npos < 1) {
        xc_cli_err(a, "give a latent J (live examples), or --checkpoint with --data and --tokens (offline)");
        return XC_CLI_USAGE;
    }
    if (xc_cli_parse_long("examples J", a->pos[0], 0, 1L << 40, &j)) return XC_CLI_USAGE;
    if (xc_cli_opt_long(a, "n", 20, 1, 255, &n)) return XC_CLI_USAGE;
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    xc_client_arg_t args[2] = {{"j", XC_ARG_INT, j, 0, NULL}, {"n", XC_ARG_INT, n, 0, NULL}};
    xc_client_value_t *r = NULL;
    if ((rc = xc_client_request(c, "examples", args, 2, &r)) < 0) {
        if (rc == XC_EUNKNOWN) xc_cli_err(a, "this daemon does not collect examples (too old)");
        out = xc_cli_fail(a, c, rc);
    } else if (a->json) {
        out = xc_cli_print_json(a, r);
    } else {
        const xc_client_value_t *t = xc_client_value_get(r, "top");
        printf("latent %ld: %.0f activations seen; window ±%.0f tokens\n", j, xc_client_value_getnum(r, "seen", 0),
               xc_client_value_getnum(r, "window", 0));
        if (!t || t->type != XC_VAL_ARRAY || !t->u.a.n) {
            printf("  no examples yet (the latent has not fired since the start or its last reset)\n");
        } else {
            printf("top examples (activation, stream doc:position, context with the token in [[ ]]):\n");
            print_kind(stdout, r, "top", n, "  ");
            printf("random examples:\n");
            print_kind(stdout, r, "random", n, "  ");
        }
        fflush(stdout);
    }
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    return out;
}
