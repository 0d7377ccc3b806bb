/* Drives the launch and rendezvous parts of the communicator for
 * tests/cpu/test_dist.py:
 *   unet_disttest place [RANK WORLD LOCAL]       prints "rank R world W local L source S" from the environment
 *                                                (and flags, -1 for none), or the one-line error
 *   unet_disttest master                          prints "ADDR PORT FILE" the rendezvous would use
 *   unet_disttest rendezvous tcp|file|both RANK WORLD PORT FILE TIMEOUT_S SEED
 *                                                rank 0 sends 128 bytes made from SEED, every rank prints
 *                                                "rank R got HEX"; rank 0 returns once every rank has them */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/dist.h"
#include "unet/rng.h"

int main(int argc, char **argv) {
    char err[1024];
    if (argc >= 2 && !strcmp(argv[1], "place")) {
        int r = argc > 2 ? atoi(argv[2]) : -1, w = argc > 3 ? atoi(argv[3]) : -1, l = argc > 4 ? atoi(argv[4]) : -1;
        unet_dist_place p;
        if (unet_dist_place_from_env(r, w, l, &p, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
        printf("rank %d world %d local %d source %s\n", p.rank, p.world, p.local_rank, p.source);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "master")) {
        char addr[256], file[4096];
        int port;
        unet_rendezvous_master(addr, sizeof addr, &port);
        unet_rendezvous_file_path(file, sizeof file);
        printf("%s %d %s\n", addr, port, file);
        return 0;
    }
    if (argc == 9 && !strcmp(argv[1], "rendezvous")) {
        const char *mode = argv[2];
        int rank = atoi(argv[3]), world = atoi(argv[4]), port = atoi(argv[5]);
        const char *file = argv[6];
        double timeout = atof(argv[7]);
        uint64_t seed = strtoull(argv[8], NULL, 10);
        unsigned char blob[128] = {0};
        if (rank == 0)
            for (int i = 0; i < 128; i++) blob[i] = (unsigned char)(unet_uniform(unet_rng_key(seed, 7, 0), i) * 256);
        int tcp = !strcmp(mode, "tcp") || !strcmp(mode, "both"),
            by_file = !strcmp(mode, "file") || !strcmp(mode, "both");
        unet_rendezvous *r;
        if (unet_rendezvous_begin(tcp ? "127.0.0.1" : NULL, port, by_file ? file : NULL, rank, world, blob, sizeof blob,
                                  timeout, &r, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        unet_rendezvous_end(r); /* rank 0: waits for everybody */
        printf("rank %d got ", rank);
        for (int i = 0; i < 128; i++) printf("%02x", blob[i]);
        printf("\n");
        return 0;
    }
    fprintf(stderr, "usage: unet_disttest place [R W L] | master | rendezvous tcp|file|both RANK WORLD PORT FILE "
                    "TIMEOUT SEED\n");
    return 2;
}
