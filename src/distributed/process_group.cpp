#include "ferry/distributed/process_group.h"

#include "ferry/core/error.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <c10/util/Exception.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace ferry {
namespace {

std::optional<std::string> env_var(const char* name) {
  const char* v = std::getenv(name);
  if (!v) return std::nullopt;
  return std::string(v);
}

int env_int(const char* name, const std::string& text, int lo, int hi) {
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  FERRY_CHECK(!text.empty() && end && *end == '\0' && errno == 0 && v >= lo && v <= hi, name, "='", text,
              "' is not an integer in [", lo, ", ", hi, "]");
  return static_cast<int>(v);
}

std::string required(const char* name, int world_size) {
  std::optional<std::string> v = env_var(name);
  FERRY_CHECK(v && !v->empty(), "WORLD_SIZE=", world_size, " but ", name,
              " is not set: every rank needs RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (as torchrun sets "
              "them; `ferry launch --nproc N -- run ...` does it for one host)");
  return *v;
}

// c10d's errors without their C++ backtrace: the message is what the user acts on.
std::string message_of(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return c10->what_without_backtrace();
  return e.what();
}

bool is_loopback(const std::string& addr) { return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1"; }

}  // namespace

std::optional<DistributedEnv> DistributedEnv::from_environment() {
  std::optional<std::string> world = env_var("WORLD_SIZE");
  if (!world) return std::nullopt;
  DistributedEnv env;
  env.world_size = env_int("WORLD_SIZE", *world, 1, 4096);
  env.rank = env_int("RANK", required("RANK", env.world_size), 0, env.world_size - 1);
  const std::optional<std::string> local = env_var("LOCAL_RANK"), local_size = env_var("LOCAL_WORLD_SIZE");
  FERRY_CHECK(local.has_value() == local_size.has_value(), local ? "LOCAL_RANK" : "LOCAL_WORLD_SIZE", " is set but ",
              local ? "LOCAL_WORLD_SIZE" : "LOCAL_RANK", " is not: give both (how many ranks run on this host and "
              "which of them this is, as torchrun and `ferry launch` set them), or neither for a rank alone on its host");
  if (local) {
    env.local_world_size = env_int("LOCAL_WORLD_SIZE", *local_size, 1, env.world_size);
    env.local_rank = env_int("LOCAL_RANK", *local, 0, env.local_world_size - 1);
  }
  if (env.world_size == 1) return env;
  env.master_addr = required("MASTER_ADDR", env.world_size);
  env.master_port = env_int("MASTER_PORT", required("MASTER_PORT", env.world_size), 1, 65535);
  if (std::optional<std::string> t = env_var("FERRY_DIST_TIMEOUT"))
    env.timeout = std::chrono::seconds(env_int("FERRY_DIST_TIMEOUT", *t, 1, INT_MAX));
  return env;
}

struct ProcessGroup::Impl {
  DistributedEnv env;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
};

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ProcessGroup::ProcessGroup(ProcessGroup&&) noexcept = default;
ProcessGroup& ProcessGroup::operator=(ProcessGroup&&) noexcept = default;
ProcessGroup::~ProcessGroup() = default;

ProcessGroup ProcessGroup::connect(const DistributedEnv& env) {
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(env.timeout).count();
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(env.master_port);
    options.isServer = env.rank == 0;
    options.numWorkers = static_cast<std::size_t>(env.world_size);
    options.waitWorkers = true;
    options.timeout = env.timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
  } catch (const std::exception& e) {
    FERRY_FAIL("rank ", env.rank, " of ", env.world_size, ": the rendezvous at MASTER_ADDR:MASTER_PORT = ", where,
               " failed within ", seconds, " s (", message_of(e),
               "). Is rank 0 running there, is the port free on its host, and do all ranks give the same address?");
  }
  try {
    auto options = c10d::ProcessGroupGloo::Options::create(env.timeout);
    // Each rank listens on the interface it reaches the others by: loopback for one host,
    // GLOO_SOCKET_IFNAME when set (as in PyTorch), else the address this host's name resolves to.
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"))
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (is_loopback(env.master_addr))
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, env.rank, env.world_size, options);
  } catch (const std::exception& e) {
    FERRY_FAIL("rank ", env.rank, " of ", env.world_size, ": joining the Gloo process group (store at ", where,
               ") failed within ", seconds, " s: ", message_of(e),
               ". Did every rank start? On several hosts, set GLOO_SOCKET_IFNAME to the interface they share.");
  }
  return ProcessGroup(std::move(impl));
}

