// ckpt._core: the Python package's native path. The C++ client core
// (client/raw_client.h) reads Load streams from gRPC's buffers straight into
// the tensors' memory and sends a single writer's saves from the tensors'
// memory, with the GIL released while bytes move: grpcio copies each
// received message three times before Python sees it, and each sent one
// twice, which caps a pure-Python client well below the C++ one.
//
// The Python side keeps every decision: for a load the core hands it the
// version and the selected tree (as the protobuf bytes the server sent), and
// Python answers where each node's bytes go, exactly as it does for a load
// read with grpcio (ckpt._load); a save gets the entries ckpt._tree flattened
// and where each one's bytes lie. Multi-part (DCP) saves, saves of tensors
// not in host memory, and every other call stay on grpcio.
//
// Links the client core without LibTorch (tensors arrive as addresses or
// buffers) and Debian's gRPC as shared libraries; only PyInit__core is
// exported, so a process that also imports grpcio keeps two separate gRPC
// runtimes that do not see each other.

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/encoded.h"
#include "client/raw_client.h"
#include "common/slice.h"
#include "common/status_macros.h"

namespace {

using ckpt::Node;
using ckpt::NodeKind;
using ckpt::TensorSlice;
using ckpt::Tree;
using ckpt::VersionInfo;
using ckpt::client::LoadOptions;
using ckpt::client::LoadSink;
using ckpt::client::RawClient;

// ckpt._core.StatusError(code: int, details: str): a failed call; ckpt maps
// it onto its exception classes.
PyObject* status_error = nullptr;

// Owns one Python reference. Destroy with the GIL held.
class Ref {
 public:
  Ref() = default;
  explicit Ref(PyObject* p) : p_(p) {}
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
  Ref(Ref&& other) noexcept : p_(std::exchange(other.p_, nullptr)) {}
  Ref& operator=(Ref&& other) noexcept {
    Py_XDECREF(p_);
    p_ = std::exchange(other.p_, nullptr);
    return *this;
  }
  ~Ref() { Py_XDECREF(p_); }
  PyObject* get() const { return p_; }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  PyObject* p_ = nullptr;
};

void RaiseStatus(const absl::Status& status) {
  // (details from a server need not be UTF-8)
  Ref details(PyUnicode_DecodeUTF8(status.message().data(),
                                   static_cast<Py_ssize_t>(status.message().size()), "replace"));
  if (!details) return;
  Ref args(Py_BuildValue("(iO)", static_cast<int>(status.code()), details.get()));
  if (args) PyErr_SetObject(status_error, args.get());
}

PyObject* NewRef(PyObject* p) {
  Py_INCREF(p);
  return p;
}

// Runs a load on a helper thread, without the GIL, while the thread that
// called load() serves the load's Python work (the sink's callbacks) with
// the GIL: they run on the caller's thread, with its thread-local state
// (grad mode, current CUDA stream). Between requests the caller checks for
// signals every 100 ms, so Ctrl-C stops a load even while it waits for the
// server.
class CallerThread {
 public:
  // Runs `work`; a C++ exception becomes a status (none may leave Serve
  // while the worker runs).
  static absl::Status Guarded(const std::function<absl::Status()>& work) {
    try {
      return work();
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError("out of memory in the load's callback");
    } catch (const std::exception& e) {
      return absl::InternalError(e.what());
    }
  }

  // From the load's thread: runs `work` on the calling thread, with the
  // GIL, and returns its status.
  absl::Status Run(const std::function<absl::Status()>& work) {
    std::unique_lock<std::mutex> lock(mu_);
    request_ = &work;
    wake_.notify_all();
    wake_.wait(lock, [&] { return request_ == nullptr; });
    return result_;
  }

  // On the calling thread, with the GIL (held again on return): runs `load`
  // on a helper thread and serves its Run() requests until it returns. When
  // a signal handler raises, `interrupted` runs once with the GIL (it keeps
  // the error and stops the load).
  absl::Status Serve(const std::function<absl::Status()>& load,
                     const std::function<void()>& interrupted) {
    absl::Status status;
    bool done = false;
    std::thread worker([&] {
      absl::Status s;
      try {
        s = load();
      } catch (const std::exception& e) {
        s = absl::ResourceExhaustedError(absl::StrCat("the call failed: ", e.what()));
      }
      std::lock_guard<std::mutex> lock(mu_);
      status = std::move(s);
      done = true;
      wake_.notify_all();
    });
    PyThreadState* saved = PyEval_SaveThread();
    std::unique_lock<std::mutex> lock(mu_);
    bool stopped = false;
    for (;;) {
      wake_.wait_for(lock, std::chrono::milliseconds(100),
                     [&] { return done || request_ != nullptr; });
      if (request_ != nullptr) {
        const std::function<absl::Status()>* work = request_;
        lock.unlock();
        PyEval_RestoreThread(saved);
        absl::Status result = Guarded(*work);
        saved = PyEval_SaveThread();
        lock.lock();
        result_ = std::move(result);
        request_ = nullptr;
        wake_.notify_all();
        continue;
      }
      if (done) break;
      if (stopped) continue;
      lock.unlock();
      PyEval_RestoreThread(saved);
      if (PyErr_CheckSignals() < 0) {
        stopped = true;
        Guarded([&] {
          interrupted();
          return absl::OkStatus();
        }).IgnoreError();
      }
      saved = PyEval_SaveThread();
      lock.lock();
    }
    lock.unlock();
    worker.join();
    PyEval_RestoreThread(saved);
    return status;
  }

