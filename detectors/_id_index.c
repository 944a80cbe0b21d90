/* Compiled indexes of the label join's FIFOs: event id -> ring slot (int64). IdIndex
 * takes ids as str objects; KeyIndex (below) takes hex ids as their bytes.
 *
 * IdIndex behaves as a dict from exact str keys to int slots, with the batch operations
 * the join needs: put(ids, slots) takes a whole batch in and discard(ids) lets a list of
 * keys leave (hashes first, then the table buckets prefetched a few keys ahead, so the
 * cache misses of a large table overlap instead of adding up); both return the slots
 * that left (taken over by a key put again, or discarded) as int64 bytes, so the caller
 * can keep a per-slot flag of the entries in. One open-addressing table with linear
 * probing; an entry (16 bytes) holds the low 32 bits of the key's hash (which also place
 * it), the slot (below 2**32) and a reference to the key; deletion shifts the following
 * entries back (no tombstones); the table doubles past half full.
 *
 * Keys are str objects only (put raises TypeError on anything else; get/pop/contains
 * treat other objects as absent): comparing str runs no Python code, so the table cannot
 * change under a probe. Equal keys are equal text (same hash, length, kind and bytes).
 * DictIdIndex in join_index.py is the reference semantics (a dict).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MIN_SIZE 64
#define AHEAD 8 /* keys whose buckets are prefetched before the current one is probed */
#define KAHEAD 16 /* the same for KeyIndex */

typedef struct {
    uint32_t hash; /* low bits of the key's hash */
    uint32_t slot;
    PyObject *key; /* NULL: empty */
} Entry;

typedef struct {
    PyObject_HEAD
    Entry *table;
    size_t mask; /* size - 1; size 0 before the first put */
    Py_ssize_t used;
} IdIndex;

static inline int same_text(PyObject *a, PyObject *b) {
    if (a == b) return 1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    if (n != PyUnicode_GET_LENGTH(b)) return 0;
    int kind = PyUnicode_KIND(a);
    if (kind != PyUnicode_KIND(b)) return 0;
    return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * (size_t)kind) == 0;
}

/* The key's hash, or -1 with TypeError set when it is not a str (str hashes are never -1). */
static inline Py_hash_t key_hash(PyObject *key) {
    if (!PyUnicode_CheckExact(key)) {
        PyErr_Format(PyExc_TypeError, "event ids must be str, not %.100s", Py_TYPE(key)->tp_name);
        return -1;
    }
    if (PyUnicode_READY(key) < 0) return -1;
    return PyObject_Hash(key);
}

/* Bucket of the key, or of the empty entry where it would go. */
static inline size_t find(const IdIndex *ix, PyObject *key, uint32_t h) {
    size_t i = (size_t)h & ix->mask;
    for (;;) {
        const Entry *e = &ix->table[i];
        if (e->key == NULL || (e->hash == h && same_text(e->key, key))) return i;
        i = (i + 1) & ix->mask;
    }
}

