/*
 * stream: snapshot and change streams (see core/stream.h).
 *
 * Reader. Bytes come from the fd into one buffer that grows to hold the
 * largest frame seen (never past max_frame_bytes plus the prefix, checked
 * before growing). A frame is decoded only once it is whole in the buffer,
 * so input split at any byte looks the same as input read at once. Every
 * frame but the trailer is fed to a running XXH3-64 state as it is
 * consumed; the trailer's checksum must equal the digest at that point.
 * protobuf-c unpacks into an arena: alloc bumps a pointer, free does
 * nothing, and the whole arena is reset when the next frame is read (the
 * items handed out are documented as valid until then). The arena is
 * bounded by a multiple of the frame length, so a small frame that claims
 * millions of empty sub-messages cannot make us allocate without limit.
 * With raw batches the reader only frames, checksums and counts a batch
 * (frame_bodies, batch_count walk the wire), and a stream_decoder, the
 * same arena on another thread, decodes it with decoder_unpack, the one
 * place frames are decoded, so its failures read as the reader's.
 *
 * Writer. Consents are packed straight into the batch frame's body as
 * field 1 of ConsentBatch (tag 0x0a, varint length, message), leaving room
 * in front for the frame prefix and StreamFrame's field 2 tag and length;
 * the result is byte for byte what protobuf-c would pack for the whole
 * StreamFrame, without copying Consent structs into a batch message.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/enums.h"
#include "core/fsutil.h"
#include "core/stream.h"

#define READER_BUF_MIN (64u << 10)
#define VARINT_MAX 10
/* The arena for one frame may hold this many times the frame's length
 * (plus a constant): a real Consent decodes to about 3-6 times its wire
 * size, an adversarial one (empty sub-messages, unknown fields) to at most
 * about 50 times; past the bound the frame is refused, not allocated. */
#define ARENA_RATIO 24
#define ARENA_SLACK (1u << 20)
#define ARENA_ALIGN 16
/* Writer: the front of the batch buffer reserved for the frame prefix,
 * StreamFrame's tag and the batch's length (10 + 1 + 10 bytes). */
#define WRITER_HEAD 24
/* Writer: a batch frame is closed early past this many body bytes, so a
 * writer never makes a frame a default reader refuses. */
#define WRITER_BATCH_BYTES_MAX (8u << 20)

#define CONSENT_DATE_FUTURE_SLACK 86400

/* ---- varints ---- */

