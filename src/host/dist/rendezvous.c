/* Rendezvous: rank 0's bytes (the NCCL unique id) to every rank, over TCP to
 * MASTER_ADDR:MASTER_PORT and through a shared file, whichever reaches a rank
 * first. Rank 0 serves both until every rank has taken the bytes (a TCP
 * request or an acknowledgement file), so a rank that starts late, or sees
 * only one of the two paths, still gets through; everybody gives up after the
 * timeout with one line saying what it waited for. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "host/common/util.h"
#include "unet/dist.h"

#define MAGIC     "UNETRDV1"
#define MAGIC_LEN 8
#define MAX_BLOB  (1u << 20)

static void sleep_s(double s) {
    struct timespec t = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
    nanosleep(&t, NULL);
}

/* ---- where: MASTER_ADDR / MASTER_PORT, or derived from Slurm ------------ */

/* The first host of a Slurm node list: "gpu[07-09,12],cpu3" -> "gpu07". */
static void first_slurm_host(const char *list, char *out, size_t n) {
    size_t prefix = strcspn(list, "[,");
    if (list[prefix] == '[') {
        const char *range = list + prefix + 1;
        size_t digits = strcspn(range, "-,]");
        snprintf(out, n, "%.*s%.*s", (int)prefix, list, (int)digits, range);
    } else {
        snprintf(out, n, "%.*s", (int)prefix, list);
    }
}

void unet_rendezvous_master(char *addr, size_t addrlen, int *port) {
    const char *a = getenv("MASTER_ADDR"), *p = getenv("MASTER_PORT");
    const char *nodes = getenv("SLURM_JOB_NODELIST");
    if (!nodes) nodes = getenv("SLURM_NODELIST");
    const char *job = getenv("SLURM_JOB_ID");
    if (a && a[0])
        snprintf(addr, addrlen, "%s", a);
    else if (nodes && nodes[0])
        first_slurm_host(nodes, addr, addrlen);
    else
        snprintf(addr, addrlen, "127.0.0.1");
    if (p && atoi(p) > 0)
        *port = atoi(p);
    else if (job && job[0])
        *port = 15000 + (int)(strtoul(job, NULL, 10) % 20000); /* one port per job, clear of the ephemeral range */
    else
        *port = 29500;
}

void unet_rendezvous_file_path(char *buf, size_t n) {
    const char *f = getenv("UNET_RENDEZVOUS_FILE");
    if (f && f[0]) {
        snprintf(buf, n, "%s", f);
        return;
    }
    const char *job = getenv("SLURM_JOB_ID"), *restart = getenv("SLURM_RESTART_COUNT");
    char addr[256];
    int port;
    unet_rendezvous_master(addr, sizeof addr, &port);
    /* a requeued job keeps its id: the restart count keeps an old file from answering */
    if (job && job[0])
        snprintf(buf, n, ".unet-rendezvous-%s-%s", job, restart && restart[0] ? restart : "0");
    else
        snprintf(buf, n, ".unet-rendezvous-port%d", port);
}

/* ---- the wire: magic, rank, world; the answer: magic, length, bytes ---- */

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w, n -= (size_t)w;
    }
    return 0;
}

