/* Latency forests: XGBoost trees as padded complete trees of one depth, evaluated
 * without branches (slocast/latency/native.py builds the tables; docs/native.md).
 *
 * Tables, one row per tree, n = 2**depth - 1 internal slots in level order:
 *   feat  int32 (trees, n)    split feature (0 in padding slots)
 *   thr   float32 (trees, n)  go left when x < thr (+inf in padding slots)
 *   dleft uint8 (trees, n)    go left when x is NaN (XGBoost's default direction)
 *   leaf  float32 (trees, max(8, 2**depth))  leaf values, padded to >= 8 so the AVX2
 *         path's 8-float loads stay inside the row of every tree, however shallow.
 * x is float32 (rows, features), out float32 (rows,). The sum starts at ``base`` and
 * adds trees in order in float32, as XGBoost does. Every shape, dtype and feature
 * index is checked before anything is read: bad input raises, never reads out of
 * bounds. */
#include "native.h"

#include <stdint.h>
#include <string.h>

enum { MAX_DEPTH = 10, ROWS = 8, SIMD_MAX_DEPTH = 6, SIMD_MAX_FEATURES = 64, MIN_LEAVES = 8 };

typedef struct {
  const float *x, *thr, *leaf;
  const int32_t *feat;
  const uint8_t *dleft;
  float *out;
  int64_t rows, nfeat, ntree, lw; /* lw: leaf row width */
  int depth;
  float base;
} forest;

/* Scalar walk from row ``first``, R rows interleaved so their dependent loads
 * overlap (a last block of fewer rows repeats its first row in the spare lanes). */
static inline __attribute__((always_inline)) void walk(const forest *f, int64_t first,
                                                       const int R, const int missing) {
  const int64_t ni = ((int64_t)1 << f->depth) - 1;
  for (int64_t r0 = first; r0 < f->rows; r0 += R) {
    const int64_t nb = f->rows - r0 < R ? f->rows - r0 : R;
    const float *xr[ROWS];
    float acc[ROWS];
    for (int i = 0; i < R; ++i) {
      xr[i] = f->x + (r0 + (i < nb ? i : 0)) * f->nfeat;
      acc[i] = f->base;
    }
    for (int64_t t = 0; t < f->ntree; ++t) {
      const int32_t *fe = f->feat + t * ni;
      const float *th = f->thr + t * ni;
      const uint8_t *dl = f->dleft + t * ni;
      const float *lv = f->leaf + t * f->lw;
      int64_t k[ROWS] = {0};
      for (int d = 0; d < f->depth; ++d) {
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
          const float v = xr[i][fe[k[i]]];
          int64_t left = v < th[k[i]];
          if (missing) left |= (int64_t)(v != v) & (dl[k[i]] != 0);
          k[i] = 2 * k[i] + 2 - left;
        }
      }
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) acc[i] += lv[k[i] - ni];
    }
    for (int64_t i = 0; i < nb; ++i) f->out[r0 + i] = acc[i];
  }
}

