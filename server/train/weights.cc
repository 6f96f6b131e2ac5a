#include "server/train/weights.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"

namespace traind::train {
namespace {

// A read adapter over bytes that never reads past the end.
class BoundedReader final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit BoundedReader(const std::string& bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n,
              const char* /*what*/) const override {
    if (pos >= bytes_.size()) return 0;
    n = std::min<size_t>(n, bytes_.size() - pos);
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  const std::string& bytes_;
};

// A value of the pickle subset that state_dicts use.
struct Value;
using ValuePtr = std::shared_ptr<Value>;
struct Global {
  std::string module, name;
};
struct Value {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kTuple, kList, kDict,
                    kGlobal, kStorage, kTensor, kMark };
  Kind kind = Kind::kNone;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::vector<ValuePtr> items;                          // tuple, list
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;   // dict
  Global global;
  torch::Tensor tensor;                                 // storage, tensor
};

ValuePtr Make(Value::Kind kind) {
  auto v = std::make_shared<Value>();
  v->kind = kind;
  return v;
}

// Storage classes that may appear in a state_dict, with their dtypes.
const std::map<std::string, torch::ScalarType>& StorageTypes() {
  static const auto* kTypes = new std::map<std::string, torch::ScalarType>{
      {"FloatStorage", torch::kFloat},     {"DoubleStorage", torch::kDouble},
      {"HalfStorage", torch::kHalf},       {"BFloat16Storage", torch::kBFloat16},
      {"LongStorage", torch::kLong},       {"IntStorage", torch::kInt},
      {"ShortStorage", torch::kShort},     {"CharStorage", torch::kChar},
      {"ByteStorage", torch::kByte},       {"BoolStorage", torch::kBool}};
  return *kTypes;
}

bool IsAllowedGlobal(const Global& g) {
  if (g.module == "collections" && g.name == "OrderedDict") return true;
  if (g.module == "torch._utils" &&
      (g.name == "_rebuild_tensor_v2" || g.name == "_rebuild_parameter")) {
    return true;
  }
  if (g.module == "torch" && StorageTypes().count(g.name)) return true;
  // LibTorch's torch::pickle_save tags typed dicts ("Dict[str, Tensor]"):
  // traind wrote its weights that way before it wrote torch.save's form.
  if (g.module == "torch.jit._pickle" && g.name == "restore_type_tag") return true;
  return false;
}

// Interprets the pickle opcodes a state_dict uses; anything else (in
// particular any global outside the allow-list) is refused, so nothing
// from the file is ever executed.
class Unpickler {
 public:
  Unpickler(const std::string& data,
            std::function<absl::StatusOr<torch::Tensor>(const std::string&,
                                                        torch::ScalarType, int64_t)>
                load_storage)
      : data_(data), load_storage_(std::move(load_storage)) {}

  absl::StatusOr<ValuePtr> Run() {
    while (true) {
      if (pos_ >= data_.size()) return Error("pickle ends without STOP");
      const uint8_t op = static_cast<uint8_t>(data_[pos_++]);
      absl::Status st = Step(op);
      if (!st.ok()) return st;
      if (done_) break;
    }
    if (stack_.size() != 1) return Error("pickle leaves a malformed stack");
    return stack_.back();
  }