/* Reads exactly n bytes before the deadline. */
static int read_all(int fd, void *buf, size_t n, double deadline) {
    char *p = buf;
    while (n) {
        int left_ms = (int)((deadline - unet_now_s()) * 1000);
        if (left_ms <= 0) return -1;
        struct pollfd pfd = {fd, POLLIN, 0};
        int r = poll(&pfd, 1, left_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        ssize_t got = recv(fd, p, n, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        p += got, n -= (size_t)got;
    }
    return 0;
}

typedef struct {
    char magic[MAGIC_LEN];
    int32_t rank, world;
} hello;

typedef struct {
    char magic[MAGIC_LEN];
    int32_t world, status; /* status 0: the bytes follow; else the world sizes disagree */
    uint64_t bytes;
} answer;

struct unet_rendezvous {
    int rank, world;
    void *blob;
    size_t bytes;
    double timeout_s;
    char file[4096];
    int has_file;
    int listen_fd;
    pthread_t server;
    int server_started;
    pthread_mutex_t lock;
    int stop;
    char *served; /* rank 0: which ranks took the bytes over TCP */
};

static void serve_one(unet_rendezvous *r, int fd) {
    hello h;
    if (read_all(fd, &h, sizeof h, unet_now_s() + 5.0) || memcmp(h.magic, MAGIC, MAGIC_LEN)) return;
    answer a = {.world = r->world, .status = h.world != r->world, .bytes = r->bytes};
    memcpy(a.magic, MAGIC, MAGIC_LEN);
    if (write_all(fd, &a, sizeof a)) return;
    if (a.status) {
        fprintf(stderr,
                "unet: rendezvous: rank %d started with a world of %d, rank 0 with %d (every rank must be "
                "launched with the same world size)\n",
                (int)h.rank, (int)h.world, r->world);
        return;
    }
    if (write_all(fd, r->blob, r->bytes)) return;
    char ack = 0;
    /* the peer acknowledges once it has every byte: only then does it count as served */
    if (!read_all(fd, &ack, 1, unet_now_s() + 5.0) && ack == 'K' && h.rank > 0 && h.rank < r->world) {
        pthread_mutex_lock(&r->lock);
        r->served[h.rank] = 1;
        pthread_mutex_unlock(&r->lock);
    }
}

static void *server_main(void *arg) {
    unet_rendezvous *r = arg;
    for (;;) {
        pthread_mutex_lock(&r->lock);
        int stop = r->stop;
        pthread_mutex_unlock(&r->lock);
        if (stop) break;
        struct pollfd pfd = {r->listen_fd, POLLIN, 0};
        if (poll(&pfd, 1, 100) <= 0) continue;
        int fd = accept(r->listen_fd, NULL, NULL);
        if (fd < 0) continue;
        serve_one(r, fd);
        close(fd);
    }
    return NULL;
}

static int listen_on(int port, char *err, size_t errlen) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        snprintf(err, errlen, "rendezvous: socket(): %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 256)) {
        snprintf(err, errlen, "rendezvous: cannot listen on port %d (%s): set MASTER_PORT to a free port", port,
                 strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void ack_path(const unet_rendezvous *r, int rank, char *buf, size_t n) {
    snprintf(buf, n, "%s.ack%d", r->file, rank);
}

/* tmp file beside the target, then rename: a reader sees all of it or nothing */
static int write_file_atomic(const unet_rendezvous *r, char *err, size_t errlen) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", r->file, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    answer a = {.world = r->world, .status = 0, .bytes = r->bytes};
    memcpy(a.magic, MAGIC, MAGIC_LEN);
    int ok = f && fwrite(&a, sizeof a, 1, f) == 1 && fwrite(r->blob, 1, r->bytes, f) == r->bytes;
    if (f && fclose(f)) ok = 0;
    if (!ok || rename(tmp, r->file)) {
        snprintf(err, errlen,
                 "rendezvous: cannot write %s (%s): set UNET_RENDEZVOUS_FILE to a path on a file "
                 "system every node shares",
                 r->file, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* One try over TCP: 1 when the bytes came, 0 when nobody answered (yet), -1 on a fatal mismatch. */
static int try_tcp(unet_rendezvous *r, const char *addr, int port, char *err, size_t errlen) {
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(addr, service, &hints, &res) || !res) return 0;
    int got = 0;
    for (struct addrinfo *ai = res; ai && !got; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) continue;
        int flags = fcntl(fd, F_GETFL, 0);
        fcntl(fd, F_SETFL, flags | O_NONBLOCK);
        int c = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (c < 0 && errno == EINPROGRESS) {
            struct pollfd pfd = {fd, POLLOUT, 0};
            int so = 0;
            socklen_t len = sizeof so;
            c = poll(&pfd, 1, 1000) == 1 && !getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &len) && so == 0 ? 0 : -1;
        }
        fcntl(fd, F_SETFL, flags);
        if (c == 0) {
            hello h = {.rank = r->rank, .world = r->world};
            memcpy(h.magic, MAGIC, MAGIC_LEN);
            answer a;
            double deadline = unet_now_s() + 10.0;
            if (!write_all(fd, &h, sizeof h) && !read_all(fd, &a, sizeof a, deadline) &&
                !memcmp(a.magic, MAGIC, MAGIC_LEN)) {
                if (a.status) {
                    snprintf(err, errlen,
                             "rendezvous: this rank was started with a world of %d, rank 0 with %d "
                             "(launch every rank with the same world size)",
                             r->world, (int)a.world);
                    got = -1;
                } else if (a.bytes == r->bytes && !read_all(fd, r->blob, r->bytes, deadline)) {
                    got = 1;
                    write_all(fd, "K", 1);
                }
            }
        }
        close(fd);
    }
    freeaddrinfo(res);
    return got;
}

static int try_file(unet_rendezvous *r, char *err, size_t errlen) {
    FILE *f = fopen(r->file, "rb");
    if (!f) return 0;
    answer a;
    int got = fread(&a, sizeof a, 1, f) == 1 && !memcmp(a.magic, MAGIC, MAGIC_LEN) && a.bytes == r->bytes &&
              fread(r->blob, 1, r->bytes, f) == r->bytes;
    fclose(f);
    if (got && a.world != r->world) {
        snprintf(err, errlen,
                 "rendezvous: %s is for a world of %d, this rank was started with %d (a file left "
                 "by another job? remove it, or set UNET_RENDEZVOUS_FILE)",
                 r->file, (int)a.world, r->world);
        return -1;
    }
    if (got) {
        char ack[4200];
        ack_path(r, r->rank, ack, sizeof ack);
        FILE *k = fopen(ack, "w");
        if (k) fclose(k);
    }
    return got;
}

int unet_rendezvous_begin(const char *addr, int port, const char *file, int rank, int world, void *blob, size_t bytes,
                          double timeout_s, unet_rendezvous **out, char *err, size_t errlen) {
    *out = NULL;
    if (world < 1 || rank < 0 || rank >= world || bytes == 0 || bytes > MAX_BLOB || (!addr && !file)) {
        snprintf(err, errlen, "rendezvous: rank %d of %d with %zu bytes and neither address nor file", rank, world,
                 bytes);
        return -1;
    }
    unet_rendezvous *r = unet_alloc_zeroed(1, sizeof *r, "the rendezvous", err, errlen);
    if (!r) return -1;
    r->rank = rank, r->world = world, r->blob = blob, r->bytes = bytes, r->timeout_s = timeout_s;
    r->listen_fd = -1;
    r->has_file = file != NULL;
    if (file) snprintf(r->file, sizeof r->file, "%s", file);
    pthread_mutex_init(&r->lock, NULL);
    if (rank == 0) {
        r->served = calloc((size_t)world, 1);
        char why_tcp[512] = "", why_file[4608] = "";
        if (addr && world > 1) {
            r->listen_fd = listen_on(port, why_tcp, sizeof why_tcp);
            if (r->listen_fd >= 0 && pthread_create(&r->server, NULL, server_main, r) == 0) r->server_started = 1;
        }
        int file_ok = file && world > 1 && write_file_atomic(r, why_file, sizeof why_file) == 0;
        if (world > 1 && !r->server_started && !file_ok) {
            snprintf(err, errlen, "%s%s%s", why_tcp, why_tcp[0] && why_file[0] ? "; " : "", why_file);
            unet_rendezvous_end(r);
            return -1;
        }
        *out = r;
        return 0;
    }
    double deadline = unet_now_s() + timeout_s;
    for (;;) {
        int got = addr ? try_tcp(r, addr, port, err, errlen) : 0;
        if (!got && file) got = try_file(r, err, errlen);
        if (got < 0) break;
        if (got > 0) {
            *out = r;
            return 0;
        }
        if (unet_now_s() > deadline) {
            char where[4400] = "";
            if (addr) snprintf(where, sizeof where, "on %s:%d", addr, port);
            if (file)
                snprintf(where + strlen(where), sizeof where - strlen(where), "%sin %s", addr ? " or " : "", file);
            snprintf(err, errlen,
                     "rendezvous: rank %d of %d heard nothing from rank 0 %s within %.0f s (is rank 0 "
                     "running? MASTER_ADDR, MASTER_PORT or UNET_RENDEZVOUS_FILE may need setting)",
                     rank, world, where, timeout_s);
            break;
        }
        sleep_s(0.05);
    }
    unet_rendezvous_end(r);
    return -1;
}

void unet_rendezvous_end(unet_rendezvous *r) {
    if (!r) return;
    if (r->rank == 0 && r->world > 1) {
        /* wait for every rank to have the bytes, then take both paths down */
        double deadline = unet_now_s() + r->timeout_s;
        for (;;) {
            int missing = 0;
            for (int k = 1; k < r->world; k++) {
                char ack[4200];
                struct stat st;
                ack_path(r, k, ack, sizeof ack);
                pthread_mutex_lock(&r->lock);
                int served = r->served[k];
                pthread_mutex_unlock(&r->lock);
                if (!served && !(r->has_file && stat(ack, &st) == 0)) missing++;
            }
            if (!missing || unet_now_s() > deadline) break;
            sleep_s(0.02);
        }
        if (r->server_started) {
            pthread_mutex_lock(&r->lock);
            r->stop = 1;
            pthread_mutex_unlock(&r->lock);
            pthread_join(r->server, NULL);
        }
        if (r->listen_fd >= 0) close(r->listen_fd);
        if (r->has_file) {
            unlink(r->file);
            for (int k = 1; k < r->world; k++) {
                char ack[4200];
                ack_path(r, k, ack, sizeof ack);
                unlink(ack);
            }
        }
    }
    pthread_mutex_destroy(&r->lock);
    free(r->served);
    free(r);
}
