/* A small pthread pool for the kernels' drivers: workers are created lazily, once, reused by every
 * call and joined at exit / library unload. Each participant (the caller is 0) claims whole tasks,
 * so the drivers' outputs do not depend on how many threads ran them. */
#include <stdlib.h>

#include "edgepack/kernels.h"
#include "internal.h"

#if defined(_MSC_VER)
#define EP_TLS __declspec(thread)
#else
#define EP_TLS _Thread_local
#endif

static EP_TLS int t_threads; /* 0: not set on this thread, i.e. 1 */
static int64_t g_min_work = EP_PAR_MIN_WORK;

void ep_set_num_threads(int n) { t_threads = n < 1 ? 1 : n > EP_MAX_THREADS ? EP_MAX_THREADS : n; }
int ep_get_num_threads(void) { return t_threads > 0 ? t_threads : 1; }

void ep_set_parallel_min_work(int64_t work) { g_min_work = work < 0 ? EP_PAR_MIN_WORK : work; }

int ep_threads_for(int64_t work, int64_t n_tasks) {
    int t = ep_get_num_threads();
    if (work < g_min_work) return 1;
    return n_tasks < t ? (int)(n_tasks < 1 ? 1 : n_tasks) : t;
}

static void run_serial(int64_t n_tasks, ep_task_fn fn, void *ctx) {
    for (int64_t i = 0; i < n_tasks; i++) fn(ctx, i, 0);
}

#if defined(_WIN32) && !defined(__MINGW32__)
/* no pthreads: the kernels run on the calling thread */
int ep_parallel_for(int threads, int64_t n_tasks, ep_task_fn fn, void *ctx) {
    (void)threads;
    run_serial(n_tasks, fn, ctx);
    return 1;
}
#else
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#if defined(__x86_64__) || defined(__i386__)
#define EP_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define EP_PAUSE() __asm__ __volatile__("yield")
#else
#define EP_PAUSE() ((void)0)
#endif
#define EP_SPIN 4096 /* polls before a worker sleeps / the caller yields: back-to-back calls skip the futex */

typedef struct pool {
    pthread_mutex_t busy;       /* held by the one caller using the pool */
    pthread_mutex_t mu;         /* with wake: sleeping workers, creation and shutdown */
    pthread_cond_t wake;
    pthread_t tid[EP_MAX_THREADS];
    int nworkers, quit;
    atomic_ullong go[EP_MAX_THREADS + 1]; /* worker i's job count: bumped to hand it the current job */
    /* worker i's part in the current job: 0 none, OFFERED, TAKEN (then it counts in finished); the
     * caller withdraws offers not yet taken once every task is claimed, so a worker that has not been
     * scheduled never delays it */
    atomic_int state[EP_MAX_THREADS + 1];
    atomic_int sleepers, finished; /* workers asleep on wake; takers done with the current job */
    ep_task_fn fn;
    void *ctx;
    int64_t n_tasks;
    atomic_llong next;          /* next unclaimed task */
} pool;

static pool g_pool = {.busy = PTHREAD_MUTEX_INITIALIZER, .mu = PTHREAD_MUTEX_INITIALIZER,
                      .wake = PTHREAD_COND_INITIALIZER};

enum { OFFERED = 1, TAKEN = 2 };

static void claim_tasks(pool *p, ep_task_fn fn, void *ctx, int64_t n, int worker) {
    for (int64_t i; (i = atomic_fetch_add(&p->next, 1)) < n;) fn(ctx, i, worker);
}

/* worker id's job after `seen`, polling a while before sleeping; 0 when the pool shuts down */
static int wait_job(pool *p, int id, uint64_t seen) {
    for (int i = 0; i < EP_SPIN; i++) {
        if (atomic_load(&p->go[id]) != seen) return 1;
        EP_PAUSE();
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    while (atomic_load(&p->go[id]) == seen && !p->quit) pthread_cond_wait(&p->wake, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    const int quit = p->quit;
    pthread_mutex_unlock(&p->mu);
    return !quit;
}

static void *worker_main(void *arg) {
    pool *p = &g_pool;
    const int id = (int)(intptr_t)arg;
    uint64_t seen = 0;
    while (wait_job(p, id, seen)) {
        seen = atomic_load(&p->go[id]);
        int offered = OFFERED;
        if (!atomic_compare_exchange_strong(&p->state[id], &offered, TAKEN)) continue; /* withdrawn */
        claim_tasks(p, p->fn, p->ctx, p->n_tasks, id);
        atomic_store(&p->state[id], 0);
        atomic_fetch_add(&p->finished, 1);
    }
    return NULL;
}

/* workers up to want (ids 1..want); returns how many exist. Called with busy held. */
static int grow(pool *p, int want) {
    while (p->nworkers < want) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->go[p->nworkers + 1], 0);
        atomic_store(&p->state[p->nworkers + 1], 0);
        int ok = pthread_create(&p->tid[p->nworkers], NULL, worker_main, (void *)(intptr_t)(p->nworkers + 1)) == 0;
        if (ok) p->nworkers++;
        pthread_mutex_unlock(&p->mu);
        if (!ok) break;
    }
    return p->nworkers;
}

int ep_parallel_for(int threads, int64_t n_tasks, ep_task_fn fn, void *ctx) {
    pool *p = &g_pool;
    if (threads > EP_MAX_THREADS) threads = EP_MAX_THREADS;
    if (threads > n_tasks) threads = (int)n_tasks;
    if (threads <= 1 || pthread_mutex_trylock(&p->busy) != 0) { /* one thread, or the pool is in use */
        run_serial(n_tasks, fn, ctx);
        return 1;
    }
    int helpers = grow(p, threads - 1);
    if (helpers > threads - 1) helpers = threads - 1;
    if (helpers < 1) {
        pthread_mutex_unlock(&p->busy);
        run_serial(n_tasks, fn, ctx);
        return 1;
    }
    p->fn = fn; p->ctx = ctx; p->n_tasks = n_tasks;
    atomic_store(&p->finished, 0);
    atomic_store(&p->next, 0);
    for (int i = 1; i <= helpers; i++) { /* publishes the job (seq_cst) */
        atomic_store(&p->state[i], OFFERED);
        atomic_fetch_add(&p->go[i], 1);
    }
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    claim_tasks(p, fn, ctx, n_tasks, 0);
    int takers = helpers;
    for (int i = 1; i <= helpers; i++) {
        int offered = OFFERED;
        if (atomic_compare_exchange_strong(&p->state[i], &offered, 0)) takers--;
    }
    for (int i = 0; atomic_load(&p->finished) < takers; i++) {
        if (i < EP_SPIN) EP_PAUSE();
        else sched_yield();
    }
    pthread_mutex_unlock(&p->busy);
    return takers + 1;
}

/* join the workers when the program exits or the library is unloaded */
#if defined(__GNUC__)
__attribute__((destructor))
#endif
static void pool_shutdown(void) {
    pool *p = &g_pool;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->wake);
    const int n = p->nworkers;
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < n; i++) pthread_join(p->tid[i], NULL);
    pthread_mutex_lock(&p->mu);
    p->nworkers = 0;
    p->quit = 0;
    pthread_mutex_unlock(&p->mu);
}

/* a forked child has none of the parent's workers: start from an empty pool */
static void pool_after_fork(void) {
    pool *p = &g_pool;
    pthread_mutex_init(&p->busy, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    atomic_store(&p->sleepers, 0);
    p->nworkers = 0;
    p->quit = 0;
}

#if defined(__GNUC__)
__attribute__((constructor))
#endif
static void pool_init(void) { pthread_atfork(NULL, NULL, pool_after_fork); }
#endif
