/*
 * synth: the deterministic synthetic dataset behind `consentctl gen`, the
 * tests and the load generator. Record i of (seed, n) is computed in O(1)
 * with no table, so a client can know the expected answer for any key
 * without loading the dataset. Keys are unique by construction (record i's
 * key is a bijection of i). About four in five recipients are Turkish
 * mobile numbers (some landlines), one in five e-mails; brands follow a
 * skewed (Zipf-like) popularity; both recipient types occur; about one
 * record in six is RET; consent dates run from 2015-05-01 to the present,
 * HS_2015 records dated exactly 2015-05-01 00:00:00 Turkey time.
 * Pure functions; any thread.
 */
#ifndef CONSENTD_CORE_SYNTH_H
#define CONSENTD_CORE_SYNTH_H

#include <stdint.h>

#include "core/recipient.h"

/* The dataset's fixed "now" (2026-01-01 00:00:00 Turkey time): no consent
 * or creation date is later; `consentctl gen` writes it as created_at. */
#define SYNTH_NOW 1767214800
/* Keys stay unique (and synth_absent absent) for n up to this. */
#define SYNTH_RECORDS_MAX (1ull << 31)
/* Brands in the dataset; synth_brand_code(0) is the most popular. */
#define SYNTH_BRANDS 1024

struct synth_record {
	char recipient[RECIPIENT_TEXT_MAX]; /* canonical text */
	uint32_t brand_code;
	uint32_t iys_code;
	uint8_t channel;      /* enum channel */
	uint8_t rtype;        /* enum rtype */
	uint8_t status;       /* enum status */
	uint8_t source;       /* wire Source value */
	int64_t consent_date; /* Unix seconds UTC */
	int64_t creation_date;
};

/* Record i (0 <= i < n) of the dataset (seed, n). */
void synth_record(uint64_t seed, uint64_t n, uint64_t i, struct synth_record *out);

/* A key guaranteed absent from the dataset (seed, n), for misses: same
 * shape (brand, channel, type, recipient form) as real ones. */
void synth_absent(uint64_t seed, uint64_t n, uint64_t j, struct synth_record *out);

/* A brand code drawn with the dataset's skew, for load generation. */
uint32_t synth_brand(uint64_t seed, uint64_t j);

/* The brand code of popularity rank idx (0 <= idx < SYNTH_BRANDS); the
 * same for every seed. */
uint32_t synth_brand_code(unsigned idx);

#endif
