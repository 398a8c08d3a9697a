#ifndef CREDFS_CPOSIX_SHIM_H
#define CREDFS_CPOSIX_SHIM_H

// GNU extensions Swift's Glibc module does not show, wrapped.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <unistd.h>

/// PR_SET_DUMPABLE 0: no core dump, /proc/PID and ptrace closed to other processes of the
/// same uid without CAP_SYS_PTRACE (prctl is variadic: wrapped).
static inline int credfs_set_not_dumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }

static inline int credfs_is_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0); }

/// pipe2(fds, O_CLOEXEC): both ends close-on-exec from the start.
static inline int credfs_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

static inline int credfs_set_thread_name(pthread_t thread, const char *name) {
    return pthread_setname_np(thread, name);
}

/// The process environment (a C global Swift 6 will not read directly).
static inline char **credfs_environ(void) { return environ; }

/// Whether the shared object at `path` is loaded in this process; if it is, it is pinned
/// (RTLD_NODELETE: its mappings stay until exit). Never loads anything.
static inline int credfs_pin_if_loaded(const char *path) {
    return dlopen(path, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE) != NULL;
}

/// Whether `address` lies in the image of a loaded object (the executable or a shared
/// object), as the dynamic loader knows it.
static inline int credfs_in_loaded_object(const void *address) {
    Dl_info info;
    return dladdr(address, &info) != 0 && info.dli_fbase != NULL;
}

/// Gives the heap's free memory back to the kernel (every arena).
static inline int credfs_malloc_trim(void) { return malloc_trim(0); }

/// At most `count` malloc arenas (glibc's default is 8 per core, each keeping freed memory).
static inline int credfs_set_malloc_arenas(int count) { return mallopt(M_ARENA_MAX, count); }

#endif
