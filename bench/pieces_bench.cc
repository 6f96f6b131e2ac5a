// Whether convolutions that hand out their work in pieces hold up better
// beside other work than one convolution over the whole batch.
//
//   pieces_bench [--image_size 128] [--algorithm winograd|direct] [--rounds 5]
//                [--piece 4] [--weight_piece 8] [--patience_us 300]
//
// Runs ResNet-18's 3x3 stride-1 convolutions (batch 32, each shape as often
// as the network has it; forward, input gradient and weight gradient) three
// ways, alternating, and prints each way's median time per set:
//   whole    one oneDNN primitive per pass over the whole batch, on OpenMP's
//            two threads: what traind and PyTorch run. Each thread's share
//            is fixed up front, so a thread the neighbour displaces stalls
//            the other at the end of every pass.
//   pieces   one-thread primitives over --piece images at a time (the
//            weight gradient over --weight_piece, the pieces' gradients then
//            summed in order), handed out one at a time to two threads of
//            this benchmark's own as they come free.
//   backup   the same, and a thread that finds no piece left and has waited
//            --patience_us for one another thread holds runs that piece
//            too, into its own buffer: the first to finish writes it.
// Alone the three should cost the same; beside bench/neighbour.py the
// pieces should lose less, if handing out work as threads come free pays:
//
//   bench/pieces_bench; python3 bench/neighbour.py & bench/pieces_bench; kill %1
//
// Only oneDNN's API (libdnnl-dev); no LibTorch.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <dnnl.hpp>

#include "bench/flags.h"

namespace {

using dnnl::memory;

const dnnl::engine& Engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// 64-byte aligned floats: oneDNN's kernels load whole vectors aligned.
struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes)
      : size_(bytes),
        data_(static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64))) {
    for (size_t i = 0; i < bytes / sizeof(float); ++i) {
      float* f = reinterpret_cast<float*>(data_.get());
      f[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.f - 0.5f;
    }
  }
  char* data() const { return data_.get(); }
  float* floats() const { return reinterpret_cast<float*>(data_.get()); }
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
  std::unique_ptr<char, AlignedFree> data_;
};

// This thread's scratchpad for `desc` (the primitives take theirs from the
// caller, so two threads can run one primitive at once).
memory Scratchpad(const memory::desc& desc) {
  thread_local Buffer buffer;
  if (buffer.size() < desc.get_size()) buffer = Buffer(desc.get_size());
  return memory(desc, Engine(), buffer.data());
}

// ---- two threads that take pieces of a pass as they come free ----

struct Pass {
  int pieces = 0;
  bool backup = false;
  // Runs piece `i` on thread `thread`, into its output, or into the
  // thread's own buffer when `to_scratch`.
  std::function<void(int i, int thread, bool to_scratch)> run;
  // Copies thread `thread`'s buffer to piece `i`'s output.
  std::function<void(int i, int thread)> commit;
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  std::unique_ptr<std::atomic<bool>[]> written, backed_up;
};

class PiecePool {
 public:
  explicit PiecePool(int patience_us) : patience_(patience_us) {
    helper_ = std::thread([this] {
      omp_set_num_threads(1);
      uint64_t seen = 0;
      while (!stop_.load(std::memory_order_acquire)) {
        const uint64_t generation = generation_.load(std::memory_order_acquire);
        if (generation == seen) {
          if (active_.load(std::memory_order_relaxed)) {
            _mm_pause();
          } else {
            std::this_thread::sleep_for(std::chrono::microseconds(200));
          }
          continue;
        }
        seen = generation;
        std::shared_ptr<Pass> pass = std::atomic_load(&current_);
        Work(*pass, 1);
      }
    });
  }
  ~PiecePool() {
    stop_ = true;
    helper_.join();
  }

  // While active the helper spins for the next pass, as OpenMP's threads do.
  void SetActive(bool active) { active_ = active; }

  // Runs `pass` on this thread and the helper; returns when every piece is
  // written.
  void Run(const std::shared_ptr<Pass>& pass) {
    pass->written.reset(new std::atomic<bool>[pass->pieces]());
    pass->backed_up.reset(new std::atomic<bool>[pass->pieces]());
    std::atomic_store(&current_, pass);
    generation_.fetch_add(1, std::memory_order_release);
    Work(*pass, 0);
    while (pass->done.load(std::memory_order_acquire) < pass->pieces) _mm_pause();
  }

 private:
  static void RunPiece(Pass& pass, int i, int thread) {
    if (!pass.backup) {
      pass.run(i, thread, false);
    } else {
      pass.run(i, thread, true);
      if (pass.written[i].exchange(true)) return;  // the other thread's copy won
      pass.commit(i, thread);
    }
    pass.done.fetch_add(1, std::memory_order_release);
  }

