"""A PyTorch file in the legacy (pre-1.6) format as Python 3's torch writes it today
(`torch.save(..., _use_new_zipfile_serialization=False)`), for src/torch_legacy's tests:
an OrderedDict state dict (pickled as OrderedDict() then SETITEMS, unlike the Python 2
files lpips ships), a tensor that is a view into a shared storage at an offset, a
non-contiguous tensor and an int32 tensor (both unreadable here, each to be named), and a
storage used outside the state dict.

    tools/parity/make_legacy_pth_fixture.py [OUT]   (default OUT: tests/fixtures/parity/legacy_py3.pth)
"""

import collections
import sys

import torch

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity/legacy_py3.pth"

base = torch.arange(12, dtype=torch.float32)
state = collections.OrderedDict(
    [
        ("weight", torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4),
        ("view", base[4:10].reshape(3, 2)),  # offset 4 into base's storage
        ("transposed", torch.arange(6, dtype=torch.float32).reshape(2, 3).t()),
        ("ints", torch.arange(3, dtype=torch.int32)),
        ("half", torch.tensor([0.5, -2.0], dtype=torch.float16)),
    ]
)
torch.save({"state_dict": state, "extra": base}, OUT, _use_new_zipfile_serialization=False)
