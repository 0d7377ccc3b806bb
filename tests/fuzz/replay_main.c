/* A fuzz target as a plain program: every file named on the command line is
 * one input, run once through LLVMFuzzerTestOneInput. Outside the fuzz build
 * each target links this instead of libFuzzer, so that a change to a reader's
 * interface breaks the ordinary build at once rather than CI's last stage, and
 * test_fuzz_regressions.py replays the saved inputs through the targets' own
 * checks in every build, the sanitizer build among them. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* libFuzzer calls it where a target defines it; so does this driver */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

static uint8_t *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *data = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        data = n >= 0 ? malloc((size_t)n + 1) : NULL;
        if (data && (fseek(f, 0, SEEK_SET) != 0 || fread(data, 1, (size_t)n, f) != (size_t)n)) {
            free(data);
            data = NULL;
        }
        *size = (size_t)n;
    }
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s INPUT... (each file is one input to the fuzz target)\n", argv[0]);
        return 2;
    }
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        size_t size = 0;
        uint8_t *data = read_file(argv[i], &size);
        if (!data) {
            fprintf(stderr, "%s: %s cannot be read\n", argv[0], argv[i]);
            return 2;
        }
        LLVMFuzzerTestOneInput(data, size);
        free(data);
    }
    return 0;
}
