#ifndef CREDFS_CFUSE3_SHIM_H
#define CREDFS_CFUSE3_SHIM_H

// 312 makes fuse_session_loop_mt a real function taking an opaque fuse_loop_config.
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <errno.h>
#include <sys/prctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

// Variadic or macro-only C APIs do not import into Swift: wrap them here.

static inline int credfs_set_not_dumpable(void) {
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

static inline int credfs_is_dumpable(void) {
    return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
}

#endif