 private:
  std::mutex mu_;
  std::condition_variable wake_;
  const std::function<absl::Status()>* request_ = nullptr;
  absl::Status result_;
};

// Where one node's bytes go.
struct Target {
  enum Kind { kSkip, kAddress, kBuffer, kMake };
  Kind kind = kSkip;
  char* base = nullptr;
  uint64_t capacity = 0;  // bytes writable at base
  Py_buffer view{};       // kBuffer: held until the node is complete
};

// The load's sink. Python's on_tree says where the data goes; pieces are
// then copied there on the load's thread without the GIL (the "fast"
// answer: a list of targets, as ckpt._wire.scatter takes them) or handed to
// Python's on_data (the other answer, for sinks that place bytes
// themselves). Every Python call goes through CallerThread::Run.
//
// on_tree(version: bytes, nodes: bytes, slice_nodes: list[int] | None)
//   -> (targets, make, on_complete) | on_data
// targets[i]: None (not wanted), an int (the address of memory holding
// exactly node i's bytes: the caller checked its size), a writable buffer,
// or anything else, replaced in the list by make(i) (a writable buffer) when
// node i's first bytes arrive. on_complete(i) (unless None) runs after the
// last byte of a node whose target is a buffer (given or made) has arrived,
// and that buffer is let go first; nodes written at an address get none.
// Completions run in batches (at most kCompletedBatch nodes or
// kCompletedBytes of buffers, and the rest after the load): each batch is
// one switch to the calling thread. on_data(node, offset,
// memoryview) gets each piece whole, in order; the view is released after
// the call, so it must not be kept (nor slices of it).
constexpr size_t kCompletedBatch = 256;
constexpr uint64_t kCompletedBytes = 64ull << 20;

class PySink : public LoadSink {
 public:
  PySink(CallerThread* caller, PyObject* on_tree, const std::vector<TensorSlice>& slices)
      : caller_(caller), on_tree_(NewRef(on_tree)), slices_(slices) {}
  // With the GIL held.
  ~PySink() override {
    for (Target& t : targets_) Release(&t);
    Py_XDECREF(error_type_);
    Py_XDECREF(error_value_);
    Py_XDECREF(error_traceback_);
  }

  absl::Status OnSlices(absl::Span<const uint32_t> nodes) override {
    slice_nodes_.assign(nodes.begin(), nodes.end());
    return absl::OkStatus();
  }

  absl::Status OnTree(const VersionInfo& version, const Tree& tree) override {
    sizes_.resize(tree.size());
    for (size_t i = 0; i < tree.size(); ++i) sizes_[i] = tree[i].data.size;
    for (size_t s = 0; s < slice_nodes_.size() && s < slices_.size(); ++s) {
      // The client core checked each box against its tensor already.
      auto box = ckpt::SliceBytes(tree[slice_nodes_[s]].tensor, slices_[s]);
      if (!box.ok()) return box.status();
      sizes_[slice_nodes_[s]] = *box;
    }
    const std::string version_bytes = ckpt::client::EncodeVersionInfo(version);
    const std::string node_bytes = ckpt::client::EncodeNodeBatch(tree);
    return caller_->Run([&] { return AskOnTree(version_bytes, node_bytes, tree.size()); });
  }

  absl::Status OnData(size_t node, uint64_t offset, absl::string_view bytes) override {
    if (on_data_) return caller_->Run([&] { return Deliver(node, offset, bytes); });
    Target& t = targets_[node];
    if (t.kind == Target::kSkip) return absl::OkStatus();
    if (t.kind == Target::kMake) {
      CKPT_RETURN_IF_ERROR(caller_->Run([&] { return Make(node, &t); }));
    }
    if (offset + bytes.size() > t.capacity) {
      return absl::InternalError("load target smaller than its tensor");
    }
    std::memcpy(t.base + offset, bytes.data(), bytes.size());
    if (t.kind == Target::kBuffer && offset + bytes.size() == sizes_[node]) {
      completed_.push_back(node);
      completed_bytes_ += sizes_[node];
      if (completed_.size() >= kCompletedBatch || completed_bytes_ >= kCompletedBytes) {
        return caller_->Run([&] { return FlushCompleted(); });
      }
    }
    return absl::OkStatus();
  }

