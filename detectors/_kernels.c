/* Compiled inner loops of the window tests, the histograms, the segment grouping and the
 * string columns of state records.
 *
 * window_scores(ref, smoothed, props, ref_n, win, out, columns, width, sparse) computes,
 * per column of a (columns, width) window histogram against its reference, what
 * ReferenceTerms.scores in stats.py computes with numpy: the chi-square homogeneity
 * statistic over the bins expected at least `sparse` times in the window (or half the
 * window's events per reference bin, where that is less) and how many of them are used,
 * PSI (window proportions floored per bin, against the reference's floored proportions),
 * the Jensen-Shannon distance (base 2) and the window's size: out is (5, columns), rows
 * chi2, used bins, psi, js, window size (stats.py adds the sparse bins' terms, which take
 * an incomplete beta function, and the degrees of freedom). One pass
 * per column instead of some fifty numpy calls over the whole array; sums run left to
 * right, so results can differ from numpy's (pairwise) sums in the last bits (and the
 * Jensen-Shannon distance of two nearly equal histograms, the square root of rounding
 * noise, by ~1e-8).
 *
 * factorise(keys, first, inverse) numbers the distinct 64-bit keys of an array in order of
 * first sight: first[j] is the row of key j's first sight, inverse[i] the number of row i's
 * key; returns how many distinct keys there are. One open-addressing table, no sort.
 *
 * ascii_column(values) writes a list of str (or None) as serialization.put_strs does: the
 * strings' bytes one after another and each one's length (-1 for None), in one pass over
 * the list; None when a value is neither None nor an ASCII str (the caller encodes those).
 *
 * bin_counts(bins, block, out, rows, columns, width, first, blocks) counts a batch's bin
 * indices, (rows, columns), into out, (blocks, columns, width): out[b, c, bins[i, c]] for
 * every row i whose block[i] - first is b in [0, blocks) (block None: every row, in block
 * 0). What binning.block_histograms computes with numpy (a bincount over
 * shifted indices), in one pass and no temporary arrays; exact. A bin index outside
 * [0, width) raises ValueError (out is then partly counted).
 *
 * hex_column(values) packs a list of str of one even length, lowercase hex digits only
 * (uuid4().hex ids), as their bytes: half the size; None for anything else (an empty list,
 * a None, another length, an upper-case or non-hex character: such a column is written as
 * ascii_column writes it).
 *
 * uuid_column(values) does the same for canonical lowercase UUID strings
 * (str(uuid.uuid4()): 8-4-4-4-12 hex digits with dashes between), 16 bytes each.
 *
 * range_counts(values, lo, hi, rows, out, n, columns) counts, per column c, the given
 * rows i of values (n, columns) whose value is below lo[c] or above hi[c] (NaN is
 * neither), adding into out (columns,): the out-of-range counts of a pane's rows
 * (quality.DataQuality.sums) in one pass, without per-row flags; exact. A row index
 * outside [0, n) raises ValueError (out is then partly counted).
 *
 * Arrays are passed as C-contiguous buffers (numpy arrays); the callers check dtypes
 * and shapes, the functions check sizes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define EPS 1e-4 /* PSI's floor per bin (stats._EPS) */

/* A read-only (or writable) C-contiguous buffer of exactly `size` bytes. */
static int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t size, int writable,
                      const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->len != size) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, not %zd", name, view->len, size);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* x * log(x / y) as scipy.special.rel_entr. */
static inline double rel_entr(double x, double y) {
    if (isnan(x) || isnan(y)) return NAN;
    if (x > 0 && y > 0) return x * log(x / y);
    if (x == 0 && y >= 0) return 0.0;
    return INFINITY;
}

