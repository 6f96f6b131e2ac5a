"""Tabulates where a training step's time goes, from engine_bench --profile.

    build/bench/engine_bench --steps 5 --profile /tmp/prof
    /usr/bin/python3 bench/profile_step.py /tmp/prof/finetune.json [...]

Reads LibTorch's autograd-profiler Chrome trace, computes each operator's
self time (its span minus the spans of the operators it called, per thread)
and groups the operators into the families of a ResNet step: convolution
forward and backward, BatchNorm forward and backward, ReLU, pooling, casts
and layout reorders, the optimizer, the loss, other. Operators called inside
traind's own scopes (the GEMM convolutions of gemm_conv.cc, the fused
BatchNorm of fused_batch_norm.cc, which includes the ReLU and the residual add
it fuses) count as that scope's."""
import json
import sys
from collections import defaultdict

# traind's RECORD_FUNCTION scopes whose operators belong to the scope's family.
SCOPES = ("traind::gemm_conv_forward", "traind::gemm_conv_backward",
          "traind::winograd_conv_forward", "traind::winograd_conv_backward",
          "traind::fused_batch_norm_forward", "traind::fused_batch_norm_backward")

FAMILIES = [
    ("convolution backward", ("convolution_backward", "mkldnn_convolution_backward",
                              "gemm_conv_backward", "winograd_conv_backward")),
    ("convolution forward", ("convolution", "conv2d", "mkldnn_convolution",
                             "gemm_conv_forward", "winograd_conv_forward")),
    ("BatchNorm backward", ("batch_norm_backward", "native_batch_norm_backward",
                            "fused_batch_norm_backward")),
    ("BatchNorm forward", ("batch_norm", "native_batch_norm", "fused_batch_norm_forward")),
    ("ReLU forward/backward", ("relu", "threshold_backward", "clamp_min")),
    ("pooling", ("max_pool2d", "max_pool2d_with_indices", "max_pool2d_with_indices_backward",
                 "adaptive_avg_pool2d", "mean")),
    ("casts, copies, layout reorders", ("to", "_to_copy", "copy_", "contiguous", "clone",
                                        "empty_like", "reorder")),
    ("Adam (traind's FusedAdam)", ("fused_adam_step",)),
    ("element-wise: residual adds, gradient sums (LibTorch's Adam)",
     ("add_", "add", "addcmul_", "addcdiv_", "mul_", "mul", "sqrt", "div_", "div", "lerp_",
      "_foreach", "zero_", "fill_", "sum")),
    ("linear (fc)", ("linear", "addmm", "mm")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "_log_softmax")),
]


def family(name):
    base = name.split("::")[-1].lower()
    for fam, keys in FAMILIES:
        if any(base == k or base == k + "_" or base.startswith(k + "_") for k in keys):
            return fam
    return "other"


def self_times(path):
    with open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    spans = defaultdict(list)  # thread -> [(start, end, name)]
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            spans[e.get("tid")].append((float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["name"]))
    total = defaultdict(float)
    for tid, items in spans.items():
        items.sort(key=lambda s: (s[0], -s[1]))
        stack = []  # [start, end, name, child_time, owner]

        def close(entry):
            start, end, name, child, owner = entry
            total[owner or name] += (end - start) - child
            if stack:
                stack[-1][3] += end - start
        for start, end, name in items:
            while stack and stack[-1][1] <= start:
                close(stack.pop())
            owner = stack[-1][4] if stack else None
            if owner is None and name in SCOPES:
                owner = name
            stack.append([start, end, name, 0.0, owner])
        while stack:
            close(stack.pop())
    return total


def main():
    for path in sys.argv[1:]:
        per_op = self_times(path)
        grand = sum(per_op.values()) or 1.0
        fams = defaultdict(float)
        for name, t in per_op.items():
            fams[family(name)] += t
        print(f"\n{path}: {grand / 1e3:.1f} ms of operator time (all threads)")
        for fam, t in sorted(fams.items(), key=lambda kv: -kv[1]):
            print(f"  {fam:32} {t / 1e3:9.1f} ms {100 * t / grand:5.1f} %")
        others = sorted(((t, n) for n, t in per_op.items() if family(n) == "other"), reverse=True)
        print("  largest in other: " + ", ".join(f"{n} {t / 1e3:.1f} ms" for t, n in others[:4]))
        print("  top operators:")
        for name, t in sorted(per_op.items(), key=lambda kv: -kv[1])[:8]:
            print(f"    {name:40} {t / 1e3:9.1f} ms {100 * t / grand:5.1f} %")


if __name__ == "__main__":
    main()
