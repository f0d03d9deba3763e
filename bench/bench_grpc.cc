// The transport's ceiling: a bare gRPC stream of the same bytes as a
// checkpoint, with the gRPC build ckpt links, over loopback, between two
// processes. Nothing is hashed, parsed or stored: the messages are raw
// ByteBuffers of 4 MiB that reference a buffer as large as the transfer
// (no copy on the sending side), and the receiver only counts them. What
// ckpt reaches is then put beside this by bench_torch and bench_python.
//
//   bench_grpc --bytes N [--runs R]   prints "upload GB/s download GB/s" per run
//   bench_grpc serve                  (what the first starts as its peer)

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace ckpt::bench {
namespace {

constexpr size_t kMessageBytes = 4 << 20;
constexpr int kMaxMessage = 8 << 20;
constexpr char kUpload[] = "/ckpt.bench.Bare/Upload";
constexpr char kDownload[] = "/ckpt.bench.Bare/Download";

// The bytes sent: one buffer as large as the transfer (like a checkpoint's
// tensors, not one block that stays in the cache), grown on demand and
// filled once. Messages are slices of it (no copy).
std::vector<char>& Source() {
  static auto* source = new std::vector<char>();
  return *source;
}

void EnsureSource(uint64_t bytes) {
  std::vector<char>& source = Source();
  const size_t old = source.size();
  if (bytes <= old) return;
  source.resize(bytes);
  for (size_t i = old; i < source.size(); ++i) source[i] = static_cast<char>(i * 2654435761u >> 24);
}

grpc::ByteBuffer Message(uint64_t offset, size_t n) {
  grpc::Slice slice(Source().data() + offset, n, grpc::Slice::STATIC_SLICE);
  return grpc::ByteBuffer(&slice, 1);
}

grpc::ByteBuffer U64(uint64_t v) {
  grpc::Slice slice(&v, sizeof v);
  return grpc::ByteBuffer(&slice, 1);
}

uint64_t ReadU64(const grpc::ByteBuffer& buffer) {
  grpc::Slice slice;
  uint64_t v = 0;
  if (buffer.DumpToSingleSlice(&slice).ok() && slice.size() == sizeof v) {
    std::memcpy(&v, slice.begin(), sizeof v);
  }
  return v;
}

// Upload: counts what arrives, answers the count. Download: reads the size
// asked for, streams it.
class Service : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    if (ctx->method() == kUpload) return new Upload;
    return new Download;
  }

  class Upload : public grpc::ServerGenericBidiReactor {
   public:
    Upload() { StartRead(&in_); }
    void OnReadDone(bool ok) override {
      if (ok) {
        total_ += in_.Length();
        in_.Clear();
        StartRead(&in_);
        return;
      }
      out_ = U64(total_);
      StartWriteAndFinish(&out_, {}, grpc::Status::OK);
    }
    void OnDone() override { delete this; }

   private:
    grpc::ByteBuffer in_, out_;
    uint64_t total_ = 0;
  };

  class Download : public grpc::ServerGenericBidiReactor {
   public:
    Download() { StartRead(&in_); }
    void OnReadDone(bool ok) override {
      if (!ok) return Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no size"));
      left_ = ReadU64(in_);
      EnsureSource(left_);
      Next();
    }
    void OnWriteDone(bool ok) override {
      if (!ok) return Finish(grpc::Status::CANCELLED);
      Next();
    }
    void OnDone() override { delete this; }

   private:
    void Next() {
      if (left_ == 0) return Finish(grpc::Status::OK);
      const size_t n = std::min<uint64_t>(left_, kMessageBytes);
      out_ = Message(offset_, n);
      offset_ += n;
      left_ -= n;
      StartWrite(&out_);
    }
    grpc::ByteBuffer in_, out_;
    uint64_t left_ = 0, offset_ = 0;
  };
};

// Serves with `bytes` ready to be sent (filled before the port is printed,
// so that no download is timed filling it).
int Serve(uint64_t bytes) {
  EnsureSource(bytes);
  Service service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(kMaxMessage);
  builder.SetMaxSendMessageSize(kMaxMessage);
  builder.RegisterCallbackGenericService(&service);
  auto server = builder.BuildAndStart();
  if (!server) return 1;
  std::printf("%d\n", port);
  std::fflush(stdout);
  // Until the parent closes our stdin (or dies).
  char c;
  while (read(0, &c, 1) > 0) {
  }
  server->Shutdown();
  return 0;
}

