/*
 * outpush: consentctl pull --ops pushes consentd's outbox of local
 * rejections (DESIGN §11, §12) to İYS's add-consent API and marks each
 * entry pushed on the ops port once İYS answered its transactionId.
 * One thread (pull's); the struct iysapi is pull's, lent for the
 * outbox's life. Errors: -errno, printed ("pull: outbox: ...");
 * -EINTR when stopped, -EACCES when İYS refused the credentials.
 */
#ifndef CONSENTD_CTL_OUTPUSH_H
#define CONSENTD_CTL_OUTPUSH_H

#include <signal.h>

#include "ctl/iysapi.h"
#include "ctl/pull.h"

struct outpush;

/* ops: consentd's ops port HOST:PORT. */
int outpush_create(const char *ops, struct iysapi *api,
		  const struct pull_opts *o, volatile sig_atomic_t *stop,
		  struct outpush **out);
void outpush_destroy(struct outpush *ob);

/* One round: every queued entry pushed (or found at İYS already, or
 * refused by İYS and reported) and marked. Transient failures of İYS or
 * of the ops port are retried with backoff within the round. */
int outpush_push(struct outpush *ob);

#endif
