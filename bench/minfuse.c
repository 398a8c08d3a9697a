/*
 * minfuse: the "FUSE floor" for scripts/bench. A minimal libfuse3 low-level server (in the
 * manner of libfuse's example/hello_ll.c) serving one static read-only file.
 *
 *   minfuse [-d] [--name NAME] MOUNTPOINT SIZE|PATH
 *
 * SIZE (all digits) serves that many bytes of a fixed pattern; otherwise the bytes of the
 * file at PATH (read once, at start). NAME defaults to "file". Stays in the foreground;
 * SIGTERM/SIGINT unmount and exit, printing the FUSE requests it answered on stderr.
 *
 * Same mount options as credfs (ro, nosuid, nodev, noexec, default_permissions), the
 * multithreaded loop with at most 16 threads (credfs's default), entry and attribute
 * timeouts of 1.0 s as in hello_ll, and a plain open: no keep_cache, no direct_io, so
 * each open drops the page cache and the read goes to the daemon. No flush or release
 * handler of its own (release just counts and answers 0, as libfuse does without one).
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_INO 2
static const double TIMEOUT = 1.0;

static const char *file_name = "file";
static char *data;
static size_t data_size;

static atomic_long n_lookup, n_getattr, n_open, n_read, n_release, n_opendir, n_readdir, n_releasedir;

static int fill_stat(fuse_ino_t ino, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    if (ino == FUSE_ROOT_ID) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
    } else if (ino == FILE_INO) {
        st->st_mode = S_IFREG | 0400;
        st->st_nlink = 1;
        st->st_size = (off_t)data_size;
    } else {
        return -1;
    }
    return 0;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    atomic_fetch_add(&n_lookup, 1);
    if (parent != FUSE_ROOT_ID || strcmp(name, file_name) != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.ino = FILE_INO;
    e.attr_timeout = TIMEOUT;
    e.entry_timeout = TIMEOUT;
    fill_stat(e.ino, &e.attr);
    fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    atomic_fetch_add(&n_getattr, 1);
    struct stat st;
    if (fill_stat(ino, &st) != 0) fuse_reply_err(req, ENOENT);
    else fuse_reply_attr(req, &st, TIMEOUT);
}

struct dirbuf { char *p; size_t size; };

static void dirbuf_add(fuse_req_t req, struct dirbuf *b, const char *name, fuse_ino_t ino) {
    struct stat st;
    size_t old = b->size;
    b->size += fuse_add_direntry(req, NULL, 0, name, NULL, 0);
    b->p = realloc(b->p, b->size);
    if (!b->p) abort();
    memset(&st, 0, sizeof st);
    st.st_ino = ino;
    fuse_add_direntry(req, b->p + old, b->size - old, name, &st, (off_t)b->size);
}

static void reply_buf_limited(fuse_req_t req, const char *buf, size_t size, off_t off, size_t max) {
    if ((size_t)off < size) fuse_reply_buf(req, buf + off, off + max <= size ? max : size - (size_t)off);
    else fuse_reply_buf(req, NULL, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    atomic_fetch_add(&n_opendir, 1);
    if (ino != FUSE_ROOT_ID) fuse_reply_err(req, ENOTDIR);
    else fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    atomic_fetch_add(&n_readdir, 1);
    if (ino != FUSE_ROOT_ID) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    struct dirbuf b = {0};
    dirbuf_add(req, &b, ".", FUSE_ROOT_ID);
    dirbuf_add(req, &b, "..", FUSE_ROOT_ID);
    dirbuf_add(req, &b, file_name, FILE_INO);
    reply_buf_limited(req, b.p, b.size, off, size);
    free(b.p);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino, (void)fi;
    atomic_fetch_add(&n_releasedir, 1);
    fuse_reply_err(req, 0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    atomic_fetch_add(&n_open, 1);
    if (ino != FILE_INO) fuse_reply_err(req, EISDIR);
    else if ((fi->flags & O_ACCMODE) != O_RDONLY) fuse_reply_err(req, EROFS);
    else fuse_reply_open(req, fi); /* keep_cache = 0, direct_io = 0 */
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)ino, (void)fi;
    atomic_fetch_add(&n_read, 1);
    reply_buf_limited(req, data, data_size, off, size);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino, (void)fi;
    atomic_fetch_add(&n_release, 1);
    fuse_reply_err(req, 0);
}

static const struct fuse_lowlevel_ops ops = {
    .lookup = op_lookup,
    .getattr = op_getattr,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .releasedir = op_releasedir,
    .open = op_open,
    .read = op_read,
    .release = op_release,
};

static int load(const char *spec) {
    size_t i = 0;
    while (spec[i] >= '0' && spec[i] <= '9') i++;
    if (i > 0 && spec[i] == 0) {
        data_size = strtoul(spec, NULL, 10);
        data = malloc(data_size ? data_size : 1);
        if (!data) return -1;
        for (size_t k = 0; k < data_size; k++) data[k] = (k % 64 == 63) ? '\n' : (char)('a' + k % 26);
        return 0;
    }
    FILE *f = fopen(spec, "rb");
    if (!f) { perror(spec); return -1; }
    size_t cap = 4096;
    data = malloc(cap);
    size_t n;
    while (data && (n = fread(data + data_size, 1, cap - data_size, f)) > 0) {
        data_size += n;
        if (data_size == cap) data = realloc(data, cap *= 2);
    }
    fclose(f);
    return data ? 0 : -1;
}

int main(int argc, char **argv) {
    int debug = 0, i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-d")) debug = 1;
        else if (!strcmp(argv[i], "--name") && i + 1 < argc) file_name = argv[++i];
        else break;
    }
    if (argc - i != 2 || strchr(file_name, '/')) {
        fprintf(stderr, "usage: minfuse [-d] [--name NAME] MOUNTPOINT SIZE|PATH\n");
        return 2;
    }
    const char *mountpoint = argv[i];
    if (load(argv[i + 1]) != 0) return 1;

    struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
    fuse_opt_add_arg(&args, "minfuse");
    fuse_opt_add_arg(&args, "-o");
    fuse_opt_add_arg(&args, "ro,nosuid,nodev,noexec,default_permissions,fsname=minfuse,subtype=minfuse");
    if (debug) fuse_opt_add_arg(&args, "-d");

    int rc = 1;
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!se) goto out_args;
    if (fuse_set_signal_handlers(se) != 0) goto out_session;
    if (fuse_session_mount(se, mountpoint) != 0) goto out_signals;

    struct fuse_loop_config *config = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(config, 16);
    int loop = fuse_session_loop_mt(se, config);
    fuse_loop_cfg_destroy(config);
    rc = (loop == 0 || loop == SIGTERM || loop == SIGINT || loop == SIGHUP) ? 0 : 1;
    fuse_session_unmount(se);
    fprintf(stderr,
            "minfuse: requests lookup=%ld getattr=%ld open=%ld read=%ld release=%ld opendir=%ld readdir=%ld "
            "releasedir=%ld\n",
            atomic_load(&n_lookup), atomic_load(&n_getattr), atomic_load(&n_open), atomic_load(&n_read),
            atomic_load(&n_release), atomic_load(&n_opendir), atomic_load(&n_readdir), atomic_load(&n_releasedir));
out_signals:
    fuse_remove_signal_handlers(se);
out_session:
    fuse_session_destroy(se);
out_args:
    fuse_opt_free_args(&args);
    free(data);
    return rc;
}
