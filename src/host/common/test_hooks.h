/* Test hooks of the crash-consistency tests (tests/cpu/test_reliability.py),
 * inert unless their environment variable is set:
 *
 *   UNET_TEST_KILL=POINT:N   the process sends itself SIGKILL the N-th time
 *                            (from 1) it reaches POINT, or at step N for
 *                            POINT "step": a crash at a moment the test names,
 *                            with no timing to race
 *   UNET_TEST_NAN_STEP=K     the batch of step K (from 1) gets a NaN
 *
 * Points: "step" (a step done, logged, validated and saved as due),
 * "checkpoint-write" (half a checkpoint's bytes written to its temporary
 * file), "checkpoint-rename" (the temporary file complete, not yet renamed),
 * "checkpoint-saved" (a periodic checkpoint in place, the older ones not yet
 * removed). Library-internal. */
#ifndef UNET_TEST_HOOKS_H
#define UNET_TEST_HOOKS_H

/* At POINT: dies there when UNET_TEST_KILL names it. index: the step for
 * "step", else -1 (the hook counts the visits). */
void unet_test_kill_point(const char *point, long index);
/* The step (from 1) whose batch gets a NaN; 0: none. */
long unet_test_nan_step(void);

#endif