/* One row (a single prediction, or the row after the AVX2 blocks) walks alone. */
static void walk_clean(const forest *f, int64_t first) {
  if (f->rows - first == 1) walk(f, first, 1, 0);
  else walk(f, first, ROWS, 0);
}
static void walk_missing(const forest *f, int64_t first) {
  if (f->rows - first == 1) walk(f, first, 1, 1);
  else walk(f, first, ROWS, 1);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2")))

/* Eight rows per vector, no dependent loads: every node of a tree is compared
 * (x[:, f] < t for the eight rows, from a transposed block), each level's node on
 * the path is picked by a tournament of blends on the directions taken so far, and
 * the leaf by a permute (depth <= 4) or a gather. Only for blocks without NaN. */
static inline __attribute__((always_inline)) AVX2 void simd_rows(const forest *f, const int D) {
  const int64_t ni = ((int64_t)1 << D) - 1, nl = (int64_t)1 << D;
  float xt[SIMD_MAX_FEATURES * 8] __attribute__((aligned(32)));
  for (int64_t blk = 0; blk < f->rows / 8; ++blk) {
    const float *xb = f->x + blk * 8 * f->nfeat;
    for (int64_t j = 0; j < f->nfeat; ++j)
      for (int i = 0; i < 8; ++i) xt[j * 8 + i] = xb[i * f->nfeat + j];
    __m256 acc = _mm256_set1_ps(f->base);
    for (int64_t t = 0; t < f->ntree; ++t) {
      const int32_t *fv = f->feat + t * ni;
      const float *th = f->thr + t * ni;
      const float *lv = f->leaf + t * f->lw;
      __m256 right[SIMD_MAX_DEPTH];
      __m256i idx = _mm256_setzero_si256();
#pragma GCC unroll 6
      for (int d = 0; d < D; ++d) {
        __m256 cand[1 << (SIMD_MAX_DEPTH - 1)];
        /* constant trip counts, guarded: unrolled at any optimisation level */
#pragma GCC unroll 32
        for (int j = 0; j < (1 << (SIMD_MAX_DEPTH - 1)); ++j) {
          const int n = (1 << d) - 1 + j; /* all ones: go right */
          if (j < (1 << d))
            cand[j] = _mm256_cmp_ps(_mm256_load_ps(xt + fv[n] * 8), _mm256_broadcast_ss(th + n),
                                    _CMP_NLT_UQ);
        }
#pragma GCC unroll 6
        for (int b = d - 1; b >= 0; --b) {
#pragma GCC unroll 16
          for (int j = 0; j < (1 << (SIMD_MAX_DEPTH - 2)); ++j)
            if (j < (1 << b)) cand[j] = _mm256_blendv_ps(cand[2 * j], cand[2 * j + 1], right[b]);
        }
        right[d] = cand[0];
        idx = _mm256_or_si256(_mm256_add_epi32(idx, idx),
                              _mm256_srli_epi32(_mm256_castps_si256(cand[0]), 31));
      }
      __m256 v; /* leaf rows hold >= 8 floats: the loads below stay inside this tree's */
      if (nl <= 8) {
        v = _mm256_permutevar8x32_ps(_mm256_loadu_ps(lv), idx);
      } else if (nl == 16) {
        __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(lv), idx);
        __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(lv + 8), idx);
        v = _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
      } else {
        v = _mm256_i32gather_ps(lv, idx, 4);
      }
      acc = _mm256_add_ps(acc, v);
    }
    _mm256_storeu_ps(f->out + blk * 8, acc);
  }
}

#define SIMD_DEPTH(D) \
  static AVX2 void simd_##D(const forest *f) { simd_rows(f, D); }
SIMD_DEPTH(1)
SIMD_DEPTH(2)
SIMD_DEPTH(3)
SIMD_DEPTH(4)
SIMD_DEPTH(5)
SIMD_DEPTH(6)
static void (*const SIMD_BY_DEPTH[SIMD_MAX_DEPTH + 1])(const forest *) = {
    NULL, simd_1, simd_2, simd_3, simd_4, simd_5, simd_6};

static int simd_available(void) { return __builtin_cpu_supports("avx2") ? 1 : 0; }
#else
static void (*const SIMD_BY_DEPTH[SIMD_MAX_DEPTH + 1])(const forest *) = {NULL};
static int simd_available(void) { return 0; }
#endif

static void evaluate(const forest *f, int simd) {
  int missing = 0;
  for (int64_t i = 0; i < f->rows * f->nfeat; ++i) missing |= f->x[i] != f->x[i];
  if (missing) {
    walk_missing(f, 0);
    return;
  }
  int64_t done = 0;
  if (simd && f->rows >= 8 && f->depth >= 1 && f->depth <= SIMD_MAX_DEPTH &&
      f->nfeat <= SIMD_MAX_FEATURES && SIMD_BY_DEPTH[f->depth] != NULL && simd_available()) {
    SIMD_BY_DEPTH[f->depth](f);
    done = f->rows / 8 * 8;
  }
  walk_clean(f, done);
}

/* --- Python binding ---------------------------------------------------------------- */

/* A C-contiguous buffer of ``ndim`` dimensions whose items are ``code`` (struct
 * format letter) of ``size`` bytes; sets TypeError/ValueError otherwise. */
static int take(PyObject *obj, Py_buffer *view, const char *name, char code, Py_ssize_t size,
                int ndim, int writable) {
  int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(obj, view, flags) < 0) {
    if (PyErr_ExceptionMatches(PyExc_BufferError)) {
      PyErr_Clear();
      PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous%s array", name,
                   writable ? " writable" : "");
    }
    view->obj = NULL;
    return -1;
  }
  const char *fmt = view->format != NULL ? view->format : "B";
  if (*fmt == '@' || *fmt == '=' || (*fmt == '<' && PY_LITTLE_ENDIAN)) ++fmt;
  if (fmt[0] != code || fmt[1] != '\0' || view->itemsize != size) {
    PyErr_Format(PyExc_TypeError, "%s must hold '%c' items of %zd bytes, not '%s'", name, code,
                 size, view->format != NULL ? view->format : "B");
  } else if (view->ndim != ndim) {
    PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, not %d", name, ndim, view->ndim);
  } else {
    return 0;
  }
  PyBuffer_Release(view);
  view->obj = NULL;
  return -1;
}

