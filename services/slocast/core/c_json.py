"""Strict JSON reading in C, shared by the native request kernels.

Included (as text) at the top of the C sources of :mod:`slocast.latency.native` and
:mod:`slocast.models.xgboost_native`. Every reader either accepts exactly what the
Python reference (orjson) would decode to the same value, or returns ``BAIL``:
the caller then runs the Python path, which decides and names the error. So the
grammar is a strict subset: strings without escapes, control or non-ASCII bytes;
numbers correctly rounded (exact fast paths, else glibc ``strtod``); integers
from 2**63 on refused (how the reference treats them depends on context).
"""

JSON_READER = r"""/* ---- strict JSON reader (slocast/core/c_json.py) ---- */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BAIL (-1)
#define JSON_MAX_DEPTH 32

typedef struct {
  const unsigned char* p;
  const unsigned char* end;
} cursor;

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

#if defined(__x86_64__) && LDBL_MANT_DIG == 64
#define EXTENDED_FAST_PATH 1
static const long double POW10L[28] = {
    1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
    1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
    1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L};
#else
#define EXTENDED_FAST_PATH 0
#endif

static inline void ws(cursor* c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) ++c->p;
}

static inline int is_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }

/* Eight ASCII digits at p, and their value (SWAR, as in fast_float): numbers
   printed in full have 16-19 digits, and a byte at a time is most of the parse. */
static inline uint64_t load_eight(const unsigned char* p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

static inline int eight_digits(const unsigned char* p) {
  const uint64_t v = load_eight(p);
  return ((v & UINT64_C(0xF0F0F0F0F0F0F0F0)) |
          (((v + UINT64_C(0x0606060606060606)) & UINT64_C(0xF0F0F0F0F0F0F0F0)) >> 4)) ==
         UINT64_C(0x3333333333333333);
}

static inline uint64_t parse_eight(const unsigned char* p) {
  const uint64_t mask = UINT64_C(0x000000FF000000FF);
  const uint64_t mul1 = UINT64_C(0x000F424000000064); /* 100 + (1000000 << 32) */
  const uint64_t mul2 = UINT64_C(0x0000271000000001); /* 1 + (10000 << 32) */
  uint64_t v = load_eight(p) - UINT64_C(0x3030303030303030);
  v = (v * 10) + (v >> 8);
  return (((v & mask) * mul1) + (((v >> 16) & mask) * mul2)) >> 32;
}

/* A string without escapes, control or non-ASCII bytes (anything else: BAIL). */
static int read_string(cursor* c, const unsigned char** s, int64_t* n) {
  if (c->p >= c->end || *c->p != '"') return BAIL;
  const unsigned char* start = ++c->p;
  while (c->p < c->end) {
    unsigned char ch = *c->p;
    if (ch == '"') {
      *s = start;
      *n = c->p - start;
      ++c->p;
      return 0;
    }
    if (ch == '\\' || ch < 0x20 || ch >= 0x80) return BAIL;
    ++c->p;
  }
  return BAIL;
}

/* A non-negative JSON number (RFC 8259 grammar) as the correctly rounded double. */
static int read_number(cursor* c, double* out) {
  const unsigned char* s = c->p;
  const unsigned char* p = s;
  const unsigned char* end = c->end;
  uint64_t m = 0;
  int digits = 0, exact = 1;
  int64_t e10 = 0;
  if (p >= end) return BAIL;
  if (*p == '0') {
    ++p;
    if (p < end && is_digit(*p)) return BAIL; /* leading zero: invalid JSON */
  } else if (*p >= '1' && *p <= '9') {
    while (end - p >= 8 && digits <= 11 && eight_digits(p)) {
      m = m * 100000000 + parse_eight(p);
      digits += 8;
      p += 8;
    }
    while (p < end && is_digit(*p)) {
      if (digits < 19) {
        m = m * 10 + (uint64_t)(*p - '0');
        ++digits;
      } else {
        exact = 0;
      }
      ++p;
    }
    /* Integers from 2**63 on: how the reference treats them depends on the
       other values' types; leave them to it. */
    if (digits >= 19 && (p >= end || (*p != '.' && *p != 'e' && *p != 'E'))) return BAIL;
  } else {
    return BAIL; /* '-' (negative numbers are for the reference path), '+', '.', ... */
  }
  if (p < end && *p == '.') {
    ++p;
    if (p >= end || !is_digit(*p)) return BAIL;
    if (m == 0) /* leading zeros of a fraction are not significant digits */
      for (; p < end && *p == '0'; ++p) --e10;
    while (end - p >= 8 && digits <= 11 && eight_digits(p)) {
      m = m * 100000000 + parse_eight(p);
      digits += 8;
      e10 -= 8;
      p += 8;
    }
    while (p < end && is_digit(*p)) {
      if (digits < 19) {
        if (m != 0 || *p != '0') {
          m = m * 10 + (uint64_t)(*p - '0');
          ++digits;
        }
        --e10;
      } else {
        exact = 0;
      }
      ++p;
    }
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    ++p;
    int neg = 0;
    if (p < end && (*p == '+' || *p == '-')) neg = *p++ == '-';
    if (p >= end || !is_digit(*p)) return BAIL;
    int64_t e = 0;
    while (p < end && is_digit(*p)) {
      if (e > 100000) return BAIL;
      e = e * 10 + (*p++ - '0');
    }
    e10 += neg ? -e : e;
  }
  c->p = p;
  if (exact && m <= (UINT64_C(1) << 53) && e10 >= -22 && e10 <= 22) {
    *out = e10 < 0 ? (double)m / POW10[-e10] : (double)m * POW10[e10];
    return 0;
  }
#if EXTENDED_FAST_PATH
  /* Up to 19 digits (typical of doubles printed in full, e.g. 0.0063750000000000005):
     m and 10**|e10| (|e10| <= 27: 5**27 < 2**64) are exact in x87 extended precision,
     so one operation rounds once to 64 bits. Rounding that to 53 bits is correct
     unless it landed exactly on a midpoint between doubles (low 11 bits 0x400): those,
     and results near the subnormal or overflow range, go to strtod. */
  if (exact && m != 0 && e10 >= -27 && e10 <= 27) {
    long double x = e10 < 0 ? (long double)m / POW10L[-e10] : (long double)m * POW10L[e10];
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits); /* the 64-bit significand of the x87 format */
    double v = (double)x;
    if ((bits & 0x7FF) != 0x400 && v >= 1e-300 && v <= 1e300) {
      *out = v;
      return 0;
    }
  }
#endif
  /* Rare: long mantissa or large exponent. glibc strtod rounds correctly. */
  char buf[128];
  int64_t len = p - s;
  if (len >= (int64_t)sizeof buf) return BAIL;
  memcpy(buf, s, (size_t)len);
  buf[len] = 0;
  errno = 0;
  char* stop = NULL;
  double v = strtod(buf, &stop);
  if (stop != buf + len || errno != 0 || !isfinite(v)) return BAIL;
  *out = v;
  return 0;
}

static int skip_value(cursor* c, int depth);

static int skip_literal(cursor* c, const char* lit, int64_t n) {
  if (c->end - c->p < n || memcmp(c->p, lit, (size_t)n) != 0) return BAIL;
  c->p += n;
  return 0;
}

static int skip_number(cursor* c) {
  /* Any JSON number, negative included (unknown fields are not validated). */
  if (c->p < c->end && *c->p == '-') ++c->p;
  double ignored;
  return read_number(c, &ignored) == 0 ? 0 : BAIL;
}

static int skip_value(cursor* c, int depth) {
  if (depth > JSON_MAX_DEPTH || c->p >= c->end) return BAIL;
  const unsigned char* s;
  int64_t n;
  switch (*c->p) {
    case '"':
      return read_string(c, &s, &n);
    case 't':
      return skip_literal(c, "true", 4);
    case 'f':
      return skip_literal(c, "false", 5);
    case 'n':
      return skip_literal(c, "null", 4);
    case '[':
      ++c->p;
      ws(c);
      if (c->p < c->end && *c->p == ']') {
        ++c->p;
        return 0;
      }
      for (;;) {
        if (skip_value(c, depth + 1)) return BAIL;
        ws(c);
        if (c->p >= c->end) return BAIL;
        if (*c->p == ']') {
          ++c->p;
          return 0;
        }
        if (*c->p != ',') return BAIL;
        ++c->p;
        ws(c);
      }
    case '{':
      ++c->p;
      ws(c);
      if (c->p < c->end && *c->p == '}') {
        ++c->p;
        return 0;
      }
      for (;;) {
        if (read_string(c, &s, &n)) return BAIL;
        ws(c);
        if (c->p >= c->end || *c->p != ':') return BAIL;
        ++c->p;
        ws(c);
        if (skip_value(c, depth + 1)) return BAIL;
        ws(c);
        if (c->p >= c->end) return BAIL;
        if (*c->p == '}') {
          ++c->p;
          return 0;
        }
        if (*c->p != ',') return BAIL;
        ++c->p;
        ws(c);
      }
    default:
      return skip_number(c);
  }
}

/* A JSON number of either sign. */
static int read_signed(cursor* c, double* out) {
  int neg = c->p < c->end && *c->p == '-';
  if (neg) ++c->p;
  if (read_number(c, out)) return BAIL;
  if (neg) *out = -*out;
  return 0;
}
/* ---- end of the JSON reader ---- */
"""
