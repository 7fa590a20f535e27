"""AVS-Mamba mask head (Gong et al., TMM 2025; official SitongGong/AVS-Mamba@e0489c94:model/compformer_ablation.py,
``mlp`` and ``fc``).

The decoder's audio query (one token per frame) is correlated with the stride-4 mask features by a dot product,
the resulting 1-channel map is lifted back to ``d_model`` channels by a 1x1-conv FFN and added to the mask
features, and a small conv head upsamples x4 to input resolution. One head serves both decoder outputs
(final and intermediate), so its weights are shared between them, as in the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaskHead"]


class MaskHead(nn.Module):
    """Audio-query x mask-feature head.

    Args:
        d_model: channels of the mask features and of the query.
        num_classes: K output channels (1: sigmoid masks, 71: AVSS classes).
        hidden_dim: width of the 1x1-conv FFN over the similarity map (2048 in the paper).
        head_chans: widths of the two 3x3 convs of the output head (128, 32 in the paper).
        scale_factor: upsampling factor from the mask-feature stride to the input (4).
    """

    def __init__(
        self,
        d_model: int,
        num_classes: int,
        hidden_dim: int = 2048,
        head_chans: tuple[int, int] = (128, 32),
        scale_factor: int = 4,
    ) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        # FFN 1 -> hidden -> hidden -> d_model with ReLU between (not after) the layers.
        self.ffn = nn.Sequential(
            nn.Conv2d(1, hidden_dim, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, d_model, 1),
        )
        mid, low = head_chans
        self.conv1 = nn.Conv2d(d_model, mid, 3, padding=1)
        self.conv2 = nn.Conv2d(mid, low, 3, padding=1)
        self.classifier = nn.Conv2d(low, num_classes, 1, bias=False)

    def forward(self, mask_features: Tensor, query: Tensor) -> Tensor:
        """Mask logits of one decoder output.

        Args:
            mask_features: ``[N, C, h, w]`` stride-4 features (N = B*T).
            query: ``[N, 1, C]`` audio query of each frame.

        Returns:
            ``[N, K, h*s, w*s]`` logits, s = ``scale_factor``.
        """
        sim = torch.einsum("nchw,nlc->nlhw", mask_features, query)  # [N, 1, h, w]
        x = self.ffn(sim) + mask_features
        x = self.conv1(x)
        x = F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        x = F.relu(self.conv2(x))
        return self.classifier(x)