// A client call waited for: Upload writes `bytes` and reads the count back;
// Download asks for `bytes` and counts what arrives.
class Call : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  Call(grpc::GenericStub* stub, bool upload, uint64_t bytes) : upload_(upload), left_(bytes) {
    stub->PrepareBidiStreamingCall(&context_, upload ? kUpload : kDownload, {}, this);
    StartRead(&in_);
    if (upload) {
      NextWrite();
    } else {
      out_ = U64(bytes);
      StartWriteLast(&out_, {});
    }
    StartCall();
  }

  /// Bytes the other side counted (upload) or this side received (download).
  uint64_t Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_; });
    return status_.ok() ? counted_ : 0;
  }

  void OnWriteDone(bool ok) override {
    if (ok && upload_) NextWrite();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (upload_) {
      counted_ = ReadU64(in_);
      return;
    }
    counted_ += in_.Length();
    in_.Clear();
    StartRead(&in_);
  }
  void OnDone(const grpc::Status& s) override {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = s;
    done_ = true;
    cv_.notify_all();
  }

 private:
  void NextWrite() {
    if (left_ == 0) return StartWritesDone();
    const size_t n = std::min<uint64_t>(left_, kMessageBytes);
    out_ = Message(offset_, n);
    offset_ += n;
    left_ -= n;
    StartWrite(&out_);
  }

  grpc::ClientContext context_;
  const bool upload_;
  uint64_t left_;
  uint64_t offset_ = 0;
  grpc::ByteBuffer in_, out_;
  uint64_t counted_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  grpc::Status status_;
};

double Transfer(grpc::GenericStub* stub, bool upload, uint64_t bytes) {
  const auto t0 = std::chrono::steady_clock::now();
  Call call(stub, upload, bytes);
  if (call.Wait() != bytes) return 0;
  return bytes / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 1e9;
}

int Measure(uint64_t bytes, int runs) {
  Child peer = SpawnSelf({"bench_grpc", "serve", "--bytes", std::to_string(bytes)});
  char line[32] = {};
  const int port = peer.out && std::fgets(line, sizeof line, peer.out) ? std::atoi(line) : 0;
  int rc = 1;
  if (port > 0) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxMessage);
    args.SetMaxSendMessageSize(kMaxMessage);
    grpc::GenericStub stub(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                                     grpc::InsecureChannelCredentials(), args));
    EnsureSource(bytes);
    Transfer(&stub, true, kMessageBytes);  // connect and warm up
    rc = 0;
    for (int i = 0; i < runs; ++i) {
      const double up = Transfer(&stub, true, bytes);
      const double down = Transfer(&stub, false, bytes);
      if (up == 0 || down == 0) rc = 1;
      std::printf("%.3f %.3f\n", up, down);
      std::fflush(stdout);
    }
  }
  if (peer.in) std::fclose(peer.in);  // the peer's signal to end
  if (peer.out) std::fclose(peer.out);
  int status = 0;
  if (peer.pid > 0) waitpid(peer.pid, &status, 0);
  return rc;
}

}  // namespace
}  // namespace ckpt::bench

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  CLI::App app{
      "bench_grpc: a bare gRPC upload and download of N bytes over loopback between two "
      "processes in 4 MiB messages (the transport's ceiling for bench_torch/bench_python)"};
  uint64_t bytes = 1ull << 30;
  int runs = 1;
  app.add_option("--bytes", bytes, "bytes each way")->capture_default_str();
  app.add_option("--runs", runs, "how many uploads and downloads (one line each)")
      ->capture_default_str();
  auto* serve = app.add_subcommand("serve", "be the peer (prints its port, runs until stdin ends)");
  uint64_t serve_bytes = 0;
  serve->add_option("--bytes", serve_bytes, "bytes to have ready for downloads");
  CLI11_PARSE(app, argc, argv);
  if (serve->parsed()) return ckpt::bench::Serve(serve_bytes);
  return ckpt::bench::Measure(bytes, runs);
}
