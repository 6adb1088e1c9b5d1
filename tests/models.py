"""Tiny models the tests quantize with sdnq and with comfy_sdnq (random weights)."""
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

# sdnq configurations the file tests round-trip (tests/test_files.py) and the fuzz corpus seeds
FILE_CONFIGS = [
    {"weights_dtype": "uint4", "use_svd": True, "svd_rank": 8},                       # the published default
    {"weights_dtype": "int8", "group_size": -1, "dequantize_fp32": False},
    {"weights_dtype": "float8_e4m3fn", "use_quantized_matmul": True},
    {"weights_dtype": "int5", "use_hadamard": True, "hadamard_group_size": 64},
    {"weights_dtype": "uint4", "use_codebook": True},
    {"weights_dtype": "int6", "scale_dtype": "int8"},
    {"weights_dtype": "float5_e2m2fn", "use_svd": True, "svd_rank": 8, "use_quantized_matmul": True},
]


class TinyNet(ModelMixin, ConfigMixin):
    """Linear, Conv2d and Embedding layers above sdnq's size minimums (numel >= 16384,
    channels >= 32), with dimensions divisible by 16 so quantized matmul applies."""

    @register_to_config
    def __init__(self, dim: int = 128, hidden: int = 384, vocab: int = 256, conv_channels: int = 32):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.proj_in = torch.nn.Linear(dim, hidden)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(hidden, hidden) for _ in range(2)])
        self.mlp = torch.nn.Linear(hidden, 4 * dim, bias=False)
        self.proj_out = torch.nn.Linear(4 * dim, dim)
        self.conv = torch.nn.Conv2d(conv_channels, 64, 3, padding=1)
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, tokens, image):
        x = self.embed(tokens)
        x = self.proj_in(x)
        for b in self.blocks:
            x = x + torch.nn.functional.gelu(b(x))
        x = self.proj_out(torch.nn.functional.gelu(self.mlp(x)))
        return self.norm(x), self.conv(image)


def tiny_net(seed: int = 0, dtype=torch.bfloat16) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net.to(dtype).eval()


def tiny_inputs(seed: int = 1, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, 7), generator=g), torch.randn(1, 32, 8, 8, generator=g).to(dtype)
