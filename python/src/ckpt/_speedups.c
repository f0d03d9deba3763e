/* The hot loop of Python loads in C (internal): ckpt._wire.scatter, the same
 * function with the same checks, ~20x fewer interpreter steps per piece.
 * Optional: ckpt._wire falls back to its Python version when this module
 * is not built (or CKPT_PURE_PYTHON=1), and tests/test_wire.py runs both on
 * the same streams, valid and malformed. Plain CPython API, no other
 * library. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Pieces at least this large are copied with the GIL released. */
static const uint64_t kReleaseGilBytes = 64 * 1024;

static PyObject *stream_error = NULL; /* ckpt._wire.StreamError, set by init() */

static PyObject *error_class(void) { return stream_error ? stream_error : PyExc_ValueError; }

static PyObject *fail(const char *message) {
  PyErr_SetString(error_class(), message);
  return NULL;
}

/* Decodes a varint at *pos (< end); 0 on a truncated or over-long one. */
static int read_varint(const uint8_t *buf, Py_ssize_t end, Py_ssize_t *pos, uint64_t *value) {
  uint64_t result = 0;
  int shift = 0;
  while (*pos < end) {
    uint8_t b = buf[(*pos)++];
    if (shift == 63 && b > 1) return 0; /* past 64 bits */
    result |= (uint64_t)(b & 0x7F) << shift;
    if (b < 0x80) {
      *value = result;
      return 1;
    }
    shift += 7;
    if (shift > 63) return 0;
  }
  return 0;
}

static Py_ssize_t size_at(PyObject *sizes, Py_ssize_t i) {
  return PyLong_AsSsize_t(PyList_GET_ITEM(sizes, i));
}

/* scatter(message, node, offset, sizes, targets, make, on_complete)
 *   -> (node, offset, received); see ckpt._wire.scatter. */