static void column_scores(const double *r, const double *ps, const double *p, double nr,
                          const double *w, Py_ssize_t width, double sparse, double *chi2,
                          double *used_bins, double *psi, double *js, double *win_n) {
    double nw = 0.0;
    Py_ssize_t in_ref = 0;
    for (Py_ssize_t b = 0; b < width; b++) {
        nw += w[b];
        in_ref += r[b] > 0;
    }
    double k1 = nr > 0 ? sqrt(nw / nr) : 0.0;
    double k2 = nw > 0 ? sqrt(nr / nw) : 0.0;
    /* sparse: expected fewer than `sparse` times, or than half the window's events per
     * reference bin where that is less (stats._sparse_below) */
    double half = 0.5 * nw / (double)(in_ref > 1 ? in_ref : 1);
    double cut = (sparse < half ? sparse : half) * nr;
    double stat = 0.0, floored = 0.0;
    Py_ssize_t used = 0;
    for (Py_ssize_t b = 0; b < width; b++) {
        if (r[b] * nw < cut) {
            /* expected fewer than `sparse` times: its own exact term, in stats.py */
        } else if (r[b] + w[b] > 0) {
            double t = k1 * r[b] - k2 * w[b];
            stat += t * t / (r[b] + w[b]);
            used++;
        }
        floored += (nw > 0 ? w[b] / nw : 0.0) + EPS;
    }
    *used_bins = (double)used;
    *chi2 = stat;
    *win_n = nw;
    double s_psi = 0.0, s_p = 0.0, s_q = 0.0;
    for (Py_ssize_t b = 0; b < width; b++) {
        double q = nw > 0 ? w[b] / nw : 0.0;
        double qf = (q + EPS) / floored;
        s_psi += (qf - ps[b]) * log(qf / ps[b]);
        double m = 0.5 * (p[b] + q);
        s_p += rel_entr(p[b], m);
        s_q += rel_entr(q, m);
    }
    *psi = s_psi;
    double v = (0.5 * s_p + 0.5 * s_q) / log(2.0);
    if (isnan(v)) {
        *js = NAN;
    } else {
        v = v < 0.0 ? 0.0 : (v > 1.0 ? 1.0 : v);
        *js = sqrt(v);
    }
}

static PyObject *window_scores(PyObject *self, PyObject *args) {
    PyObject *o_ref, *o_ps, *o_p, *o_nr, *o_win, *o_out;
    Py_ssize_t columns, width;
    double sparse;
    if (!PyArg_ParseTuple(args, "OOOOOOnnd", &o_ref, &o_ps, &o_p, &o_nr, &o_win, &o_out,
                          &columns, &width, &sparse))
        return NULL;
    /* every size below (columns * width * 8, 5 * columns * 8) without overflow */
    if (columns < 0 || width < 0 || columns > PY_SSIZE_T_MAX / 64 ||
        (width && columns > PY_SSIZE_T_MAX / 8 / width)) {
        PyErr_SetString(PyExc_ValueError, "bad shape");
        return NULL;
    }
    Py_ssize_t cells = columns * width * (Py_ssize_t)sizeof(double);
    Py_buffer ref, ps, p, nr, win, out;
    if (get_buffer(o_ref, &ref, cells, 0, "ref") < 0) return NULL;
    if (get_buffer(o_ps, &ps, cells, 0, "smoothed") < 0) goto fail_ref;
    if (get_buffer(o_p, &p, cells, 0, "props") < 0) goto fail_ps;
    if (get_buffer(o_nr, &nr, columns * (Py_ssize_t)sizeof(double), 0, "ref_n") < 0)
        goto fail_p;
    if (get_buffer(o_win, &win, cells, 0, "win") < 0) goto fail_nr;
    if (get_buffer(o_out, &out, 5 * columns * (Py_ssize_t)sizeof(double), 1, "out") < 0)
        goto fail_win;
    const double *R = ref.buf, *PS = ps.buf, *P = p.buf, *NR = nr.buf, *W = win.buf;
    double *O = out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t c = 0; c < columns; c++) {
        Py_ssize_t at = c * width;
        column_scores(R + at, PS + at, P + at, NR[c], W + at, width, sparse, O + c,
                      O + columns + c, O + 2 * columns + c, O + 3 * columns + c,
                      O + 4 * columns + c);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    PyBuffer_Release(&win);
    PyBuffer_Release(&nr);
    PyBuffer_Release(&p);
    PyBuffer_Release(&ps);
    PyBuffer_Release(&ref);
    Py_RETURN_NONE;
fail_win:
    PyBuffer_Release(&win);
fail_nr:
    PyBuffer_Release(&nr);
fail_p:
    PyBuffer_Release(&p);
fail_ps:
    PyBuffer_Release(&ps);
fail_ref:
    PyBuffer_Release(&ref);
    return NULL;
}

static inline uint64_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
}