static int resize(IdIndex *ix, size_t size) {
    Entry *table = PyMem_Calloc(size, sizeof(Entry));
    if (table == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t mask = size - 1;
    if (ix->table != NULL) {
        for (size_t j = 0; j <= ix->mask; j++) {
            Entry *e = &ix->table[j];
            if (j + AHEAD <= ix->mask && e[AHEAD].key != NULL)
                __builtin_prefetch(&table[(size_t)e[AHEAD].hash & mask], 1);
            if (e->key == NULL) continue;
            size_t i = (size_t)e->hash & mask;
            while (table[i].key != NULL) i = (i + 1) & mask;
            table[i] = *e;
        }
        PyMem_Free(ix->table);
    }
    ix->table = table;
    ix->mask = mask;
    return 0;
}

/* Room for ``more`` keys at most half full. */
static int reserve(IdIndex *ix, Py_ssize_t more) {
    size_t need = (size_t)(ix->used + more) * 2;
    size_t size = ix->table == NULL ? 0 : ix->mask + 1;
    if (need <= size) return 0;
    if (size < MIN_SIZE) size = MIN_SIZE;
    while (size < need) size *= 2;
    return resize(ix, size);
}

/* Remove the entry at bucket i (it holds a key): later entries of its run shift back. */
static void remove_at(IdIndex *ix, size_t i) {
    PyObject *key = ix->table[i].key;
    size_t mask = ix->mask, j = i;
    for (;;) {
        j = (j + 1) & mask;
        Entry *e = &ix->table[j];
        if (e->key == NULL) break;
        size_t home = (size_t)e->hash & mask;
        /* e may move to i when its home is not in (i, j] (cyclically) */
        int stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (stays) continue;
        ix->table[i] = *e;
        i = j;
    }
    ix->table[i].key = NULL;
    ix->used--;
    Py_DECREF(key);
}

/* The hash of a key that may be in, or -1 for one that cannot (not a str; no error set). */
static inline Py_hash_t probe_hash(PyObject *key) {
    Py_hash_t h = -1;
    if (PyUnicode_CheckExact(key) && PyUnicode_READY(key) == 0) h = PyObject_Hash(key);
    if (h == -1) PyErr_Clear();
    return h;
}

/* Bucket holding the key, or -1 (also for a key that is not a str; no error set). */
static Py_ssize_t lookup(const IdIndex *ix, PyObject *key) {
    if (ix->used == 0) return -1;
    Py_hash_t h = probe_hash(key);
    if (h == -1) return -1;
    size_t i = find(ix, key, (uint32_t)h);
    return ix->table[i].key == NULL ? -1 : (Py_ssize_t)i;
}

/* int64 values gathered into a bytes object (at most ``cap`` of them). */
typedef struct {
    PyObject *bytes;
    int64_t *at;
    Py_ssize_t n;
} Slots;

static int slots_open(Slots *out, Py_ssize_t cap) {
    out->bytes = PyBytes_FromStringAndSize(NULL, cap * 8);
    out->at = out->bytes == NULL ? NULL : (int64_t *)PyBytes_AS_STRING(out->bytes);
    out->n = 0;
    return out->bytes == NULL ? -1 : 0;
}

static PyObject *slots_close(Slots *out) {
    if (_PyBytes_Resize(&out->bytes, out->n * 8) < 0) return NULL;
    return out->bytes;
}

static void key_error(PyObject *key) {
    PyObject *arg = PyTuple_Pack(1, key);
    if (arg != NULL) {
        PyErr_SetObject(PyExc_KeyError, arg);
        Py_DECREF(arg);
    }
}

/* The items of a list or tuple (borrowed; an empty list may have none: *n is 0), or -1
   with TypeError. */
static int items_of(PyObject *seq, PyObject ***items, Py_ssize_t *n) {
    if (PyList_CheckExact(seq)) {
        *n = PyList_GET_SIZE(seq);
        *items = ((PyListObject *)seq)->ob_item;
        return 0;
    }
    if (PyTuple_CheckExact(seq)) {
        *n = PyTuple_GET_SIZE(seq);
        *items = ((PyTupleObject *)seq)->ob_item;
        return 0;
    }
    PyErr_SetString(PyExc_TypeError, "ids must be a list or a tuple");
    return -1;
}

/* The slots of a put: an aligned, contiguous int64 buffer of n values in [0, 2**32),
   or NULL with TypeError / ValueError. */
static const int64_t *slot_values(const Py_buffer *view, Py_ssize_t n) {
    if (view->itemsize != 8 || view->format == NULL ||
        !(strcmp(view->format, "q") == 0 || strcmp(view->format, "l") == 0 ||
          strcmp(view->format, "<q") == 0 || strcmp(view->format, "<l") == 0 ||
          strcmp(view->format, "=q") == 0 || strcmp(view->format, "=l") == 0)) {
        PyErr_SetString(PyExc_TypeError, "slots must be a buffer of int64");
        return NULL;
    }
    if (view->len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "keys and slots differ in length");
        return NULL;
    }
    if ((uintptr_t)view->buf % _Alignof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "slots must be an aligned buffer");
        return NULL;
    }
    const int64_t *slots = (const int64_t *)view->buf;
    for (Py_ssize_t k = 0; k < n; k++)
        if (slots[k] < 0 || slots[k] > (int64_t)UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "slots must be in [0, 2**32)");
            return NULL;
        }
    return slots;
}

