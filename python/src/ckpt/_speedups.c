/* The hot loops of the Python client in C (internal), each the twin of a
 * Python function in ckpt._wire with the same checks and results:
 *   loads:  scatter (a data message's pieces into the tensors), node_facts
 *           (what a load reads of each node of the tree);
 *   saves:  next_frame (chunk frames from the tensors' memory), digest and
 *           tensor_node (a tensor's chunk digests and Node record), copy_into
 *           (an async save's snapshot).
 * Optional: ckpt._wire falls back to the Python versions when this module
 * is not built (or CKPT_PURE_PYTHON=1), and tests/test_wire.py runs both on
 * the same inputs, valid and malformed. Plain CPython API; digest and
 * tensor_node also need xxhash.h (0.8 or later, header-only), and are left
 * out without it. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* A message's copies are made with the GIL released when they move at least
 * this many bytes. */
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

/* The copies of one message, made after its pieces are all checked, with the
 * GIL released once for all of them when they move enough bytes. */
typedef struct {
  char *dst;
  const uint8_t *src;
  size_t n;
} Copy;

typedef struct {
  Copy *copies;
  Py_ssize_t num_copies, cap_copies;
  Py_buffer *held; /* buffers of memoryview targets, released at the end */
  Py_ssize_t num_held, cap_held;
  Py_ssize_t *completed; /* nodes whose last byte is in this message */
  Py_ssize_t num_completed, cap_completed;
} Plan;

static int grow(void **items, Py_ssize_t *cap, Py_ssize_t need, size_t item) {
  if (need <= *cap) return 1;
  Py_ssize_t cap2 = *cap ? *cap * 2 : 64;
  while (cap2 < need) cap2 *= 2;
  void *more = PyMem_Realloc(*items, (size_t)cap2 * item);
  if (more == NULL) {
    PyErr_NoMemory();
    return 0;
  }
  *items = more;
  *cap = cap2;
  return 1;
}

static void plan_free(Plan *plan) {
  for (Py_ssize_t i = 0; i < plan->num_held; ++i) PyBuffer_Release(&plan->held[i]);
  PyMem_Free(plan->copies);
  PyMem_Free(plan->held);
  PyMem_Free(plan->completed);
}

/* Where a piece of `n` bytes at `off` of node `node` goes: a target that is
 * an int is the address of memory holding the node's sizes[node] bytes (the
 * caller vouches for it); a memoryview is checked and held. NULL with an
 * exception set on failure. */
