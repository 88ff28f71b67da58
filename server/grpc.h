/*
 * grpc: the gRPC port (DESIGN §11, --grpc): HTTP/2 through libnghttp2's
 * server session, unary calls of the service consent.v1.ConsentService
 * (proto/consent.proto), answered under both /consent.v1.Consent/<Method>
 * (DESIGN's name) and /consent.v1.ConsentService/<Method> (the proto's:
 * protoc refuses a service named like the message Consent).
 *
 *   Check   CheckRequest -> CheckResponse   the check path of every port
 *   Apply   ApplyRequest -> ApplyResponse   through writer_submit
 *   Stats   StatsRequest -> StatsResponse
 *   History HistoryRequest -> HistoryResponse   server/evidence.h (§10)
 *   Reject  RejectRequest -> ApplyResponse  a local rejection (§11)
 *
 * Messages are decoded and encoded by server/rpc.c (the framed RPC's
 * decoder and encoders): a request message is wrapped in the Request
 * field its method names and read by rpc_decode_checks, a reply is the
 * body the RPC would put in its Response.
 *
 * Each call authenticates itself with the metadata `authorization: Bearer
 * TOKEN` (core/tokens: the RPC's principals, brands and rights; without a
 * token file every call is trusted). Errors are gRPC statuses with the
 * reason in grpc-message, as trailers-only responses:
 *   UNAUTHENTICATED (16)    no or unknown token
 *   PERMISSION_DENIED (7)   Apply without 'apply'; an Apply change for a
 *                           brand outside the principal's (writer's 403);
 *                           a History of a brand outside them
 *   INVALID_ARGUMENT (3)    a message that does not decode, not exactly
 *                           one message in the call, a bad change (400)
 *   RESOURCE_EXHAUSTED (8)  a message over --max-frame-bytes, the calls'
 *                           buffered messages over --conn-in-cap-bytes, a
 *                           reply over --conn-out-cap-bytes
 *   UNAVAILABLE (14)        the change log failed or no index (503)
 *   ABORTED (10)            an Apply's cursor conflict (409)
 *   UNIMPLEMENTED (12)      History with --history off, an unknown
 *                           method, a compressed message
 * A checks' verdict (NOT_AUTHORIZED for a brand outside the principal's,
 * INVALID_REQUEST, ...) is an OK reply, as on every port.
 *
 * Streams: up to cfg->grpc_max_streams at once per connection
 * (SETTINGS_MAX_CONCURRENT_STREAMS; nghttp2 refuses more with
 * RST_STREAM REFUSED_STREAM), answered as each completes. An Apply holds
 * the connection: while the writer makes it durable, no further input of
 * that connection is read and calls that completed behind it wait (in
 * arrival order) until its reply is queued, as on the RPC port; the other
 * connections go on. A client that wants checks to flow during its Applies
 * uses a second channel for them.
 *
 * Limits: conn.c's input and output caps and deadlines apply to HTTP/2
 * frames (only whole frames go to nghttp2, so an unfinished frame is
 * carried and timed like an RPC frame); a stream whose message is
 * incomplete counts as a stalled request too. Past the deadline the
 * connection gets a GOAWAY naming it and closes (its calls end
 * UNAVAILABLE at the client). At the connection cap the
 * refusal is the server's SETTINGS and a GOAWAY (ENHANCE_YOUR_CALM,
 * "max connections"). Bytes that are not HTTP/2 get a GOAWAY and a close.
 * One leniency: an RST_STREAM on an idle stream, which gRPC's C core sends
 * for a call cancelled early, is dropped (grpc_run in grpc.c says why).
 *
 * Threads: a connection and its nghttp2 session belong to one worker.
 * Memory: one nghttp2 session per connection (created with its first
 * bytes, freed by conn_fini), a small record per open stream.
 */
#ifndef CONSENTD_SERVER_GRPC_H
#define CONSENTD_SERVER_GRPC_H

#include "server/conn.h"

/* gRPC status codes (grpc/doc/statuscodes.md). */
enum grpc_status {
	GRPC_OK = 0,
	GRPC_CANCELLED = 1,
	GRPC_UNKNOWN = 2,
	GRPC_INVALID_ARGUMENT = 3,
	GRPC_PERMISSION_DENIED = 7,
	GRPC_RESOURCE_EXHAUSTED = 8,
	GRPC_ABORTED = 10,
	GRPC_UNIMPLEMENTED = 12,
	GRPC_INTERNAL = 13,
	GRPC_UNAVAILABLE = 14,
	GRPC_UNAUTHENTICATED = 16,
};

/* The status for one of the RPC's error codes (server/rpc.h, the writer's
 * replies). */
enum grpc_status grpc_status_of(uint32_t rpc_code);

/* The port, for conn and loop (server/conn.h). */
extern const struct conn_proto grpc_proto;

#endif