static PyObject *IdIndex_put(IdIndex *ix, PyObject *args) {
    PyObject *ids, *slots_obj;
    if (!PyArg_ParseTuple(args, "OO:put", &ids, &slots_obj)) return NULL;
    /* the buffer first: exporting it may run Python code (__buffer__, 3.12+), which
       could change the list; nothing after items_of() can */
    Py_buffer view;
    if (PyObject_GetBuffer(slots_obj, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    Py_ssize_t n;
    PyObject **keys;
    if (items_of(ids, &keys, &n) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    PyObject *res = NULL;
    Py_hash_t *hashes = NULL;
    Slots old = {NULL, NULL, 0};
    const int64_t *slots = slot_values(&view, n);
    if (slots == NULL) goto done;
    hashes = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Py_hash_t));
    if (hashes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* hash every key first: nothing changes unless all are str; the list's items are
       held while the table is written (its own references are taken per key) */
    for (Py_ssize_t k = 0; k < n; k++)
        if ((hashes[k] = key_hash(keys[k])) == -1) goto done;
    if (reserve(ix, n) < 0 || slots_open(&old, n) < 0) goto done;
    Entry *table = ix->table;
    size_t mask = ix->mask;
    for (Py_ssize_t k = 0; k < n && k < AHEAD; k++)
        __builtin_prefetch(&table[(size_t)(uint32_t)hashes[k] & mask], 1);
    for (Py_ssize_t k = 0; k < n; k++) {
        if (k + AHEAD < n)
            __builtin_prefetch(&table[(size_t)(uint32_t)hashes[k + AHEAD] & mask], 1);
        uint32_t h = (uint32_t)hashes[k];
        size_t i = find(ix, keys[k], h);
        Entry *e = &table[i];
        if (e->key == NULL) {
            Py_INCREF(keys[k]);
            e->key = keys[k];
            e->hash = h;
            ix->used++;
        } else {
            old.at[old.n++] = e->slot;
        }
        e->slot = (uint32_t)slots[k];
    }
    res = slots_close(&old);
    old.bytes = NULL;
done:
    Py_XDECREF(old.bytes);
    PyMem_Free(hashes);
    PyBuffer_Release(&view);
    return res;
}

static PyObject *IdIndex_get(IdIndex *ix, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    Py_ssize_t i = lookup(ix, args[0]);
    if (i < 0) return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    return PyLong_FromLongLong(ix->table[i].slot);
}

static PyObject *IdIndex_pop(IdIndex *ix, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "pop(key[, default])");
        return NULL;
    }
    Py_ssize_t i = lookup(ix, args[0]);
    if (i < 0) {
        if (nargs == 2) return Py_NewRef(args[1]);
        key_error(args[0]);
        return NULL;
    }
    PyObject *slot = PyLong_FromLongLong(ix->table[i].slot);
    if (slot != NULL) remove_at(ix, (size_t)i);
    return slot;
}

/* Shared by discard and get_slots: ``remove``: the keys found leave and only their
   slots are returned; else one slot per key (-1: not in). */
static PyObject *id_slots(IdIndex *ix, PyObject *ids, int remove) {
    Py_ssize_t n;
    PyObject **keys;
    if (items_of(ids, &keys, &n) < 0) return NULL;
    Slots gone;
    if (slots_open(&gone, (ix->used || !remove) ? n : 0) < 0) return NULL;
    if (ix->used == 0 || n == 0) {
        for (Py_ssize_t k = 0; !remove && k < n; k++) gone.at[gone.n++] = -1;
        return slots_close(&gone);
    }
    Py_hash_t *hashes = PyMem_Malloc((size_t)n * sizeof(Py_hash_t));
    if (hashes == NULL) {
        Py_DECREF(gone.bytes);
        return PyErr_NoMemory();
    }
    /* -1: not a str (never in); hashing a str runs no Python code */
    for (Py_ssize_t k = 0; k < n; k++) hashes[k] = probe_hash(keys[k]);
    Entry *table = ix->table; /* removals never resize the table */
    size_t mask = ix->mask;
    for (Py_ssize_t k = 0; k < n && k < AHEAD; k++)
        if (hashes[k] != -1) __builtin_prefetch(&table[(size_t)(uint32_t)hashes[k] & mask]);
    for (Py_ssize_t k = 0; k < n; k++) {
        if (k + AHEAD < n && hashes[k + AHEAD] != -1)
            __builtin_prefetch(&table[(size_t)(uint32_t)hashes[k + AHEAD] & mask]);
        size_t i = 0;
        int hit = 0;
        if (hashes[k] != -1 && ix->used) {
            i = find(ix, keys[k], (uint32_t)hashes[k]);
            hit = table[i].key != NULL;
        }
        if (hit) {
            gone.at[gone.n++] = table[i].slot;
            if (remove) remove_at(ix, i);
        } else if (!remove) {
            gone.at[gone.n++] = -1;
        }
    }
    PyMem_Free(hashes);
    return slots_close(&gone);
}

