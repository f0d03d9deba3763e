#ifndef CKPT_EXAMPLES_SERVER_ARG_H_
#define CKPT_EXAMPLES_SERVER_ARG_H_

// The examples' command line: `PROGRAM [HOST:PORT]` (default
// localhost:50051), `--help`. Anything else is a usage error.

#include <cstdio>
#include <cstring>
#include <string>

namespace ckpt_examples {

/// Sets `*server` from argv. Returns -1 to go on, or the exit code to
/// return now (0 after --help, 2 after a usage error).
inline int ParseServerArg(int argc, char** argv, const char* what, std::string* server) {
  *server = "localhost:50051";
  const char* program = argc > 0 ? argv[0] : "example";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf("Usage: %s [HOST:PORT]\n%s\nHOST:PORT: the ckpt-server (default %s)\n", program,
                  what, server->c_str());
      return 0;
    }
  }
  if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
    std::fprintf(stderr, "%s: unexpected argument '%s'\nUsage: %s [HOST:PORT] (--help)\n", program,
                 argv[argc - 1], program);
    return 2;
  }
  if (argc == 2) *server = argv[1];
  return -1;
}

}  // namespace ckpt_examples

#endif  // CKPT_EXAMPLES_SERVER_ARG_H_