 private:
  absl::Status Error(const std::string& what) const {
    return absl::DataLossError(absl::StrCat("state_dict pickle: ", what,
                                            " (at byte ", pos_, ")"));
  }
  bool Read(size_t n, const char** out) {
    if (n > data_.size() - pos_) return false;
    *out = data_.data() + pos_;
    pos_ += n;
    return true;
  }
  template <typename T>
  bool ReadLE(T* out) {
    const char* p;
    if (!Read(sizeof(T), &p)) return false;
    std::memcpy(out, p, sizeof(T));
    return true;
  }
  bool ReadLine(std::string* out) {
    const size_t end = data_.find('\n', pos_);
    if (end == std::string::npos) return false;
    *out = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return true;
  }
  absl::StatusOr<ValuePtr> Pop() {
    if (stack_.empty()) return Error("stack underflow");
    ValuePtr v = stack_.back();
    stack_.pop_back();
    return v;
  }
  absl::StatusOr<std::vector<ValuePtr>> PopToMark() {
    if (marks_.empty()) return Error("no MARK");
    const size_t mark = marks_.back();
    marks_.pop_back();
    if (mark > stack_.size()) return Error("bad MARK");
    std::vector<ValuePtr> items(stack_.begin() + mark, stack_.end());
    stack_.resize(mark);
    return items;
  }
  absl::Status PushString(size_t n) {
    const char* p;
    if (!Read(n, &p)) return Error("truncated string");
    auto v = Make(Value::Kind::kString);
    v->s.assign(p, n);
    stack_.push_back(v);
    return absl::OkStatus();
  }
  absl::Status PushInt(int64_t i) {
    auto v = Make(Value::Kind::kInt);
    v->i = i;
    stack_.push_back(v);
    return absl::OkStatus();
  }
  absl::Status Memo(uint64_t key) {
    if (stack_.empty()) return Error("memoize on empty stack");
    memo_[key] = stack_.back();
    return absl::OkStatus();
  }
  absl::Status Get(uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) return Error("unknown memo key");
    stack_.push_back(it->second);
    return absl::OkStatus();
  }
  absl::Status MakeTuple(std::vector<ValuePtr> items) {
    auto v = Make(Value::Kind::kTuple);
    v->items = std::move(items);
    stack_.push_back(v);
    return absl::OkStatus();
  }
  absl::Status SetItems(const std::vector<ValuePtr>& kv) {
    if (kv.size() % 2 != 0) return Error("odd SETITEMS");
    if (stack_.empty() || stack_.back()->kind != Value::Kind::kDict) {
      return Error("SETITEMS on a non-dict");
    }
    for (size_t i = 0; i < kv.size(); i += 2) {
      stack_.back()->entries.emplace_back(kv[i], kv[i + 1]);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ValuePtr> Reduce(const Value& callable, const Value& args) {
    if (callable.kind != Value::Kind::kGlobal || args.kind != Value::Kind::kTuple) {
      return Error("REDUCE of a non-global");
    }
    const Global& g = callable.global;
    if (g.name == "OrderedDict") {
      if (!args.items.empty()) return Error("OrderedDict with arguments");
      return Make(Value::Kind::kDict);
    }
    if (g.name == "restore_type_tag") {
      if (args.items.empty()) return Error("malformed restore_type_tag");
      return args.items[0];
    }
    if (g.name == "_rebuild_parameter") {
      if (args.items.empty() || args.items[0]->kind != Value::Kind::kTensor) {
        return Error("malformed _rebuild_parameter");
      }
      return args.items[0];
    }
    // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
    if (args.items.size() < 4 || args.items[0]->kind != Value::Kind::kStorage ||
        args.items[1]->kind != Value::Kind::kInt ||
        args.items[2]->kind != Value::Kind::kTuple ||
        args.items[3]->kind != Value::Kind::kTuple ||
        args.items[2]->items.size() != args.items[3]->items.size()) {
      return Error("malformed _rebuild_tensor_v2");
    }
    const torch::Tensor& flat = args.items[0]->tensor;
    const int64_t offset = args.items[1]->i;
    std::vector<int64_t> size, stride;
    int64_t extent = 0;  // last element index reached + 1
    bool empty = false;
    for (size_t d = 0; d < args.items[2]->items.size(); ++d) {
      const Value& sz = *args.items[2]->items[d];
      const Value& st = *args.items[3]->items[d];
      if (sz.kind != Value::Kind::kInt || st.kind != Value::Kind::kInt ||
          sz.i < 0 || st.i < 0 || sz.i > (int64_t{1} << 40) || st.i > (int64_t{1} << 40)) {
        return Error("bad tensor size or stride");
      }
      size.push_back(sz.i);
      stride.push_back(st.i);
      if (sz.i == 0) empty = true;
      extent += (sz.i - 1) * st.i;
    }
    if (offset < 0 || (!empty && offset + extent + 1 > flat.numel())) {
      return Error("tensor extends past its storage");
    }
    auto v = Make(Value::Kind::kTensor);
    v->tensor = empty ? torch::empty(size, flat.options())
                      : flat.as_strided(size, stride, offset).clone();
    return v;
  }

  absl::Status PersistentLoad(const Value& pid) {
    // ('storage', torch.<X>Storage, key, location, numel)
    if (pid.kind != Value::Kind::kTuple || pid.items.size() != 5 ||
        pid.items[0]->kind != Value::Kind::kString || pid.items[0]->s != "storage" ||
        pid.items[1]->kind != Value::Kind::kGlobal ||
        pid.items[2]->kind != Value::Kind::kString ||
        pid.items[4]->kind != Value::Kind::kInt) {
      return Error("unsupported persistent id");
    }
    auto type = StorageTypes().find(pid.items[1]->global.name);
    if (type == StorageTypes().end()) return Error("unsupported storage type");
    const std::string& key = pid.items[2]->s;
    auto v = Make(Value::Kind::kStorage);
    auto cached = storages_.find(key);
    if (cached != storages_.end()) {
      v->tensor = cached->second;
    } else {
      auto t = load_storage_(key, type->second, pid.items[4]->i);
      if (!t.ok()) return t.status();
      storages_[key] = *t;
      v->tensor = *t;
    }
    stack_.push_back(v);
    return absl::OkStatus();
  }

  absl::Status Step(uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        const char* p;
        if (!Read(1, &p)) return Error("truncated PROTO");
        return absl::OkStatus();
      }
      case 0x95: {  // FRAME
        uint64_t n;
        if (!ReadLE(&n)) return Error("truncated FRAME");
        return absl::OkStatus();
      }
      case '.':  // STOP
        done_ = true;
        return absl::OkStatus();
      case '(':
        marks_.push_back(stack_.size());
        return absl::OkStatus();
      case 'N':
        stack_.push_back(Make(Value::Kind::kNone));
        return absl::OkStatus();
      case 0x88:
      case 0x89: {
        auto v = Make(Value::Kind::kBool);
        v->i = op == 0x88;
        stack_.push_back(v);
        return absl::OkStatus();
      }
      case 'K': {
        uint8_t i;
        if (!ReadLE(&i)) return Error("truncated BININT1");
        return PushInt(i);
      }
      case 'M': {
        uint16_t i;
        if (!ReadLE(&i)) return Error("truncated BININT2");
        return PushInt(i);
      }
      case 'J': {
        int32_t i;
        if (!ReadLE(&i)) return Error("truncated BININT");
        return PushInt(i);
      }
      case 0x8a: {  // LONG1
        uint8_t n;
        const char* p;
        if (!ReadLE(&n) || !Read(n, &p)) return Error("truncated LONG1");
        if (n > 8) return Error("integer too large");
        int64_t i = 0;
        for (int b = n - 1; b >= 0; --b) i = (i << 8) | static_cast<uint8_t>(p[b]);
        if (n > 0 && n < 8 && (static_cast<uint8_t>(p[n - 1]) & 0x80)) {
          i -= int64_t{1} << (8 * n);  // sign-extend
        }
        return PushInt(i);
      }
      case 'G': {  // BINFLOAT, big-endian
        const char* p;
        if (!Read(8, &p)) return Error("truncated BINFLOAT");
        uint64_t bits = 0;
        for (int b = 0; b < 8; ++b) bits = (bits << 8) | static_cast<uint8_t>(p[b]);
        auto v = Make(Value::Kind::kFloat);
        std::memcpy(&v->f, &bits, 8);
        stack_.push_back(v);
        return absl::OkStatus();
      }
      case 'X': {  // BINUNICODE
        uint32_t n;
        if (!ReadLE(&n)) return Error("truncated BINUNICODE");
        return PushString(n);
      }
      case 0x8c:    // SHORT_BINUNICODE
      case 'U': {   // SHORT_BINSTRING
        uint8_t n;
        if (!ReadLE(&n)) return Error("truncated string");
        return PushString(n);
      }
      case 'T': {  // BINSTRING
        uint32_t n;
        if (!ReadLE(&n)) return Error("truncated BINSTRING");
        return PushString(n);
      }
      case 'c': {  // GLOBAL
        auto v = Make(Value::Kind::kGlobal);
        if (!ReadLine(&v->global.module) || !ReadLine(&v->global.name)) {
          return Error("truncated GLOBAL");
        }
        if (!IsAllowedGlobal(v->global)) {
          return Error(absl::StrCat("refusing global ", v->global.module, ".",
                                    v->global.name,
                                    ": not part of a plain state_dict"));
        }
        stack_.push_back(v);
        return absl::OkStatus();
      }
      case 'q': {
        uint8_t k;
        if (!ReadLE(&k)) return Error("truncated BINPUT");
        return Memo(k);
      }
      case 'r': {
        uint32_t k;
        if (!ReadLE(&k)) return Error("truncated LONG_BINPUT");
        return Memo(k);
      }
      case 0x94:  // MEMOIZE
        return Memo(memo_.size());
      case 'h': {
        uint8_t k;
        if (!ReadLE(&k)) return Error("truncated BINGET");
        return Get(k);
      }
      case 'j': {
        uint32_t k;
        if (!ReadLE(&k)) return Error("truncated LONG_BINGET");
        return Get(k);
      }
      case '}':
        stack_.push_back(Make(Value::Kind::kDict));
        return absl::OkStatus();
      case ']':
        stack_.push_back(Make(Value::Kind::kList));
        return absl::OkStatus();
      case ')':
        return MakeTuple({});
      case 't': {
        auto items = PopToMark();
        if (!items.ok()) return items.status();
        return MakeTuple(std::move(*items));
      }
      case 0x85:
      case 0x86:
      case 0x87: {
        const size_t n = op - 0x84;
        if (stack_.size() < n) return Error("stack underflow in TUPLE");
        std::vector<ValuePtr> items(stack_.end() - n, stack_.end());
        stack_.resize(stack_.size() - n);
        return MakeTuple(std::move(items));
      }
      case 's': {
        if (stack_.size() < 3) return Error("stack underflow in SETITEM");
        std::vector<ValuePtr> kv(stack_.end() - 2, stack_.end());
        stack_.resize(stack_.size() - 2);
        return SetItems(kv);
      }
      case 'u': {
        auto kv = PopToMark();
        if (!kv.ok()) return kv.status();
        return SetItems(*kv);
      }
      case 'a': {
        auto item = Pop();
        if (!item.ok()) return item.status();
        if (stack_.empty() || stack_.back()->kind != Value::Kind::kList) {
          return Error("APPEND to a non-list");
        }
        stack_.back()->items.push_back(*item);
        return absl::OkStatus();
      }
      case 'e': {
        auto items = PopToMark();
        if (!items.ok()) return items.status();
        if (stack_.empty() || stack_.back()->kind != Value::Kind::kList) {
          return Error("APPENDS to a non-list");
        }
        for (auto& i : *items) stack_.back()->items.push_back(i);
        return absl::OkStatus();
      }
      case 'Q': {  // BINPERSID
        auto pid = Pop();
        if (!pid.ok()) return pid.status();
        return PersistentLoad(**pid);
      }
      case 'R': {  // REDUCE
        auto args = Pop();
        if (!args.ok()) return args.status();
        auto callable = Pop();
        if (!callable.ok()) return callable.status();
        auto v = Reduce(**callable, **args);
        if (!v.ok()) return v.status();
        stack_.push_back(*v);
        return absl::OkStatus();
      }
      case 'b': {  // BUILD: state of an OrderedDict (its _metadata) is dropped
        auto state = Pop();
        if (!state.ok()) return state.status();
        if (stack_.empty()) return Error("BUILD on empty stack");
        return absl::OkStatus();
      }
      default:
        return Error(absl::StrCat("unsupported pickle opcode 0x",
                                  absl::Hex(op, absl::kZeroPad2)));
    }
  }

