/* LTE serving kernels: window features (core/features.py's FEATURE_BLOCKS, whose NumPy builder
 * is the definition), TL2cgen's compiled trees and calibrated bounds (serve/bounds.py). Every
 * argument is validated here: no input makes these read or write out of bounds. */
#include "native.h" /* Python.h: also stdint.h, stdlib.h, string.h */
#include <dlfcn.h>
#include <math.h>

enum kind { LAG, MEAN, STD, MIN, MAX, DELTA, DIFF, EWM, LAST_OVER_MEAN, LAST_MINUS_MEDIAN,
            MEDIAN, MEDIAN3, N_KINDS }; /* core/features.py's kernel codes, same order */
enum { B_KIND, B_OFFSET, B_COL, B_COUNT, B_ARG0, B_ARG1, B_FIELDS }; /* KernelLayout.blocks */
static void release(Py_buffer *a, int n) { while (n--) if (a[n].obj) PyBuffer_Release(&a[n]); }
/* o[i] as a C-contiguous buffer of dims[i] dims of element type types[i] ('d', 'f' or 'q');
 * those from index `writable` on are outputs. On error, nothing is held. */
static int get_arrays(PyObject **o, Py_buffer *a, int n, const char **names, const char *types,
                      const int *dims, int writable) {
    for (int i = 0; i < n; i++) {
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (i >= writable ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(o[i], &a[i], flags) < 0) return release(a, n), -1;
        const char *f = a[i].format + (strchr("@=<", *a[i].format) && *a[i].format);
        char got = (*f == 'l' && a[i].itemsize == 8) ? 'q' : *f;
        if (a[i].ndim != dims[i] || got != types[i] || f[1] != '\0' ||
            a[i].itemsize != (types[i] == 'f' ? 4 : 8))
            return release(a, n), PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous %d-d "
                "%s array", names[i], dims[i], types[i] == 'd' ? "float64" : types[i] == 'f' ?
                "float32" : "int64"), -1;
    }
    return 0;
}
static int in_range(const int64_t *x, int64_t n, int64_t low, int64_t high) {
    for (int64_t i = 0; i < n; i++) if (x[i] < low || x[i] >= high) return 0;
    return 1;
}
/* np.minimum / np.maximum: NaN in either operand gives NaN. */
static double lo(double a, double b) { return (a < b || a != a) ? a : b; }
static double hi(double a, double b) { return (a > b || a != a) ? a : b; }
static double remainder_(double a, double b) { /* np.remainder for doubles */
    double mod = fmod(a, b);
    return !mod ? copysign(0.0, b) : ((b < 0) != (mod < 0)) ? mod + b : mod;
}
/* Sequential mean of column j over the window, as the reference's reduction runs. */
static double mean_of(const double *win, int64_t w, int64_t c, int64_t j) {
    double total = win[j];
    for (int64_t i = 1; i < w; i++) total += win[i * c + j];
    return total / (double)w;
}
/* np.median of column j (NaN if any is); insertion sort (short windows) into scratch. */
static double median_of(const double *win, int64_t w, int64_t c, int64_t j, double *scratch) {
    for (int64_t i = 0, k; i < w; i++) {
        double v = win[i * c + j];
        if (v != v) return v;
        for (k = i; k > 0 && scratch[k - 1] > v; k--) scratch[k] = scratch[k - 1];
        scratch[k] = v;
    }
    return (w % 2) ? scratch[w / 2] : (scratch[w / 2 - 1] + scratch[w / 2]) / 2;
}
/* Feature of column j (t-th of block b) of the clipped window: one line per kind. */
static double feature(const int64_t *b, const double *win, int64_t w, int64_t c, int64_t j,
                      int64_t t, const double *params, double *scratch) {
    const double *end = win + (w - 1) * c; /* the last row */
    double last = end[j], v, m, x, y;
    switch (b[B_KIND]) {
    case MEAN: return mean_of(win, w, c, j);
    case STD:
        m = mean_of(win, w, c, j), v = (win[j] - m) * (win[j] - m);
        for (int64_t i = 1; i < w; i++) v += (win[i * c + j] - m) * (win[i * c + j] - m);
        return sqrt(v / (double)w);
    case MIN: case MAX:
        v = win[j];
        for (int64_t i = 1; i < w; i++)
            v = b[B_KIND] == MIN ? lo(win[i * c + j], v) : hi(win[i * c + j], v);
        return v;
    case DELTA: return last - win[j];
    case DIFF: /* rows back from the last, clamped to the window */
        return end[j - (b[B_ARG0] < w - 1 ? b[B_ARG0] : w - 1) * c] -
               end[j - (b[B_ARG1] < w - 1 ? b[B_ARG1] : w - 1) * c];
    case EWM:
        v = win[j] * params[b[B_ARG0]];
        for (int64_t i = 1; i < w; i++) v += win[i * c + j] * params[b[B_ARG0] + i];
        return v;
    case LAST_OVER_MEAN: return last / hi(mean_of(win, w, c, j), params[b[B_ARG0] + t]);
    case LAST_MINUS_MEDIAN: return last - median_of(win, w, c, j, scratch);
    case MEDIAN: return median_of(win, w, c, j, scratch);
    default: /* MEDIAN3 */
        if (w < 3) return w == 1 ? last : (win[j] + last) / 2;
        x = end[j - 2 * c], y = end[j - c];
        return hi(lo(x, y), lo(hi(x, y), last));
    }
}
/* Whether every block fits the columns, parameters and output width of the call. */
static int layout_fits(const int64_t *blocks, int64_t n_blocks, const int64_t *cols,
                       int64_t n_cols, int64_t n_params, int64_t c, int64_t w, int64_t width) {
    if (!in_range(cols, n_cols, 0, c)) return 0;
    for (const int64_t *b = blocks; b < blocks + n_blocks * B_FIELDS; b += B_FIELDS) {
        if (b[B_KIND] < 0 || b[B_KIND] >= N_KINDS || b[B_COL] < 0 || b[B_COUNT] < 0 ||
            b[B_COL] > n_cols - b[B_COUNT] || b[B_OFFSET] < 0)
            return 0;
        int64_t span = b[B_KIND] == LAG ? w : 1;
        int64_t need = b[B_KIND] == EWM ? w : b[B_KIND] == LAST_OVER_MEAN ? b[B_COUNT] : 0;
        if ((b[B_COUNT] > 0 && span > (width - b[B_OFFSET]) / b[B_COUNT]) ||
            (b[B_KIND] == DIFF && (b[B_ARG0] < 0 || b[B_ARG1] < 0)) ||
            (need && (b[B_ARG0] < 0 || b[B_ARG0] > n_params - need)))
            return 0;
    }
    return 1;
}
static PyObject *lte_features(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *o[9];
    long long w, step_ns;
    if (!PyArg_ParseTuple(args, "OOOOOOOLLOO:lte_features", &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &o[6], &w, &step_ns, &o[7], &o[8]))
        return NULL;
    static const char *names[] = {"values", "ends", "times", "caps", "blocks", "columns",
                                  "params", "out", "phases"}, types[] = "dqqdqqdfd";
    static const int dims[] = {2, 1, 1, 1, 2, 1, 1, 2, 2};
    Py_buffer a[9] = {{0}};
    if (get_arrays(o, a, 9, names, types, dims, 7) < 0) return NULL;
    const double *values = a[0].buf, *caps = a[3].buf, *params = a[6].buf;
    const int64_t *ends = a[1].buf, *times = a[2].buf, *blocks = a[4].buf, *cols = a[5].buf;
    int64_t n_rows = a[0].shape[0], c = a[0].shape[1], n = a[1].shape[0], width = a[7].shape[1];
    const char *error = NULL;
    if (w < 1 || a[2].shape[0] != n_rows || a[3].shape[0] != c)
        error = "window must be >= 1, times and caps must match the rows and columns of values";
    else if (a[4].shape[1] != B_FIELDS) error = "blocks must have 6 fields per row";
    else if (a[7].shape[0] != n || a[8].shape[0] != n || a[8].shape[1] != 3)
        error = "out must be (len(ends), width) and phases (len(ends), 3)";
    else if (!layout_fits(blocks, a[4].shape[0], cols, a[5].shape[0], a[6].shape[0], c, w, width))
        error = "the layout does not fit the columns, parameters or output width";
    else if (!in_range(ends, n, w, n_rows + 1)) error = "window ends out of range for the series";
    /* With a window end, w <= n_rows: the scratch is bounded by the values array. */
    double *win = (error == NULL && n > 0) ? malloc(sizeof(double) * (size_t)(w * c + w)) : NULL;
    if (error != NULL || (n > 0 && win == NULL))
        return release(a, 9),
               error ? (PyErr_SetString(PyExc_ValueError, error), NULL) : PyErr_NoMemory();
    static const double periods[3] = {86400.0, 604800.0, 31557600.0}, offsets[3] = {0, 259200, 0};
    for (int64_t s = 0; s < n; s++) {
        const double *rows = values + (ends[s] - w) * c;
        for (int64_t i = 0; i < w * c; i++) win[i] = lo(rows[i], caps[i % c]);
        float *row = (float *)a[7].buf + s * width;
        for (const int64_t *b = blocks; b < blocks + a[4].shape[0] * B_FIELDS; b += B_FIELDS)
            for (int64_t t = 0; t < b[B_COUNT]; t++) {
                int64_t j = cols[b[B_COL] + t];
                if (b[B_KIND] != LAG)
                    row[b[B_OFFSET] + t] = (float)feature(b, win, w, c, j, t, params, win + w * c);
                else
                    for (int64_t i = 0; i < w; i++)
                        row[b[B_OFFSET] + i * b[B_COUNT] + t] = (float)win[i * c + j];
            }
        /* The first forecast row's time: NumPy's wrapping int64 sum, then seconds. */
        double seconds = (double)(int64_t)((uint64_t)times[ends[s] - 1] + (uint64_t)step_ns) / 1e9;
        for (int p = 0; p < 3; p++)
            ((double *)a[8].buf)[s * 3 + p] =
                6.283185307179586 * remainder_(seconds - offsets[p], periods[p]) / periods[p];
    }
    free(win), release(a, 9);
    return Py_NewRef(Py_None);
}
/* Sum of |min(x[i * stride], cap)| in NumPy's pairwise order (its add.reduce along the
 * contiguous axis, which is the window in the reference's fancy-indexed gather). */
