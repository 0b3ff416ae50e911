/* The convolution's image-to-column workspace: a second buffer per calling
 * thread, grown on demand and kept (beside fastbp_workspace in microkernels.h,
 * which the GEMM called on this buffer holds at the same time). A buffer over
 * FASTBP_CONV_WORKSPACE_KEEP bytes is freed on release. See thread_workspace.h. */
#ifndef FASTBP_CONV_WORKSPACE_H
#define FASTBP_CONV_WORKSPACE_H
#include "thread_workspace.h"

#define FASTBP_CONV_WORKSPACE_KEEP ((size_t)16 << 20)

FASTBP_THREAD_WORKSPACE(fastbp_conv_workspace, FASTBP_CONV_WORKSPACE_KEEP)
#endif
