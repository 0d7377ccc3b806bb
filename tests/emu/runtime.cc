/* The CUDA emulator's runtime (tests/emu/README.md): one emulated device
 * ("emulated", sm_90) whose memory is host memory, streams that run their
 * work at once and in order, stream capture into graphs that replay the
 * recorded work, and kernels run block after block, the threads of a block
 * as cooperative fibers.
 *
 * What it checks, as a GPU would fail or worse:
 *  - copies and memsets name live device allocations and stay inside them
 *    (a host pointer where a device one is due, a freed one, an overrun);
 *  - kernels write nothing past the end of an allocation (redzones checked
 *    after every kernel), touch no invalid address (reported with the
 *    kernel, the block and the thread), and launch within the limits;
 *  - __syncthreads is reached by every thread of the block and a warp
 *    shuffle by every lane of the warp (no thread may have exited);
 *  - calls that a stream capture forbids (allocations, synchronisation)
 *    invalidate the capture, as they do on a GPU.
 * New and freed device memory is filled with 0xff bytes (NaN as float and
 * bf16, -1 as int), so reading what was never written shows. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <deque>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "emu_runtime.h"

uint3 unet_emu_threadIdx, unet_emu_blockIdx;
dim3 unet_emu_blockDim, unet_emu_gridDim;

namespace unet_emu {

/* ---------------------------------------------------------------------------
 * Errors and the device
 * ------------------------------------------------------------------------- */

static thread_local cudaError_t last_error = cudaSuccess;
static cudaError_t sticky = cudaSuccess; /* a fault: the context is lost */

std::recursive_mutex &device_lock() {
    static std::recursive_mutex m;
    return m;
}
#define LOCKED std::lock_guard<std::recursive_mutex> guard_(device_lock())

static cudaError_t fail(cudaError_t e) {
    if (e != cudaSuccess) last_error = e;
    return e;
}

void say(const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "unet CUDA emulator: %s\n", buf);
    fflush(stderr);
}

void device_fault(const std::string &what) {
    say("device fault: %s", what.c_str());
    sticky = cudaErrorIllegalAddress;
    last_error = sticky;
}

static const size_t TOTAL_MEMORY = (size_t)80 << 30;
static int current_device = 0;

static int device_count() {
    const char *v = getenv("UNET_CUDA_EMU_DEVICES"); /* 0: a machine without a GPU */
    return v && *v ? atoi(v) : 1;
}

/* ---------------------------------------------------------------------------
 * Memory: host memory with redzones, tracked
 * ------------------------------------------------------------------------- */

static const size_t REDZONE = 256;
static const unsigned char REDZONE_BYTE = 0xa5, POISON_BYTE = 0xff;
static const size_t QUARANTINE_BYTES = (size_t)512 << 20;

struct allocation {
    char *raw;    /* REDZONE | bytes | slack and REDZONE */
    size_t bytes; /* what was asked */
    size_t span;  /* bytes rounded to 256 */
    bool freed;
};

static std::map<uintptr_t, allocation> allocations; /* by user address, live and quarantined */
static std::deque<uintptr_t> quarantine;
static size_t live_bytes, quarantined_bytes;

static const allocation *allocation_of(const void *p, uintptr_t *base) {
    auto it = allocations.upper_bound((uintptr_t)p);
    if (it == allocations.begin()) return nullptr;
    --it;
    if ((uintptr_t)p >= it->first + it->second.span + REDZONE) return nullptr;
    *base = it->first;
    return &it->second;
}

bool device_range(const void *p, size_t bytes, std::string *why) {
    LOCKED;
    uintptr_t base = 0;
    const allocation *a = allocation_of(p, &base);
    char buf[256];
    if (!a || (uintptr_t)p < base) {
        snprintf(buf, sizeof buf, "%p is not device memory (no cudaMalloc'd block holds it)", p);
    } else if (a->freed) {
        snprintf(buf, sizeof buf, "%p lies in a block of %zu bytes at 0x%llx that was freed", p, a->bytes,
                 (unsigned long long)base);
    } else if ((uintptr_t)p + bytes > base + a->bytes) {
        snprintf(buf, sizeof buf, "%zu bytes at %p run %zu bytes past the end of the block of %zu bytes at 0x%llx", bytes,
                 p, (size_t)((uintptr_t)p + bytes - base - a->bytes), a->bytes, (unsigned long long)base);
    } else {
        return true;
    }
    if (why) *why = buf;
    return false;
}

static bool redzones_intact(uintptr_t base, const allocation &a) {
    const unsigned char *front = (const unsigned char *)a.raw, *back = (const unsigned char *)base + a.bytes;
    size_t back_len = a.span - a.bytes + REDZONE;
    for (size_t i = 0; i < REDZONE; i++)
        if (front[i] != REDZONE_BYTE) return false;
    for (size_t i = 0; i < back_len; i++)
        if (back[i] != REDZONE_BYTE) return false;
    return true;
}

void check_redzones(const char *what) {
    for (auto &kv : allocations) {
        if (kv.second.freed || redzones_intact(kv.first, kv.second)) continue;
        char msg[512];
        snprintf(msg, sizeof msg, "%s wrote outside the device block of %zu bytes at 0x%llx (before it or past its end)",
                 what, kv.second.bytes, (unsigned long long)kv.first);
        device_fault(msg);
        /* once is enough: restore them, so that the next check names the next culprit */
        memset(kv.second.raw, REDZONE_BYTE, REDZONE);
        memset((char *)kv.first + kv.second.bytes, REDZONE_BYTE, kv.second.span - kv.second.bytes + REDZONE);
    }
}