  void Work(Pass& pass, int thread) const {
    for (int i; (i = pass.next.fetch_add(1)) < pass.pieces;) RunPiece(pass, i, thread);
    if (!pass.backup) return;
    const auto start = std::chrono::steady_clock::now();
    while (pass.done.load(std::memory_order_acquire) < pass.pieces) {
      if (std::chrono::steady_clock::now() - start < patience_) {
        _mm_pause();
        continue;
      }
      int i = 0;
      while (i < pass.pieces && (pass.written[i] || pass.backed_up[i].exchange(true))) ++i;
      if (i == pass.pieces) return;
      RunPiece(pass, i, thread);
    }
  }

  const std::chrono::microseconds patience_;
  std::atomic<uint64_t> generation_{0};
  std::shared_ptr<Pass> current_;
  std::atomic<bool> stop_{false}, active_{false};
  std::thread helper_;
};

// ---- one 3x3 convolution shape ----

struct Primitives {
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data data;
  dnnl::convolution_backward_weights weights;
};

// Primitives for `batch` images of `channels` x `side` x `side`, made for
// this thread's OpenMP thread count.
Primitives Make(int batch, int channels, int side, dnnl::algorithm algorithm) {
  const auto layout = algorithm == dnnl::algorithm::convolution_winograd
                          ? memory::format_tag::any  // Winograd takes blocked maps
                          : memory::format_tag::nhwc;
  const memory::desc x({batch, channels, side, side}, memory::data_type::f32, layout);
  const memory::desc w({channels, channels, 3, 3}, memory::data_type::f32,
                       memory::format_tag::any);
  const memory::dims strides{1, 1}, padding{1, 1};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc forward_pd(
      {dnnl::prop_kind::forward_training, algorithm, x, w, x, strides, padding, padding}, attr,
      Engine());
  dnnl::convolution_backward_data::primitive_desc data_pd(
      {algorithm, x, w, x, strides, padding, padding}, attr, Engine(), forward_pd);
  dnnl::convolution_backward_weights::primitive_desc weights_pd(
      {algorithm, x, w, x, strides, padding, padding}, attr, Engine(), forward_pd);
  return {forward_pd,
          data_pd,
          weights_pd,
          dnnl::convolution_forward(forward_pd),
          dnnl::convolution_backward_data(data_pd),
          dnnl::convolution_backward_weights(weights_pd)};
}

struct Shape {
  int channels, side, count;  // `count` such convolutions in ResNet-18
};

constexpr int kBatch = 32;

class Convolutions {
 public:
  Convolutions(const Shape& shape, int piece, int weight_piece, dnnl::algorithm algorithm)
      : shape_(shape), piece_(piece), weight_piece_(weight_piece) {
    omp_set_num_threads(1);  // pieces: one-thread primitives
    part_ = Make(piece, shape.channels, shape.side, algorithm);
    weight_part_ = Make(weight_piece, shape.channels, shape.side, algorithm);
    omp_set_num_threads(2);
    whole_ = Make(kBatch, shape.channels, shape.side, algorithm);
    const size_t maps = whole_.forward_pd.src_desc().get_size();
    x_ = Buffer(maps);
    y_ = Buffer(maps);
    gy_ = Buffer(maps);
    gx_ = Buffer(maps);
    w_ = Buffer(whole_.forward_pd.weights_desc().get_size());
    gw_ = Buffer(whole_.weights_pd.diff_weights_desc().get_size());
    const size_t weights = weight_part_.weights_pd.diff_weights_desc().get_size();
    for (int i = 0; i < kBatch / weight_piece; ++i) gw_parts_.emplace_back(weights);
    for (int t = 0; t < 2; ++t) {
      map_scratch_.emplace_back(maps / (kBatch / piece));
      weight_scratch_.emplace_back(weights);
    }
  }

