#include "tests/testing/server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace ckpt::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<char*> Argv(std::vector<std::string>& args) {
  std::vector<char*> out;
  for (auto& a : args) out.push_back(a.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

double ProcStatusMiB(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stod(line.substr(field.size())) / 1024.0;
  }
  return 0;
}

std::string ServerBinary() {
  const char* env = std::getenv("CKPT_SERVER_BIN");
  return env ? env : CKPT_SERVER_BIN;
}

std::string CliBinary() {
  const char* env = std::getenv("CKPT_CLI_BIN");
  return env ? env : CKPT_CLI_BIN;
}

namespace {

// This process's environment, with `env`'s NAME=VALUE entries replacing or
// adding.
std::vector<std::string> EnvironmentWith(const std::vector<std::string>& env) {
  std::vector<std::string> vars;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string var(*e);
    const std::string name = var.substr(0, var.find('='));
    const bool replaced = std::any_of(env.begin(), env.end(), [&](const std::string& x) {
      return x.substr(0, x.find('=')) == name;
    });
    if (!replaced) vars.push_back(var);
  }
  vars.insert(vars.end(), env.begin(), env.end());
  return vars;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::string& data_dir, const std::vector<std::string>& extra_flags,
    const std::string& log_path, const std::vector<std::string>& env) {
  std::unique_ptr<ServerProcess> p(new ServerProcess());
  p->log_path_ = log_path.empty() ? data_dir + ".server.log" : log_path;
  std::vector<std::string> args = {ServerBinary(), "--listen", "127.0.0.1:0", "--data-dir",
                                   data_dir};
  if (std::find(extra_flags.begin(), extra_flags.end(), "--shutdown-grace") == extra_flags.end()) {
    args.insert(args.end(), {"--shutdown-grace", "5"});
  }
  // Tests run in parallel: never the fixed default metrics port.
  if (std::find(extra_flags.begin(), extra_flags.end(), "--metrics-listen") == extra_flags.end()) {
    args.insert(args.end(), {"--metrics-listen", "127.0.0.1:0"});
  }
  args.insert(args.end(), extra_flags.begin(), extra_flags.end());
  const std::string log = p->log_path_;
  // A fresh log per start, so that a restart's port line is the only one.
  int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return absl::InternalError("cannot create " + log);
  // Built before the fork: the child only calls what is safe there.
  std::vector<std::string> vars = EnvironmentWith(env);
  auto argv = Argv(args);
  auto envp = Argv(vars);
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    dup2(fd, 2);
    dup2(fd, 1);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  close(fd);
  p->pid_ = pid;
  const std::regex port_re("listening on port ([0-9]+)");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    std::smatch m;
    std::string text = ReadFile(log);
    if (std::regex_search(text, m, port_re)) {
      p->port_ = std::stoi(m[1]);
      // Printed before the port line when there is an endpoint.
      if (std::regex_search(text, m, std::regex("metrics on port ([0-9]+)"))) {
        p->metrics_port_ = std::stoi(m[1]);
      }
      return p;
    }
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      p->pid_ = -1;
      return absl::InternalError(absl::StrCat("ckpt-server exited early:\n", text));
    }
    usleep(20000);
  }
  return absl::DeadlineExceededError("ckpt-server did not report its port within 30 s:\n" +
                                     ReadFile(log));
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Kill();
  unlink(log_path_.c_str());
}

void ServerProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

int ServerProcess::Terminate() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string ServerProcess::Log() const { return ReadFile(log_path_); }

CommandResult RunCommand(const std::vector<std::string>& argv_in,
                         const std::vector<std::string>& env) {
  CommandResult result;
  char out_tmpl[] = "/tmp/ckpt-cmd-out-XXXXXX";
  char err_tmpl[] = "/tmp/ckpt-cmd-err-XXXXXX";
  int out_fd = mkstemp(out_tmpl);
  int err_fd = mkstemp(err_tmpl);
  std::vector<std::string> args = argv_in;
  std::vector<std::string> vars = EnvironmentWith(env);
  // posix_spawn, not fork: a fork would mark every page of a large parent
  // (a benchmark holding gigabytes) copy-on-write, and its next writes
  // would fault page by page.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_fd, 1);
  posix_spawn_file_actions_adddup2(&actions, err_fd, 2);
  auto argv = Argv(args);
  auto envp = Argv(vars);
  pid_t pid = -1;
  const int spawned = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) {
    result.exit_code = 127;  // cannot be run, like a shell says
  } else {
    int status = 0;
    waitpid(pid, &status, 0);
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  close(out_fd);
  close(err_fd);
  result.out = ReadFile(out_tmpl);
  result.err = ReadFile(err_tmpl);
  unlink(out_tmpl);
  unlink(err_tmpl);
  return result;
}

}  // namespace ckpt::testing