/* ---------------------------------------------------------------------------
 * Streams, capture and graphs
 * ------------------------------------------------------------------------- */

/* A piece of stream work. Two kinds do no work of their own: a hang (work that never finishes, as a collective
 * waiting for a dead peer: the stream stops there until release_hang) and a wait for another stream's event
 * (cudaStreamWaitEvent: the stream stops there until that stream has reached the event). */
struct node {
    std::string what;
    std::function<void()> work;
    bool hang = false;
    unet_emu_stream *wait_stream = nullptr;
    unsigned long long wait_seq = 0;
};

} // namespace unet_emu

struct unet_emu_graph {
    std::vector<unet_emu::node> nodes;
};
struct unet_emu_graph_exec {
    std::vector<unet_emu::node> nodes;
};

namespace unet_emu {

struct capture {
    cudaStream_t origin;
    cudaStreamCaptureMode mode;
    std::thread::id thread;
    bool invalidated;
    std::string why;
    unet_emu_graph *graph;
};

} // namespace unet_emu

struct unet_emu_stream {
    unsigned flags;
    unet_emu::capture *capture; /* while this stream is being captured (the origin or a joined stream) */
    /* work enqueued and not run yet (deferred, or behind a hang or a wait); counts of work enqueued and run */
    std::deque<unet_emu::node> pending;
    unsigned long long enqueued = 0, done = 0;
};
struct unet_emu_event {
    unsigned flags;
    unet_emu::capture *captured_in; /* recorded during this capture: no host may wait for it */
    unet_emu_stream *stream = nullptr; /* recorded on it (outside a capture) when it had `seq` pieces of work */
    unsigned long long seq = 0;
};

