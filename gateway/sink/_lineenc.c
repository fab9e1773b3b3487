/* The sink's line-protocol encoder for the common case, in one C call (issue 11, must-have 4).

   encode(samples, templates, quality_codes) does what LineEncoder._encode does in Python for a batch whose
   values are all finite ints, bools or floats, whose stamps fit 64 bits and whose names hold no newline:
   it returns (body, lines), the lines joined by "\n" in UTF-8 without a leading newline. Anything else it
   leaves to Python, which knows the rules for it (skipping and counting NaN, building templates, the long
   way for odd names): it returns None for "take the Python path", or the index of the first sample whose
   template is missing (Python makes the templates and calls again). It never raises for a bad sample:
   Python's own path, run on the same batch, raises or copes as it always did.

   Float text: the shortest text that reads back as the same double, with a point or an exponent, spelled
   as orjson spells it (the Python path's text: the same bytes either way). The common case (|v| in
   [1e-4, 1e15) with at most 15 significant digits: every reading a meter gives with a scale factor) is
   found without dtoa: the first k for which round(|v| * 10^k) / 10^k == |v|. Both factors are exact
   doubles and IEEE division rounds correctly, so the quotient is what strtod makes of the decimal m e-k;
   and a double has at most one decimal of 15 significant digits or fewer that reads back as it (DBL_DIG),
   so the first k found gives dtoa's shortest digits. Everything else goes through
   PyOS_double_to_string(v, 'r'), which is repr, respelled. The GIL is held throughout: a batch is short
   work. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* x87 arithmetic rounds twice (to 80 bits, then to 64): the exactness argument above needs SSE2 doubles. */
#if defined(__i386__) && !defined(__SSE2_MATH__)
#define FAST_FLOATS 0
#else
#define FAST_FLOATS 1
#endif

#define MISSING_NONE (-1)

static PyObject *str_device, *str_ts, *str_values, *str_quality;

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap * 2;
    if (cap < b->len + extra) {
        cap = b->len + extra;
    }
    char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

/* Digits of u at p, returns the count (at most 20). */
static int write_u64(char *p, uint64_t u) {
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    for (int i = 0; i < n; i++) {
        p[i] = tmp[n - 1 - i];
    }
    return n;
}

/* m with k decimals (k >= 1: "12.345", "0.0012"; k == 0: "12.0"). Digits by constant divisions only. */
static int write_fixed(char *p, uint64_t m, int k) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    while (n <= k) { /* a zero before the point, and after it as many as the decimals need */
        digits[n++] = '0';
    }
    int len = 0;
    for (int i = n - 1; i >= k; i--) {
        p[len++] = digits[i];
    }
    p[len++] = '.';
    if (k == 0) {
        p[len++] = '0';
        return len;
    }
    for (int i = k - 1; i >= 0; i--) {
        p[len++] = digits[i];
    }
    return len;
}

/* Room a float's text may take: repr's longest is 24 ("-2.2250738585072014e-308"). */
#define FLOAT_ROOM 32

/* repr's text respelled as orjson spells it, so that both paths write the same bytes: the Python path's
   float text is orjson's, which differs from repr's only with a negative exponent: no zero padding
   (1.5e-7 for 1.5e-07) and fixed notation for exponent -5 (0.00001234 for 1.234e-05). */
static int respell(char *p, const char *text, size_t len) {
    const char *e = strstr(text, "e-");
    if (e == NULL) {
        memcpy(p, text, len);
        return (int)len;
    }
    const char *exp = e + 2;
    while (*exp == '0') {
        exp++;
    }
    int n = 0;
    if (strcmp(exp, "5") == 0) {
        const char *m = text;
        if (*m == '-') {
            p[n++] = *m++;
        }
        memcpy(p + n, "0.0000", 6);
        n += 6;
        for (; m < e; m++) {
            if (*m != '.') {
                p[n++] = *m;
            }
        }
        return n;
    }
    n = (int)(e - text);
    memcpy(p, text, (size_t)n);
    p[n++] = 'e';
    p[n++] = '-';
    size_t elen = strlen(exp);
    memcpy(p + n, exp, elen);
    return n + (int)elen;
}