  const std::string& data_;
  std::function<absl::StatusOr<torch::Tensor>(const std::string&,
                                              torch::ScalarType, int64_t)>
      load_storage_;
  size_t pos_ = 0;
  bool done_ = false;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::map<uint64_t, ValuePtr> memo_;
  std::map<std::string, torch::Tensor> storages_;
};

absl::StatusOr<NamedTensors> ToNamedTensors(const Value& root) {
  if (root.kind != Value::Kind::kDict) {
    return absl::InvalidArgumentError(
        "weights file does not hold a state_dict (a dict of tensors)");
  }
  NamedTensors out;
  std::set<std::string> seen;
  for (const auto& [k, v] : root.entries) {
    if (k->kind != Value::Kind::kString || v->kind != Value::Kind::kTensor) {
      return absl::InvalidArgumentError(
          "weights file holds a dict that is not name -> tensor");
    }
    if (!seen.insert(k->s).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate key ", k->s));
    }
    out.emplace_back(k->s, v->tensor);
  }
  return out;
}

const std::map<std::string, torch::ScalarType>& SafetensorsTypes() {
  static const auto* kTypes = new std::map<std::string, torch::ScalarType>{
      {"F32", torch::kFloat}, {"F64", torch::kDouble}, {"F16", torch::kHalf},
      {"BF16", torch::kBFloat16}, {"I64", torch::kLong}, {"I32", torch::kInt},
      {"I16", torch::kShort}, {"I8", torch::kChar}, {"U8", torch::kByte},
      {"BOOL", torch::kBool}};
  return *kTypes;
}

}  // namespace

