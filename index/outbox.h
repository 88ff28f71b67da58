/*
 * outbox: the durable queue of local rejections for İYS (DESIGN §11,
 * §12). Every local RET the writer commits (origin "local") becomes an
 * entry, queued → pushed (İYS's transactionId recorded, by the connector
 * over the ops port) → reconciled (İYS's own copy came back through the
 * pull: a later change of an "iys:*" origin, a RET for the same key with
 * consent_date at or after the entry's); reconciled entries are
 * compacted away. One file, DIR/outbox (format essay in outbox.c).
 *
 * Threads: outbox_observe and outbox_commit from the single writer only
 * (they decide, in log order, what enters and what reconciles);
 * outbox_mark_pushed, outbox_list and outbox_stats from any thread (the
 * ops port). A mutex guards the state and the file; the writer holds it
 * for one append and fdatasync, the ops port as long as it copies or
 * marks one entry.
 * Errors: -errno with a message in err; a damaged file (anything but a
 * torn tail: see outbox_open) is -EPROTO naming the offset.
 */
#ifndef CONSENTD_INDEX_OUTBOX_H
#define CONSENTD_INDEX_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/recipient.h"
#include "proto/consent.pb-c.h"

#define OUTBOX_FILE "outbox"          /* under the data dir */
#define OUTBOX_ORIGIN_LOCAL "local"   /* the origin whose RETs are queued */
#define OUTBOX_ORIGIN_IYS "iys:"      /* prefix of İYS's origins (§12) */
#define OUTBOX_TXID_MAX 128           /* a transaction id's bytes */
#define OUTBOX_LIST_MAX 1000          /* entries one outbox_list gives */

enum outbox_state {
	OUTBOX_QUEUED = 1,
	OUTBOX_PUSHED = 2,
	OUTBOX_RECONCILED = 3,
};

/* One entry: the change's fields, its log position and its state. */
struct outbox_entry {
	uint64_t sequence;        /* the RET's change-log position */
	uint32_t brand_code;
	uint32_t iys_code;
	int channel;              /* Consent__V1__Channel */
	int recipient_type;       /* Consent__V1__RecipientType */
	int source;               /* Consent__V1__Source */
	int64_t consent_date;     /* Unix s UTC */
	int64_t creation_date;
	enum outbox_state state;
	uint64_t key_hash;        /* (brand, channel, type, recipient) */
	char recipient[RECIPIENT_TEXT_MAX]; /* canonical, NUL-terminated */
	char transaction_id[OUTBOX_TXID_MAX + 1]; /* the change's */
	char pushed_id[OUTBOX_TXID_MAX + 1];      /* PUSHED: İYS's */
};

struct outbox;

/* Opens DIR/outbox, creating it when missing. A torn tail (the last
 * append cut by a crash: a partial unit, a last unit whose checksum fails,
 * or zero bytes to the end) was never acknowledged and is cut away
 * (*truncated gets its bytes; NULL: not wanted); any other damage is
 * -EPROTO with the offset in err. */
int outbox_open(const char *dir, struct outbox **out, uint64_t *truncated,
		char *err, size_t err_cap);
void outbox_close(struct outbox *ob); /* NULL: no-op */

/* The highest change-log position the file accounts for: every change
 * at or below it that matters to the outbox is in it. */
uint64_t outbox_through(const struct outbox *ob);

/* Writer: one change the writer committed at log position
 * c->sequence, of batch origin (origin_len bytes; NULL or "" for the
 * sequence kind, which never matters). A RET of origin "local" queues an
 * entry; a RET of an "iys:*" origin reconciles every live entry of its
 * key with consent_date <= its own. The state changes at once (later
 * changes of the group see it); the records wait for outbox_commit.
 * Pure in the change and the state, so a replica reading the same stream
 * and a rebuild from the log decide alike. 0, or -ENOMEM. */
int outbox_observe(struct outbox *ob, const char *origin, size_t origin_len,
		   const Consent__V1__Consent *c);

/* Writer: makes what outbox_observe recorded since the last commit
 * durable (one write, one fdatasync; nothing at all when it recorded
 * nothing), noting that the file accounts for the log through `through`,
 * and compacts the file when reconciled entries dominate it. 0, or
 * -errno with the message in err: the outbox then refuses every later
 * write (a failed fdatasync is never retried) until reopened. */
int outbox_commit(struct outbox *ob, uint64_t through, char *err,
		  size_t err_cap);

/* Writer, at open: feeds outbox_observe every change of log past
 * outbox_through (a crash between the change log's fdatasync and the
 * outbox's), with the origin of its batch, and commits. Returns the
 * entries added (>= 0) or -errno with err. */
struct changelog;
int outbox_rebuild(struct outbox *ob, struct changelog *log, char *err,
		   size_t err_cap);

/* Any thread: marks entry `sequence` pushed with İYS's transaction id
 * (1..OUTBOX_TXID_MAX bytes, no control bytes), durably. 0 once durable
 * (or when it was pushed with this id already); -ENOENT for no live entry
 * of that sequence (unknown or reconciled); -EEXIST pushed with another
 * id; -EINVAL a bad id; -errno a failed write (err). */
int outbox_mark_pushed(struct outbox *ob, uint64_t sequence, const char *id,
		       size_t id_len, char *err, size_t err_cap);

/* Any thread: copies up to max live entries (not reconciled) that keep
 * accepts (NULL: all), oldest first, into out; returns how many. *depth
 * (NULL: not wanted) gets the count of every live entry keep accepts. */
size_t outbox_list(struct outbox *ob,
		   bool (*keep)(const struct outbox_entry *e, const void *arg),
		   const void *arg, struct outbox_entry *out, size_t max,
		   uint64_t *depth);

/* Any thread: the live entry of sequence into *out: true, or false when
 * there is none (unknown or reconciled). */
bool outbox_get(struct outbox *ob, uint64_t sequence, struct outbox_entry *out);

/* Any thread: live entries, and the consent_date of the oldest (0 when
 * none), for /metrics and /v1/stats. */
void outbox_stats(struct outbox *ob, uint64_t *depth, int64_t *oldest);

/* Decodes a whole file image as outbox_open does (for fuzzers and
 * tests): 0 with *good the bytes of the valid prefix (the rest a torn
 * tail) and *live its live entries, or -EPROTO with err. */
int outbox_parse(const uint8_t *buf, size_t len, size_t *good, size_t *live,
		 char *err, size_t err_cap);

/* The state's name, "queued", "pushed" or "reconciled". */
const char *outbox_state_name(enum outbox_state s);

/* The hash of a consent key (brand, channel, recipient type, canonical
 * recipient text): XXH3-64 seeded by the first three, with no secret, so
 * it is the same in every process and file. Any thread. index/history.c
 * keys its per-key map with it too. */
uint64_t outbox_key_hash(uint32_t brand, int channel, int rtype,
			 const char *recipient, size_t len);

#endif
