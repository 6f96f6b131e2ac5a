"""The reference recipe exactly as RECIPE.md describes it, in PyTorch:
ImageFolder, the 80/20 random_split, DataLoader(num_workers=2), the
augmentation applied to training and validation images alike (as the
original notebook did), ResNet-18, Adam. Prints one line per epoch.

  reference_recipe.py DATASET_DIR --kind scratch|finetune [--weights FILE]
                      [--epochs N] [--seed S] [--threads T]
"""
import argparse
import os
import time

import torch
import torchvision
import torchvision.transforms as T


class Folder(torchvision.datasets.ImageFolder):
    def find_classes(self, directory):
        classes = sorted(e.name for e in os.scandir(directory)
                         if e.is_dir() and e.name != "BACKGROUND_Google")
        return classes, {c: i for i, c in enumerate(classes)}


def recipe_optimizer(model, kind):
    """The recipe's Adam: every parameter at 1e-3 from scratch; for a
    fine-tune, layer3/layer4/fc trainable (the rest frozen), fc at 1e-3 and
    layer3+layer4 at 1e-4. The golden tests use this as the reference."""
    if kind == "scratch":
        return torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.requires_grad = False
    for block in (model.layer3, model.layer4, model.fc):
        for p in block.parameters():
            p.requires_grad = True
    return torch.optim.Adam([
        {"params": model.fc.parameters(), "lr": 1e-3},
        {"params": list(model.layer3.parameters()) + list(model.layer4.parameters()),
         "lr": 1e-4}])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--kind", default="scratch")
    ap.add_argument("--weights")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    transform = T.Compose([
        T.Resize((128, 128)), T.RandomHorizontalFlip(), T.RandomRotation(10),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = Folder(args.dataset, transform=transform)
    n_train = int(0.8 * len(ds))
    train, val = torch.utils.data.random_split(
        ds, [n_train, len(ds) - n_train], generator=torch.Generator().manual_seed(args.seed))
    train_loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=2)
    val_loader = torch.utils.data.DataLoader(val, batch_size=32, shuffle=False, num_workers=2)

    model = torchvision.models.resnet18()
    if args.kind == "finetune":
        # The classifier is replaced below, whatever its shape in the file.
        state = {k: v for k, v in torch.load(args.weights).items() if not k.startswith("fc.")}
        model.load_state_dict(state, strict=False)
    model.fc = torch.nn.Linear(512, len(ds.classes))
    torch.nn.init.xavier_uniform_(model.fc.weight)
    if args.kind == "scratch":
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
    opt = recipe_optimizer(model, args.kind)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for x, y in train_loader:
            opt.zero_grad()
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * y.size(0)
            correct += (out.argmax(1) == y).sum().item()
            total += y.size(0)
        train_seconds = time.perf_counter() - start
        model.eval()
        vt, vc, vl = 0, 0, 0.0
        with torch.no_grad():
            for x, y in val_loader:
                out = model(x)
                vl += loss_fn(out, y).item() * y.size(0)
                vc += (out.argmax(1) == y).sum().item()
                vt += y.size(0)
        print(f"reference epoch {epoch} train_loss {loss_sum / total:.4f} "
              f"train_acc {correct / total:.4f} val_loss {vl / vt:.4f} val_acc {vc / vt:.4f} "
              f"seconds {time.perf_counter() - start:.1f} train_img_s {total / train_seconds:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