absl::StatusOr<NamedTensors> ParseTorchArchive(const std::string& bytes) {
  if (bytes.size() >= 2 && static_cast<uint8_t>(bytes[0]) == 0x80) {
    return absl::InvalidArgumentError(
        "legacy (non-zip) torch.save file: re-save it with a PyTorch >= 1.6 "
        "torch.save (the zip format)");
  }
  if (bytes.size() < 4 || bytes.compare(0, 4, "PK\x03\x04") != 0) {
    return absl::InvalidArgumentError(
        "not a PyTorch state_dict archive (no zip header)");
  }
  try {
    caffe2::serialize::PyTorchStreamReader reader(
        std::make_shared<BoundedReader>(bytes));
    if (!reader.hasRecord("data.pkl")) {
      return absl::InvalidArgumentError("archive has no data.pkl record");
    }
    auto [pkl_ptr, pkl_size] = reader.getRecord("data.pkl");
    const std::string pkl(static_cast<const char*>(pkl_ptr.get()), pkl_size);
    Unpickler unpickler(
        pkl,
        [&reader](const std::string& key, torch::ScalarType dtype,
                  int64_t numel) -> absl::StatusOr<torch::Tensor> {
          const std::string name = "data/" + key;
          if (key.find('/') != std::string::npos || !reader.hasRecord(name)) {
            return absl::DataLossError(absl::StrCat("archive lacks storage ", key));
          }
          auto [ptr, size] = reader.getRecord(name);
          const int64_t elem = c10::elementSize(dtype);
          if (numel < 0 || static_cast<uint64_t>(numel) * elem > size) {
            return absl::DataLossError(absl::StrCat(
                "storage ", key, " holds ", size, " bytes, fewer than its ",
                numel, " elements need"));
          }
          torch::Tensor t = torch::empty({numel}, torch::TensorOptions(dtype));
          // An empty storage has no buffer at all (null pointers): nothing to copy.
          if (numel > 0) std::memcpy(t.data_ptr(), ptr.get(), numel * elem);
          return t;
        });
    auto root = unpickler.Run();
    if (!root.ok()) return root.status();
    return ToNamedTensors(**root);
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat(
        "corrupt or truncated state_dict archive: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<NamedTensors> ParseSafetensors(const std::string& bytes) {
  uint64_t header_size = 0;
  if (bytes.size() < 8) return absl::DataLossError("safetensors file is truncated");
  std::memcpy(&header_size, bytes.data(), 8);
  if (header_size > bytes.size() - 8 || header_size > (100u << 20)) {
    return absl::DataLossError("safetensors header size exceeds the file");
  }
  nlohmann::json header = nlohmann::json::parse(
      bytes.begin() + 8, bytes.begin() + 8 + header_size, nullptr, false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::DataLossError("safetensors header is not a JSON object");
  }
  const uint64_t data_start = 8 + header_size;
  const uint64_t data_size = bytes.size() - data_start;
  // The header is a JSON object (unordered); keep the file's data order.
  std::vector<std::pair<uint64_t, std::pair<std::string, torch::Tensor>>> found;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets") || !info["dtype"].is_string() ||
        !info["shape"].is_array() || !info["data_offsets"].is_array() ||
        info["data_offsets"].size() != 2) {
      return absl::DataLossError(absl::StrCat("safetensors entry ", name, " is malformed"));
    }
    auto dtype = SafetensorsTypes().find(info["dtype"].get<std::string>());
    if (dtype == SafetensorsTypes().end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors entry ", name, " has unsupported dtype"));
    }
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (auto& d : info["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 40)) {
        return absl::DataLossError(absl::StrCat("safetensors entry ", name, " has a bad shape"));
      }
      shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
      numel *= d.get<uint64_t>();
      if (numel > (uint64_t{1} << 40)) {
        return absl::DataLossError(absl::StrCat("safetensors entry ", name, " is too large"));
      }
    }
    auto& offs = info["data_offsets"];
    if (!offs[0].is_number_unsigned() || !offs[1].is_number_unsigned()) {
      return absl::DataLossError(absl::StrCat("safetensors entry ", name, " has bad offsets"));
    }
    const uint64_t begin = offs[0].get<uint64_t>(), end = offs[1].get<uint64_t>();
    const uint64_t nbytes = numel * c10::elementSize(dtype->second);
    if (begin > end || end > data_size || end - begin != nbytes) {
      return absl::DataLossError(absl::StrCat(
          "safetensors entry ", name, " lies outside the file or has the wrong size"));
    }
    torch::Tensor t = torch::empty(shape, torch::TensorOptions(dtype->second));
    std::memcpy(t.data_ptr(), bytes.data() + data_start + begin, nbytes);
    found.push_back({begin, {name, t}});
  }
  std::stable_sort(found.begin(), found.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  NamedTensors out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

absl::StatusOr<NamedTensors> LoadStateDict(const std::string& path) {
  auto bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<NamedTensors> result =
      (bytes->size() > 8 && (*bytes)[8] == '{') ? ParseSafetensors(*bytes)
                                                 : ParseTorchArchive(*bytes);
  if (!result.ok()) {
    return absl::Status(result.status().code(),
                        absl::StrCat(path, ": ", result.status().message()));
  }
  return result;
}

absl::StatusOr<std::string> SerializeSafetensors(const NamedTensors& tensors) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::vector<torch::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    std::string dtype;
    for (const auto& [n, type] : SafetensorsTypes()) {
      if (type == c.scalar_type()) dtype = n;
    }
    if (dtype.empty()) return absl::InternalError("unsupported dtype for safetensors");
    const uint64_t nbytes = c.numel() * c.element_size();
    header[name] = {{"dtype", dtype},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    contiguous.push_back(c);
  }
  std::string json = header.dump();
  while ((json.size() % 8) != 0) json.push_back(' ');
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  out += json;
  for (const auto& c : contiguous) {
    out.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  }
  return out;
}

absl::Status CopyIntoModule(const NamedTensors& tensors,
                            torch::nn::Module& module,
                            const std::vector<std::string>& skip) {
  std::map<std::string, torch::Tensor> targets;
  for (const auto& p : module.named_parameters()) targets[p.key()] = p.value();
  for (const auto& b : module.named_buffers()) targets[b.key()] = b.value();
  auto skipped = [&skip](const std::string& name) {
    return std::find(skip.begin(), skip.end(), name) != skip.end();
  };
  std::vector<std::string> missing, unexpected, mismatched;
  std::set<std::string> present;
  for (const auto& [name, t] : tensors) {
    present.insert(name);
    if (skipped(name)) continue;
    auto it = targets.find(name);
    if (it == targets.end()) {
      unexpected.push_back(name);
    } else if (it->second.sizes() != t.sizes()) {
      mismatched.push_back(absl::StrCat(name, " (file ", c10::str(t.sizes()),
                                        ", model ", c10::str(it->second.sizes()), ")"));
    }
  }
  for (const auto& [name, t] : targets) {
    if (!present.count(name) && !skipped(name)) missing.push_back(name);
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    // At most a few names per kind: enough to see the pattern, one line.
    auto list = [](const std::vector<std::string>& names) {
      constexpr size_t kShown = 6;
      if (names.size() <= kShown) return absl::StrCat("[", absl::StrJoin(names, ", "), "]");
      return absl::StrCat("[", absl::StrJoin(names.begin(), names.begin() + kShown, ", "),
                          ", ... ", names.size(), " in all]");
    };
    std::string msg = "weights do not fit a ResNet-18:";
    if (!missing.empty()) absl::StrAppend(&msg, " missing keys ", list(missing));
    if (!unexpected.empty()) absl::StrAppend(&msg, " unexpected keys ", list(unexpected));
    if (!mismatched.empty()) absl::StrAppend(&msg, " wrong shapes ", list(mismatched));
    return absl::InvalidArgumentError(msg);
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : tensors) {
    if (skipped(name)) continue;
    torch::Tensor& target = targets[name];
    target.copy_(t.to(target.dtype()));
  }
  return absl::OkStatus();
}

}  // namespace traind::train
