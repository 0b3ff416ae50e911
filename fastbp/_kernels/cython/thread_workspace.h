/* Per-thread workspaces, shared by the GEMM's packing buffer (microkernels.h)
 * and the convolution's image-to-column buffer (conv_workspace.h).
 *
 * FASTBP_THREAD_WORKSPACE(NAME, KEEP) defines NAME(nbytes), a 64-byte aligned
 * buffer of at least nbytes for the calling thread (NULL on failure), grown on
 * demand and kept between calls, and NAME_release(p, nbytes), which gives it
 * back. Each NAME is its own slot, so one thread can hold several at once. A
 * buffer over KEEP bytes is not kept: NAME_release frees it. Kept buffers are
 * freed at thread exit (pthread key destructor); on Windows nothing is kept. */
#ifndef FASTBP_THREAD_WORKSPACE_H
#define FASTBP_THREAD_WORKSPACE_H
#include <stdlib.h>

/* 64-byte aligned memory; NULL on failure. */
static void *fastbp_aligned_malloc(size_t nbytes)
{
    void *p = NULL;
    if (nbytes == 0) nbytes = 64;
    nbytes = (nbytes + 63) & ~(size_t)63;
#if defined(_WIN32)
    p = _aligned_malloc(nbytes, 64);
#else
    if (posix_memalign(&p, 64, nbytes) != 0) p = NULL;
#endif
    return p;
}

static void fastbp_aligned_free(void *p)
{
#if defined(_WIN32)
    _aligned_free(p);
#else
    free(p);
#endif
}

#if !defined(_WIN32)
#include <pthread.h>
typedef struct { void *p; size_t cap; } fastbp_thread_workspace_t;

static void fastbp_thread_workspace_destroy(void *v)
{
    fastbp_thread_workspace_t *w = (fastbp_thread_workspace_t *)v;
    fastbp_aligned_free(w->p);
    free(w);
}

#define FASTBP_THREAD_WORKSPACE(NAME, KEEP)                                              \
    static pthread_key_t NAME##_key;                                                     \
    static pthread_once_t NAME##_once = PTHREAD_ONCE_INIT;                               \
    static int NAME##_key_ok = 0;                                                        \
                                                                                         \
    static void NAME##_make_key(void)                                                    \
    {                                                                                    \
        NAME##_key_ok = pthread_key_create(&NAME##_key, fastbp_thread_workspace_destroy) == 0; \
    }                                                                                    \
                                                                                         \
    static void *NAME(size_t nbytes)                                                     \
    {                                                                                    \
        fastbp_thread_workspace_t *w;                                                    \
        if (nbytes > (KEEP)) return fastbp_aligned_malloc(nbytes);                       \
        pthread_once(&NAME##_once, NAME##_make_key);                                     \
        if (!NAME##_key_ok) return fastbp_aligned_malloc(nbytes);                        \
        w = (fastbp_thread_workspace_t *)pthread_getspecific(NAME##_key);                \
        if (w == NULL) {                                                                 \
            w = (fastbp_thread_workspace_t *)calloc(1, sizeof *w);                       \
            if (w == NULL || pthread_setspecific(NAME##_key, w) != 0) {                  \
                free(w);                                                                 \
                return fastbp_aligned_malloc(nbytes);                                    \
            }                                                                            \
        }                                                                                \
        if (w->cap < nbytes) {                                                           \
            fastbp_aligned_free(w->p);                                                   \
            w->p = fastbp_aligned_malloc(nbytes);                                        \
            w->cap = w->p != NULL ? nbytes : 0;                                          \
        }                                                                                \
        return w->p;                                                                     \
    }                                                                                    \
                                                                                         \
    static void NAME##_release(void *p, size_t nbytes)                                   \
    {                                                                                    \
        if (nbytes > (KEEP) || !NAME##_key_ok) fastbp_aligned_free(p);                   \
    }
#else
#define FASTBP_THREAD_WORKSPACE(NAME, KEEP)                                              \
    static void *NAME(size_t nbytes) { return fastbp_aligned_malloc(nbytes); }           \
    static void NAME##_release(void *p, size_t nbytes) { (void)nbytes; fastbp_aligned_free(p); }
#endif
#endif
