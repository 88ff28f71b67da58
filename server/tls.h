/*
 * tls: TLS for client connections, between the loop (server/loop.c) and
 * the connection's bytes (server/conn.c), under any protocol. OpenSSL does
 * the handshake and the records over two memory BIOs of our own: the read
 * BIO hands OpenSSL the ciphertext of a receive in place, the write BIO
 * appends ciphertext to a buffer of the connection's. So the loop keeps
 * its one multishot receive and its one send per turn, and never blocks:
 *   receive -> tls_feed -> SSL_read -> conn_feed (plaintext)
 *   c->out (plaintext replies) -> tls_take_send -> SSL_write -> one send.
 *
 * struct tls_server is the listeners' context: the certificate, key and
 * (with a CA file) the client-certificate requirement, loaded by main and
 * reloaded on SIGHUP (tls_server_reload, main's thread). Each connection
 * takes a reference to the SSL_CTX current when it is accepted
 * (tls_conn_create, any worker), so a reload changes new handshakes only;
 * a reload that fails keeps the old context. TLS 1.2 and 1.3 only,
 * renegotiation refused.
 *
 * Threads: tls_server_* from main; tls_conn_create from any worker (a
 * mutex guards the current context, taken once per accept); a struct
 * tls_conn, like its struct conn, belongs to one worker. Errors: -errno
 * (-ENOMEM: the loop drops the connection) with a message where a file
 * was at fault.
 */
#ifndef CONSENTD_SERVER_TLS_H
#define CONSENTD_SERVER_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conn;
struct conn_ctx;
struct tls_server;
struct tls_conn;

/* Where the context comes from (the paths are kept for reloads). */
struct tls_files {
	const char *cert; /* PEM: the server certificate (and its chain) */
	const char *key;  /* PEM: its private key */
	const char *ca;   /* PEM: CAs a client certificate must chain to;
			   * NULL: no client certificate asked for */
};

/* Loads the files into a context. 0, or -errno with err naming the file
 * and OpenSSL's reason. */
int tls_server_create(const struct tls_files *files, struct tls_server **out,
		      char *err, size_t err_cap);
/* Loads the same files again; on success new handshakes use the new
 * context, on failure (err says why) the old one stays. Connections
 * keep the context they were accepted with either way. */
int tls_server_reload(struct tls_server *t, char *err, size_t err_cap);
/* Frees the server's reference (connections hold their own). */
void tls_server_destroy(struct tls_server *t);

/* Makes c (conn_init'd) a TLS connection on t's current context: its
 * handshake deadline (cfg->partial_timeout_ms, through
 * c->partial_since_ms) starts now. 0 or -ENOMEM. */
int tls_conn_create(struct tls_server *t, struct conn *c, uint64_t now_ms);
/* Frees c->tls (conn_fini calls it). */
void tls_conn_destroy(struct conn *c);

/* Ciphertext received for c. Drives the handshake, then decrypts and
 * hands the plaintext to conn_feed. A plaintext client, a bad handshake or
 * a bad record sets c->want_close (an alert, if OpenSSL wrote one, is
 * queued) and counts it in x->m. 0, or -ENOMEM. */
int tls_feed(struct conn_ctx *x, struct conn *c, const char *data,
	     size_t len);
/* conn_take_send for a TLS connection: encrypts the plaintext replies
 * gathered in c->out (once the wire is free) and gives the ciphertext to
 * send; on the way to closing, a close_notify goes last. false: nothing
 * to send. *err is -ENOMEM if encrypting failed (the loop drops c). */
bool tls_take_send(struct conn *c, const char **buf, size_t *len, int *err);

/* The handshake is done (false also for a connection that failed it). */
bool tls_established(const struct tls_conn *t);

#endif
