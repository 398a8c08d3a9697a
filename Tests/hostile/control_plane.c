// Attacks on credfs's takeover control plane (docs/security.md, "The control plane"), run
// as an unprivileged user by Tests/CredfsTests/ControlPlaneTests.swift.
//
//   control_plane squat NAME         bind the abstract datagram name NAME (where the supervisor
//                                    used to listen), print "bound", then answer "ok" to every
//                                    datagram that brings a descriptor (the old reply pipe) and
//                                    print "request" for each
//   control_plane create DIR FILE    try to make the directory DIR and a socket FILE in it;
//                                    print "mkdir ERRNO" and "bind ERRNO" (0: it worked)
//   control_plane linger TARGET...   make a TCP socket whose close() waits (unsent data stuck
//                                    behind a zero window, SO_LINGER 120 s), send it to each
//                                    TARGET (@name: a datagram; a path: an upgrade request on
//                                    a sequenced-packet connection), print one line per target,
//                                    close its own copy, and keep the connection alive until
//                                    killed
//   control_plane fexec PATH ARG...  open PATH, unlink it, run the open file with ARG... (its
//                                    /proc/self/exe then reads "PATH (deleted)")
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

static socklen_t address(const char *name, struct sockaddr_un *addr) {
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    size_t len = strlen(name);
    if (len >= sizeof(addr->sun_path)) len = sizeof(addr->sun_path) - 1;
    memcpy(addr->sun_path, name, len);
    if (name[0] == '@') {
        addr->sun_path[0] = 0;
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    }
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
}

static ssize_t send_with_fd(int sock, const struct sockaddr_un *addr, socklen_t alen, const char *text, int fd) {
    struct iovec iov = { .iov_base = (void *)text, .iov_len = strlen(text) };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof(control));
    struct msghdr mh = { .msg_name = (void *)addr, .msg_namelen = addr ? alen : 0, .msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    return sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static int squat(const char *name) {
    struct sockaddr_un addr;
    socklen_t alen = address(name, &addr);
    int sock = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (sock < 0 || bind(sock, (struct sockaddr *)&addr, alen) != 0) {
        printf("bind %d\n", errno);
        return 1;
    }
    printf("bound\n");
    fflush(stdout);
    for (;;) {
        char buf[4096];
        union { char buf[CMSG_SPACE(sizeof(int) * 16)]; struct cmsghdr align; } control;
        struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof(control.buf) };
        if (recvmsg(sock, &mh, 0) < 0) continue;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *fds = (int *)CMSG_DATA(c);
            for (int i = 0; i < count; i++) {
                if (i == 0) {
                    (void)!write(fds[i], "ok\n", 3);
                    printf("request\n");
                    fflush(stdout);
                }
                close(fds[i]);
            }
        }
    }
}

static int create(const char *dir, const char *file) {
    printf("mkdir %d\n", mkdir(dir, 0777) == 0 ? 0 : errno);
    struct sockaddr_un addr;
    socklen_t alen = address(file, &addr);
    int sock = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    printf("bind %d\n", bind(sock, (struct sockaddr *)&addr, alen) == 0 ? 0 : errno);
    return 0;
}

// A connected TCP socket with unsent data behind a zero window and SO_LINGER: the last
// close() of it waits up to 120 s (while the listener, kept open here, lives).
static int lingering_socket(int *listener) {
    int small = 2048;
    int lst = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lst, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0, .sin_addr = { htonl(INADDR_LOOPBACK) } };
    socklen_t len = sizeof(a);
    if (bind(lst, (struct sockaddr *)&a, len) != 0 || listen(lst, 1) != 0 ||
        getsockname(lst, (struct sockaddr *)&a, &len) != 0)
        return -1;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(c, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    if (connect(c, (struct sockaddr *)&a, len) != 0) return -1;
    fcntl(c, F_SETFL, O_NONBLOCK);
    char buf[4096];
    memset(buf, 'x', sizeof(buf));
    long total = 0;
    for (int i = 0; i < 100000; i++) {
        ssize_t n = write(c, buf, sizeof(buf));
        if (n <= 0) break;
        total += n;
    }
    struct linger l = { .l_onoff = 1, .l_linger = 120 };
    setsockopt(c, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    printf("lingering %ld bytes written\n", total);
    *listener = lst;
    return c;
}

static int linger_at(int argc, char **argv) {
    int listener = -1;
    int victim = lingering_socket(&listener);
    if (victim < 0) {
        printf("socket %d\n", errno);
        return 1;
    }
    for (int i = 0; i < argc; i++) {
        const char *target = argv[i];
        struct sockaddr_un addr;
        socklen_t alen = address(target, &addr);
        if (target[0] == '@') {
            int sock = socket(AF_UNIX, SOCK_DGRAM, 0);
            ssize_t n = send_with_fd(sock, &addr, alen, "UPGRADE=1\nBINARY=/bin/true", victim);
            printf("%s %s %d\n", target, n < 0 ? "error" : "sent", n < 0 ? errno : 0);
            close(sock);
            continue;
        }
        int sock = socket(AF_UNIX, SOCK_SEQPACKET, 0);
        if (connect(sock, (struct sockaddr *)&addr, alen) != 0) {
            printf("%s error %d\n", target, errno);
            close(sock);
            continue;
        }
        ssize_t n = send_with_fd(sock, NULL, 0, "UPGRADE=1\nBINARY=/bin/true", victim);
        if (n < 0) {
            printf("%s error %d\n", target, errno);
            continue;
        }
        struct pollfd p = { .fd = sock, .events = POLLIN };
        char reply[256];
        if (poll(&p, 1, 5000) <= 0) {
            printf("%s timeout\n", target);
        } else {
            ssize_t got = recv(sock, reply, sizeof(reply) - 1, 0);
            if (got <= 0) {
                printf("%s eof\n", target);
            } else {
                reply[got] = 0;
                reply[strcspn(reply, "\n")] = 0;
                printf("%s reply %s\n", target, reply);
            }
        }
    }
    printf("done\n");
    fflush(stdout);
    // Our own copy goes: whoever received one now holds the last reference, and its
    // close() is the one that waits. (If nobody took it, this close waits here.)
    close(victim);
    // The listener stays open (else the connection is reset and nothing waits) until the
    // test is done with us: SIGKILL.
    char byte;
    while (read(0, &byte, 1) > 0) {}
    pause();
    return 0;
}

static int fexec(int argc, char **argv) {
    int fd = open(argv[0], O_RDONLY | O_CLOEXEC);
    if (fd < 0 || unlink(argv[0]) != 0) {
        perror("open/unlink");
        return 1;
    }
    syscall(SYS_execveat, fd, "", &argv[1], environ, AT_EMPTY_PATH);
    perror("execveat");
    (void)argc;
    return 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && strcmp(argv[1], "squat") == 0) return squat(argv[2]);
    if (argc >= 4 && strcmp(argv[1], "create") == 0) return create(argv[2], argv[3]);
    if (argc >= 3 && strcmp(argv[1], "linger") == 0) return linger_at(argc - 2, argv + 2);
    if (argc >= 4 && strcmp(argv[1], "fexec") == 0) return fexec(argc - 2, argv + 2);
    fprintf(stderr, "usage: control_plane squat NAME | create DIR FILE | linger TARGET... | fexec PATH ARG...\n");
    return 64;
}
