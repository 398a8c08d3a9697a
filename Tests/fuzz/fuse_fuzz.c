/*
 * fuse_fuzz: a seeded, bounded fuzzer for a live credfs mount, meant to run as an
 * unprivileged user (setpriv --reuid=65534 ...) against `credfs mount --allow-other
 * --mode 0444 --provider process --command "fuse_fuzz --helper STATE LIFETIME SEED"`.
 *
 *   cc -O2 -o fuse_fuzz Tests/fuzz/fuse_fuzz.c
 *   fuse_fuzz MOUNTPOINT [--seed N] [--seconds S] [--procs P] [--max-ops N] [--hang-ms MS]
 *             [--without OP,OP...] [--trace]
 * --without leaves out kinds of calls by name (seekdir, getdents64, and the calls on open
 * descriptors: read, pread, lseek, mmap, fstat, fgetxattr, flistxattr, flock, fcntl-lock,
 * ioctl, poll, dup, sendfile, fadvise): for runs that step around a known bug.
 *   fuse_fuzz --helper STATEFILE LIFETIME SEED      (the credential helper credfs runs)
 *
 * Fuzz mode forks P workers (each in its own process group, some in their own session)
 * and one `status` reader. Workers run random sequences of opendir / seekdir / readdir /
 * getdents64 / lseek / read / pread at random offsets and sizes / mmap (SIGBUS caught) /
 * getxattr / listxattr / statx / open with random flags / flock / fcntl and OFD locks /
 * ioctl / readlink / access / poll / sendfile / fadvise / dup / mutations that must fail,
 * and now and then fork a short-lived child into a new process group that reads a file
 * whole. Every full read of `credentials`, `env`, `config.json` or a field file is checked:
 * the exact layout credfs renders, all values of one generation (the helper tags each
 * value with the generation and a length the check recomputes), no value from an answer
 * the helper marked bad, and an Expiration after the moment the open began. Every failed
 * open must fail with an errno its flags and name explain (open_errno_expected); any other
 * errno is a violation.
 * The status reader records its slowest read; the parent kills everything and reports a
 * hang when any single call (or a status read) takes longer than --hang-ms.
 *
 * Helper mode prints the aliyun CLI External JSON credfs's process provider reads: most
 * answers good (expiration as RFC 3339 text or as an epoch number, LIFETIME seconds
 * ahead), the rest hostile: exit 1, values with CR / LF / space / NUL / DEL / non-ASCII /
 * quotes, an Expiration of 1e19 / -1e19 / 1e308 / year 0000 / 9999-12-31T23:59:60Z /
 * Feb 30 / 24:00, a past time, broken JSON, 70 KB of output, the previous answer again.
 * Every bad answer is tagged 'B'; a read that ever shows a 'B' value is a violation.
 *
 * Exit status: 0 when no violation, hang or daemon death was seen; 1 otherwise;
 * 64 for bad arguments. The last line is a one-line summary.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/fiemap.h>

/* ---------- randomness: splitmix64, one stream per process ---------- */
static uint64_t rng_state;
static uint64_t rnd(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }
static int chance(int percent) { return (int)below(100) < percent; }

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
static double now_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---------- helper mode ---------- */
static void pad(char *out, char c, int n) {
    memset(out, c, (size_t)n);
    out[n] = 0;
}

