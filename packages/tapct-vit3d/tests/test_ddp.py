"""DDP (gloo, one CPU process): steps without masks must not leave unused parameters."""

import pytest
import torch
import torch.distributed as dist
from tapct_vit3d import create_model
from torch.nn.parallel import DistributedDataParallel


@pytest.fixture
def process_group(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


class _Student(torch.nn.Module):
    """Runs the backbone the way a DINOv2 student does: global + local crops in one call."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = create_model("tap_nano_3d", depth=1)

    def forward(self, crops, masks):
        outs = self.backbone.forward_features_list(crops, masks)
        return sum(o["x_norm_clstoken"].square().mean() + o["x_norm_patchtokens"].square().mean()
                   for o in outs)


def test_ddp_steps_without_masks(process_group):
    model = DistributedDataParallel(_Student())  # find_unused_parameters=False (default)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    crops = [torch.randn(2, 1, 12, 64, 64, generator=gen), torch.randn(2, 1, 12, 32, 32,
                                                                      generator=gen)]
    masked = torch.zeros(2, 3 * 8 * 8, dtype=torch.bool)
    masked[:, :7] = True
    # a step without any mask, then one with, then without again: DDP raises on the second
    # step if the first left a parameter without a gradient
    for masks in ([None, None], [masked, None], [None, None]):
        opt.zero_grad()
        model(crops, masks).backward()
        opt.step()
    assert model.module.backbone.mask_token.grad is not None