  // With the GIL: lets go of the buffers of the nodes completed since the
  // last call and runs on_complete for each, in order. Called in batches
  // (each is a switch to the calling thread) and once after the load.
  absl::Status FlushCompleted() {
    absl::Status status;
    for (size_t node : completed_) {
      Release(&targets_[node]);
      if (!on_complete_ || error_type_ != nullptr || !status.ok()) continue;
      Ref done(PyObject_CallFunction(on_complete_.get(), "n", static_cast<Py_ssize_t>(node)));
      if (!done) status = Failed();
    }
    completed_.clear();
    completed_bytes_ = 0;
    return status;
  }

  // Pieces are copied where they lie in gRPC's buffers; Python's on_data
  // gets them whole (one call per piece, not per slice of the transport).
  bool AcceptsPartialPieces() const override { return !on_data_; }

  // With the GIL: keeps the pending Python error (the first one) for
  // RestoreError; returns the status that aborts the load.
  absl::Status Failed() {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (error_type_ == nullptr && type != nullptr) {
      error_type_ = type;
      error_value_ = value;
      error_traceback_ = traceback;
    } else {
      Py_XDECREF(type);
      Py_XDECREF(value);
      Py_XDECREF(traceback);
    }
    return absl::CancelledError("the load's Python callback raised");
  }

  // With the GIL: sets the Python error a callback raised, if one did.
  bool RestoreError() {
    if (error_type_ == nullptr) return false;
    PyErr_Restore(std::exchange(error_type_, nullptr), std::exchange(error_value_, nullptr),
                  std::exchange(error_traceback_, nullptr));
    return true;
  }

 private:
  // With the GIL: on_tree(...), and its answer taken apart.
  absl::Status AskOnTree(const std::string& version_bytes, const std::string& node_bytes,
                         size_t num_nodes) {
    if (error_type_ != nullptr) return absl::CancelledError("the load was interrupted");
    Ref slice_nodes;
    if (slices_.empty()) {
      slice_nodes = Ref(NewRef(Py_None));
    } else {
      slice_nodes = Ref(PyList_New(static_cast<Py_ssize_t>(slice_nodes_.size())));
      if (!slice_nodes) return Failed();
      for (size_t s = 0; s < slice_nodes_.size(); ++s) {
        PyObject* n = PyLong_FromUnsignedLong(slice_nodes_[s]);
        if (n == nullptr) return Failed();
        PyList_SET_ITEM(slice_nodes.get(), static_cast<Py_ssize_t>(s), n);
      }
    }
    Ref answer(PyObject_CallFunction(on_tree_.get(), "y#y#O", version_bytes.data(),
                                     static_cast<Py_ssize_t>(version_bytes.size()),
                                     node_bytes.data(), static_cast<Py_ssize_t>(node_bytes.size()),
                                     slice_nodes.get()));
    if (!answer) return Failed();
    if (PyCallable_Check(answer.get())) {
      on_data_ = std::move(answer);
      return absl::OkStatus();
    }
    PyObject* targets;
    PyObject* make;
    PyObject* on_complete;
    if (!PyArg_ParseTuple(answer.get(), "O!OO", &PyList_Type, &targets, &make, &on_complete)) {
      return Failed();
    }
    if (PyList_GET_SIZE(targets) < static_cast<Py_ssize_t>(num_nodes)) {
      PyErr_SetString(PyExc_ValueError, "fewer load targets than nodes");
      return Failed();
    }
    targets_list_ = Ref(NewRef(targets));
    make_ = Ref(NewRef(make));
    if (on_complete != Py_None) on_complete_ = Ref(NewRef(on_complete));
    targets_.resize(num_nodes);
    for (size_t i = 0; i < num_nodes; ++i) {
      PyObject* item = PyList_GET_ITEM(targets, static_cast<Py_ssize_t>(i));
      Target& t = targets_[i];
      if (item == Py_None) {
        t.kind = Target::kSkip;
      } else if (PyLong_CheckExact(item)) {
        t.base = static_cast<char*>(PyLong_AsVoidPtr(item));
        if (t.base == nullptr) {
          if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "load target address is null");
          return Failed();
        }
        t.kind = Target::kAddress;
        t.capacity = sizes_[i];
      } else if (PyMemoryView_Check(item)) {
        if (!Hold(item, &t)) return Failed();
      } else {
        t.kind = Target::kMake;
      }
    }
    return absl::OkStatus();
  }