namespace unet_emu {

static unet_emu_stream legacy_stream = {0, nullptr, {}, 0, 0};
static thread_local capture *thread_capture; /* this thread's capture in global or thread-local mode */

static unet_emu_stream *stream_of(cudaStream_t s) { return s ? s : &legacy_stream; }

/* Every live stream, the legacy one included: what a device-wide wait waits for. */
static std::set<unet_emu_stream *> &all_streams() {
    static std::set<unet_emu_stream *> s{&legacy_stream};
    return s;
}

/* UNET_CUDA_EMU_DEFER=1: streams run their work only when the host waits for it (a stream, event or device
 * synchronisation, an event query, a copy to pageable memory, a free), as a GPU far behind the host would, so
 * that host memory an asynchronous copy still has to read, rewritten too early, shows as a wrong result. */
static bool deferring() {
    static int d = -1;
    if (d < 0) {
        const char *v = getenv("UNET_CUDA_EMU_DEFER");
        d = v && *v && strcmp(v, "0") != 0;
    }
    return d;
}

/* A call a capture forbids (it would wait, or allocate) made by the capturing thread: the capture is void. */
static bool forbidden_in_capture(const char *call) {
    capture *c = thread_capture;
    if (!c || c->mode == cudaStreamCaptureModeRelaxed) return false;
    if (!c->invalidated) {
        c->invalidated = true;
        c->why = std::string(call) + " while capturing";
    }
    return true;
}

/* Runs a stream's pending work in order until `upto` pieces of it have run (all by default); stops at a hang and
 * at a wait for a stream that has not reached its event. After a fault the work is dropped, as a lost context
 * runs nothing. */
static void run_pending(unet_emu_stream *st, unsigned long long upto = ~0ull) {
    while (!st->pending.empty() && st->done < upto) {
        node &n = st->pending.front();
        if (n.hang) return;
        if (n.wait_stream) {
            run_pending(n.wait_stream, n.wait_seq);
            if (n.wait_stream->done < n.wait_seq) return;
        } else if (!sticky) {
            node taken = std::move(n);
            st->pending.pop_front();
            taken.work();
            st->done++;
            continue;
        }
        st->pending.pop_front();
        st->done++;
    }
}

static bool reached(const unet_emu_stream *st, unsigned long long seq) { return st->done >= seq; }

/* The host waits for work that cannot finish (behind a hang): it would wait forever on a GPU, and does here. */
[[noreturn]] static void wait_forever(const char *call) {
    say("%s waits for stream work that never finishes (a hung collective): the host waits forever, as on a GPU", call);
    for (;;) sleep(1);
}

static cudaError_t enqueue_node(unet_emu_stream *st, node n) {
    st->enqueued++;
    st->pending.push_back(std::move(n));
    if (!deferring()) run_pending(st);
    return sticky ? fail(sticky) : cudaSuccess;
}

cudaError_t enqueue(cudaStream_t s, const char *what, std::function<void()> work) {
    LOCKED;
    if (sticky) return fail(sticky);
    unet_emu_stream *st = stream_of(s);
    if (st->capture) {
        if (st->capture->invalidated) return fail(cudaErrorStreamCaptureInvalidated);
        st->capture->graph->nodes.push_back(node{what, std::move(work)});
        return cudaSuccess;
    }
    node n;
    n.what = what;
    n.work = std::move(work);
    return enqueue_node(st, std::move(n));
}

void enqueue_hang(cudaStream_t s, const char *what) {
    LOCKED;
    node n;
    n.what = what;
    n.hang = true;
    enqueue_node(stream_of(s), std::move(n));
}

void release_hang(cudaStream_t s) {
    LOCKED;
    unet_emu_stream *st = stream_of(s);
    for (auto it = st->pending.begin(); it != st->pending.end(); ++it)
        if (it->hang) {
            it->hang = false;
            it->work = []() {};
            break;
        }
    if (!deferring()) run_pending(st);
}

/* Everything enqueued on every stream, as a device-wide wait sees it. */
static void run_all(const char *call) {
    for (unet_emu_stream *st : all_streams()) {
        run_pending(st);
        if (!st->pending.empty()) wait_forever(call);
    }
}

/* ---------------------------------------------------------------------------
 * Kernels: blocks in order, the threads of a block as fibers
 * ------------------------------------------------------------------------- */

/* A fiber switch: saves the callee-saved registers on the current stack, stores the stack pointer in *save and
 * continues on the stack `to` (which was left the same way). The FPU control words are not switched: nothing in
 * the emulator or the kernels changes them. */
extern "C" void unet_emu_switch(void **save, void *to);
extern "C" void unet_emu_fiber_start(void);
__asm__(R"(
    .pushsection .text
    .globl unet_emu_switch
    .type unet_emu_switch, @function
unet_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size unet_emu_switch, .-unet_emu_switch

    .globl unet_emu_fiber_start
    .type unet_emu_fiber_start, @function
unet_emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size unet_emu_fiber_start, .-unet_emu_fiber_start
    .popsection
)");

static const size_t STACK_BYTES = 256 << 10, GUARD_BYTES = 4096;

enum wait_kind { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, EXITED };

struct fiber {
    void *sp;
    char *stack; /* mmap'd, a guard page below */
    wait_kind wait;
    unsigned long long wait_gen;
    uint3 tid;
    int linear, started;
};

struct warp_state {
    int live, arrived;
    unsigned long long gen;
    unsigned live_mask;
    unsigned long long slot[32];
};

struct block_state {
    const launch_config *cfg;
    const std::function<void()> *body;
    std::vector<fiber> fibers;
    std::vector<warp_state> warps;
    int live, arrived, exited;
    int next_start; /* threads are started in order (thread_at): how many have been */
    unsigned long long gen;
    fiber *running;
    void *scheduler_sp;
};

static block_state blk;
static std::vector<char *> free_stacks;

static char *take_stack() {
    if (!free_stacks.empty()) {
        char *s = free_stacks.back();
        free_stacks.pop_back();
        return s;
    }
    char *m = (char *)mmap(nullptr, STACK_BYTES + GUARD_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        say("out of memory for a fiber stack");
        abort();
    }
    mprotect(m, GUARD_BYTES, PROT_NONE);
    return m + GUARD_BYTES;
}

static std::string where_now() {
    char buf[512];
    if (!blk.cfg) return "outside any kernel";
    snprintf(buf, sizeof buf, "kernel %s (%s:%d), block (%u,%u,%u), thread (%u,%u,%u)", blk.cfg->kernel,
             blk.cfg->file, blk.cfg->line, unet_emu_blockIdx.x, unet_emu_blockIdx.y, unet_emu_blockIdx.z,
             unet_emu_threadIdx.x, unet_emu_threadIdx.y, unet_emu_threadIdx.z);
    return buf;
}

/* A kernel broke a rule that a GPU would punish with a hang or garbage: stop here, saying where. */
[[noreturn]] static void kernel_error(const char *what) {
    say("%s, in %s", what, where_now().c_str());
    abort();
}

static void yield_to_scheduler() {
    fiber *f = blk.running;
    unet_emu_switch(&f->sp, blk.scheduler_sp);
}

static bool reverse_order() {
    static int r = -1;
    if (r < 0) {
        const char *v = getenv("UNET_CUDA_EMU_REVERSE"); /* blocks and threads in reverse order: order bugs show */
        r = v && *v && strcmp(v, "0") != 0;
    }
    return r;
}

/* The thread of the block to start k-th. */
static int thread_at(int k) {
    int n = (int)blk.fibers.size();
    return reverse_order() ? n - 1 - k : k;
}

/* Runs threads on one stack: f's, then, as each ends without having had to wait, the next thread not yet
 * started, on the same stack (a block without barriers costs one fiber, not one per thread). A thread that
 * waits keeps the stack; the scheduler starts the next one on a new stack. */
static void fiber_main(void *arg) {
    fiber *f = (fiber *)arg;
    for (;;) {
        (*blk.body)();
        f->wait = EXITED;
        /* a thread that leaves while others wait at a barrier would hang a GPU block or break its barrier */
        if (blk.arrived > 0) kernel_error("a thread exited while other threads of its block wait at __syncthreads");
        warp_state &w = blk.warps[f->linear / 32];
        if (w.arrived > 0) kernel_error("a thread exited while other lanes of its warp wait in a shuffle");
        blk.live--;
        blk.exited++;
        w.live--;
        w.live_mask &= ~(1u << (f->linear % 32));
        if (blk.next_start == (int)blk.fibers.size()) break;
        fiber *g = &blk.fibers[thread_at(blk.next_start++)];
        g->stack = f->stack;
        g->started = 1;
        g->wait = RUNNABLE;
        f->stack = nullptr;
        f = g;
        blk.running = g;
        unet_emu_threadIdx = g->tid;
    }
    unet_emu_switch(&f->sp, blk.scheduler_sp);
    __builtin_unreachable();
}

static void start_fiber(fiber *f) {
    f->stack = take_stack();
    /* what unet_emu_switch pops: r15, r14, r13 (the entry), r12 (its argument), rbx, rbp, then the return
     * address; after it the stack is 16-byte aligned, as the entry's call wants */
    uintptr_t top = ((uintptr_t)f->stack + STACK_BYTES) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 72);
    memset(sp, 0, 56);
    sp[2] = (uint64_t)(uintptr_t)&fiber_main;
    sp[3] = (uint64_t)(uintptr_t)f;
    sp[6] = (uint64_t)(uintptr_t)&unet_emu_fiber_start;
    f->sp = sp;
    f->started = 1;
}

