/* Compiled scanner of single InferenceEvents: the common shape, parsed straight into columns.
 *
 * scan(values, partitions, offsets, stamps, max_bytes, max_string, max_model) reads a tuple
 * of raw Kafka values (bytes; partitions and offsets int64, stamps float64 buffers, one item
 * per message) and takes each one that is a single event of the common shape:
 *
 *   a JSON object whose keys are among model, model_version, event_id, ts, features,
 *   prediction, segment, latency_ms, shadow_of, trace_id, outcome (each at most once);
 *   strings printable ASCII without escapes; "model" 1..max_model characters;
 *   "features" an object of JSON numbers whose keys are, in order, those of the first
 *   event taken for the model in this call; ts / prediction / latency_ms numbers or null
 *   (latency >= 0); ids within max_string (shadow_of 1..max_model); outcome "ok"/"error";
 *   segment null or an object of strings (its validation is left to the caller, once
 *   per distinct text); numbers that convert exactly (see number()).
 *
 * Every other message (envelopes, text features, escapes, non-ASCII, any doubt) is left to
 * the Python decoder, which names the reason when it rejects one. What is taken here is a
 * subset of what the Python decoder accepts, with the same row: tests/unit/test_scan.py
 * compares the two on generated messages.
 *
 * Returns (codes, models, segments): codes is int32 per message (the index of its model in
 * models, or -1: not taken); each model is (model, keys, numeric, ts, score, latency,
 * rows, partition, offset, event_id, model_version, segment, shadow_of, trace_id, outcome):
 * float64 column bytes (numeric row-major, n x len(keys)), rows int32 message indices,
 * partition and offset int64, segment int32 codes into segments (-1: none), event_id and
 * model_version lists, the other string columns lists or None when all null; None for a
 * model with no message taken. segments are the distinct segment texts as bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_MODELS 4096
/* Clinger's fast path needs each operation rounded once, to double (not x87 extended) */
#define EXACT_DOUBLES (FLT_EVAL_METHOD == 0)
#define MAX_FEATURES 512 /* Limits.max_features: more are refused by the decoder */
#define MAX_SEGMENTS 1024

typedef struct {
    const char *p;
    Py_ssize_t n;
} Span;

typedef struct {
    char *data;
    Py_ssize_t len, cap; /* bytes */
} Buf;

