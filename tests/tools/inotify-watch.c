/*
 * inotify-watch DIR...: prints one line per inotify event on the given folders,
 * "<events>\t<folder>\t<name>", events as letters (a attrib, c create, d delete,
 * m modify, o open, w close-after-write, n close-without-write, f moved-from,
 * t moved-to). Built static by the e2e tests (Debian's busybox has no inotifyd) and put
 * in a test image, to see which events a container's file watcher gets.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: inotify-watch DIR...\n"); return 2; }
    int fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0) { perror("inotify_init1"); return 1; }
    const char **dirs = calloc(1024, sizeof *dirs);
    for (int i = 1; i < argc; i++) {
        int wd = inotify_add_watch(fd, argv[i], IN_ALL_EVENTS);
        if (wd < 0 || wd >= 1024) { perror(argv[i]); return 1; }
        dirs[wd] = argv[i];
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("watching\t%d\n", argc - 1);
    char buf[65536] __attribute__((aligned(8)));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) { perror("read"); return 1; }
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            char ev[16]; int k = 0;
            if (e->mask & IN_ATTRIB) ev[k++] = 'a';
            if (e->mask & IN_CREATE) ev[k++] = 'c';
            if (e->mask & IN_DELETE) ev[k++] = 'd';
            if (e->mask & IN_MODIFY) ev[k++] = 'm';
            if (e->mask & IN_OPEN) ev[k++] = 'o';
            if (e->mask & IN_CLOSE_WRITE) ev[k++] = 'w';
            if (e->mask & IN_CLOSE_NOWRITE) ev[k++] = 'n';
            if (e->mask & IN_MOVED_FROM) ev[k++] = 'f';
            if (e->mask & IN_MOVED_TO) ev[k++] = 't';
            if (k == 0) ev[k++] = '?';
            ev[k] = 0;
            const char *dir = e->wd >= 0 && e->wd < 1024 && dirs[e->wd] ? dirs[e->wd] : "?";
            printf("%s\t%s\t%s\n", ev, dir, e->len ? e->name : "");
            p += sizeof *e + e->len;
        }
    }
}
