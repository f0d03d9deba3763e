#ifndef CKPT_TESTS_TESTING_SERVER_PROCESS_H_
#define CKPT_TESTS_TESTING_SERVER_PROCESS_H_

// Runs the real ckpt-server binary as a child process on 127.0.0.1 with a
// port the kernel picks, and reports the port it printed.

#include <sys/types.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace ckpt::testing {

/// Path of the ckpt-server binary (CKPT_SERVER_BIN, set by CMake).
std::string ServerBinary();
/// Path of the ckpt CLI binary (CKPT_CLI_BIN, set by CMake).
std::string CliBinary();

class ServerProcess {
 public:
  /// Starts ckpt-server on `data_dir` with extra flags; waits until it
  /// prints its port (at most 30 s). Its output goes to `log_path`
  /// (default: `<data_dir>.server.log`; tests that fill the data's disk keep
  /// it elsewhere).
  /// `env`: NAME=VALUE entries added to (or replacing in) the server's
  /// environment.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& data_dir, const std::vector<std::string>& extra_flags = {},
      const std::string& log_path = "", const std::vector<std::string>& env = {});
  ~ServerProcess();  ///< SIGKILLs the server if still running.

  int port() const { return port_; }
  /// Port of the Prometheus endpoint (127.0.0.1:0 unless the flags say
  /// otherwise); 0 if the server has none.
  int metrics_port() const { return metrics_port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }

  /// Sends SIGKILL and reaps the process.
  void Kill();
  /// Sends SIGTERM and waits for the exit status (-1 if killed by a signal).
  int Terminate();
  /// Everything the server wrote to stderr so far.
  std::string Log() const;

 private:
  ServerProcess() = default;
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  std::string log_path_;
};

/// A "Vm...:   N kB" field of /proc/PID/status (e.g. "VmRSS:", "VmHWM:"),
/// in MiB; 0 if absent.
double ProcStatusMiB(pid_t pid, const std::string& field);

/// Runs `argv` to completion, capturing stdout and stderr; argv[0] is a path
/// or a program name looked up in PATH. Returns the exit code (127 if it
/// cannot be run, 128+signal if killed).
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::vector<std::string>& env = {});

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_SERVER_PROCESS_H_