static PyObject *scatter(PyObject *self, PyObject *args) {
  Py_buffer message;
  Py_ssize_t node, offset;
  PyObject *sizes, *targets, *make, *on_complete;
  if (!PyArg_ParseTuple(args, "y*nnO!O!OO", &message, &node, &offset, &PyList_Type, &sizes,
                        &PyList_Type, &targets, &make, &on_complete)) {
    return NULL;
  }
  const uint8_t *buf = (const uint8_t *)message.buf;
  const Py_ssize_t len = message.len;
  Py_ssize_t nsizes = PyList_GET_SIZE(sizes);
  Py_ssize_t received = 0;
  PyObject *result = NULL;
  Py_ssize_t pos = 1;
  uint64_t length;
  if (len == 0 || buf[0] != 0x1A) { /* LoadResponse.data = 3 */
    fail("expected data in load stream");
    goto done;
  }
  if (!read_varint(buf, len, &pos, &length) || length != (uint64_t)(len - pos)) {
    fail("malformed data message");
    goto done;
  }
  while (pos < len) {
    /* (Again each piece: the callbacks may change the lists.) */
    nsizes = PyList_GET_SIZE(sizes);
    if (PyList_GET_SIZE(targets) < nsizes) {
      fail("fewer targets than nodes");
      goto done;
    }
    if (buf[pos] != 0x0A) { /* DataBatch.pieces = 1 */
      PyErr_Format(error_class(), "unexpected field %d in DataBatch", buf[pos] >> 3);
      goto done;
    }
    ++pos;
    uint64_t plen;
    if (!read_varint(buf, len, &pos, &plen) || plen > (uint64_t)(len - pos)) {
      fail("malformed DataPiece");
      goto done;
    }
    const Py_ssize_t stop = pos + (Py_ssize_t)plen;
    uint64_t index = 0, off = 0, n = 0;
    Py_ssize_t start = pos;
    while (pos < stop) {
      uint64_t tag, value;
      const Py_ssize_t tag_at = pos;
      if (!read_varint(buf, stop, &pos, &tag)) {
        fail("malformed DataPiece");
        goto done;
      }
      /* Known fields only in their one-byte form (as the Python version). */
      const int known = pos - tag_at == 1;
      if ((tag & 7) == 0) {
        if (!read_varint(buf, stop, &pos, &value)) {
          fail("malformed DataPiece");
          goto done;
        }
        if (known && tag == 0x08) index = value;
        if (known && tag == 0x10) off = value;
      } else if ((tag & 7) == 2) {
        if (!read_varint(buf, stop, &pos, &value) || value > (uint64_t)(stop - pos)) {
          fail("malformed DataPiece");
          goto done;
        }
        if (known && tag == 0x1A) {
          start = pos;
          n = value;
        }
        pos += (Py_ssize_t)value;
      } else {
        PyErr_Format(error_class(), "unexpected wire type in DataPiece field %d",
                     (int)(tag >> 3));
        goto done;
      }
    }
    if (node < 0 || node >= nsizes) {
      fail("load stream pieces out of order");
      goto done;
    }
    if (index != (uint64_t)node) {
      Py_ssize_t current = size_at(sizes, node);
      if (current == -1 && PyErr_Occurred()) goto done;
      if (index < (uint64_t)node || index >= (uint64_t)nsizes || offset != current) {
        fail("load stream pieces out of order");
        goto done;
      }
      node = (Py_ssize_t)index;
      offset = 0;
    }
    Py_ssize_t size = size_at(sizes, node);
    if (size == -1 && PyErr_Occurred()) goto done;
    if (off != (uint64_t)offset || n > (uint64_t)(size - offset)) {
      fail("load stream piece out of range");
      goto done;
    }
    PyObject *target = PyList_GET_ITEM(targets, node);
    Py_INCREF(target); /* held across the callbacks */
    if (target != Py_None) {
      if (Py_TYPE(target) != &PyMemoryView_Type) {
        PyObject *made = PyObject_CallFunction(make, "n", node);
        Py_DECREF(target);
        if (made == NULL) goto done;
        if (node >= PyList_GET_SIZE(targets)) {
          Py_DECREF(made);
          fail("load targets changed during the load");
          goto done;
        }
        Py_INCREF(made);
        PyList_SetItem(targets, node, made); /* steals one reference */
        target = made;
      }
      Py_buffer dst;
      if (PyObject_GetBuffer(target, &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(target);
        goto done;
      }
      if ((uint64_t)dst.len < off + n) {
        PyBuffer_Release(&dst);
        Py_DECREF(target);
        fail("load target smaller than its tensor");
        goto done;
      }
      if (n >= kReleaseGilBytes) {
        /* Both buffers are held (message, dst): other Python threads (the
           load's reader, the job's own) run while the bytes move. */
        Py_BEGIN_ALLOW_THREADS memcpy((char *)dst.buf + off, buf + start, (size_t)n);
        Py_END_ALLOW_THREADS
      } else {
        memcpy((char *)dst.buf + off, buf + start, (size_t)n);
      }
      PyBuffer_Release(&dst);
      if (on_complete != Py_None && (Py_ssize_t)(off + n) == size) {
        PyObject *r = PyObject_CallFunction(on_complete, "n", node);
        if (r == NULL) {
          Py_DECREF(target);
          goto done;
        }
        Py_DECREF(r);
      }
    }
    Py_DECREF(target);
    offset += (Py_ssize_t)n;
    received += (Py_ssize_t)n;
  }
  result = Py_BuildValue("nnn", node, offset, received);
done:
  PyBuffer_Release(&message);
  return result;
}

static PyObject *init(PyObject *self, PyObject *error) {
  Py_XINCREF(error);
  Py_XSETREF(stream_error, error);
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scatter", scatter, METH_VARARGS, "ckpt._wire.scatter in C."},
    {"init", init, METH_O, "Sets the exception class of protocol errors."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ckpt._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
