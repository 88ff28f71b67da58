/*
 * tls: OpenSSL between the loop and the connection (server/tls.h).
 *
 * The BIO. One BIO of our own method is both of an SSL's BIOs. Reading,
 * it gives OpenSSL the bytes of the receive being fed (t->in, in place:
 * the provided buffer is not copied into a memory BIO first); with none
 * left it says "retry", which OpenSSL reports as SSL_ERROR_WANT_READ. An
 * incomplete record stays in OpenSSL's own record buffer, so nothing is
 * carried here between receives. Writing, it appends to t->ct, an output
 * buffer that never fails but for ENOMEM, so SSL_write never half-writes
 * and OpenSSL never wants to write.
 *
 * The output. Ciphertext gathers in t->ct: handshake flights, alerts and
 * session tickets from tls_feed, records from tls_take_send's SSL_write of
 * the plaintext in c->out. c->wire holds the ciphertext being sent (so
 * conn_sent and conn_out_pending work unchanged); tls_take_send swaps t->ct
 * in when the wire is free. Outside a turn t->ct is empty or a send is in
 * flight: tls_feed only runs from a receive, after which the loop settles
 * the connection (calling tls_take_send) in the same turn.
 *
 * Deadlines. A connection is accepted with c->partial_since_ms set, so the
 * loop's half-frame deadline is also the handshake's (a client that opens a
 * connection and sends nothing, or half a ClientHello, is closed after
 * cfg->partial_timeout_ms); the loop counts it as a handshake timeout. Once
 * established, conn_feed keeps the field as for any connection.
 *
 * Refusals are quiet: a counter each, and at most one log line per worker
 * every TLS_LOG_EVERY_MS naming the latest cause, so a scan cannot flood
 * the journal.
 */
#include "server/tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "core/errmsg.h"
#include "server/conn.h"
#include "server/metrics.h"
#include "server/obuf.h"

#define TLS_LOG_EVERY_MS 10000  /* refusal log lines, per worker */
#define TLS_READ_CHUNK 16384    /* a record's plaintext at most */
#define TLS_RECORD_HANDSHAKE 22 /* the content type a ClientHello opens */

struct tls_server {
	struct tls_files files;
	BIO_METHOD *bio_method;
	pthread_mutex_t lock; /* guards ctx: swapped by reloads (main),
			       * referenced by accepts (workers) */
	SSL_CTX *ctx;
};

struct tls_conn {
	SSL *ssl;
	const char *in;  /* the receive being fed: not yet given to OpenSSL */
	size_t in_len;
	struct obuf ct;  /* ciphertext gathered, not yet on the wire */
	bool first;      /* the first byte was looked at */
	bool established;
	bool failed;     /* refused or broken: nothing more goes through SSL */
	bool shut;       /* close_notify queued */
	bool enomem;     /* the BIO could not grow t->ct */
};

/* ---- the BIO ----------------------------------------------------------- */

static int tls_bio_read(BIO *b, char *buf, size_t size, size_t *done)
{
	struct tls_conn *t = BIO_get_data(b);
	size_t n = size < t->in_len ? size : t->in_len;

	BIO_clear_retry_flags(b);
	*done = 0;
	if (n == 0) {
		BIO_set_retry_read(b);
		return 0;
	}
	memcpy(buf, t->in, n);
	t->in += n;
	t->in_len -= n;
	*done = n;
	return 1;
}

static int tls_bio_write(BIO *b, const char *buf, size_t size, size_t *done)
{
	struct tls_conn *t = BIO_get_data(b);

	BIO_clear_retry_flags(b);
	*done = 0;
	if (obuf_append(&t->ct, buf, size) < 0) {
		t->enomem = true;
		return 0; /* no retry flag: OpenSSL sees a failed write */
	}
	*done = size;
	return 1;
}

static long tls_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	(void)b;
	(void)num;
	(void)ptr;
	/* A flush is a no-op: t->ct goes out at the end of the turn. Every
	 * other question (pending bytes, kTLS, ...) is "no". */
	return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int tls_bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

/* ---- the context ------------------------------------------------------- */

/* The first OpenSSL error, for a message (the queue is cleared). */
static const char *tls_openssl_reason(char *buf, size_t cap)
{
	unsigned long e = ERR_peek_last_error();

	if (e == 0)
		snprintf(buf, cap, "unknown error");
	else
		ERR_error_string_n(e, buf, cap);
	ERR_clear_error();
	return buf;
}

