"""C source of the native forecast request kernel (bound by
:mod:`slocast.serve.native_forecast`).

Compiled into the XGBoost serving library (:mod:`slocast.models.xgboost_native`),
after the strict JSON reader (:mod:`slocast.core.c_json`) and the feature kernel
it calls, so it is built at promotion and ships, verifies and caches with them.
Here rather than beside its binding: promotion builds the library without
importing the server.
"""

REQUEST_SOURCE = r"""
/* ---- forecast request kernel (slocast/models/native_forecast_c.py) ----
   Body bytes -> validated rows -> features (slocast_xgb_features) -> compiled
   trees -> forecasts and conformal bounds -> response JSON. Mirrors
   serve/validation.py, XGBoostForecaster.finish and ModelBundle.upper operation
   by operation; anything it is not sure of returns BAIL and the Python path
   decides (and names the error). */
enum { LTE_MAX_COLS = 62, LTE_MAX_LEVELS = 16, LTE_MAX_CELLS = 4096 };

/* Everything about the served model, filled once at load (native_forecast.py
   mirrors this layout field by field: int64, doubles and pointers only). */
typedef struct {
  int64_t ncols, keep, window, max_rows, max_series, max_horizon, horizon, k;
  int64_t step_ns, tolerance_ns, default_q;
  const char* names; /* time name, then the columns: concatenated */
  const int64_t* name_off;
  /* feature kernel */
  const double* caps;
  const int64_t* tidx;
  const double* ewm;
  int64_t n_ewm;
  const double* floor_;
  int64_t width;
  /* trees: boosters in (step, target) order */
  const uint64_t* fns;
  /* finish: raw * target_mean + share * last */
  const double* target_mean;
  double share;
  /* calibration */
  int64_t normalised, bins, nlevels;
  const double* target_caps;
  const double* residual_floor;
  const double* levels;
  const double* offsets;       /* (levels, horizon, k) */
  const double* edges;         /* (bins - 1, horizon, k) */
  const double* group_offsets; /* (levels, bins, horizon, k) */
  /* response keys: '"rnti":' per target, '"0.9":' per level */
  const char* target_keys;
  const int64_t* target_key_off;
  const char* level_keys;
  const int64_t* level_key_off;
  int64_t calendar; /* first of the six calendar columns in a feature row */
  const char* block; /* the response's "model" object, JSON */
  int64_t block_len;
} lte_model;

/* One call's buffers (sized for cap series) and what parsing found. */
typedef struct {
  int64_t cap;
  double* values;  /* cap * keep rows */
  int64_t* times;  /* cap * keep */
  int64_t* ids;    /* byte spans in the body, 2 per series */
  float* x;        /* features, cap rows */
  double* phases;  /* cap x 3, filled by parse */
  double* numbers; /* forecasts and bounds, in response order */
  char* out;
  int64_t out_cap;
  /* found by parse: */
  int64_t n, horizon, nq, count, id_bytes;
  int64_t q[LTE_MAX_LEVELS]; /* level index of each quantile asked for */
} lte_call;


static const int DAYS_IN_MONTH[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

static int digits_at(const unsigned char* s, int n, int64_t* out) {
  int64_t v = 0;
  for (int i = 0; i < n; ++i) {
    if (!is_digit(s[i])) return BAIL;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
  y -= m <= 2;
  const int64_t era = y / 400, yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  return era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
}

static void civil_from_days(int64_t z, int64_t* y, int64_t* m, int64_t* d) {
  z += 719468;
  const int64_t era = z / 146097, doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp + (mp < 10 ? 3 : -9);
  *y = yoe + era * 400 + (*m <= 2);
}

/* "YYYY-MM-DDTHH:MM:SS" (or a space for T), up to 9 fraction digits, an optional
   "Z": what numpy's datetime64[ns] parses to the same instant. Years 1970-2261
   only (the ns range, and no negative times to round). */
static int read_time(cursor* c, int64_t* ns) {
  const unsigned char* s;
  int64_t n;
  if (read_string(c, &s, &n) || n < 19) return BAIL;
  int64_t y, mo, d, h, mi, se, frac = 0;
  if (s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != ' ') || s[13] != ':' ||
      s[16] != ':')
    return BAIL;
  if (digits_at(s, 4, &y) || digits_at(s + 5, 2, &mo) || digits_at(s + 8, 2, &d) ||
      digits_at(s + 11, 2, &h) || digits_at(s + 14, 2, &mi) || digits_at(s + 17, 2, &se))
    return BAIL;
  if (y < 1970 || y > 2261 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || se > 59)
    return BAIL;
  int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (d > DAYS_IN_MONTH[mo - 1] + (mo == 2 && leap)) return BAIL;
  int64_t i = 19;
  if (i < n && s[i] == '.') {
    int64_t digits = 0;
    ++i;
    while (i < n && is_digit(s[i])) {
      if (++digits > 9) return BAIL;
      frac = frac * 10 + (s[i] - '0');
      ++i;
    }
    if (digits == 0) return BAIL;
    for (int64_t j = digits; j < 9; ++j) frac *= 10;
  }
  if (i < n && s[i] == 'Z') ++i;
  if (i != n) return BAIL;
  int64_t seconds = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
  *ns = seconds * 1000000000 + frac;
  return 0;
}

/* A JSON integer literal (no fraction or exponent) in [lo, hi]. */
static int read_int(cursor* c, int64_t lo, int64_t hi, int64_t* out) {
  const unsigned char* p = c->p;
  int64_t v = 0, digits = 0;
  if (p >= c->end || !is_digit(*p) || (*p == '0' && p + 1 < c->end && is_digit(p[1])))
    return BAIL;
  while (p < c->end && is_digit(*p)) {
    if (++digits > 12) return BAIL;
    v = v * 10 + (*p++ - '0');
  }
  if (p < c->end && (*p == '.' || *p == 'e' || *p == 'E')) return BAIL;
  if (v < lo || v > hi) return BAIL;
  c->p = p;
  *out = v;
  return 0;
}

/* A key string and its colon; returns the index among n names, or BAIL. */
static int read_key(cursor* c, const char* names, const int64_t* off, int64_t n, int64_t guess) {
  if (c->p >= c->end || *c->p != '"') return BAIL;
  int64_t f = -1;
  const unsigned char* q = c->p + 1;
  int64_t a = off[guess], len = off[guess + 1] - a;
  if (c->end - q > len && q[len] == '"' && memcmp(q, names + a, (size_t)len) == 0) {
    f = guess;
    c->p = q + len + 1;
  } else {
    const unsigned char* s;
    int64_t sl;
    if (read_string(c, &s, &sl)) return BAIL;
    for (int64_t i = 0; i < n; ++i) {
      a = off[i];
      if (off[i + 1] - a == sl && memcmp(names + a, s, (size_t)sl) == 0) {
        f = i;
        break;
      }
    }
    if (f < 0) return BAIL;
  }
  ws(c);
  if (c->p >= c->end || *c->p != ':') return BAIL;
  ++c->p;
  ws(c);
  return (int)f;
}

/* After a value: ',' (returns 0, more follows) or the closing byte (returns 1). */
static int next_or_close(cursor* c, unsigned char close) {
  ws(c);
  if (c->p >= c->end) return BAIL;
  if (*c->p == ',') {
    ++c->p;
    ws(c);
    return 0;
  }
  if (*c->p == close) {
    ++c->p;
    return 1;
  }
  return BAIL;
}

/* One history: the rows on the model's grid, at least keep and at most max_rows,
   the last keep of them into vals (keep x ncols) and tms (keep), oldest first.
   ring: scratch of keep * (ncols + 1) doubles. */
static int read_history(cursor* c, const lte_model* m, double* vals, int64_t* tms,
                        double* ring, int64_t* ring_t) {
  const int64_t nc = m->ncols, keep = m->keep, nf = nc + 1;
  const int64_t low = m->step_ns - m->tolerance_ns, high = m->step_ns + m->tolerance_ns;
  const uint64_t all = (nf == 64) ? ~UINT64_C(0) : (UINT64_C(1) << nf) - 1;
  if (c->p >= c->end || *c->p != '[') return BAIL;
  ++c->p;
  ws(c);
  int64_t n = 0, prev = 0;
  int64_t follow[LTE_MAX_COLS + 2];
  for (int64_t f = 0; f <= nf; ++f) follow[f] = f < nf ? f : 0;
  for (;;) {
    if (n >= m->max_rows) return BAIL; /* too many rows: a 413 from the Python path */
    if (c->p >= c->end || *c->p != '{') return BAIL;
    ++c->p;
    ws(c);
    double* row = ring + (n % keep) * nc;
    int64_t t = 0;
    uint64_t seen = 0;
    int64_t prev_f = -1;
    for (;;) {
      int f = read_key(c, m->names, m->name_off, nf, follow[prev_f + 1]);
      if (f < 0) return BAIL;
      if (seen & (UINT64_C(1) << f)) return BAIL; /* duplicate key */
      seen |= UINT64_C(1) << f;
      follow[prev_f + 1] = f;
      prev_f = f;
      if (f == 0) {
        if (read_time(c, &t)) return BAIL;
      } else if (read_signed(c, &row[f - 1])) {
        return BAIL;
      }
      int end = next_or_close(c, '}');
      if (end < 0) return BAIL;
      if (end) break;
    }
    if (seen != all) return BAIL; /* a missing column */
    if (n > 0 && (t - prev < low || t - prev > high)) return BAIL;
    ring_t[n % keep] = t;
    prev = t;
    ++n;
    int end = next_or_close(c, ']');
    if (end < 0) return BAIL;
    if (end) break;
  }
  if (n < keep) return BAIL;
  for (int64_t i = 0; i < keep; ++i) { /* oldest first: the ring starts at n % keep */
    int64_t slot = (n + i) % keep;
    memcpy(vals + i * nc, ring + slot * nc, sizeof(double) * (size_t)nc);
    tms[i] = ring_t[slot];
  }
  return 0;
}

static int read_quantiles(cursor* c, const lte_model* m, lte_call* call) {
  if (c->p >= c->end || *c->p != '[') return BAIL;
  ++c->p;
  ws(c);
  call->nq = 0;
  if (c->p < c->end && *c->p == ']') {
    ++c->p;
    return 0;
  }
  for (;;) {
    double q;
    if (read_signed(c, &q)) return BAIL;
    int64_t level = -1;
    for (int64_t l = 0; l < m->nlevels; ++l)
      if (m->levels[l] == q) level = l;
    if (level < 0) return BAIL; /* not calibrated: the 422 lists what is */
    int dup = 0;
    for (int64_t i = 0; i < call->nq; ++i) dup |= call->q[i] == level;
    if (!dup) {
      if (call->nq >= LTE_MAX_LEVELS) return BAIL;
      call->q[call->nq++] = level;
    }
    int end = next_or_close(c, ']');
    if (end < 0) return BAIL;
    if (end) return 0;
  }
}

/* A batch id: a plain string or an integer literal (not -0), kept as its bytes:
   equal bytes exactly when the decoded ids are equal, and what orjson writes. */
static int read_id(cursor* c, int64_t* start, int64_t* len, const unsigned char* base) {
  const unsigned char* s0 = c->p;
  if (c->p < c->end && *c->p == '"') {
    const unsigned char* s;
    int64_t n;
    if (read_string(c, &s, &n)) return BAIL;
  } else {
    const unsigned char* p = c->p;
    if (p < c->end && *p == '-') ++p;
    if (p >= c->end || !is_digit(*p)) return BAIL;
    if (*p == '0' && (p + 1 < c->end && is_digit(p[1]))) return BAIL;
    if (*p == '0' && p > c->p) return BAIL; /* -0 decodes to 0 */
    int64_t digits = 0;
    while (p < c->end && is_digit(*p)) {
      if (++digits > 18) return BAIL;
      ++p;
    }
    if (p < c->end && (*p == '.' || *p == 'e' || *p == 'E')) return BAIL;
    c->p = p;
  }
  *start = s0 - base;
  *len = c->p - s0;
  return 0;
}

static uint64_t hash_bytes(const unsigned char* s, int64_t n) {
  uint64_t h = UINT64_C(1469598103934665603);
  for (int64_t i = 0; i < n; ++i) h = (h ^ s[i]) * UINT64_C(1099511628211);
  return h;
}

/* 0 when all n ids (spans into body) differ, BAIL otherwise. */
static int ids_unique(const unsigned char* body, const int64_t* ids, int64_t n) {
  int64_t size = 16;
  while (size < 2 * n) size *= 2;
  int64_t* table = malloc(sizeof(int64_t) * (size_t)size);
  if (!table) return BAIL;
  for (int64_t i = 0; i < size; ++i) table[i] = -1;
  int status = 0;
  for (int64_t i = 0; i < n && !status; ++i) {
    const unsigned char* s = body + ids[2 * i];
    int64_t len = ids[2 * i + 1];
    uint64_t slot = hash_bytes(s, len) & (uint64_t)(size - 1);
    while (table[slot] >= 0) {
      int64_t j = table[slot];
      if (ids[2 * j + 1] == len && memcmp(body + ids[2 * j], s, (size_t)len) == 0) {
        status = BAIL;
        break;
      }
      slot = (slot + 1) & (uint64_t)(size - 1);
    }
    table[slot] = i;
  }
  free(table);
  return status;
}

int64_t slocast_xgb_features(const double* values, int64_t n_rows, int64_t c,
                             const int64_t* ends, int64_t n, int64_t w, const double* caps,
                             const int64_t* times_ns, int64_t step_ns, const int64_t* tidx,
                             int64_t k, const double* ewm, int64_t n_ewm, const double* floor_,
                             float* out, int64_t width, double* phases);

/* Parse a forecast body (batch = 0) or a batch body (batch = 1) into the last keep
   rows of each series (values, times), the ids' byte spans (ids, 2 per series),
   horizon and quantiles; then the features of every series' window into x (the
   calendar columns are left to NumPy, from phases). Returns the number of series,
   or BAIL. */
int64_t slocast_lte_parse(const lte_model* m, lte_call* call, const char* body, int64_t len,
                          int32_t batch) {
  const int64_t nc = m->ncols, keep = m->keep, cap = call->cap;
  double* values = call->values;
  int64_t *times = call->times, *ids = call->ids;
  if (nc > LTE_MAX_COLS || nc + 1 > 64 || keep < 1 || cap < 1) return BAIL;
  cursor c = {(const unsigned char*)body, (const unsigned char*)body + len};
  const unsigned char* base = c.p;
  double* ring = malloc(sizeof(double) * (size_t)(keep * nc) + sizeof(int64_t) * (size_t)keep);
  if (!ring) return BAIL;
  int64_t* ring_t = (int64_t*)(ring + keep * nc);
  int64_t n = 0, seen = 0, status = 0;
  call->n = 0;
  call->horizon = 1;
  call->nq = 0;
  if (m->default_q >= 0) call->q[call->nq++] = m->default_q;
  static const char TOP_NAMES[] = "historyserieshorizonquantiles";
  static const int64_t TOP_OFF[] = {0, 7, 13, 20, 29};
  const int64_t wanted = batch ? 1 : 0; /* "series" or "history" */
  ws(&c);
  if (c.p >= c.end || *c.p != '{') goto bail;
  ++c.p;
  ws(&c);
  for (;;) {
    int f = read_key(&c, TOP_NAMES, TOP_OFF, 4, wanted);
    if (f < 0 || (f <= 1 && f != wanted) || (seen & (1 << f))) goto bail;
    seen |= 1 << f;
    if (f == 0) {
      if (read_history(&c, m, values, times, ring, ring_t)) goto bail;
      n = 1;
    } else if (f == 1) {
      if (c.p >= c.end || *c.p != '[') goto bail;
      ++c.p;
      ws(&c);
      for (;;) {
        if (n >= cap) goto bail; /* over the batch limit (or the body bound): Python says */
        if (c.p >= c.end || *c.p != '{') goto bail;
        ++c.p;
        ws(&c);
        static const char ITEM_NAMES[] = "idhistory";
        static const int64_t ITEM_OFF[] = {0, 2, 9};
        int item_seen = 0;
        for (int guess = 0;; guess = 1) {
          int g = read_key(&c, ITEM_NAMES, ITEM_OFF, 2, guess);
          if (g < 0 || (item_seen & (1 << g))) goto bail;
          item_seen |= 1 << g;
          if (g == 0) {
            if (read_id(&c, &ids[2 * n], &ids[2 * n + 1], base)) goto bail;
          } else if (read_history(&c, m, values + n * keep * nc, times + n * keep, ring,
                                  ring_t)) {
            goto bail;
          }
          int end = next_or_close(&c, '}');
          if (end < 0) goto bail;
          if (end) break;
        }
        if (item_seen != 3) goto bail;
        ++n;
        int end = next_or_close(&c, ']');
        if (end < 0) goto bail;
        if (end) break;
      }
    } else if (f == 2) {
      if (read_int(&c, 1, m->max_horizon, &call->horizon)) goto bail;
    } else if (read_quantiles(&c, m, call)) {
      goto bail;
    }
    int end = next_or_close(&c, '}');
    if (end < 0) goto bail;
    if (end) break;
  }
  ws(&c);
  if (c.p != c.end || !(seen & (1 << wanted)) || n < 1) goto bail;
  if (batch && ids_unique(base, ids, n)) goto bail;
  free(ring);
  ring = NULL;
  int64_t* ends = malloc(sizeof(int64_t) * (size_t)n);
  if (!ends) return BAIL;
  for (int64_t s = 0; s < n; ++s) ends[s] = (s + 1) * keep;
  status = slocast_xgb_features(values, n * keep, nc, ends, n, m->window, m->caps, times,
                                m->step_ns, m->tidx, m->k, m->ewm, m->n_ewm, m->floor_, call->x,
                                m->width, call->phases);
  free(ends);
  if (status != 0) return BAIL; /* a window NumPy must handle */
  call->n = n;
  call->count = n * call->horizon * (1 + call->nq) * m->k;
  call->id_bytes = 0;
  for (int64_t s = 0; batch && s < n; ++s) call->id_bytes += ids[2 * s + 1];
  return n;
bail:
  free(ring);
  return BAIL;
}

/* The calendar features are float32 of NumPy's float64 sin/cos of the phases
   (XGBoostForecaster.features). libm's sin/cos and NumPy's (libm itself, or SIMD
   code within a few ulp) round to the same float32 unless the double lies within
   a few ulp of a float32 rounding boundary: those (about one in 2 million) are
   refused, so the Python path computes them. Checked against NumPy at load. */
static int f32_of_trig(double v, float* out) {
  const float f = (float)v;
  const double lo = ((double)f + (double)nextafterf(f, -INFINITY)) / 2;
  const double hi = ((double)f + (double)nextafterf(f, INFINITY)) / 2;
  const double margin = 64 * DBL_EPSILON * fabs(v) + 1e-300;
  if (!isfinite(v) || v - lo <= margin || hi - v <= margin) return BAIL;
  *out = f;
  return 0;
}

/* float32 sin and cos of n phases as the kernel computes them (NaN where it would
   refuse), for the load-time check against NumPy. */
void slocast_trig_f32(const double* phases, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (f32_of_trig(sin(phases[i]), &out[2 * i])) out[2 * i] = NAN;
    if (f32_of_trig(cos(phases[i]), &out[2 * i + 1])) out[2 * i + 1] = NAN;
  }
}

/* NumPy's sum of n contiguous doubles (pairwise_sum in its loops): what
   np.mean(axis=1) computes over a window in residual_scale (the reduced axis is
   the contiguous one there), so the bounds match to the last bit. */
static double pairwise_sum(const double* a, int64_t n) {
  if (n < 8) {
    double res = 0.0;
    for (int64_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int64_t i;
    for (i = 8; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* np.minimum(v, cap) for finite v. */
static inline double cap_at(double v, double cap) { return v <= cap ? v : cap; }

/* The calendar columns, trees, XGBoostForecaster.finish and ModelBundle.upper
   for the parsed series:
   numbers[series][step][0 = point, 1 + i = quantile i][target]. Returns 0, or
   BAIL when a value is not finite (the Python path answers those). */
int64_t slocast_lte_forecast(const lte_model* m, lte_call* call) {
  const int64_t n = call->n, h = call->horizon, nq = call->nq;
  const double* values = call->values;
  float* x = call->x;
  double* numbers = call->numbers;
  const int64_t k = m->k, nc = m->ncols, keep = m->keep, H = m->horizon, w = m->window;
  if (h < 1 || h > H || h * k > LTE_MAX_CELLS || k > LTE_MAX_COLS || nq > LTE_MAX_LEVELS)
    return BAIL;
  union entry* row =
      malloc(sizeof(union entry) * (size_t)(m->width + 1) + sizeof(double) * (size_t)w);
  if (!row) return BAIL;
  double* column = (double*)(row + m->width + (m->width & 1)); /* 8-byte aligned */
  float raw[LTE_MAX_CELLS];
  double last[LTE_MAX_COLS], scale[LTE_MAX_COLS], capped[LTE_MAX_COLS];
  const int need_scale = m->normalised || m->bins > 1;
  int64_t status = 0;
  for (int64_t s = 0; s < n && !status; ++s) {
    float* v = x + s * m->width;
    for (int p = 0; p < 3 && !status; ++p) {
      const double phase = call->phases[s * 3 + p];
      if (f32_of_trig(sin(phase), &v[m->calendar + 2 * p]) ||
          f32_of_trig(cos(phase), &v[m->calendar + 2 * p + 1]))
        status = BAIL;
    }
    if (status) break;
    for (int64_t j = 0; j < m->width; ++j) {
      if (isnan(v[j]))
        row[j].missing = -1;
      else
        row[j].fvalue = v[j];
    }
    /* Only the boosters of the steps asked for: the others' forecasts are not sent. */
    for (int64_t f = 0; f < h * k; ++f) {
      raw[f] = 0.0f;
      ((tree_fn)(uintptr_t)m->fns[f])(row, 0, &raw[f]);
    }
    const double* series = values + s * keep * nc;
    for (int64_t t = 0; t < k; ++t) {
      last[t] = series[(keep - 1) * nc + m->tidx[t]];
      /* Python refuses a forecast non-finite at any step, even one not sent: leave
         inputs that could overflow to it. */
      if (!(fabs(last[t]) <= 1e300)) status = BAIL;
      capped[t] = cap_at(last[t], m->target_caps[t]);
      if (need_scale) {
        for (int64_t i = 0; i < w; ++i)
          column[i] = fabs(cap_at(series[(keep - w + i) * nc + m->tidx[t]], m->target_caps[t]));
        scale[t] = pairwise_sum(column, w) / (double)w + m->residual_floor[t];
        if (!(isfinite(scale[t]) && scale[t] > 0)) status = BAIL;
      }
    }
    for (int64_t j = 0; j < h && !status; ++j) {
      double* out = numbers + (s * h + j) * (1 + nq) * k;
      for (int64_t t = 0; t < k; ++t) {
        double point = (double)raw[j * k + t] * m->target_mean[t] + m->share * last[t];
        if (!isfinite(point)) {
          status = BAIL;
          break;
        }
        out[t] = point;
        int64_t bin = 0;
        if (m->bins > 1) {
          double change = (point - capped[t]) / scale[t];
          for (int64_t e = 0; e < m->bins - 1; ++e) bin += change >= m->edges[(e * H + j) * k + t];
        }
        for (int64_t i = 0; i < nq; ++i) {
          int64_t level = call->q[i];
          double offset = m->bins > 1
                              ? m->group_offsets[((level * m->bins + bin) * H + j) * k + t]
                              : m->offsets[(level * H + j) * k + t];
          double upper = m->normalised ? point + offset * scale[t] : point + offset;
          if (!isfinite(upper)) status = BAIL;
          out[(1 + i) * k + t] = upper;
        }
      }
    }
  }
  free(row);
  return status;
}

/* Parse, then forecast: the numbers of a whole request. Returns the number of
   series, or BAIL. */
int64_t slocast_lte_answer(const lte_model* m, lte_call* call, const char* body, int64_t len,
                           int32_t batch) {
  int64_t n = slocast_lte_parse(m, call, body, len, batch);
  if (n < 1 || slocast_lte_forecast(m, call)) return BAIL;
  return n;
}

typedef struct {
  char* o;
  char* stop;
} writer;

static inline int put(writer* w, const char* s, int64_t n) {
  if (w->stop - w->o < n) return BAIL;
  memcpy(w->o, s, (size_t)n);
  w->o += n;
  return 0;
}

/* "YYYY-MM-DDTHH:MM:SS" of a non-negative ns time, truncated to the second. */
static int put_time(writer* w, int64_t ns) {
  if (ns < 0 || w->stop - w->o < 19) return BAIL;
  int64_t sec = ns / 1000000000, days = sec / 86400, rem = sec % 86400, y, mo, d;
  civil_from_days(days, &y, &mo, &d);
  if (y > 9999) return BAIL;
  int64_t parts[6] = {y, mo, d, rem / 3600, rem / 60 % 60, rem % 60};
  char* o = w->o;
  o[0] = (char)('0' + parts[0] / 1000);
  o[1] = (char)('0' + parts[0] / 100 % 10);
  o[2] = (char)('0' + parts[0] / 10 % 10);
  o[3] = (char)('0' + parts[0] % 10);
  static const char SEP[5] = {'-', '-', 'T', ':', ':'};
  for (int i = 1; i < 6; ++i) {
    char* q = o + 4 + (i - 1) * 3;
    q[0] = SEP[i - 1];
    q[1] = (char)('0' + parts[i] / 10);
    q[2] = (char)('0' + parts[i] % 10);
  }
  w->o += 19;
  return 0;
}

/* The next number of orjson's "[a,b,...]" text, copied verbatim. */
static int put_number(writer* w, const char** p, const char* end) {
  const char* s = *p;
  const char* q = s;
  while (q < end && *q != ',' && *q != ']') ++q;
  if (q >= end || q == s) return BAIL;
  *p = q + 1;
  return put(w, s, q - s);
}

static int put_targets(writer* w, const lte_model* m, const char** p, const char* end) {
  for (int64_t t = 0; t < m->k; ++t) {
    int64_t a = m->target_key_off[t];
    if ((t && put(w, ",", 1)) || put(w, m->target_keys + a, m->target_key_off[t + 1] - a) ||
        put_number(w, p, end))
      return BAIL;
  }
  return 0;
}

/* The response body into call->out, as serve/forecasting.py writes it with orjson:
   numbers is orjson's text of call->numbers. Returns its length, or BAIL (also
   when out is too small). */
int64_t slocast_lte_render(const lte_model* m, const lte_call* call, const char* body,
                           int32_t batch, const char* numbers, int64_t numbers_len) {
  const int64_t n = call->n, h = call->horizon, nq = call->nq;
  const int64_t* ids = call->ids;
  writer w = {call->out, call->out + call->out_cap};
  const char* p = numbers + 1;
  const char* end = numbers + numbers_len;
  if (numbers_len < 2 || numbers[0] != '[') return BAIL;
  if (put(&w, "{\"model\":", 9) || put(&w, m->block, m->block_len)) return BAIL;
  if (put(&w, batch ? ",\"results\":[" : ",\"forecasts\":[", batch ? 12 : 14)) return BAIL;
  for (int64_t s = 0; s < n; ++s) {
    if (s && put(&w, ",", 1)) return BAIL;
    if (batch && (put(&w, "{\"id\":", 6) || put(&w, body + ids[2 * s], ids[2 * s + 1]) ||
                  put(&w, ",\"forecasts\":[", 14)))
      return BAIL;
    const int64_t last = call->times[(s + 1) * m->keep - 1];
    for (int64_t j = 0; j < h; ++j) {
      if ((j && put(&w, ",", 1)) || put(&w, "{\"time\":\"", 9) ||
          put_time(&w, last + (j + 1) * m->step_ns) || put(&w, "\",\"point\":{", 11) ||
          put_targets(&w, m, &p, end) || put(&w, "},\"quantiles\":{", 15))
        return BAIL;
      for (int64_t i = 0; i < nq; ++i) {
        int64_t level = call->q[i], a = m->level_key_off[level];
        if ((i && put(&w, ",", 1)) ||
            put(&w, m->level_keys + a, m->level_key_off[level + 1] - a) || put(&w, "{", 1) ||
            put_targets(&w, m, &p, end) || put(&w, "}", 1))
          return BAIL;
      }
      if (put(&w, "}}", 2)) return BAIL;
    }
    if (batch && put(&w, "]}", 2)) return BAIL;
  }
  if (put(&w, "]}", 2) || p != end) return BAIL; /* every number used, none missing */
  return w.o - call->out;
}
/* ---- end of the forecast request kernel ---- */
"""
