"""Issue 12, images with torchvision and timm (the [vision] extra and timm; skipped without
them): torchvision resnet18 / mobilenet_v3_small and timm models by --arch torchvision:/timm:
on uint8 NHWC arrays resized and normalised like torchvision does it; image folders of mixed
sizes, a split missing a class, a dataset root of split folders, --channels. Each checked
against the model's own forward pass with a hook on its final linear layer, and measured."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import extract_models as em
from extract_util import arch, assert_close, invoke, ok, read

pytestmark = pytest.mark.vision
torchvision = pytest.importorskip("torchvision")
from torchvision import transforms  # noqa: E402
from torchvision.transforms import functional  # noqa: E402

C = 4


def hooked(model, module, x: torch.Tensor):
    got = {}
    handle = module.register_forward_pre_hook(lambda _m, a: got.__setitem__("h", a[0].detach().clone()))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return got["h"].numpy(), logits.numpy()


def uint8_images(tmp_path, n: int = 10, size: tuple = (36, 44)) -> tuple:
    x = np.random.default_rng(0).integers(0, 256, (n, *size, 3), dtype=np.uint8)  # NHWC, not square
    path = tmp_path / "images.npz"
    np.savez(path, x=x, y=np.arange(n) % C)
    return path, x


def torchvision_reference(x: np.ndarray, size: int, normalize) -> torch.Tensor:
    """torchvision's own steps on the tensors: ToTensor-like scaling, Resize, CenterCrop, Normalize."""
    steps = transforms.Compose([transforms.Resize(size, antialias=True), transforms.CenterCrop(size), transforms.Normalize(*normalize)])
    return torch.stack([steps(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0) for image in x])


