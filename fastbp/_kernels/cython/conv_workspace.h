/* The convolution's image-to-column workspace: a second buffer per calling
 * thread, grown on demand and kept (as fastbp_workspace in microkernels.h,
 * which the GEMM called on this buffer holds at the same time). A buffer over
 * FASTBP_CONV_WORKSPACE_KEEP bytes is freed on release. Freed at thread exit
 * (pthread key destructor); on Windows nothing is kept. */
#ifndef FASTBP_CONV_WORKSPACE_H
#define FASTBP_CONV_WORKSPACE_H
#include <stdlib.h>

#define FASTBP_CONV_WORKSPACE_KEEP ((size_t)16 << 20)

static void *fastbp_conv_malloc(size_t nbytes)
{
    void *p = NULL;
    nbytes = (nbytes + 63) & ~(size_t)63;
    if (nbytes == 0) nbytes = 64;
#if defined(_WIN32)
    p = _aligned_malloc(nbytes, 64);
#else
    if (posix_memalign(&p, 64, nbytes) != 0) p = NULL;
#endif
    return p;
}

static void fastbp_conv_free(void *p)
{
#if defined(_WIN32)
    _aligned_free(p);
#else
    free(p);
#endif
}

#if !defined(_WIN32)
#include <pthread.h>
typedef struct { void *p; size_t cap; } fastbp_conv_workspace_t;
static pthread_key_t fastbp_conv_key;
static pthread_once_t fastbp_conv_once = PTHREAD_ONCE_INIT;
static int fastbp_conv_key_ok = 0;

static void fastbp_conv_destroy(void *v)
{
    fastbp_conv_workspace_t *w = (fastbp_conv_workspace_t *)v;
    fastbp_conv_free(w->p);
    free(w);
}

static void fastbp_conv_make_key(void)
{
    fastbp_conv_key_ok = pthread_key_create(&fastbp_conv_key, fastbp_conv_destroy) == 0;
}

/* A 64-byte aligned buffer of at least nbytes for this thread; NULL on failure. */
static void *fastbp_conv_workspace(size_t nbytes)
{
    fastbp_conv_workspace_t *w;
    if (nbytes > FASTBP_CONV_WORKSPACE_KEEP) return fastbp_conv_malloc(nbytes);
    pthread_once(&fastbp_conv_once, fastbp_conv_make_key);
    if (!fastbp_conv_key_ok) return fastbp_conv_malloc(nbytes);
    w = (fastbp_conv_workspace_t *)pthread_getspecific(fastbp_conv_key);
    if (w == NULL) {
        w = (fastbp_conv_workspace_t *)calloc(1, sizeof *w);
        if (w == NULL || pthread_setspecific(fastbp_conv_key, w) != 0) {
            free(w);
            return fastbp_conv_malloc(nbytes);
        }
    }
    if (w->cap < nbytes) {
        fastbp_conv_free(w->p);
        w->p = fastbp_conv_malloc(nbytes);
        w->cap = w->p != NULL ? nbytes : 0;
    }
    return w->p;
}

static void fastbp_conv_workspace_release(void *p, size_t nbytes)
{
    if (nbytes > FASTBP_CONV_WORKSPACE_KEEP || !fastbp_conv_key_ok) fastbp_conv_free(p);
}
#else
static void *fastbp_conv_workspace(size_t nbytes) { return fastbp_conv_malloc(nbytes); }
static void fastbp_conv_workspace_release(void *p, size_t nbytes) { (void)nbytes; fastbp_conv_free(p); }
#endif
#endif