static double pairwise(const double *x, int64_t n, int64_t s, double cap) {
    double r[8] = {0}, res = 0; /* 0 + |v| is |v|: the same as NumPy's r[j] = v[j] */
    int64_t i = 0, half = n / 2 - (n / 2) % 8;
    if (n > 128) return pairwise(x, half, s, cap) + pairwise(x + half * s, n - half, s, cap);
    for (; n >= 8 && i < n - n % 8; i += 8)
        for (int j = 0; j < 8; j++) r[j] += fabs(lo(x[(i + j) * s], cap));
    if (n >= 8) res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += fabs(lo(x[i * s], cap));
    return res;
}
/* Upper bounds as serve/bounds.py's Bounds.upper (the reference): out[q, s, h, k] = point +
 * offset * scale (+ offset unless normalised), scale the window mean of |targets clipped at
 * caps| + floor, offset table[which[q], h, k, bin], bin the number of edges[h, k] <= (point -
 * last clipped target) / scale. -1, or the first window whose scale is not finite and > 0. */
static PyObject *lte_bounds(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *o[10];
    long long w = 0;
    int normalised = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOLpO:lte_bounds", &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &o[6], &o[7], &o[8], &w, &normalised, &o[9]))
        return NULL;
    static const char *names[] = {"point", "values", "ends", "targets", "caps", "floor",
                                  "edges", "table", "which", "out"}, types[] = "ddqqddddqd";
    static const int dims[] = {3, 2, 1, 1, 1, 1, 3, 4, 1, 4};
    Py_buffer a[10] = {{0}};
    if (get_arrays(o, a, 10, names, types, dims, 9) < 0) return NULL;
    const double *point = a[0].buf, *values = a[1].buf, *caps = a[4].buf, *floor_ = a[5].buf,
                 *edges = a[6].buf, *table = a[7].buf;
    const int64_t *ends = a[2].buf, *targets = a[3].buf, *which = a[8].buf;
    double *out = a[9].buf;
    const Py_ssize_t *ps = a[0].shape, *es = a[6].shape, *ts = a[7].shape, *os = a[9].shape;
    int64_t n = ps[0], h_ = ps[1], k_ = ps[2], c = a[1].shape[1], e = es[2], q_ = os[0], bad = -1;
    const char *error = NULL;
    if (a[2].shape[0] != n || a[3].shape[0] != k_ || a[4].shape[0] != k_ ||
        a[5].shape[0] != k_ || es[0] != h_ || es[1] != k_ || ts[1] != h_ || ts[2] != k_ ||
        ts[3] != e + 1 || a[8].shape[0] != q_ || os[1] != n || os[2] != h_ || os[3] != k_)
        error = "shapes differ: point (N, H, K), ends (N,), targets, caps, floor (K,), edges "
                "(H, K, E), table (L, H, K, E + 1), which (Q,), out (Q, N, H, K)";
    else if (w < 1 || !in_range(ends, n, w, a[1].shape[0] + 1) || !in_range(targets, k_, 0, c) ||
             !in_range(which, q_, 0, ts[0]))
        error = "window (>= 1), window ends, target columns or levels out of range";
    for (int64_t s = 0; error == NULL && bad < 0 && s < n; s++)
        for (int64_t k = 0; k < k_; k++) {
            const double *col = values + (ends[s] - w) * c + targets[k];
            double last = lo(col[(w - 1) * c], caps[k]);
            double scale = pairwise(col, w, c, caps[k]) / (double)w + floor_[k];
            if (normalised && !(scale > 0 && scale < INFINITY)) { bad = s; break; }
            double by = normalised ? scale : 1.0; /* offset * 1.0 is offset, NaN and inf too */
            for (int64_t h = 0; h < h_; h++) {
                int64_t cell = (s * h_ + h) * k_ + k, hk = h * k_ + k, bin = 0;
                double p = point[cell], change = (p - last) / scale;
                for (int64_t j = 0; j < e; j++) bin += change >= edges[hk * e + j];
                for (int64_t q = 0; q < q_; q++)
                    out[q * n * h_ * k_ + cell] =
                        p + table[(which[q] * h_ * k_ + hk) * (e + 1) + bin] * by;
            }
        }
    release(a, 10);
    if (error != NULL) return PyErr_SetString(PyExc_ValueError, error), NULL;
    return PyLong_FromLongLong(bad);
}
/* A TL2cgen-generated library: predict() over rows of union Entry (ABI of TL2cgen 1.0). */
union entry { int missing; float fvalue; int qvalue; };
typedef void (*predict_fn)(union entry *row, int pred_margin, float *result);
typedef struct { void *handle; predict_fn predict; int64_t num_feature; } trees;
static const char TREES[] = "slocast._native.trees";
static void trees_free(PyObject *capsule) {
    trees *t = PyCapsule_GetPointer(capsule, TREES); dlclose(t->handle), free(t);
}
static PyObject *load_trees(PyObject *Py_UNUSED(self), PyObject *args) {
    const char *path;
    if (!PyArg_ParseTuple(args, "s:load_trees", &path)) return NULL;
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) return PyErr_Format(PyExc_OSError, "cannot load %s: %s", path, dlerror());
    typedef int32_t (*int_fn)(void);
    typedef const char *(*str_fn)(void);
    int_fn targets = (int_fn)dlsym(handle, "get_num_target");
    int_fn features = (int_fn)dlsym(handle, "get_num_feature");
    str_fn threshold = (str_fn)dlsym(handle, "get_threshold_type");
    str_fn leaf = (str_fn)dlsym(handle, "get_leaf_output_type");
    void *predict = dlsym(handle, "predict");
    trees *t = malloc(sizeof(trees));
    if (!predict || !targets || !features || !threshold || !leaf || t == NULL || targets() != 1 ||
        strcmp(threshold(), "float32") || strcmp(leaf(), "float32"))
        return dlclose(handle), free(t), PyErr_Format(PyExc_ValueError, "%s: not a "
                                                      "single-output float32 TL2cgen model", path);
    *t = (trees){handle, (predict_fn)(uintptr_t)predict, features()};
    PyObject *capsule = PyCapsule_New(t, TREES, trees_free);
    if (capsule == NULL) dlclose(handle), free(t);
    return capsule;
}
/* out[r, f] = raw output of library f on row r of x, as TL2cgen's PredictBatch gives it
 * (NaN is "missing", each result starts at zero, no margin transform). */