/* orjson's text of finite v at p (repr's digits); returns its length, or -1 with an exception set (out
   of memory). */
static int write_double(char *p, double v) {
    int n = 0;
    double a = v;
    if (signbit(v)) {
        p[n++] = '-';
        a = -v;
    }
    if (a == 0.0) {
        memcpy(p + n, "0.0", 3);
        return n + 3;
    }
#if FAST_FLOATS
    if (a >= 1e-4 && a < 1e15) {
        for (int k = 0; k <= 19; k++) {
            double s = a * POW10[k];
            if (s >= 1e15) {
                break; /* more than 15 significant digits: not unique, dtoa decides */
            }
            /* the nearest integer, but for s within a hair of a half: there no decimal with k digits reads
               back as a, and the check below fails whichever integer this gives */
            uint64_t m = (uint64_t)(s + 0.5);
            if ((double)m / POW10[k] == a) {
                return n + write_fixed(p + n, m, k);
            }
        }
    }
#endif
    char *text = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (text == NULL) {
        return -1;
    }
    size_t len = strlen(text);
    if (len > FLOAT_ROOM - 8) { /* cannot happen for a double; never write past the room reserved */
        PyMem_Free(text);
        PyErr_SetString(PyExc_SystemError, "float text longer than expected");
        return -1;
    }
    int out = respell(p, text, len);
    PyMem_Free(text);
    return out;
}

/* round(ts * 1_000_000) as Python computes it (float.__round__: half to even), written at p. Returns the
   length, or 0 when the stamp is not finite or is past 64 bits (Python's path handles or rejects it). */
static int write_stamp(char *p, double ts) {
    double x = ts * 1000000.0;
    if (!isfinite(x)) {
        return 0;
    }
    double r = round(x);
    if (fabs(x - r) == 0.5) {
        r = 2.0 * round(x / 2.0);
    }
    if (r >= -9223372036854775808.0 && r < 9223372036854775808.0) {
        int64_t i = (int64_t)r;
        if (i < 0) {
            *p = '-';
            return 1 + write_u64(p + 1, (uint64_t)0 - (uint64_t)i);
        }
        return write_u64(p, (uint64_t)i);
    }
    if (r >= 0.0 && r < 18446744073709551616.0) {
        return write_u64(p, (uint64_t)r);
    }
    return 0;
}

/* The UTF-8 of a template part, or NULL (no exception left) when it is not a str. */
static const char *part_utf8(PyObject *part, Py_ssize_t *size) {
    if (!PyUnicode_Check(part)) {
        return NULL;
    }
    if (PyUnicode_IS_COMPACT_ASCII(part)) { /* the usual name: its characters are its UTF-8 */
        *size = PyUnicode_GET_LENGTH(part);
        return (const char *)PyUnicode_DATA(part);
    }
    const char *s = PyUnicode_AsUTF8AndSize(part, size);
    if (s == NULL) {
        PyErr_Clear();
    }
    return s;
}

static int write_part(Buf *b, PyObject *part) {
    Py_ssize_t size;
    const char *s = part_utf8(part, &size);
    if (s == NULL || buf_reserve(b, size + FLOAT_ROOM) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, s, (size_t)size);
    b->len += size;
    return 0;
}

/* Outcome of one sample. */
enum { ENC_OK, ENC_EMPTY, ENC_PYTHON, ENC_MISSING, ENC_ERROR };