static PyObject *factorise(PyObject *self, PyObject *args) {
    PyObject *o_keys, *o_first, *o_inv;
    if (!PyArg_ParseTuple(args, "OOO", &o_keys, &o_first, &o_inv)) return NULL;
    Py_buffer keys, first, inv;
    if (PyObject_GetBuffer(o_keys, &keys, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (keys.len % 8) {
        PyErr_SetString(PyExc_ValueError, "keys must be 64-bit");
        PyBuffer_Release(&keys);
        return NULL;
    }
    if (get_buffer(o_first, &first, keys.len, 1, "first") < 0) {
        PyBuffer_Release(&keys);
        return NULL;
    }
    if (get_buffer(o_inv, &inv, keys.len, 1, "inverse") < 0) {
        PyBuffer_Release(&first);
        PyBuffer_Release(&keys);
        return NULL;
    }
    Py_ssize_t n = keys.len / 8, k = 0;
    const uint64_t *K = keys.buf;
    int64_t *F = first.buf, *I = inv.buf;
    size_t size = 64;
    while (size < 2 * (size_t)n && size < ((size_t)1 << 12)) size *= 2; /* grows as needed */
    int64_t *table = PyMem_Malloc(size * sizeof(int64_t)); /* code of the key, -1: empty */
    if (table == NULL) goto nomem;
    memset(table, 0xff, size * sizeof(int64_t));
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t key = K[i];
        size_t mask = size - 1, j = (size_t)mix(key) & mask;
        int64_t code;
        while ((code = table[j]) >= 0 && K[F[code]] != key) j = (j + 1) & mask;
        if (code < 0) {
            code = k++;
            F[code] = i;
            table[j] = code;
            if ((size_t)k * 2 > size) { /* rehash into a table twice the size */
                size_t bigger = size * 2;
                if (bigger > (size_t)PY_SSIZE_T_MAX / sizeof(int64_t)) goto nomem;
                int64_t *t = PyMem_Malloc(bigger * sizeof(int64_t));
                if (t == NULL) goto nomem;
                memset(t, 0xff, bigger * sizeof(int64_t));
                for (int64_t c = 0; c < k; c++) {
                    size_t h = (size_t)mix(K[F[c]]) & (bigger - 1);
                    while (t[h] >= 0) h = (h + 1) & (bigger - 1);
                    t[h] = c;
                }
                PyMem_Free(table);
                table = t;
                size = bigger;
            }
        }
        I[i] = code;
    }
    PyMem_Free(table);
    PyBuffer_Release(&inv);
    PyBuffer_Release(&first);
    PyBuffer_Release(&keys);
    return PyLong_FromSsize_t(k);
nomem:
    PyMem_Free(table);
    PyBuffer_Release(&inv);
    PyBuffer_Release(&first);
    PyBuffer_Release(&keys);
    return PyErr_NoMemory();
}

static PyObject *ascii_column(PyObject *self, PyObject *values) {
    if (!PyList_CheckExact(values)) {
        PyErr_SetString(PyExc_TypeError, "values must be a list");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(values), total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (v == Py_None) continue;
        if (!PyUnicode_CheckExact(v) || PyUnicode_READY(v) < 0 || !PyUnicode_IS_ASCII(v)) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        total += PyUnicode_GET_LENGTH(v);
    }
    if (n > PY_SSIZE_T_MAX / 8) return PyErr_NoMemory();
    PyObject *raw = PyBytes_FromStringAndSize(NULL, total);
    if (raw == NULL) return NULL;
    PyObject *lens = PyBytes_FromStringAndSize(NULL, n * 8);
    if (lens == NULL) {
        Py_DECREF(raw);
        return NULL;
    }
    char *out = PyBytes_AS_STRING(raw);
    int64_t *len = (int64_t *)PyBytes_AS_STRING(lens);
    for (Py_ssize_t i = 0; i < n; i++) { /* no Python code runs: the list is as counted */
        PyObject *v = PyList_GET_ITEM(values, i);
        if (v == Py_None) {
            len[i] = -1;
            continue;
        }
        Py_ssize_t k = PyUnicode_GET_LENGTH(v);
        memcpy(out, PyUnicode_DATA(v), (size_t)k);
        out += k;
        len[i] = k;
    }
    return Py_BuildValue("(NN)", raw, lens);
}

static PyObject *bin_counts(PyObject *self, PyObject *args) {
    PyObject *o_bins, *o_block, *o_out;
    Py_ssize_t rows, columns, width, first, blocks;
    if (!PyArg_ParseTuple(args, "OOOnnnnn", &o_bins, &o_block, &o_out, &rows, &columns,
                          &width, &first, &blocks))
        return NULL;
    /* every size below (rows * columns * 8, rows * 8, blocks * columns * width * 8)
       without overflow */
    if (rows < 0 || columns < 0 || width < 0 || blocks < 0 || rows > PY_SSIZE_T_MAX / 8 ||
        (columns && rows > PY_SSIZE_T_MAX / 8 / columns) ||
        (width && columns > PY_SSIZE_T_MAX / 8 / width) ||
        (columns * width && blocks > PY_SSIZE_T_MAX / 8 / (columns * width))) {
        PyErr_SetString(PyExc_ValueError, "bad shape");
        return NULL;
    }
    Py_ssize_t cells = columns * width;
    if (columns == 0) rows = 0; /* nothing to count (and no buffer bounds rows) */
    Py_buffer bins, block, out;
    int has_block = o_block != Py_None;
    if (get_buffer(o_bins, &bins, rows * columns * 8, 0, "bins") < 0) return NULL;
    if (has_block && get_buffer(o_block, &block, rows * 8, 0, "block") < 0) {
        PyBuffer_Release(&bins);
        return NULL;
    }
    if (get_buffer(o_out, &out, blocks * cells * 8, 1, "out") < 0) {
        if (has_block) PyBuffer_Release(&block);
        PyBuffer_Release(&bins);
        return NULL;
    }
    const int64_t *X = bins.buf, *B = has_block ? block.buf : NULL;
    int64_t *O = out.buf;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < rows && !bad; i++) {
        /* unsigned: a block before first wraps past blocks, and nothing overflows */
        uint64_t b = B ? (uint64_t)B[i] - (uint64_t)first : 0;
        if (b >= (uint64_t)blocks) continue;
        const int64_t *x = X + i * columns;
        int64_t *o = O + (Py_ssize_t)b * cells;
        for (Py_ssize_t c = 0; c < columns; c++) {
            uint64_t v = (uint64_t)x[c];
            if (v >= (uint64_t)width) {
                bad = 1;
                break;
            }
            o[c * width + (Py_ssize_t)v]++;
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    if (has_block) PyBuffer_Release(&block);
    PyBuffer_Release(&bins);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "a bin index outside [0, width)");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *range_counts(PyObject *self, PyObject *args) {
    PyObject *o_values, *o_lo, *o_hi, *o_rows, *o_out;
    Py_ssize_t n, columns;
    if (!PyArg_ParseTuple(args, "OOOOOnn", &o_values, &o_lo, &o_hi, &o_rows, &o_out, &n,
                          &columns))
        return NULL;
    if (n < 0 || columns < 0 || columns > PY_SSIZE_T_MAX / 8 ||
        (columns && n > PY_SSIZE_T_MAX / 8 / columns)) {
        PyErr_SetString(PyExc_ValueError, "bad shape");
        return NULL;
    }
    Py_buffer values, lo, hi, rows, out;
    if (get_buffer(o_values, &values, n * columns * 8, 0, "values") < 0) return NULL;
    if (get_buffer(o_lo, &lo, columns * 8, 0, "lo") < 0) goto lo_failed;
    if (get_buffer(o_hi, &hi, columns * 8, 0, "hi") < 0) goto hi_failed;
    if (PyObject_GetBuffer(o_rows, &rows, PyBUF_C_CONTIGUOUS) < 0) goto rows_failed;
    if (rows.len % 8) {
        PyErr_SetString(PyExc_ValueError, "rows must be int64");
        goto out_failed;
    }
    if (get_buffer(o_out, &out, columns * 8, 1, "out") < 0) goto out_failed;
    const double *X = values.buf, *L = lo.buf, *H = hi.buf;
    const int64_t *R = rows.buf;
    int64_t *O = out.buf;
    Py_ssize_t k = rows.len / 8;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < k; j++) {
        if ((uint64_t)R[j] >= (uint64_t)n) {
            bad = 1;
            break;
        }
        const double *x = X + R[j] * columns;
        for (Py_ssize_t c = 0; c < columns; c++) O[c] += (x[c] < L[c]) | (x[c] > H[c]);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&hi);
    PyBuffer_Release(&lo);
    PyBuffer_Release(&values);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "a row index outside [0, n)");
        return NULL;
    }
    Py_RETURN_NONE;