static char *destination(Plan *plan, PyObject *target, Py_ssize_t node, uint64_t off, uint64_t n,
                         Py_ssize_t *held_node) {
  if (PyLong_CheckExact(target)) {
    void *base = PyLong_AsVoidPtr(target);
    if (base == NULL) {
      if (!PyErr_Occurred()) fail("load target address is null");
      return NULL;
    }
    return (char *)base + off;
  }
  if (*held_node != node) {
    if (!grow((void **)&plan->held, &plan->cap_held, plan->num_held + 1, sizeof(Py_buffer))) {
      return NULL;
    }
    if (PyObject_GetBuffer(target, &plan->held[plan->num_held],
                           PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
      return NULL;
    }
    ++plan->num_held;
    *held_node = node;
  }
  Py_buffer *dst = &plan->held[plan->num_held - 1];
  if ((uint64_t)dst->len < off + n) {
    fail("load target smaller than its tensor");
    return NULL;
  }
  return (char *)dst->buf + off;
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
  Plan plan = {0};
  Py_ssize_t held_node = -1; /* the node of plan.held's last buffer */
  size_t copied = 0;
  if (len == 0 || buf[0] != 0x1A) { /* LoadResponse.data = 3 */
    fail("expected data in load stream");
    goto done;
  }
  if (node >= 0 && node < nsizes) {
    const Py_ssize_t size = size_at(sizes, node);
    if (size == -1 && PyErr_Occurred()) goto done;
    if (offset < 0 || offset > size) {
      fail("load stream position out of range");
      goto done;
    }
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
        PyErr_Format(error_class(), "unexpected wire type in DataPiece field %d", (int)(tag >> 3));
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
      for (Py_ssize_t skipped = node + 1; skipped < (Py_ssize_t)index; ++skipped) {
        const Py_ssize_t size = size_at(sizes, skipped);
        if (size == -1 && PyErr_Occurred()) goto done;
        if (size != 0) {
          fail("load stream skipped a node's data");
          goto done;
        }
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
    if (target != Py_None) {
      if (Py_TYPE(target) != &PyMemoryView_Type && !PyLong_CheckExact(target)) {
        PyObject *made = PyObject_CallFunction(make, "n", node);
        if (made == NULL) goto done;
        if (node >= PyList_GET_SIZE(targets)) {
          Py_DECREF(made);
          fail("load targets changed during the load");
          goto done;
        }
        PyList_SetItem(targets, node, made); /* the list holds it */
        target = made;
      }
      if (n) {
        char *dst = destination(&plan, target, node, off, n, &held_node);
        if (dst == NULL) goto done;
        if (!grow((void **)&plan.copies, &plan.cap_copies, plan.num_copies + 1, sizeof(Copy))) {
          goto done;
        }
        plan.copies[plan.num_copies++] = (Copy){dst, buf + start, (size_t)n};
        copied += (size_t)n;
      }
      if (on_complete != Py_None && (Py_ssize_t)(off + n) == size) {
        if (!grow((void **)&plan.completed, &plan.cap_completed, plan.num_completed + 1,
                  sizeof(Py_ssize_t))) {
          goto done;
        }
        plan.completed[plan.num_completed++] = node;
      }
    }
    offset += (Py_ssize_t)n;
    received += (Py_ssize_t)n;
  }
  /* Every piece checked: the bytes move. The buffers are held (the message,
     memoryview targets; int targets are the caller's), so other Python
     threads (the load's reader, the job's own) run meanwhile. */
  if (copied >= kReleaseGilBytes) {
    Py_BEGIN_ALLOW_THREADS for (Py_ssize_t i = 0; i < plan.num_copies; ++i) {
      memcpy(plan.copies[i].dst, plan.copies[i].src, plan.copies[i].n);
    }
    Py_END_ALLOW_THREADS
  } else {
    for (Py_ssize_t i = 0; i < plan.num_copies; ++i) {
      memcpy(plan.copies[i].dst, plan.copies[i].src, plan.copies[i].n);
    }
  }
  /* The targets are let go before their completion callbacks (which may
     free or release a staging buffer). */
  for (Py_ssize_t i = 0; i < plan.num_held; ++i) PyBuffer_Release(&plan.held[i]);
  plan.num_held = 0;
  for (Py_ssize_t i = 0; i < plan.num_completed; ++i) {
    PyObject *r = PyObject_CallFunction(on_complete, "n", plan.completed[i]);
    if (r == NULL) goto done;
    Py_DECREF(r);
  }
  result = Py_BuildValue("nnn", node, offset, received);
done:
  plan_free(&plan);
  PyBuffer_Release(&message);
  return result;
}

/* ---- node_facts: what loads read of each node of a NodeBatch, in one pass.
 *
 * Only the encoding protobuf writers produce is read here: every message's
 * fields in increasing field-number order, each once (repeated shape packed).
 * A node encoded otherwise (legal protobuf a hostile server could send,
 * where merging rules apply) is answered None: the caller reads that node
 * through the protobuf runtime instead (ckpt._wire.node_facts). */

typedef struct {
  const uint8_t *buf;
  Py_ssize_t pos, end;
} Reader;

/* The next field: its number, wire type and, for wire type 2, the bounds of
 * its bytes; for 0, its value. 0 on malformed input. */
static int next_field(Reader *r, uint32_t *number, int *type, uint64_t *value, Py_ssize_t *start) {
  uint64_t tag;
  if (!read_varint(r->buf, r->end, &r->pos, &tag)) return 0;
  *number = (uint32_t)(tag >> 3);
  *type = (int)(tag & 7);
  switch (*type) {
    case 0:
      return read_varint(r->buf, r->end, &r->pos, value);
    case 1:
      if (r->end - r->pos < 8) return 0;
      r->pos += 8;
      return 1;
    case 5:
      if (r->end - r->pos < 4) return 0;
      r->pos += 4;
      return 1;
    case 2:
      if (!read_varint(r->buf, r->end, &r->pos, value) || *value > (uint64_t)(r->end - r->pos)) {
        return 0;
      }
      *start = r->pos;
      r->pos += (Py_ssize_t)*value;
      return 1;
    default:
      return 0;
  }
}

typedef struct {
  uint32_t number;
  int type;
  uint64_t value; /* wire type 0: the value; 2: the length */
  Py_ssize_t at;  /* wire type 2: where the bytes start */
} Field;

/* The next field of a message in the encoding protobuf writers make: field
 * numbers increasing, only `repeated` (0: none) may follow itself. 1: a
 * field; 0: the message's end; -1: malformed, or any other order. */
static int next_in_order(Reader *r, uint32_t *last, uint32_t repeated, Field *f) {
  f->value = 0;
  f->at = 0;
  if (r->pos >= r->end) return 0;
  if (!next_field(r, &f->number, &f->type, &f->value, &f->at) || f->number == 0) return -1;
  if (f->number < *last || (f->number == *last && f->number != repeated)) return -1;
  *last = f->number;
  return 1;
}

/* Field 1, a varint, of a DataRef (size) or a Container (size); 0: not
 * canonical. (DataRef's field 3, the chunk digests, repeats.) */
static int data_size(const uint8_t *buf, Py_ssize_t start, Py_ssize_t end, uint64_t *size) {
  Reader r = {buf, start, end};
  uint32_t last = 0;
  Field f;
  int got;
  *size = 0;
  while ((got = next_in_order(&r, &last, 3, &f)) > 0) {
    if (f.number == 1) {
      if (f.type != 0) return 0;
      *size = f.value;
    }
  }
  return got == 0;
}

/* BytesMeta{DataRef data = 1}: the data's size; 0: not canonical. */
static int bytes_size(const uint8_t *buf, Py_ssize_t start, Py_ssize_t end, uint64_t *size) {
  Reader r = {buf, start, end};
  uint32_t last = 0;
  Field f;
  int got;
  *size = 0;
  while ((got = next_in_order(&r, &last, 0, &f)) > 0) {
    if (f.number == 1 && (f.type != 2 || !data_size(buf, f.at, f.at + (Py_ssize_t)f.value, size))) {
      return 0;
    }
  }
  return got == 0;
}

typedef struct {
  uint32_t value_field; /* Node's value oneof field set last; 0: none */
  int key_kind;         /* 0 none, 1 str_key, 2 int_key */
  Py_ssize_t key_start, key_len;
  int64_t int_key;
  uint64_t dtype;
  Py_ssize_t shape_start, shape_end; /* packed shape */
  Py_ssize_t device_start, device_len;
  int requires_grad;
  uint64_t size; /* tensor/bytes data size, container size */
} Facts;

/* 1: read; 0: not read here (an encoding protobuf writers do not make, or
 * one this reader does not decode, such as a group or an overlong varint:
 * protobuf, which parsed the same bytes, is asked instead). */
static int read_tensor(const uint8_t *buf, Py_ssize_t start, Py_ssize_t end, Facts *f) {
  Reader r = {buf, start, end};
  uint32_t last = 0;
  Field field;
  int got;
  while ((got = next_in_order(&r, &last, 0, &field)) > 0) {
    const uint32_t number = field.number;
    const int type = field.type;
    const uint64_t value = field.value;
    const Py_ssize_t at = field.at;
    if (number == 1 && type == 0) {
      f->dtype = value;
    } else if (number == 2 && type == 2) {
      f->shape_start = at;
      f->shape_end = at + (Py_ssize_t)value;
      Py_ssize_t pos = at;
      uint64_t dim;
      while (pos < f->shape_end) {
        if (!read_varint(buf, f->shape_end, &pos, &dim)) return 0;
      }
    } else if (number == 3 && type == 2) {
      f->device_start = at;
      f->device_len = (Py_ssize_t)value;
    } else if (number == 4 && type == 0) {
      f->requires_grad = value != 0;
    } else if (number == 5 && type == 2) {
      if (!data_size(buf, at, at + (Py_ssize_t)value, &f->size)) return 0;
    } else if (number == 6 && type == 2) {
      /* stats: not read by loads */
    } else if (number <= 6) {
      return 0; /* a known field in another wire type (e.g. unpacked shape) */
    }
  }
  return got == 0;
}

/* As read_tensor, for a Node: its key and value (the last value field wins,
 * as in a oneof). */
static int read_node(const uint8_t *buf, Py_ssize_t start, Py_ssize_t end, Facts *f) {
  Reader r = {buf, start, end};
  uint32_t last = 0;
  Field field;
  int got;
  memset(f, 0, sizeof(*f));
  while ((got = next_in_order(&r, &last, 0, &field)) > 0) {
    const uint32_t number = field.number;
    const int type = field.type;
    const uint64_t value = field.value;
    const Py_ssize_t at = field.at;
    if (number == 1 && type == 2) {
      f->key_kind = 1;
      f->key_start = at;
      f->key_len = (Py_ssize_t)value;
    } else if (number == 2 && type == 0) {
      f->key_kind = 2;
      f->int_key = (int64_t)value;
    } else if (number >= 3 && number <= 12) {
      f->value_field = number;
      f->dtype = 0;
      f->shape_start = f->shape_end = 0;
      f->device_start = f->device_len = 0;
      f->requires_grad = 0;
      f->size = 0;
      const int expected = (number == 7 || number == 8) ? 0 : number == 9 ? 1 : 2;
      if (type != expected) return 0;
      if (number >= 3 && number <= 5) {
        if (!data_size(buf, at, at + (Py_ssize_t)value, &f->size)) return 0;
        f->size = (uint32_t)f->size; /* Container.size is a uint32 */
      } else if (number == 11) {
        if (!read_tensor(buf, at, at + (Py_ssize_t)value, f)) return 0;
      } else if (number == 12) {
        if (!bytes_size(buf, at, at + (Py_ssize_t)value, &f->size)) return 0;
      }
    }
  }
  return got == 0;
}

static PyObject *facts_tuple(const uint8_t *buf, const Facts *f) {
  PyObject *key;
  if (f->key_kind == 1) {
    key = PyUnicode_DecodeUTF8((const char *)buf + f->key_start, f->key_len, "strict");
  } else if (f->key_kind == 2) {
    key = PyLong_FromLongLong(f->int_key);
  } else {
    Py_INCREF(Py_None);
    key = Py_None;
  }
  if (key == NULL) return NULL;
  PyObject *shape = PyList_New(0);
  if (shape == NULL) {
    Py_DECREF(key);
    return NULL;
  }
  Reader r = {buf, f->shape_start, f->shape_end};
  while (r.pos < r.end) {
    uint64_t dim;
    PyObject *d = NULL;
    if (!read_varint(buf, r.end, &r.pos, &dim) || (d = PyLong_FromLongLong((int64_t)dim)) == NULL ||
        PyList_Append(shape, d) < 0) {
      Py_XDECREF(d);
      Py_DECREF(key);
      Py_DECREF(shape);
      if (!PyErr_Occurred()) fail("malformed shape");
      return NULL;
    }
    Py_DECREF(d);
  }
  PyObject *shape_tuple = PyList_AsTuple(shape);
  Py_DECREF(shape);
  if (shape_tuple == NULL) {
    Py_DECREF(key);
    return NULL;
  }
  PyObject *device =
      PyUnicode_DecodeUTF8((const char *)buf + f->device_start, f->device_len, "strict");
  if (device == NULL) {
    Py_DECREF(key);
    Py_DECREF(shape_tuple);
    return NULL;
  }
  /* DType is an enum: an int32, as protobuf reads it. */
  return Py_BuildValue("INlNNOK", f->value_field, key, (long)(int32_t)f->dtype, shape_tuple, device,
                       f->requires_grad ? Py_True : Py_False, (unsigned long long)f->size);
}

/* node_facts(node_batch) -> [per node: (value field, key, dtype, shape,
 * device, requires_grad, size) or None], or [] for a batch not read here;
 * see ckpt._wire.node_facts. */
static PyObject *node_facts(PyObject *self, PyObject *arg) {
  Py_buffer batch;
  if (PyObject_GetBuffer(arg, &batch, PyBUF_SIMPLE) < 0) return NULL;
  const uint8_t *buf = (const uint8_t *)batch.buf;
  PyObject *out = PyList_New(0);
  Reader r = {buf, 0, batch.len};
  while (out != NULL && r.pos < r.end) {
    uint32_t number;
    int type;
    uint64_t value = 0;
    Py_ssize_t at = 0;
    if (!next_field(&r, &number, &type, &value, &at) || (number == 1 && type != 2)) {
      /* Not read here (see read_node): no facts at all, so that the caller
         asks protobuf for every node. */
      Py_DECREF(out);
      out = PyList_New(0);
      break;
    }
    if (number != 1) continue; /* unknown field */
    Facts f;
    PyObject *item = NULL;
    if (read_node(buf, at, at + (Py_ssize_t)value, &f)) {
      item = facts_tuple(buf, &f);
    } else {
      Py_INCREF(Py_None);
      item = Py_None;
    }
    if (item == NULL || PyList_Append(out, item) < 0) {
      Py_XDECREF(item);
      Py_CLEAR(out);
      break;
    }
    Py_DECREF(item);
  }
  PyBuffer_Release(&batch);
  return out;
}

/* ---- The save path: chunk sources, digests and frames.
 *
 * A chunk's source is a buffer (a memoryview) or a tuple (address, length)
 * of memory the caller keeps alive (a contiguous CPU tensor's, from its
 * data_ptr): no Python object per chunk beyond the tuple. */

typedef struct {
  const char *data;
  Py_ssize_t len;
  Py_buffer view; /* view.obj != NULL: held, release with source_release */
} Source;

static int source_get(PyObject *src, Source *out) {
  memset(out, 0, sizeof(*out));
  if (PyTuple_Check(src)) {
    if (PyTuple_GET_SIZE(src) != 2) {
      PyErr_SetString(PyExc_TypeError, "a chunk source tuple is (address, length)");
      return 0;
    }
    void *address = PyLong_AsVoidPtr(PyTuple_GET_ITEM(src, 0));
    Py_ssize_t len = PyLong_AsSsize_t(PyTuple_GET_ITEM(src, 1));
    if (PyErr_Occurred()) return 0;
    if (len < 0 || (address == NULL && len > 0)) {
      PyErr_SetString(PyExc_ValueError, "a chunk source needs an address and a length >= 0");
      return 0;
    }
    out->data = (const char *)address;
    out->len = len;
    return 1;
  }
  if (PyObject_GetBuffer(src, &out->view, PyBUF_C_CONTIGUOUS) < 0) return 0;
  out->data = (const char *)out->view.buf;
  out->len = out->view.len;
  return 1;
}

static void source_release(Source *s) {
  if (s->view.obj != NULL) PyBuffer_Release(&s->view);
}

#if defined(__has_include)
#if __has_include(<xxhash.h>)
#define XXH_INLINE_ALL
#include <xxhash.h>
/* XXH3's output is stable from xxHash 0.8.0 on (what the servers and the
   xxhash package compute); older headers leave digests to the package. */
#if XXH_VERSION_NUMBER >= 800
#define CKPT_HAVE_XXHASH 1
#endif
#endif
#endif

#ifdef CKPT_HAVE_XXHASH
/* digest(source) -> the 16-byte XXH3-128 digest of a chunk (big-endian high
 * then low 64 bits, as xxhash.xxh3_128().digest()); the GIL is released
 * while large chunks are read. */
static PyObject *digest(PyObject *self, PyObject *arg) {
  Source s;
  if (!source_get(arg, &s)) return NULL;
  XXH128_hash_t h;
  if ((uint64_t)s.len >= kReleaseGilBytes) {
    Py_BEGIN_ALLOW_THREADS h = XXH3_128bits(s.data, (size_t)s.len);
    Py_END_ALLOW_THREADS
  } else {
    h = XXH3_128bits(s.data, (size_t)s.len);
  }
  source_release(&s);
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  return PyBytes_FromStringAndSize((const char *)c.digest, sizeof(c.digest));
}
#endif

static const Py_ssize_t kPieceFraming = 40; /* rpc::kPieceFramingBytes */

static size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

static char *put_varint(char *p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = (char)((v & 0x7F) | 0x80);
    v >>= 7;
  }
  *p++ = (char)v;
  return p;
}

typedef struct {
  Py_ssize_t chunk; /* index in chunks */
  Py_ssize_t off, len;
} Piece;

/* A piece's ChunkPiece bytes before its data: digest, offset (when not 0),
 * data's tag and length. */
static size_t piece_head_size(const Piece *p) {
  return 2 + 16 + (p->off ? 1 + varint_size((uint64_t)p->off) : 0) + 1 +
         varint_size((uint64_t)p->len);
}

/* next_frame(chunks, index, offset, limit, whole) -> (frame, index, offset)
 * or (None, index, offset) when no piece is left; see ckpt._wire.next_frame. */
static PyObject *next_frame(PyObject *self, PyObject *args) {
  PyObject *chunks;
  Py_ssize_t index, offset, limit;
  int whole;
  if (!PyArg_ParseTuple(args, "O!nnnp", &PyList_Type, &chunks, &index, &offset, &limit, &whole)) {
    return NULL;
  }
  /* A snapshot of the list: reading a source may run Python code. */
  chunks = PyList_AsTuple(chunks);
  if (chunks == NULL) return NULL;
  const Py_ssize_t n = PyTuple_GET_SIZE(chunks);
  if (index < 0 || index > n || offset < 0 || limit <= kPieceFraming) {
    PyErr_SetString(PyExc_ValueError, "next_frame: bad position or limit");
    Py_DECREF(chunks);
    return NULL;
  }
  const Py_ssize_t start = index; /* sources[k] is chunks[start + k]'s */
  Piece *pieces = NULL;
  Py_ssize_t num = 0, cap = 0;
  Source *sources = NULL; /* per piece's chunk, held until copied */
  Py_ssize_t num_sources = 0, cap_sources = 0;
  Py_ssize_t used = 0;
  PyObject *result = NULL;
  int done = 0;
  while (!done && index < n) {
    PyObject *item = PyTuple_GET_ITEM(chunks, index);
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
        !PyBytes_Check(PyTuple_GET_ITEM(item, 0)) ||
        PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 0)) != 16) {
      PyErr_SetString(PyExc_TypeError, "chunks are (16-byte digest, source) tuples");
      goto fail;
    }
    if (!grow((void **)&sources, &cap_sources, num_sources + 1, sizeof(Source))) goto fail;
    if (!source_get(PyTuple_GET_ITEM(item, 1), &sources[num_sources])) goto fail;
    ++num_sources;
    const Py_ssize_t len = sources[num_sources - 1].len;
    if (offset > len) {
      PyErr_SetString(PyExc_ValueError, "next_frame: offset past the chunk's end");
      goto fail;
    }
    if (offset == 0) {
      if (whole && len + kPieceFraming > limit) {
        if (num) break; /* this frame ends; the chunk goes alone in the next */
        if (!grow((void **)&pieces, &cap, num + 1, sizeof(Piece))) goto fail;
        pieces[num++] = (Piece){index, 0, len};
        ++index;
        break;
      }
      if (num && len + kPieceFraming <= limit && limit < used + len + kPieceFraming) break;
    }
    while (offset < len) {
      if (used + kPieceFraming >= limit) {
        done = 1;
        break;
      }
      Py_ssize_t take = limit - used - kPieceFraming;
      if (take > len - offset) take = len - offset;
      if (!grow((void **)&pieces, &cap, num + 1, sizeof(Piece))) goto fail;
      pieces[num++] = (Piece){index, offset, take};
      used += take + kPieceFraming;
      offset += take;
    }
    if (!done) {
      ++index;
      offset = 0;
    }
  }
  if (num == 0) {
    result = Py_BuildValue("Onn", Py_None, index, offset);
    goto fail; /* (releases what is held; result is kept) */
  }
  {
    size_t body = 0;
    for (Py_ssize_t i = 0; i < num; ++i) {
      const size_t inner = piece_head_size(&pieces[i]) + (size_t)pieces[i].len;
      body += 1 + varint_size(inner) + inner;
    }
    PyObject *frame = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(1 + varint_size(body) + body));
    if (frame == NULL) goto fail;
    char *p = PyBytes_AS_STRING(frame);
    *p++ = 0x1A; /* SaveRequest.chunks = 3 */
    p = put_varint(p, body);
    /* Headers first (they need the GIL for the digests), then the data
       without it. */
    char **data_at = PyMem_Malloc((size_t)num * sizeof(char *));
    if (data_at == NULL) {
      Py_DECREF(frame);
      PyErr_NoMemory();
      goto fail;
    }
    for (Py_ssize_t i = 0; i < num; ++i) {
      const Piece *pc = &pieces[i];
      const size_t inner = piece_head_size(pc) + (size_t)pc->len;
      *p++ = 0x0A; /* ChunkBatch.pieces = 1 */
      p = put_varint(p, inner);
      *p++ = 0x0A; /* ChunkPiece.digest = 1 */
      *p++ = 0x10;
      memcpy(p, PyBytes_AS_STRING(PyTuple_GET_ITEM(PyTuple_GET_ITEM(chunks, pc->chunk), 0)), 16);
      p += 16;
      if (pc->off) {
        *p++ = 0x10; /* ChunkPiece.offset = 2 */
        p = put_varint(p, (uint64_t)pc->off);
      }
      *p++ = 0x1A; /* ChunkPiece.data = 3 */
      p = put_varint(p, (uint64_t)pc->len);
      data_at[i] = p;
      p += pc->len;
    }
    Py_BEGIN_ALLOW_THREADS for (Py_ssize_t i = 0; i < num; ++i) {
      const Source *s = &sources[pieces[i].chunk - start];
      memcpy(data_at[i], s->data + pieces[i].off, (size_t)pieces[i].len);
    }
    Py_END_ALLOW_THREADS PyMem_Free(data_at);
    result = Py_BuildValue("Nnn", frame, index, offset);
  }
