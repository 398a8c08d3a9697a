/*
 * loadgen: open + read (to EOF) + close loops in N threads, timed in batches.
 *
 *   loadgen [options] PATH THREADS SECONDS
 *
 * Each thread repeats: open(PATH, O_RDONLY), read() until it returns 0, close(). Every
 * --batch ops (default 200) a thread notes the batch's ns/op; the result is the median
 * over all batches of all threads (the latency one reader sees with THREADS readers
 * running), plus the aggregate throughput.
 *
 * Options:
 *   --batch N        ops per timed batch (default 200)
 *   --ops N          each thread does exactly N ops (SECONDS is then only a cap)
 *   --verify-json    check every read as a credfs `credentials` file: one flat JSON object
 *                    of strings holding AccessKeyId, AccessKeySecret, SecurityToken and
 *                    Expiration ("torn" otherwise); when the values carry a generation
 *                    marker (bench/fake_upstream.py: STS.BENCH<g>x…, secret-<g>-…,
 *                    token-<g>-…) all three the same ("mixed" otherwise); Expiration after
 *                    the moment the open started ("expired" otherwise); and a generation
 *                    no older than one a completed earlier read saw ("stale" otherwise).
 *   --curl           PATH is a URL: each op runs `curl -sf --noproxy '*' -o /dev/null URL`
 *                    (a process and an HTTP round trip per op); exit status != 0 is an error.
 *
 * Prints one line of key=value pairs on stdout; problems (first few) on stderr.
 * Exit 0 after a run (check the counts), 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum { BUF_SIZE = 1 << 16, MAX_THREADS = 1024, MAX_SAMPLES = 5 };

static const char *path;
static int nthreads;
static double seconds;
static long batch = 200;
static long ops_per_thread = 0;
static int verify = 0;
static int use_curl = 0;

static pthread_barrier_t start_barrier;
static atomic_long max_generation_seen = -1; /* highest generation a completed read saw */
static atomic_int samples_printed = 0;