static PyObject *IdIndex_discard(IdIndex *ix, PyObject *ids) { return id_slots(ix, ids, 1); }
static PyObject *IdIndex_get_slots(IdIndex *ix, PyObject *ids) { return id_slots(ix, ids, 0); }

static PyObject *IdIndex_items(IdIndex *ix, PyObject *Py_UNUSED(ignored)) {
    /* a snapshot first (nothing the garbage collector tracks is allocated while the
       table is read: a collection could run finalizers that change the index) */
    Py_ssize_t n = ix->used, k = 0;
    PyObject **keys = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(PyObject *));
    int64_t *slots = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    PyObject *out = NULL;
    if (keys == NULL || slots == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (ix->table != NULL)
        for (size_t j = 0; j <= ix->mask; j++)
            if (ix->table[j].key != NULL) {
                keys[k] = Py_NewRef(ix->table[j].key);
                slots[k++] = ix->table[j].slot;
            }
    out = PyList_New(k);
    for (Py_ssize_t i = 0; out != NULL && i < k; i++) {
        PyObject *item = Py_BuildValue("(OL)", keys[i], (long long)slots[i]);
        if (item == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, item);
    }
    for (Py_ssize_t i = 0; i < k; i++) Py_DECREF(keys[i]);
done:
    PyMem_Free(keys);
    PyMem_Free(slots);
    return out;
}

static void clear_table(IdIndex *ix) {
    Entry *table = ix->table;
    size_t size = table == NULL ? 0 : ix->mask + 1;
    ix->table = NULL;
    ix->mask = 0;
    ix->used = 0;
    for (size_t j = 0; j < size; j++) Py_XDECREF(table[j].key);
    PyMem_Free(table);
}

static PyObject *IdIndex_clear(IdIndex *ix, PyObject *Py_UNUSED(ignored)) {
    clear_table(ix);
    Py_RETURN_NONE;
}

static Py_ssize_t IdIndex_len(IdIndex *ix) { return ix->used; }

static int IdIndex_contains(IdIndex *ix, PyObject *key) { return lookup(ix, key) >= 0; }

static int IdIndex_ass_sub(IdIndex *ix, PyObject *key, PyObject *value) {
    if (value != NULL) {
        PyErr_SetString(PyExc_TypeError, "IdIndex takes keys in with put()");
        return -1;
    }
    Py_ssize_t i = lookup(ix, key);
    if (i < 0) {
        key_error(key);
        return -1;
    }
    remove_at(ix, (size_t)i);
    return 0;
}

static PyObject *IdIndex_subscript(IdIndex *ix, PyObject *key) {
    Py_ssize_t i = lookup(ix, key);
    if (i < 0) {
        key_error(key);
        return NULL;
    }
    return PyLong_FromLongLong(ix->table[i].slot);
}

static void IdIndex_dealloc(IdIndex *ix) {
    clear_table(ix);
    Py_TYPE(ix)->tp_free((PyObject *)ix);
}

static PyObject *IdIndex_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "IdIndex() takes no arguments");
        return NULL;
    }
    IdIndex *ix = (IdIndex *)type->tp_alloc(type, 0);
    if (ix != NULL) {
        ix->table = NULL;
        ix->mask = 0;
        ix->used = 0;
    }
    return (PyObject *)ix;
}

