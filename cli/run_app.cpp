#include "commands.h"
#include "interrupt.h"

#include "ferry/core/error.h"
#include "ferry/io/mapped_file_faults.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

namespace ferry::cli {

void finish_now(int code) {
  std::cout.flush();
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(code);
}

int run_app(int argc, char** argv, void (*add_commands)(CLI::App& app)) {
  io::install_mapped_file_fault_handler();  // a file truncated under us: a message, not "Bus error"
  CLI::App app{"ferry: run LibTorch models larger than any single memory"};
  app.name("ferry");
  app.require_subcommand(1);
  app.fallthrough();
  add_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ferry::Error& e) {
    std::cerr << "ferry: error: " << e.what() << '\n';
    return 1;
  } catch (const Interrupted& e) {
    std::cerr << "ferry: " << e.what() << "; stopped cleanly\n";
    return e.exit_status();
  } catch (const c10::Error& e) {
    // LibTorch refused something ferry did not check first: one line, not a backtrace.
    std::string what = e.what_without_backtrace();
    what = what.substr(0, what.find('\n'));
    std::cerr << "ferry: error: LibTorch: " << what << '\n';
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "ferry: unexpected error: " << e.what() << '\n';
    return 2;
  }
  return 0;
}

}  // namespace ferry::cli