fail:
  for (Py_ssize_t i = 0; i < num_sources; ++i) source_release(&sources[i]);
  PyMem_Free(sources);
  PyMem_Free(pieces);
  Py_DECREF(chunks);
  return result;
}

#ifdef CKPT_HAVE_XXHASH
/* A growing byte string for encoding messages. */
typedef struct {
  char *data;
  size_t len, cap;
} Out;

static int out_reserve(Out *o, size_t more) {
  if (o->len + more <= o->cap) return 1;
  size_t cap = o->cap ? o->cap * 2 : 256;
  while (cap < o->len + more) cap *= 2;
  char *data = PyMem_Realloc(o->data, cap);
  if (data == NULL) {
    PyErr_NoMemory();
    return 0;
  }
  o->data = data;
  o->cap = cap;
  return 1;
}

static int out_varint(Out *o, uint64_t v) {
  if (!out_reserve(o, 10)) return 0;
  o->len = (size_t)(put_varint(o->data + o->len, v) - o->data);
  return 1;
}

static int out_bytes(Out *o, const void *p, size_t n) {
  if (n == 0) return 1;
  if (!out_reserve(o, n)) return 0;
  memcpy(o->data + o->len, p, n);
  o->len += n;
  return 1;
}

/* A length-delimited field: tag, length, bytes. */
static int out_field(Out *o, uint8_t tag, const void *p, size_t n) {
  return out_bytes(o, &tag, 1) && out_varint(o, n) && out_bytes(o, p, n);
}