static PyMethodDef IdIndex_methods[] = {
    {"put", (PyCFunction)IdIndex_put, METH_VARARGS,
     "put(ids, slots): ids (list or tuple of str) -> slots (int64 buffer), the last of "
     "equal ids winning; returns the slots taken over (int64 bytes)"},
    {"get", (PyCFunction)(void (*)(void))IdIndex_get, METH_FASTCALL,
     "get(key, default=None): the key's slot"},
    {"pop", (PyCFunction)(void (*)(void))IdIndex_pop, METH_FASTCALL,
     "pop(key[, default]): the key's slot, and the key leaves"},
    {"discard", (PyCFunction)IdIndex_discard, METH_O,
     "discard(ids): these keys leave; returns their slots (int64 bytes)"},
    {"get_slots", (PyCFunction)IdIndex_get_slots, METH_O,
     "get_slots(ids): each key's slot, -1 when not in (int64 bytes)"},
    {"items", (PyCFunction)IdIndex_items, METH_NOARGS, "(key, slot) pairs"},
    {"clear", (PyCFunction)IdIndex_clear, METH_NOARGS, "every key leaves"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods IdIndex_as_sequence = {
    .sq_contains = (objobjproc)IdIndex_contains,
};

static PyMappingMethods IdIndex_as_mapping = {
    .mp_length = (lenfunc)IdIndex_len,
    .mp_subscript = (binaryfunc)IdIndex_subscript,
    .mp_ass_subscript = (objobjargproc)IdIndex_ass_sub,
};

static PyTypeObject IdIndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "driftline.detectors._id_index.IdIndex",
    .tp_basicsize = sizeof(IdIndex),
    .tp_dealloc = (destructor)IdIndex_dealloc,
    .tp_as_sequence = &IdIndex_as_sequence,
    .tp_as_mapping = &IdIndex_as_mapping,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Event id (str) -> ring slot (int), for the label join's FIFOs.",
    .tp_methods = IdIndex_methods,
    .tp_new = IdIndex_new,
};

/* ---- KeyIndex: fixed-width byte keys (hex event ids as their bytes) -> ring slot ----
 *
 * The label join keeps ids that are lowercase hex of one even length (uuid4().hex) as
 * their bytes, ``width`` (1..16) per id, in a uint8 column of its ring; this index maps
 * such keys to slots. The keys stay in that column: the index is bound to it (bind(),
 * which holds the column's buffer) and an entry is only the slot and the key's hash (8
 * bytes), so the table is a third of what it would be with the keys in it, and no Python
 * object or reference count is kept per key. put(slots) takes in the keys the column
 * holds at those slots (write them first); a key looked up is compared with the column
 * at the slot of each entry of the same hash. The hash is keyed by 32 random bytes given
 * to the constructor (so ids chosen to collide cannot be aimed at one run of the table);
 * linear probing, deletion by backward shift; past half full the table grows four times
 * while under 2**18 entries (a filling store rehashes less), then doubles; a few keys are
 * prefetched ahead. Every entry's slot is below the bound column's length (put and bind
 * check it), so no read leaves the column. Lookups take keys as one C-contiguous uint8
 * buffer of n * width bytes.
 */

typedef struct {
    uint32_t slot;
    uint32_t hash; /* the key's hash (never 0), which also places it; 0: empty */
} KEntry;

typedef struct {
    PyObject_HEAD
    KEntry *table;
    size_t mask; /* size - 1; size 0 before the first put */
    Py_ssize_t used;
    Py_ssize_t width;
    uint64_t seed[4];
    Py_buffer column; /* the bound key column (column.obj NULL: none) */
    const uint8_t *keys;
    Py_ssize_t nslots; /* slots in the column */
} KeyIndex;

static inline uint64_t mum(uint64_t x, uint64_t y) {
    __uint128_t m = (__uint128_t)x * y;
    return (uint64_t)m ^ (uint64_t)(m >> 64);
}

static inline uint32_t khash(const KeyIndex *ix, const uint8_t *p) {
    uint8_t buf[16] = {0};
    uint64_t a, b;
    memcpy(buf, p, (size_t)ix->width);
    memcpy(&a, buf, 8);
    memcpy(&b, buf + 8, 8);
    uint64_t h = mum(a ^ ix->seed[0], b ^ ix->seed[1]);
    uint32_t h32 = (uint32_t)mum(h ^ ix->seed[2], a ^ b ^ ix->seed[3]);
    return h32 ? h32 : 1;
}

/* The bucket of key ``p`` (hash h): its entry, or the empty one where it would go. */
static inline size_t kfind(const KeyIndex *ix, const uint8_t *p, uint32_t h) {
    size_t i = (size_t)h & ix->mask;
    size_t w = (size_t)ix->width;
    for (;;) {
        const KEntry *e = &ix->table[i];
        if (!e->hash || (e->hash == h && memcmp(ix->keys + (size_t)e->slot * w, p, w) == 0))
            return i;
        i = (i + 1) & ix->mask;
    }
}

static int kresize(KeyIndex *ix, size_t size) {
    KEntry *table = PyMem_Calloc(size, sizeof(KEntry));
    if (table == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t mask = size - 1;
    if (ix->table != NULL) {
        for (size_t j = 0; j <= ix->mask; j++) {
            KEntry *e = &ix->table[j];
            if (j + KAHEAD <= ix->mask && e[KAHEAD].hash)
                __builtin_prefetch(&table[(size_t)e[KAHEAD].hash & mask], 1);
            if (!e->hash) continue;
            size_t i = (size_t)e->hash & mask;
            while (table[i].hash) i = (i + 1) & mask;
            table[i] = *e;
        }
        PyMem_Free(ix->table);
    }
    ix->table = table;
    ix->mask = mask;
    return 0;
}

static int kreserve(KeyIndex *ix, Py_ssize_t more) {
    size_t need = (size_t)(ix->used + more) * 2;
    size_t size = ix->table == NULL ? 0 : ix->mask + 1;
    if (need <= size) return 0;
    if (size < MIN_SIZE) size = MIN_SIZE;
    while (size < need) size *= size < ((size_t)1 << 18) ? 4 : 2; /* fewer rehashes while filling */
    return kresize(ix, size);
}

static void kremove_at(KeyIndex *ix, size_t i) {
    size_t mask = ix->mask, j = i;
    for (;;) {
        j = (j + 1) & mask;
        KEntry *e = &ix->table[j];
        if (!e->hash) break;
        size_t home = (size_t)e->hash & mask;
        int stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (stays) continue;
        ix->table[i] = *e;
        i = j;
    }
    ix->table[i].hash = 0;
    ix->used--;
}

/* The keys buffer: C-contiguous bytes, a multiple of the width; *n keys. */
static int keys_view(KeyIndex *ix, PyObject *obj, Py_buffer *view, Py_ssize_t *n) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (view->len % ix->width) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "keys must be a buffer of n * %zd bytes", ix->width);
        return -1;
    }
    *n = view->len / ix->width;
    return 0;
}