static void resume(fiber *f) {
    unet_emu_threadIdx = f->tid;
    blk.running = f;
    f->wait = RUNNABLE;
    if (!f->started) start_fiber(f);
    unet_emu_switch(&blk.scheduler_sp, f->sp);
    /* the fiber that came back may be a later thread of the same stack */
    fiber *back = blk.running;
    blk.running = nullptr;
    if (back->wait == EXITED) {
        free_stacks.push_back(back->stack);
        back->stack = nullptr;
    }
}

static bool ready(const fiber &f) {
    switch (f.wait) {
    case RUNNABLE: return true;
    case AT_BLOCK_BARRIER: return blk.gen != f.wait_gen;
    case AT_WARP_BARRIER: return blk.warps[f.linear / 32].gen != f.wait_gen;
    default: return false;
    }
}

static void run_block(const uint3 &b) {
    unet_emu_blockIdx = b;
    int n = (int)blk.fibers.size();
    for (int i = 0; i < n; i++) {
        fiber &f = blk.fibers[i];
        f.wait = RUNNABLE;
        f.started = 0;
    }
    for (size_t w = 0; w < blk.warps.size(); w++) {
        warp_state &ws = blk.warps[w];
        ws.live = n - (int)w * 32 < 32 ? n - (int)w * 32 : 32;
        ws.live_mask = ws.live == 32 ? 0xffffffffu : (1u << ws.live) - 1u;
        ws.arrived = 0;
        ws.gen = 0;
    }
    blk.live = n;
    blk.arrived = 0;
    blk.exited = 0;
    blk.gen = 0;
    blk.next_start = 0;
    for (;;) {
        int progressed = 0, left = 0;
        for (int k = 0; k < n; k++) {
            fiber &f = blk.fibers[thread_at(k)];
            if (f.wait == EXITED) continue;
            if (!f.started) {
                if (k < blk.next_start) continue; /* claimed by a running stack: not possible while it is here */
                blk.next_start = k + 1;
            } else if (!ready(f)) {
                left++;
                continue;
            }
            resume(&f);
            progressed++;
        }
        for (int k = 0; k < n && !left; k++) left += blk.fibers[k].wait != EXITED;
        if (!left) return;
        if (!progressed) kernel_error("the threads of a block wait for each other forever (a barrier not every "
                                      "thread reaches)");
    }
}

static void execute_kernel(const launch_config &c, const std::function<void()> &body) {
    blk.cfg = &c;
    blk.body = &body;
    unet_emu_blockDim = c.block;
    unet_emu_gridDim = c.grid;
    int n = (int)(c.block.x * c.block.y * c.block.z);
    blk.fibers.assign(n, fiber());
    for (int i = 0; i < n; i++) {
        fiber &f = blk.fibers[i];
        f.linear = i;
        f.tid = uint3{i % c.block.x, i / c.block.x % c.block.y, i / (c.block.x * c.block.y)};
    }
    blk.warps.assign((n + 31) / 32, warp_state());
    unsigned long long blocks = (unsigned long long)c.grid.x * c.grid.y * c.grid.z;
    bool rev = reverse_order();
    for (unsigned long long k = 0; k < blocks; k++) {
        unsigned long long i = rev ? blocks - 1 - k : k;
        run_block(uint3{(unsigned)(i % c.grid.x), (unsigned)(i / c.grid.x % c.grid.y),
                        (unsigned)(i / ((unsigned long long)c.grid.x * c.grid.y))});
    }
    blk.cfg = nullptr;
    char what[512];
    snprintf(what, sizeof what, "kernel %s (%s:%d)", c.kernel, c.file, c.line);
    check_redzones(what);
}

static bool valid_config(const launch_config &c) {
    unsigned long long threads = (unsigned long long)c.block.x * c.block.y * c.block.z;
    return threads >= 1 && threads <= 1024 && c.block.z <= 64 && c.grid.x >= 1 && c.grid.x <= 0x7fffffffu &&
           c.grid.y >= 1 && c.grid.y <= 65535 && c.grid.z >= 1 && c.grid.z <= 65535 && c.shared_bytes <= 48 * 1024;
}