out_failed:
    PyBuffer_Release(&rows);
rows_failed:
    PyBuffer_Release(&hi);
hi_failed:
    PyBuffer_Release(&lo);
lo_failed:
    PyBuffer_Release(&values);
    return NULL;
}

/* 0-15 for '0'-'9' and 'a'-'f', 0xff for every other byte. */
static unsigned char hex_value[256];

static void init_hex_value(void) {
    memset(hex_value, 0xff, sizeof hex_value);
    for (int c = 0; c < 10; c++) hex_value['0' + c] = (unsigned char)c;
    for (int c = 0; c < 6; c++) hex_value['a' + c] = (unsigned char)(10 + c);
}

static PyObject *hex_column(PyObject *self, PyObject *values) {
    if (!PyList_CheckExact(values)) {
        PyErr_SetString(PyExc_TypeError, "values must be a list");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(values), width = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (!PyUnicode_CheckExact(v) || PyUnicode_READY(v) < 0 || !PyUnicode_IS_ASCII(v)) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        Py_ssize_t k = PyUnicode_GET_LENGTH(v);
        if (width < 0) width = k;
        if (k != width || k == 0 || k % 2) Py_RETURN_NONE;
    }
    if (n == 0) Py_RETURN_NONE;
    if (n > PY_SSIZE_T_MAX / (width / 2)) return PyErr_NoMemory();
    PyObject *raw = PyBytes_FromStringAndSize(NULL, n * (width / 2));
    if (raw == NULL) return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(raw);
    for (Py_ssize_t i = 0; i < n; i++) { /* no Python code runs: the list is as checked */
        const unsigned char *c = PyUnicode_1BYTE_DATA(PyList_GET_ITEM(values, i));
        unsigned char bad = 0;
        for (Py_ssize_t j = 0; j < width; j += 2) {
            unsigned char hi = hex_value[c[j]], lo = hex_value[c[j + 1]];
            bad |= (unsigned char)(hi | lo);
            *out++ = (unsigned char)(hi << 4 | (lo & 0x0f));
        }
        if (bad & 0xf0) {
            Py_DECREF(raw);
            Py_RETURN_NONE;
        }
    }
    return raw;
}

