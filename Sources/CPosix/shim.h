#ifndef CREDFS_CPOSIX_SHIM_H
#define CREDFS_CPOSIX_SHIM_H

// GNU extensions Swift's Glibc module does not show, wrapped.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

/// pipe2(fds, O_CLOEXEC): both ends close-on-exec from the start.
static inline int credfs_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

static inline int credfs_set_thread_name(pthread_t thread, const char *name) {
    return pthread_setname_np(thread, name);
}

/// The process environment (a C global Swift 6 will not read directly).
static inline char **credfs_environ(void) { return environ; }

#endif
