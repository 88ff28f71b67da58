/*
 * tls_pair.h: what tests/tls_test.c and fuzz/tls_fuzz.c share to drive
 * server/tls.c without a socket: certificates made in memory by OpenSSL
 * (a CA, two server certificates and a client certificate, written as PEM
 * files into a fresh temporary directory, for tls_server_create to read),
 * a client SSL over two memory BIOs, an echo protocol (struct conn_proto:
 * every plaintext byte is answered with itself), and the pump that moves
 * the client's ciphertext into tls_feed and the server's tls_take_send
 * output back, split into pieces of a given size both ways.
 * Single-threaded; everything here is the caller's to free.
 */
#ifndef CONSENTD_TESTS_TLS_PAIR_H
#define CONSENTD_TESTS_TLS_PAIR_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/fsutil.h"
#include "server/conn.h"
#include "server/tls.h"

/* ---- certificates ------------------------------------------------------ */

struct tls_pair_certs {
	char dir[64];
	char ca[96];
	char srv[96], srv_key[96];   /* CN "server one", for 127.0.0.1 */
	char srv2[96], srv2_key[96]; /* CN "server two" (a renewal) */
	char cli[96], cli_key[96];   /* CN "client", signed by the CA */
};

static inline int tls_pair_write_pem(const char *path, X509 *x,
				     EVP_PKEY *k)
{
	FILE *f = fopen(path, "w");
	int ok;

	if (f == NULL)
		return -errno;
	ok = x ? PEM_write_X509(f, x)
	       : PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
	return fclose(f) == 0 && ok ? 0 : -EIO;
}

/* A certificate for key k named cn, signed by issuer (NULL: itself). */
static inline X509 *tls_pair_cert(EVP_PKEY *k, const char *cn,
				  X509 *issuer, EVP_PKEY *issuer_key,
				  long serial, bool ca)
{
	X509 *x = X509_new();
	X509V3_CTX v3;
	X509_EXTENSION *ext;

	if (x == NULL)
		return NULL;
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, k);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x));
	X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, ca ? NID_basic_constraints
						 : NID_subject_alt_name,
				  ca ? "critical,CA:TRUE"
				     : "IP:127.0.0.1,DNS:localhost");
	if (ext != NULL) {
		X509_add_ext(x, ext, -1);
		X509_EXTENSION_free(ext);
	}
	if (X509_sign(x, issuer_key ? issuer_key : k, EVP_sha256()) == 0) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* Makes the files in a new directory under TMPDIR (or /tmp). 0 or -1. */
static inline int tls_pair_make_certs(struct tls_pair_certs *pc)
{
	const char *tmp = getenv("TMPDIR");
	EVP_PKEY *ca_k = EVP_EC_gen("P-256"), *k[3];
	const char *cn[3] = { "server one", "server two", "client" };
	char *cert_path[3] = { pc->srv, pc->srv2, pc->cli };
	char *key_path[3] = { pc->srv_key, pc->srv2_key, pc->cli_key };
	X509 *ca = NULL;
	int rc = -1;

	memset(pc, 0, sizeof(*pc));
	snprintf(pc->dir, sizeof(pc->dir), "%s/consentd-tls-XXXXXX",
		 tmp && strlen(tmp) < 30 ? tmp : "/tmp");
	if (ca_k == NULL || mkdtemp(pc->dir) == NULL)
		goto out;
	ca = tls_pair_cert(ca_k, "test CA", NULL, NULL, 1, true);
	snprintf(pc->ca, sizeof(pc->ca), "%s/ca.pem", pc->dir);
	if (ca == NULL || tls_pair_write_pem(pc->ca, ca, NULL) < 0)
		goto out;
	for (int i = 0; i < 3; i++) {
		X509 *x;

		k[i] = EVP_EC_gen("P-256");
		x = k[i] ? tls_pair_cert(k[i], cn[i], ca, ca_k, 2 + i, false)
			 : NULL;
		snprintf(cert_path[i], 96, "%s/c%d.pem", pc->dir, i);
		snprintf(key_path[i], 96, "%s/k%d.pem", pc->dir, i);
		rc = x == NULL || tls_pair_write_pem(cert_path[i], x, NULL) < 0 ||
		     tls_pair_write_pem(key_path[i], NULL, k[i]) < 0 ? -1 : 0;
		X509_free(x);
		EVP_PKEY_free(k[i]);
		if (rc < 0)
			goto out;
	}
out:
	X509_free(ca);
	EVP_PKEY_free(ca_k);
	return rc;
}

static inline void tls_pair_remove_certs(struct tls_pair_certs *pc)
{
	if (pc->dir[0] != '\0')
		fsutil_rm_tree(pc->dir);
}

/* ---- the client -------------------------------------------------------- */

struct tls_client {
	SSL_CTX *ctx;
	SSL *ssl;
	BIO *in;  /* what the server sent, for the client to read */
	BIO *out; /* what the client wrote, for the server */
};

