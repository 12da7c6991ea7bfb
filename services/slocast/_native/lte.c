/* LTE serving kernels: window features (core/features.py's table, mirrored) and the
 * compiled trees TL2cgen generated, evaluated on the feature matrix in one call. */
#include "native.h"

#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* core/features.py's kernel codes, same order. */
enum kind { LAG, MEAN, STD, MIN, MAX, DELTA, DIFF, EWM, LAST_OVER_MEAN, LAST_MINUS_MEDIAN,
            MEDIAN, MEDIAN3, N_KINDS };
enum { B_KIND, B_OFFSET, B_COL, B_COUNT, B_ARG0, B_ARG1, B_FIELDS };

/* A C-contiguous buffer of `ndim` dims of one element type ('d', 'f' or 'q'). */
static int get_array(PyObject *obj, Py_buffer *b, const char *name, char type, int ndim,
                     int writable) {
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT |
                                       (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *f = b->format;
    if (*f == '@' || *f == '=' || *f == '<') f++;
    char got = (*f == 'l' && b->itemsize == 8) ? 'q' : *f;
    Py_ssize_t size = type == 'f' ? 4 : 8;
    if (b->ndim != ndim || got != type || f[1] != '\0' || b->itemsize != size) {
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous %d-d %s array", name, ndim,
                     type == 'd' ? "float64" : type == 'f' ? "float32" : "int64");
        PyBuffer_Release(b);
        b->obj = NULL;
        return -1;
    }
    return 0;
}

static void release(Py_buffer *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].obj != NULL) PyBuffer_Release(&bufs[i]);
}

/* np.minimum / np.maximum: NaN in either operand gives NaN. */
static double lo(double a, double b) { return (a < b || a != a) ? a : b; }
static double hi(double a, double b) { return (a > b || a != a) ? a : b; }

