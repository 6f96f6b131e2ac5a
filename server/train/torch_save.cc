// SerializeTorchArchive: a state_dict written the way Python's
// `torch.save(model.state_dict(), f)` writes one, so that the restricted
// unpickler of `torch.load(f, weights_only=True)` (the default since
// PyTorch 2.6) accepts it in every PyTorch since 1.13.
//
// LibTorch's torch::pickle_save writes a TorchScript-typed dict instead
// (a `torch.jit._pickle.restore_type_tag` global around it), which only the
// unsafe full unpickler takes.
//
// The archive: data.pkl (protocol 2), byteorder, one record per storage
// (data/0, data/1, ...) and version, 64-byte aligned, as PyTorchStreamWriter
// lays out any torch.save file. The pickle is:
//   collections.OrderedDict() with, per tensor, key ->
//   torch._utils._rebuild_tensor_v2(
//       persistent_id(('storage', torch.<Type>Storage, '<n>', 'cpu', numel)),
//       0, size, stride, False, collections.OrderedDict())
// The state_dict's `_metadata` (module versions) is left out: it describes
// the Python modules that made the dict, which traind has none of, and
// load_state_dict reads a missing entry as the current version.
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <caffe2/serialize/inline_container.h>

#include "absl/strings/str_cat.h"
#include "server/train/weights.h"

namespace traind::train {
namespace {

// The pickle opcodes used here (Python's pickle.py names).
constexpr char kProto = '\x80', kGlobal = 'c', kEmptyTuple = ')', kReduce = 'R',
               kMark = '(', kTuple = 't', kBinUnicode = 'X', kBinInt = 'J',
               kBinInt1 = 'K', kBinInt2 = 'M', kLong1 = '\x8a', kBinPersId = 'Q',
               kNewFalse = '\x89', kSetItems = 'u', kStop = '.';

// Writes the opcodes of a pickle, protocol 2, as Python's pickler would for
// the few types a state_dict holds.
class PickleWriter {
 public:
  PickleWriter() {
    out_.push_back(kProto);
    out_.push_back('\x02');
  }

  void Op(char op) { out_.push_back(op); }

  void Global(const char* module, const char* name) {
    Op(kGlobal);
    absl::StrAppend(&out_, module, "\n", name, "\n");
  }

  void String(const std::string& s) {
    Op(kBinUnicode);
    Little(static_cast<uint32_t>(s.size()), 4);
    out_ += s;
  }

  // The shortest integer form Python's pickler picks.
  void Int(int64_t v) {
    if (v >= 0 && v <= 0xff) {
      Op(kBinInt1);
      Little(static_cast<uint64_t>(v), 1);
    } else if (v >= 0 && v <= 0xffff) {
      Op(kBinInt2);
      Little(static_cast<uint64_t>(v), 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      Op(kBinInt);
      Little(static_cast<uint32_t>(static_cast<int32_t>(v)), 4);
    } else {
      // LONG1: little-endian two's complement, 8 bytes are always enough.
      Op(kLong1);
      out_.push_back('\x08');
      Little(static_cast<uint64_t>(v), 8);
    }
  }

  void IntTuple(c10::IntArrayRef values) {
    if (values.empty()) return Op(kEmptyTuple);
    Op(kMark);
    for (int64_t v : values) Int(v);
    Op(kTuple);
  }

  // collections.OrderedDict(): the dict itself and each tensor's (empty)
  // backward hooks.
  void EmptyOrderedDict() {
    Global("collections", "OrderedDict");
    Op(kEmptyTuple);
    Op(kReduce);
  }

  std::string Finish() {
    Op(kStop);
    return std::move(out_);
  }

 private:
  void Little(uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }

  std::string out_;
};

// The Python storage class torch.load maps back to `dtype`.
absl::StatusOr<const char*> StorageClass(torch::ScalarType dtype) {
  static const auto* kClasses = new std::map<torch::ScalarType, const char*>{
      {torch::kFloat, "FloatStorage"},     {torch::kDouble, "DoubleStorage"},
      {torch::kHalf, "HalfStorage"},       {torch::kBFloat16, "BFloat16Storage"},
      {torch::kLong, "LongStorage"},       {torch::kInt, "IntStorage"},
      {torch::kShort, "ShortStorage"},     {torch::kChar, "CharStorage"},
      {torch::kByte, "ByteStorage"},       {torch::kBool, "BoolStorage"}};
  auto it = kClasses->find(dtype);
  if (it == kClasses->end()) {
    return absl::InternalError(
        absl::StrCat("cannot serialise weights of dtype ", c10::toString(dtype)));
  }
  return it->second;
}

}  // namespace

absl::StatusOr<std::string> SerializeTorchArchive(const NamedTensors& tensors) {
  // Each tensor gets a storage of its own, exactly its elements, offset 0.
  std::vector<torch::Tensor> storages;
  PickleWriter p;
  p.EmptyOrderedDict();
  if (!tensors.empty()) p.Op(kMark);
  for (const auto& [name, tensor] : tensors) {
    torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    if (t.storage_offset() != 0 || t.storage().nbytes() != t.nbytes()) t = t.clone();
    auto storage_class = StorageClass(t.scalar_type());
    if (!storage_class.ok()) return storage_class.status();
    p.String(name);
    p.Global("torch._utils", "_rebuild_tensor_v2");
    p.Op(kMark);
    p.Op(kMark);  // the persistent id
    p.String("storage");
    p.Global("torch", *storage_class);
    p.String(std::to_string(storages.size()));
    p.String("cpu");
    p.Int(t.numel());
    p.Op(kTuple);
    p.Op(kBinPersId);
    p.Int(0);  // storage offset
    p.IntTuple(t.sizes());
    p.IntTuple(t.strides());
    p.Op(kNewFalse);  // requires_grad
    p.EmptyOrderedDict();
    p.Op(kTuple);
    p.Op(kReduce);
    storages.push_back(std::move(t));
  }
  // Python writes one pair with SETITEM; SETITEMS over a mark reads the same.
  if (!tensors.empty()) p.Op(kSetItems);
  std::string pickle = p.Finish();
  std::string out;
  try {
    caffe2::serialize::PyTorchStreamWriter writer([&out](const void* data, size_t size) {
      out.append(static_cast<const char*>(data), size);
      return size;
    });
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    writer.writeRecord("byteorder", "little", 6);
    for (size_t i = 0; i < storages.size(); ++i) {
      writer.writeRecord(absl::StrCat("data/", i), storages[i].data_ptr(),
                         storages[i].nbytes());
    }
    writer.writeEndOfFile();
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("cannot serialise weights: ", e.what_without_backtrace()));
  }
  return out;
}

}  // namespace traind::train
