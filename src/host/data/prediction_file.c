/* Prediction output files (unet predict). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "host/data/hdf5_lock.h"
#include "unet/data.h"

struct unet_prediction_file {
    char *path, *tmp;
    hid_t file, prob, pred;
    int n, k, h, w;
};

static hid_t create_dataset(hid_t file, const char *name, hid_t type, int rank, const hsize_t *dims,
                            const hsize_t *chunk) {
    hid_t space = H5Screate_simple(rank, dims, NULL), plist = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(plist, rank, chunk);
    H5Pset_shuffle(plist);
    H5Pset_deflate(plist, 4);
    hid_t d = H5Dcreate2(file, name, type, space, H5P_DEFAULT, plist, H5P_DEFAULT);
    H5Pclose(plist);
    H5Sclose(space);
    return d;
}

int unet_prediction_file_create(const char *path, int n, int classes, int height, int width, unet_prediction_file **out,
                                char *err, size_t errlen) {
    unet_prediction_file *f = calloc(1, sizeof *f);
    f->path = strdup(path);
    f->tmp = malloc(strlen(path) + 32);
    sprintf(f->tmp, "%s.tmp.%d", path, (int)getpid());
    f->n = n, f->k = classes, f->h = height, f->w = width;
    f->file = f->prob = f->pred = -1;
    unet_hdf5_lock();
    f->file = H5Fcreate(f->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f->file >= 0) {
        hsize_t pd[4] = {(hsize_t)n, (hsize_t)classes, (hsize_t)height, (hsize_t)width};
        hsize_t pc[4] = {1, (hsize_t)classes, (hsize_t)height, (hsize_t)width};
        hsize_t qd[3] = {(hsize_t)n, (hsize_t)height, (hsize_t)width}, qc[3] = {1, (hsize_t)height, (hsize_t)width};
        f->prob = create_dataset(f->file, "prob", H5T_IEEE_F32LE, 4, pd, pc);
        f->pred = create_dataset(f->file, "pred", H5T_STD_U8LE, 3, qd, qc);
    }
    unet_hdf5_unlock();
    if (f->file < 0 || f->prob < 0 || f->pred < 0) {
        snprintf(err, errlen, "cannot create %s (is the directory writable and is there space?)", path);
        unet_prediction_file_close(f, 0, err + strlen(err), 0);
        return -1;
    }
    *out = f;
    return 0;
}

static int write_image(hid_t d, hid_t mem_type, int rank, const hsize_t *dims, int index, const void *buf) {
    hsize_t start[4] = {(hsize_t)index, 0, 0, 0}, count[4];
    for (int i = 0; i < rank; i++) count[i] = i ? dims[i] : 1;
    hid_t fs = H5Dget_space(d), ms = H5Screate_simple(rank, count, NULL);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    herr_t rc = H5Dwrite(d, mem_type, ms, fs, H5P_DEFAULT, buf);
    H5Sclose(ms);
    H5Sclose(fs);
    return rc < 0 ? -1 : 0;
}

int unet_prediction_file_write(unet_prediction_file *f, int index, const float *prob, const uint8_t *pred, char *err,
                               size_t errlen) {
    hsize_t pd[4] = {(hsize_t)f->n, (hsize_t)f->k, (hsize_t)f->h, (hsize_t)f->w};
    hsize_t qd[3] = {(hsize_t)f->n, (hsize_t)f->h, (hsize_t)f->w};
    unet_hdf5_lock();
    int rc = write_image(f->prob, H5T_NATIVE_FLOAT, 4, pd, index, prob);
    if (!rc) rc = write_image(f->pred, H5T_NATIVE_UINT8, 3, qd, index, pred);
    unet_hdf5_unlock();
    if (rc) snprintf(err, errlen, "writing image %d to %s failed (disk full?)", index, f->tmp);
    return rc;
}

int unet_prediction_file_close(unet_prediction_file *f, int commit, char *err, size_t errlen) {
    int rc = 0;
    unet_hdf5_lock();
    if (f->prob >= 0) H5Dclose(f->prob);
    if (f->pred >= 0) H5Dclose(f->pred);
    if (f->file >= 0 && H5Fclose(f->file) < 0) rc = -1;
    unet_hdf5_unlock();
    if (commit && !rc && rename(f->tmp, f->path) != 0) rc = -1;
    if (!commit || rc) {
        unlink(f->tmp);
        if (commit && errlen) snprintf(err, errlen, "could not finish %s", f->path);
    }
    free(f->path);
    free(f->tmp);
    free(f);
    return commit ? rc : 0;
}
