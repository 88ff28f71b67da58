/*
 * fsutil_test: core/fsutil.c against a real temp directory: whole writes
 * (a file, an offset, a pipe larger than its buffer with a slow reader,
 * a reader gone, a bad fd), directory fsyncs (a directory, a file, a
 * missing path, a parent, a bare name), tree removal (nested, a
 * symbolic link not followed, a path already gone, a plain file) and
 * whole-file reads (the text NUL-terminated, empty, at and past the size
 * bound, a directory, a missing file).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "tests/check.h"

static char tmpdir[] = "/tmp/fsutil_test.XXXXXX";

static void path_of(char *buf, size_t cap, const char *name)
{
	snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static bool exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

static void put_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	CHECK(fsutil_write_all(fd, text, strlen(text)) == 0);
	close(fd);
}

static void test_write_all_file(void)
{
	char path[256], got[64] = "";
	path_of(path, sizeof(path), "w.bin");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	CHECK(fsutil_write_all(fd, "hello ", 6) == 0);
	CHECK(fsutil_write_all(fd, "world", 5) == 0);
	CHECK(fsutil_write_all(fd, "", 0) == 0);
	/* At an offset, not moving the file position. */
	CHECK(fsutil_pwrite_all(fd, "W", 1, 6) == 0);
	CHECK(fsutil_pwrite_all(fd, "!", 1, 11) == 0);
	CHECK(lseek(fd, 0, SEEK_CUR) == 11);
	CHECK(pread(fd, got, sizeof(got) - 1, 0) == 12);
	CHECK_STREQ(got, "hello World!");
	close(fd);
	/* Errors come back as -errno. */
	CHECK(fsutil_write_all(fd, "x", 1) == -EBADF);
	CHECK(fsutil_pwrite_all(fd, "x", 1, 0) == -EBADF);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fsutil_write_all(fd, "x", 1) == -EBADF);
	close(fd);
}

struct slow_reader {
	int fd;
	size_t got;
	unsigned long sum;
};

static void *slow_read(void *arg)
{
	struct slow_reader *r = arg;
	unsigned char buf[4096];
	ssize_t n;
	while ((n = read(r->fd, buf, sizeof(buf))) > 0) {
		for (ssize_t i = 0; i < n; i++)
			r->sum += buf[i];
		r->got += (size_t)n;
		if (r->got % (64 << 10) < 4096)
			usleep(1000);
	}
	return NULL;
}

static void test_write_all_pipe(void)
{
	/* More than a pipe holds, against a reader that takes it slowly:
	 * every byte arrives, in order. */
	int p[2];
	CHECK(pipe(p) == 0);
	size_t len = 1 << 20;
	unsigned char *buf = malloc(len);
	unsigned long sum = 0;
	for (size_t i = 0; i < len; i++) {
		buf[i] = (unsigned char)(i * 131 + 7);
		sum += buf[i];
	}
	struct slow_reader r = { .fd = p[0] };
	pthread_t th;
	CHECK(pthread_create(&th, NULL, slow_read, &r) == 0);
	CHECK(fsutil_write_all(p[1], buf, len) == 0);
	close(p[1]);
	pthread_join(th, NULL);
	CHECK(r.got == len && r.sum == sum);
	close(p[0]);

	/* The reader gone: EPIPE, not a short success. */
	CHECK(pipe(p) == 0);
	close(p[0]);
	CHECK(fsutil_write_all(p[1], buf, 16) == -EPIPE);
	close(p[1]);
	free(buf);
}

static void test_fsync_dir(void)
{
	char sub[256], file[256], deep[300], cwd[4096];
	path_of(sub, sizeof(sub), "syncdir");
	CHECK(mkdir(sub, 0755) == 0);
	path_of(file, sizeof(file), "syncdir/f");
	put_file(file, "x");
	CHECK(fsutil_fsync_dir(sub) == 0);
	CHECK(fsutil_fsync_dir(file) == -ENOTDIR);
	path_of(deep, sizeof(deep), "no/such/dir");
	CHECK(fsutil_fsync_dir(deep) == -ENOENT);
	/* The parent of a path, whether or not the path exists. */
	CHECK(fsutil_fsync_parent(file) == 0);
	path_of(deep, sizeof(deep), "syncdir/not-yet");
	CHECK(fsutil_fsync_parent(deep) == 0);
	path_of(deep, sizeof(deep), "no/such/x");
	CHECK(fsutil_fsync_parent(deep) == -ENOENT);
	CHECK(fsutil_fsync_parent("/tmp") == 0); /* parent "/" */
	/* A bare name's parent is the working directory. */
	CHECK(getcwd(cwd, sizeof(cwd)) != NULL);
	CHECK(chdir(sub) == 0);
	CHECK(fsutil_fsync_parent("f") == 0);
	CHECK(chdir(cwd) == 0);
	/* A parent name longer than any path. */
	char *big = malloc(8200);
	memset(big, 'a', 8190);
	strcpy(big + 8190, "/x");
	CHECK(fsutil_fsync_parent(big) == -ENAMETOOLONG);
	free(big);
}

static void test_rm_tree(void)
{
	char root[256], p[300], outside[256];
	path_of(root, sizeof(root), "tree");
	CHECK(mkdir(root, 0755) == 0);
	const char *dirs[] = { "tree/a", "tree/a/b", "tree/a/b/c", "tree/d" };
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		path_of(p, sizeof(p), dirs[i]);
		CHECK(mkdir(p, 0755) == 0);
	}
	const char *files[] = { "tree/f", "tree/a/f", "tree/a/b/c/f", "tree/d/g" };
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		path_of(p, sizeof(p), files[i]);
		put_file(p, "data");
	}
	/* A link to a directory outside: the link goes, not what it names. */
	path_of(outside, sizeof(outside), "outside");
	CHECK(mkdir(outside, 0755) == 0);
	path_of(p, sizeof(p), "outside/keep");
	put_file(p, "keep");
	path_of(p, sizeof(p), "tree/a/link");
	CHECK(symlink(outside, p) == 0);

	CHECK(fsutil_rm_tree(root) == 0);
	CHECK(!exists(root));
	path_of(p, sizeof(p), "outside/keep");
	CHECK(exists(p));
	/* Gone already: nothing to do. */
	CHECK(fsutil_rm_tree(root) == 0);
	/* A plain file. */
	CHECK(fsutil_rm_tree(p) == 0);
	CHECK(!exists(p));
	CHECK(fsutil_rm_tree(outside) == 0);
	CHECK(!exists(outside));
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	RUN(test_write_all_file);
	RUN(test_write_all_pipe);
	RUN(test_fsync_dir);
	RUN(test_rm_tree);
	fsutil_rm_tree(tmpdir);
	return check_summary();
}