void launch_body(const launch_config &c, std::function<void()> body) {
    LOCKED;
    if (sticky) {
        fail(sticky);
        return;
    }
    if (!valid_config(c)) {
        unet_emu_stream *st = stream_of(c.stream);
        if (st->capture && !st->capture->invalidated) {
            st->capture->invalidated = true;
            st->capture->why = "an invalid launch";
        }
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    auto saved = std::make_shared<launch_config>(c);
    cudaError_t e = enqueue(c.stream, c.kernel, [saved, body]() { execute_kernel(*saved, body); });
    if (e != cudaSuccess) fail(e);
}

/* One warp-wide barrier: every live lane of the warp arrives before any leaves. */
static void warp_barrier(warp_state &w, unsigned mask, const char *what) {
    if ((mask & w.live_mask) != w.live_mask || (mask & ~w.live_mask) != 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s with mask 0x%08x while the live lanes of the warp are 0x%08x", what, mask,
                 w.live_mask);
        kernel_error(msg);
    }
    fiber *f = blk.running;
    if (++w.arrived == w.live) {
        w.arrived = 0;
        w.gen++;
        return;
    }
    f->wait = AT_WARP_BARRIER;
    f->wait_gen = w.gen;
    yield_to_scheduler();
}

unsigned long long warp_exchange(unsigned mask, unsigned long long mine, int from, const char *what) {
    fiber *f = blk.running;
    if (!f) kernel_error("a warp shuffle outside a kernel");
    warp_state &w = blk.warps[f->linear / 32];
    int lane = f->linear % 32;
    w.slot[lane] = mine;
    warp_barrier(w, mask, what);
    if (!(w.live_mask & (1u << from))) kernel_error("a shuffle reads a lane that does not take part");
    unsigned long long got = w.slot[from];
    warp_barrier(w, mask, what); /* nobody overwrites a slot before every lane has read */
    return got;
}

int lane_id() { return blk.running ? blk.running->linear % 32 : 0; }

} // namespace unet_emu

using namespace unet_emu;

void __syncthreads(void) {
    fiber *f = blk.running;
    if (!f) kernel_error("__syncthreads outside a kernel");
    if (blk.exited) kernel_error("__syncthreads after other threads of the block exited");
    if (++blk.arrived == blk.live) {
        blk.arrived = 0;
        blk.gen++;
        return;
    }
    f->wait = AT_BLOCK_BARRIER;
    f->wait_gen = blk.gen;
    yield_to_scheduler();
}

void __syncwarp(unsigned mask) {
    fiber *f = blk.running;
    if (!f) kernel_error("__syncwarp outside a kernel");
    warp_barrier(blk.warps[f->linear / 32], mask, "__syncwarp");
}

