/*
 * stream_fuzz: arbitrary bytes as a snapshot or change stream
 * (core/stream.c). The reader must return records or an error naming an
 * offset, never crash or over-read; a stream it accepts must survive a
 * round trip through the writer unchanged. Every record also goes through
 * consent_validate. Read again with raw batches decoded by a separate
 * decoder (the parallel build's way), it must be accepted or refused
 * alike, with the same records. Input reaches the reader through a memfd,
 * as a file would. A header's origins and origins_kind go through the
 * build's reading of them (build_header_origins).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/stream.h"
#include "index/build.h"
#include "index/origins.h"

static int memfd_in = -1, memfd_out = -1;

static int load(int fd, const uint8_t *data, size_t size)
{
	if (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0)
		abort();
	size_t at = 0;
	while (at < size) {
		ssize_t n = write(fd, data + at, size - at);
		if (n <= 0)
			abort();
		at += (size_t)n;
	}
	return lseek(fd, 0, SEEK_SET) < 0 ? -1 : 0;
}

static uint64_t hash_consent(uint64_t h, const Consent__V1__Consent *c)
{
	uint64_t v[9] = { (uint64_t)c->channel, (uint64_t)c->recipient_type,
			  c->brand_code, c->iys_code, (uint64_t)c->status,
			  (uint64_t)c->source, (uint64_t)c->consent_date,
			  (uint64_t)c->creation_date, c->sequence };
	h = XXH3_64bits_withSeed(v, sizeof(v), h);
	h = XXH3_64bits_withSeed(c->recipient, strlen(c->recipient) + 1, h);
	return XXH3_64bits_withSeed(c->transaction_id,
				    strlen(c->transaction_id) + 1, h);
}

/* A header's §8 state (origins 7, origins_kind 8) as the build reads
 * it: taken whole, each origin with its cursor, or refused naming the
 * offset; never a table that says otherwise than the header. */
static void check_header_origins(const Consent__V1__StreamHeader *h,
				 uint64_t offset)
{
	struct origins *o = NULL;
	char why[300] = "";
	int rc = build_header_origins(h, offset, &o, why, sizeof(why));
	if (rc < 0) {
		if (rc != -EPROTO || strncmp(why, "offset ", 7) != 0 || o != NULL)
			abort();
		return;
	}
	if (o == NULL) {
		if (h->origins_kind != 0 || h->n_origins != 0)
			abort();
		return;
	}
	if ((uint32_t)origins_kind(o) != h->origins_kind ||
	    origins_count(o) != h->n_origins)
		abort();
	for (size_t i = 0; i < h->n_origins; i++) {
		size_t cl;
		const char *c = origins_get(o, h->origins[i]->origin,
					    strlen(h->origins[i]->origin), &cl);
		if (c == NULL || cl != strlen(h->origins[i]->cursor) ||
		    memcmp(c, h->origins[i]->cursor, cl) != 0)
			abort();
	}
	origins_destroy(o);
}

/* Reads fd to the end. With w, writes what it reads to w as well. */
static int read_stream(int fd, size_t max_frame, bool require_trailer,
		       int wfd, uint64_t *records, uint64_t *hash)
{
	struct stream_reader *r;
	struct stream_writer *w = NULL;
	struct stream_item it;
	int rc;

	if (stream_reader_create(fd, max_frame, require_trailer, &r) < 0)
		abort();
	*hash = 0;
	while ((rc = stream_reader_next(r, &it)) == 1) {
		if (it.kind == STREAM_ITEM_HEADER) {
			if (wfd >= 0 && stream_writer_create(wfd, it.header, 7, &w) < 0)
				abort();
			check_header_origins(it.header, it.offset);
			continue;
		}
		for (size_t i = 0; i < it.n_consents; i++) {
			const Consent__V1__Consent *c = it.consents[i];
			struct recipient rcp;
			const char *field, *why;
			if (consent_validate(c, &rcp, &field, &why) < 0 &&
			    (!field || !why))
				abort();
			*hash = hash_consent(*hash, c);
			if (w && stream_writer_add(w, c) < 0)
				abort();
		}
	}
	*records = stream_reader_records(r);
	if (rc < 0) {
		/* Input faults name where they are. */
		if (strncmp(stream_reader_error(r), "offset ", 7) != 0)
			abort();
		/* And a failed reader stays failed. */
		if (stream_reader_next(r, &it) != rc)
			abort();
	} else {
		const Consent__V1__StreamTrailer *t = stream_reader_trailer(r);
		if (require_trailer && !t)
			abort();
		if (t && t->record_count != *records)
			abort();
	}
	if (w) {
		if (rc == 0) {
			if (stream_writer_finish(w) < 0)
				abort();
		} else {
			stream_writer_destroy(w);
		}
	}
	stream_reader_destroy(r);
	return rc;
}