static int encode_sample(Buf *b, PyObject *sample, PyObject *templates, PyObject *codes) {
    PyObject *device = NULL, *ts = NULL, *values = NULL, *quality = NULL, *names = NULL, *key = NULL;
    int rc = ENC_PYTHON;

    values = PyObject_GetAttr(sample, str_values);
    if (values == NULL || !PyDict_CheckExact(values)) {
        goto done;
    }
    Py_ssize_t count = PyDict_GET_SIZE(values);
    if (count == 0) {
        rc = ENC_EMPTY; /* nothing to write, as in Python */
        goto done;
    }
    device = PyObject_GetAttr(sample, str_device);
    if (device == NULL) {
        goto done;
    }
    names = PyTuple_New(count);
    if (names == NULL) {
        goto done;
    }
    Py_ssize_t pos = 0, i = 0;
    PyObject *name, *value;
    while (PyDict_Next(values, &pos, &name, &value)) {
        if (i >= count) {
            goto done;
        }
        Py_INCREF(name);
        PyTuple_SET_ITEM(names, i, name);
        i++;
    }
    if (i != count) {
        goto done;
    }
    key = PyTuple_Pack(2, device, names);
    if (key == NULL) {
        goto done;
    }
    PyObject *template = PyDict_GetItemWithError(templates, key); /* borrowed */
    if (template == NULL) {
        rc = PyErr_Occurred() ? ENC_PYTHON : ENC_MISSING;
        goto done;
    }
    if (!PyTuple_CheckExact(template) || PyTuple_GET_SIZE(template) != count + 2) {
        goto done;
    }
    Py_INCREF(template); /* a value's float() below cannot run Python code, but keep it alive anyway */

    pos = 0;
    i = 0;
    while (PyDict_Next(values, &pos, &name, &value)) {
        double v;
        if (PyFloat_CheckExact(value)) {
            v = PyFloat_AS_DOUBLE(value);
        } else if (PyLong_CheckExact(value) || PyBool_Check(value)) {
            v = PyLong_AsDouble(value); /* ints and bools are written as floats, as Python's float() */
            if (v == -1.0 && PyErr_Occurred()) {
                goto done_template;
            }
        } else {
            goto done_template;
        }
        if (!isfinite(v)) {
            goto done_template; /* skipped and counted by Python's long way */
        }
        if (write_part(b, PyTuple_GET_ITEM(template, i)) < 0) {
            goto done_template;
        }
        int n = write_double(b->data + b->len, v);
        if (n < 0) {
            goto done_template;
        }
        b->len += n;
        i++;
    }

    quality = PyObject_GetAttr(sample, str_quality);
    if (quality == NULL) {
        goto done_template;
    }
    long long code = 0;
    PyObject *found = PyDict_GetItemWithError(codes, quality); /* borrowed */
    if (found != NULL) {
        if (!PyLong_CheckExact(found)) {
            goto done_template;
        }
        code = PyLong_AsLongLong(found);
        if (code == -1 && PyErr_Occurred()) {
            goto done_template;
        }
    } else if (PyErr_Occurred()) {
        goto done_template;
    }
    if (write_part(b, PyTuple_GET_ITEM(template, count)) < 0) {
        goto done_template;
    }
    if (code < 0) {
        b->data[b->len++] = '-';
        b->len += write_u64(b->data + b->len, (uint64_t)0 - (uint64_t)code);
    } else {
        b->len += write_u64(b->data + b->len, (uint64_t)code);
    }

    ts = PyObject_GetAttr(sample, str_ts);
    if (ts == NULL || !PyFloat_CheckExact(ts)) {
        goto done_template;
    }
    if (write_part(b, PyTuple_GET_ITEM(template, count + 1)) < 0) {
        goto done_template;
    }
    int n = write_stamp(b->data + b->len, PyFloat_AS_DOUBLE(ts));
    if (n == 0) {
        goto done_template;
    }
    b->len += n;
    rc = ENC_OK;

done_template:
    Py_DECREF(template);
done:
    if (rc == ENC_PYTHON && PyErr_Occurred()) {
        /* out of memory stays an error; anything else (a bad value, a missing attribute) is Python's to
           meet on its own path, which raises or copes exactly as it would without this module */
        rc = PyErr_ExceptionMatches(PyExc_MemoryError) ? ENC_ERROR : ENC_PYTHON;
        if (rc == ENC_PYTHON) {
            PyErr_Clear();
        }
    }
    Py_XDECREF(device);
    Py_XDECREF(ts);
    Py_XDECREF(values);
    Py_XDECREF(quality);
    Py_XDECREF(names);
    Py_XDECREF(key);
    return rc;
}