/* A client trusting ca (NULL: verifying nothing), with a certificate if
 * cert != NULL; max_version 0 for any. 0 or -1. */
static inline int tls_client_init(struct tls_client *cl, const char *ca,
			   const char *cert, const char *key, int max_version)
{
	memset(cl, 0, sizeof(*cl));
	cl->ctx = SSL_CTX_new(TLS_client_method());
	if (cl->ctx == NULL ||
	    (ca != NULL &&
	     SSL_CTX_load_verify_locations(cl->ctx, ca, NULL) != 1))
		return -1;
	SSL_CTX_set_verify(cl->ctx, ca ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
			   NULL);
	if (max_version)
		SSL_CTX_set_max_proto_version(cl->ctx, max_version);
	if (cert != NULL &&
	    (SSL_CTX_use_certificate_file(cl->ctx, cert, SSL_FILETYPE_PEM) != 1 ||
	     SSL_CTX_use_PrivateKey_file(cl->ctx, key, SSL_FILETYPE_PEM) != 1))
		return -1;
	cl->ssl = SSL_new(cl->ctx);
	cl->in = BIO_new(BIO_s_mem());
	cl->out = BIO_new(BIO_s_mem());
	if (cl->ssl == NULL || cl->in == NULL || cl->out == NULL)
		return -1;
	SSL_set_bio(cl->ssl, cl->in, cl->out);
	SSL_set_connect_state(cl->ssl);
	SSL_set1_host(cl->ssl, "127.0.0.1");
	return 0;
}

static inline void tls_client_fini(struct tls_client *cl)
{
	if (cl->ssl != NULL)
		SSL_free(cl->ssl); /* and its BIOs */
	else {
		BIO_free(cl->in);
		BIO_free(cl->out);
	}
	SSL_CTX_free(cl->ctx);
	memset(cl, 0, sizeof(*cl));
	ERR_clear_error();
}

/* The CN of the server's certificate as the client saw it. */
static inline void tls_client_peer_cn(struct tls_client *cl, char *buf,
				      size_t cap)
{
	X509 *x = SSL_get1_peer_certificate(cl->ssl);

	buf[0] = '\0';
	if (x != NULL) {
		X509_NAME_get_text_by_NID(X509_get_subject_name(x),
					  NID_commonName, buf, (int)cap);
		X509_free(x);
	}
}

/* ---- the echo protocol ------------------------------------------------- */

static uint64_t tls_echo_calls; /* process calls, all connections */

static inline long tls_echo_process(struct conn_ctx *x, struct conn *c,
			     const char *buf, size_t len)
{
	tls_echo_calls++;
	if (obuf_append(&c->out, buf, len) < 0)
		return -ENOMEM;
	x->n_requests++;
	return (long)len;
}

static inline int tls_echo_fatal(struct conn_ctx *x, struct conn *c,
			  enum conn_fatal why)
{
	(void)x;
	(void)why;
	c->want_close = true;
	return 0;
}

static const struct conn_proto tls_echo_proto = {
	.name = "echo",
	.metrics = METRICS_RESP,
	.process = tls_echo_process,
	.reply_fatal = tls_echo_fatal,
};

/* ---- the pump ---------------------------------------------------------- */

/* Moves everything the client wrote into tls_feed, split bytes at a time
 * (0: whole), then everything the server has to send to the client, in
 * pieces of split bytes through conn_sent, as the loop's receives and
 * partial sends would. 0, or tls_feed's / tls_take_send's error. */
static inline int tls_pair_pump(struct conn_ctx *x, struct conn *c,
			 struct tls_client *cl, size_t split)
{
	static char buf[1 << 16];
	const char *p;
	size_t len;
	int n, rc, err;

	while ((n = BIO_read(cl->out, buf, sizeof(buf))) > 0) {
		for (size_t off = 0; off < (size_t)n && !c->want_close;) {
			size_t k = split && split < (size_t)n - off
					   ? split
					   : (size_t)n - off;

			rc = tls_feed(x, c, buf + off, k);
			if (rc < 0)
				return rc;
			off += k;
		}
	}
	while (tls_take_send(c, &p, &len, &err)) {
		size_t k = split && split < len ? split : len;

		BIO_write(cl->in, p, (int)k);
		conn_sent(c, k);
	}
	return err;
}

/* Handshake of cl with c through the pump. 1 done, 0 refused (by either
 * side), < 0 an error of the server's module. */
static inline int tls_pair_handshake(struct conn_ctx *x, struct conn *c,
			      struct tls_client *cl, size_t split)
{
	for (int i = 0; i < 16; i++) {
		/* The client's error before the server's calls touch the
		 * thread's error queue. */
		int r = SSL_do_handshake(cl->ssl);
		int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(cl->ssl, r);
		int rc = tls_pair_pump(x, c, cl, split);

		if (rc < 0)
			return rc;
		if (r == 1 && tls_established(c->tls))
			return 1;
		if (r != 1 && e != SSL_ERROR_WANT_READ)
			return 0;
		if (c->want_close)
			return 0;
	}
	return 0;
}

#endif