/* The same stream read with raw batches, each decoded by a decoder as
 * the parallel build does: < 0 if the reader or a decoder refused it. */
static int read_raw(int fd, size_t max_frame, bool require_trailer,
		    uint64_t *records, uint64_t *hash)
{
	struct stream_reader *r;
	struct stream_decoder *d;
	struct stream_item it, dec;
	char err[256];
	int rc;

	if (stream_reader_create(fd, max_frame, require_trailer, &r) < 0 ||
	    stream_decoder_create(&d) < 0)
		abort();
	stream_reader_raw_batches(r, true);
	*hash = 0;
	*records = 0;
	while ((rc = stream_reader_next(r, &it)) == 1) {
		const struct stream_item *b = &it;
		if (it.kind == STREAM_ITEM_HEADER)
			continue;
		if (it.kind == STREAM_ITEM_RAW_BATCH) {
			rc = stream_decoder_batch(d, &it, &dec, err, sizeof(err));
			if (rc < 0) {
				/* Named like the reader's own faults. */
				if (strncmp(err, "offset ", 7) != 0)
					abort();
				break;
			}
			b = &dec;
		}
		for (size_t i = 0; i < b->n_consents; i++)
			*hash = hash_consent(*hash, b->consents[i]);
		*records += b->n_consents;
	}
	stream_decoder_destroy(d);
	stream_reader_destroy(r);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (memfd_in < 0) {
		memfd_in = memfd_create("stream_fuzz_in", MFD_CLOEXEC);
		memfd_out = memfd_create("stream_fuzz_out", MFD_CLOEXEC);
		if (memfd_in < 0 || memfd_out < 0)
			abort();
	}
	uint64_t n1, h1, n2, h2;

	/* As a change stream (no trailer needed), copied to a new stream. */
	load(memfd_in, data, size);
	if (ftruncate(memfd_out, 0) < 0 || lseek(memfd_out, 0, SEEK_SET) < 0)
		abort();
	int rc = read_stream(memfd_in, 0, false, memfd_out, &n1, &h1);
	if (rc == 0) {
		/* The copy reads back the same, and with a trailer. */
		if (lseek(memfd_out, 0, SEEK_SET) < 0)
			abort();
		if (read_stream(memfd_out, 0, true, -1, &n2, &h2) != 0 ||
		    n2 != n1 || h2 != h1)
			abort();
	}
	/* Raw batches decoded elsewhere (the parallel build) accept exactly
	 * what the reader accepts, with the same records. */
	if (lseek(memfd_in, 0, SEEK_SET) < 0)
		abort();
	int rc_raw = read_raw(memfd_in, 0, false, &n2, &h2);
	if ((rc_raw < 0) != (rc < 0) || (rc == 0 && (n2 != n1 || h2 != h1)))
		abort();
	/* As a snapshot with a small frame limit. */
	if (lseek(memfd_in, 0, SEEK_SET) < 0)
		abort();
	rc = read_stream(memfd_in, 4096, true, -1, &n2, &h2);
	(void)rc;
	return 0;
}