/* A wild access inside a kernel: name the kernel, the block and the thread before dying. */
static void on_segv(int sig) {
    char msg[700];
    int n = snprintf(msg, sizeof msg, "unet CUDA emulator: invalid memory access (signal %d) in %s\n", sig,
                     where_now().c_str());
    if (n > 0) (void)!write(2, msg, (size_t)n);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_fault_handler() {
    static bool done = false;
    if (done) return;
    done = true;
    static char alt[64 << 10];
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    sigaltstack(&ss, nullptr);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_segv;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
}

/* ---------------------------------------------------------------------------
 * The runtime API
 * ------------------------------------------------------------------------- */

extern "C" {

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureUnmatched: return "cudaErrorStreamCaptureUnmatched";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched: return "capture was not initiated in this stream";
    case cudaErrorStreamCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = sticky ? sticky : last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return sticky ? sticky : last_error; }

cudaError_t cudaGetDeviceCount(int *count) {
    if (!count) return fail(cudaErrorInvalidValue);
    *count = device_count();
    return *count ? cudaSuccess : fail(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int device) {
    LOCKED;
    if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
    current_device = device;
    install_fault_handler();
    static bool announced = false;
    if (!announced) {
        announced = true;
        say("--device cuda runs on a CPU emulation of CUDA, cuDNN and NCCL (tests/emu): a check of correctness; "
            "no time or memory figure of this run is a GPU's");
    }
    return sticky ? fail(sticky) : cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    if (!device) return fail(cudaErrorInvalidValue);
    *device = current_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
    if (!prop) return fail(cudaErrorInvalidValue);
    if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    /* the name says what it is wherever the run prints its device */
    snprintf(prop->name, sizeof prop->name, "emulated on the CPU, not a GPU");
    prop->totalGlobalMem = TOTAL_MEMORY;
    prop->sharedMemPerBlock = 48 * 1024;
    prop->regsPerBlock = 65536;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 0x7fffffff;
    prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
    prop->major = 9; /* Hopper-like: bf16 (sm_80 and newer) is reachable */
    prop->minor = 0;
    prop->multiProcessorCount = 132;
    prop->maxThreadsPerMultiProcessor = 2048;
    return cudaSuccess;
}

cudaError_t unet_emu_func_attributes(cudaFuncAttributes *attr, const void *entry) {
    if (!attr || !entry) return fail(cudaErrorInvalidValue);
    memset(attr, 0, sizeof *attr);
    attr->maxThreadsPerBlock = 1024;
    attr->ptxVersion = attr->binaryVersion = 90;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    LOCKED;
    if (forbidden_in_capture("cudaDeviceSynchronize")) return fail(cudaErrorStreamCaptureUnsupported);
    run_all("cudaDeviceSynchronize");
    return sticky ? fail(sticky) : cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    LOCKED;
    if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue);
    *total_bytes = TOTAL_MEMORY;
    *free_bytes = TOTAL_MEMORY - live_bytes;
    return sticky ? fail(sticky) : cudaSuccess;
}

cudaError_t cudaMalloc(void **ptr, size_t bytes) {
    LOCKED;
    if (!ptr) return fail(cudaErrorInvalidValue);
    if (sticky) return fail(sticky);
    if (forbidden_in_capture("cudaMalloc")) return fail(cudaErrorStreamCaptureUnsupported);
    *ptr = nullptr;
    if (bytes == 0) return cudaSuccess;
    size_t span = (bytes + 255) / 256 * 256;
    if (span > TOTAL_MEMORY - live_bytes) return fail(cudaErrorMemoryAllocation);
    char *raw = (char *)aligned_alloc(256, span + 2 * REDZONE);
    if (!raw) return fail(cudaErrorMemoryAllocation);
    char *user = raw + REDZONE;
    memset(raw, REDZONE_BYTE, REDZONE);
    memset(user, POISON_BYTE, bytes);
    memset(user + bytes, REDZONE_BYTE, span - bytes + REDZONE);
    allocations[(uintptr_t)user] = allocation{raw, bytes, span, false};
    live_bytes += span;
    *ptr = user;
    return cudaSuccess;
}

cudaError_t cudaFree(void *ptr) {
    LOCKED;
    if (!ptr) return cudaSuccess;
    if (forbidden_in_capture("cudaFree")) return fail(cudaErrorStreamCaptureUnsupported);
    auto it = allocations.find((uintptr_t)ptr);
    if (it == allocations.end() || it->second.freed) {
        say("cudaFree(%p): %s", ptr, it == allocations.end() ? "not the start of a device block" : "freed twice");
        return fail(cudaErrorInvalidValue);
    }
    run_all("cudaFree"); /* it waits for the device, as CUDA's does */
    allocation &a = it->second;
    if (!redzones_intact(it->first, a)) {
        char what[96];
        snprintf(what, sizeof what, "a kernel or copy before cudaFree(%p)", ptr);
        check_redzones(what);
    }
    memset(ptr, POISON_BYTE, a.bytes);
    a.freed = true;
    live_bytes -= a.span;
    quarantined_bytes += a.span;
    quarantine.push_back(it->first);
    /* freed blocks stay mapped (and poisoned) for a while, so that a late use reads NaN rather than another block */
    while (quarantined_bytes > QUARANTINE_BYTES && !quarantine.empty()) {
        auto old = allocations.find(quarantine.front());
        quarantine.pop_front();
        quarantined_bytes -= old->second.span;
        free(old->second.raw);
        allocations.erase(old);
    }
    return sticky ? fail(sticky) : cudaSuccess;
}

/* Page-locked host memory (cudaHostAlloc): a copy from it is read when the stream runs it, a copy from pageable
 * memory when it is made (the driver stages it), which UNET_CUDA_EMU_DEFER tells apart. */
static std::map<uintptr_t, size_t> pinned_blocks;

static bool pinned(const void *p) {
    auto it = pinned_blocks.upper_bound((uintptr_t)p);
    if (it == pinned_blocks.begin()) return false;
    --it;
    return (uintptr_t)p < it->first + it->second;
}

cudaError_t cudaHostAlloc(void **ptr, size_t bytes, unsigned int flags) {
    LOCKED;
    (void)flags;
    if (!ptr) return fail(cudaErrorInvalidValue);
    if (forbidden_in_capture("cudaHostAlloc")) return fail(cudaErrorStreamCaptureUnsupported);
    *ptr = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096 + 4096);
    if (!*ptr) return fail(cudaErrorMemoryAllocation);
    pinned_blocks[(uintptr_t)*ptr] = bytes ? bytes : 1;
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **ptr, size_t bytes) { return cudaHostAlloc(ptr, bytes, cudaHostAllocDefault); }

cudaError_t cudaFreeHost(void *ptr) {
    LOCKED;
    if (!ptr) return cudaSuccess;
    if (forbidden_in_capture("cudaFreeHost")) return fail(cudaErrorStreamCaptureUnsupported);
    auto it = pinned_blocks.find((uintptr_t)ptr);
    if (it == pinned_blocks.end()) {
        say("cudaFreeHost(%p): not the start of a block of cudaHostAlloc", ptr);
        return fail(cudaErrorInvalidValue);
    }
    run_all("cudaFreeHost"); /* it waits for the device, as CUDA's does */
    pinned_blocks.erase(it);
    free(ptr);
    return sticky ? fail(sticky) : cudaSuccess;
}