size_t stream_varint_encode(uint64_t v, uint8_t *out)
{
	size_t n = 0;

	while (v >= 0x80) {
		out[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	out[n++] = (uint8_t)v;
	return n;
}

int stream_varint_decode(const uint8_t *in, size_t len, uint64_t *v)
{
	uint64_t x = 0;

	for (size_t i = 0; i < VARINT_MAX; i++) {
		if (i == len)
			return 0;
		/* The tenth byte may only carry the 64th bit. */
		if (i == VARINT_MAX - 1 && in[i] > 1)
			return -EPROTO;
		x |= (uint64_t)(in[i] & 0x7f) << (7 * i);
		if (!(in[i] & 0x80)) {
			*v = x;
			return (int)i + 1;
		}
	}
	return -EPROTO;
}

static size_t varint_len(uint64_t v)
{
	size_t n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

/* ---- the arena ---- */

struct arena_chunk {
	struct arena_chunk *next;
	/* data follows, ARENA_ALIGN-aligned */
};

struct arena {
	uint8_t *block;	/* the reusable block */
	size_t cap;
	size_t used;
	struct arena_chunk *chunks; /* overflow for this frame only */
	size_t chunk_bytes;
	size_t limit;	/* bytes this frame may take in all */
	size_t total;	/* bytes this frame has taken */
	bool over;	/* a request went past limit */
	bool oom;	/* malloc failed */
};

static size_t align_up(size_t n)
{
	return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
}

static void *arena_alloc(void *data, size_t size)
{
	struct arena *a = data;
	size_t n = align_up(size ? size : 1);

	if (n < size || a->total + n > a->limit) {
		a->over = true;
		return NULL;
	}
	a->total += n;
	if (a->cap - a->used >= n) {
		void *p = a->block + a->used;
		a->used += n;
		return p;
	}
	/* Rare: the block is short this frame. Take a chunk of its own; the
	 * block grows at reset so the next frame like this one fits. */
	struct arena_chunk *c = malloc(align_up(sizeof(*c)) + n);
	if (!c) {
		a->oom = true;
		return NULL;
	}
	c->next = a->chunks;
	a->chunks = c;
	a->chunk_bytes += n;
	return (uint8_t *)c + align_up(sizeof(*c));
}

static void arena_free(void *data, void *ptr)
{
	/* Everything goes at once in arena_reset. */
	(void)data;
	(void)ptr;
}

static void arena_release_chunks(struct arena *a)
{
	while (a->chunks) {
		struct arena_chunk *next = a->chunks->next;
		free(a->chunks);
		a->chunks = next;
	}
}

/* Forgets the last frame and readies room for one of limit bytes. */
static void arena_reset(struct arena *a, size_t limit)
{
	if (a->chunks) {
		size_t want = a->cap + a->chunk_bytes;
		arena_release_chunks(a);
		uint8_t *nb = malloc(want);
		if (nb) { /* else keep the old block and use chunks again */
			free(a->block);
			a->block = nb;
			a->cap = want;
		}
	}
	a->chunk_bytes = 0;
	a->used = 0;
	a->total = 0;
	a->limit = limit;
	a->over = false;
	a->oom = false;
}

/* ---- decoding one frame ---- */

struct stream_decoder {
	struct arena arena;
	ProtobufCAllocator alloc;
};

static int decoder_init(struct stream_decoder *d)
{
	memset(d, 0, sizeof(*d));
	d->arena.cap = READER_BUF_MIN;
	d->arena.block = malloc(d->arena.cap);
	if (!d->arena.block)
		return -ENOMEM;
	d->alloc.alloc = arena_alloc;
	d->alloc.free = arena_free;
	d->alloc.allocator_data = &d->arena;
	return 0;
}

static void decoder_fini(struct stream_decoder *d)
{
	arena_release_chunks(&d->arena);
	free(d->arena.block);
	d->arena.block = NULL;
}

/* Unpacks the StreamFrame body[0..len) of the frame at stream offset at
 * into d's arena (valid until d's next unpack): 0, or < 0 with the
 * reason in err. The one place a frame is decoded. */
static int decoder_unpack(struct stream_decoder *d, const uint8_t *body,
			  size_t len, uint64_t at, Consent__V1__StreamFrame **out,
			  char *err, size_t err_cap)
{
	arena_reset(&d->arena, ARENA_RATIO * len + ARENA_SLACK);
	*out = consent__v1__stream_frame__unpack(&d->alloc, len, body);
	if (*out)
		return 0;
	if (d->arena.oom) {
		snprintf(err, err_cap, "offset %" PRIu64
			 ": out of memory decoding a frame", at);
		return -ENOMEM;
	}
	if (d->arena.over) {
		snprintf(err, err_cap, "offset %" PRIu64
			 ": frame decodes to more than %zu bytes", at,
			 d->arena.limit);
		return -EMSGSIZE;
	}
	snprintf(err, err_cap, "offset %" PRIu64
		 ": frame does not decode as StreamFrame", at);
	return -EPROTO;
}

int stream_decoder_create(struct stream_decoder **out)
{
	struct stream_decoder *d = malloc(sizeof(*d));

	if (!d)
		return -ENOMEM;
	if (decoder_init(d) < 0) {
		free(d);
		return -ENOMEM;
	}
	*out = d;
	return 0;
}

void stream_decoder_destroy(struct stream_decoder *d)
{
	if (!d)
		return;
	decoder_fini(d);
	free(d);
}

int stream_decoder_batch(struct stream_decoder *d, const struct stream_item *raw,
			 struct stream_item *out, char *err, size_t err_cap)
{
	Consent__V1__StreamFrame *f;
	int rc = decoder_unpack(d, raw->frame, raw->frame_len, raw->offset, &f,
				err, err_cap);

	if (rc < 0)
		return rc;
	/* The reader's walk of the wire said: one batch, n_consents in it.
	 * protobuf-c agrees whenever it decodes; the check keeps the record
	 * numbers the reader counted honest if it ever did not. */
	if (f->frame_case != CONSENT__V1__STREAM_FRAME__FRAME_BATCH ||
	    f->batch->n_consents != raw->n_consents) {
		snprintf(err, err_cap, "offset %" PRIu64 ": batch frame decodes "
			 "to other than its wire says", raw->offset);
		return -EPROTO;
	}
	memset(out, 0, sizeof(*out));
	out->kind = STREAM_ITEM_BATCH;
	out->offset = raw->offset;
	out->consents = f->batch->consents;
	out->n_consents = f->batch->n_consents;
	return 0;
}

/* ---- reader ---- */

enum reader_state {
	READER_START,	/* no frame read yet */
	READER_BODY,	/* header read; batches or the trailer next */
	READER_DONE,	/* ended cleanly; next returns 0 */
	READER_FAILED,	/* err holds the reason; next returns it again */
};

struct stream_reader {
	int fd;
	size_t max_frame;
	bool require_trailer;
	enum reader_state state;
	int err_code;

	uint8_t *buf;
	size_t cap;
	size_t start;	/* first unconsumed byte */
	size_t end;	/* one past the last byte read */
	uint64_t pos;	/* stream offset of buf[start] */
	bool eof;

	XXH3_state_t *hash;
	uint64_t records;
	bool raw_batches;	/* stream_reader_raw_batches */
	struct stream_decoder dec;
	Consent__V1__StreamFrame *frame;	/* in dec's arena */
	Consent__V1__StreamTrailer trailer;	/* copied out of the arena */
	bool have_trailer;

	char err[256];
};

static int reader_fail(struct stream_reader *r, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int reader_fail(struct stream_reader *r, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
	r->state = READER_FAILED;
	r->err_code = code;
	return code;
}

int stream_reader_create(int fd, size_t max_frame_bytes, bool require_trailer,
			 struct stream_reader **out)
{
	struct stream_reader *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	r->fd = fd;
	r->max_frame = max_frame_bytes ? max_frame_bytes : STREAM_FRAME_MAX_DEFAULT;
	r->require_trailer = require_trailer;
	r->state = READER_START;
	r->cap = READER_BUF_MIN;
	r->buf = malloc(r->cap);
	r->hash = XXH3_createState();
	if (!r->buf || !r->hash || decoder_init(&r->dec) < 0) {
		stream_reader_destroy(r);
		return -ENOMEM;
	}
	XXH3_64bits_reset(r->hash);
	*out = r;
	return 0;
}

void stream_reader_destroy(struct stream_reader *r)
{
	if (!r)
		return;
	free(r->buf);
	if (r->hash)
		XXH3_freeState(r->hash);
	decoder_fini(&r->dec);
	free(r);
}

void stream_reader_raw_batches(struct stream_reader *r, bool raw)
{
	r->raw_batches = raw;
}

const char *stream_reader_error(const struct stream_reader *r)
{
	return r->err;
}

uint64_t stream_reader_records(const struct stream_reader *r)
{
	return r->records;
}

const Consent__V1__StreamTrailer *stream_reader_trailer(const struct stream_reader *r)
{
	return r->have_trailer ? &r->trailer : NULL;
}

/* Makes room for need bytes from start (need is already bounded by the
 * frame limit), moving the unconsumed bytes to the front first. */
static int reader_room(struct stream_reader *r, size_t need)
{
	if (r->start > 0 && r->cap - r->start < need) {
		memmove(r->buf, r->buf + r->start, r->end - r->start);
		r->end -= r->start;
		r->start = 0;
	}
	if (r->cap - r->start >= need)
		return 0;
	size_t ncap = r->cap * 2 > need ? r->cap * 2 : need;
	uint8_t *nb = realloc(r->buf, ncap);
	if (!nb)
		return -ENOMEM;
	r->buf = nb;
	r->cap = ncap;
	return 0;
}

/* Reads once into the free space after end. 1: got bytes; 0: end of
 * input; < 0: -errno. */
static int reader_fill(struct stream_reader *r)
{
	if (r->eof)
		return 0;
	if (r->end == r->cap) {
		int rc = reader_room(r, r->end - r->start + READER_BUF_MIN);
		if (rc < 0)
			return rc;
	}
	for (;;) {
		ssize_t n = read(r->fd, r->buf + r->end, r->cap - r->end);
		if (n > 0) {
			r->end += (size_t)n;
			return 1;
		}
		if (n == 0) {
			r->eof = true;
			return 0;
		}
		if (errno != EINTR)
			return -errno;
	}
}

/* Ensures have bytes are buffered from start. 1: they are; 0: the input
 * ended first; < 0: -errno. */
static int reader_want(struct stream_reader *r, size_t have)
{
	while (r->end - r->start < have) {
		int rc = reader_fill(r);
		if (rc <= 0)
			return rc;
	}
	return 1;
}

static int reader_io_error(struct stream_reader *r, int rc, uint64_t at)
{
	if (rc == -ENOMEM)
		return reader_fail(r, rc, "offset %" PRIu64 ": out of memory", at);
	return reader_fail(r, rc, "offset %" PRIu64 ": read: %s", at,
			   strerror(-rc));
}

/* After the trailer: anything more is an error, else the stream is done. */
static int reader_after_trailer(struct stream_reader *r)
{
	if (r->end == r->start) {
		int rc = reader_fill(r);
		if (rc < 0)
			return reader_io_error(r, rc, r->pos);
	}
	if (r->end > r->start)
		return reader_fail(r, -EPROTO,
				   "offset %" PRIu64 ": bytes after the trailer",
				   r->pos);
	r->state = READER_DONE;
	return 0;
}

/* One field of a message at p[*pos..len): its tag, and for a
 * length-delimited one its payload. 1 with *pos past it, 0 if it does
 * not walk. */
static int wire_field(const uint8_t *p, size_t len, size_t *pos,
		      uint64_t *tag, const uint8_t **val, size_t *val_len)
{
	uint64_t v = 0;
	size_t i, t = 0, m = 0, at = *pos;

	*tag = 0;
	for (i = 0; at + i < len && i < 10; i++) {
		*tag |= (uint64_t)(p[at + i] & 0x7f) << (7 * i);
		if (!(p[at + i] & 0x80)) {
			t = i + 1;
			break;
		}
	}
	if (t == 0)
		return 0;
	at += t;
	*val = NULL;
	*val_len = 0;
	switch (*tag & 7) {
	case 0:
	case 2:
		for (i = 0; at + i < len && i < 10; i++) {
			v |= (uint64_t)(p[at + i] & 0x7f) << (7 * i);
			if (!(p[at + i] & 0x80)) {
				m = i + 1;
				break;
			}
		}
		if (m == 0)
			return 0;
		if ((*tag & 7) == 2) {
			if (v > len - at - m)
				return 0;
			*val = p + at + m;
			*val_len = (size_t)v;
			m += (size_t)v;
		}
		break;
	case 1:
		m = 8;
		break;
	case 5:
		m = 4;
		break;
	default:
		return 0;
	}
	if (m > len - at)
		return 0;
	*pos = at + m;
	return 1;
}

/* How many of the StreamFrame oneof's fields (1-3) frame[0..len) sets at
 * its top level. protobuf-c 1.4 keeps only the last of a oneof set twice
 * (the spec would merge two batches), so such a frame would lose records
 * without a word: the reader refuses it instead. A frame that does not
 * walk counts 0 here; protobuf-c then refuses it. *tag is the last such
 * field's tag, *val and *val_len its payload if length-delimited. */
static int frame_bodies(const uint8_t *p, size_t len, uint64_t *body_tag,
			const uint8_t **body, size_t *body_len)
{
	size_t pos = 0;
	int n = 0;

	*body_tag = 0;
	while (pos < len) {
		uint64_t tag;
		const uint8_t *val;
		size_t val_len;
		if (!wire_field(p, len, &pos, &tag, &val, &val_len))
			return 0;
		if ((tag >> 3) >= 1 && (tag >> 3) <= 3) {
			n++;
			*body_tag = tag;
			*body = val;
			*body_len = val_len;
		}
	}
	return n;
}

/* The consents of a ConsentBatch p[0..len): its field-1 entries, which is
 * what protobuf-c decodes it to when it decodes at all. -1 if it does not
 * walk or holds field 1 in another wire type (decoding will tell why). */
static int64_t batch_count(const uint8_t *p, size_t len)
{
	size_t pos = 0;
	int64_t n = 0;

	while (pos < len) {
		uint64_t tag;
		const uint8_t *val;
		size_t val_len;
		if (!wire_field(p, len, &pos, &tag, &val, &val_len))
			return -1;
		if (tag == 0x0a)
			n++;
		else if (tag >> 3 == 1)
			return -1;
	}
	return n;
}

static int reader_trailer(struct stream_reader *r, uint64_t at)
{
	const Consent__V1__StreamTrailer *t = r->frame->trailer;
	uint64_t sum = XXH3_64bits_digest(r->hash);

	if (t->checksum != sum)
		return reader_fail(r, -EPROTO,
				   "offset %" PRIu64 ": trailer checksum 0x%016" PRIx64
				   " does not match 0x%016" PRIx64 " computed",
				   at, t->checksum, sum);
	if (t->record_count != r->records)
		return reader_fail(r, -EPROTO,
				   "offset %" PRIu64 ": trailer record count %" PRIu64
				   " != %" PRIu64 " records read",
				   at, t->record_count, r->records);
	r->trailer = *t;
	r->trailer.base.unknown_fields = NULL;
	r->trailer.base.n_unknown_fields = 0;
	r->have_trailer = true;
	return reader_after_trailer(r);
}

/* The next frame's length prefix into *len, *plen its bytes: 1 with one,
 * 0 at the end of input on a frame boundary (state DONE), < 0 failed. */
static int reader_prefix(struct stream_reader *r, uint64_t at, uint64_t *len,
			 int *plen)
{
	/* Up to 10 bytes, which may arrive one by one. */
	for (;;) {
		*plen = stream_varint_decode(r->buf + r->start,
					     r->end - r->start, len);
		if (*plen < 0)
			return reader_fail(r, -EPROTO,
					   "offset %" PRIu64 ": frame length prefix "
					   "is not a varint of at most 10 bytes", at);
		if (*plen > 0)
			return 1;
		int rc = reader_fill(r);
		if (rc < 0)
			return reader_io_error(r, rc, at);
		if (rc > 0)
			continue;
		if (r->end > r->start)
			return reader_fail(r, -EPROTO,
					   "offset %" PRIu64 ": stream ends inside a "
					   "frame (truncated)", at);
		/* End of input on a frame boundary. */
		if (r->state == READER_START)
			return reader_fail(r, -EPROTO,
					   "offset %" PRIu64 ": empty stream (no header)",
					   at);
		if (r->require_trailer)
			return reader_fail(r, -EPROTO,
					   "offset %" PRIu64 ": no trailer (truncated "
					   "stream)", at);
		r->state = READER_DONE;
		return 0;
	}
}

/* Reads the frame of len bytes after a prefix of plen into the buffer,
 * whole, at r->buf + r->start: 0, or < 0 failed. */
static int reader_frame(struct stream_reader *r, uint64_t at, uint64_t len,
			int plen)
{
	/* Bound the length before making room for it. */
	if (len > r->max_frame)
		return reader_fail(r, -EMSGSIZE,
				   "offset %" PRIu64 ": frame length %" PRIu64
				   " over the %zu-byte limit", at, len, r->max_frame);
	size_t need = (size_t)plen + (size_t)len;
	int rc = reader_room(r, need);
	if (rc < 0)
		return reader_io_error(r, rc, at);
	rc = reader_want(r, need);
	if (rc < 0)
		return reader_io_error(r, rc, at);
	if (rc == 0)
		return reader_fail(r, -EPROTO,
				   "offset %" PRIu64 ": stream ends inside a frame "
				   "(truncated)", at);
	return 0;
}

/* Decodes the frame reader_frame buffered into r->frame and consumes it:
 * 0, or < 0 failed. Its bytes stay at r->buf + r->start - need. */
static int reader_decode(struct stream_reader *r, uint64_t at, uint64_t len,
			 int plen)
{
	size_t need = (size_t)plen + (size_t)len;
	int rc = decoder_unpack(&r->dec, r->buf + r->start + plen, (size_t)len,
				at, &r->frame, r->err, sizeof(r->err));
	if (rc < 0) {
		r->state = READER_FAILED;
		r->err_code = rc;
		return rc;
	}
	r->start += need;
	r->pos += need;
	return 0;
}

/* The decoded header frame into *item. */
static int reader_header(struct stream_reader *r, uint64_t at,
			 struct stream_item *item)
{
	const Consent__V1__StreamHeader *h = r->frame->header;

	if (r->state != READER_START)
		return reader_fail(r, -EPROTO, "offset %" PRIu64
				   ": second header", at);
	if (h->format_version != STREAM_FORMAT_VERSION)
		return reader_fail(r, -EPROTO, "offset %" PRIu64
				   ": header format_version %" PRIu32
				   " not supported (expected %d)", at,
				   h->format_version, STREAM_FORMAT_VERSION);
	/* A stream that says it is a snapshot must end in a trailer whatever
	 * the caller asked for (DESIGN §3.5). */
	if (!h->changes)
		r->require_trailer = true;
	r->state = READER_BODY;
	item->kind = STREAM_ITEM_HEADER;
	item->header = h;
	return 1;
}

int stream_reader_next(struct stream_reader *r, struct stream_item *item)
{
	if (r->state == READER_FAILED)
		return r->err_code;
	if (r->state == READER_DONE)
		return 0;

	uint64_t at = r->pos;
	uint64_t len = 0;
	int plen;
	int rc = reader_prefix(r, at, &len, &plen);

	if (rc <= 0)
		return rc;
	rc = reader_frame(r, at, len, plen);
	if (rc < 0)
		return rc;
	size_t need = (size_t)plen + (size_t)len;
	const uint8_t *body = r->buf + r->start + plen, *batch = NULL;
	uint64_t tag;
	size_t batch_len = 0;
	if (frame_bodies(body, (size_t)len, &tag, &batch, &batch_len) > 1)
		return reader_fail(r, -EPROTO, "offset %" PRIu64
				   ": frame sets header, batch or trailer more "
				   "than once (a StreamFrame carries one)", at);
	/* Raw: a batch (after the header) that walks is handed out as
	 * bytes, counted but not decoded. Anything else, and every frame
	 * whose wire is off, is decoded here, so its error is the usual. */
	int64_t count = -1;
	if (r->raw_batches && r->state == READER_BODY && tag == 0x12)
		count = batch_count(batch, batch_len);
	if (count >= 0) {
		XXH3_64bits_update(r->hash, r->buf + r->start, need);
		memset(item, 0, sizeof(*item));
		item->kind = STREAM_ITEM_RAW_BATCH;
		item->offset = at;
		item->frame = body;
		item->frame_len = (size_t)len;
		item->n_consents = (size_t)count;
		r->records += (uint64_t)count;
		r->start += need;
		r->pos += need;
		return 1;
	}
	rc = reader_decode(r, at, len, plen);
	if (rc < 0)
		return rc;
	const uint8_t *frame_bytes = r->buf + r->start - need;

	Consent__V1__StreamFrame__FrameCase kind = r->frame->frame_case;
	if (kind != CONSENT__V1__STREAM_FRAME__FRAME_HEADER &&
	    kind != CONSENT__V1__STREAM_FRAME__FRAME_BATCH &&
	    kind != CONSENT__V1__STREAM_FRAME__FRAME_TRAILER)
		return reader_fail(r, -EPROTO, "offset %" PRIu64
				   ": frame holds no header, batch or trailer", at);
	if (r->state == READER_START &&
	    kind != CONSENT__V1__STREAM_FRAME__FRAME_HEADER)
		return reader_fail(r, -EPROTO, "offset %" PRIu64
				   ": first frame is not a header", at);
	if (kind == CONSENT__V1__STREAM_FRAME__FRAME_TRAILER)
		return reader_trailer(r, at);

	/* Everything before the trailer counts toward the checksum. */
	XXH3_64bits_update(r->hash, frame_bytes, need);
	memset(item, 0, sizeof(*item));
	item->offset = at;
	if (kind == CONSENT__V1__STREAM_FRAME__FRAME_HEADER)
		return reader_header(r, at, item);
	item->kind = STREAM_ITEM_BATCH;
	item->consents = r->frame->batch->consents;
	item->n_consents = r->frame->batch->n_consents;
	r->records += item->n_consents;
	return 1;
}

/* ---- writer ---- */

struct stream_writer {
	int fd;
	int err;	/* sticky: the first failure */
	size_t batch_records;
	XXH3_state_t *hash;
	uint8_t *buf;	/* WRITER_HEAD reserved bytes, then the batch body */
	size_t cap;
	size_t len;
	size_t in_batch;
	uint64_t records;
};

/* Writes p[0..n) as one whole frame and hashes it unless it is the
 * trailer. */
static int stream_emit(struct stream_writer *w, const uint8_t *p, size_t n,
		       bool hash)
{
	if (w->err)
		return w->err;
	if (hash)
		XXH3_64bits_update(w->hash, p, n);
	int rc = fsutil_write_all(w->fd, p, n);
	if (rc < 0)
		w->err = rc;
	return rc;
}

/* Packs a whole StreamFrame (header or trailer) with its prefix and
 * writes it. */
static int stream_emit_frame(struct stream_writer *w,
			const Consent__V1__StreamFrame *f, bool hash)
{
	size_t body = consent__v1__stream_frame__get_packed_size(f);
	uint8_t *p = malloc(VARINT_MAX + body);

	if (!p)
		return w->err = -ENOMEM;
	size_t pl = stream_varint_encode(body, p);
	consent__v1__stream_frame__pack(f, p + pl);
	int rc = stream_emit(w, p, pl + body, hash);
	free(p);
	return rc;
}

static int stream_emit_batch(struct stream_writer *w)
{
	if (w->in_batch == 0)
		return w->err;
	size_t body = w->len - WRITER_HEAD;
	uint64_t frame = 1 + varint_len(body) + body;
	uint8_t head[WRITER_HEAD];
	size_t hl = stream_varint_encode(frame, head);
	head[hl++] = 0x12; /* StreamFrame.batch: field 2, length-delimited */
	hl += stream_varint_encode(body, head + hl);
	uint8_t *p = w->buf + WRITER_HEAD - hl;
	memcpy(p, head, hl);
	int rc = stream_emit(w, p, hl + body, true);
	w->len = WRITER_HEAD;
	w->in_batch = 0;
	return rc;
}

int stream_writer_create(int fd, const Consent__V1__StreamHeader *header,
			 size_t batch_records, struct stream_writer **out)
{
	struct stream_writer *w = calloc(1, sizeof(*w));

	if (!w)
		return -ENOMEM;
	w->fd = fd;
	w->batch_records = batch_records ? batch_records : STREAM_BATCH_DEFAULT;
	w->cap = 64u << 10;
	w->buf = malloc(w->cap);
	w->len = WRITER_HEAD;
	w->hash = XXH3_createState();
	if (!w->buf || !w->hash) {
		stream_writer_destroy(w);
		return -ENOMEM;
	}
	XXH3_64bits_reset(w->hash);

	/* A format_version left at 0 is written as the current one. */
	Consent__V1__StreamHeader h = *header;
	if (h.format_version == 0)
		h.format_version = STREAM_FORMAT_VERSION;
	if (!h.origin)
		h.origin = (char *)"";
	Consent__V1__StreamFrame f = CONSENT__V1__STREAM_FRAME__INIT;
	f.frame_case = CONSENT__V1__STREAM_FRAME__FRAME_HEADER;
	f.header = &h;
	int rc = stream_emit_frame(w, &f, true);
	if (rc < 0) {
		stream_writer_destroy(w);
		return rc;
	}
	*out = w;
	return 0;
}

/* Room in the current batch for one consent of size packed bytes, after
 * its tag and length (written here): the batch is closed first if the
 * consent would take it past WRITER_BATCH_BYTES_MAX. *at is where the
 * message goes; writer_added counts it once it is there. */
static int writer_room(struct stream_writer *w, size_t size, uint8_t **at)
{
	if (w->err)
		return w->err;
	size_t need = 1 + VARINT_MAX + size;
	if (need > STREAM_FRAME_MAX_DEFAULT - 2 * VARINT_MAX)
		return -EMSGSIZE; /* not sticky: the stream is still good */
	if (w->in_batch > 0 && w->len - WRITER_HEAD + need > WRITER_BATCH_BYTES_MAX) {
		int rc = stream_emit_batch(w);
		if (rc < 0)
			return rc;
	}
	if (w->cap - w->len < need) {
		size_t ncap = w->cap * 2 > w->len + need ? w->cap * 2 : w->len + need;
		uint8_t *nb = realloc(w->buf, ncap);
		if (!nb)
			return w->err = -ENOMEM;
		w->buf = nb;
		w->cap = ncap;
	}
	w->buf[w->len++] = 0x0a; /* ConsentBatch.consents: field 1, length-delimited */
	w->len += stream_varint_encode(size, w->buf + w->len);
	*at = w->buf + w->len;
	return 0;
}

static int writer_added(struct stream_writer *w, size_t size)
{
	w->len += size;
	w->in_batch++;
	w->records++;
	if (w->in_batch >= w->batch_records)
		return stream_emit_batch(w);
	return 0;
}

int stream_writer_add(struct stream_writer *w, const Consent__V1__Consent *c)
{
	size_t size = consent__v1__consent__get_packed_size(c);
	uint8_t *at;
	int rc = writer_room(w, size, &at);
	if (rc < 0)
		return rc;
	return writer_added(w, consent__v1__consent__pack(c, at));
}

int stream_writer_add_packed(struct stream_writer *w, const uint8_t *msg,
			     size_t len)
{
	uint8_t *at;
	int rc = writer_room(w, len, &at);
	if (rc < 0)
		return rc;
	memcpy(at, msg, len);
	return writer_added(w, len);
}

int stream_writer_finish(struct stream_writer *w)
{
	int rc = stream_emit_batch(w);

	if (rc == 0) {
		Consent__V1__StreamTrailer t = CONSENT__V1__STREAM_TRAILER__INIT;
		t.record_count = w->records;
		t.checksum = XXH3_64bits_digest(w->hash);
		Consent__V1__StreamFrame f = CONSENT__V1__STREAM_FRAME__INIT;
		f.frame_case = CONSENT__V1__STREAM_FRAME__FRAME_TRAILER;
		f.trailer = &t;
		rc = stream_emit_frame(w, &f, false);
	}
	stream_writer_destroy(w);
	return rc;
}

void stream_writer_destroy(struct stream_writer *w)
{
	if (!w)
		return;
	if (w->hash)
		XXH3_freeState(w->hash);
	free(w->buf);
	free(w);
}

/* ---- one record's meaning ---- */

int consent_validate(const Consent__V1__Consent *c, struct recipient *out,
		     const char **field, const char **why)
{
	struct recipient local;
	struct recipient *rc_out = out ? out : &local;
	const char *text = c->recipient ? c->recipient : "";
	const char *w = NULL;

	*field = NULL;
	*why = NULL;
	if (recipient_normalize(text, strlen(text), rc_out, &w) < 0) {
		*field = "recipient";
		*why = w ? w : "does not normalise";
		return -EINVAL;
	}
	switch ((int)c->channel) {
	case CHANNEL_ARAMA:
	case CHANNEL_MESAJ:
		if (rc_out->kind != RECIPIENT_PHONE) {
			*field = "channel";
			*why = "ARAMA and MESAJ need a phone recipient";
			return -EINVAL;
		}
		break;
	case CHANNEL_EPOSTA:
		if (rc_out->kind != RECIPIENT_EMAIL) {
			*field = "channel";
			*why = "EPOSTA needs an e-mail recipient";
			return -EINVAL;
		}
		break;
	default:
		*field = "channel";
		*why = c->channel == 0 ? "unspecified" : "unknown value";
		return -EINVAL;
	}
	int rtype = (int)c->recipient_type, status = (int)c->status;

	if (rtype != RTYPE_BIREYSEL && rtype != RTYPE_TACIR) {
		*field = "recipient_type";
		*why = rtype == 0 ? "unspecified" : "unknown value";
		return -EINVAL;
	}
	if (status != STATUS_ONAY && status != STATUS_RET) {
		*field = "status";
		*why = status == 0 ? "unspecified" : "unknown value";
		return -EINVAL;
	}
	if (c->brand_code == 0) {
		*field = "brand_code";
		*why = "is 0";
		return -EINVAL;
	}
	if (c->consent_date < CONSENT_DATE_MIN) {
		*field = "consent_date";
		*why = "before 2015-05-01 00:00:00 Turkey time";
		return -EINVAL;
	}
	if (c->consent_date > (int64_t)time(NULL) + CONSENT_DATE_FUTURE_SLACK) {
		*field = "consent_date";
		*why = "in the future";
		return -EINVAL;
	}
	/* Unreachable before 2083 (the check above), and then the index
	 * format's end. */
	if (c->consent_date > CONSENT_DATE_MAX) {
		*field = "consent_date";
		*why = "past 2083, beyond the index format";
		return -EINVAL;
	}
	return 0;
}

int change_validate(const Consent__V1__Consent *c, uint64_t prev_sequence,
		    struct recipient *out, const char **field, char *why,
		    size_t why_cap)
{
	const char *what = NULL;
	size_t size;

	if (c->sequence == 0) {
		*field = "sequence";
		snprintf(why, why_cap, "is 0 (a change needs its position in "
			 "the change stream)");
		return -EINVAL;
	}
	if (c->sequence <= prev_sequence) {
		*field = "sequence";
		snprintf(why, why_cap, "%" PRIu64 " after %" PRIu64 " (sequences "
			 "must increase)", c->sequence, prev_sequence);
		return -EINVAL;
	}
	if (consent_validate(c, out, field, &what) < 0) {
		snprintf(why, why_cap, "%s", what);
		return -EINVAL;
	}
	size = consent__v1__consent__get_packed_size(c);
	if (size > CHANGE_BYTES_MAX) {
		*field = "size";
		snprintf(why, why_cap, "%zu bytes, over the change log's limit "
			 "of %u", size, CHANGE_BYTES_MAX);
		return -EMSGSIZE;
	}
	return 0;
}