/* "subject, valid until DATE" of the context's certificate, for the log. */
static void tls_describe(SSL_CTX *ctx, char *buf, size_t cap)
{
	X509 *x = SSL_CTX_get0_certificate(ctx);
	char subject[256] = "?", until[64] = "?";
	BIO *m;

	if (x == NULL) {
		snprintf(buf, cap, "no certificate");
		return;
	}
	X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof(subject));
	m = BIO_new(BIO_s_mem());
	if (m != NULL) {
		if (ASN1_TIME_print(m, X509_get0_notAfter(x)) > 0) {
			int n = BIO_read(m, until, (int)sizeof(until) - 1);

			until[n > 0 ? n : 0] = '\0';
		}
		BIO_free(m);
	}
	snprintf(buf, cap, "%s, valid until %s", subject, until);
}

/* ALPN: the connection's protocol says which id it speaks, if any; the
 * answer points into the client's list (in), which outlives the call. */
static int tls_alpn_select(SSL *ssl, const unsigned char **out,
			   unsigned char *out_len, const unsigned char *in,
			   unsigned int in_len, void *arg)
{
	const struct conn *c = SSL_get_app_data(ssl);
	const char *want = c ? c->proto->alpn : NULL;
	size_t n = want ? strlen(want) : 0;

	(void)arg;
	if (n == 0)
		return SSL_TLSEXT_ERR_NOACK;
	for (unsigned int i = 0; i < in_len; i += 1u + in[i])
		if (in[i] == n && i + 1u + n <= in_len &&
		    memcmp(in + i + 1, want, n) == 0) {
			*out = in + i + 1;
			*out_len = (unsigned char)n;
			return SSL_TLSEXT_ERR_OK;
		}
	return SSL_TLSEXT_ERR_ALERT_FATAL; /* RFC 7301 3.2 */
}