/* tensor_node(key, dtype, shape, device, requires_grad, size, chunk_size,
 *             source, stats) -> (Node bytes, [chunk digests])
 * The serialized Node of a tensor for a save (see ckpt._save): its data's
 * chunks of chunk_size bytes hashed from source (a buffer or (address,
 * length) of `size` bytes; None when size is 0); stats: a serialized
 * TensorStats or None. The same message Entry.fill writes through protobuf
 * (tests/test_wire.py compares them). */
static PyObject *tensor_node(PyObject *self, PyObject *args) {
  PyObject *key, *shape, *source, *stats;
  unsigned long long dtype, size, chunk_size;
  const char *device;
  Py_ssize_t device_len;
  int requires_grad;
  if (!PyArg_ParseTuple(args, "OKOs#pKKOO", &key, &dtype, &shape, &device, &device_len,
                        &requires_grad, &size, &chunk_size, &source, &stats)) {
    return NULL;
  }
  Out meta = {0}, ref = {0}, node = {0};
  PyObject *digests = NULL, *result = NULL, *shape_seq = NULL;
  Source s = {0};
  int have_source = 0;
  if (size > 0) {
    if (chunk_size == 0) {
      PyErr_SetString(PyExc_ValueError, "tensor_node: chunk_size 0");
      goto done;
    }
    if (!source_get(source, &s)) goto done;
    have_source = 1;
    if ((unsigned long long)s.len != size) {
      PyErr_Format(PyExc_ValueError, "tensor_node: %zd bytes given, %llu declared", s.len, size);
      goto done;
    }
  }
  const size_t num_chunks = size ? (size_t)((size + chunk_size - 1) / chunk_size) : 0;
  digests = PyList_New((Py_ssize_t)num_chunks);
  if (digests == NULL) goto done;
  /* DataRef{size, chunk_size, chunks} */
  if (size && !(out_varint(&ref, 0x08) && out_varint(&ref, size) && out_varint(&ref, 0x10) &&
                out_varint(&ref, chunk_size))) {
    goto done;
  }
  for (size_t i = 0; i < num_chunks; ++i) {
    const uint64_t off = (uint64_t)i * chunk_size;
    const size_t len = (size_t)(size - off < chunk_size ? size - off : chunk_size);
    XXH128_hash_t h;
    if (len >= kReleaseGilBytes) {
      Py_BEGIN_ALLOW_THREADS h = XXH3_128bits(s.data + off, len);
      Py_END_ALLOW_THREADS
    } else {
      h = XXH3_128bits(s.data + off, len);
    }
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    PyObject *d = PyBytes_FromStringAndSize((const char *)c.digest, 16);
    if (d == NULL) goto done;
    PyList_SET_ITEM(digests, (Py_ssize_t)i, d);
    if (!out_field(&ref, 0x1A, c.digest, 16)) goto done;
  }
  /* TensorMeta{dtype, shape (packed), device, requires_grad, data, stats} */
  if (dtype && !(out_varint(&meta, 0x08) && out_varint(&meta, dtype))) goto done;
  shape_seq = PySequence_Fast(shape, "tensor_node: shape must be a sequence");
  if (shape_seq == NULL) goto done;
  if (PySequence_Fast_GET_SIZE(shape_seq) > 0) {
    Out dims = {0};
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(shape_seq); ++i) {
      long long dim = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(shape_seq, i));
      if ((dim == -1 && PyErr_Occurred()) || !out_varint(&dims, (uint64_t)dim)) {
        PyMem_Free(dims.data);
        goto done;
      }
    }
    const int ok = out_field(&meta, 0x12, dims.data, dims.len);
    PyMem_Free(dims.data);
    if (!ok) goto done;
  }
  if (device_len && !out_field(&meta, 0x1A, device, (size_t)device_len)) goto done;
  if (requires_grad && !(out_varint(&meta, 0x20) && out_varint(&meta, 1))) goto done;
  if (!out_field(&meta, 0x2A, ref.data, ref.len)) goto done;
  if (stats != Py_None) {
    if (!PyBytes_Check(stats)) {
      PyErr_SetString(PyExc_TypeError, "tensor_node: stats must be bytes or None");
      goto done;
    }
    if (!out_field(&meta, 0x32, PyBytes_AS_STRING(stats), (size_t)PyBytes_GET_SIZE(stats))) {
      goto done;
    }
  }
  /* Node{str_key | int_key, tensor} */
  if (PyUnicode_Check(key)) {
    Py_ssize_t n;
    const char *k = PyUnicode_AsUTF8AndSize(key, &n);
    if (k == NULL || !out_field(&node, 0x0A, k, (size_t)n)) goto done;
  } else if (PyLong_Check(key)) {
    long long k = PyLong_AsLongLong(key);
    if ((k == -1 && PyErr_Occurred()) ||
        !(out_varint(&node, 0x10) && out_varint(&node, (uint64_t)k))) {
      goto done;
    }
  } else if (key != Py_None) {
    PyErr_SetString(PyExc_TypeError, "tensor_node: key must be str, int or None");
    goto done;
  }
  if (!out_field(&node, 0x5A, meta.data, meta.len)) goto done;
  PyObject *bytes = PyBytes_FromStringAndSize(node.data, (Py_ssize_t)node.len);
  if (bytes == NULL) goto done;
  result = Py_BuildValue("NO", bytes, digests);
