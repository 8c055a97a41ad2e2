/* `xcoder checkpoints`, `xcoder fetch`, `xcoder table` (remote.c): checkpoint
 * files and latent tables over the control socket (PROTOCOL.md 2.1, 2.2).
 * main.c splices XC_CLI_REMOTE_COMMANDS into its command table. */
#ifndef XC_CLI_REMOTE_H
#define XC_CLI_REMOTE_H

#include "xc_cli.h"

extern const xc_cli_optdef_t xc_cli_fetch_opts[];
extern const xc_cli_optdef_t xc_cli_table_opts[];
extern const xc_cli_optdef_t xc_cli_checkpoints_opts[];
int xc_cli_cmd_checkpoints(xc_cli_args_t *a);
int xc_cli_cmd_fetch(xc_cli_args_t *a);
int xc_cli_cmd_table(xc_cli_args_t *a);

#define XC_CLI_REMOTE_COMMANDS                                                                        \
    {"checkpoints", "", "the checkpoint files the daemon keeps (name, size, step)",                    \
     "One `checkpoints` request: every NAME-STEP[.KIND].safetensors file in the daemon's\n"          \
     "state_dir, oldest first, with its size, step, kind and time; `fetch` downloads them.",          \
     xc_cli_checkpoints_opts, 0, 0, 1, xc_cli_cmd_checkpoints},                                        \
    {"fetch", "[CKPT] OUT", "download a checkpoint over the control socket (works remotely)",        \
     "Copies checkpoint CKPT (a name from `xcoder checkpoints` or a path the daemon\n"               \
     "reported; default: the newest) into OUT in chunks of at most 1 MiB. Bytes go to\n"            \
     "OUT.part; OUT appears only once the SHA-256 of the whole file matches the daemon's.\n"         \
     "--resume continues an interrupted transfer from the size of OUT.part (Ctrl-C leaves\n"        \
     "it behind); a .part that is not this file's start is detected and fetched again.",              \
     xc_cli_fetch_opts, 1, 2, 1, xc_cli_cmd_fetch},                                                    \
    {"table", "", "per-latent columns (the shared-memory arrays) over the control socket",          \
     "One `table` request: Δnorm, cosine, norms, frequency, activations, last step, running\n"      \
     "and exact β/ν, class and flags of every latent (or --range A:B), as the daemon's\n"           \
     "snapshot holds them. Prints tab-separated columns (j first), or --json, or --npy DIR\n"         \
     "(one DIR/FIELD.npy per column, in its dtype).",                                                \
     xc_cli_table_opts, 0, 0, 1, xc_cli_cmd_table},

#endif
