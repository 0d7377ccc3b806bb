/* The safetensors reader (src/host/train/safetensors.c): open and validate a
 * file, then read every tensor as the checkpoint loader would (floats as
 * float32, integers as int64) and every metadata string. */
#include "fuzz_common.h"
#include "unet/safetensors.h"

static void read_tensor(const unet_st_file *f, const unet_st_tensor *t) {
    /* the reader has checked that the tensor's bytes lie in the file, so numel is bounded by the input's size */
    size_t n = unet_st_numel(t);
    char err[1024] = "";
    float *f32 = malloc((n + 1) * sizeof *f32);
    int64_t *i64 = malloc((n + 1) * sizeof *i64);
    if (unet_st_read_f32(f, t, f32, err, sizeof err) && unet_st_read_i64(f, t, i64, err, sizeof err))
        fuzz_check_message(err);
    free(f32);
    free(i64);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file(data, size, ".safetensors");
    unet_st_file *f;
    char err[1024] = "";
    if (unet_st_open(path, &f, err, sizeof err)) {
        fuzz_check_message(err);
        return 0;
    }
    for (int i = 0; i < unet_st_count(f); i++) {
        const unet_st_tensor *t = unet_st_at(f, i);
        if (unet_st_find(f, t->name) == NULL) abort();
        read_tensor(f, t);
    }
    size_t text = 0;
    for (int i = 0; i < unet_st_meta_count(f); i++) {
        const unet_st_meta *m = unet_st_meta_at(f, i);
        text += strlen(m->key) + strlen(m->value);
        if (unet_st_meta_get(f, m->key) == NULL) abort();
    }
    (void)text;
    unet_st_close(f);
    return 0;
}