static int depth_of(Py_ssize_t nodes) {
  for (int d = 0; d <= MAX_DEPTH; ++d)
    if (nodes == ((Py_ssize_t)1 << d) - 1) return d;
  return -1;
}

static PyObject *forest_predict(PyObject *self, PyObject *args, PyObject *kwargs) {
  (void)self;
  static char *names[] = {"x", "feat", "thr", "dleft", "leaf", "base", "out", "simd", NULL};
  PyObject *objs[7];
  float base;
  int simd = 1;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOfO|p", names, &objs[0], &objs[1],
                                   &objs[2], &objs[3], &objs[4], &base, &objs[5], &simd))
    return NULL;
  Py_buffer x, feat, thr, dleft, leaf, out;
  Py_buffer *views[] = {&x, &feat, &thr, &dleft, &leaf, &out};
  for (int i = 0; i < 6; ++i) views[i]->obj = NULL;
  PyObject *result = NULL;
  if (take(objs[0], &x, "x", 'f', 4, 2, 0) < 0 || take(objs[1], &feat, "feat", 'i', 4, 2, 0) < 0 ||
      take(objs[2], &thr, "thr", 'f', 4, 2, 0) < 0 ||
      take(objs[3], &dleft, "dleft", 'B', 1, 2, 0) < 0 ||
      take(objs[4], &leaf, "leaf", 'f', 4, 2, 0) < 0 || take(objs[5], &out, "out", 'f', 4, 1, 1) < 0)
    goto done;
  const Py_ssize_t ntree = feat.shape[0], nodes = feat.shape[1];
  const int depth = depth_of(nodes);
  if (depth < 0) {
    PyErr_Format(PyExc_ValueError, "feat has %zd nodes per tree, not 2**depth - 1 (depth <= %d)",
                 nodes, MAX_DEPTH);
    goto done;
  }
  const Py_ssize_t lw = (Py_ssize_t)1 << depth < MIN_LEAVES ? MIN_LEAVES : (Py_ssize_t)1 << depth;
  if (thr.shape[0] != ntree || thr.shape[1] != nodes || dleft.shape[0] != ntree ||
      dleft.shape[1] != nodes) {
    PyErr_SetString(PyExc_ValueError, "thr and dleft must have the shape of feat");
    goto done;
  }
  if (leaf.shape[0] != ntree || leaf.shape[1] != lw) {
    PyErr_Format(PyExc_ValueError, "leaf must have shape (%zd, %zd), not (%zd, %zd)", ntree, lw,
                 leaf.shape[0], leaf.shape[1]);
    goto done;
  }
  if (out.shape[0] != x.shape[0]) {
    PyErr_Format(PyExc_ValueError, "out has %zd rows, x has %zd", out.shape[0], x.shape[0]);
    goto done;
  }
  const int32_t *fv = feat.buf;
  for (Py_ssize_t i = 0; i < ntree * nodes; ++i) {
    if (fv[i] < 0 || fv[i] >= x.shape[1]) {
      PyErr_Format(PyExc_ValueError, "feat[%zd, %zd] = %d is not a column of x (%zd columns)",
                   i / nodes, i % nodes, (int)fv[i], x.shape[1]);
      goto done;
    }
  }
  forest f = {.x = x.buf, .thr = thr.buf, .leaf = leaf.buf, .feat = fv, .dleft = dleft.buf,
              .out = out.buf, .rows = x.shape[0], .nfeat = x.shape[1], .ntree = ntree,
              .lw = lw, .depth = depth, .base = base};
  Py_BEGIN_ALLOW_THREADS evaluate(&f, simd);
  Py_END_ALLOW_THREADS result = Py_NewRef(Py_None);
done:
  for (int i = 0; i < 6; ++i)
    if (views[i]->obj != NULL) PyBuffer_Release(views[i]);
  return result;
}

static PyObject *forest_simd(PyObject *self, PyObject *unused) {
  (void)self;
  (void)unused;
  return PyBool_FromLong(simd_available() && SIMD_BY_DEPTH[1] != NULL);
}

PyMethodDef slocast_forest_methods[] = {
    {"forest_predict", (PyCFunction)(void (*)(void))forest_predict, METH_VARARGS | METH_KEYWORDS,
     "forest_predict(x, feat, thr, dleft, leaf, base, out, simd=True): XGBoost's prediction of\n"
     "a padded forest (see slocast.latency.native) for every row of x, into out."},
    {"forest_simd", forest_simd, METH_NOARGS, "True when the AVX2 forest path can run here."},
    {NULL, NULL, 0, NULL}};