  // With the GIL: make(node), held as t's destination and stored in the
  // targets list (as ckpt._wire.scatter leaves it).
  absl::Status Make(size_t node, Target* t) {
    if (error_type_ != nullptr) return absl::CancelledError("the load was interrupted");
    Ref made(PyObject_CallFunction(make_.get(), "n", static_cast<Py_ssize_t>(node)));
    if (!made || !Hold(made.get(), t)) return Failed();
    if (static_cast<Py_ssize_t>(node) >= PyList_GET_SIZE(targets_list_.get())) {
      PyErr_SetString(PyExc_ValueError, "load targets changed during the load");
      return Failed();
    }
    PyList_SetItem(targets_list_.get(), static_cast<Py_ssize_t>(node), NewRef(made.get()));
    return absl::OkStatus();
  }

  // With the GIL: on_data(node, offset, a read-only view of the bytes); the
  // view is released whatever the call did (the bytes are gRPC's).
  absl::Status Deliver(size_t node, uint64_t offset, absl::string_view bytes) {
    if (error_type_ != nullptr) return absl::CancelledError("the load was interrupted");
    Ref view(PyMemoryView_FromMemory(const_cast<char*>(bytes.data()),
                                     static_cast<Py_ssize_t>(bytes.size()), PyBUF_READ));
    if (!view) return Failed();
    Ref r(PyObject_CallFunction(on_data_.get(), "nKO", static_cast<Py_ssize_t>(node),
                                static_cast<unsigned long long>(offset), view.get()));
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    Ref released(PyObject_CallMethod(view.get(), "release", nullptr));
    if (!released) {
      Py_XDECREF(type);
      Py_XDECREF(value);
      Py_XDECREF(traceback);
      return Failed();  // a view of it was kept (BufferError)
    }
    PyErr_Restore(type, value, traceback);
    if (!r) return Failed();
    return absl::OkStatus();
  }

  // With the GIL: a writable, contiguous buffer of `object` held as t's
  // destination; false with a Python error set.
  static bool Hold(PyObject* object, Target* t) {
    if (PyObject_GetBuffer(object, &t->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
      return false;
    }
    t->kind = Target::kBuffer;
    t->base = static_cast<char*>(t->view.buf);
    t->capacity = static_cast<uint64_t>(t->view.len);
    return true;
  }

  // With the GIL: lets go of t's buffer; t takes no more bytes.
  static void Release(Target* t) {
    if (t->kind == Target::kBuffer) PyBuffer_Release(&t->view);
    t->kind = Target::kSkip;
    t->base = nullptr;
    t->capacity = 0;
  }

  CallerThread* caller_;
  Ref on_tree_;
  const std::vector<TensorSlice>& slices_;
  std::vector<uint32_t> slice_nodes_;
  std::vector<uint64_t> sizes_;
  std::vector<Target> targets_;
  Ref targets_list_;
  Ref make_;
  Ref on_complete_;
  Ref on_data_;
  std::vector<size_t> completed_;  // nodes whose buffer is full, not yet flushed
  uint64_t completed_bytes_ = 0;
  PyObject* error_type_ = nullptr;
  PyObject* error_value_ = nullptr;
  PyObject* error_traceback_ = nullptr;
};

// ---------------------------------------------------------------- Client

struct ClientObject {
  PyObject_HEAD RawClient* client;
  // The process that opened it. A forked child shares the parent's sockets
  // and gRPC's polling state: it must neither close nor free the client
  // (shutting down the sockets would cut the parent's calls), so it leaks it.
  pid_t pid;
};

bool InOtherProcess(const ClientObject* c) { return c->pid != getpid(); }

int ClientInit(PyObject* self, PyObject* args, PyObject* kwargs) {
  auto* c = reinterpret_cast<ClientObject*>(self);
  if (c->client != nullptr) {
    // (a load may be running on the client it has)
    PyErr_SetString(PyExc_RuntimeError, "ckpt._core.Client is initialized already");
    return -1;
  }
  static const char* keywords[] = {"target", "token",       "tls",        "ca_cert",     "cert",
                                   "key",    "server_name", "chunk_size", "batch_bytes", nullptr};
  const char* target;
  const char* token = "";
  int tls = 0;
  const char* ca_cert = "";
  const char* cert = "";
  const char* key = "";
  const char* server_name = "";
  unsigned int chunk_size = 0;
  unsigned long long batch_bytes = 64ull << 20;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|spssssIK", const_cast<char**>(keywords),
                                   &target, &token, &tls, &ca_cert, &cert, &key, &server_name,
                                   &chunk_size, &batch_bytes)) {
    return -1;
  }
  ckpt::client::ClientOptions options;
  options.connect_timeout = absl::ZeroDuration();  // like grpcio: connect on first use
  options.token = token;
  options.tls = tls != 0;
  options.tls_ca_file = ca_cert;
  options.tls_cert_file = cert;
  options.tls_key_file = key;
  options.tls_server_name = server_name;
  options.chunk_size = chunk_size;
  options.batch_bytes = batch_bytes;
  auto connected = RawClient::Connect(target, options);
  if (!connected.ok()) {
    RaiseStatus(connected.status());
    return -1;
  }
  c->client = connected->release();
  c->pid = getpid();
  return 0;
}