static void rfc3339(char *out, size_t size, time_t t) {
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int helper(const char *state, int lifetime, uint64_t seed) {
    /* The generation counter lives in STATE (the daemon runs one helper at a time). */
    long gen = 0;
    FILE *f = fopen(state, "r");
    if (f) {
        if (fscanf(f, "%ld", &gen) != 1) gen = 0;
        fclose(f);
    }
    gen++;
    f = fopen(state, "w");
    if (f) {
        fprintf(f, "%ld\n", gen);
        fclose(f);
    }
    rng_state = seed * 1000003ULL + (uint64_t)gen;
    /* The first answers are good, so the mount comes up; then 30% hostile. */
    int kind = gen <= 2 ? 0 : (chance(70) ? 0 : 1 + (int)below(9));
    int len = 1 + (int)below(3000);
    char tag[64];
    snprintf(tag, sizeof tag, "%c%ld-%d", kind == 0 || kind == 9 ? 'G' : 'B', gen, len);
    static char xs[4096], output[16384];
    pad(xs, 'x', len);
    time_t expires = time(NULL) + lifetime;
    char exp[64];
    if (chance(50)) {
        rfc3339(exp + 1, sizeof exp - 2, expires);
        exp[0] = '"';
        strcat(exp, "\"");
    } else {
        snprintf(exp, sizeof exp, "%ld%s", (long)expires, chance(50) ? ".5" : "");
    }
    const char *id_bad = "", *secret_bad = "", *token_bad = "";
    switch (kind) {
    case 0: break;
    case 1:
        fprintf(stderr, "helper: refusing on purpose (generation %ld)\n", gen);
        return 1;
    case 2: { /* a byte outside 0x21-0x7E in one value */
        static const char *bad[] = {"\\r", "\\n", " ", "\\u0000", "\\u007f", "\\u00e9", "\\t", "\\u2028", "\\u001b[31m"};
        const char *b = bad[below(sizeof bad / sizeof bad[0])];
        switch (below(3)) {
        case 0: id_bad = b; break;
        case 1: secret_bad = b; break;
        default: token_bad = b; break;
        }
        break;
    }
    case 3: { /* an Expiration that is no real instant in 1970..9999 */
        static const char *bad[] = {
            "1e19", "-1e19", "1e308", "-1", "253402300800", "\"0000-01-01T00:00:00Z\"",
            "\"9999-12-31T23:59:60Z\"", "\"2030-02-30T00:00:00Z\"", "\"2030-01-01T24:00:00Z\"",
            "\"2030-01-01T00:00:60Z\"", "\"10000-01-01T00:00:00Z\"", "\"2030-01-01T00:00:00\"",
            "\"1969-12-31T23:59:59Z\"", "\"9999-12-31T23:59:59-01:00\"", "1e400", "\"\"", "null",
            "true", "[]", "{}"};
        snprintf(exp, sizeof exp, "%s", bad[below(sizeof bad / sizeof bad[0])]);
        break;
    }
    case 4: /* already expired */
        snprintf(exp, sizeof exp, "%ld", (long)time(NULL) - 5);
        break;
    case 5: /* not JSON, or not the External JSON */
        switch (below(4)) {
        case 0: printf("{\"mode\":\"StsToken\",\"access_key_id\":"); break;
        case 1: printf("[1,2,3]"); break;
        case 2: printf("{\"mode\":\"Bogus\"}"); break;
        default: fwrite("\xff\xfe not utf8 \x00 at all", 1, 21, stdout); break;
        }
        return 0;
    case 6: /* more than 64 KiB */
        for (int i = 0; i < 70; i++) printf("%01024d", 0);
        return 0;
    case 7: /* quotes and backslashes break the JSON string: invalid answer */
        token_bad = "\"";
        break;
    case 8: /* empty values */
        printf("{\"mode\":\"StsToken\",\"access_key_id\":\"\",\"access_key_secret\":\"S\",\"sts_token\":\"T\",\"expiration\":%s}", exp);
        return 0;
    case 9: { /* the previous good answer again: not a new generation (or expired by now) */
        char last[8192];
        snprintf(last, sizeof last, "%s.last", state);
        FILE *l = fopen(last, "r");
        size_t n = l ? fread(output, 1, sizeof output - 1, l) : 0;
        if (l) fclose(l);
        if (n > 0) {
            fwrite(output, 1, n, stdout);
            return 0;
        }
        break;
    }
    }
    int n = snprintf(output, sizeof output,
                     "{\"mode\":\"StsToken\",\"access_key_id\":\"STS.FUZZ%s%s\",\"access_key_secret\":\"SEC%s%s.%s\","
                     "\"sts_token\":\"TOK%s%s.%s\",\"expiration\":%s}\n",
                     tag, id_bad, tag, secret_bad, xs, tag, token_bad, xs, exp);
    fwrite(output, 1, (size_t)n, stdout);
    if (kind == 0) {
        char last[8192];
        snprintf(last, sizeof last, "%s.last", state);
        FILE *l = fopen(last, "w");
        if (l) {
            fwrite(output, 1, (size_t)n, l);
            fclose(l);
        }
    }
    return 0;
}

/* ---------- shared state between the workers and the parent ---------- */
enum {
    OP_OPEN, OP_CLOSE, OP_READ, OP_PREAD, OP_LSEEK, OP_MMAP, OP_FSTAT, OP_STATX, OP_GETXATTR,
    OP_LISTXATTR, OP_FLOCK, OP_FCNTL_LOCK, OP_IOCTL, OP_POLL, OP_DUP, OP_SENDFILE, OP_FADVISE,
    OP_READDIR, OP_SEEKDIR, OP_GETDENTS, OP_STAT, OP_ACCESS, OP_READLINK, OP_PATH_XATTR,
    OP_MUTATE, OP_FULLREAD, OP_FORKREAD, OP_STATFS, OP_COUNT
};
static const char *op_names[OP_COUNT] = {
    "open", "close", "read", "pread", "lseek", "mmap", "fstat", "statx", "fgetxattr",
    "flistxattr", "flock", "fcntl-lock", "ioctl", "poll", "dup", "sendfile", "fadvise",
    "readdir", "seekdir", "getdents64", "stat", "access", "readlink", "path-xattr",
    "mutate", "full-read", "fork-read", "statfs"};

#define MAX_WORKERS 64
#define LAST_OPS 8
struct worker_state {
    double op_started; /* monotonic; 0 when idle */
    volatile int op;
    volatile uint64_t iteration;
    char last[LAST_OPS][120];
    volatile unsigned last_pos;
    volatile pid_t pid;
};
struct shared {
    uint64_t ops[OP_COUNT];
    uint64_t errors[OP_COUNT];
    uint64_t full_ok, full_failed, full_bytes, groups, sigbus, status_reads, status_failed;
    uint64_t generations_seen_max;
    double status_max_ms, op_max_ms;
    int op_max_kind;
    uint64_t violations, hangs, daemon_dead;
    char violation[4][300];
    char hang[300];
    struct worker_state w[MAX_WORKERS + 1];
};
static struct shared *sh;
static int me; /* worker index */
static int in_child; /* a fork-read child: its parent's slot times the whole child */
static const char *mnt;
static int trace;

static void add(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

static void note(const char *fmt, ...) {
    struct worker_state *w = &sh->w[me];
    unsigned slot = w->last_pos++ % LAST_OPS;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->last[slot], sizeof w->last[slot], fmt, ap);
    va_end(ap);
    if (trace) fprintf(stderr, "w%d: %s\n", me, w->last[slot]);
}

static void violation(const char *fmt, ...) {
    uint64_t n = __atomic_fetch_add(&sh->violations, 1, __ATOMIC_RELAXED);
    char text[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    fprintf(stderr, "fuse-fuzz: VIOLATION (worker %d): %s\n", me, text);
    if (n < 4) snprintf(sh->violation[n], sizeof sh->violation[n], "%s", text);
}

static void begin(int op) {
    add(&sh->ops[op], 1);
    if (in_child) return;
    sh->w[me].op = op;
    { double t = now_mono(); __atomic_store(&sh->w[me].op_started, &t, __ATOMIC_RELEASE); }
}
static void end(int op, long rc) {
    if (rc < 0) add(&sh->errors[op], 1);
    if (rc < 0 && errno == ENOTCONN && !sh->daemon_dead) {
        sh->daemon_dead = 1;
        fprintf(stderr, "fuse-fuzz: the daemon is gone (ENOTCONN) after worker %d's %s\n", me, op_names[op]);
    }
    if (in_child) return;
    double took = (now_mono() - sh->w[me].op_started) * 1000;
    { double z = 0; __atomic_store(&sh->w[me].op_started, &z, __ATOMIC_RELEASE); }
    if (took > sh->op_max_ms) {
        sh->op_max_ms = took;
        sh->op_max_kind = op;
    }
}

/* ---------- the files, and what a full read must look like ---------- */
static const char *names[] = {
    "credentials", "access_key_id", "access_key_secret", "token", "expiration", "status",
    "env", "config.json", "", ".", "..", "nonexistent", "credentials/", "credentials/x",
    "CREDENTIALS", "status\n", ".hidden", "a/b/c/d", "-",
};
#define NAMES (sizeof names / sizeof names[0])
static const char *checked[] = {"credentials", "env", "config.json", "access_key_id",
                                "access_key_secret", "token", "expiration"};

static void path_of(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", mnt, name);
}

/* Reads `len` bytes of the generation-tagged value at `p` (up to `stop`): STS.FUZZ<tag>,
 * SEC<tag>.<x*len>, TOK<tag>.<x*len>. Returns the end of the value or NULL. */
static const char *value(const char *p, const char *prefix, char *tag, size_t tagsize, int with_pad) {
    size_t n = strlen(prefix);
    if (strncmp(p, prefix, n) != 0) return NULL;
    p += n;
    const char *start = p;
    if (*p != 'G' && *p != 'B') return NULL;
    p++;
    while (*p >= '0' && *p <= '9') p++;
    if (*p != '-') return NULL;
    p++;
    const char *lenp = p;
    while (*p >= '0' && *p <= '9') p++;
    size_t taglen = (size_t)(p - start);
    if (taglen == 0 || taglen >= tagsize) return NULL;
    if (tag[0]) {
        if (strncmp(tag, start, taglen) != 0 || tag[taglen] != 0) return NULL;
    } else {
        memcpy(tag, start, taglen);
        tag[taglen] = 0;
    }
    if (!with_pad) return p;
    int len = atoi(lenp);
    if (*p != '.') return NULL;
    p++;
    for (int i = 0; i < len; i++)
        if (p[i] != 'x') return NULL;
    return p + len;
}

static int expect(const char **p, const char *text) {
    size_t n = strlen(text);
    if (strncmp(*p, text, n) != 0) return 0;
    *p += n;
    return 1;
}

static int parse_time(const char **p, double *out) {
    struct tm tm = {0};
    const char *e = strptime(*p, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!e || e - *p != 20) return 0;
    *out = (double)timegm(&tm);
    *p = e;
    return 1;
}

/* Checks one whole read of `name`; `opened` is the wall time just before the open;
 * `how` says how it was read (for the report). */
static void check(const char *name, const char *buf, size_t n, double opened, const char *how) {
    char tag[64] = "";
    double exp = 0;
    const char *p = buf;
    int ok = 1;
    if (memchr(buf, 0, n)) {
        violation("%s: a NUL byte in %zu bytes", name, n);
        return;
    }
    if (!strcmp(name, "credentials")) {
        ok = expect(&p, "{\n\t\"AccessKeyId\": \"") && (p = value(p, "STS.FUZZ", tag, sizeof tag, 0)) &&
             expect(&p, "\",\n\t\"AccessKeySecret\": \"") && (p = value(p, "SEC", tag, sizeof tag, 1)) &&
             expect(&p, "\",\n\t\"SecurityToken\": \"") && (p = value(p, "TOK", tag, sizeof tag, 1)) &&
             expect(&p, "\",\n\t\"Expiration\": \"") && parse_time(&p, &exp) && expect(&p, "\"\n}\n") &&
             (size_t)(p - buf) == n;
    } else if (!strcmp(name, "env")) {
        ok = expect(&p, "export ALIBABA_CLOUD_ACCESS_KEY_ID='") && (p = value(p, "STS.FUZZ", tag, sizeof tag, 0)) &&
             expect(&p, "'\nexport ALIBABA_CLOUD_ACCESS_KEY_SECRET='") && (p = value(p, "SEC", tag, sizeof tag, 1)) &&
             expect(&p, "'\nexport ALIBABA_CLOUD_SECURITY_TOKEN='") && (p = value(p, "TOK", tag, sizeof tag, 1)) &&
             expect(&p, "'\n") && (size_t)(p - buf) == n;
    } else if (!strcmp(name, "config.json")) {
        ok = expect(&p, "{\"current\":\"default\",\"profiles\":[{\"name\":\"default\",\"mode\":\"StsToken\",\"access_key_id\":\"") &&
             (p = value(p, "STS.FUZZ", tag, sizeof tag, 0)) && expect(&p, "\",\"access_key_secret\":\"") &&
             (p = value(p, "SEC", tag, sizeof tag, 1)) && expect(&p, "\",\"sts_token\":\"") &&
             (p = value(p, "TOK", tag, sizeof tag, 1)) && expect(&p, "\",\"region_id\":\"") &&
             (p = strchr(p, '"')) && expect(&p, "\"}]}\n") && (size_t)(p - buf) == n;
    } else if (!strcmp(name, "access_key_id")) {
        ok = (p = value(p, "STS.FUZZ", tag, sizeof tag, 0)) && (size_t)(p - buf) == n;
    } else if (!strcmp(name, "access_key_secret")) {
        ok = (p = value(p, "SEC", tag, sizeof tag, 1)) && (size_t)(p - buf) == n;
    } else if (!strcmp(name, "token")) {
        ok = (p = value(p, "TOK", tag, sizeof tag, 1)) && (size_t)(p - buf) == n;
    } else if (!strcmp(name, "expiration")) {
        ok = parse_time(&p, &exp) && (size_t)(p - buf) == n;
    }
    if (!ok) {
        violation("%s: %zu bytes that are not one generation's rendering (starts '%.24s'; %s)", name, n, buf, how);
        return;
    }
    if (tag[0] == 'B') violation("%s: served a value from a rejected answer (tag %s)", name, tag);
    /* Served credentials are unexpired when the open began (whole seconds, as credfs). */
    if (exp != 0 && exp <= opened - 1.0)
        violation("%s: Expiration %.0f already past at the open (%.3f)", name, exp, opened);
    if (tag[0]) {
        uint64_t gen = strtoull(tag + 1, NULL, 10);
        if (gen > sh->generations_seen_max) sh->generations_seen_max = gen;
    }
}

/* Whether a failed open's errno is one the name and flags explain, for a user other than
 * the owner on a read-only 0444 tree. Anything else (ESTALE leaking out of a rotation, an
 * errno a bug made up) is a violation, not a count. */
static int open_errno_expected(int e, int flags) {
    switch (e) {
    case EIO:                       /* no valid credentials: expired, or none yet */
    case ENOENT: case ENOTDIR:      /* the names that do not exist, "credentials/x" */
    case EACCES: case EROFS:        /* write access, O_TRUNC on a 0444 file */
    case EISDIR:                    /* a directory opened for writing */
    case EINVAL:                    /* a flag mix the kernel refuses (O_DIRECT, random bits) */
    case EINTR:                     /* a signal during a parked open */
    case EMFILE: case ENFILE:
        return 1;
    case EEXIST: return (flags & O_CREAT) != 0;
    case EPERM: return (flags & O_NOATIME) != 0; /* not the owner */
    case ELOOP: return (flags & O_NOFOLLOW) != 0;
    case EWOULDBLOCK: return (flags & O_NONBLOCK) != 0;
    default: return 0;
    }
}

/* Opens `name` and reads it whole in random-sized pieces; checks what it got. */
static void full_read(const char *name) {
    char path[4096];
    path_of(path, sizeof path, name);
    static char buf[256 * 1024];
    double opened = now_wall();
    begin(OP_FULLREAD);
    int flags = O_RDONLY | (chance(20) ? O_DIRECT : 0) | (chance(20) ? O_NONBLOCK : 0);
    int fd = open(path, flags);
    if (fd < 0) {
        int saved = errno;
        end(OP_FULLREAD, -1);
        add(&sh->full_failed, 1);
        note("full-read %s: open errno %d", name, saved);
        if (!open_errno_expected(saved, flags))
            violation("full read of %s: open with flags 0x%x failed with unexpected errno %d (%s)", name, flags,
                      saved, strerror(saved));
        return;
    }
    size_t n = 0;
    long rc = 0;
    int use_pread = chance(50);
    while (n < sizeof buf) {
        size_t want = 1 + below(chance(50) ? 16 : 8192);
        if (want > sizeof buf - n) want = sizeof buf - n;
        ssize_t got = use_pread ? pread(fd, buf + n, want, (off_t)n) : read(fd, buf + n, want);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            rc = -1;
            break;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    int saved = errno;
    struct stat st = {0};
    fstat(fd, &st);
    close(fd);
    errno = saved;
    end(OP_FULLREAD, rc);
    char how[160];
    snprintf(how, sizeof how, "flags 0x%x, %s, st_size %lld, ino %llu, pgid %d", flags, use_pread ? "pread" : "read",
             (long long)st.st_size, (unsigned long long)st.st_ino, (int)getpgrp());
    note("full-read %s: %zu bytes rc %ld errno %d", name, n, rc, rc < 0 ? saved : 0);
    if (rc < 0) {
        add(&sh->full_failed, 1);
        /* EIO is the one answer for credentials that expired; anything else is odd. */
        if (saved != EIO && saved != EINVAL) violation("full read of %s failed with errno %d", name, saved);
        return;
    }
    add(&sh->full_ok, 1);
    add(&sh->full_bytes, n);
    buf[n < sizeof buf ? n : sizeof buf - 1] = 0;
    check(name, buf, n, opened, how);
}

/* ---------- one worker ---------- */
static sigjmp_buf bus_jump;
static volatile sig_atomic_t in_mmap;
static void on_bus(int sig) {
    (void)sig;
    if (in_mmap) siglongjmp(bus_jump, 1);
    _exit(99);
}

#define MAX_FDS 16
static int fds[MAX_FDS];
static char fd_names[MAX_FDS][64];
static DIR *dirs[4];
static int disabled[OP_COUNT]; /* --without NAME,NAME: op kinds left out */

static off_t random_offset(void) {
    switch (below(8)) {
    case 0: return 0;
    case 1: return (off_t)below(64);
    case 2: return (off_t)below(4096);
    case 3: return (off_t)below(1 << 20);
    case 4: return (off_t)(rnd() >> 1);
    case 5: return -(off_t)below(4096) - 1;
    case 6: return (off_t)INT64_MAX - (off_t)below(4096);
    default: return (off_t)(4096 * below(64));
    }
}
static size_t random_size(void) {
    switch (below(6)) {
    case 0: return 0;
    case 1: return 1 + below(16);
    case 2: return 1 + below(4096);
    case 3: return 4096 * (1 + below(32));
    case 4: return 1 + below(256 * 1024);
    default: return 131072;
    }
}

static int random_flags(void) {
    static const int bits[] = {O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_NONBLOCK,
                               O_DIRECT, O_NOATIME, O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, O_PATH,
                               O_SYNC, O_DSYNC, O_LARGEFILE, O_NOCTTY, O_ASYNC};
    int flags = O_RDONLY;
    int count = (int)below(4);
    for (int i = 0; i < count; i++) flags |= bits[below(sizeof bits / sizeof bits[0])];
    if (chance(3)) flags = (int)rnd() & ~O_TMPFILE & ~O_CREAT;
    return flags;
}

static int pick_fd(void) {
    int start = (int)below(MAX_FDS);
    for (int i = 0; i < MAX_FDS; i++) {
        int k = (start + i) % MAX_FDS;
        if (fds[k] >= 0) return k;
    }
    return -1;
}

static const int fd_case_op[15] = {OP_READ, OP_PREAD, OP_PREAD, OP_LSEEK, OP_MMAP, OP_FSTAT, OP_GETXATTR,
                                   OP_LISTXATTR, OP_FLOCK, OP_FCNTL_LOCK, OP_IOCTL, OP_POLL, OP_DUP,
                                   OP_SENDFILE, OP_FADVISE};

static void fd_op(int k) {
    static char buf[256 * 1024 + 64];
    int fd = fds[k];
    const char *name = fd_names[k];
    long rc = 0;
    int pick = (int)below(15);
    if (disabled[fd_case_op[pick]]) return;
    switch (pick) {
    case 0: {
        size_t n = random_size();
        if (n > sizeof buf) n = sizeof buf;
        begin(OP_READ);
        rc = read(fd, buf, n);
        end(OP_READ, rc);
        note("read %s %zu -> %ld", name, n, rc);
        break;
    }
    case 1: case 2: {
        size_t n = random_size();
        if (n > sizeof buf) n = sizeof buf;
        off_t off = random_offset();
        begin(OP_PREAD);
        rc = pread(fd, buf, n, off);
        end(OP_PREAD, rc);
        note("pread %s %zu @%lld -> %ld", name, n, (long long)off, rc);
        break;
    }
    case 3: {
        static const int whences[] = {SEEK_SET, SEEK_CUR, SEEK_END, SEEK_DATA, SEEK_HOLE, 7};
        int whence = whences[below(6)];
        off_t off = random_offset();
        begin(OP_LSEEK);
        rc = lseek(fd, off, whence);
        end(OP_LSEEK, rc);
        note("lseek %s %lld %d -> %ld", name, (long long)off, whence, rc);
        break;
    }
    case 4: {
        size_t len = 1 + below(3 * 4096);
        off_t off = 4096 * (off_t)below(4);
        int shared = chance(50);
        begin(OP_MMAP);
        void *m = mmap(NULL, len, PROT_READ, shared ? MAP_SHARED : MAP_PRIVATE, fd, off);
        if (m == MAP_FAILED) {
            end(OP_MMAP, -1);
            note("mmap %s %zu @%lld -> errno %d", name, len, (long long)off, errno);
            break;
        }
        volatile unsigned sum = 0;
        in_mmap = 1;
        if (sigsetjmp(bus_jump, 1) == 0) {
            for (size_t i = 0; i < len; i += 1 + below(2048)) sum += ((volatile unsigned char *)m)[i];
        } else {
            add(&sh->sigbus, 1);
        }
        in_mmap = 0;
        munmap(m, len);
        end(OP_MMAP, 0);
        note("mmap %s %zu @%lld %s ok", name, len, (long long)off, shared ? "shared" : "private");
        break;
    }
    case 5: {
        struct stat st;
        begin(OP_FSTAT);
        rc = fstat(fd, &st);
        end(OP_FSTAT, rc);
        note("fstat %s -> %ld", name, rc);
        break;
    }
    case 6: {
        static const char *xnames[] = {"user.x", "security.selinux", "system.posix_acl_access",
                                       "trusted.t", "", "user.", "x"};
        size_t n = below(3) == 0 ? 0 : random_size() % 70000;
        if (n > sizeof buf) n = sizeof buf;
        const char *xn = xnames[below(7)];
        begin(OP_GETXATTR);
        rc = fgetxattr(fd, xn, buf, n);
        end(OP_GETXATTR, rc);
        note("fgetxattr %s %s %zu -> %ld", name, xn, n, rc);
        break;
    }
    case 7: {
        size_t n = below(3) == 0 ? 0 : random_size() % 70000;
        if (n > sizeof buf) n = sizeof buf;
        begin(OP_LISTXATTR);
        rc = flistxattr(fd, buf, n);
        end(OP_LISTXATTR, rc);
        note("flistxattr %s %zu -> %ld", name, n, rc);
        break;
    }
    case 8: {
        static const int ops[] = {LOCK_SH | LOCK_NB, LOCK_EX | LOCK_NB, LOCK_UN, LOCK_SH | LOCK_NB | LOCK_UN, 0, 0x40};
        int how = ops[below(6)];
        begin(OP_FLOCK);
        rc = flock(fd, how);
        end(OP_FLOCK, rc);
        note("flock %s %d -> %ld", name, how, rc);
        break;
    }
    case 9: {
        static const int cmds[] = {F_SETLK, F_GETLK, F_OFD_SETLK, F_OFD_GETLK};
        struct flock fl = {0};
        fl.l_type = (short)(below(3) == 0 ? F_RDLCK : below(2) ? F_WRLCK : F_UNLCK);
        fl.l_whence = (short)below(3);
        fl.l_start = random_offset();
        fl.l_len = (off_t)below(3) == 0 ? 0 : random_offset();
        int cmd = cmds[below(4)];
        begin(OP_FCNTL_LOCK);
        rc = fcntl(fd, cmd, &fl);
        end(OP_FCNTL_LOCK, rc);
        note("fcntl lock %s cmd %d type %d start %lld len %lld -> %ld", name, cmd, fl.l_type,
             (long long)fl.l_start, (long long)fl.l_len, rc);
        break;
    }
    case 10: {
        static const unsigned long reqs[] = {FIONREAD, FIGETBSZ, FS_IOC_GETFLAGS, FS_IOC_GETVERSION,
                                             FS_IOC_FIEMAP, FIOQSIZE, 0x5401 /* TCGETS */,
                                             0xdeadbeef, 0xc0184600, 0x80086601};
        unsigned long req = chance(80) ? reqs[below(10)] : (unsigned long)rnd();
        /* Generic ioctls that change the file or our signals stay out (FIOASYNC, FIONBIO,
         * FIOCLEX are harmless to the daemon but would change this fuzzer). */
        if (req == FIOASYNC || req == FIONBIO || req == FIOCLEX || req == FIONCLEX) req = FIONREAD;
        memset(buf, 0, 4096);
        begin(OP_IOCTL);
        rc = ioctl(fd, req, buf);
        end(OP_IOCTL, rc);
        note("ioctl %s 0x%lx -> %ld", name, req, rc);
        break;
    }
    case 11: {
        struct pollfd p = {.fd = fd, .events = (short)(POLLIN | POLLPRI | (chance(50) ? POLLOUT : 0))};
        int timeout = (int)below(5);
        begin(OP_POLL);
        rc = poll(&p, 1, timeout);
        end(OP_POLL, rc);
        note("poll %s %d -> %ld", name, timeout, rc);
        break;
    }
    case 12: {
        begin(OP_DUP);
        int d = dup(fd);
        end(OP_DUP, d);
        if (d >= 0) close(d);
        note("dup %s -> %d", name, d);
        break;
    }
    case 13: {
        int devnull = open("/dev/null", O_WRONLY);
        off_t off = random_offset();
        if (off < 0) off = 0;
        size_t n = random_size();
        begin(OP_SENDFILE);
        rc = devnull >= 0 ? sendfile(devnull, fd, &off, n) : -1;
        end(OP_SENDFILE, rc);
        if (devnull >= 0) close(devnull);
        note("sendfile %s %zu -> %ld", name, n, rc);
        break;
    }
    default: {
        int advice = (int)below(7);
        begin(OP_FADVISE);
        rc = posix_fadvise(fd, random_offset(), random_offset(), advice);
        if (chance(30)) rc = readahead(fd, random_offset(), random_size());
        if (chance(20)) rc = fsync(fd);
        end(OP_FADVISE, rc == 0 ? 0 : -1);
        note("fadvise/readahead/fsync %s -> %ld", name, rc);
        break;
    }
    }
}

static void dir_op(void) {
    int k = (int)below(4);
    if (!dirs[k] || chance(5)) {
        if (dirs[k]) closedir(dirs[k]);
        begin(OP_READDIR);
        dirs[k] = opendir(mnt);
        end(OP_READDIR, dirs[k] ? 0 : -1);
        note("opendir -> %s", dirs[k] ? "ok" : "fail");
        if (!dirs[k]) return;
    }
    DIR *d = dirs[k];
    int pick = (int)below(4);
    if ((pick == 1 && disabled[OP_SEEKDIR]) || (pick == 3 && disabled[OP_GETDENTS])) pick = 0;
    switch (pick) {
    case 0: {
        int count = 1 + (int)below(12);
        begin(OP_READDIR);
        errno = 0;
        int got = 0;
        for (int i = 0; i < count; i++) {
            struct dirent *e = readdir(d);
            if (!e) break;
            got++;
        }
        end(OP_READDIR, errno ? -1 : 0);
        note("readdir x%d -> %d entries errno %d", count, got, errno);
        break;
    }
    case 1: {
        static const long cookies[] = {0, 1, 2, 3, 8, 9, 10, 11, 100, 1000, -1, LONG_MAX, LONG_MIN, 1L << 40};
        long where = chance(70) ? cookies[below(14)] : (long)rnd();
        begin(OP_SEEKDIR);
        seekdir(d, where);
        errno = 0;
        struct dirent *e = readdir(d);
        end(OP_SEEKDIR, errno ? -1 : 0);
        note("seekdir %ld; readdir -> %s errno %d", where, e ? e->d_name : "(end)", errno);
        break;
    }
    case 2: {
        long t = telldir(d);
        if (chance(50)) rewinddir(d);
        else seekdir(d, t);
        note("telldir %ld", t);
        break;
    }
    default: {
        static char buf[65536];
        int fd = dirfd(d);
        off_t off = chance(50) ? random_offset() : (off_t)below(12);
        size_t n = below(4) == 0 ? below(64) : 1 + below(sizeof buf);
        begin(OP_GETDENTS);
        long rc = lseek(fd, off, SEEK_SET);
        if (rc >= 0 || chance(50)) rc = syscall(SYS_getdents64, fd, buf, n);
        end(OP_GETDENTS, rc);
        note("lseek(dir, %lld); getdents64 %zu -> %ld", (long long)off, n, rc);
        break;
    }
    }
}

static void path_op(void) {
    char path[4096];
    const char *name = names[below(NAMES)];
    if (chance(10)) name = "";
    path_of(path, sizeof path, name);
    if (chance(3)) snprintf(path, sizeof path, "%s", mnt);
    long rc = 0;
    static char buf[70000];
    switch (below(7)) {
    case 0: {
        struct stat st;
        begin(OP_STAT);
        rc = chance(50) ? stat(path, &st) : lstat(path, &st);
        end(OP_STAT, rc);
        note("stat %s -> %ld", name, rc);
        break;
    }
    case 1: {
        struct statx sx;
        unsigned mask = chance(50) ? STATX_ALL : (unsigned)rnd();
        int flags = (int)(below(4) == 0 ? AT_STATX_FORCE_SYNC : below(4) == 0 ? AT_STATX_DONT_SYNC : 0) |
                    (chance(20) ? AT_SYMLINK_NOFOLLOW : 0) | (chance(10) ? AT_EMPTY_PATH : 0);
        begin(OP_STATX);
        rc = statx(AT_FDCWD, path, flags, mask, &sx);
        end(OP_STATX, rc);
        note("statx %s mask 0x%x flags 0x%x -> %ld", name, mask, flags, rc);
        break;
    }
    case 2: {
        int mode = (int)below(8);
        if (chance(10)) mode = (int)rnd();
        begin(OP_ACCESS);
        rc = chance(50) ? access(path, mode) : faccessat(AT_FDCWD, path, mode & 7, AT_EACCESS);
        end(OP_ACCESS, rc);
        note("access %s %d -> %ld", name, mode, rc);
        break;
    }
    case 3: {
        size_t n = below(3) == 0 ? 0 : 1 + below(sizeof buf - 1);
        begin(OP_READLINK);
        rc = readlink(path, buf, n);
        end(OP_READLINK, rc);
        note("readlink %s %zu -> %ld", name, n, rc);
        break;
    }
    case 4: {
        size_t n = below(3) == 0 ? 0 : 1 + below(sizeof buf - 1);
        begin(OP_PATH_XATTR);
        rc = chance(50) ? getxattr(path, chance(50) ? "user.a" : "security.capability", buf, n)
                        : listxattr(path, buf, n);
        end(OP_PATH_XATTR, rc);
        note("xattr %s %zu -> %ld", name, n, rc);
        break;
    }
    case 5: {
        /* What must fail on a read-only tree, as an unprivileged user. */
        char other[4096];
        path_of(other, sizeof other, names[below(NAMES)]);
        begin(OP_MUTATE);
        int which = (int)below(10);
        switch (which) {
        case 0: rc = truncate(path, random_offset()); break;
        case 1: rc = chmod(path, (mode_t)rnd()); break;
        case 2: rc = chown(path, 65534, 65534); break;
        case 3: rc = rename(path, other); break;
        case 4: rc = unlink(path); break;
        case 5: rc = mkdir(path, 0777); break;
        case 6: rc = symlink("/etc/passwd", path); break;
        case 7: rc = link(path, other); break;
        case 8: rc = setxattr(path, "user.x", "v", 1, 0); break;
        default: rc = utimensat(AT_FDCWD, path, NULL, 0); break;
        }
        end(OP_MUTATE, rc);
        struct stat a, b;
        /* rename(x, x) succeeds by doing nothing (POSIX): not a mutation. */
        if (rc == 0 && which == 3 && stat(path, &a) == 0 && stat(other, &b) == 0 && a.st_ino == b.st_ino &&
            a.st_dev == b.st_dev)
            rc = -1;
        if (rc == 0) violation("mutation %d of %s (%s) succeeded", which, name, path);
        note("mutate %s -> %ld errno %d", name, rc, errno);
        break;
    }
    default: {
        struct statfs sf;
        begin(OP_STATFS);
        rc = statfs(mnt, &sf);
        end(OP_STATFS, rc);
        note("statfs -> %ld", rc);
        break;
    }
    }
}

static void open_op(void) {
    int k = -1;
    for (int i = 0; i < MAX_FDS; i++)
        if (fds[i] < 0) {
            k = i;
            break;
        }
    if (k < 0) {
        k = (int)below(MAX_FDS);
        begin(OP_CLOSE);
        close(fds[k]);
        end(OP_CLOSE, 0);
        fds[k] = -1;
    }
    char path[4096];
    const char *name = chance(85) ? names[below(8)] : names[below(NAMES)];
    path_of(path, sizeof path, name);
    int flags = random_flags();
    begin(OP_OPEN);
    int fd = open(path, flags, 0644);
    end(OP_OPEN, fd);
    int saved = errno;
    note("open %s 0x%x -> %d errno %d", name, flags, fd, fd < 0 ? saved : 0);
    if (fd < 0 && !open_errno_expected(saved, flags))
        violation("open %s with flags 0x%x failed with unexpected errno %d (%s)", name, flags, saved,
                  strerror(saved));
    if (fd >= 0) {
        if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC)) == O_TRUNC)
            if (!(flags & O_PATH)) violation("open %s with flags 0x%x succeeded on a read-only tree", name, flags);
        fds[k] = fd;
        snprintf(fd_names[k], sizeof fd_names[k], "%s", name);
    }
}

