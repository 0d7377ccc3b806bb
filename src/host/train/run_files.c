/* The checkpoint files of one training run (run_files.h): their names, the
 * periodic ones kept, the leftovers of interrupted writes, and the newest
 * complete checkpoint that --resume takes. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "host/common/util.h"
#include "host/train/run_files.h"

#define SUFFIX ".safetensors"

typedef enum { RUN_FILE_NONE, RUN_FILE_FINAL, RUN_FILE_PERIODIC, RUN_FILE_BEST, RUN_FILE_PARTIAL } run_file_kind;

/* The folder and the file-name prefix of `save`: runs/a/c.safetensors and
 * runs/a/c are both ("runs/a", "c"). */
typedef struct {
    char dir[UNET_RUN_PATH_MAX], base[UNET_RUN_PATH_MAX];
} run_prefix;

static void split(const char *save, run_prefix *p) {
    size_t len = strlen(save), ls = strlen(SUFFIX);
    if (len > ls && !strcmp(save + len - ls, SUFFIX)) len -= ls;
    const char *slash = NULL;
    for (size_t i = 0; i < len; i++)
        if (save[i] == '/') slash = save + i;
    if (!slash)
        snprintf(p->dir, sizeof p->dir, ".");
    else
        snprintf(p->dir, sizeof p->dir, "%.*s", slash == save ? 1 : (int)(slash - save), save);
    const char *base = slash ? slash + 1 : save;
    snprintf(p->base, sizeof p->base, "%.*s", (int)(save + len - base), base);
}