/* Hashes of n keys (a PyMem buffer the caller frees), or NULL with MemoryError: key k
   at p + k * width, or at p + slots[k] * width when ``slots`` is given. */
static uint32_t *khashes(const KeyIndex *ix, const uint8_t *p, const int64_t *slots,
                         Py_ssize_t n) {
    uint32_t *h = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(uint32_t));
    if (h == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    size_t w = (size_t)ix->width;
    for (Py_ssize_t k = 0; k < n; k++)
        h[k] = khash(ix, p + (slots ? (size_t)slots[k] : (size_t)k) * w);
    return h;
}

static PyObject *KeyIndex_bind(KeyIndex *ix, PyObject *obj) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    Py_ssize_t nslots = view.len / ix->width;
    const char *why = NULL;
    if (view.len % ix->width)
        why = "the key column must be a buffer of n * width bytes";
    else if (nslots > (Py_ssize_t)UINT32_MAX + 1)
        why = "the key column holds more than 2**32 slots";
    /* every entry's slot is below the bound column's length (put refuses others), so
       only a shorter column needs the entries looked at */
    for (size_t j = 0; why == NULL && ix->used && nslots < ix->nslots && j <= ix->mask; j++)
        if (ix->table[j].hash && (Py_ssize_t)ix->table[j].slot >= nslots)
            why = "an entry's slot is past the new key column (clear the index first)";
    if (why != NULL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, why);
        return NULL;
    }
    if (ix->column.obj != NULL) PyBuffer_Release(&ix->column);
    ix->column = view;
    ix->keys = (const uint8_t *)view.buf;
    ix->nslots = nslots;
    Py_RETURN_NONE;
}