/* Checks a copy's pointers against its kind; cudaMemcpyDefault infers the kind from them. */
static cudaError_t check_copy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    std::string why;
    uintptr_t base;
    bool dst_dev = allocation_of(dst, &base) != nullptr, src_dev = allocation_of(src, &base) != nullptr;
    if (kind == cudaMemcpyDefault)
        kind = (cudaMemcpyKind)((src_dev ? 2 : 0) + (dst_dev ? 1 : 0) == 3 ? 3 : src_dev ? 2 : dst_dev ? 1 : 0);
    bool want_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool want_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind < 0 || kind > cudaMemcpyDeviceToDevice) return fail(cudaErrorInvalidMemcpyDirection);
    if (want_dst && !device_range(dst, bytes, &why)) {
        say("cudaMemcpy destination: %s", why.c_str());
        return fail(cudaErrorInvalidValue);
    }
    if (want_src && !device_range(src, bytes, &why)) {
        say("cudaMemcpy source: %s", why.c_str());
        return fail(cudaErrorInvalidValue);
    }
    if (!want_dst && dst_dev) {
        say("cudaMemcpy to the host: the destination %p is device memory", dst);
        return fail(cudaErrorInvalidValue);
    }
    if (!want_src && src_dev) {
        say("cudaMemcpy from the host: the source %p is device memory", src);
        return fail(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t stream) {
    LOCKED;
    if (sticky) return fail(sticky);
    if (bytes == 0) return cudaSuccess;
    cudaError_t e = check_copy(dst, src, bytes, kind);
    if (e != cudaSuccess) return e;
    uintptr_t base;
    bool from_pageable = !allocation_of(src, &base) && !pinned(src), to_pageable = !allocation_of(dst, &base) &&
                                                                                   !pinned(dst);
    unet_emu_stream *st = stream_of(stream);
    if (from_pageable && !st->capture) {
        /* the driver stages pageable memory before the call returns: the copy reads it now */
        auto staged = std::make_shared<std::vector<char>>((const char *)src, (const char *)src + bytes);
        e = enqueue(stream, "cudaMemcpyAsync", [dst, staged, bytes]() {
            memmove(dst, staged->data(), bytes);
            check_redzones("cudaMemcpyAsync");
        });
    } else {
        e = enqueue(stream, "cudaMemcpyAsync", [dst, src, bytes]() {
            memmove(dst, src, bytes);
            check_redzones("cudaMemcpyAsync");
        });
    }
    /* into pageable memory the call returns with the data there, as CUDA's does */
    if (e == cudaSuccess && to_pageable && !st->capture) {
        run_pending(st);
        if (!st->pending.empty()) wait_forever("cudaMemcpyAsync to pageable memory");
    }
    return e == cudaSuccess ? e : fail(e);
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    LOCKED;
    if (forbidden_in_capture("cudaMemcpy")) return fail(cudaErrorStreamCaptureUnsupported);
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, 0);
    run_pending(&legacy_stream);
    return e;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream) {
    LOCKED;
    if (sticky) return fail(sticky);
    if (bytes == 0) return cudaSuccess;
    std::string why;
    if (!device_range(dst, bytes, &why)) {
        say("cudaMemset: %s", why.c_str());
        return fail(cudaErrorInvalidValue);
    }
    cudaError_t e = enqueue(stream, "cudaMemsetAsync", [dst, value, bytes]() { memset(dst, value, bytes); });
    return e == cudaSuccess ? e : fail(e);
}