done:
  if (have_source) source_release(&s);
  Py_XDECREF(shape_seq);
  Py_XDECREF(digests);
  PyMem_Free(meta.data);
  PyMem_Free(ref.data);
  PyMem_Free(node.data);
  return result;
}
#endif

/* One thread's share of copy_in_parallel's copies. */
typedef struct {
  const Copy *copies;
  Py_ssize_t n;
  size_t begin, end; /* the share: bytes [begin, end) of all copies in order */
} CopyShare;

static void *copy_share(void *arg) {
  const CopyShare *share = arg;
  size_t at = 0; /* where copies[i] starts among all the bytes */
  for (Py_ssize_t i = 0; i < share->n && at < share->end; at += share->copies[i++].n) {
    const Copy *c = &share->copies[i];
    const size_t lo = share->begin > at ? share->begin - at : 0;
    const size_t hi = share->end - at < c->n ? share->end - at : c->n;
    if (lo < hi) memcpy(c->dst + lo, c->src + lo, hi - lo);
  }
  return NULL;
}

/* Copies copies[0..n) on this thread and up to three helper threads, each
 * taking an equal share of the bytes, a copy split between threads where
 * the shares meet (one thread copies at a fraction of what the memory can
 * do; an async save's stall is this copy). Without a helper thread to be
 * had, its share is copied here. Called without the GIL. */
