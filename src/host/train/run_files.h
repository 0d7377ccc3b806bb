/* The checkpoint files of one training run, named after --save C.safetensors
 * and kept beside it:
 *
 *   C.safetensors             the final checkpoint (and the one a stop writes)
 *   C.step<N>.safetensors     periodic, after step N (--save-every, --save-every-min); the last --keep stay
 *   C.best.safetensors        the best validation so far (--save-best)
 *   C*.safetensors.tmp.<pid>  a write in progress (unet_st_write); never taken for a checkpoint
 *
 * A prefix without ".safetensors" (C) names the same files. Library-internal. */
#ifndef UNET_RUN_FILES_H
#define UNET_RUN_FILES_H

#include <stddef.h>
#include <stdio.h>

#include "unet/checkpoint.h"

#define UNET_RUN_PATH_MAX 4200 /* any --save (UNET_CONFIG_STRING_MAX) with a suffix */

/* C.step<N>.safetensors and C.best.safetensors of the run that saves to `save`. */
void unet_run_periodic_path(const char *save, long step, char *buf, size_t n);
void unet_run_best_path(const char *save, char *buf, size_t n);

/* The steps N of the periodic checkpoints there are, ascending; at most max
 * of them (the count found is returned, maybe more than max). */
int unet_run_periodic_steps(const char *save, long *steps, int max);

/* Removes the periodic checkpoints but the one of step `newest` and the
 * keep - 1 before it (keep 0: all of them); one found past `newest` belongs
 * to a history this run replaced, and goes too. */
void unet_run_prune_periodic(const char *save, long newest, int keep);

/* Removes the temporary files of writes that a crash interrupted, one line
 * each on notes (NULL: quiet); returns how many. Only this run's names. */
int unet_run_remove_partial(const char *save, FILE *notes);

/* --resume SPEC: the newest complete checkpoint with optimizer state that
 * SPEC names (the last written; of two written at once, the further on). A
 * directory: its *.safetensors (best ones aside); a file or a prefix: it,
 * and the final and periodic checkpoints of its prefix. Every
 * candidate is opened and checked whole (a file cut short is not complete);
 * one that is not is passed over, with a line on notes (NULL: quiet) once a
 * checkpoint is found. A named file with weights alone is taken when there
 * is nothing better (its loader says what to do instead). 0 with the path,
 * or -1 with one line when there is none. */
int unet_run_newest_checkpoint(const char *spec, char *path, size_t n, FILE *notes, char *err, size_t errlen);

#endif
