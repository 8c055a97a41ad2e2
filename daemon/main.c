/* xcoderd: the crosscoder training daemon. Parses the configuration (file and
 * command line, see daemon/config.c), then runs the service until SIGTERM,
 * SIGINT or a shutdown request. Exit status: 0 after a clean shutdown with its
 * checkpoint written; 1 when the final checkpoint failed; 2 on a configuration
 * or start-up error. */
#include "xc_config.h"
#include "xc_error.h"
#include "xc_keys.h"
#include "xc_log.h"
#include "xc_service.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int main(int argc, char **argv)
{
    xc_cfg_t cfg;
    xc_cfg_cli_t cli;
    char why[1024];
    int err;

    signal(SIGPIPE, SIG_IGN);
    /* whatever the caller's umask: run_dir, sockets, checkpoints and log are
     * 0750/0640 at most (shm_mode and the metrics file set their modes) */
    umask(umask(0) | 027);
    if (argc >= 2 && strcmp(argv[1], "--keygen") == 0) {
        /* the daemon's CURVE key pair: BASE.key (secret, 0600) and BASE.pub */
        xc_keypair_t kp;
        if (argc != 3) {
            fprintf(stderr, "usage: xcoderd --keygen BASE  (writes BASE.key and BASE.pub)\n");
            return 2;
        }
        if (xc_keys_generate(&kp, why, sizeof why) || xc_keys_write(argv[2], &kp, why, sizeof why)) {
            fprintf(stderr, "xcoderd: %s\n", why);
            return 2;
        }
        printf("wrote %s.key (secret, mode 0600) and %s.pub\npublic key: %s\n", argv[2], argv[2],
               kp.public_z85);
        return 0;
    }
    if (xc_cfg_load(&cfg, argc, argv, &cli, why, sizeof why)) {
        fprintf(stderr, "xcoderd: %s\n", why);
        return 2;
    }
    if (cli.help) {
        xc_cfg_print_help(stdout, argv[0]);
        return 0;
    }
    if (cli.print_example) {
        xc_cfg_print_file(stdout, NULL);
        return 0;
    }
    if (cli.print_config) {
        xc_cfg_print_file(stdout, &cfg);
        return 0;
    }
    xc_log_set_level(cfg.log_level);
    if (xc_svc_open_log(cfg.log_file, why, sizeof why)) {
        fprintf(stderr, "xcoderd: %s\n", why);
        return 2;
    }
    xc_svc_t *svc = xc_svc_new(&cfg, argc, argv, &err, why, sizeof why);
    if (!svc) {
        xc_log(XC_LOG_ERROR, "cannot start: %s", why);
        return 2;
    }
    int rc = xc_svc_run(svc);
    xc_svc_destroy(&svc);
    if (rc) {
        xc_log(XC_LOG_ERROR, "exiting after a failed shutdown: %s", xc_strerror(rc));
        return 1;
    }
    xc_log(XC_LOG_INFO, "exiting cleanly");
    return 0;
}