static int all_digits(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

/* What `name` is among the files of prefix `base` (*step: a periodic one's). */
static run_file_kind classify(const char *name, const char *base, long *step) {
    size_t lb = strlen(base), ls = strlen(SUFFIX);
    if (strncmp(name, base, lb)) return RUN_FILE_NONE;
    const char *rest = name + lb, *tail;
    run_file_kind kind;
    if (!strncmp(rest, ".step", 5) && isdigit((unsigned char)rest[5])) {
        char *end;
        *step = strtol(rest + 5, &end, 10);
        if (strncmp(end, SUFFIX, ls)) return RUN_FILE_NONE;
        kind = RUN_FILE_PERIODIC, tail = end + ls;
    } else if (!strncmp(rest, ".best" SUFFIX, 5 + ls)) {
        kind = RUN_FILE_BEST, tail = rest + 5 + ls;
    } else if (!strncmp(rest, SUFFIX, ls)) {
        kind = RUN_FILE_FINAL, tail = rest + ls;
    } else {
        return RUN_FILE_NONE;
    }
    if (!*tail) return kind;
    /* unet_st_write's temporary name: <target>.tmp.<pid> */
    return !strncmp(tail, ".tmp.", 5) && all_digits(tail + 5) ? RUN_FILE_PARTIAL : RUN_FILE_NONE;
}

/* dir/name; paths are at most UNET_CONFIG_STRING_MAX long, so one cut
 * short (left empty: no file has that name) does not happen. */
static void join(char *buf, size_t n, const char *dir, const char *name) {
    if (snprintf(buf, n, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", name) >= (int)n) buf[0] = 0;
}

/* dir/<base><tail> for the run that saves to `save` */
static void sibling(const char *save, const char *tail, char *buf, size_t n) {
    run_prefix p;
    split(save, &p);
    char name[UNET_RUN_PATH_MAX + 64];
    if (snprintf(name, sizeof name, "%s%s", p.base, tail) >= (int)sizeof name) name[0] = 0;
    join(buf, n, p.dir, name);
}

void unet_run_periodic_path(const char *save, long step, char *buf, size_t n) {
    char tail[64];
    snprintf(tail, sizeof tail, ".step%ld" SUFFIX, step);
    sibling(save, tail, buf, n);
}

void unet_run_best_path(const char *save, char *buf, size_t n) { sibling(save, ".best" SUFFIX, buf, n); }

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

int unet_run_periodic_steps(const char *save, long *steps, int max) {
    run_prefix p;
    split(save, &p);
    DIR *d = opendir(p.dir);
    if (!d) return 0;
    int count = 0;
    for (struct dirent *e; (e = readdir(d));) {
        long step;
        if (classify(e->d_name, p.base, &step) != RUN_FILE_PERIODIC) continue;
        if (count < max) steps[count] = step;
        count++;
    }
    closedir(d);
    qsort(steps, (size_t)(count < max ? count : max), sizeof *steps, cmp_long);
    return count;
}

void unet_run_prune_periodic(const char *save, long newest, int keep) {
    enum { MAX_FILES = 4096 };
    long *steps = malloc(MAX_FILES * sizeof *steps);
    if (!steps) return; /* the files stay: nothing is lost */
    int n = unet_run_periodic_steps(save, steps, MAX_FILES);
    if (n > MAX_FILES) n = MAX_FILES;
    int kept_before = 0;
    char path[UNET_RUN_PATH_MAX];
    for (int i = n - 1; i >= 0; i--) {
        int stays = keep > 0 && (steps[i] == newest || (steps[i] < newest && ++kept_before < keep));
        if (stays) continue;
        unet_run_periodic_path(save, steps[i], path, sizeof path);
        unlink(path);
    }
    free(steps);
}

int unet_run_remove_partial(const char *save, FILE *notes) {
    run_prefix p;
    split(save, &p);
    DIR *d = opendir(p.dir);
    if (!d) return 0;
    int removed = 0;
    char path[UNET_RUN_PATH_MAX];
    for (struct dirent *e; (e = readdir(d));) {
        long step;
        if (classify(e->d_name, p.base, &step) != RUN_FILE_PARTIAL) continue;
        join(path, sizeof path, p.dir, e->d_name);
        if (unlink(path) == 0) {
            removed++;
            if (notes) fprintf(notes, "removed %s, the rest of a checkpoint write that was interrupted\n", path);
        }
    }
    closedir(d);
    return removed;
}

/* ---- --resume -------------------------------------------------------- */

/* The candidates seen: the newest with optimizer state, and what was passed
 * over (said once the choice is made, or in the error when there is none). */
enum { MAX_NOTED = 4 };
typedef struct {
    int found;
    char path[UNET_RUN_PATH_MAX];
    unet_run_progress progress;
    struct timespec written;
    int passed_over;
    char problems[MAX_NOTED][1024];
} search;

/* Newer: written later, or as late and further on. The time decides first:
 * the final checkpoint of an earlier run under the same name is further on
 * than a new run's periodic ones, and older. */
static int newer(struct timespec t, long step, const search *s) {
    if (t.tv_sec != s->written.tv_sec) return t.tv_sec > s->written.tv_sec;
    if (t.tv_nsec != s->written.tv_nsec) return t.tv_nsec > s->written.tv_nsec;
    return step > s->progress.step;
}

/* 1: a complete checkpoint with optimizer state, the newest so far kept;
 * 0: a complete one with weights alone; -1: not a complete checkpoint (the
 * reason kept). */
static int consider(search *s, const char *path) {
    unet_checkpoint_meta meta;
    char why[1024];
    struct stat st;
    int whole = stat(path, &st) == 0;
    if (!whole)
        snprintf(why, sizeof why, "cannot read %s: %s", path, strerror(errno));
    else
        whole = unet_checkpoint_read_meta(path, &meta, why, sizeof why) == 0;
    if (!whole) {
        if (s->passed_over < MAX_NOTED) snprintf(s->problems[s->passed_over], sizeof s->problems[0], "%s", why);
        s->passed_over++;
        return -1;
    }
    int usable = strcmp(meta.optimizer_state, "none") != 0;
    if (usable && (!s->found || newer(st.st_mtim, meta.progress.step, s))) {
        s->found = 1;
        snprintf(s->path, sizeof s->path, "%s", path);
        s->progress = meta.progress;
        s->written = st.st_mtim;
    }
    unet_checkpoint_meta_free(&meta);
    return usable;
}

/* Every *.safetensors of a folder (best ones aside: the best validation is
 * a model to keep, not where a run stands). */
static void search_dir(search *s, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    size_t ls = strlen(SUFFIX), lb = strlen(".best" SUFFIX);
    char path[UNET_RUN_PATH_MAX];
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (len <= ls || strcmp(e->d_name + len - ls, SUFFIX) ||
            (len >= lb && !strcmp(e->d_name + len - lb, ".best" SUFFIX)))
            continue;
        join(path, sizeof path, dir, e->d_name);
        consider(s, path);
    }
    closedir(d);
}

/* The final and periodic checkpoints of a prefix, but the file named. */
static void search_prefix(search *s, const char *spec) {
    run_prefix p;
    split(spec, &p);
    DIR *d = opendir(p.dir);
    if (!d) return;
    char path[UNET_RUN_PATH_MAX];
    for (struct dirent *e; (e = readdir(d));) {
        long step;
        run_file_kind k = classify(e->d_name, p.base, &step);
        if (k != RUN_FILE_FINAL && k != RUN_FILE_PERIODIC) continue;
        join(path, sizeof path, p.dir, e->d_name);
        if (strcmp(path, spec)) consider(s, path);
    }
    closedir(d);
}

int unet_run_newest_checkpoint(const char *spec, char *path, size_t n, FILE *notes, char *err, size_t errlen) {
    search s = {0};
    struct stat st;
    const int exists = stat(spec, &st) == 0, is_dir = exists && S_ISDIR(st.st_mode);
    int named = -1; /* the file named: -1 none or no checkpoint, 0 weights alone, 1 a run's */
    if (is_dir) {
        search_dir(&s, spec);
    } else {
        /* the file named first: it wins a tie */
        if (exists) named = consider(&s, spec);
        search_prefix(&s, spec);
    }
    if (s.found || named == 0) {
        /* weights alone and nothing better: the loader says what to do instead */
        snprintf(path, n, "%s", s.found ? s.path : spec);
        for (int i = 0; notes && i < s.passed_over && i < MAX_NOTED; i++)
            fprintf(notes, "unet: --resume passes over %s\n", s.problems[i]);
        return 0;
    }
    if (exists && !is_dir && s.passed_over == 1) {
        /* the named file alone, and it is not a complete checkpoint: its own reason */
        unet_errorf(err, errlen, "%s", s.problems[0]);
    } else if (s.passed_over) {
        unet_errorf(err, errlen, "--resume %s: no complete checkpoint to resume (%d passed over; the first: %s)", spec,
                    s.passed_over, s.problems[0]);
    } else if (is_dir) {
        unet_errorf(err, errlen, "--resume %s: the folder holds no checkpoint (*.safetensors written by unet train)",
                    spec);
    } else {
        unet_errorf(err, errlen, "--resume %s: no such checkpoint, nor periodic ones beside it (%.*s.step<N>%s)", spec,
                    (int)(strlen(spec) - (strstr(spec, SUFFIX) ? strlen(SUFFIX) : 0)), spec, SUFFIX);
    }
    return -1;
}
