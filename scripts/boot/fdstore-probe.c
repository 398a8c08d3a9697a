/* What systemd keeps in a service's file descriptor store, measured in the boot test.
 *
 * Started by fdstore-probe.service (Type=notify, FileDescriptorStoreMax=1). On each start
 * it appends one line to argv[1]: "start got=N" when systemd handed back the memfd it
 * stored earlier (N = the counter in it), "start got=none" when it came up empty. It then
 * bumps the counter (or creates the memfd and stores it with FDSTORE=1), sends READY=1 and
 * waits to be killed or stopped. Build: cc -O2 -o fdstore-probe fdstore-probe.c */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

static int notify(const char *msg, int fd) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return -1;
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof sa.sun_path) return -1;
    memcpy(sa.sun_path, path, len);
    if (sa.sun_path[0] == '@') sa.sun_path[0] = 0;
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = strlen(msg)};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr mh = {.msg_name = &sa,
                        .msg_namelen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len),
                        .msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&control, 0, sizeof control);
        mh.msg_control = control.buf;
        mh.msg_controllen = sizeof control.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    int r = sendmsg(s, &mh, 0) < 0 ? -1 : 0;
    close(s);
    return r;
}

int main(int argc, char **argv) {
    if (argc < 2) return 64;
    FILE *log = fopen(argv[1], "a");
    if (!log) return 1;
    const char *fds = getenv("LISTEN_FDS"), *pid = getenv("LISTEN_PID");
    int fd = -1, counter = 0;
    if (fds && pid && atoi(fds) >= 1 && atoi(pid) == getpid()) {
        fd = 3;
        char buf[32] = {0};
        if (pread(fd, buf, sizeof buf - 1, 0) > 0) counter = atoi(buf);
        fprintf(log, "start got=%d\n", counter);
    } else {
        fprintf(log, "start got=none\n");
        fd = memfd_create("fdstore-probe", MFD_CLOEXEC);
        if (fd < 0 || notify("FDSTORE=1\nFDNAME=probe", fd) < 0) {
            fprintf(log, "cannot store: %m\n");
            return 1;
        }
    }
    fclose(log);
    char value[32];
    int n = snprintf(value, sizeof value, "%d", counter + 1);
    if (ftruncate(fd, 0) < 0 || pwrite(fd, value, (size_t)n, 0) != n) return 1;
    notify("READY=1", -1);
    for (;;) pause();
}