void ClientDealloc(PyObject* self) {
  auto* c = reinterpret_cast<ClientObject*>(self);
  RawClient* client = std::exchange(c->client, nullptr);
  if (client != nullptr && !InOtherProcess(c)) {
    Py_BEGIN_ALLOW_THREADS delete client;
    Py_END_ALLOW_THREADS
  }
  PyTypeObject* type = Py_TYPE(self);
  type->tp_free(self);
  Py_DECREF(type);  // instances of a heap type hold a reference to it
}

PyObject* ClientClose(PyObject* self, PyObject*) {
  auto* c = reinterpret_cast<ClientObject*>(self);
  if (c->client != nullptr && !InOtherProcess(c)) c->client->Close();
  Py_RETURN_NONE;
}

// Strings of a sequence of str.
bool StringList(PyObject* seq, const char* what, std::vector<std::string>* out) {
  Ref fast(PySequence_Fast(seq, what));
  if (!fast) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.get());
  for (Py_ssize_t i = 0; i < n; ++i) {
    Py_ssize_t size;
    const char* s = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(fast.get(), i), &size);
    if (s == nullptr) return false;
    out->emplace_back(s, static_cast<size_t>(size));
  }
  return true;
}

bool UintList(PyObject* seq, std::vector<uint64_t>* out) {
  Ref fast(PySequence_Fast(seq, "a slice's start and length are sequences of int"));
  if (!fast) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.get());
  for (Py_ssize_t i = 0; i < n; ++i) {
    const unsigned long long v = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast.get(), i));
    if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) return false;
    out->push_back(v);
  }
  return true;
}

// Runs one call of the client `self` (a ClientObject): refused once closed
// or in a process forked from the one that opened it; the client is held
// for the call; a C++ exception becomes a Python one.
PyObject* Call(PyObject* self, const std::function<PyObject*()>& call) {
  auto* c = reinterpret_cast<ClientObject*>(self);
  if (c->client == nullptr) {
    RaiseStatus(absl::FailedPreconditionError("client is closed"));
    return nullptr;
  }
  if (InOtherProcess(c)) {
    RaiseStatus(absl::FailedPreconditionError(
        "the native path's client was opened in another process (forked from it)"));
    return nullptr;
  }
  Ref hold(NewRef(self));
  try {
    return call();
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

// A call's timeout in seconds (None: none) as `out`; false with a Python
// error set, DeadlineExceeded when no time is left (as grpcio).
bool Timeout(PyObject* timeout, absl::Duration* out) {
  if (timeout == Py_None) return true;
  const double seconds = PyFloat_AsDouble(timeout);
  if (seconds == -1.0 && PyErr_Occurred()) return false;
  if (!(seconds > 0)) {
    RaiseStatus(absl::DeadlineExceededError("Deadline Exceeded"));
    return false;
  }
  *out = absl::Seconds(seconds);
  return true;
}

PyObject* Load(ClientObject* c, const char* name, long long version, const char* tag,
               PyObject* patterns, int skip_data, PyObject* timeout, PyObject* slices,
               PyObject* on_tree) {
  if (version < 0) {
    PyErr_SetString(PyExc_ValueError, "version must be 0 (latest or the tag) or more");
    return nullptr;
  }
  LoadOptions options;
  options.version = static_cast<uint64_t>(version);
  options.tag = tag;
  options.skip_data = skip_data != 0;
  if (!StringList(patterns, "patterns are a sequence of str", &options.patterns)) return nullptr;
  if (!Timeout(timeout, &options.timeout)) return nullptr;
  Ref fast(PySequence_Fast(slices, "slices are a sequence of (key, start, length)"));
  if (!fast) return nullptr;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast.get()); ++i) {
    const char* key;
    Py_ssize_t key_size;
    PyObject* start;
    PyObject* length;
    if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast.get(), i), "s#OO", &key, &key_size, &start,
                          &length)) {
      return nullptr;
    }
    TensorSlice& s = options.slices.emplace_back();
    s.key.assign(key, static_cast<size_t>(key_size));
    if (!UintList(start, &s.start) || !UintList(length, &s.length)) return nullptr;
  }
  ckpt::client::StopSource stop;
  options.stop = &stop;
  CallerThread caller;
  PySink sink(&caller, on_tree, options.slices);
  RawClient* client = c->client;
  const std::string load_name = name;
  absl::Status status =
      caller.Serve([&] { return client->Load(load_name, options, &sink); },
                   [&] {
                     sink.Failed().IgnoreError();  // keeps the KeyboardInterrupt for the caller
                     stop.Stop();
                   });
  if (status.ok()) sink.FlushCompleted().IgnoreError();  // (the sink keeps an error)
  if (sink.RestoreError()) return nullptr;
  if (!status.ok()) {
    RaiseStatus(status);
    return nullptr;
  }
  Py_RETURN_NONE;
}