struct result {
    long ops, errors, zero_reads;
    long bytes_min, bytes_max;
    long torn, mixed, expired, stale, nomarker, checked;
    long gen_min, gen_max;
    int first_errno;
    double *batches; /* ns/op of each full batch */
    long nbatches, cap;
    double partial_ns; /* ns/op of the trailing partial batch, if any */
    long partial_ops;
};

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static double now_real(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sample(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sample(const char *fmt, ...) {
    if (atomic_fetch_add(&samples_printed, 1) >= MAX_SAMPLES) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- the --verify-json check ------------------------------------------------------ */

struct span { const char *p; size_t n; };

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* A JSON string at p: sets s to its raw contents (escapes left as they are). */
static const char *parse_string(const char *p, const char *end, struct span *s) {
    if (p >= end || *p != '"') return NULL;
    const char *start = ++p;
    while (p < end && *p != '"') {
        if ((unsigned char)*p < 0x20) return NULL;
        if (*p == '\\') {
            if (++p >= end) return NULL;
        }
        p++;
    }
    if (p >= end) return NULL;
    s->p = start;
    s->n = (size_t)(p - start);
    return p + 1;
}

static int span_is(struct span s, const char *lit) {
    size_t n = strlen(lit);
    return s.n == n && memcmp(s.p, lit, n) == 0;
}

/* The generation a value carries after `prefix`, or -1 when it has no marker. */
static long marker(struct span v, const char *prefix) {
    size_t n = strlen(prefix);
    if (v.n <= n || memcmp(v.p, prefix, n) != 0) return -1;
    long g = 0;
    size_t i = n;
    if (v.p[i] < '0' || v.p[i] > '9') return -1;
    for (; i < v.n && v.p[i] >= '0' && v.p[i] <= '9' && g < 100000000000L; i++) g = g * 10 + (v.p[i] - '0');
    return g;
}

static int parse_expiration(struct span v, double *out) {
    char text[32];
    if (v.n != 20) return -1;
    memcpy(text, v.p, v.n);
    text[v.n] = 0;
    struct tm tm = {0};
    char z = 0;
    if (sscanf(text, "%4d-%2d-%2dT%2d:%2d:%2d%c", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
               &tm.tm_sec, &z) != 7 || z != 'Z')
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    *out = (double)timegm(&tm);
    return 0;
}

/* Checks one read; started_at is wall-clock time before the open, floor the highest
 * generation a read completed before this open saw. */
static void check(struct result *r, const char *buf, size_t n, double started_at, long floor) {
    r->checked++;
    const char *p = buf, *end = buf + n, *at = buf;
    struct span id = {0}, secret = {0}, token = {0}, expiration = {0};
    int have = 0;
    p = skip_ws(p, end);
    if (p >= end || *p != '{') goto torn;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') goto torn;
    for (;;) {
        struct span key, value;
        if (!(p = parse_string(at = p, end, &key))) goto torn;
        p = skip_ws(p, end);
        if (p >= end || *p != ':') goto torn;
        p = skip_ws(p + 1, end);
        if (!(p = parse_string(at = p, end, &value))) goto torn;
        if (span_is(key, "AccessKeyId")) id = value, have |= 1;
        else if (span_is(key, "AccessKeySecret")) secret = value, have |= 2;
        else if (span_is(key, "SecurityToken")) token = value, have |= 4;
        else if (span_is(key, "Expiration")) expiration = value, have |= 8;
        p = skip_ws(p, end);
        if (p < end && *p == ',') { p = skip_ws(p + 1, end); continue; }
        if (p < end && *p == '}') { p = skip_ws(p + 1, end); break; }
        goto torn;
    }
    if (p != end || have != 15) goto torn;
    if (id.n == 0 || secret.n == 0 || token.n == 0) goto torn;

    double expires;
    if (parse_expiration(expiration, &expires) != 0) goto torn;

    long g1 = marker(id, "STS.BENCH"), g2 = marker(secret, "secret-"), g3 = marker(token, "token-");
    if (g1 < 0 && g2 < 0 && g3 < 0) {
        r->nomarker++;
    } else if (g1 != g2 || g2 != g3) {
        r->mixed++;
        sample("mixed generations in one read: AccessKeyId %ld, secret %ld, token %ld", g1, g2, g3);
        return;
    } else {
        if (r->gen_min < 0 || g1 < r->gen_min) r->gen_min = g1;
        if (g1 > r->gen_max) r->gen_max = g1;
        if (g1 < floor) {
            r->stale++;
            sample("stale read: generation %ld after a completed read saw %ld", g1, floor);
        }
        long seen = atomic_load(&max_generation_seen);
        while (g1 > seen && !atomic_compare_exchange_weak(&max_generation_seen, &seen, g1)) {}
    }
    if (expires <= started_at) {
        r->expired++;
        sample("expired read: Expiration %.*s at or before the open (%.3f)", (int)expiration.n, expiration.p, started_at);
    }
    return;
torn:
    r->torn++;
    sample("torn read: %zu bytes, not one complete credentials object (stopped at byte %zd)", n,
           (ssize_t)((p ? p : at) - buf));
}

/* ---- one op -------------------------------------------------------------------------- */

static void one_file_op(struct result *r, char *buf) {
    double started_at = verify ? now_real() : 0;
    long floor = verify ? atomic_load(&max_generation_seen) : 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (!r->first_errno) r->first_errno = errno;
        r->errors++;
        return;
    }
    size_t total = 0;
    int failed = 0;
    for (;;) {
        if (total == BUF_SIZE) { /* larger than we hold: keep reading, stop checking */
            char sink[4096];
            ssize_t k = read(fd, sink, sizeof sink);
            if (k > 0) continue;
            if (k < 0 && errno == EINTR) continue;
            if (k < 0) { failed = errno; }
            break;
        }
        ssize_t k = read(fd, buf + total, BUF_SIZE - total);
        if (k > 0) { total += (size_t)k; continue; }
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) failed = errno;
        break;
    }
    close(fd);
    if (failed) {
        if (!r->first_errno) r->first_errno = failed;
        r->errors++;
        return;
    }
    if (total == 0) {
        r->zero_reads++;
        r->errors++;
        return;
    }
    if (r->bytes_min < 0 || (long)total < r->bytes_min) r->bytes_min = (long)total;
    if ((long)total > r->bytes_max) r->bytes_max = (long)total;
    if (verify) check(r, buf, total, started_at, floor);
}

static void one_curl_op(struct result *r) {
    char *argv[] = {"curl", "-sf", "--noproxy", "*", "-o", "/dev/null", (char *)path, NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "curl", NULL, NULL, argv, environ);
    if (rc != 0) {
        if (!r->first_errno) r->first_errno = rc;
        r->errors++;
        return;
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (!r->first_errno) r->first_errno = EIO;
        r->errors++;
    }
}

static void add_batch(struct result *r, double ns_per_op) {
    if (r->nbatches == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 256;
        r->batches = realloc(r->batches, (size_t)r->cap * sizeof(double));
        if (!r->batches) { perror("realloc"); exit(1); }
    }
    r->batches[r->nbatches++] = ns_per_op;
}

static void *worker(void *arg) {
    struct result *r = arg;
    char *buf = use_curl ? NULL : malloc(BUF_SIZE);
    if (!use_curl && !buf) { perror("malloc"); exit(1); }
    pthread_barrier_wait(&start_barrier);
    double deadline = now_mono() + seconds * 1e9;
    long in_batch = 0;
    double batch_start = now_mono();
    for (;;) {
        if (ops_per_thread > 0 && r->ops >= ops_per_thread) break;
        if (now_mono() >= deadline) break;
        if (use_curl) one_curl_op(r); else one_file_op(r, buf);
        r->ops++;
        if (++in_batch == batch) {
            double t = now_mono();
            add_batch(r, (t - batch_start) / (double)batch);
            batch_start = t;
            in_batch = 0;
        }
    }
    if (in_batch > 0) {
        r->partial_ns = (now_mono() - batch_start) / (double)in_batch;
        r->partial_ops = in_batch;
    }
    free(buf);
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double *v, long n, double q) {
    if (n == 0) return 0;
    long i = (long)(q * (double)(n - 1) + 0.5);
    return v[i];
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen [--batch N] [--ops N] [--verify-json] [--curl] PATH THREADS SECONDS\n");
    exit(2);
}

int main(int argc, char **argv) {
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atol(argv[++i]);
        else if (!strcmp(argv[i], "--ops") && i + 1 < argc) ops_per_thread = atol(argv[++i]);
        else if (!strcmp(argv[i], "--verify-json")) verify = 1;
        else if (!strcmp(argv[i], "--curl")) use_curl = 1;
        else usage();
    }
    if (argc - i != 3) usage();
    path = argv[i];
    nthreads = atoi(argv[i + 1]);
    seconds = atof(argv[i + 2]);
    if (nthreads < 1 || nthreads > MAX_THREADS || seconds <= 0 || batch < 1 || ops_per_thread < 0) usage();
    if (use_curl && verify) usage();

    struct result *results = calloc((size_t)nthreads, sizeof *results);
    pthread_t *threads = calloc((size_t)nthreads, sizeof *threads);
    if (!results || !threads) { perror("calloc"); return 1; }
    pthread_barrier_init(&start_barrier, NULL, (unsigned)nthreads + 1);
    for (int t = 0; t < nthreads; t++) {
        results[t].bytes_min = -1;
        results[t].gen_min = -1;
        results[t].gen_max = -1;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        int rc = pthread_create(&threads[t], &attr, worker, &results[t]);
        pthread_attr_destroy(&attr);
        if (rc) { errno = rc; perror("pthread_create"); return 1; }
    }
    pthread_barrier_wait(&start_barrier);
    double t0 = now_mono();
    for (int t = 0; t < nthreads; t++) pthread_join(threads[t], NULL);
    double elapsed = (now_mono() - t0) / 1e9;

    struct result all = {.bytes_min = -1, .gen_min = -1, .gen_max = -1};
    double partial_sum = 0;
    long partial_ops = 0;
    for (int t = 0; t < nthreads; t++) {
        struct result *r = &results[t];
        all.ops += r->ops;
        all.errors += r->errors;
        all.zero_reads += r->zero_reads;
        all.torn += r->torn;
        all.mixed += r->mixed;
        all.expired += r->expired;
        all.stale += r->stale;
        all.nomarker += r->nomarker;
        all.checked += r->checked;
        if (!all.first_errno) all.first_errno = r->first_errno;
        if (r->bytes_min >= 0 && (all.bytes_min < 0 || r->bytes_min < all.bytes_min)) all.bytes_min = r->bytes_min;
        if (r->bytes_max > all.bytes_max) all.bytes_max = r->bytes_max;
        if (r->gen_min >= 0 && (all.gen_min < 0 || r->gen_min < all.gen_min)) all.gen_min = r->gen_min;
        if (r->gen_max > all.gen_max) all.gen_max = r->gen_max;
        for (long b = 0; b < r->nbatches; b++) add_batch(&all, r->batches[b]);
        partial_sum += r->partial_ns * (double)r->partial_ops;
        partial_ops += r->partial_ops;
    }
    /* No full batch at all (very slow ops): fall back to the partial batches' mean. */
    if (all.nbatches == 0 && partial_ops > 0) add_batch(&all, partial_sum / (double)partial_ops);
    qsort(all.batches, (size_t)all.nbatches, sizeof(double), cmp_double);

    printf("ops=%ld threads=%d seconds=%.3f batch=%ld batches=%ld median_ns=%.0f p10_ns=%.0f p90_ns=%.0f "
           "ops_per_s=%.0f errors=%ld zero_reads=%ld first_errno=%s bytes_min=%ld bytes_max=%ld",
           all.ops, nthreads, elapsed, batch, all.nbatches, percentile(all.batches, all.nbatches, 0.5),
           percentile(all.batches, all.nbatches, 0.1), percentile(all.batches, all.nbatches, 0.9),
           elapsed > 0 ? (double)all.ops / elapsed : 0.0, all.errors, all.zero_reads,
           all.first_errno ? strerrorname_np(all.first_errno) : "none", all.bytes_min, all.bytes_max);
    if (verify)
        printf(" checked=%ld torn=%ld mixed=%ld expired=%ld stale=%ld nomarker=%ld gen_min=%ld gen_max=%ld",
               all.checked, all.torn, all.mixed, all.expired, all.stale, all.nomarker, all.gen_min, all.gen_max);
    printf("\n");
    return 0;
}