static PyObject *lineenc_encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode(samples, templates, quality_codes) takes 3 arguments");
        return NULL;
    }
    PyObject *templates = args[1], *codes = args[2];
    if (!PyDict_Check(templates) || !PyDict_Check(codes)) {
        PyErr_SetString(PyExc_TypeError, "encode: templates and quality_codes must be dicts");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "encode: samples must be a sequence");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Buf b = {NULL, 0, 0};
    if (buf_reserve(&b, 64 + n * 256) < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t lines = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* the sequence's own reference: a list could shrink under us only if Python code ran, and none does,
           but a strong reference costs nothing here */
        PyObject *sample = PySequence_Fast_GET_ITEM(seq, i);
        Py_INCREF(sample);
        int rc = encode_sample(&b, sample, templates, codes);
        Py_DECREF(sample);
        if (rc == ENC_OK) {
            lines++;
        } else if (rc == ENC_EMPTY) {
            continue;
        } else if (rc == ENC_MISSING) {
            result = PyLong_FromSsize_t(i);
            goto out;
        } else if (rc == ENC_ERROR) {
            goto out;
        } else {
            result = Py_NewRef(Py_None);
            goto out;
        }
    }
    /* each line is led by its template's "\n": exactly `lines` newlines, the first at the start, or a name
       held one (Python's path deals with that) */
    Py_ssize_t newlines = 0;
    const char *p = b.data, *end = b.data + b.len;
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        newlines++;
        p++;
    }
    if (newlines != lines || (lines > 0 && b.data[0] != '\n')) {
        result = Py_NewRef(Py_None);
        goto out;
    }
    /* the body without the first line's leading newline */
    PyObject *body = PyBytes_FromStringAndSize(lines ? b.data + 1 : "", lines ? b.len - 1 : 0);
    if (body == NULL) {
        goto out;
    }
    PyObject *count = PyLong_FromSsize_t(lines);
    if (count == NULL) {
        Py_DECREF(body);
        goto out;
    }
    result = PyTuple_Pack(2, body, count);
    Py_DECREF(body);
    Py_DECREF(count);
out:
    PyMem_Free(b.data);
    Py_DECREF(seq);
    return result;
}

/* For the tests: the float text this module writes for one double (ValueError for NaN or infinities). */
static PyObject *lineenc_format_float(PyObject *module, PyObject *arg) {
    (void)module;
    double v = PyFloat_AsDouble(arg);
    if (v == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!isfinite(v)) {
        PyErr_SetString(PyExc_ValueError, "format_float: NaN and infinities have no line-protocol text");
        return NULL;
    }
    char text[FLOAT_ROOM];
    int n = write_double(text, v);
    if (n < 0) {
        return NULL;
    }
    return PyUnicode_FromStringAndSize(text, n);
}

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))lineenc_encode, METH_FASTCALL,
     "encode(samples, templates, quality_codes) -> (body, lines) | int | None"},
    {"format_float", lineenc_format_float, METH_O, "format_float(v) -> the float text encode writes"},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module) {
    (void)module;
    if (str_device == NULL) {
        str_device = PyUnicode_InternFromString("device");
        str_ts = PyUnicode_InternFromString("ts");
        str_values = PyUnicode_InternFromString("values");
        str_quality = PyUnicode_InternFromString("quality");
        if (!str_device || !str_ts || !str_values || !str_quality) {
            return -1;
        }
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway.sink._lineenc",
    .m_doc = "The sink's line-protocol encoder for the common case (see LineEncoder in lineproto.py).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__lineenc(void) { return PyModuleDef_Init(&moduledef); }