static PyObject *predict_trees(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *libs, *xo, *oo, *kind = PyExc_ValueError;
    if (!PyArg_ParseTuple(args, "O!OO:predict_trees", &PyTuple_Type, &libs, &xo, &oo))
        return NULL;
    Py_buffer a[2] = {{0}};
    if (get_arrays((PyObject *[]){xo, oo}, a, 2, (const char *[]){"x", "out"}, "ff",
                   (const int[]){2, 2}, 1) < 0)
        return NULL;
    int64_t rows = a[0].shape[0], width = a[0].shape[1], n_fn = PyTuple_GET_SIZE(libs);
    const char *error = NULL;
    if (a[1].shape[0] != rows || a[1].shape[1] != n_fn)
        error = "out must be (rows of x, number of libraries)";
    size_t bytes = sizeof(predict_fn) * (size_t)n_fn + sizeof(union entry) * (size_t)(width + 1);
    predict_fn *fns = malloc(bytes); /* the predict() of every library, then a row of entries */
    for (int64_t f = 0; fns != NULL && error == NULL && f < n_fn; f++) {
        trees *t = PyCapsule_GetPointer(PyTuple_GET_ITEM(libs, f), TREES);
        if (t == NULL) kind = PyExc_TypeError, error = "libraries must come from load_trees";
        else if (t->num_feature > width) error = "x has fewer columns than a library reads";
        else fns[f] = t->predict;
    }
    union entry *row = fns != NULL ? (union entry *)(fns + n_fn) : NULL;
    for (int64_t r = 0; row != NULL && error == NULL && r < rows; r++) {
        const float *x = (const float *)a[0].buf + r * width;
        float *out = (float *)a[1].buf + r * n_fn;
        for (int64_t j = 0; j < width; j++)
            if (isnan(x[j])) row[j].missing = -1; else row[j].fvalue = x[j];
        for (int64_t f = 0; f < n_fn; f++) out[f] = 0.0f, fns[f](row, 0, &out[f]);
    }
    free(fns), release(a, 2);
    if (error != NULL) return PyErr_Clear(), PyErr_SetString(kind, error), NULL;
    return fns == NULL ? PyErr_NoMemory() : Py_NewRef(Py_None);
}
PyMethodDef slocast_lte_methods[] = {
    {"lte_features", lte_features, METH_VARARGS, "lte_features(values, ends, times, caps, "
     "blocks, columns, params, window, step_ns, out, phases): features and calendar phases."},
    {"lte_bounds", lte_bounds, METH_VARARGS, "lte_bounds(point, values, ends, targets, caps, "
     "floor, edges, table, which, window, normalised, out): upper bounds; -1 or a bad window."},
    {"load_trees", load_trees, METH_VARARGS, "load_trees(path): a TL2cgen library's trees."},
    {"predict_trees", predict_trees, METH_VARARGS, "predict_trees(libraries, x, out)."},
    {NULL, NULL, 0, NULL},
};
