"""The reference recipe's PyTorch code as written (NCHW, default allocator),
timed the same way as engine_bench: images/s per mode on synthetic batches.

--tuned: the strongest setup of the same PyTorch code found on this machine
(channels-last model and input, gradients set to None rather than zeroed;
run.sh starts it with traind's allocator settings in the environment; Adam's
foreach=True is slower here on the CPU, 16.1 against 11.2 ms a fine-tune
update, so it keeps the default); --bf16 adds
torch.cpu.amp.autocast(bfloat16). --modes scratch,eval: which modes (default
all three)."""
import sys
import time

import torch
import torchvision


def arg(name, default):
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


TUNED = "--tuned" in sys.argv
BF16 = "--bf16" in sys.argv


def measure(mode, steps, batch, size):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=101)
    fmt = torch.channels_last if TUNED else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if mode == "finetune":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(("layer3", "layer4", "fc"))
        opt = torch.optim.Adam([{"params": model.fc.parameters(), "lr": 1e-3},
                                {"params": list(model.layer3.parameters()) +
                                 list(model.layer4.parameters()), "lr": 1e-4}])
    elif mode == "scratch":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 101, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        with torch.cpu.amp.autocast(enabled=BF16, dtype=torch.bfloat16):
            if mode == "eval":
                model.eval()
                with torch.no_grad():
                    model(x).float().sum().item()
                return
            model.train()
            opt.zero_grad(set_to_none=TUNED)
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        loss.item()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main():
    threads, steps = arg("--threads", 2), arg("--steps", 10)
    size, batch = arg("--image_size", 128), arg("--batch", 32)
    torch.set_num_threads(threads)
    label = ("tuned" if TUNED else "reference") + ("-bf16" if BF16 else "")
    print(f"{label}: torchvision {torchvision.__version__}, {size}x{size}, batch {batch}, "
          f"{threads} threads, {steps} timed steps")
    modes = sys.argv[sys.argv.index("--modes") + 1].split(",") if "--modes" in sys.argv else None
    for mode in ("finetune", "scratch", "eval"):
        if modes and mode not in modes:
            continue
        print(f"{label} {mode:<8} {measure(mode, steps, batch, size):7.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
