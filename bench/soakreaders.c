/*
 * soakreaders: the soak's readers (scripts/soak). Forks GROUPS children, each the leader
 * of a process group of its own (setsid), that every PERIOD_MS (jittered) read the four
 * field files (access_key_id, access_key_secret, token, expiration) in one go, as a
 * script's `cat`s would (credfs pins them to one generation per group), and CRED children
 * that read `credentials` in a loop (a 20 ms pause between reads).
 *
 *   soakreaders MOUNTPOINT GROUPS PERIOD_MS CRED STATSFILE
 *
 * Every read is checked: the file opens, reads to EOF, is non-empty and starts as the
 * demo source's values do (`credentials`: a JSON object with all four keys). Counts live
 * in shared memory; the parent rewrites STATSFILE once a second ("reads=N failures=N
 * eio=N estale=N other=N": failures by errno, content errors counted as other), and on
 * SIGTERM stops its children, prints the same line and exits.
 * The first few failures go to stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct counts {
    atomic_long reads;
    atomic_long failures;
    atomic_int last_errno;
    /* failures with EIO (no valid credentials: the contract's error), ESTALE, other */
    atomic_long eio, estale, other;
};

static struct counts *shared;
static volatile sig_atomic_t stopping;

static void on_term(int sig) {
    (void)sig;
    stopping = 1;
}

static void fail(const char *path, int err, const char *why) {
    long n = atomic_fetch_add(&shared->failures, 1);
    atomic_store(&shared->last_errno, err);
    atomic_fetch_add(err == EIO ? &shared->eio : err == ESTALE ? &shared->estale : &shared->other, 1);
    if (n < 20) fprintf(stderr, "soakreaders: %s: %s (errno %d)\n", path, why, err);
}

/* Reads PATH to EOF into buf; returns the length, or -1 (counted as a failure). */
static ssize_t read_file(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail(path, errno, "open");
        return -1;
    }
    size_t used = 0;
    for (;;) {
        ssize_t n = read(fd, buf + used, cap - 1 - used);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail(path, errno, "read");
            close(fd);
            return -1;
        }
        if (n == 0) break;
        used += (size_t)n;
        if (used >= cap - 1) break;
    }
    close(fd);
    buf[used] = 0;
    atomic_fetch_add(&shared->reads, 1);
    return (ssize_t)used;
}

static void check(const char *path, const char *buf, ssize_t len, const char *prefix) {
    if (len < 0) return;
    if (len == 0) {
        fail(path, 0, "empty");
    } else if (strncmp(buf, prefix, strlen(prefix)) != 0) {
        fail(path, 0, "unexpected content");
    }
}

static void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (!stopping && nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void group_loop(const char *mnt, long period_ms, unsigned seed) {
    static const char *names[] = {"access_key_id", "access_key_secret", "token", "expiration"};
    static const char *prefixes[] = {"STS.DEMO", "DEMO-SECRET-", "DEMO-TOKEN-", "20"};
    char path[4096], buf[8192];
    srand(seed);
    nap_ms(rand() % (period_ms + 1));
    while (!stopping) {
        for (int i = 0; i < 4 && !stopping; i++) {
            snprintf(path, sizeof path, "%s/%s", mnt, names[i]);
            check(path, buf, read_file(path, buf, sizeof buf), prefixes[i]);
        }
        nap_ms(period_ms / 2 + rand() % (period_ms + 1));
    }
}

static void credentials_loop(const char *mnt) {
    char path[4096], buf[16384];
    snprintf(path, sizeof path, "%s/credentials", mnt);
    while (!stopping) {
        ssize_t len = read_file(path, buf, sizeof buf);
        if (len >= 0) {
            if (len < 2 || buf[0] != '{' || buf[len - 1] != '\n' || !strstr(buf, "\"AccessKeyId\"") ||
                !strstr(buf, "\"AccessKeySecret\"") || !strstr(buf, "\"SecurityToken\"") ||
                !strstr(buf, "\"Expiration\""))
                fail(path, 0, "torn JSON");
        }
        nap_ms(20);
    }
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: soakreaders MOUNTPOINT GROUPS PERIOD_MS CRED STATSFILE\n");
        return 2;
    }
    const char *mnt = argv[1];
    int groups = atoi(argv[2]);
    long period = atol(argv[3]);
    int cred = atoi(argv[4]);
    const char *stats = argv[5];
    if (groups < 0 || cred < 0 || period < 1) return 2;
    shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) return 1;
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int total = groups + cred;
    pid_t *kids = calloc((size_t)total + 1, sizeof *kids);
    if (!kids) return 1;
    for (int i = 0; i < total; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            stopping = 1;
            break;
        }
        if (pid == 0) {
            setsid();
            if (i < groups)
                group_loop(mnt, period, (unsigned)getpid());
            else
                credentials_loop(mnt);
            _exit(0);
        }
        kids[i] = pid;
    }
    while (!stopping) {
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp", stats);
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f, "reads=%ld failures=%ld eio=%ld estale=%ld other=%ld\n", atomic_load(&shared->reads),
                    atomic_load(&shared->failures), atomic_load(&shared->eio), atomic_load(&shared->estale),
                    atomic_load(&shared->other));
            fclose(f);
            rename(tmp, stats);
        }
        nap_ms(1000);
    }
    for (int i = 0; i < total; i++)
        if (kids[i] > 0) kill(kids[i], SIGTERM);
    for (int i = 0; i < total; i++)
        if (kids[i] > 0) waitpid(kids[i], NULL, 0);
    printf("reads=%ld failures=%ld eio=%ld estale=%ld other=%ld\n", atomic_load(&shared->reads),
           atomic_load(&shared->failures), atomic_load(&shared->eio), atomic_load(&shared->estale),
           atomic_load(&shared->other));
    return 0;
}
