/*
 * pausegen: the longest pause a reader sees during a takeover.
 *
 *   pausegen MOUNTPOINT READERS FLOOR_SECONDS TAKEOVERS COMMAND
 *
 * READERS threads loop open + read (to EOF) + close, thread i of MOUNTPOINT/credentials
 * when i is even, of MOUNTPOINT/access_key_id when odd, and time every op
 * (CLOCK_MONOTONIC). Every read is checked: `credentials` one whole JSON object (starts
 * with '{', ends with "}\n"), `access_key_id` not empty; anything else, or a failed
 * open/read, is a failed read.
 *
 * First FLOOR_SECONDS with no takeover: the floor (p50, p99, max of single ops). Then
 * TAKEOVERS times: run COMMAND (`/bin/sh -c COMMAND`, waited for; it makes one takeover
 * and returns once the successor serves), then wait 1 to 2 s (uniform), then the next.
 * COMMAND `kill-9` is done here, with no process started: read the serving pid from
 * MOUNTPOINT/status, SIGKILL it, read `status` until another pid answers (that read waits
 * for the successor); its time is from the kill to that answer.
 * Takeover k owns the ops that END between its command's start and the end of that wait:
 * a read blocked by takeover k ends after k began. Its pause is the longest of those ops,
 * in any reader. After each takeover's window comes a control window of the same length
 * with no takeover: its longest op is the "pause" this machine gives a reader anyway, at
 * that moment (load on a shared machine drifts; the pairs keep the comparison fair).
 *
 * Prints one line of key=value pairs on stdout:
 *   readers ops failed first_errno floor_ops floor_p50_us floor_p99_us floor_max_us
 *   pauses_us=a,b,...  (one per takeover)   controls_us=a,b,...  (one per control window)
 *   spans_us=a,b,...  (per takeover: the longest op that overlapped the takeover itself, from
 *   the SIGKILL to the successor's first answer, or the upgrade command's run)
 *   start_ns=a,b,...  pause_end_ns=a,b,...  (CLOCK_MONOTONIC ns: each takeover's start, the
 *   end of its longest op)   command_ms=a,b,...   command_failures
 * Problems (the first few) on stderr. Exit 0 after a run (check the counts), 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum { BUF_SIZE = 1 << 16, MAX_READERS = 256, MAX_TAKEOVERS = 1000, MAX_WINDOWS = 2 * MAX_TAKEOVERS + 1 };

static char credentials_path[4096];
static char field_path[4096];
static int ntakeovers;
static double kill_ns; /* when the last SIGKILL was sent */

/* The window an op that ends now belongs to: 0 the floor, k takeover k. */
static atomic_int window = 0;
static atomic_int running = 1;
static atomic_int problems_printed = 0;

struct reader {
    pthread_t thread;
    int index;
    long ops, failed;
    int first_errno;
    double *floor_ns; /* every floor op */
    long nfloor, cap;
    double max_ns[MAX_WINDOWS];
    double max_end_ns[MAX_WINDOWS]; /* when that longest op ended (CLOCK_MONOTONIC) */
    double span_ns[MAX_TAKEOVERS + 1]; /* longest op that overlapped takeover k itself */
};

/* Takeover k's own interval: from the SIGKILL (or the command's start) to the successor's
   first `status` answer (or the command's end); 0 while unknown. */
static _Atomic double interval_start[MAX_TAKEOVERS + 1];
static _Atomic double interval_end[MAX_TAKEOVERS + 1];

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void problem(const char *what, int err) {
    if (atomic_fetch_add(&problems_printed, 1) < 5) {
        fprintf(stderr, "pausegen: %s%s%s\n", what, err ? ": " : "", err ? strerror(err) : "");
    }
}

/* One open + read to EOF + close; 0 when whole and valid, else an errno (EINVAL: bad bytes). */
static int one_read(const char *p, int json, char *buf) {
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno ? errno : EIO;
    size_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf + total, BUF_SIZE - 1 - total);
        if (n < 0) {
            int e = errno;
            close(fd);
            return e ? e : EIO;
        }
        if (n == 0) break;
        total += (size_t)n;
        if (total >= BUF_SIZE - 1) break;
    }
    close(fd);
    if (total == 0) return EINVAL;
    if (json && (buf[0] != '{' || total < 2 || buf[total - 2] != '}' || buf[total - 1] != '\n')) return EINVAL;
    return 0;
}

