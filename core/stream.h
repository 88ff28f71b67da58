/*
 * stream: snapshot and change streams (DESIGN §3.5). A stream is frames of
 * a base-128 varint length and a serialized consent.v1.StreamFrame: one
 * header, batches, and a trailer holding the record count and the XXH3-64
 * of every byte before the trailer frame.
 *
 * The reader pulls from a file descriptor (file or pipe), survives input
 * split at any byte, bounds every length before allocating (frames over
 * max_frame_bytes are -EMSGSIZE) and decodes with protobuf-c into an arena
 * it reuses per frame. It rejects, with a message naming the byte offset
 * and the field: a first frame that is not a header, a frame that does not
 * decode, a truncated stream, bytes after the trailer, a wrong record
 * count or checksum, and a missing trailer where one is required
 * (snapshots always; change streams may end without one). It checks the
 * wire structure only; consent_validate (below) checks one record.
 * One reader or writer per thread; not shared.
 */
#ifndef CONSENTD_CORE_STREAM_H
#define CONSENTD_CORE_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/decision.h"
#include "core/recipient.h"
#include "proto/consent.pb-c.h"

#define STREAM_FORMAT_VERSION 1
#define STREAM_FRAME_MAX_DEFAULT (64u << 20)
#define STREAM_BATCH_DEFAULT 1000

struct stream_reader;

enum stream_item_kind {
	STREAM_ITEM_HEADER, /* the first frame */
	STREAM_ITEM_BATCH,  /* consents[0..n_consents) */
	STREAM_ITEM_RAW_BATCH, /* frame[0..frame_len), n_consents in it */
};

/* Valid until the next stream_reader_next call. */
struct stream_item {
	enum stream_item_kind kind;
	uint64_t offset; /* byte offset of the frame's length prefix */
	const Consent__V1__StreamHeader *header;
	Consent__V1__Consent *const *consents;
	size_t n_consents;
	const uint8_t *frame;   /* RAW_BATCH: the StreamFrame, no prefix */
	size_t frame_len;
};

/* The reader does not own fd. require_trailer: true for snapshots; a
 * header saying changes=false requires the trailer whatever this says. */
int stream_reader_create(int fd, size_t max_frame_bytes, bool require_trailer,
			 struct stream_reader **out);
void stream_reader_destroy(struct stream_reader *r);

/* 1: *item filled. 0: the stream ended cleanly (trailer verified, or EOF on
 * a frame boundary where no trailer is required). < 0: -EPROTO, -EMSGSIZE,
 * -ENOMEM or an I/O -errno; stream_reader_error tells what and where. */
int stream_reader_next(struct stream_reader *r, struct stream_item *item);
const char *stream_reader_error(const struct stream_reader *r);

/* Raw batches (off by default): batch frames after the header come back
 * as STREAM_ITEM_RAW_BATCH, their bytes checksummed and their consents
 * counted from the wire but not decoded, so that other threads can decode
 * them (stream_decoder_batch) while this one reads on. A frame whose wire
 * does not walk as one batch is decoded here as usual, and fails with the
 * usual message; the trailer's checks are the same either way. */
void stream_reader_raw_batches(struct stream_reader *r, bool raw);

/* A decoder for raw batches: one per thread, any thread. */
struct stream_decoder;
int stream_decoder_create(struct stream_decoder **out);
void stream_decoder_destroy(struct stream_decoder *d);
/* Decodes a RAW_BATCH item (its bytes copied out of the reader is fine:
 * the offset names the frame) into *out, a STREAM_ITEM_BATCH valid until
 * d's next call: 0, or < 0 (-EPROTO, -EMSGSIZE, -ENOMEM) with the message
 * the reader would have given for that frame in err. */
int stream_decoder_batch(struct stream_decoder *d, const struct stream_item *raw,
			 struct stream_item *out, char *err, size_t err_cap);
uint64_t stream_reader_records(const struct stream_reader *r);
/* The trailer, once next returned 0 after one (else NULL). */
const Consent__V1__StreamTrailer *stream_reader_trailer(const struct stream_reader *r);

struct stream_writer;

/* Writes a header frame at once; the writer does not own fd. */
int stream_writer_create(int fd, const Consent__V1__StreamHeader *header,
			 size_t batch_records, struct stream_writer **out);
/* Buffers c into the current batch; writes a batch frame when it is full. */
int stream_writer_add(struct stream_writer *w, const Consent__V1__Consent *c);
/* stream_writer_add for a consent packed already (any thread may pack
 * with consent__v1__consent__pack): the same bytes in the stream, so a
 * writer fed by packing threads writes what one adding would. */
int stream_writer_add_packed(struct stream_writer *w, const uint8_t *msg,
			     size_t len);
/* Writes the last batch and the trailer. The writer is destroyed either way. */
int stream_writer_finish(struct stream_writer *w);
void stream_writer_destroy(struct stream_writer *w); /* abandons, no trailer */

/* Checks one record's meaning (DESIGN §1.1): the recipient normalises, the
 * channel suits it, recipient type, status and brand are set, the consent
 * date is in [CONSENT_DATE_MIN, CONSENT_DATE_MAX] (core/decision.h) and
 * not in the future. Returns 0 and the normalised recipient, or -EINVAL
 * with *field naming the field and *why the fault. An unknown source is
 * not an error (it is SOURCE_OTHER). A record that passes fits the index
 * (index_value_fits). */
int consent_validate(const Consent__V1__Consent *c, struct recipient *out,
		     const char **field, const char **why);

/* The largest serialized Consent a change may be: the change log's record
 * limit (index/changelog.h stores nothing larger). */
#define CHANGE_BYTES_MAX (64u << 10)

/* Checks one change of an Apply, the one place its rules live: a sequence
 * above 0 and above prev_sequence (the request's previous change, 0 for
 * the first), consent_validate, and a serialized size within
 * CHANGE_BYTES_MAX. Returns 0 and the normalised recipient (out may be
 * NULL), or -EINVAL / -EMSGSIZE with *field naming the rule ("sequence",
 * a consent_validate field, "size") and why (why_cap bytes) the fault. */
int change_validate(const Consent__V1__Consent *c, uint64_t prev_sequence,
		    struct recipient *out, const char **field, char *why,
		    size_t why_cap);

/* Varint helpers for framing (also used by tests and fuzzers). encode
 * returns bytes written (<= 10); decode returns bytes consumed, 0 if more
 * input is needed, or -EPROTO for a varint over 10 bytes. */
size_t stream_varint_encode(uint64_t v, uint8_t *out);
int stream_varint_decode(const uint8_t *in, size_t len, uint64_t *v);

#endif