static SSL_CTX *tls_ctx_load(const struct tls_files *f, char *err,
			     size_t err_cap)
{
	static const unsigned char sid_ctx[] = "consentd";
	char why[256];
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	const char *file = NULL;

	if (ctx == NULL) {
		errmsg_set(err, err_cap, "SSL_CTX_new: %s",
			   tls_openssl_reason(why, sizeof(why)));
		return NULL;
	}
	/* A file that cannot be opened: errno says why more plainly than
	 * OpenSSL's "system lib". */
	for (int i = 0; i < 3; i++) {
		const char *path = i == 0 ? f->cert : i == 1 ? f->key : f->ca;
		FILE *fp = path ? fopen(path, "r") : NULL;

		if (path != NULL && fp == NULL) {
			errmsg_set(err, err_cap, "%s: %s", path,
				   strerror(errno));
			SSL_CTX_free(ctx);
			return NULL;
		}
		if (fp != NULL)
			fclose(fp);
	}
	/* TLS 1.2 and later; no renegotiation (a client could make the
	 * server redo the expensive half of a handshake at will: OpenSSL 3
	 * refuses a client's unless SSL_OP_ALLOW_CLIENT_RENEGOTIATION, and
	 * this says so and rules out any other), no compression (CRIME). */
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
					 SSL_OP_NO_COMPRESSION |
					 SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* Resumed sessions must come back to the same kind of server (and
	 * OpenSSL refuses to resume with client certificates without it). */
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select, NULL);
	if (SSL_CTX_use_certificate_chain_file(ctx, f->cert) != 1)
		file = f->cert;
	else if (SSL_CTX_use_PrivateKey_file(ctx, f->key, SSL_FILETYPE_PEM) != 1)
		file = f->key;
	else if (SSL_CTX_check_private_key(ctx) != 1)
		file = f->key;
	if (file == NULL && f->ca != NULL) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(f->ca);

		if (names == NULL ||
		    SSL_CTX_load_verify_locations(ctx, f->ca, NULL) != 1) {
			sk_X509_NAME_pop_free(names, X509_NAME_free);
			file = f->ca;
		} else {
			SSL_CTX_set_client_CA_list(ctx, names);
			SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER |
						SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
					   NULL);
		}
	}
	if (file != NULL) {
		errmsg_set(err, err_cap, "%s: %s%s", file,
			   tls_openssl_reason(why, sizeof(why)),
			   file == f->ca ? " (no CA certificate read)" : "");
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

int tls_server_create(const struct tls_files *files, struct tls_server **out,
		      char *err, size_t err_cap)
{
	struct tls_server *t = calloc(1, sizeof(*t));
	char what[400];

	if (t == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	t->files = *files;
	t->bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
				     "consentd loop");
	if (t->bio_method == NULL ||
	    !BIO_meth_set_read_ex(t->bio_method, tls_bio_read) ||
	    !BIO_meth_set_write_ex(t->bio_method, tls_bio_write) ||
	    !BIO_meth_set_ctrl(t->bio_method, tls_bio_ctrl) ||
	    !BIO_meth_set_create(t->bio_method, tls_bio_create)) {
		BIO_meth_free(t->bio_method);
		free(t);
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	}
	t->ctx = tls_ctx_load(files, err, err_cap);
	if (t->ctx == NULL) {
		BIO_meth_free(t->bio_method);
		free(t);
		return -EINVAL;
	}
	pthread_mutex_init(&t->lock, NULL);
	tls_describe(t->ctx, what, sizeof(what));
	fprintf(stderr, "consentd: tls: certificate %s%s\n", what,
		files->ca ? "; client certificates required" : "");
	*out = t;
	return 0;
}

int tls_server_reload(struct tls_server *t, char *err, size_t err_cap)
{
	SSL_CTX *ctx = tls_ctx_load(&t->files, err, err_cap), *old;
	char what[400];

	if (ctx == NULL)
		return -EINVAL;
	tls_describe(ctx, what, sizeof(what));
	pthread_mutex_lock(&t->lock);
	old = t->ctx;
	t->ctx = ctx;
	pthread_mutex_unlock(&t->lock);
	/* Only the server's reference: each SSL of a connection accepted
	 * before holds its own, so those keep the old context. */
	SSL_CTX_free(old);
	fprintf(stderr, "consentd: tls: reloaded: certificate %s\n", what);
	return 0;
}

void tls_server_destroy(struct tls_server *t)
{
	if (t == NULL)
		return;
	SSL_CTX_free(t->ctx);
	BIO_meth_free(t->bio_method);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

/* ---- connections ------------------------------------------------------- */

int tls_conn_create(struct tls_server *s, struct conn *c, uint64_t now_ms)
{
	struct tls_conn *t = calloc(1, sizeof(*t));
	BIO *bio = NULL;

	if (t == NULL)
		return -ENOMEM;
	if (obuf_init(&t->ct, OBUF_INITIAL) < 0)
		goto fail;
	pthread_mutex_lock(&s->lock);
	t->ssl = SSL_new(s->ctx); /* holds a reference to the context */
	pthread_mutex_unlock(&s->lock);
	bio = t->ssl ? BIO_new(s->bio_method) : NULL;
	if (bio == NULL)
		goto fail;
	BIO_set_data(bio, t);
	SSL_set_bio(t->ssl, bio, bio); /* one BIO both ways: one reference */
	SSL_set_accept_state(t->ssl);
	SSL_set_app_data(t->ssl, c); /* the ALPN callback's */
	c->tls = t;
	c->partial_since_ms = now_ms; /* the handshake deadline */
	return 0;
fail:
	ERR_clear_error();
	SSL_free(t->ssl);
	obuf_fini(&t->ct);
	free(t);
	return -ENOMEM;
}

void tls_conn_destroy(struct conn *c)
{
	struct tls_conn *t = c->tls;

	if (t == NULL)
		return;
	SSL_free(t->ssl); /* and its BIO */
	obuf_fini(&t->ct);
	free(t);
	c->tls = NULL;
}

bool tls_established(const struct tls_conn *t)
{
	return t->established && !t->failed;
}

/* A refusal: counted, logged at most once per TLS_LOG_EVERY_MS on this
 * thread (with how many went unlogged), the connection closed after what
 * OpenSSL queued (its alert). why NULL: OpenSSL's reason. Clears
 * OpenSSL's error queue. */
static void tls_refuse(struct conn_ctx *x, struct conn *c,
		       _Atomic uint64_t *counter, const char *what,
		       const char *why)
{
	/* Per worker thread, as the counters are: no lock for a log line. */
	static _Thread_local uint64_t last_ms, quiet;
	struct tls_conn *t = c->tls;
	char reason[256];

	metrics_inc(counter);
	if (why == NULL)
		why = tls_openssl_reason(reason, sizeof(reason));
	ERR_clear_error();
	if (last_ms == 0 || x->now_ms - last_ms >= TLS_LOG_EVERY_MS) {
		if (quiet > 0)
			fprintf(stderr, "consentd: tls: %s: %s (and %llu "
				"refusals unlogged before it)\n", what, why,
				(unsigned long long)quiet);
		else
			fprintf(stderr, "consentd: tls: %s: %s\n", what, why);
		last_ms = x->now_ms;
		quiet = 0;
	} else {
		quiet++;
	}
	t->failed = true;
	c->want_close = true;
	c->in_len = 0;
}

/* The handshake, then every record of t->in (tls_feed's). */
static int tls_feed_records(struct conn_ctx *x, struct conn *c,
			    struct tls_conn *t)
{
	char buf[TLS_READ_CHUNK];
	size_t n;
	int rc, e;

	if (!t->established) {
		rc = SSL_do_handshake(t->ssl);
		if (rc != 1) {
			e = SSL_get_error(t->ssl, rc);
			if (t->enomem)
				return -ENOMEM;
			if (e == SSL_ERROR_WANT_READ)
				return 0; /* the rest of the flight later */
			tls_refuse(x, c, &x->m->tls_handshake_failures,
				   "handshake refused", NULL);
			return 0;
		}
		t->established = true;
		metrics_inc(&x->m->tls_handshakes);
		c->partial_since_ms = 0; /* conn_feed keeps it from now on */
	}
	for (;;) {
		if (SSL_read_ex(t->ssl, buf, sizeof(buf), &n) == 1) {
			rc = conn_feed(x, c, buf, n);
			if (rc < 0 || c->want_close)
				return rc; /* the protocol ended it */
			continue;
		}
		e = SSL_get_error(t->ssl, 0);
		if (t->enomem)
			return -ENOMEM;
		if (e == SSL_ERROR_WANT_READ)
			return 0;
		if (e == SSL_ERROR_ZERO_RETURN) {
			/* The client's close_notify: what it sent before is
			 * answered, then the connection closes. */
			ERR_clear_error();
			c->want_close = true;
			return 0;
		}
		tls_refuse(x, c, &x->m->tls_record_errors,
			   "bad record from an established client", NULL);
		return 0;
	}
}

int tls_feed(struct conn_ctx *x, struct conn *c, const char *data,
	     size_t len)
{
	struct tls_conn *t = c->tls;
	int rc;

	if (c->want_close || t->failed || len == 0)
		return 0;
	c->last_rx_ms = x->now_ms;
	if (!t->first) {
		t->first = true;
		if ((unsigned char)data[0] != TLS_RECORD_HANDSHAKE) {
			/* Not a TLS record: a plaintext client (RESP's '*',
			 * a frame length, an HTTP method) or noise. OpenSSL
			 * would say as much less clearly. */
			char why[96];

			snprintf(why, sizeof(why), "first byte 0x%02x, not a "
				 "TLS handshake record (a plaintext client?)",
				 (unsigned char)data[0]);
			tls_refuse(x, c, &x->m->tls_not_tls,
				   "connection refused", why);
			return 0;
		}
	}
	t->in = data;
	t->in_len = len;
	rc = tls_feed_records(x, c, t);
	/* Whatever OpenSSL did not take is dropped with the connection;
	 * never read again from a buffer that goes back to the kernel. */
	t->in = NULL;
	t->in_len = 0;
	return rc;
}

bool tls_take_send(struct conn *c, const char **buf, size_t *len, int *err)
{
	struct tls_conn *t = c->tls;
	struct obuf swap;
	size_t n;

	*err = 0;
	if (c->wire.off == c->wire.len) {
		c->wire.len = c->wire.off = 0;
		if (c->out.len > 0 && tls_established(t)) {
			if (SSL_write_ex(t->ssl, c->out.data, c->out.len,
					 &n) != 1) {
				ERR_clear_error();
				t->failed = true;
				c->want_close = true;
				if (t->enomem) {
					*err = -ENOMEM;
					return false;
				}
			}
		}
		c->out.len = 0; /* encrypted, or never to be */
		if (c->want_close && tls_established(t) && !t->shut) {
			/* Last: our close_notify, so the client can tell a
			 * close from a cut. */
			t->shut = true;
			if (SSL_shutdown(t->ssl) < 0)
				ERR_clear_error();
		}
		if (t->ct.len == 0)
			return false;
		swap = c->wire;
		c->wire = t->ct;
		t->ct = swap;
	}
	*buf = c->wire.data + c->wire.off;
	*len = c->wire.len - c->wire.off;
	return true;
}