// load(name, version, tag, patterns, skip_data, timeout, slices, on_tree):
// streams the version through on_tree's answer (see PySink). timeout:
// seconds or None; slices: a sequence of (key, start, length). Raises
// StatusError for a failed call, or what a callback (or a signal handler:
// KeyboardInterrupt) raised, which also stops the load.
PyObject* ClientLoad(PyObject* self, PyObject* args) {
  auto* c = reinterpret_cast<ClientObject*>(self);
  const char* name;
  long long version;
  const char* tag;
  PyObject* patterns;
  int skip_data;
  PyObject* timeout;
  PyObject* slices;
  PyObject* on_tree;
  if (!PyArg_ParseTuple(args, "sLsOpOOO", &name, &version, &tag, &patterns, &skip_data, &timeout,
                        &slices, &on_tree)) {
    return nullptr;
  }
  return Call(self, [&] {
    return Load(c, name, version, tag, patterns, skip_data, timeout, slices, on_tree);
  });
}

// ---------------------------------------------------------------- saves

// Python buffers held for the length of a save (released with the GIL).
class HeldBuffers {
 public:
  HeldBuffers() = default;
  HeldBuffers(const HeldBuffers&) = delete;
  HeldBuffers& operator=(const HeldBuffers&) = delete;
  ~HeldBuffers() {
    for (Py_buffer& b : buffers_) PyBuffer_Release(&b);
  }
  // The bytes of `object` (a contiguous buffer), held; false with a Python
  // error set.
  bool Hold(PyObject* object, absl::Span<const uint8_t>* out) {
    Py_buffer& b = buffers_.emplace_back();
    if (PyObject_GetBuffer(object, &b, PyBUF_C_CONTIGUOUS) < 0) {
      buffers_.pop_back();
      return false;
    }
    *out =
        absl::Span<const uint8_t>(static_cast<const uint8_t*>(b.buf), static_cast<size_t>(b.len));
    return true;
  }

 private:
  std::deque<Py_buffer> buffers_;  // (stable addresses)
};

// Attribute `name` of `object` as a new reference, or null with an error.
Ref Attr(PyObject* object, const char* name) { return Ref(PyObject_GetAttrString(object, name)); }

// One ckpt._tree.Entry (key, kind, value, size, dtype, shape, device,
// requires_grad) as a Node; false with a Python error set.
bool EntryNode(PyObject* entry, Node* node) {
  Ref key = Attr(entry, "key");
  Ref kind = Attr(entry, "kind");
  Ref value = Attr(entry, "value");
  if (!key || !kind || !value) return false;
  if (PyUnicode_Check(key.get())) {
    Py_ssize_t n;
    const char* k = PyUnicode_AsUTF8AndSize(key.get(), &n);
    if (k == nullptr) return false;
    node->key = std::string(k, static_cast<size_t>(n));
  } else if (PyLong_Check(key.get())) {
    const long long k = PyLong_AsLongLong(key.get());
    if (k == -1 && PyErr_Occurred()) return false;
    node->key = static_cast<int64_t>(k);
  }
  const char* k = PyUnicode_AsUTF8(kind.get());
  if (k == nullptr) return false;
  const std::string_view what(k);
  auto count = [&](NodeKind container) {
    node->kind = container;
    const unsigned long n = PyLong_AsUnsignedLong(value.get());
    if (n == static_cast<unsigned long>(-1) && PyErr_Occurred()) return false;
    node->size = static_cast<uint32_t>(n);
    return true;
  };
  auto data_size = [&]() {
    Ref size = Attr(entry, "size");
    if (!size) return false;
    node->data.size = PyLong_AsUnsignedLongLong(size.get());
    return !PyErr_Occurred();
  };
  if (what == "dict") return count(NodeKind::kDict);
  if (what == "list") return count(NodeKind::kList);
  if (what == "tuple") return count(NodeKind::kTuple);
  if (what == "none") {
    node->kind = NodeKind::kNone;
  } else if (what == "bool") {
    node->kind = NodeKind::kBool;
    node->bool_value = value.get() == Py_True;
  } else if (what == "int") {
    node->kind = NodeKind::kInt;
    node->int_value = PyLong_AsLongLong(value.get());
    if (PyErr_Occurred()) return false;
  } else if (what == "float") {
    node->kind = NodeKind::kFloat;
    node->float_value = PyFloat_AsDouble(value.get());
    if (PyErr_Occurred()) return false;
  } else if (what == "str") {
    node->kind = NodeKind::kString;
    Py_ssize_t n;
    const char* text = PyUnicode_AsUTF8AndSize(value.get(), &n);
    if (text == nullptr) return false;
    node->string_value.assign(text, static_cast<size_t>(n));
  } else if (what == "bytes") {
    node->kind = NodeKind::kBytes;
    return data_size();
  } else if (what == "tensor") {
    node->kind = NodeKind::kTensor;
    Ref dtype = Attr(entry, "dtype");
    Ref shape = Attr(entry, "shape");
    Ref device = Attr(entry, "device");
    Ref requires_grad = Attr(entry, "requires_grad");
    if (!dtype || !shape || !device || !requires_grad) return false;
    const long code = PyLong_AsLong(dtype.get());
    if (code == -1 && PyErr_Occurred()) return false;
    node->tensor.dtype = static_cast<ckpt::DType>(code);  // the client core checks it
    Ref dims(PySequence_Fast(shape.get(), "a tensor's shape is a sequence of int"));
    if (!dims) return false;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(dims.get()); ++i) {
      const long long dim = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(dims.get(), i));
      if (dim == -1 && PyErr_Occurred()) return false;
      node->tensor.shape.push_back(dim);
    }
    const char* d = PyUnicode_AsUTF8(device.get());
    if (d == nullptr) return false;
    node->tensor.device = d;
    node->tensor.requires_grad = requires_grad.get() == Py_True;
    if (PyErr_Occurred()) return false;
    return data_size();
  } else {
    PyErr_Format(PyExc_ValueError, "unknown entry kind '%s'", k);
    return false;
  }
  return true;
}