/* np.remainder for doubles. */
static double remainder_(double a, double b) {
    double mod = fmod(a, b);
    if (mod) {
        if ((b < 0) != (mod < 0)) mod += b;
    } else {
        mod = copysign(0.0, b);
    }
    return mod;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sequential mean of column j over the window (what NumPy's reduction along a
 * non-contiguous axis computes). */
static double mean_of(const double *win, int64_t w, int64_t c, int64_t j) {
    double total = win[j];
    for (int64_t i = 1; i < w; i++) total += win[i * c + j];
    return total / (double)w;
}

/* np.median of column j (NaN if any value is); scratch holds w doubles. */
static double median_of(const double *win, int64_t w, int64_t c, int64_t j, double *scratch) {
    for (int64_t i = 0; i < w; i++) {
        scratch[i] = win[i * c + j];
        if (scratch[i] != scratch[i]) return scratch[i];
    }
    qsort(scratch, (size_t)w, sizeof(double), cmp);
    return (w % 2) ? scratch[w / 2] : (scratch[w / 2 - 1] + scratch[w / 2]) / 2;
}

/* One feature of column j of the clipped window; `block` is one row of the table. */
static double feature(const int64_t *block, const double *win, int64_t w, int64_t c,
                      int64_t j, int64_t t, const double *params, double *scratch) {
    const double *rows_end = win + (w - 1) * c;
    double last = rows_end[j], m, v, sq, a, b;
    switch (block[B_KIND]) {
    case MEAN: return mean_of(win, w, c, j);
    case STD:
        m = mean_of(win, w, c, j);
        sq = (win[j] - m) * (win[j] - m);
        for (int64_t i = 1; i < w; i++) sq += (win[i * c + j] - m) * (win[i * c + j] - m);
        return sqrt(sq / (double)w);
    case MIN: case MAX:
        v = win[j];
        for (int64_t i = 1; i < w; i++)
            v = block[B_KIND] == MIN ? lo(win[i * c + j], v) : hi(win[i * c + j], v);
        return v;
    case DELTA: return last - win[j];
    case DIFF:
        a = rows_end[j - (block[B_ARG0] < w - 1 ? block[B_ARG0] : w - 1) * c];
        b = rows_end[j - (block[B_ARG1] < w - 1 ? block[B_ARG1] : w - 1) * c];
        return a - b;
    case EWM:
        v = win[j] * params[block[B_ARG0]];
        for (int64_t i = 1; i < w; i++) v += win[i * c + j] * params[block[B_ARG0] + i];
        return v;
    case LAST_OVER_MEAN: return last / hi(mean_of(win, w, c, j), params[block[B_ARG0] + t]);
    case LAST_MINUS_MEDIAN: return last - median_of(win, w, c, j, scratch);
    case MEDIAN: return median_of(win, w, c, j, scratch);
    default: /* MEDIAN3 */
        if (w < 3) return w == 1 ? last : (win[j] + last) / 2;
        a = rows_end[j - 2 * c], b = rows_end[j - c];
        return hi(lo(a, b), lo(hi(a, b), last));
    }
}

/* Checks every block against the array sizes so the loop below cannot read or write
 * out of bounds, whatever the caller passed. */
static int check_layout(const int64_t *blocks, Py_ssize_t n_blocks, const int64_t *cols,
                        Py_ssize_t n_cols, Py_ssize_t n_params, int64_t c, int64_t w,
                        int64_t width) {
    for (Py_ssize_t i = 0; i < n_cols; i++)
        if (cols[i] < 0 || cols[i] >= c) return -1;
    for (Py_ssize_t r = 0; r < n_blocks; r++) {
        const int64_t *b = blocks + r * B_FIELDS;
        if (b[B_KIND] < 0 || b[B_KIND] >= N_KINDS || b[B_COL] < 0 || b[B_COUNT] < 0 ||
            b[B_COL] > n_cols - b[B_COUNT] || b[B_OFFSET] < 0)
            return -1;
        int64_t span = b[B_KIND] == LAG ? w : 1;
        if (b[B_COUNT] > 0 && (span > (width - b[B_OFFSET]) / b[B_COUNT])) return -1;
        if (b[B_KIND] == DIFF && (b[B_ARG0] < 0 || b[B_ARG1] < 0)) return -1;
        int64_t need = b[B_KIND] == EWM ? w : b[B_KIND] == LAST_OVER_MEAN ? b[B_COUNT] : 0;
        if (need && (b[B_ARG0] < 0 || b[B_ARG0] > n_params - need)) return -1;
    }
    return 0;
}

static PyObject *lte_features(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[10];
    long long window, step_ns;
    if (!PyArg_ParseTuple(args, "OOOOOOOLLOO:lte_features", &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &o[6], &window, &step_ns, &o[7], &o[8]))
        return NULL;
    static const char *names[] = {"values", "ends", "times", "caps", "blocks", "columns",
                                  "params", "out", "phases"};
    static const char types[] = {'d', 'q', 'q', 'd', 'q', 'q', 'd', 'f', 'd'};
    static const int dims[] = {2, 1, 1, 1, 2, 1, 1, 2, 2};
    Py_buffer bufs[9];
    memset(bufs, 0, sizeof(bufs));
    for (int i = 0; i < 9; i++)
        if (get_array(o[i], &bufs[i], names[i], types[i], dims[i], i >= 7) < 0) {
            release(bufs, 9);
            return NULL;
        }
    const double *values = bufs[0].buf, *caps = bufs[3].buf, *params = bufs[6].buf;
    const int64_t *ends = bufs[1].buf, *times = bufs[2].buf, *blocks = bufs[4].buf,
                  *cols = bufs[5].buf;
    float *out = bufs[7].buf;
    double *phases = bufs[8].buf;
    int64_t n_rows = bufs[0].shape[0], c = bufs[0].shape[1], n = bufs[1].shape[0];
    int64_t width = bufs[7].shape[1], w = window;
    const char *error = NULL;
    if (w < 1) error = "window must be at least 1";
    else if (bufs[2].shape[0] != n_rows) error = "times and values differ in length";
    else if (bufs[3].shape[0] != c) error = "caps must have one value per column";
    else if (bufs[4].shape[1] != B_FIELDS) error = "blocks must have 6 fields per row";
    else if (bufs[7].shape[0] != n || bufs[8].shape[0] != n || bufs[8].shape[1] != 3)
        error = "out must be (len(ends), width) and phases (len(ends), 3)";
    else if (check_layout(blocks, bufs[4].shape[0], cols, bufs[5].shape[0], bufs[6].shape[0],
                          c, w, width) < 0)
        error = "the layout does not fit the columns, parameters or output width";
    for (int64_t s = 0; error == NULL && s < n; s++)
        if (ends[s] < w || ends[s] > n_rows) error = "window ends out of range for the series";
    double *win = NULL;
    if (error == NULL && n > 0) { /* w <= n_rows here: bounded by the values array */
        win = malloc(sizeof(double) * (size_t)(w * c + w));
        if (win == NULL) error = "out of memory";
    }
    if (error != NULL) {
        release(bufs, 9);
        if (strcmp(error, "out of memory") == 0) return PyErr_NoMemory();
        PyErr_SetString(PyExc_ValueError, error);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    double *scratch = win + w * c;
    for (int64_t s = 0; s < n; s++) {
        const double *rows = values + (ends[s] - w) * c;
        for (int64_t i = 0; i < w * c; i++) win[i] = lo(rows[i], caps[i % c]);
        float *row = out + s * width;
        for (Py_ssize_t r = 0; r < bufs[4].shape[0]; r++) {
            const int64_t *b = blocks + r * B_FIELDS;
            const int64_t *bc = cols + b[B_COL];
            for (int64_t t = 0; t < b[B_COUNT]; t++) {
                if (b[B_KIND] == LAG) {
                    for (int64_t i = 0; i < w; i++)
                        row[b[B_OFFSET] + i * b[B_COUNT] + t] = (float)win[i * c + bc[t]];
                } else {
                    row[b[B_OFFSET] + t] = (float)feature(b, win, w, c, bc[t], t, params, scratch);
                }
            }
        }
        /* Wrapping int64 sum, as NumPy's; the conversion back is GCC's modulo. */
        int64_t next = (int64_t)((uint64_t)times[ends[s] - 1] + (uint64_t)step_ns);
        double seconds = (double)next / 1e9;
        static const double periods[3] = {86400.0, 604800.0, 31557600.0};
        static const double offsets[3] = {0.0, 259200.0, 0.0};
        for (int p = 0; p < 3; p++)
            phases[s * 3 + p] =
                6.283185307179586 * remainder_(seconds - offsets[p], periods[p]) / periods[p];
    }
    Py_END_ALLOW_THREADS
    free(win);
    release(bufs, 9);
    Py_RETURN_NONE;
}

/* A TL2cgen-generated library: its predict() over union Entry rows. */
union entry { int missing; float fvalue; int qvalue; };
typedef void (*predict_fn)(union entry *row, int pred_margin, float *result);
typedef struct { void *handle; predict_fn predict; int64_t num_feature; } trees;
static const char TREES[] = "slocast._native.trees";

static void trees_free(PyObject *capsule) {
    trees *t = PyCapsule_GetPointer(capsule, TREES);
    if (t != NULL) { dlclose(t->handle); free(t); }
}

static PyObject *load_trees(PyObject *self, PyObject *args) {
    (void)self;
    const char *path;
    if (!PyArg_ParseTuple(args, "s:load_trees", &path)) return NULL;
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) return PyErr_Format(PyExc_OSError, "cannot load %s: %s", path, dlerror());
    void *predict = dlsym(handle, "predict");
    int32_t (*targets)(void) = (int32_t (*)(void))dlsym(handle, "get_num_target");
    int32_t (*features)(void) = (int32_t (*)(void))dlsym(handle, "get_num_feature");
    const char *(*threshold)(void) = (const char *(*)(void))dlsym(handle, "get_threshold_type");
    const char *(*leaf)(void) = (const char *(*)(void))dlsym(handle, "get_leaf_output_type");
    trees *t = malloc(sizeof(trees));
    if (!predict || !targets || !features || !threshold || !leaf || t == NULL ||
        targets() != 1 || strcmp(threshold(), "float32") || strcmp(leaf(), "float32")) {
        dlclose(handle);
        free(t);
        return PyErr_Format(PyExc_ValueError, "%s: not a single-output float32 TL2cgen model",
                            path);
    }
    t->handle = handle;
    t->num_feature = features();
    *(void **)&t->predict = predict;
    PyObject *capsule = PyCapsule_New(t, TREES, trees_free);
    if (capsule == NULL) { dlclose(handle); free(t); }
    return capsule;
}

/* out[r, f] = raw output of library f on row r of x, as TL2cgen's PredictBatch gives it
 * (NaN is "missing", each result starts at zero, no margin transform). */
static PyObject *predict_trees(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *libs, *xo, *oo;
    if (!PyArg_ParseTuple(args, "O!OO:predict_trees", &PyTuple_Type, &libs, &xo, &oo))
        return NULL;
    Py_ssize_t n_fn = PyTuple_GET_SIZE(libs);
    Py_buffer bufs[2];
    memset(bufs, 0, sizeof(bufs));
    if (get_array(xo, &bufs[0], "x", 'f', 2, 0) < 0 || get_array(oo, &bufs[1], "out", 'f', 2, 1) < 0) {
        release(bufs, 2);
        return NULL;
    }
    int64_t rows = bufs[0].shape[0], width = bufs[0].shape[1];
    predict_fn *fns = malloc(sizeof(predict_fn) * (size_t)(n_fn + 1));
    union entry *row = malloc(sizeof(union entry) * (size_t)(width + 1));
    const char *error = NULL;
    if (fns == NULL || row == NULL) error = "out of memory";
    else if (bufs[1].shape[0] != rows || bufs[1].shape[1] != n_fn)
        error = "out must be (rows of x, number of libraries)";
    for (Py_ssize_t f = 0; error == NULL && f < n_fn; f++) {
        trees *t = PyCapsule_GetPointer(PyTuple_GET_ITEM(libs, f), TREES);
        if (t == NULL) { PyErr_Clear(); error = "libraries must come from load_trees"; }
        else if (t->num_feature > width) error = "x has fewer columns than a library reads";
        else fns[f] = t->predict;
    }
    if (error == NULL) {
        float *out = bufs[1].buf;
        const float *x = bufs[0].buf;
        Py_BEGIN_ALLOW_THREADS
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t j = 0; j < width; j++) {
                if (isnan(x[r * width + j])) row[j].missing = -1;
                else row[j].fvalue = x[r * width + j];
            }
            for (Py_ssize_t f = 0; f < n_fn; f++) {
                out[r * n_fn + f] = 0.0f;
                fns[f](row, 0, &out[r * n_fn + f]);
            }
        }
        Py_END_ALLOW_THREADS
    }
    free(fns);
    free(row);
    release(bufs, 2);
    if (error != NULL) {
        PyErr_SetString(strcmp(error, "libraries must come from load_trees") ? PyExc_ValueError
                                                                            : PyExc_TypeError,
                        error);
        return NULL;
    }
    Py_RETURN_NONE;
}

PyMethodDef slocast_lte_methods[] = {
    {"lte_features", lte_features, METH_VARARGS,
     "lte_features(values, ends, times, caps, blocks, columns, params, window, step_ns, out,"
     " phases): window features of core/features.py's layout into out, calendar phases."},
    {"load_trees", load_trees, METH_VARARGS, "load_trees(path): a TL2cgen library's trees."},
    {"predict_trees", predict_trees, METH_VARARGS,
     "predict_trees(libraries, x, out): raw outputs of every library on every row of x."},
    {NULL, NULL, 0, NULL},
};
