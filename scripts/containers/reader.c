/* A consumer at 50 Hz: opens, reads and closes FILE every 20 ms and checks it holds one
 * whole credentials JSON. Writes its counters to OUT (rewritten in place after each read):
 * reads, failed, the longest pause (ms between two good reads, or since the last good one),
 * the last error, the st_dev of the file. SIGUSR1 starts a new window (counters to 0).
 * `reader --hog MB`: allocates and touches MB MiB (an OOM kill's trigger), never the
 * target of the OOM killer where it may say so (oom_score_adj -1000 needs CAP_SYS_RESOURCE),
 * then sleeps. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t reset = 0;
static void on_usr1(int sig) { (void)sig; reset = 1; }
static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000.0 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--hog") == 0) {
        int fd = open("/proc/self/oom_score_adj", O_WRONLY);
        if (fd >= 0) { if (write(fd, "-1000", 5) < 0) {} close(fd); }
        long mb = atol(argv[2]);
        for (long i = 0; i < mb; i++) {
            char *p = malloc(1 << 20);
            if (!p) break;
            memset(p, 1, 1 << 20);
        }
        pause();
        return 0;
    }
    if (argc != 3) { fprintf(stderr, "usage: reader FILE OUT | --hog MB\n"); return 64; }
    const char *path = argv[1], *out = argv[2];
    signal(SIGUSR1, on_usr1);
    signal(SIGTERM, SIG_DFL);
    long reads = 0, failed = 0, good = 0;
    int last_err = 0;
    double max_pause = 0, last_good = 0, op_max = 0;
    char buf[8192];
    int ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (ofd < 0) { perror(out); return 1; }
    for (;;) {
        double t0 = now_ms();
        if (reset) {
            reset = 0;
            reads = failed = good = 0;
            max_pause = op_max = 0;
            last_good = t0;
        }
        int ok = 0, err = 0;
        int fd = open(path, O_RDONLY);
        if (fd < 0) err = errno;
        else {
            ssize_t n, total = 0;
            while ((n = read(fd, buf + total, sizeof(buf) - 1 - total)) > 0) total += n;
            if (n < 0) err = errno;
            close(fd);
            buf[total > 0 ? total : 0] = 0;
            if (!err) {
                if (total > 2 && strstr(buf, "\"AccessKeyId\"") && buf[total - 2] == '}' && buf[total - 1] == '\n') ok = 1;
                else err = EBADMSG;
            }
        }
        double t1 = now_ms();
        reads++;
        if (t1 - t0 > op_max) op_max = t1 - t0;
        if (ok) {
            good++;
            if (last_good > 0 && t1 - last_good > max_pause) max_pause = t1 - last_good;
            last_good = t1;
        } else {
            failed++;
            last_err = err;
        }
        double since = last_good > 0 ? t1 - last_good : 0;
        struct stat st;
        unsigned long dev = stat(path, &st) == 0 ? (unsigned long)st.st_dev : 0;
        char line[512];
        int len = snprintf(line, sizeof line,
                           "reads=%ld good=%ld failed=%ld max_pause_ms=%.0f since_good_ms=%.0f op_max_ms=%.0f "
                           "last_err=%s ok=%d dev=%lu\n",
                           reads, good, failed, max_pause > since ? max_pause : since, since, op_max,
                           last_err ? strerrorname_np(last_err) : "none", ok, dev);
        if (pwrite(ofd, line, len, 0) == len) { if (ftruncate(ofd, len)) {} }
        double left = 20 - (now_ms() - t0);
        if (left > 0) usleep((useconds_t)(left * 1000));
    }
}
