#include "sentencepiece_library.h"

#include "ferry/core/error.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

// AddressSanitizer and ThreadSanitizer refuse dlopen(RTLD_DEEPBIND).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define FERRY_SANITIZER_RUNTIME 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define FERRY_SANITIZER_RUNTIME 1
#endif
#endif

namespace ferry::tokenizers::detail {
namespace {

using OpenFn = SentencePieceLibrary* (*)(const char*, std::string*);

// Where the module is: $FERRY_SENTENCEPIECE_MODULE, else the build tree's, else the installed one.
std::vector<std::string> module_candidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("FERRY_SENTENCEPIECE_MODULE"); env && *env) paths.emplace_back(env);
#if defined(FERRY_SENTENCEPIECE_MODULE_BUILD_PATH)
  paths.emplace_back(FERRY_SENTENCEPIECE_MODULE_BUILD_PATH);
#endif
#if defined(FERRY_SENTENCEPIECE_MODULE_INSTALL_PATH)
  paths.emplace_back(FERRY_SENTENCEPIECE_MODULE_INSTALL_PATH);
#endif
  return paths;
}

OpenFn load_module() {
  // RTLD_DEEPBIND is what keeps the module's protobuf its own; the sanitizers refuse it, so a
  // sanitizer build opens the module plainly and must not have another protobuf in the process.
#if defined(FERRY_SANITIZER_RUNTIME)
  const int flags = RTLD_NOW | RTLD_LOCAL;
  FERRY_CHECK(dlopen("libprotobuf.so.32", RTLD_NOW | RTLD_NOLOAD) == nullptr,
              "tokenizer.model support is not available in a sanitizer build that also loads LibTorch's "
              "protobuf (see Note [sentencepiece in its own scope]); use a normal build");
#else
  const int flags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif
  std::string tried, last_error;
  for (const std::string& path : module_candidates()) {
    tried += (tried.empty() ? "" : ", ") + path;
    if (::access(path.c_str(), R_OK) != 0) continue;
    void* handle = dlopen(path.c_str(), flags);
    if (!handle) {
      last_error = dlerror();
      continue;
    }
    if (auto fn = reinterpret_cast<OpenFn>(dlsym(handle, "ferry_sentencepiece_open"))) return fn;
    last_error = path + " has no ferry_sentencepiece_open";
  }
  FERRY_FAIL("tokenizer.model files are read by libferry_sentencepiece.so, which could not be loaded (looked at ",
             tried.empty() ? std::string("no path") : tried, last_error.empty() ? "" : "; " + last_error,
             "): reinstall ferry, or point FERRY_SENTENCEPIECE_MODULE at the module");
}

}  // namespace

std::unique_ptr<SentencePieceLibrary> open_sentencepiece_model(const std::string& path) {
  static std::mutex mutex;
  static OpenFn open = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (!open) open = load_module();
  }
  std::string error;
  std::unique_ptr<SentencePieceLibrary> model(open(path.c_str(), &error));
  FERRY_CHECK(model != nullptr, path, " is not a SentencePiece model (tokenizer.model) or it is damaged (",
              "sentencepiece says: ", error, ")");
  return model;
}

}  // namespace ferry::tokenizers::detail
