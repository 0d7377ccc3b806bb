/* unet --version: the version this unet was built from, the build's options
 * and the versions of the libraries it was built against and loads now, so
 * that a run's log says exactly what ran. */
#include <stdio.h>
#include <string.h>

#include <hdf5.h>
#include <json-c/json.h>
#include <png.h>
#include <tiffio.h>
#ifdef UNET_HAVE_MPI
#include <mpi.h>
#endif

#include "unet/backend.h"
#include "unet/config.h"
#include "unet_version.h"

/* The first line of a library's own description of itself. */
static void first_line(const char *text, char *buf, size_t n) {
    snprintf(buf, n, "%.*s", (int)strcspn(text, "\n,"), text);
}

#if defined(__clang__)
#define COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define COMPILER "gcc " __VERSION__
#else
#define COMPILER "an unknown compiler"
#endif

static void print_cuda(FILE *f) {
#ifdef UNET_HAVE_CUDA
    char versions[256];
    unet_cuda_versions(versions, sizeof versions);
#ifdef UNET_CUDA_EMULATED
    fprintf(f, "cuda      built against the CPU emulation of tests/emu (a correctness tool, not a GPU): %s\n",
            versions);
#else
    fprintf(f, "cuda      built: %s; machine code for %s\n", versions, UNET_BUILD_CUDA_ARCHITECTURES);
#endif
#else
    fprintf(f, "cuda      not built (configure with -DUNET_CUDA=ON where nvcc, cuDNN and NCCL are installed)\n");
#endif
}

static void print_mpi(FILE *f) {
#ifdef UNET_HAVE_MPI
    char text[MPI_MAX_LIBRARY_VERSION_STRING], line[128];
    int len = 0;
    /* one of the few MPI calls allowed before MPI_Init */
    if (MPI_Get_library_version(text, &len) == MPI_SUCCESS) {
        first_line(text, line, sizeof line);
        fprintf(f, "mpi       %s (--dist mpi)\n", line);
        return;
    }
    fprintf(f, "mpi       built (--dist mpi)\n");
#else
    fprintf(f, "mpi       not built (install libopenmpi-dev and reconfigure for --dist mpi)\n");
#endif
}

void unet_print_version(FILE *f) {
    if (UNET_GIT_DESCRIBE[0])
        fprintf(f, "unet %s (git %s)\n", UNET_VERSION, UNET_GIT_DESCRIBE);
    else
        fprintf(f, "unet %s\n", UNET_VERSION);
    fprintf(f, "build     %s, %s%s\n", UNET_BUILD_TYPE[0] ? UNET_BUILD_TYPE : "no build type", COMPILER,
            !strcmp(UNET_BUILD_SANITIZE, "ON") ? ", AddressSanitizer and UBSan" : "");
    print_cuda(f);
    print_mpi(f);
    unsigned major, minor, release;
    H5get_libversion(&major, &minor, &release);
    /* "LIBTIFF, Version 4.5.0\nCopyright ..." */
    const char *tiff_text = strstr(TIFFGetVersion(), "Version ");
    char tiff[64];
    first_line(tiff_text ? tiff_text + 8 : "?", tiff, sizeof tiff);
    fprintf(f, "libraries HDF5 %u.%u.%u (built against %d.%d.%d), json-c %s, libpng %s, libtiff %s, OpenMP %d\n", major,
            minor, release, H5_VERS_MAJOR, H5_VERS_MINOR, H5_VERS_RELEASE, json_c_version(), png_get_libpng_ver(NULL),
            tiff, _OPENMP);
}