  // Forward, input gradient and weight gradient over the whole batch, on
  // OpenMP's threads.
  void Whole() {
    dnnl::stream stream(Engine());
    const Primitives& p = whole_;
    for (int k = 0; k < shape_.count; ++k) {
      p.forward.execute(stream, {{DNNL_ARG_SRC, Mem(p.forward_pd.src_desc(), x_.data())},
                                 {DNNL_ARG_WEIGHTS, Mem(p.forward_pd.weights_desc(), w_.data())},
                                 {DNNL_ARG_DST, Mem(p.forward_pd.dst_desc(), y_.data())},
                                 {DNNL_ARG_SCRATCHPAD, Scratchpad(p.forward_pd.scratchpad_desc())}});
      p.data.execute(stream, {{DNNL_ARG_DIFF_DST, Mem(p.data_pd.diff_dst_desc(), gy_.data())},
                              {DNNL_ARG_WEIGHTS, Mem(p.data_pd.weights_desc(), w_.data())},
                              {DNNL_ARG_DIFF_SRC, Mem(p.data_pd.diff_src_desc(), gx_.data())},
                              {DNNL_ARG_SCRATCHPAD, Scratchpad(p.data_pd.scratchpad_desc())}});
      p.weights.execute(
          stream, {{DNNL_ARG_SRC, Mem(p.weights_pd.src_desc(), x_.data())},
                   {DNNL_ARG_DIFF_DST, Mem(p.weights_pd.diff_dst_desc(), gy_.data())},
                   {DNNL_ARG_DIFF_WEIGHTS, Mem(p.weights_pd.diff_weights_desc(), gw_.data())},
                   {DNNL_ARG_SCRATCHPAD, Scratchpad(p.weights_pd.scratchpad_desc())}});
    }
  }

  // The same passes in pieces on `pool`'s two threads.
  void Pieces(PiecePool& pool, bool backup) {
    const int pieces = kBatch / piece_, weight_pieces = kBatch / weight_piece_;
    const size_t map_piece = x_.size() / pieces, map_weight_piece = x_.size() / weight_pieces;
    const size_t weight_bytes = gw_parts_[0].size();
    for (int k = 0; k < shape_.count; ++k) {
      // By value: with backup a thread may finish its copy of a piece after
      // the pass (and this function) has moved on.
      const Primitives* p = &part_;
      pool.Run(MakePass(
          pieces, backup,
          [=](int i, int t, bool to_scratch) {
            dnnl::stream stream(Engine());
            char* y = to_scratch ? map_scratch_[t].data() : y_.data() + i * map_piece;
            p->forward.execute(
                stream, {{DNNL_ARG_SRC, Mem(p->forward_pd.src_desc(), x_.data() + i * map_piece)},
                         {DNNL_ARG_WEIGHTS, Mem(p->forward_pd.weights_desc(), w_.data())},
                         {DNNL_ARG_DST, Mem(p->forward_pd.dst_desc(), y)},
                         {DNNL_ARG_SCRATCHPAD, Scratchpad(p->forward_pd.scratchpad_desc())}});
          },
          [=](int i, int t) {
            std::memcpy(y_.data() + i * map_piece, map_scratch_[t].data(), map_piece);
          }));
      pool.Run(MakePass(
          pieces, backup,
          [=](int i, int t, bool to_scratch) {
            dnnl::stream stream(Engine());
            char* gx = to_scratch ? map_scratch_[t].data() : gx_.data() + i * map_piece;
            p->data.execute(
                stream,
                {{DNNL_ARG_DIFF_DST, Mem(p->data_pd.diff_dst_desc(), gy_.data() + i * map_piece)},
                 {DNNL_ARG_WEIGHTS, Mem(p->data_pd.weights_desc(), w_.data())},
                 {DNNL_ARG_DIFF_SRC, Mem(p->data_pd.diff_src_desc(), gx)},
                 {DNNL_ARG_SCRATCHPAD, Scratchpad(p->data_pd.scratchpad_desc())}});
          },
          [=](int i, int t) {
            std::memcpy(gx_.data() + i * map_piece, map_scratch_[t].data(), map_piece);
          }));
      const Primitives* q = &weight_part_;
      pool.Run(MakePass(
          weight_pieces, backup,
          [=](int i, int t, bool to_scratch) {
            dnnl::stream stream(Engine());
            const size_t at = i * map_weight_piece;
            char* gw = to_scratch ? weight_scratch_[t].data() : gw_parts_[i].data();
            q->weights.execute(
                stream, {{DNNL_ARG_SRC, Mem(q->weights_pd.src_desc(), x_.data() + at)},
                         {DNNL_ARG_DIFF_DST, Mem(q->weights_pd.diff_dst_desc(), gy_.data() + at)},
                         {DNNL_ARG_DIFF_WEIGHTS, Mem(q->weights_pd.diff_weights_desc(), gw)},
                         {DNNL_ARG_SCRATCHPAD, Scratchpad(q->weights_pd.scratchpad_desc())}});
          },
          [=](int i, int t) {
            std::memcpy(gw_parts_[i].data(), weight_scratch_[t].data(), weight_bytes);
          }));
      // The pieces' gradients summed in piece order, in 16 chunks.
      constexpr int kChunks = 16;
      const size_t floats = weight_bytes / sizeof(float);
      const size_t chunk = (floats + kChunks - 1) / kChunks;
      pool.Run(MakePass(
          kChunks, backup,
          [=](int c, int t, bool to_scratch) {
            const size_t begin = c * chunk, end = std::min(floats, begin + chunk);
            float* out = to_scratch ? weight_scratch_[t].floats() : gw_.floats() + begin;
            for (size_t j = begin; j < end; ++j) {
              float sum = gw_parts_[0].floats()[j];
              for (int i = 1; i < weight_pieces; ++i) sum += gw_parts_[i].floats()[j];
              out[j - begin] = sum;
            }
          },
          [=](int c, int t) {
            const size_t begin = c * chunk, end = std::min(floats, begin + chunk);
            std::memcpy(gw_.floats() + begin, weight_scratch_[t].floats(),
                        (end - begin) * sizeof(float));
          }));
    }
  }

