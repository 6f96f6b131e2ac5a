"""PyTorch's own DistributedDataParallel (Debian's python3-torch, gloo) on
the recipe, for tests/integration/distributed_test.py: 2 processes, the same
initial weights, the same images in the same order and shares as traind's
ranks, the state_dict of rank 0 after the given batches (OUT.pt) and the
gradients of its last step (OUT.pt.grads: DDP's average over the ranks).

    ddp_oracle.py INIT.safetensors IMAGES.pt OUT.pt WORLD PORT

IMAGES.pt holds {"x": [N,3,H,W] normalised images, "y": [N] labels,
"orders": [[epoch order]...], "batch": global batch, "lr": learning rate,
"classes": the dataset's class count}."""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import read_safetensors  # noqa: E402


def rank_main(rank, world, init, images, out, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    data = torch.load(images)
    model = torchvision.models.resnet18(num_classes=data["classes"])
    model.load_state_dict(read_safetensors(init))
    # traind's layout: channels-last weights and images, one thread per rank
    # (the job's 2 threads shared by its 2 ranks). Adam's first steps move
    # every weight by about the learning rate whatever the gradient's size,
    # so a different summation order in a convolution is enough to part ways.
    model = model.to(memory_format=torch.channels_last)
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # broadcast_buffers: rank 0's
    opt = torch.optim.Adam(ddp.parameters(), lr=data["lr"])
    per_rank = data["batch"] // world
    model.train()
    for order in data["orders"]:
        padded = list(order)
        i = 0
        while len(padded) % world:
            padded.append(order[i])
            i += 1
        share = padded[rank::world]  # DistributedSampler's rule
        for b in range(0, len(share), per_rank):
            idx = torch.tensor(share[b:b + per_rank])
            opt.zero_grad()
            x = data["x"][idx].contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(ddp(x), data["y"][idx])
            loss.backward()
            opt.step()
    if rank == 0:
        torch.save(model.state_dict(), out)
        torch.save({n: p.grad for n, p in model.named_parameters()}, out + ".grads")
    dist.destroy_process_group()


if __name__ == "__main__":
    init, images, out, world, port = sys.argv[1:6]
    mp.spawn(rank_main, args=(int(world), init, images, out, int(port)), nprocs=int(world))
