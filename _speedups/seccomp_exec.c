/* pyctr-seccomp-exec: load a seccomp filter compiled once for a batch, then execute the command.
 *
 * Started by runc as a container's process, from a descriptor runc was told to pass on
 * (`runc run --preserve-fds 2`, the program as /proc/self/fd/4):
 *
 *     pyctr-seccomp-exec COMMAND [ARG...]
 *
 * fd 3 holds the classic BPF program (struct sock_filter array, see pyctr/seccomp_filter.py), fd 4
 * this program itself.  Both are closed, the filter is loaded with prctl(PR_SET_SECCOMP) as runc
 * loads it (no_new_privs is already set by runc), and COMMAND is executed after the $PATH search
 * runc would do (absolute $PATH entries only; the first regular file with an execute bit; no shell
 * for a file without #!).  The filter is in force from that execve on.  Exit status 127 (command not found)
 * or 126 (cannot execute, bad filter) with a message on stderr when something fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#define FILTER_FD 3
#define SELF_FD 4

static struct sock_filter program[BPF_MAXINSNS + 1];

extern char **environ;

/* Where runc would find `name`: itself when it holds a slash, else the first absolute $PATH entry
 * holding a regular file of that name with an execute bit. NULL if none (errno ENOENT). */
static const char *look_path(const char *name, char *buf, size_t size)
{
    struct stat st;
    if (strchr(name, '/'))
        return name;
    const char *path = getenv("PATH");
    size_t len = strlen(name);
    while (path && *path) {
        const char *end = strchrnul(path, ':');
        size_t dlen = (size_t)(end - path);
        if (dlen && path[0] == '/' && dlen + 1 + len + 1 <= size) {
            memcpy(buf, path, dlen);
            buf[dlen] = '/';
            memcpy(buf + dlen + 1, name, len + 1);
            if (stat(buf, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111))
                return buf;
        }
        path = *end ? end + 1 : end;
    }
    errno = ENOENT;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs("pyctr-seccomp-exec: usage: pyctr-seccomp-exec COMMAND [ARG...]\n", stderr);
        return 126;
    }
    ssize_t n = pread(FILTER_FD, program, sizeof(program), 0);
    int read_errno = errno;
    close(FILTER_FD);
    close(SELF_FD);
    if (n < 0) {
        fprintf(stderr, "pyctr-seccomp-exec: reading the seccomp filter: %s\n", strerror(read_errno));
        return 126;
    }
    if (n == 0 || n % (ssize_t)sizeof(struct sock_filter) != 0
        || n > (ssize_t)(BPF_MAXINSNS * sizeof(struct sock_filter))) {
        fputs("pyctr-seccomp-exec: the seccomp filter is malformed\n", stderr);
        return 126;
    }
    struct sock_fprog prog = {
        .len = (unsigned short)(n / (ssize_t)sizeof(struct sock_filter)),
        .filter = program,
    };
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) {
        fprintf(stderr, "pyctr-seccomp-exec: loading the seccomp filter: %s\n", strerror(errno));
        return 126;
    }
    static char buf[PATH_MAX];
    const char *file = look_path(argv[1], buf, sizeof(buf));
    if (file)
        execve(file, argv + 1, environ);
    int e = errno;
    if (e == ENOENT)
        fprintf(stderr, "pyctr-seccomp-exec: exec: \"%s\": executable file not found in $PATH\n", argv[1]);
    else
        fprintf(stderr, "pyctr-seccomp-exec: exec: \"%s\": %s\n", argv[1], strerror(e));
    return e == ENOENT ? 127 : 126;
}