PyObject* Save(ClientObject* c, const char* name, PyObject* entries, PyObject* sources,
               long long step, long long epoch, PyObject* metadata, PyObject* tags,
               PyObject* timeout, int tensor_stats, int reject_nonfinite, const char* parent) {
  ckpt::client::SaveInput input;
  HeldBuffers held;
  Ref entry_list(PySequence_Fast(entries, "entries are a sequence"));
  Ref source_list(PySequence_Fast(sources, "sources are a sequence"));
  if (!entry_list || !source_list) return nullptr;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(entry_list.get());
  if (PySequence_Fast_GET_SIZE(source_list.get()) != n) {
    PyErr_SetString(PyExc_ValueError, "one source per entry");
    return nullptr;
  }
  input.tree.resize(static_cast<size_t>(n));
  input.bytes.resize(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!EntryNode(PySequence_Fast_GET_ITEM(entry_list.get(), i), &input.tree[i])) return nullptr;
    PyObject* source = PySequence_Fast_GET_ITEM(source_list.get(), i);
    if (source == Py_None) continue;
    if (PyTuple_Check(source)) {  // (address, length): memory the caller holds
      void* address;
      unsigned long long length;
      if (!PyArg_ParseTuple(
              source, "O&K",
              +[](PyObject* o, void* out) -> int {
                *static_cast<void**>(out) = PyLong_AsVoidPtr(o);
                return PyErr_Occurred() ? 0 : 1;
              },
              &address, &length)) {
        return nullptr;
      }
      input.bytes[i] = absl::Span<const uint8_t>(static_cast<const uint8_t*>(address), length);
    } else if (!held.Hold(source, &input.bytes[i])) {
      return nullptr;
    }
  }
  ckpt::client::SaveOptions options;
  options.step = step;
  options.epoch = epoch;
  options.tensor_stats = tensor_stats != 0;
  options.reject_nonfinite = reject_nonfinite != 0;
  options.parent = parent;
  if (!StringList(tags, "tags are a sequence of str", &options.tags)) return nullptr;
  if (metadata != Py_None) {
    PyObject* k;
    PyObject* v;
    Py_ssize_t pos = 0;
    if (!PyDict_Check(metadata)) {
      PyErr_SetString(PyExc_TypeError, "metadata is a dict of str");
      return nullptr;
    }
    while (PyDict_Next(metadata, &pos, &k, &v)) {
      Py_ssize_t kn;
      Py_ssize_t vn;
      const char* ks = PyUnicode_AsUTF8AndSize(k, &kn);
      const char* vs = ks == nullptr ? nullptr : PyUnicode_AsUTF8AndSize(v, &vn);
      if (vs == nullptr) return nullptr;
      options.metadata[std::string(ks, static_cast<size_t>(kn))] =
          std::string(vs, static_cast<size_t>(vn));
    }
  }
  if (!Timeout(timeout, &options.timeout)) return nullptr;
  ckpt::client::StopSource stop;
  options.stop = &stop;
  CallerThread caller;
  RawClient* client = c->client;
  const std::string save_name = name;
  absl::StatusOr<ckpt::client::SaveResult> result;
  PyObject* interrupt_type = nullptr;
  PyObject* interrupt_value = nullptr;
  PyObject* interrupt_traceback = nullptr;
  absl::Status status = caller.Serve(
      [&] {
        result = client->Save(save_name, input, options);
        return result.status();
      },
      [&] {
        PyErr_Fetch(&interrupt_type, &interrupt_value, &interrupt_traceback);
        stop.Stop();
      });
  if (interrupt_type != nullptr) {
    PyErr_Restore(interrupt_type, interrupt_value, interrupt_traceback);
    return nullptr;
  }
  if (!status.ok()) {
    RaiseStatus(status);
    return nullptr;
  }
  const std::string version = ckpt::client::EncodeVersionInfo(result->version);
  Ref pruned(PyList_New(0));
  if (!pruned) return nullptr;
  for (uint64_t v : result->pruned_versions) {
    Ref number(PyLong_FromUnsignedLongLong(v));
    if (!number || PyList_Append(pruned.get(), number.get()) < 0) return nullptr;
  }
  return Py_BuildValue("(y#KKKO)", version.data(), static_cast<Py_ssize_t>(version.size()),
                       static_cast<unsigned long long>(result->bytes_sent),
                       static_cast<unsigned long long>(result->chunks_total),
                       static_cast<unsigned long long>(result->chunks_sent), pruned.get());
}