@pytest.mark.parametrize("name,head", [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")])
def test_torchvision_models_on_uint8_arrays(tmp_path, name, head):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=C).eval()
    ck = tmp_path / f"{name}.pth"
    torch.save({"model": model.state_dict(), "epoch": 7}, ck)
    data, x = uint8_images(tmp_path)
    out = tmp_path / f"{name}.h5"
    ok(invoke("extract", ck, "--arch", f"torchvision:{name}", "--arch-arg", f"num_classes={C}", "--data", data,
              "--image-size", "32", "--normalize", "imagenet", "-o", out, "-b", "4", "-q"))
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    h, logits = hooked(model, dict(model.named_modules())[head], torchvision_reference(x, 32, imagenet))
    d = read(out)
    assert_close(d["features"], h, rel=1e-5)
    assert_close(d["logits"], logits, rel=1e-5)
    assert d["attrs"]["feature_layer"] == head and d["attrs"]["epoch"] == 7
    record = json.loads(ok(invoke("measure", out, "--json")).stdout)
    assert record["splits"]["train"]["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == np.arange(len(x)) % C))


def test_timm_models(tmp_path):
    """A timm CNN and a timm ViT (whose blocks' (N, L, D) outputs --pool avg averages over the
    tokens, found from the shapes: D is the classifier's input size)."""
    timm = pytest.importorskip("timm")
    data, x = uint8_images(tmp_path, size=(32, 32))
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    for name, args, head in (("resnet10t", [], "fc"), ("vit_tiny_patch16_224", ["img_size=32", "patch_size=8"], "head")):
        kwargs = dict(a.split("=") for a in args)
        model = timm.create_model(name, pretrained=False, num_classes=C, **{k: int(v) for k, v in kwargs.items()}).eval()
        ck = tmp_path / f"{name}.pth"
        torch.save({"state_dict_ema": model.state_dict()}, ck)
        out = tmp_path / f"{name}.h5"
        extra = ["--layer", "blocks.0", "--pool", "avg"] if "vit" in name else []
        arch_args = [v for a in args for v in ("--arch-arg", a)]
        ok(invoke("extract", ck, "--ema", "--arch", f"timm:{name}", *arch_args, "--arch-arg", f"num_classes={C}",
                  "--data", data, *extra, "-o", out, "-q"))
        h, logits = hooked(model, dict(model.named_modules())[head], pixels)
        d = read(out)
        assert_close(d["features"], h, rel=1e-5)
        assert_close(d["logits"], logits, rel=1e-5)
        if extra:
            tokens = {}
            handle = model.blocks[0].register_forward_hook(lambda _m, a, o: tokens.setdefault("t", o.detach()))
            with torch.no_grad():
                model(pixels)
            handle.remove()
            assert d["layers"]["blocks.0"].shape == (len(x), model.embed_dim)
            assert_close(d["layers"]["blocks.0"], tokens["t"].mean(1).numpy(), rel=1e-5)
        json.loads(ok(invoke("measure", out, "--json")).stdout)


# ---------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------


def image_folder(root, classes: dict, sizes=((20, 20),), seed: int = 0) -> list:
    """root/<class>/<i>.png; returns [(path, class)] in ImageFolder's order."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = []
    for c in sorted(classes):
        (root / c).mkdir(parents=True)
        for i in range(classes[c]):
            height, width = sizes[(len(files)) % len(sizes)]
            path = root / c / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
            files.append((path, c))
    return files


def cnn(tmp_path, channels: int = 3, num_classes: int = C):
    torch.manual_seed(channels)
    model = em.TinyCNN(channels, num_classes).eval()
    ck = tmp_path / f"cnn{channels}.pt"
    torch.save(model.state_dict(), ck)
    return model, ck


def load(path, size=None, gray: bool = False) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("L" if gray else "RGB")
        if size is not None and (image.height, image.width) != size:  # cover, then centre crop
            scale = max(size[0] / image.height, size[1] / image.width)
            image = functional.center_crop(functional.resize(image, [round(image.height * scale), round(image.width * scale)]), list(size))
        return functional.to_tensor(image)


def test_mixed_size_folder(tmp_path):
    """Photos of several sizes without --image-size: fitted to the first image's size, with a
    note, instead of an internal error when the batch is stacked."""
    files = image_folder(tmp_path / "photos", {"a": 3, "b": 3}, sizes=((20, 24), (31, 17), (20, 24), (40, 40)))
    model, ck = cnn(tmp_path, num_classes=2)
    out = tmp_path / "o.h5"
    r = ok(invoke("extract", ck, "--arch", arch("TinyCNN"), "--arch-arg", "num_classes=2", "--data", tmp_path / "photos", "-o", out))
    assert "the images differ in size" in r.stderr and "20x24" in r.stderr
    x = torch.stack([load(p, (20, 24)) for p, _ in files])
    h, _ = hooked(model, model.fc, x)
    assert_close(read(out)["features"], h)


def test_a_split_missing_a_class_keeps_the_labels(tmp_path):
    """The test folder lacks class b: c keeps label 2 (the train folder's list), not 1."""
    train = image_folder(tmp_path / "train", {"a": 2, "b": 2, "c": 2, "d": 2})
    test = image_folder(tmp_path / "test", {"a": 2, "c": 3}, seed=1)
    model, ck = cnn(tmp_path)
    out = tmp_path / "o.h5"
    ok(invoke("extract", ck, "--arch", arch("TinyCNN"), "--arch-arg", f"num_classes={C}",
              "--data", f"test={tmp_path / 'test'}", "--data", f"train={tmp_path / 'train'}", "-o", out, "-q"))
    d = read(out, "test")
    np.testing.assert_array_equal(d["labels"], [["a", "b", "c", "d"].index(c) for _, c in test])
    h, _ = hooked(model, model.fc, torch.stack([load(p) for p, _ in test]))
    assert_close(d["features"], h)
    assert len(read(out, "train")["labels"]) == len(train)
    # a class the train folder does not have is refused
    (tmp_path / "test" / "e").mkdir()
    (tmp_path / "test" / "a" / "0.png").rename(tmp_path / "test" / "e" / "0.png")
    r = invoke("extract", ck, "--arch", arch("TinyCNN"), "--arch-arg", f"num_classes={C}",
               "--data", f"train={tmp_path / 'train'}", "--data", f"test={tmp_path / 'test'}", "-o", out, "--force")
    assert r.exit_code == 3 and "class folders e are not among the train folder's 4 classes" in r.stderr


def test_a_dataset_root_of_split_folders(tmp_path):
    """root/train/<class>, root/test/<class>: splits, not a 2-class dataset; the class count is
    checked against the model's C."""
    root = tmp_path / "root"
    image_folder(root / "train", {"a": 2, "b": 2, "c": 2, "d": 2})
    image_folder(root / "test", {"a": 1, "b": 1, "c": 1, "d": 1}, seed=1)
    model, ck = cnn(tmp_path)
    out = tmp_path / "o.h5"
    ok(invoke("extract", ck, "--arch", arch("TinyCNN"), "--arch-arg", f"num_classes={C}", "--data", root, "-o", out, "-q"))
    assert len(read(out, "train")["labels"]) == 8 and list(read(out, "test")["labels"]) == [0, 1, 2, 3]
    ok(invoke("extract", ck, "--arch", arch("TinyCNN"), "--arch-arg", f"num_classes={C}",
              "--data", f"test={root}", "-o", out, "--force", "-q"))
    assert list(read(out, "test")["labels"]) == [0, 1, 2, 3]
    r = invoke("extract", ck, "--arch", arch("TinyCNN"), "--arch-arg", f"num_classes={C}", "--data", f"val={root}", "-o", out, "--force")
    assert r.exit_code == 3 and "holds the split folders test, train" in r.stderr
    (tmp_path / "five").mkdir()
    _, ck5 = cnn(tmp_path / "five", num_classes=5)
    r = invoke("extract", ck5, "--arch", arch("TinyCNN"), "--arch-arg", "num_classes=5", "--data", root, "-o", out, "--force")
    assert r.exit_code == 3 and "4 classes, but the model's classifier 'fc' has 5 outputs" in r.stderr


def test_channels_for_gray_and_rgb_models(tmp_path):
    files = image_folder(tmp_path / "rgb", {"a": 2, "b": 2, "c": 2, "d": 2})
    model, ck = cnn(tmp_path, channels=1)
    out = tmp_path / "o.h5"
    ok(invoke("extract", ck, "--arch", arch("TinyCNN"), "--arch-arg", "channels=1", "--arch-arg", f"num_classes={C}",
              "--data", tmp_path / "rgb", "--channels", "1", "-o", out, "-q"))
    h, _ = hooked(model, model.fc, torch.stack([load(p, gray=True) for p, _ in files]))
    assert_close(read(out)["features"], h, rel=1e-5)


def test_resize_of_uint8_arrays_matches_torchvision(tmp_path):
    """--image-size on arrays: the shorter side resized with antialiasing, centre-cropped."""
    data, x = uint8_images(tmp_path, size=(30, 47))
    model, ck = cnn(tmp_path)
    out = tmp_path / "o.h5"
    ok(invoke("extract", ck, "--arch", arch("TinyCNN"), "--arch-arg", f"num_classes={C}", "--data", data,
              "--image-size", "16", "-o", out, "-q"))
    h, _ = hooked(model, model.fc, torchvision_reference(x, 16, ((0.0,), (1.0,))))
    assert_close(read(out)["features"], h, rel=1e-5)
