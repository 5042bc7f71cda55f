"""--amp: what --help and the README say is what the code does (issue 14, item 7)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from extract_util import arch, invoke, make_data, model, ok, read
from ncli.extract.devices import autocast

README = Path(__file__).resolve().parent.parent / "README.md"
SAID = "float16 on a GPU (CUDA, MPS), bfloat16 on the CPU"


def test_amp_dtypes_match_help_and_readme(tmp_path):
    assert autocast(torch.device("cpu"), True)[1] == "bfloat16"
    with warnings.catch_warnings():  # without a GPU torch warns that it disables the context; the dtype is what counts
        warnings.simplefilter("ignore")
        assert autocast(torch.device("cuda"), True)[1] == "float16"
    assert autocast(torch.device("cpu"), False)[1] is None
    help_text = " ".join(ok(invoke("extract", "--help")).stdout.replace("│", " ").split())
    assert SAID in help_text
    readme = " ".join(README.read_text().split())
    assert SAID in readme
    assert not re.search(r"--amp` runs under float16 autocast on the GPU", readme)  # the old, partial claim

    torch.save(model("Net").state_dict(), tmp_path / "net.pt")
    ok(invoke("extract", tmp_path / "net.pt", "--arch", arch("Net"), "--data", make_data(tmp_path), "--device", "cpu",
              "--amp", "-o", tmp_path / "out.h5", "-q"))
    assert read(tmp_path / "out.h5")["attrs"]["amp"] == "bfloat16"