 private:
  static memory Mem(const memory::desc& desc, char* data) {
    return memory(desc, Engine(), data);
  }

  static std::shared_ptr<Pass> MakePass(int pieces, bool backup,
                                        std::function<void(int, int, bool)> run,
                                        std::function<void(int, int)> commit) {
    auto pass = std::make_shared<Pass>();
    pass->pieces = pieces;
    pass->backup = backup;
    pass->run = std::move(run);
    pass->commit = std::move(commit);
    return pass;
  }

  Shape shape_;
  int piece_, weight_piece_;
  Primitives whole_, part_, weight_part_;
  Buffer x_, y_, gy_, gx_, w_, gw_;
  std::vector<Buffer> gw_parts_, map_scratch_, weight_scratch_;
};

double Millis(const std::function<void()>& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using traind::bench::Arg;
  using traind::bench::StrArg;
  const int image = Arg(argc, argv, "--image_size", 128);
  const int rounds = Arg(argc, argv, "--rounds", 5);
  const int piece = Arg(argc, argv, "--piece", 4);
  const int weight_piece = Arg(argc, argv, "--weight_piece", 8);
  const std::string algorithm_name = StrArg(argc, argv, "--algorithm", "winograd");
  if ((algorithm_name != "winograd" && algorithm_name != "direct") || image < 32 || rounds < 1 ||
      piece < 1 || kBatch % piece != 0 || weight_piece < 1 || kBatch % weight_piece != 0) {
    std::fprintf(stderr,
                 "pieces_bench: --algorithm is winograd or direct, --image_size at least 32, "
                 "--piece and --weight_piece divide %d\n",
                 kBatch);
    return 2;
  }
  const auto algorithm = algorithm_name == "winograd" ? dnnl::algorithm::convolution_winograd
                                                      : dnnl::algorithm::convolution_direct;
  // ResNet-18's 3x3 stride-1 convolutions: the stem and the pooling quarter
  // the side, each later layer halves it.
  const std::vector<Shape> shapes = {
      {64, image / 4, 4}, {128, image / 8, 3}, {256, image / 16, 3}, {512, image / 32, 3}};
  std::vector<std::unique_ptr<Convolutions>> convolutions;
  try {
    for (const Shape& s : shapes) {
      convolutions.push_back(std::make_unique<Convolutions>(s, piece, weight_piece, algorithm));
    }
  } catch (const dnnl::error& e) {
    std::printf("pieces_bench: no %s convolutions on this CPU (%s)\n", algorithm_name.c_str(),
                e.what());
    return 0;
  }
  PiecePool pool(Arg(argc, argv, "--patience_us", 300));
  auto whole = [&] {
    omp_set_num_threads(2);
    for (auto& c : convolutions) c->Whole();
  };
  auto pieces = [&](bool backup) {
    omp_set_num_threads(1);
    pool.SetActive(true);
    for (auto& c : convolutions) c->Pieces(pool, backup);
    pool.SetActive(false);
  };
  whole();  // warm-up
  pieces(false);
  pieces(true);
  std::vector<double> whole_ms, pieces_ms, backup_ms;
  for (int r = 0; r < rounds; ++r) {
    whole_ms.push_back(Millis(whole));
    pieces_ms.push_back(Millis([&] { pieces(false); }));
    backup_ms.push_back(Millis([&] { pieces(true); }));
  }
  const double w = Median(whole_ms), p = Median(pieces_ms), b = Median(backup_ms);
  std::printf(
      "pieces_bench: %s, batch %d at %d px, pieces of %d (weight gradient %d), median of %d\n",
      algorithm_name.c_str(), kBatch, image, piece, weight_piece, rounds);
  std::printf("whole %.1f ms  pieces %.1f ms (%.2fx whole)  backup %.1f ms (%.2fx whole)\n", w,
              p, p / w, b, b / w);
  return 0;
}