static void copy_in_parallel(const Copy *copies, Py_ssize_t n) {
  enum { kMaxThreads = 4 };
  const size_t kBytesPerThread = (size_t)16 << 20;
  size_t total = 0;
  for (Py_ssize_t i = 0; i < n; ++i) total += copies[i].n;
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  size_t threads = total / kBytesPerThread;
  if (cores >= 1 && threads > (size_t)cores) threads = (size_t)cores;
  if (threads > kMaxThreads) threads = kMaxThreads;
  if (threads < 1) threads = 1;
  CopyShare shares[kMaxThreads];
  pthread_t helpers[kMaxThreads];
  int started[kMaxThreads] = {0};
  for (size_t t = 0; t < threads; ++t) {
    shares[t] = (CopyShare){copies, n, total / threads * t,
                            t + 1 == threads ? total : total / threads * (t + 1)};
  }
  for (size_t t = 0; t + 1 < threads; ++t) {
    started[t] = pthread_create(&helpers[t], NULL, copy_share, &shares[t]) == 0;
    if (!started[t]) copy_share(&shares[t]);
  }
  copy_share(&shares[threads - 1]);
  for (size_t t = 0; t + 1 < threads; ++t) {
    if (started[t]) pthread_join(helpers[t], NULL);
  }
}