static int buf_put(Buf *b, const void *src, Py_ssize_t n) {
    if (b->len + n > b->cap) {
        Py_ssize_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        char *d = PyMem_Realloc(b->data, (size_t)cap);
        if (!d) {
            PyErr_NoMemory();
            return -1;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

/* A string column: a list made on its first non-null value (earlier rows None). */
typedef struct {
    PyObject *list;
} StrCol;

static int strcol_add(StrCol *c, PyObject *s, Py_ssize_t row) {
    /* s: a new reference or NULL for null; the column steals s */
    if (!c->list) {
        if (!s) return 0;
        c->list = PyList_New(0);
        if (!c->list) {
            Py_DECREF(s);
            return -1;
        }
        for (Py_ssize_t i = 0; i < row; i++)
            if (PyList_Append(c->list, Py_None) < 0) {
                Py_DECREF(s);
                return -1;
            }
    }
    PyObject *v = s ? s : Py_NewRef(Py_None);
    int rc = PyList_Append(c->list, v);
    Py_DECREF(v);
    return rc;
}

typedef struct {
    int refused; /* a message of it was not taken: Python decodes the model again anyway */
    PyObject *model; /* str */
    Span *keys;
    Py_ssize_t nkeys;
    PyObject *keytuple;
    Py_ssize_t rows;
    Buf numeric, ts, score, lat, idx, part, off, seg;
    StrCol eid, mv, shadow, trace, outcome;
    Span mv_last; /* the last model_version text and its str, reused while it repeats */
    PyObject *mv_obj;
} Model;

/* A set of text spans (open addressing, at most half full; the slot from the high bits of
 * a hash seeded per process, so texts cannot be chosen to collide). Entry i is the i-th
 * span added. */
typedef struct {
    int32_t *slot; /* entry index, -1 empty */
    uint64_t *hash;
    Span *span;
    Py_ssize_t n, max;
    unsigned bits;
} SpanSet;

static uint64_t seed; /* set once, at module import, from os.urandom */

static uint64_t hash_span(const char *p, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL ^ seed; /* FNV-1a from a seeded basis */
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

/* Room for max spans. -1: no memory (error set). */
static int set_init(SpanSet *t, Py_ssize_t max) {
    unsigned bits = 4;
    while (((Py_ssize_t)1 << bits) < 2 * max) bits++;
    t->bits = bits;
    t->max = max;
    t->n = 0;
    t->slot = PyMem_Malloc(sizeof(int32_t) << bits);
    t->hash = PyMem_Malloc(sizeof(uint64_t) * (size_t)(max ? max : 1));
    t->span = PyMem_Malloc(sizeof(Span) * (size_t)(max ? max : 1));
    if (!t->slot || !t->hash || !t->span) {
        PyErr_NoMemory();
        return -1;
    }
    memset(t->slot, 0xff, sizeof(int32_t) << bits);
    return 0;
}

static void set_clear(SpanSet *t) {
    memset(t->slot, 0xff, sizeof(int32_t) << t->bits);
    t->n = 0;
}

static void set_free(SpanSet *t) {
    PyMem_Free(t->slot);
    PyMem_Free(t->hash);
    PyMem_Free(t->span);
}

static inline int span_eq(Span a, const char *p, Py_ssize_t n) {
    return a.n == n && memcmp(a.p, p, (size_t)n) == 0;
}

/* The entry of s, added if new (*added set); -1: the set is full. */
static int32_t set_add(SpanSet *t, Span s, int *added) {
    uint64_t h = hash_span(s.p, s.n);
    size_t mask = ((size_t)1 << t->bits) - 1, i = (size_t)(h >> (64 - t->bits));
    *added = 0;
    for (;; i = (i + 1) & mask) {
        int32_t e = t->slot[i];
        if (e < 0) break;
        if (t->hash[e] == h && span_eq(t->span[e], s.p, s.n)) return e;
    }
    if (t->n >= t->max) return -1;
    t->slot[i] = (int32_t)t->n;
    t->hash[t->n] = h;
    t->span[t->n] = s;
    *added = 1;
    return (int32_t)t->n++;
}

typedef struct {
    Model *models; /* entry i of names */
    Py_ssize_t cap;
    SpanSet names, segs, keys; /* model names, segment texts, one event's feature keys */
} Scan;

/* ------------------------------------------------------------------ JSON pieces */

typedef struct {
    const char *p, *end;
} Cur;

static inline void skip_ws(Cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
        c->p++;
}

/* A string of printable ASCII without escapes; its content span. 0: not such a string. */
static inline int string(Cur *c, Span *out) {
    if (c->p >= c->end || *c->p != '"') return 0;
    const char *s = ++c->p;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            out->p = s;
            out->n = c->p - s;
            c->p++;
            return 1;
        }
        if (ch == '\\' || ch < 0x20 || ch >= 0x80) return 0;
        c->p++;
    }
    return 0;
}

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A JSON number as the float64 the Python decoder makes of it (orjson, then float()).
 * Integers of up to 18 digits convert as int64 (correctly rounded; -0 is 0). Other numbers
 * of at most 19 digits with a mantissa up to 2**53 and a decimal exponent within +-22 are
 * one exact multiplication or division (correctly rounded: Clinger's fast path). Any other
 * number goes through CPython's correctly rounded PyOS_string_to_double; infinite results
 * are refused (orjson rejects them). 1: taken, 0: not a JSON number or not taken. */
static int number(Cur *c, double *out) {
    const char *s = c->p, *p = c->p, *end = c->end;
    int neg = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    uint64_t m = 0;
    const char *d0 = p;
    if (p < end && *p == '0') {
        p++;
    } else {
        while (p < end && (unsigned)(*p - '0') < 10u) m = m * 10 + (uint64_t)(*p++ - '0');
        if (p == d0) return 0;
    }
    Py_ssize_t digits = p - d0, frac = 0;
    int64_t e10 = 0;
    int is_int = 1;
    if (p < end && *p == '.') {
        is_int = 0;
        const char *f0 = ++p;
        while (p < end && (unsigned)(*p - '0') < 10u) m = m * 10 + (uint64_t)(*p++ - '0');
        frac = p - f0;
        if (frac == 0) return 0;
        digits += frac;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_int = 0;
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p >= end || (unsigned)(*p - '0') >= 10u) return 0;
        int64_t x = 0;
        while (p < end && (unsigned)(*p - '0') < 10u) {
            if (x < 100000) x = x * 10 + (*p - '0');
            p++;
        }
        e10 = eneg ? -x : x;
    }
    c->p = p;
    if (is_int && digits <= 18) {
        int64_t v = (int64_t)m;
        *out = (double)(neg ? -v : v);
        return 1;
    }
    e10 -= frac;
    if (EXACT_DOUBLES && !is_int && digits <= 19 && m <= (1ULL << 53) && e10 >= -22 &&
        e10 <= 22) {
        double v = (double)m;
        v = e10 < 0 ? v / POW10[-e10] : v * POW10[e10];
        *out = neg ? -v : v;
        return 1;
    }
    Py_ssize_t n = p - s;
    char tmp[128];
    if (n >= (Py_ssize_t)sizeof(tmp)) return 0;
    memcpy(tmp, s, (size_t)n);
    tmp[n] = 0;
    char *stop = NULL;
    double v = PyOS_string_to_double(tmp, &stop, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (stop != tmp + n || isinf(v) || isnan(v)) return 0;
    *out = v;
    return 1;
}

static inline int literal(Cur *c, const char *word, Py_ssize_t n) {
    if (c->end - c->p >= n && memcmp(c->p, word, (size_t)n) == 0) {
        c->p += n;
        return 1;
    }
    return 0;
}

/* An object member's key and the ':' after it (whitespace around skipped). 0: not JSON. */
static inline int member_key(Cur *c, Span *k) {
    skip_ws(c);
    if (!string(c, k)) return 0;
    skip_ws(c);
    if (c->p >= c->end || *c->p != ':') return 0;
    c->p++;
    skip_ws(c);
    return 1;
}

/* After an object member's value: 1 another member follows (','), 2 the object ended
 * ('}'), 0 anything else. */
static inline int member_end(Cur *c) {
    skip_ws(c);
    if (c->p < c->end && (*c->p == ',' || *c->p == '}')) return *c->p++ == ',' ? 1 : 2;
    return 0;
}

/* A segment object of strings (any count); its text. 0: not one. */
static int segment_text(Cur *c, Span *out) {
    const char *s = c->p;
    if (c->p >= c->end || *c->p != '{') return 0;
    c->p++;
    skip_ws(c);
    int more = 1;
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        more = 2;
    }
    while (more == 1) {
        Span k, v;
        if (!member_key(c, &k) || !string(c, &v)) return 0;
        more = member_end(c);
    }
    if (!more) return 0;
    out->p = s;
    out->n = c->p - s;
    return 1;
}

/* ------------------------------------------------------------------ one event */

enum { F_MODEL, F_MV, F_EID, F_TS, F_FEATURES, F_PRED, F_SEG, F_LAT, F_SHADOW, F_TRACE,
       F_OUTCOME, F_UNKNOWN };

static int field_of(Span k) {
    switch (k.n) {
    case 2:
        if (!memcmp(k.p, "ts", 2)) return F_TS;
        break;
    case 5:
        if (!memcmp(k.p, "model", 5)) return F_MODEL;
        break;
    case 7:
        if (!memcmp(k.p, "segment", 7)) return F_SEG;
        if (!memcmp(k.p, "outcome", 7)) return F_OUTCOME;
        break;
    case 8:
        if (!memcmp(k.p, "event_id", 8)) return F_EID;
        if (!memcmp(k.p, "features", 8)) return F_FEATURES;
        if (!memcmp(k.p, "trace_id", 8)) return F_TRACE;
        break;
    case 9:
        if (!memcmp(k.p, "shadow_of", 9)) return F_SHADOW;
        break;
    case 10:
        if (!memcmp(k.p, "prediction", 10)) return F_PRED;
        if (!memcmp(k.p, "latency_ms", 10)) return F_LAT;
        break;
    case 13:
        if (!memcmp(k.p, "model_version", 13)) return F_MV;
        break;
    }
    return F_UNKNOWN;
}

/* What one event holds, before it is appended to its model. */
typedef struct {
    Span model, mv, eid, shadow, trace, outcome, seg;
    int has_mv, has_eid, has_shadow, has_trace, has_outcome, has_seg;
    double ts, score, lat; /* NaN: absent or null (no number taken is NaN) */
    Span *keys;   /* the feature keys and values, in the caller's scratch arrays */
    double *vals;
    Py_ssize_t nf, cap;
} Event;

/* A string or null value of a field; 1: taken (has: 1 for a string), 0: not taken. */
static int opt_string(Cur *c, Span *s, int *has) {
    if (literal(c, "null", 4)) {
        *has = 0;
        return 1;
    }
    *has = 1;
    return string(c, s);
}

static int opt_number(Cur *c, double *v, double missing) {
    if (literal(c, "null", 4)) {
        *v = missing;
        return 1;
    }
    return number(c, v);
}

/* A features object of numbers (at least one, at most ev->cap) into ev's arrays. */
static int features(Cur *c, Event *ev) {
    if (c->p >= c->end || *c->p != '{') return 0;
    c->p++;
    Py_ssize_t j = 0;
    int more = 1;
    while (more == 1) {
        if (j >= ev->cap || !member_key(c, &ev->keys[j]) || !number(c, &ev->vals[j])) return 0;
        j++;
        more = member_end(c);
    }
    ev->nf = j;
    return more == 2;
}

static int parse_event(const char *p, Py_ssize_t n, Event *ev, Py_ssize_t max_str,
                       Py_ssize_t max_model) {
    Cur c = {p, p + n};
    unsigned seen = 0;
    Span *keys = ev->keys;
    double *vals = ev->vals;
    Py_ssize_t cap = ev->cap;
    memset(ev, 0, sizeof(*ev));
    ev->keys = keys;
    ev->vals = vals;
    ev->cap = cap;
    ev->ts = ev->score = ev->lat = NAN;
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{') return 0;
    c.p++;
    int more = 1;
    while (more == 1) {
        Span k;
        if (!member_key(&c, &k)) return 0;
        int f = field_of(k);
        if (f == F_UNKNOWN || (seen & (1u << f))) return 0;
        seen |= 1u << f;
        switch (f) {
        case F_MODEL:
            if (!string(&c, &ev->model) || ev->model.n == 0 || ev->model.n > max_model) return 0;
            break;
        case F_MV:
            if (!opt_string(&c, &ev->mv, &ev->has_mv)) return 0;
            if (ev->has_mv && ev->mv.n > max_str) return 0;
            break;
        case F_EID:
            if (!opt_string(&c, &ev->eid, &ev->has_eid)) return 0;
            if (ev->has_eid && ev->eid.n > max_str) return 0;
            break;
        case F_SHADOW:
            if (!opt_string(&c, &ev->shadow, &ev->has_shadow)) return 0;
            if (ev->has_shadow && (ev->shadow.n == 0 || ev->shadow.n > max_model)) return 0;
            break;
        case F_TRACE:
            if (!opt_string(&c, &ev->trace, &ev->has_trace)) return 0;
            if (ev->has_trace && ev->trace.n > max_str) return 0;
            break;
        case F_OUTCOME:
            if (!opt_string(&c, &ev->outcome, &ev->has_outcome)) return 0;
            if (ev->has_outcome && !span_eq(ev->outcome, "ok", 2) &&
                !span_eq(ev->outcome, "error", 5))
                return 0;
            break;
        case F_TS:
            if (!opt_number(&c, &ev->ts, NAN)) return 0;
            break;
        case F_PRED:
            if (!opt_number(&c, &ev->score, NAN)) return 0;
            break;
        case F_LAT:
            if (!opt_number(&c, &ev->lat, NAN)) return 0;
            if (ev->lat < 0) return 0; /* NaN compares false: null stays */
            break;
        case F_SEG:
            if (literal(&c, "null", 4)) break;
            if (!segment_text(&c, &ev->seg)) return 0;
            ev->has_seg = 1;
            break;
        case F_FEATURES:
            if (!features(&c, ev)) return 0;
            break;
        }
        more = member_end(&c);
    }
    if (!more) return 0;
    skip_ws(&c);
    if (c.p != c.end) return 0;
    if (!(seen & (1u << F_MODEL)) || !(seen & (1u << F_FEATURES))) return 0;
    return 1;
}

/* ------------------------------------------------------------------ models */

static PyObject *ascii_str(Span s) {
    PyObject *o = PyUnicode_New(s.n, 127);
    if (o) memcpy(PyUnicode_DATA(o), s.p, (size_t)s.n);
    return o;
}

/* Append a string (has) or a null to a column. -1: error set. */
static int strcol_put(StrCol *c, int has, Span text, Py_ssize_t row) {
    PyObject *s = NULL;
    if (has && !(s = ascii_str(text))) return -1;
    return strcol_add(c, s, row);
}

static void model_free(Model *m) {
    Py_XDECREF(m->model);
    Py_XDECREF(m->keytuple);
    Py_XDECREF(m->mv_obj);
    PyMem_Free(m->keys);
    Buf *bufs[] = {&m->numeric, &m->ts, &m->score, &m->lat, &m->idx, &m->part, &m->off, &m->seg};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) PyMem_Free(bufs[i]->data);
    StrCol *cols[] = {&m->eid, &m->mv, &m->shadow, &m->trace, &m->outcome};
    for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++) Py_XDECREF(cols[i]->list);
}

/* The model of a name, made on first sight. NULL with no error set: too many models. */
static Model *model_for(Scan *sc, Span name, int *err) {
    int added;
    int32_t e = set_add(&sc->names, name, &added);
    if (e < 0) return NULL;
    if (!added) return &sc->models[e];
    if (e == sc->cap) {
        Py_ssize_t cap = sc->cap ? sc->cap * 2 : 16;
        Model *grown = PyMem_Realloc(sc->models, sizeof(Model) * (size_t)cap);
        if (!grown) {
            PyErr_NoMemory();
            *err = 1;
            return NULL;
        }
        sc->models = grown;
        sc->cap = cap;
    }
    Model *m = &sc->models[e];
    memset(m, 0, sizeof(*m));
    m->model = ascii_str(name);
    if (!m->model) {
        *err = 1;
        return NULL;
    }
    return m;
}

/* Whether ev's feature keys are the model's (the first event's, set here). 1: yes. */
static int same_keys(Scan *sc, Model *m, const Event *ev, int *err) {
    Py_ssize_t j = ev->nf;
    if (m->keys) {
        if (j != m->nkeys) return 0;
        for (Py_ssize_t i = 0; i < j; i++)
            if (!span_eq(m->keys[i], ev->keys[i].p, ev->keys[i].n)) return 0;
        return 1;
    }
    set_clear(&sc->keys); /* a repeated key: the decoder keeps its last value; not taken */
    for (Py_ssize_t i = 0; i < j; i++) {
        int added;
        if (set_add(&sc->keys, ev->keys[i], &added) < 0 || !added) return 0;
    }
    m->keys = PyMem_Malloc(sizeof(Span) * (size_t)j);
    m->keytuple = PyTuple_New(j);
    if (!m->keys || !m->keytuple) {
        *err = 1;
        PyErr_NoMemory();
        return 0;
    }
    for (Py_ssize_t i = 0; i < j; i++) {
        PyObject *s = ascii_str(ev->keys[i]);
        if (!s) {
            *err = 1;
            return 0;
        }
        PyTuple_SET_ITEM(m->keytuple, i, s);
        m->keys[i] = ev->keys[i];
    }
    m->nkeys = j;
    return 1;
}

/* The code of a segment text; -1: too many distinct segments in this call. */
static int32_t segment_code(Scan *sc, Span s) {
    int added;
    return set_add(&sc->segs, s, &added);
}

/* Append ev (message i) to m. -1: error set. */
static int append(Model *m, const Event *ev, double kts, int64_t part, int64_t off, int32_t seg,
                  int32_t i) {
    Py_ssize_t row = m->rows;
    double ts = isnan(ev->ts) ? kts : ev->ts;
    if (buf_put(&m->numeric, ev->vals, (Py_ssize_t)sizeof(double) * m->nkeys) < 0 ||
        buf_put(&m->ts, &ts, sizeof ts) < 0 || buf_put(&m->score, &ev->score, sizeof(double)) < 0 ||
        buf_put(&m->lat, &ev->lat, sizeof(double)) < 0 || buf_put(&m->idx, &i, sizeof i) < 0 ||
        buf_put(&m->part, &part, sizeof part) < 0 || buf_put(&m->off, &off, sizeof off) < 0 ||
        buf_put(&m->seg, &seg, sizeof seg) < 0)
        return -1;
    if (strcol_put(&m->eid, ev->has_eid, ev->eid, row) < 0) return -1;
    PyObject *mv = NULL;
    if (ev->has_mv) {
        if (!m->mv_obj || !span_eq(m->mv_last, ev->mv.p, ev->mv.n)) {
            PyObject *o = ascii_str(ev->mv);
            if (!o) return -1;
            Py_XDECREF(m->mv_obj);
            m->mv_obj = o;
            m->mv_last = ev->mv;
        }
        mv = Py_NewRef(m->mv_obj);
    }
    if (strcol_add(&m->mv, mv, row) < 0 ||
        strcol_put(&m->shadow, ev->has_shadow, ev->shadow, row) < 0 ||
        strcol_put(&m->trace, ev->has_trace, ev->trace, row) < 0 ||
        strcol_put(&m->outcome, ev->has_outcome, ev->outcome, row) < 0)
        return -1;
    m->rows++;
    return 0;
}

static PyObject *col_or_none(StrCol *c) {
    return Py_NewRef(c->list ? c->list : Py_None);
}

/* A column that is a list in every case (None for every null row). */
static PyObject *col_list(StrCol *c, Py_ssize_t rows) {
    if (c->list) return Py_NewRef(c->list);
    PyObject *l = PyList_New(rows);
    if (l)
        for (Py_ssize_t i = 0; i < rows; i++) PyList_SET_ITEM(l, i, Py_NewRef(Py_None));
    return l;
}

static PyObject *buf_bytes(Buf *b) {
    return PyBytes_FromStringAndSize(b->data ? b->data : "", b->len);
}

static PyObject *model_tuple(Model *m) {
    return Py_BuildValue("(OONNNNNNNNNNNNN)", m->model, m->keytuple, buf_bytes(&m->numeric),
                         buf_bytes(&m->ts), buf_bytes(&m->score), buf_bytes(&m->lat),
                         buf_bytes(&m->idx), buf_bytes(&m->part), buf_bytes(&m->off),
                         col_list(&m->eid, m->rows),
                         col_list(&m->mv, m->rows), buf_bytes(&m->seg),
                         col_or_none(&m->shadow), col_or_none(&m->trace),
                         col_or_none(&m->outcome));
}

/* ------------------------------------------------------------------ scan() */

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *values;
    Py_buffer parts = {0}, offs = {0}, stamps = {0};
    Py_ssize_t max_bytes, max_str, max_model;
    (void)self;
    /* values: a tuple (nothing can take a message away while its text is read); the
     * per-message numbers: float64 / int64 buffers, converted before the call, so that
     * no Python code runs while the scan holds pointers into the texts */
    if (!PyArg_ParseTuple(args, "O!y*y*y*nnn", &PyTuple_Type, &values, &parts, &offs, &stamps,
                          &max_bytes, &max_str, &max_model))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(values);
    PyObject *codes = NULL, *result = NULL;
    Scan sc;
    memset(&sc, 0, sizeof sc);
    Event ev;
    ev.cap = MAX_FEATURES;
    ev.vals = PyMem_Malloc(sizeof(double) * MAX_FEATURES);
    ev.keys = PyMem_Malloc(sizeof(Span) * MAX_FEATURES);
    if (parts.len != n * 8 || offs.len != n * 8 || stamps.len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "the per-message columns differ in length");
        goto done;
    }
    if (!ev.vals || !ev.keys) {
        PyErr_NoMemory();
        goto done;
    }
    if (set_init(&sc.names, n < MAX_MODELS ? n : MAX_MODELS) < 0 ||
        set_init(&sc.segs, n < MAX_SEGMENTS ? n : MAX_SEGMENTS) < 0 ||
        set_init(&sc.keys, MAX_FEATURES) < 0)
        goto done;
    codes = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int32_t));
    if (!codes) goto done;
    int32_t *code = (int32_t *)PyBytes_AS_STRING(codes);
    const int64_t *part = parts.buf, *off = offs.buf;
    const double *stamp = stamps.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *raw = PyTuple_GET_ITEM(values, i);
        code[i] = -1;
        if (!PyBytes_CheckExact(raw)) continue;
        Py_ssize_t len = PyBytes_GET_SIZE(raw);
        if (len > max_bytes) continue;
        if (!parse_event(PyBytes_AS_STRING(raw), len, &ev, max_str, max_model)) continue;
        int err = 0;
        Model *m = model_for(&sc, ev.model, &err);
        if (err) goto done;
        if (!m || m->refused) continue;
        int32_t seg = -1;
        if (!same_keys(&sc, m, &ev, &err) || (ev.has_seg && (seg = segment_code(&sc, ev.seg)) < 0)) {
            if (err) goto done;
            m->refused = 1;
            continue;
        }
        if (append(m, &ev, stamp[i], part[i], off[i], seg, (int32_t)i) < 0)
            goto done;
        code[i] = (int32_t)(m - sc.models);
    }
    for (Py_ssize_t i = 0; i < n; i++) /* a refused model's messages: all to Python */
        if (code[i] >= 0 && sc.models[code[i]].refused) code[i] = -1;
    {
        PyObject *models = PyList_New(sc.names.n);
        PyObject *segs = PyList_New(sc.segs.n);
        if (!models || !segs) {
            Py_XDECREF(models);
            Py_XDECREF(segs);
            goto done;
        }
        for (Py_ssize_t j = 0; j < sc.segs.n; j++)
            PyList_SET_ITEM(segs, j, PyBytes_FromStringAndSize(sc.segs.span[j].p, sc.segs.span[j].n));
        for (Py_ssize_t j = 0; j < sc.names.n; j++) {
            Model *m = &sc.models[j];
            PyList_SET_ITEM(models, j, m->rows && !m->refused ? model_tuple(m) : Py_NewRef(Py_None));
        }
        for (Py_ssize_t j = 0; j < sc.segs.n; j++) /* any NULL: an error is set */
            if (!PyList_GET_ITEM(segs, j)) goto fail;
        for (Py_ssize_t j = 0; j < sc.names.n; j++)
            if (!PyList_GET_ITEM(models, j)) goto fail;
        result = Py_BuildValue("(ONN)", codes, models, segs);
        goto done;
    fail:
        Py_DECREF(models);
        Py_DECREF(segs);
    }
done:
    for (Py_ssize_t j = 0; j < sc.names.n && j < sc.cap; j++) model_free(&sc.models[j]);
    PyMem_Free(sc.models);
    set_free(&sc.names);
    set_free(&sc.segs);
    set_free(&sc.keys);
    PyMem_Free(ev.vals);
    PyMem_Free(ev.keys);
    Py_XDECREF(codes);
    PyBuffer_Release(&parts);
    PyBuffer_Release(&offs);
    PyBuffer_Release(&stamps);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(values, partitions, offsets, stamps, max_bytes, max_string, max_model)\n"
     "-> (codes, models, segments)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan", "Compiled scanner of single InferenceEvents.", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__scan(void) {
    /* the hash seed: texts from the topics cannot be chosen to collide in the tables */
    PyObject *os = PyImport_ImportModule("os");
    if (!os) return NULL;
    PyObject *bytes = PyObject_CallMethod(os, "urandom", "i", 8);
    Py_DECREF(os);
    if (!bytes) return NULL;
    if (PyBytes_GET_SIZE(bytes) == 8) memcpy(&seed, PyBytes_AS_STRING(bytes), 8);
    Py_DECREF(bytes);
    return PyModule_Create(&module);
}