/* Offsets of the 32 hex digits in a canonical UUID string (8-4-4-4-12, dashes between). */
static const unsigned char uuid_digit[32] = {0,  1,  2,  3,  4,  5,  6,  7,  9,  10, 11,
                                             12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25,
                                             26, 27, 28, 29, 30, 31, 32, 33, 34, 35};

static PyObject *uuid_column(PyObject *self, PyObject *values) {
    if (!PyList_CheckExact(values)) {
        PyErr_SetString(PyExc_TypeError, "values must be a list");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(values);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (!PyUnicode_CheckExact(v) || PyUnicode_READY(v) < 0 || !PyUnicode_IS_ASCII(v) ||
            PyUnicode_GET_LENGTH(v) != 36) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    if (n == 0) Py_RETURN_NONE;
    if (n > PY_SSIZE_T_MAX / 16) return PyErr_NoMemory();
    PyObject *raw = PyBytes_FromStringAndSize(NULL, n * 16);
    if (raw == NULL) return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(raw);
    for (Py_ssize_t i = 0; i < n; i++) { /* no Python code runs: the list is as checked */
        const unsigned char *c = PyUnicode_1BYTE_DATA(PyList_GET_ITEM(values, i));
        unsigned char bad = 0;
        for (int j = 0; j < 32; j += 2) {
            unsigned char hi = hex_value[c[uuid_digit[j]]], lo = hex_value[c[uuid_digit[j + 1]]];
            bad |= (unsigned char)(hi | lo);
            *out++ = (unsigned char)(hi << 4 | (lo & 0x0f));
        }
        if ((bad & 0xf0) || c[8] != '-' || c[13] != '-' || c[18] != '-' || c[23] != '-') {
            Py_DECREF(raw);
            Py_RETURN_NONE;
        }
    }
    return raw;
}

static PyMethodDef methods[] = {
    {"window_scores", window_scores, METH_VARARGS,
     "window_scores(ref, smoothed, props, ref_n, win, out, columns, width): chi-square, "
     "degrees of freedom, PSI and Jensen-Shannon of each column into out (4, columns)."},
    {"factorise", factorise, METH_VARARGS,
     "factorise(keys, first, inverse) -> k: the distinct 64-bit keys in order of first "
     "sight (first[:k]: their first rows; inverse: each row's number)."},
    {"ascii_column", ascii_column, METH_O,
     "ascii_column(values: list) -> (bytes, int64 lengths as bytes) | None: a list of "
     "ASCII str or None as one byte string and the lengths (-1: None)."},
    {"bin_counts", bin_counts, METH_VARARGS,
     "bin_counts(bins, block, out, rows, columns, width, first, blocks): counts of each "
     "column's bin indices per block of rows into out (blocks, columns, width)."},
    {"range_counts", range_counts, METH_VARARGS,
     "range_counts(values, lo, hi, rows, out, n, columns): per column, the given rows "
     "whose value is below lo or above hi, added into out (columns,)."},
    {"hex_column", hex_column, METH_O,
     "hex_column(values: list) -> bytes | None: a list of str of one even length, "
     "lowercase hex digits only, as their bytes (half the size)."},
    {"uuid_column", uuid_column, METH_O,
     "uuid_column(values: list) -> bytes | None: a list of canonical lowercase UUID "
     "strings (8-4-4-4-12 hex digits with dashes) as their 16 bytes each."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Compiled inner loops of the window tests, the histograms, the segment grouping and the "
    "string columns of state records.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    init_hex_value();
    return PyModule_Create(&module);
}