/* copy_into(buffer, copies): copies[i] = (source address, offset, length)
 * copies `length` bytes of memory the caller holds into the writable buffer
 * at `offset` (each range checked against the buffer), without the GIL;
 * see ckpt._wire.copy_into (an async save's snapshot). */
static PyObject *copy_into(PyObject *self, PyObject *args) {
  PyObject *target, *list;
  if (!PyArg_ParseTuple(args, "OO!", &target, &PyList_Type, &list)) return NULL;
  Py_buffer dst;
  if (PyObject_GetBuffer(target, &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
  const Py_ssize_t n = PyList_GET_SIZE(list);
  Copy *copies = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Copy));
  PyObject *result = NULL;
  if (copies == NULL) {
    PyErr_NoMemory();
    goto done;
  }
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject *item = PyList_GET_ITEM(list, i);
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
      PyErr_SetString(PyExc_TypeError, "copy_into: copies are (address, offset, length)");
      goto done;
    }
    void *src = PyLong_AsVoidPtr(PyTuple_GET_ITEM(item, 0));
    const Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 1));
    const Py_ssize_t len = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 2));
    if (PyErr_Occurred()) goto done;
    if (off < 0 || len < 0 || off > dst.len || len > dst.len - off || (src == NULL && len)) {
      PyErr_SetString(PyExc_ValueError, "copy_into: a copy outside the buffer");
      goto done;
    }
    copies[i] = (Copy){(char *)dst.buf + off, (const uint8_t *)src, (size_t)len};
  }
  Py_BEGIN_ALLOW_THREADS copy_in_parallel(copies, n);
  Py_END_ALLOW_THREADS Py_INCREF(Py_None);
  result = Py_None;
done:
  PyMem_Free(copies);
  PyBuffer_Release(&dst);
  return result;
}

static PyObject *init(PyObject *self, PyObject *error) {
  Py_XINCREF(error);
  Py_XSETREF(stream_error, error);
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scatter", scatter, METH_VARARGS, "ckpt._wire.scatter in C."},
    {"node_facts", node_facts, METH_O, "ckpt._wire.node_facts in C."},
    {"next_frame", next_frame, METH_VARARGS, "ckpt._wire.next_frame in C."},
    {"copy_into", copy_into, METH_VARARGS, "ckpt._wire.copy_into in C."},
#ifdef CKPT_HAVE_XXHASH
    {"digest", digest, METH_O, "The XXH3-128 digest of a chunk source."},
    {"tensor_node", tensor_node, METH_VARARGS, "A tensor's serialized Node for a save."},
#endif
    {"init", init, METH_O, "Sets the exception class of protocol errors."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ckpt._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