cudaError_t cudaMemset(void *dst, int value, size_t bytes) {
    LOCKED;
    if (forbidden_in_capture("cudaMemset")) return fail(cudaErrorStreamCaptureUnsupported);
    cudaError_t e = cudaMemsetAsync(dst, value, bytes, 0);
    run_pending(&legacy_stream);
    return e;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
    LOCKED;
    if (!stream) return fail(cudaErrorInvalidValue);
    *stream = new unet_emu_stream{flags, nullptr, {}, 0, 0};
    all_streams().insert(*stream);
    return sticky ? fail(sticky) : cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    LOCKED;
    if (!stream) return fail(cudaErrorInvalidResourceHandle);
    if (stream->capture) return fail(cudaErrorIllegalState);
    /* CUDA lets the work finish after the call; here it runs first (or, behind a hang, the stream stays) */
    run_pending(stream);
    if (!stream->pending.empty()) return cudaSuccess;
    all_streams().erase(stream);
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    LOCKED;
    unet_emu_stream *st = stream_of(stream);
    if (st->capture) {
        /* waiting for work that has not run: a capture forbids it, and is void after it */
        st->capture->invalidated = true;
        st->capture->why = "cudaStreamSynchronize on the capturing stream";
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    if (forbidden_in_capture("cudaStreamSynchronize")) return fail(cudaErrorStreamCaptureUnsupported);
    run_pending(st);
    if (!st->pending.empty()) wait_forever("cudaStreamSynchronize");
    return sticky ? fail(sticky) : cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
    LOCKED;
    if (sticky) return fail(sticky);
    if (!stream) return fail(cudaErrorStreamCaptureUnsupported); /* the legacy stream cannot be captured */
    if (stream->capture) return fail(cudaErrorIllegalState);
    if (mode != cudaStreamCaptureModeRelaxed && thread_capture) return fail(cudaErrorIllegalState);
    capture *c = new capture{stream, mode, std::this_thread::get_id(), false, "", new unet_emu_graph};
    stream->capture = c;
    if (mode != cudaStreamCaptureModeRelaxed) thread_capture = c;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph) {
    LOCKED;
    if (!graph) return fail(cudaErrorInvalidValue);
    *graph = nullptr;
    if (!stream || !stream->capture) return fail(cudaErrorIllegalState);
    capture *c = stream->capture;
    if (c->origin != stream) return fail(cudaErrorStreamCaptureUnmatched);
    if (c->mode == cudaStreamCaptureModeThreadLocal && c->thread != std::this_thread::get_id())
        return fail(cudaErrorStreamCaptureWrongThread);
    stream->capture = nullptr;
    if (thread_capture == c) thread_capture = nullptr;
    bool invalid = c->invalidated;
    if (invalid)
        delete c->graph;
    else
        *graph = c->graph;
    delete c;
    return invalid ? fail(cudaErrorStreamCaptureInvalidated) : cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus *status) {
    LOCKED;
    if (!status) return fail(cudaErrorInvalidValue);
    unet_emu_stream *st = stream_of(stream);
    *status = !st->capture                 ? cudaStreamCaptureStatusNone
              : st->capture->invalidated ? cudaStreamCaptureStatusInvalidated
                                         : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
    LOCKED;
    if (!event) return fail(cudaErrorInvalidValue);
    *event = new unet_emu_event{flags, nullptr};
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, 0); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    LOCKED;
    if (!event) return fail(cudaErrorInvalidResourceHandle);
    delete event;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    LOCKED;
    if (!event) return fail(cudaErrorInvalidResourceHandle);
    if (sticky) return fail(sticky);
    unet_emu_stream *st = stream_of(stream);
    event->captured_in = st->capture;
    if (st->capture) return enqueue(stream, "cudaEventRecord", []() {});
    event->stream = st;
    event->seq = st->enqueued;
    return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
    LOCKED;
    (void)flags;
    if (!event) return fail(cudaErrorInvalidResourceHandle);
    if (sticky) return fail(sticky);
    unet_emu_stream *st = stream_of(stream);
    /* waiting for an event of a capture joins the capture, as on a GPU */
    if (event->captured_in && !st->capture) st->capture = event->captured_in;
    if (st->capture || !event->stream || event->stream == st) return cudaSuccess;
    node n;
    n.what = "cudaStreamWaitEvent";
    n.wait_stream = event->stream;
    n.wait_seq = event->seq;
    return enqueue_node(st, std::move(n));
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    LOCKED;
    if (!event) return fail(cudaErrorInvalidResourceHandle);
    if (event->captured_in || forbidden_in_capture("cudaEventSynchronize"))
        return fail(cudaErrorStreamCaptureUnsupported);
    if (event->stream) {
        run_pending(event->stream, event->seq);
        if (!reached(event->stream, event->seq)) wait_forever("cudaEventSynchronize");
    }
    return sticky ? fail(sticky) : cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
    LOCKED;
    if (!event) return fail(cudaErrorInvalidResourceHandle);
    if (event->captured_in || forbidden_in_capture("cudaEventQuery")) return fail(cudaErrorStreamCaptureUnsupported);
    if (sticky) return fail(sticky);
    if (!event->stream) return cudaSuccess;
    /* asked, the emulated device gets on with the work before the event (a GPU does it meanwhile) */
    run_pending(event->stream, event->seq);
    return reached(event->stream, event->seq) ? cudaSuccess : cudaErrorNotReady; /* not an error: not recorded */
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    if (!ms || !start || !end) return fail(cudaErrorInvalidValue);
    if ((start->flags | end->flags) & cudaEventDisableTiming) return fail(cudaErrorInvalidResourceHandle);
    *ms = 0.0f; /* nothing the emulator measures is a GPU's time */
    return cudaSuccess;
}

cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t *nodes, size_t *count) {
    LOCKED;
    if (!graph || !count) return fail(cudaErrorInvalidValue);
    if (nodes) {
        size_t n = *count < graph->nodes.size() ? *count : graph->nodes.size();
        for (size_t i = 0; i < n; i++) nodes[i] = (cudaGraphNode_t)&graph->nodes[i];
    }
    *count = graph->nodes.size();
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    LOCKED;
    (void)flags;
    if (!exec || !graph) return fail(cudaErrorInvalidValue);
    *exec = new unet_emu_graph_exec{graph->nodes};
    return sticky ? fail(sticky) : cudaSuccess;
}

cudaError_t cudaGraphUpload(cudaGraphExec_t exec, cudaStream_t stream) {
    LOCKED;
    (void)stream;
    if (!exec) return fail(cudaErrorInvalidValue);
    return sticky ? fail(sticky) : cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
    LOCKED;
    if (!exec) return fail(cudaErrorInvalidValue);
    cudaGraphExec_t g = exec;
    cudaError_t e = enqueue(stream, "cudaGraphLaunch", [g]() {
        for (const node &n : g->nodes) {
            if (sticky) return;
            n.work();
        }
    });
    return e == cudaSuccess ? e : fail(e);
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    LOCKED;
    if (!graph) return fail(cudaErrorInvalidValue);
    delete graph;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    LOCKED;
    if (!exec) return fail(cudaErrorInvalidValue);
    delete exec;
    return cudaSuccess;
}

int unet_emu_device_range(const void *p, size_t bytes, char *why, size_t why_len) {
    std::string w;
    if (device_range(p, bytes, &w)) return 1;
    if (why && why_len) snprintf(why, why_len, "%s", w.c_str());
    return 0;
}

} // extern "C"
