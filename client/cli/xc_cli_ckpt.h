/* `xcoder inspect`, `xcoder export` (ckpt.c): checkpoint files read locally
 * with libxcoder's loader (proto/CHECKPOINT.md). main.c splices
 * XC_CLI_CKPT_COMMANDS into its command table. */
#ifndef XC_CLI_CKPT_H
#define XC_CLI_CKPT_H

#include "xc_cli.h"

extern const xc_cli_optdef_t xc_cli_inspect_opts[];
extern const xc_cli_optdef_t xc_cli_export_opts[];
int xc_cli_cmd_inspect(xc_cli_args_t *a);
int xc_cli_cmd_export(xc_cli_args_t *a);

#define XC_CLI_CKPT_COMMANDS                                                                           \
    {"inspect", "CKPT", "a checkpoint file's header, tensors, metadata and checksum (offline)",       \
     "Reads CKPT (a model file NAME-STEP.safetensors, its training state\n"                          \
     "NAME-STEP.resume.safetensors, or any safetensors file), checks its layout and content\n"      \
     "checksum and, for an xcoderd checkpoint, the other file of its pair. Exit status 1 when\n"      \
     "the file or its pair is corrupt.",                                                              \
     xc_cli_inspect_opts, 1, 1, 1, xc_cli_cmd_inspect},                                                \
    {"export", "CKPT OUT | --hf DIR CKPT", "write the inference-only model file (parameters, theta, k, metadata)", \
     "Reads the crosscoder from CKPT (a model file or a training-state file, whose checksum\n"       \
     "must be valid) and writes OUT: the reference BatchTopKCrossCoder / CrossCoder state dict\n"    \
     "(load_state_dict(..., strict=True) works), with the source's metadata, atomically. No\n"      \
     "optimizer or training state. --dtype f16 or bf16 halves its size. --hf DIR writes\n"          \
     "DIR/model.safetensors with the config.json (activation_dim, dict_size, num_layers, k,\n"      \
     "code_normalization) the reference's from_pretrained(DIR, from_hub=True) reads.",               \
     xc_cli_export_opts, 1, 2, 1, xc_cli_cmd_export},

#endif
