/*
 * snapshot: GET /v1/snapshot's producer (DESIGN §9 "Bootstrap from a
 * peer"). A job is a thread of its own that takes a view of the served
 * state from the writer (writer_view: the served index held by a
 * reference, the applied watermark, the kind and cursors at it, the
 * e-mail addresses) and writes it as a §3.5 snapshot stream
 * (build_dump_source: header sequence = the watermark, origins and
 * origins_kind = §8's state there) into a pipe, whose read end the ops
 * port's thread drains into the HTTP response as the client takes it.
 * The pipe is the only link: the producer blocks on a slow client, the
 * ops port's thread never blocks on the producer, and no RCU read side is
 * held while the index is walked (the reference keeps it whole), so
 * neither the writer nor a swap nor a check waits for a download.
 *
 * Threads: snapshot_start and the others on the ops port's thread; the
 * producer is detached, and snapshot_wait_all (http_stop) waits until
 * every producer has ended. Errors: -errno with a message.
 */
#ifndef CONSENTD_SERVER_SNAPSHOT_H
#define CONSENTD_SERVER_SNAPSHOT_H

#include <stddef.h>

struct writer;
struct snapshot_job;

/* Starts a producer for w's served state. *out's read end
 * (snapshot_fd) is non-blocking. -EMFILE/-ENFILE, -EAGAIN (no thread),
 * -ENOMEM with a message. */
int snapshot_start(struct writer *w, struct snapshot_job **out, char *err,
		   size_t err_cap);

/* The pipe's read end (the job owns it). */
int snapshot_fd(const struct snapshot_job *j);

/* Once the read end said EOF: 0 when the stream was written whole (its
 * trailer included), else -errno with what failed in err (the client
 * then sees a stream without its trailer, which every reader refuses). */
int snapshot_result(struct snapshot_job *j, char *err, size_t err_cap);

/* The consumer is done (the response is freed): closes the read end, so
 * a producer still writing stops at once (EPIPE), and drops the job. */
void snapshot_done(struct snapshot_job *j);

/* Waits until every producer has ended (each notices a closed read end
 * at its next write, a stopping writer in writer_view). */
void snapshot_wait_all(void);

#endif
