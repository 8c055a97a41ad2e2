/* xcoder keygen: a CurveZMQ key pair for a client (or a daemon) of tcp endpoints. */
#include "xc_cli.h"
#include "xc_keys.h"

#include <stdio.h>

int xc_cli_cmd_keygen(xc_cli_args_t *a)
{
    xc_keypair_t kp;
    char why[600];
    if (xc_keys_generate(&kp, why, sizeof why) || xc_keys_write(a->pos[0], &kp, why, sizeof why)) {
        xc_cli_err(a, "%s", why);
        return XC_CLI_FAIL;
    }
    printf("wrote %s.key (secret, mode 0600) and %s.pub\npublic key: %s\n", a->pos[0], a->pos[0],
           kp.public_z85);
    return XC_CLI_OK;
}
