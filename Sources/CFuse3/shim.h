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
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

// Variadic or macro-only C APIs do not import into Swift: wrap them here.

// ---- Descriptors the bridge uses (eventfd, thread id, non-blocking) -----------------------
// (Descriptor passing, memfd and pidfd are in CPosixIPC. The socket headers stay included:
// Swift code that imports this module uses their names.)
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>

static inline int credfs_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

static inline pid_t credfs_gettid(void) { return (pid_t)syscall(SYS_gettid); }

static inline int credfs_set_nonblock(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// ---- Waiting for a request -----------------------------------------------------------
#include <stdlib.h>
#include <sys/epoll.h>
#ifndef EPOLLEXCLUSIVE
#define EPOLLEXCLUSIVE (1U << 28)
#endif

/// Each worker thread's epoll instance: the FUSE descriptor registered EPOLLEXCLUSIVE (a
/// request wakes one waiting worker, as a blocking read would, not every one of them) and
/// the stop event registered plainly (it wakes them all). Closed when the thread ends, or
/// made anew when the thread waits for another session (descriptor numbers can be reused).
struct credfs_waiter { int epfd; int fd; int stop; uint64_t session; };
static inline void credfs_waiter_free(void *p) {
    struct credfs_waiter *w = (struct credfs_waiter *)p;
    close(w->epfd);
    free(w);
}
// Statics live inside functions: Swift imports no header-level static variables.
static inline pthread_key_t *credfs_waiter_key_slot(void) {
    static pthread_key_t key;
    return &key;
}
static inline void credfs_waiter_make_key(void) {
    (void)pthread_key_create(credfs_waiter_key_slot(), credfs_waiter_free);
}

static inline struct credfs_waiter *credfs_waiter_for(int fd, int stop, uint64_t session) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (pthread_once(&once, credfs_waiter_make_key) != 0) return NULL;
    pthread_key_t credfs_waiter_key = *credfs_waiter_key_slot();
    struct credfs_waiter *w = (struct credfs_waiter *)pthread_getspecific(credfs_waiter_key);
    if (w && w->fd == fd && w->stop == stop && w->session == session) return w;
    if (w) {
        (void)pthread_setspecific(credfs_waiter_key, NULL);
        credfs_waiter_free(w);
    }
    w = (struct credfs_waiter *)malloc(sizeof *w);
    if (!w) return NULL;
    w->fd = fd;
    w->stop = stop;
    w->session = session;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event request = { .events = EPOLLIN | EPOLLEXCLUSIVE, .data = { .u32 = 1 } };
    struct epoll_event stopped = { .events = EPOLLIN, .data = { .u32 = 2 } };
    if (w->epfd < 0 || epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &request) != 0 ||
        epoll_ctl(w->epfd, EPOLL_CTL_ADD, stop, &stopped) != 0 || pthread_setspecific(credfs_waiter_key, w) != 0) {
        int saved = errno;
        if (w->epfd >= 0) close(w->epfd);
        free(w);
        errno = saved;
        return NULL;
    }
    return w;
}

/// Waits until `fd` may have a request (1) or `stop` is readable (2); -1 with errno when
/// this thread cannot wait this way (the caller then polls). `session` names the session
/// the two descriptors belong to.
static inline int credfs_wait_request(int fd, int stop, uint64_t session) {
    struct credfs_waiter *w = credfs_waiter_for(fd, stop, session);
    if (!w) return -1;
    struct epoll_event events[2];
    for (;;) {
        int n = epoll_wait(w->epfd, events, 2, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        for (int i = 0; i < n; i++) {
            if (events[i].data.u32 == 2) return 2;
        }
        if (n > 0) return 1;
    }
}

/// The FUSE_NOTIFY_RESEND notification (Linux 6.9+): the kernel queues again every request
/// a previous server read but did not answer. Returns what write(2) returned.
static inline ssize_t credfs_fuse_notify_resend(int fd) {
    struct { uint32_t len; int32_t error; uint64_t unique; } header = { 16, 7, 0 };
    return write(fd, &header, sizeof(header));
}

/// The FUSE_NOTIFY_INC_EPOCH notification (protocol 7.44, Linux 6.16+; libfuse 3.14 has no
/// wrapper): the kernel bumps the connection's epoch, and every dentry looked up before it
/// is looked up again at its next use. It takes no lock. Returns what write(2) returned
/// (16 when the kernel took it; -1 with EINVAL where it does not know the code).
static inline ssize_t credfs_fuse_notify_inc_epoch(int fd) {
    struct { uint32_t len; int32_t error; uint64_t unique; } header = { 16, 8, 0 };
    return write(fd, &header, sizeof(header));
}

static inline int credfs_disable_cancel(void) {
    int old = 0;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
    return old;
}

static inline void credfs_restore_cancel(int old) { pthread_setcancelstate(old, NULL); }

#endif
