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

static inline int credfs_set_not_dumpable(void) {
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

static inline int credfs_is_dumpable(void) {
    return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
}

// ---- Takeover helpers (descriptor passing, memfd, eventfd, pidfd) ----------------------
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <fcntl.h>

// Linux names that glibc shows only under _GNU_SOURCE (Swift's Glibc module may not).
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#define MFD_ALLOW_SEALING 0x0002U
int memfd_create(const char *name, unsigned int flags);
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#define F_SEAL_WRITE 0x0008
#endif
#ifndef SCM_CREDENTIALS
#define SCM_CREDENTIALS 0x02
#endif
#ifndef SO_PASSCRED
#define SO_PASSCRED 16
#endif
#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0x40000000
#endif
struct credfs_ucred { pid_t pid; uid_t uid; gid_t gid; };

static inline int credfs_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

static inline int credfs_memfd(const char *name) {
    return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
}

/// Seals a memfd against any further change (write, grow, shrink, more seals).
static inline int credfs_seal(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
}

static inline int credfs_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

static inline pid_t credfs_gettid(void) { return (pid_t)syscall(SYS_gettid); }

static inline int credfs_set_cloexec(int fd, int on) {
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFD, on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC));
}

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

/// Fills `addr` for a unix socket path; `@name` is the abstract namespace. Returns the
/// address length, or -1 if the path is too long.
static inline int credfs_unix_address(const char *path, struct sockaddr_un *addr) {
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(addr->sun_path)) return -1;
    memcpy(addr->sun_path, path, len);
    if (path[0] == '@') {
        addr->sun_path[0] = 0;
        return (int)(offsetof(struct sockaddr_un, sun_path) + len);
    }
    return (int)(offsetof(struct sockaddr_un, sun_path) + len + 1);
}

/// One datagram to `path` (sd_notify style) carrying `nfds` descriptors. 0 or -1 (errno).
static inline int credfs_send_fds(const char *path, const void *msg, size_t len, const int *fds, int nfds) {
    struct sockaddr_un addr;
    int alen = credfs_unix_address(path, &addr);
    if (alen < 0 || nfds < 0 || nfds > 16) { errno = EINVAL; return -1; }
    int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * 16)]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof(control));
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_name = &addr;
    mh.msg_namelen = (socklen_t)alen;
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (nfds > 0) {
        mh.msg_control = control.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    // Never waits: a full queue (a stalled receiver) is an error (EAGAIN) the caller retries.
    ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    int saved = errno;
    close(sock);
    errno = saved;
    return n < 0 ? -1 : 0;
}

/// A datagram socket bound to `path` (`@name`: abstract) that receives senders' credentials.
static inline int credfs_bind_datagram(const char *path) {
    struct sockaddr_un addr;
    int alen = credfs_unix_address(path, &addr);
    if (alen < 0) { errno = EINVAL; return -1; }
    int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (sock < 0) return -1;
    int on = 1;
    if (setsockopt(sock, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) != 0 ||
        bind(sock, (struct sockaddr *)&addr, (socklen_t)alen) != 0) {
        int saved = errno;
        close(sock);
        errno = saved;
        return -1;
    }
    return sock;
}

/// Receives one datagram with up to `maxfds` descriptors (made close-on-exec) and the
/// sender's pid and uid. Returns the byte count or -1 (errno).
static inline ssize_t credfs_recv_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds,
                                      pid_t *pid, uid_t *uid) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * 16) + CMSG_SPACE(sizeof(struct credfs_ucred))]; struct cmsghdr align; } control;
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control.buf;
    mh.msg_controllen = sizeof(control.buf);
    *nfds = 0;
    *pid = 0;
    *uid = (uid_t)-1;
    ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET) continue;
        if (c->cmsg_type == SCM_RIGHTS) {
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *incoming = (int *)CMSG_DATA(c);
            for (int i = 0; i < count; i++) {
                if (*nfds < maxfds) fds[(*nfds)++] = incoming[i];
                else close(incoming[i]);
            }
        } else if (c->cmsg_type == SCM_CREDENTIALS) {
            struct credfs_ucred cred;
            memcpy(&cred, CMSG_DATA(c), sizeof(cred));
            *pid = cred.pid;
            *uid = cred.uid;
        }
    }
    if (mh.msg_flags & MSG_TRUNC) { for (int i = 0; i < *nfds; i++) close(fds[i]); *nfds = 0; errno = EMSGSIZE; return -1; }
    return n;
}

/// The FUSE_NOTIFY_RESEND notification (Linux 6.9+): the kernel queues again every request
/// a previous server read but did not answer. Returns what write(2) returned.
static inline ssize_t credfs_fuse_notify_resend(int fd) {
    struct { uint32_t len; int32_t error; uint64_t unique; } header = { 16, 7, 0 };
    return write(fd, &header, sizeof(header));
}

static inline int credfs_disable_cancel(void) {
    int old = 0;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
    return old;
}

static inline void credfs_restore_cancel(int old) { pthread_setcancelstate(old, NULL); }

#endif
