/*
 * snapshot: GET /v1/snapshot's producer thread (server/snapshot.h).
 *
 * A job has two owners, the producer and the consumer (the HTTP
 * response), and is freed by the second to let go. The producer writes
 * through a blocking write end; the consumer's read end is non-blocking.
 * The pipe is made large (1 MiB, or what the system allows) so that the
 * producer runs ahead of the socket by more than one batch.
 */
#include "server/snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/errmsg.h"
#include "index/build.h"
#include "index/table.h"
#include "server/writer.h"

#define SNAPSHOT_PIPE_BYTES (1 << 20)

struct snapshot_job {
	struct writer *w;
	int rfd, wfd;
	atomic_uint owners;   /* producer and consumer */
	/* The producer's outcome: written before it closes wfd, read
	 * after the consumer saw EOF (the pipe orders them; the release
	 * and acquire on done make it plain to TSan too). */
	atomic_bool done;
	int rc;
	char err[512];
};

static pthread_mutex_t snapshot_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t snapshot_cv = PTHREAD_COND_INITIALIZER;
static unsigned snapshot_running;

static void snapshot_drop(struct snapshot_job *j)
{
	if (atomic_fetch_sub_explicit(&j->owners, 1, memory_order_acq_rel) == 1)
		free(j);
}

static void *snapshot_main(void *arg)
{
	struct snapshot_job *j = arg;
	struct writer_view v;
	char err[512] = "";
	uint64_t records = 0;
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	int rc = writer_view(j->w, &v, err, sizeof(err));
	if (rc == 0) {
		struct index_info info;
		index_info(v.ix, &info);
		char origin[96];
		snprintf(origin, sizeof(origin), "consentd snapshot of "
			 "generation %" PRIu64 " at sequence %" PRIu64,
			 info.generation, v.watermark);
		struct build_dump_source src = {
			.ix = v.ix, .emails_fd = v.emails_fd,
			.emails_name = v.emails_name, .extra = v.extra,
			.watermark = v.watermark, .created_at = v.data_as_of,
			.origins = v.origins, .origin = origin,
			.chain_hash = v.has_chain ? v.chain : NULL,
		};
		rc = build_dump_source(&src, j->wfd, &records, err, sizeof(err));
		writer_view_release(&v);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double s = (double)(t1.tv_sec - t0.tv_sec) +
		   (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	if (rc == 0)
		fprintf(stderr, "consentd: snapshot: %" PRIu64 " records sent "
			"in %.1f s\n", records, s);
	else if (rc == -EPIPE)
		fprintf(stderr, "consentd: snapshot: the client went away "
			"after %.1f s\n", s);
	else
		fprintf(stderr, "consentd: snapshot: %s\n", err);
	j->rc = rc;
	snprintf(j->err, sizeof(j->err), "%s", err);
	/* Release: pairs with the acquire in snapshot_result. */
	atomic_store_explicit(&j->done, true, memory_order_release);
	close(j->wfd); /* the consumer's EOF */
	snapshot_drop(j);

	pthread_mutex_lock(&snapshot_mu);
	snapshot_running--;
	pthread_cond_broadcast(&snapshot_cv);
	pthread_mutex_unlock(&snapshot_mu);
	return NULL;
}

int snapshot_start(struct writer *w, struct snapshot_job **out, char *err,
		   size_t err_cap)
{
	int p[2];
	struct snapshot_job *j = calloc(1, sizeof(*j));

	if (j == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	if (pipe2(p, O_CLOEXEC) < 0) {
		int rc = -errno;
		free(j);
		return errmsg_fail(err, err_cap, rc, "pipe: %s", strerror(-rc));
	}
	/* Best effort: a smaller pipe only means more turns. */
	(void)fcntl(p[1], F_SETPIPE_SZ, SNAPSHOT_PIPE_BYTES);
	(void)fcntl(p[0], F_SETFL, O_NONBLOCK);
	j->w = w;
	j->rfd = p[0];
	j->wfd = p[1];
	atomic_init(&j->owners, 2);
	atomic_init(&j->done, false);

	pthread_mutex_lock(&snapshot_mu);
	snapshot_running++;
	pthread_mutex_unlock(&snapshot_mu);
	pthread_t th;
	int rc = pthread_create(&th, NULL, snapshot_main, j);
	if (rc != 0) {
		pthread_mutex_lock(&snapshot_mu);
		snapshot_running--;
		pthread_mutex_unlock(&snapshot_mu);
		close(p[0]);
		close(p[1]);
		free(j);
		return errmsg_fail(err, err_cap, -rc, "snapshot thread: %s",
				   strerror(rc));
	}
	pthread_detach(th);
	*out = j;
	return 0;
}

int snapshot_fd(const struct snapshot_job *j)
{
	return j->rfd;
}

int snapshot_result(struct snapshot_job *j, char *err, size_t err_cap)
{
	/* Acquire: pairs with the producer's release before its close. */
	if (!atomic_load_explicit(&j->done, memory_order_acquire))
		return errmsg_fail(err, err_cap, -EIO, "the stream ended early");
	if (j->rc < 0)
		return errmsg_fail(err, err_cap, j->rc, "%s", j->err);
	return 0;
}

void snapshot_done(struct snapshot_job *j)
{
	close(j->rfd);
	snapshot_drop(j);
}

void snapshot_wait_all(void)
{
	pthread_mutex_lock(&snapshot_mu);
	while (snapshot_running > 0)
		pthread_cond_wait(&snapshot_cv, &snapshot_mu);
	pthread_mutex_unlock(&snapshot_mu);
}