// save(name, entries, sources, step, epoch, metadata, tags, timeout,
// tensor_stats, reject_nonfinite, parent) -> (version: bytes (VersionInfo),
// bytes_sent, chunks_total, chunks_sent, pruned_versions): saves ckpt._tree
// entries, each node's bytes from sources[i] (None, an (address, length)
// the caller keeps valid, or a buffer). Raises StatusError, or
// KeyboardInterrupt (the save stopped: no version, unless its commit was
// done already).
PyObject* ClientSave(PyObject* self, PyObject* args) {
  auto* c = reinterpret_cast<ClientObject*>(self);
  const char* name;
  PyObject* entries;
  PyObject* sources;
  long long step;
  long long epoch;
  PyObject* metadata;
  PyObject* tags;
  PyObject* timeout;
  int tensor_stats;
  int reject_nonfinite;
  const char* parent;
  if (!PyArg_ParseTuple(args, "sOOLLOOOpps", &name, &entries, &sources, &step, &epoch, &metadata,
                        &tags, &timeout, &tensor_stats, &reject_nonfinite, &parent)) {
    return nullptr;
  }
  return Call(self, [&] {
    return Save(c, name, entries, sources, step, epoch, metadata, tags, timeout, tensor_stats,
                reject_nonfinite, parent);
  });
}

PyMethodDef client_methods[] = {
    {"load", ClientLoad, METH_VARARGS,
     "load(name, version, tag, patterns, skip_data, timeout, slices, on_tree): streams a "
     "version into the places on_tree names."},
    {"save", ClientSave, METH_VARARGS,
     "save(name, entries, sources, step, epoch, metadata, tags, timeout, tensor_stats, "
     "reject_nonfinite, parent): saves flattened entries; returns (version, bytes_sent, "
     "chunks_total, chunks_sent, pruned_versions)."},
    {"close", ClientClose, METH_NOARGS,
     "Cancels the loads in flight; later loads fail (FAILED_PRECONDITION)."},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot client_slots[] = {
    {Py_tp_doc, const_cast<char*>("Client(target, token='', tls=False, ca_cert='', cert='', "
                                  "key='', server_name=''): the C++ client core's connection "
                                  "(connects on first use).")},
    {Py_tp_init, reinterpret_cast<void*>(ClientInit)},
    {Py_tp_new, reinterpret_cast<void*>(PyType_GenericNew)},
    {Py_tp_dealloc, reinterpret_cast<void*>(ClientDealloc)},
    {Py_tp_methods, client_methods},
    {0, nullptr}};

PyType_Spec client_spec = {"ckpt._core.Client", sizeof(ClientObject), 0, Py_TPFLAGS_DEFAULT,
                           client_slots};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                          "ckpt._core",
                          "The C++ client core's load path (internal; see ckpt._load).",
                          -1,
                          nullptr,
                          nullptr,
                          nullptr,
                          nullptr,
                          nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__core() {
  Ref module(PyModule_Create(&module_def));
  if (!module) return nullptr;
  status_error = PyErr_NewExceptionWithDoc(
      "ckpt._core.StatusError", "A failed call: args are (gRPC status code as int, details).",
      nullptr, nullptr);
  if (status_error == nullptr) return nullptr;
  Py_INCREF(status_error);
  if (PyModule_AddObject(module.get(), "StatusError", status_error) < 0) return nullptr;
  PyObject* type = PyType_FromSpec(&client_spec);
  if (type == nullptr || PyModule_AddObject(module.get(), "Client", type) < 0) {
    Py_XDECREF(type);
    return nullptr;
  }
  PyObject* out = module.get();
  Py_INCREF(out);
  return out;
}