static void *reader_main(void *arg) {
    struct reader *r = arg;
    char *buf = malloc(BUF_SIZE);
    if (!buf) return NULL;
    int json = r->index % 2 == 0;
    const char *p = json ? credentials_path : field_path;
    while (atomic_load_explicit(&running, memory_order_relaxed)) {
        double t0 = now_ns();
        int err = one_read(p, json, buf);
        double t1 = now_ns();
        double took = t1 - t0;
        int w = atomic_load_explicit(&window, memory_order_relaxed);
        r->ops++;
        if (err) {
            r->failed++;
            if (!r->first_errno) r->first_errno = err;
            problem(err == EINVAL ? "bad bytes" : "read failed", err == EINVAL ? 0 : err);
        }
        if (w > 0 && w % 2 == 1) {
            int k = (w + 1) / 2;
            double from = atomic_load(&interval_start[k]), to = atomic_load(&interval_end[k]);
            if (from > 0 && t1 >= from && (to == 0 || t0 <= to) && took > r->span_ns[k]) r->span_ns[k] = took;
        }
        if (w >= 0 && w < MAX_WINDOWS && took > r->max_ns[w]) {
            r->max_ns[w] = took;
            r->max_end_ns[w] = t1;
        }
        if (w == 0) {
            if (r->nfloor == r->cap) {
                long cap = r->cap ? r->cap * 2 : 65536;
                double *grown = realloc(r->floor_ns, (size_t)cap * sizeof(double));
                if (!grown) continue;
                r->floor_ns = grown;
                r->cap = cap;
            }
            r->floor_ns[r->nfloor++] = took;
        }
    }
    free(buf);
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void sleep_ns(double ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / 1e9), .tv_nsec = (long)((long long)ns % 1000000000LL)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* /bin/sh -c COMMAND, waited for: its exit status (-1 when it could not run). */
static int run_command(const char *command) {
    char *argv[] = {"sh", "-c", (char *)command, NULL};
    pid_t pid;
    if (posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ) != 0) return -1;
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The "pid" of MOUNTPOINT/status (credfs: `  "pid": N,` on a line of its own), or -1. */
static long status_pid(const char *status_path) {
    char buf[8192];
    int fd = open(status_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t total = 0, n;
    while (total < (ssize_t)sizeof buf - 1 && (n = read(fd, buf + total, sizeof buf - 1 - total)) > 0) total += n;
    close(fd);
    buf[total > 0 ? total : 0] = 0;
    const char *at = strstr(buf, "\"pid\": ");
    return at ? strtol(at + 7, NULL, 10) : -1;
}

/* kill -9 of the serving process; 0 once another pid answers `status` (within 30 s). */
static int kill_and_wait(const char *status_path, double *took_ms) {
    long old = status_pid(status_path);
    if (old <= 0) return 1;
    double t0 = now_ns();
    kill_ns = t0;
    if (kill((pid_t)old, SIGKILL) != 0) return 2;
    while (now_ns() - t0 < 30e9) {
        long now = status_pid(status_path);
        if (now > 0 && now != old) {
            *took_ms = (now_ns() - t0) / 1e6;
            return 0;
        }
        sleep_ns(1e6);
    }
    return 3;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: pausegen MOUNTPOINT READERS FLOOR_SECONDS TAKEOVERS COMMAND\n");
        return 2;
    }
    int nreaders = atoi(argv[2]);
    double floor_seconds = atof(argv[3]);
    ntakeovers = atoi(argv[4]);
    const char *command = argv[5];
    if (nreaders < 1 || nreaders > MAX_READERS || floor_seconds <= 0 || ntakeovers < 0 ||
        ntakeovers > MAX_TAKEOVERS) {
        fprintf(stderr, "pausegen: READERS 1..%d, FLOOR_SECONDS > 0, TAKEOVERS 0..%d\n", MAX_READERS,
                MAX_TAKEOVERS);
        return 2;
    }
    snprintf(credentials_path, sizeof credentials_path, "%s/credentials", argv[1]);
    snprintf(field_path, sizeof field_path, "%s/access_key_id", argv[1]);
    char status_path[4096];
    snprintf(status_path, sizeof status_path, "%s/status", argv[1]);
    srand((unsigned)getpid());

    struct reader *readers = calloc((size_t)nreaders, sizeof *readers);
    double *command_ms = calloc((size_t)ntakeovers + 1, sizeof(double));
    double *start_ns = calloc((size_t)ntakeovers + 1, sizeof(double));
    if (!readers || !command_ms || !start_ns) return 1;
    for (int i = 0; i < nreaders; i++) {
        readers[i].index = i;
        if (pthread_create(&readers[i].thread, NULL, reader_main, &readers[i]) != 0) {
            fprintf(stderr, "pausegen: pthread_create failed\n");
            return 1;
        }
    }
    sleep_ns(floor_seconds * 1e9);
    int command_failures = 0;
    for (int k = 1; k <= ntakeovers; k++) {
        atomic_store(&window, 2 * k - 1);
        double t0 = now_ns();
        start_ns[k] = t0;
        atomic_store(&interval_start[k], t0);
        int rc;
        if (strcmp(command, "kill-9") == 0) {
            rc = kill_and_wait(status_path, &command_ms[k]);
            start_ns[k] = kill_ns;
            atomic_store(&interval_start[k], kill_ns);
            atomic_store(&interval_end[k], kill_ns + command_ms[k] * 1e6);
        } else {
            rc = run_command(command);
            command_ms[k] = (now_ns() - t0) / 1e6;
            atomic_store(&interval_end[k], now_ns());
        }
        if (rc != 0) {
            command_failures++;
            fprintf(stderr, "pausegen: takeover %d: command exited %d\n", k, rc);
        }
        sleep_ns(1e9 + (double)(rand() % 1000) * 1e6);
        /* The control: as long as the takeover's window, with no takeover. */
        double length = now_ns() - t0;
        atomic_store(&window, 2 * k);
        sleep_ns(length);
    }
    atomic_store(&running, 0);

    long ops = 0, failed = 0, nfloor = 0;
    int first_errno = 0;
    for (int i = 0; i < nreaders; i++) {
        pthread_join(readers[i].thread, NULL);
        ops += readers[i].ops;
        failed += readers[i].failed;
        nfloor += readers[i].nfloor;
        if (!first_errno) first_errno = readers[i].first_errno;
    }
    double *all = malloc((size_t)(nfloor ? nfloor : 1) * sizeof(double));
    if (!all) return 1;
    long n = 0;
    for (int i = 0; i < nreaders; i++) {
        memcpy(all + n, readers[i].floor_ns, (size_t)readers[i].nfloor * sizeof(double));
        n += readers[i].nfloor;
    }
    qsort(all, (size_t)n, sizeof(double), cmp_double);
    double p50 = n ? all[n / 2] : 0, p99 = n ? all[(n * 99) / 100] : 0, pmax = n ? all[n - 1] : 0;

    printf("readers=%d ops=%ld failed=%ld first_errno=%d floor_ops=%ld floor_p50_us=%.1f floor_p99_us=%.1f "
           "floor_max_us=%.1f",
           nreaders, ops, failed, first_errno, nfloor, p50 / 1e3, p99 / 1e3, pmax / 1e3);
    for (int control = 0; control <= 1; control++) {
        printf(control ? " controls_us=" : " pauses_us=");
        for (int k = 1; k <= ntakeovers; k++) {
            int w = 2 * k - 1 + control;
            double m = 0;
            for (int i = 0; i < nreaders; i++) {
                if (readers[i].max_ns[w] > m) m = readers[i].max_ns[w];
            }
            printf("%s%.1f", k > 1 ? "," : "", m / 1e3);
        }
    }
    /* For the breakdown: when each takeover began (the SIGKILL, or the command's start) and
       when its longest op ended, in CLOCK_MONOTONIC ns (credfs's CREDFS_TAKEOVER_TRACE clock). */
    printf(" start_ns=");
    for (int k = 1; k <= ntakeovers; k++) printf("%s%.0f", k > 1 ? "," : "", start_ns[k]);
    printf(" pause_end_ns=");
    for (int k = 1; k <= ntakeovers; k++) {
        double m = 0, end = 0;
        for (int i = 0; i < nreaders; i++) {
            if (readers[i].max_ns[2 * k - 1] > m) {
                m = readers[i].max_ns[2 * k - 1];
                end = readers[i].max_end_ns[2 * k - 1];
            }
        }
        printf("%s%.0f", k > 1 ? "," : "", end);
    }
    /* The longest op that overlapped the takeover's own interval, per takeover. */
    printf(" spans_us=");
    for (int k = 1; k <= ntakeovers; k++) {
        double m = 0;
        for (int i = 0; i < nreaders; i++) {
            if (readers[i].span_ns[k] > m) m = readers[i].span_ns[k];
        }
        printf("%s%.1f", k > 1 ? "," : "", m / 1e3);
    }
    printf(" command_ms=");
    for (int k = 1; k <= ntakeovers; k++) printf("%s%.1f", k > 1 ? "," : "", command_ms[k]);
    printf(" command_failures=%d\n", command_failures);
    return 0;
}