static PyObject *KeyIndex_put(KeyIndex *ix, PyObject *slots_obj) {
    Py_buffer sv;
    if (PyObject_GetBuffer(slots_obj, &sv, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    PyObject *res = NULL;
    uint32_t *hashes = NULL;
    Slots old = {NULL, NULL, 0};
    Py_ssize_t n = sv.itemsize ? sv.len / sv.itemsize : 0;
    const int64_t *slots = slot_values(&sv, n);
    if (slots == NULL) goto done;
    for (Py_ssize_t k = 0; k < n; k++)
        if (slots[k] >= ix->nslots) {
            PyErr_SetString(PyExc_ValueError, ix->column.obj == NULL
                            ? "put needs a key column (bind one first)"
                            : "slots must be within the key column");
            goto done;
        }
    size_t w = (size_t)ix->width;
    if ((hashes = khashes(ix, ix->keys, slots, n)) == NULL) goto done;
    if (kreserve(ix, n) < 0 || slots_open(&old, n) < 0) goto done;
    KEntry *table = ix->table;
    size_t mask = ix->mask;
    for (Py_ssize_t k = 0; k < n && k < KAHEAD; k++)
        __builtin_prefetch(&table[(size_t)hashes[k] & mask], 1);
    for (Py_ssize_t k = 0; k < n; k++) {
        if (k + KAHEAD < n) __builtin_prefetch(&table[(size_t)hashes[k + KAHEAD] & mask], 1);
        KEntry *e = &table[kfind(ix, ix->keys + (size_t)slots[k] * w, hashes[k])];
        if (!e->hash) {
            e->hash = hashes[k];
            ix->used++;
        } else {
            old.at[old.n++] = e->slot;
        }
        e->slot = (uint32_t)slots[k];
    }
    res = slots_close(&old);
    old.bytes = NULL;
done:
    Py_XDECREF(old.bytes);
    PyMem_Free(hashes);
    PyBuffer_Release(&sv);
    return res;
}

/* Shared by discard, pop and get: each key's slot; ``remove``: keys found leave;
   ``all``: one int64 per key (-1: not in), else only the slots found. */
static PyObject *kslots(KeyIndex *ix, PyObject *keys_obj, int remove, int all) {
    Py_buffer kv;
    Py_ssize_t n;
    if (keys_view(ix, keys_obj, &kv, &n) < 0) return NULL;
    Slots out;
    PyObject *res = NULL;
    if (slots_open(&out, (ix->used || all) ? n : 0) < 0) goto release;
    if (ix->used == 0 || n == 0) {
        for (Py_ssize_t k = 0; all && k < n; k++) out.at[out.n++] = -1;
        res = slots_close(&out);
        goto release;
    }
    const uint8_t *p = (const uint8_t *)kv.buf;
    uint32_t *hashes = khashes(ix, p, NULL, n);
    if (hashes == NULL) {
        Py_DECREF(out.bytes);
        goto release;
    }
    KEntry *table = ix->table; /* removals never resize the table */
    size_t mask = ix->mask;
    for (Py_ssize_t k = 0; k < n && k < KAHEAD; k++)
        __builtin_prefetch(&table[(size_t)hashes[k] & mask]);
    for (Py_ssize_t k = 0; k < n; k++) {
        if (k + KAHEAD < n) __builtin_prefetch(&table[(size_t)hashes[k + KAHEAD] & mask]);
        size_t i = 0;
        int hit = 0;
        if (ix->used) {
            i = kfind(ix, p + k * ix->width, hashes[k]);
            hit = table[i].hash != 0;
        }
        if (hit) {
            out.at[out.n++] = table[i].slot;
            if (remove) kremove_at(ix, i);
        } else if (all) {
            out.at[out.n++] = -1;
        }
    }
    PyMem_Free(hashes);
    res = slots_close(&out);
release:
    PyBuffer_Release(&kv);
    return res;
}

static PyObject *KeyIndex_discard(KeyIndex *ix, PyObject *keys) { return kslots(ix, keys, 1, 0); }
static PyObject *KeyIndex_pop(KeyIndex *ix, PyObject *keys) { return kslots(ix, keys, 1, 1); }
static PyObject *KeyIndex_get(KeyIndex *ix, PyObject *keys) { return kslots(ix, keys, 0, 1); }

static PyObject *KeyIndex_items(KeyIndex *ix, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    if (out == NULL || ix->table == NULL) return out;
    for (size_t j = 0; j <= ix->mask; j++) {
        const KEntry *e = &ix->table[j];
        if (!e->hash) continue;
        PyObject *item = Py_BuildValue("(y#L)", (const char *)ix->keys +
                                       (size_t)e->slot * (size_t)ix->width, ix->width,
                                       (long long)e->slot);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

static PyObject *KeyIndex_clear(KeyIndex *ix, PyObject *Py_UNUSED(ignored)) {
    PyMem_Free(ix->table);
    ix->table = NULL;
    ix->mask = 0;
    ix->used = 0;
    Py_RETURN_NONE;
}

static Py_ssize_t KeyIndex_len(KeyIndex *ix) { return ix->used; }

static PyObject *KeyIndex_get_width(KeyIndex *ix, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(ix->width);
}

static void KeyIndex_dealloc(KeyIndex *ix) {
    PyMem_Free(ix->table);
    if (ix->column.obj != NULL) PyBuffer_Release(&ix->column);
    Py_TYPE(ix)->tp_free((PyObject *)ix);
}

static PyObject *KeyIndex_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"width", "seed", NULL};
    Py_ssize_t width;
    Py_buffer seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ny*:KeyIndex", kwlist, &width, &seed))
        return NULL;
    if (width < 1 || width > 16 || seed.len != 32) {
        PyBuffer_Release(&seed);
        PyErr_SetString(PyExc_ValueError, "KeyIndex(width in 1..16, seed of 32 bytes)");
        return NULL;
    }
    KeyIndex *ix = (KeyIndex *)type->tp_alloc(type, 0);
    if (ix != NULL) {
        ix->table = NULL;
        ix->mask = 0;
        ix->used = 0;
        ix->width = width;
        memcpy(ix->seed, seed.buf, 32);
        memset(&ix->column, 0, sizeof(Py_buffer));
        ix->keys = NULL;
        ix->nslots = 0;
    }
    PyBuffer_Release(&seed);
    return (PyObject *)ix;
}

static PyMethodDef KeyIndex_methods[] = {
    {"bind", (PyCFunction)KeyIndex_bind, METH_O,
     "bind(column): the key column (C-contiguous, n * width bytes) the keys are read from "
     "from now on (held until the next bind); every entry's slot must be within it"},
    {"put", (PyCFunction)KeyIndex_put, METH_O,
     "put(slots): the keys the column holds at these slots (int64 buffer) -> those slots, "
     "the last of equal keys winning; returns the slots taken over (int64 bytes)"},
    {"discard", (PyCFunction)KeyIndex_discard, METH_O,
     "discard(keys): these keys leave; returns the slots of those that were in (int64 bytes)"},
    {"pop_slots", (PyCFunction)KeyIndex_pop, METH_O,
     "pop_slots(keys): each key's slot, -1 when not in (int64 bytes); the keys found leave"},
    {"get_slots", (PyCFunction)KeyIndex_get, METH_O,
     "get_slots(keys): each key's slot, -1 when not in (int64 bytes)"},
    {"items", (PyCFunction)KeyIndex_items, METH_NOARGS, "(key bytes, slot) pairs"},
    {"clear", (PyCFunction)KeyIndex_clear, METH_NOARGS, "every key leaves (the column stays bound)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef KeyIndex_getset[] = {
    {"width", (getter)KeyIndex_get_width, NULL, "bytes per key", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMappingMethods KeyIndex_as_mapping = {
    .mp_length = (lenfunc)KeyIndex_len,
};

static PyTypeObject KeyIndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "driftline.detectors._id_index.KeyIndex",
    .tp_basicsize = sizeof(KeyIndex),
    .tp_dealloc = (destructor)KeyIndex_dealloc,
    .tp_as_mapping = &KeyIndex_as_mapping,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Fixed-width byte key (a hex event id's bytes) -> ring slot, for the label "
              "join's FIFOs.",
    .tp_methods = KeyIndex_methods,
    .tp_getset = KeyIndex_getset,
    .tp_new = KeyIndex_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_id_index", "Compiled index of the label join's FIFOs.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__id_index(void) {
    if (PyType_Ready(&IdIndexType) < 0 || PyType_Ready(&KeyIndexType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "IdIndex", (PyObject *)&IdIndexType) < 0 ||
        PyModule_AddObjectRef(m, "KeyIndex", (PyObject *)&KeyIndexType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
