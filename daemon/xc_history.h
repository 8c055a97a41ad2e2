/* The stats history: every stats event also appended as one line of JSON to
 * STATE_DIR/history.jsonl, so training curves outlive the terminal that
 * watched them (README "History", PROTOCOL.md 2.4).
 *
 * Bounded: before a line would take the file past max_bytes, the file is
 * renamed to history.jsonl.1 (replacing the previous one) and a new one is
 * begun, so the two files together hold at most about 2 x max_bytes. Lines
 * are appended with O_APPEND and never fsynced (a stats line every second
 * must not wait on the disk; a crash loses at most the last few lines, never
 * the earlier ones). The reader takes the newest lines of both files, oldest
 * first, bounded in count and bytes. */
#ifndef XC_HISTORY_H
#define XC_HISTORY_H

#include <stddef.h>

#define XC_HISTORY_FILE "history.jsonl"
#define XC_HISTORY_OLD "history.jsonl.1"

/* Appends line (len bytes, no newline: one is added) to DIR/history.jsonl,
 * rotating first when the file would pass max_bytes (max_bytes <= 0: no
 * history, nothing written). The file is created mode 0640 (less the umask).
 * 0 or XC_EIO / XC_EINVAL with the reason in why. */
int xc_history_append(const char *dir, const char *line, size_t len, long max_bytes, char *why, size_t why_len);

/* Called for each line the reader returns, oldest first; line is borrowed
 * (valid during the call), without its newline. Nonzero stops the reading. */
typedef int (*xc_history_line_fn)(void *ctx, const char *line, size_t len);

/* The newest n lines of DIR's history (history.jsonl.1, then history.jsonl),
 * at most max_bytes of them in all, given oldest first to fn. *more is set
 * to 1 when older lines exist that were left out (by n or max_bytes). Missing
 * files are an empty history. 0 or XC_EIO / XC_ENOMEM with the reason. */
int xc_history_tail(const char *dir, long n, size_t max_bytes, xc_history_line_fn fn, void *ctx, int *more,
                    char *why, size_t why_len);

#endif
