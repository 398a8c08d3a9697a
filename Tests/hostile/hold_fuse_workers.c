// hold_fuse_workers PID [NAME]: stops every thread of process PID whose name is NAME
// (default "fuse-loop": libfuse's request workers in credfs, which inherit the name of the
// loop's thread) with ptrace, and keeps them stopped, so requests on that FUSE connection
// are neither read nor answered while the process's other threads (the refresher, the
// invalidation thread) go on. A reader's lookup then stays in progress: it holds the
// directory's lock, and an entry invalidation waits behind it.
//
// Prints "held N" once the N threads are stopped. Stopped threads die with a SIGKILL of
// the process; their exits are collected here, so the process can still be reaped by its
// parent. Exits when no traced thread is left; SIGTERM lets them go (detach) and exits.
// Used by Tests/CredfsTests/InvalidationKillTests.swift and scripts/boot/checks.
// Build: cc -O2 -o hold_fuse_workers hold_fuse_workers.c
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_THREADS 1024
static pid_t held[MAX_THREADS];
static int count;
static volatile sig_atomic_t leave;

static void on_term(int sig) { (void)sig; leave = 1; }

static int named(pid_t pid, pid_t tid, const char *name) {
    char path[96], comm[64] = {0};
    snprintf(path, sizeof path, "/proc/%d/task/%d/comm", (int)pid, (int)tid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    if (!fgets(comm, sizeof comm, f)) comm[0] = 0;
    fclose(f);
    comm[strcspn(comm, "\n")] = 0;
    return strcmp(comm, name) == 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: hold_fuse_workers PID [NAME]\n");
        return 2;
    }
    pid_t pid = (pid_t)atoi(argv[1]);
    const char *name = argc > 2 ? argv[2] : "fuse-loop";
    struct sigaction sa = {0};
    sa.sa_handler = on_term;  // no SA_RESTART: a wait returns EINTR
    sigaction(SIGTERM, &sa, NULL);
    sigset_t term;  // a parent may have started this with SIGTERM blocked
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_UNBLOCK, &term, NULL);

    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *tasks = opendir(path);
    if (!tasks) {
        perror(path);
        return 1;
    }
    struct dirent *entry;
    while ((entry = readdir(tasks)) && count < MAX_THREADS) {
        pid_t tid = (pid_t)atoi(entry->d_name);
        if (tid <= 0 || !named(pid, tid, name)) continue;
        if (ptrace(PTRACE_SEIZE, tid, 0, 0) != 0) {
            fprintf(stderr, "PTRACE_SEIZE %d: %s\n", (int)tid, strerror(errno));
            continue;
        }
        if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0) {
            fprintf(stderr, "PTRACE_INTERRUPT %d: %s\n", (int)tid, strerror(errno));
            ptrace(PTRACE_DETACH, tid, 0, 0);
            continue;
        }
        held[count++] = tid;
    }
    closedir(tasks);
    if (count == 0) {
        fprintf(stderr, "no thread named %s in %d\n", name, (int)pid);
        return 1;
    }
    // Each one reports its stop.
    int stopped = 0, alive = count;
    while (stopped < alive) {
        int status;
        pid_t tid = waitpid(-1, &status, __WALL);
        if (tid < 0) {
            if (errno == EINTR && !leave) continue;
            break;
        }
        if (WIFSTOPPED(status)) stopped++;
        else alive--;
    }
    printf("held %d\n", stopped);
    fflush(stdout);
    // Keep them stopped: a stop is left as it is; an exit is collected.
    while (!leave) {
        int status;
        pid_t tid = waitpid(-1, &status, __WALL);
        if (tid < 0) {
            if (errno == EINTR) continue;
            return 0;  // ECHILD: every traced thread is gone
        }
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            if (--alive == 0) return 0;
        }
    }
    for (int i = 0; i < count; i++) ptrace(PTRACE_DETACH, held[i], 0, 0);
    return 0;
}