/* A child in a new process group (sometimes a new session) reads one file whole. */
static void fork_read(void) {
    begin(OP_FORKREAD);
    pid_t pid = fork();
    if (pid == 0) {
        in_child = 1;
        if (chance(30)) setsid();
        else setpgid(0, 0);
        rng_state ^= (uint64_t)getpid() << 32;
        full_read(checked[below(7)]);
        if (chance(50)) full_read(checked[below(7)]);
        _exit(0);
    }
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    end(OP_FORKREAD, pid > 0 ? 0 : -1);
    add(&sh->groups, 1);
    note("fork-read child %d status %d", pid, status);
}

static void worker(int index, uint64_t seed, double deadline, uint64_t max_ops) {
    me = index;
    rng_state = seed * 0x100000001B3ULL + (uint64_t)index * 7919;
    if (chance(30)) setsid();
    else setpgid(0, 0);
    for (int i = 0; i < MAX_FDS; i++) fds[i] = -1;
    struct sigaction sa = {0};
    sa.sa_handler = on_bus;
    sigaction(SIGBUS, &sa, NULL);
    for (uint64_t i = 0; now_mono() < deadline && (!max_ops || i < max_ops) && !sh->daemon_dead; i++) {
        sh->w[me].iteration = i;
        int r = (int)below(100);
        if (r < 20) open_op();
        else if (r < 50) {
            int k = pick_fd();
            if (k >= 0) fd_op(k);
            else open_op();
        } else if (r < 62) dir_op();
        else if (r < 80) path_op();
        else if (r < 95) full_read(checked[below(7)]);
        else if (r < 97) fork_read();
        else {
            int k = pick_fd();
            if (k >= 0) {
                begin(OP_CLOSE);
                close(fds[k]);
                end(OP_CLOSE, 0);
                fds[k] = -1;
            }
        }
    }
    _exit(0);
}