int ProcessGroup::rank() const { return impl_->env.rank; }
int ProcessGroup::size() const { return impl_->env.world_size; }

namespace {
// One message for a send that failed, whether it failed at once (the receiver's connection closed)
// or while waiting: the receiver's rank, the message and the timeout.
[[noreturn]] void fail_to_send(int rank, int tag, int dst, std::chrono::milliseconds timeout, const std::exception& e) {
  FERRY_FAIL("rank ", rank, ": sending message ", tag, " to rank ", dst, " failed (rank ", dst,
             " stopped or cannot be reached within ", timeout.count() / 1000, " s): ", message_of(e));
}
}  // namespace

struct PendingSend::Impl {
  using Work = decltype(std::declval<c10d::ProcessGroupGloo&>().send(std::declval<std::vector<at::Tensor>&>(), 0, 0));
  std::vector<at::Tensor> tensors;  // alive until sent
  Work work;
  int rank = 0, dst = 0, tag = 0;
  std::chrono::milliseconds timeout{0};
  bool waited = false;
};

PendingSend::PendingSend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PendingSend::PendingSend(PendingSend&&) noexcept = default;
PendingSend& PendingSend::operator=(PendingSend&&) noexcept = default;
PendingSend::~PendingSend() {
  if (!impl_ || impl_->waited) return;
  try {
    wait();
  } catch (const std::exception&) {  // the caller did not ask; the receiver's own error tells the story
  }
}

void PendingSend::wait() {
  if (impl_->waited) return;
  impl_->waited = true;
  try {
    impl_->work->wait(impl_->timeout);
  } catch (const std::exception& e) {
    fail_to_send(impl_->rank, impl_->tag, impl_->dst, impl_->timeout, e);
  }
}

PendingSend ProcessGroup::send_async(const at::Tensor& tensor, int dst, int tag) {
  auto pending = std::make_unique<PendingSend::Impl>();
  pending->tensors = {tensor.contiguous()};
  pending->rank = rank();
  pending->dst = dst;
  pending->tag = tag;
  pending->timeout = impl_->env.timeout;
  try {
    pending->work = impl_->group->send(pending->tensors, dst, tag);
  } catch (const std::exception& e) {  // the receiver is gone already: the connection is closed
    fail_to_send(rank(), tag, dst, impl_->env.timeout, e);
  }
  return PendingSend(std::move(pending));
}

void ProcessGroup::send(const at::Tensor& tensor, int dst, int tag) { send_async(tensor, dst, tag).wait(); }

void ProcessGroup::recv(at::Tensor& tensor, int src, int tag) {
  FERRY_CHECK(tensor.is_contiguous(), "ProcessGroup::recv needs a contiguous tensor");
  std::vector<at::Tensor> tensors{tensor};
  try {
    impl_->group->recv(tensors, src, tag)->wait(impl_->env.timeout);
  } catch (const std::exception& e) {
    FERRY_FAIL("rank ", rank(), ": receiving message ", tag, " from rank ", src, " failed (rank ", src,
               " stopped or sent nothing within ", impl_->env.timeout.count() / 1000, " s): ", message_of(e));
  }
}

std::vector<std::string> ProcessGroup::exchange(const std::string& key, const std::string& value) {
  const std::string prefix = "ferry/" + key + "/";
  std::vector<std::string> values;
  try {
    impl_->store->set(prefix + std::to_string(rank()), std::vector<uint8_t>(value.begin(), value.end()));
    for (int r = 0; r < size(); ++r) {
      const std::vector<uint8_t> v = impl_->store->get(prefix + std::to_string(r));  // waits, within the timeout
      values.emplace_back(v.begin(), v.end());
    }
  } catch (const std::exception& e) {
    FERRY_FAIL("rank ", rank(), ": exchanging '", key, "' with the other ranks failed (one stopped or did not get there "
               "within ", impl_->env.timeout.count() / 1000, " s): ", message_of(e));
  }
  return values;
}

}  // namespace ferry
