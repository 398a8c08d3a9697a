#ifndef CREDFS_CPOSIX_IPC_H
#define CREDFS_CPOSIX_IPC_H

// Descriptors that move between processes: memfd, pidfd, unix sockets with SCM_RIGHTS and
// SO_PEERCRED. A module of its own (module.modulemap): it is compiled without _GNU_SOURCE,
// like the other C modules that include <sys/select.h> (CCurl), so their `fd_set` agree.
// The few GNU names it needs are declared or defined here.
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

int accept4(int sockfd, struct sockaddr *addr, socklen_t *addrlen, int flags);
// Linux names that glibc shows only under some feature macros (Swift's Glibc may not).
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
#ifndef SO_PEERCRED
#define SO_PEERCRED 17
#endif
#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0x40000000
#endif
struct credfs_ucred { pid_t pid; uid_t uid; gid_t gid; };

static inline int credfs_memfd(const char *name) {
    return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
}

/// Seals a memfd against any further change (write, grow, shrink, more seals).
static inline int credfs_seal(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
}

static inline int credfs_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

static inline int credfs_set_cloexec(int fd, int on) {
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFD, on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC));
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

/// One message on `sock` (to `addr` when given) carrying `nfds` (at most 16) descriptors,
/// never waiting: a full queue is -1 with EAGAIN. 0 or -1 (errno).
static inline int credfs_send_message(int sock, const struct sockaddr_un *addr, int alen, const void *msg,
                                      size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > 16) { errno = EINVAL; return -1; }
    struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * 16)]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof(control));
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_name = (void *)addr;
    mh.msg_namelen = addr ? (socklen_t)alen : 0;
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
    return sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 ? -1 : 0;
}

/// One datagram to `path` (sd_notify style) carrying `nfds` descriptors, never waiting.
static inline int credfs_send_fds(const char *path, const void *msg, size_t len, const int *fds, int nfds) {
    struct sockaddr_un addr;
    int alen = credfs_unix_address(path, &addr);
    if (alen < 0) { errno = EINVAL; return -1; }
    int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    int result = credfs_send_message(sock, &addr, alen, msg, len, fds, nfds);
    int saved = errno;
    close(sock);
    errno = saved;
    return result;
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

/// Receives one message with up to `maxfds` (at most 16) descriptors, made close-on-exec,
/// and the sender's pid and uid when the socket passes credentials, never waiting.
/// Returns the byte count (0: the peer closed a connection) or -1 (errno).
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
    if (maxfds > 16) maxfds = 16;
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

/// A connected pair of sequenced-packet sockets, both ends close-on-exec: a private channel
/// between two processes (one end is handed to a child), reachable by no name.
static inline int credfs_channel_pair(int fds[2]) {
    return socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds);
}

/// The pid and uid of the process at the other end of a connected unix socket, as the
/// kernel recorded them when it connected (SO_PEERCRED).
static inline int credfs_peer(int sock, pid_t *pid, uid_t *uid) {
    struct credfs_ucred cred;
    socklen_t size = sizeof(cred);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &size) != 0 || size != sizeof(cred)) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    return 0;
}

/// A listening sequenced-packet socket at the file `path` (made with mode 0600), non-blocking.
static inline int credfs_listen_seqpacket(const char *path) {
    struct sockaddr_un addr;
    int alen = credfs_unix_address(path, &addr);
    if (alen < 0 || path[0] == '@') { errno = EINVAL; return -1; }
    int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (sock < 0) return -1;
    mode_t old = umask(0177);
    int bound = bind(sock, (struct sockaddr *)&addr, (socklen_t)alen);
    int saved = errno;
    umask(old);
    if (bound != 0 || listen(sock, 8) != 0) {
        if (bound == 0) saved = errno;
        close(sock);
        errno = saved;
        return -1;
    }
    return sock;
}

/// Accepts one connection (close-on-exec, non-blocking) and says who made it.
static inline int credfs_accept_peer(int listener, pid_t *pid, uid_t *uid) {
    int sock = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (sock < 0) return -1;
    if (credfs_peer(sock, pid, uid) != 0) {
        int saved = errno;
        close(sock);
        errno = saved;
        return -1;
    }
    return sock;
}

/// Connects a sequenced-packet socket to the file `path` (close-on-exec, blocking).
static inline int credfs_connect_seqpacket(const char *path) {
    struct sockaddr_un addr;
    int alen = credfs_unix_address(path, &addr);
    if (alen < 0 || path[0] == '@') { errno = EINVAL; return -1; }
    int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    if (connect(sock, (struct sockaddr *)&addr, (socklen_t)alen) != 0) {
        int saved = errno;
        close(sock);
        errno = saved;
        return -1;
    }
    return sock;
}

#endif