/* Reads `status` over and over; the slowest read is what "nothing else waits" measures. */
static void status_reader(int index, double deadline) {
    me = index;
    char path[4096];
    path_of(path, sizeof path, "status");
    static char buf[8192];
    while (now_mono() < deadline && !sh->daemon_dead) {
        double t = now_mono();
        begin(OP_READ);
        int fd = open(path, O_RDONLY);
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
        if (fd >= 0) close(fd);
        end(OP_READ, n);
        double ms = (now_mono() - t) * 1000;
        if (ms > sh->status_max_ms) sh->status_max_ms = ms;
        if (n <= 0) {
            add(&sh->status_failed, 1);
        } else {
            buf[n] = 0;
            add(&sh->status_reads, 1);
            if (buf[0] != '{' || buf[n - 1] != '\n' || !strstr(buf, "\"state\"")) violation("status is not the JSON object");
            if (strstr(buf, "SECG") || strstr(buf, "TOKG") || strstr(buf, "SECB") || strstr(buf, "TOKB"))
                violation("status holds a secret");
        }
        usleep(2000);
    }
    _exit(0);
}

static int usage(void) {
    fprintf(stderr, "usage: fuse_fuzz MOUNTPOINT [--seed N] [--seconds S] [--procs P] [--max-ops N] [--hang-ms MS] [--without OP,OP...] [--trace]\n"
                    "       fuse_fuzz --helper STATEFILE LIFETIME SEED\n");
    return 64;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "--helper")) {
        if (argc != 5) return usage();
        return helper(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 10));
    }
    if (argc < 2 || argv[1][0] == '-') return usage();
    mnt = argv[1];
    uint64_t seed = 1, max_ops = 0;
    double seconds = 30, hang_ms = 5000;
    int procs = 8;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--trace")) trace = 1;
        else if (i + 1 < argc && !strcmp(argv[i], "--seed")) seed = strtoull(argv[++i], NULL, 10);
        else if (i + 1 < argc && !strcmp(argv[i], "--seconds")) seconds = atof(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--procs")) procs = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--max-ops")) max_ops = strtoull(argv[++i], NULL, 10);
        else if (i + 1 < argc && !strcmp(argv[i], "--hang-ms")) hang_ms = atof(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--without")) {
            char *list = argv[++i], *save = NULL;
            for (char *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
                int found = 0;
                for (int k = 0; k < OP_COUNT; k++)
                    if (!strcmp(name, op_names[k])) disabled[k] = found = 1;
                if (!found) return usage();
            }
        }
        else return usage();
    }
    if (procs < 1 || procs > MAX_WORKERS || !(seconds > 0) || seconds > 86400) return usage();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGIO, SIG_IGN);
    signal(SIGURG, SIG_IGN);
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 1;
    double start = now_mono(), deadline = start + seconds;
    pid_t pids[MAX_WORKERS + 1];
    for (int i = 0; i <= procs; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            if (i == procs) status_reader(i, deadline);
            worker(i, seed, deadline, max_ops);
        }
        pids[i] = pid;
        sh->w[i].pid = pid;
    }
    /* Watch: a call that takes longer than hang_ms is a hang. */
    int alive = procs + 1;
    while (alive > 0) {
        int status;
        pid_t done = waitpid(-1, &status, WNOHANG);
        if (done > 0) {
            alive--;
            if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
                int idx = -1;
                for (int i = 0; i <= procs; i++)
                    if (pids[i] == done) idx = i;
                me = idx >= 0 ? idx : 0;
                violation("worker %d ended with status 0x%x", idx, status);
            }
            continue;
        }
        if (done < 0) break;
        double t = now_mono();
        for (int i = 0; i <= procs; i++) {
            double began;
            __atomic_load(&sh->w[i].op_started, &began, __ATOMIC_ACQUIRE);
            if (began > 0 && (t - began) * 1000 > hang_ms && !sh->hangs) {
                sh->hangs++;
                snprintf(sh->hang, sizeof sh->hang, "worker %d: %s for %.0f ms at iteration %" PRIu64,
                         i, op_names[sh->w[i].op], (t - began) * 1000, sh->w[i].iteration);
                fprintf(stderr, "fuse-fuzz: HANG %s; its last calls:\n", sh->hang);
                for (unsigned k = 0; k < LAST_OPS; k++)
                    fprintf(stderr, "  %s\n", sh->w[i].last[(sh->w[i].last_pos + k) % LAST_OPS]);
                for (int j = 0; j <= procs; j++) kill(pids[j], SIGKILL);
            }
        }
        if (t > deadline + 60) { /* should never happen: the hang check fires first */
            for (int j = 0; j <= procs; j++) kill(pids[j], SIGKILL);
        }
        usleep(20000);
    }
    double took = now_mono() - start;
    struct statfs sf;
    if (statfs(mnt, &sf) != 0 && errno == ENOTCONN) sh->daemon_dead = 1;
    if (sh->daemon_dead) {
        fprintf(stderr, "fuse-fuzz: the daemon died; last calls of each worker:\n");
        for (int i = 0; i < procs; i++)
            for (unsigned k = 0; k < LAST_OPS; k++)
                if (sh->w[i].last[(sh->w[i].last_pos + k) % LAST_OPS][0])
                    fprintf(stderr, "  w%d: %s\n", i, sh->w[i].last[(sh->w[i].last_pos + k) % LAST_OPS]);
    }
    uint64_t total = 0;
    fprintf(stderr, "fuse-fuzz: calls by kind (errors):");
    for (int i = 0; i < OP_COUNT; i++) {
        total += sh->ops[i];
        fprintf(stderr, " %s %" PRIu64 " (%" PRIu64 ")", op_names[i], sh->ops[i], sh->errors[i]);
    }
    fprintf(stderr, "\n");
    int bad = sh->violations || sh->hangs || sh->daemon_dead;
    printf("fuse-fuzz: seed %" PRIu64 ", %.1f s, %d procs: %" PRIu64 " calls (%.0f/s), full reads %" PRIu64
           " valid / %" PRIu64 " failed (%" PRIu64 " bytes), generations up to %" PRIu64 ", %" PRIu64
           " child process groups, %" PRIu64 " SIGBUS, status reads %" PRIu64 " (%" PRIu64
           " failed, slowest %.1f ms), slowest call %.1f ms (%s), violations %" PRIu64 ", hangs %" PRIu64
           ", daemon %s: %s\n",
           seed, took, procs, total, total / took, sh->full_ok, sh->full_failed, sh->full_bytes,
           sh->generations_seen_max, sh->groups, sh->sigbus, sh->status_reads, sh->status_failed,
           sh->status_max_ms, sh->op_max_ms, op_names[sh->op_max_kind], sh->violations, sh->hangs,
           sh->daemon_dead ? "DEAD" : "alive", bad ? "FAIL" : "ok");
    for (int i = 0; i < 4 && i < (int)sh->violations; i++) printf("  violation: %s\n", sh->violation[i]);
    if (sh->hangs) printf("  hang: %s\n", sh->hang);
    return bad ? 1 : 0;
}
