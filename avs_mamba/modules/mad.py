"""AVS-Mamba's Modality Aggregation Decoder (MAD) (Gong et al., IEEE TMM 2025; official
SitongGong/AVS-Mamba@e0489c94:model/compformer_ablation.py, ``mamba_decoder``).

The query is one audio token per frame, initialised with the projected audio features (there are no learnable
object queries). Each decoder layer visits the MTE outputs res3 -> res4 -> res5 and, at every level, applies a
frame-level V2A then a temporal-level V2A; no weights are shared (2 layers x 3 levels x 2 = 12 V2A blocks). The query
after every layer is returned, so the first layer's output supervises the intermediate mask and the last the final.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

__all__ = ["ModalityAggregationDecoder"]

V2AFactory = Callable[[], nn.Module]


class ModalityAggregationDecoder(nn.Module):
    """Stack of V2A decoder layers.

    Args:
        num_layers: decoder layers (2).
        num_levels: visual levels visited by each layer (3: res3, res4, res5).
        frame_v2a: builds a frame-level V2A block ``(vis (B, T, H, W, C), query (B, T, C)) -> query``, or None to
            switch the frame level off.
        temporal_v2a: the same for the temporal level, or None.
    """

    def __init__(
        self,
        num_layers: int = 2,
        num_levels: int = 3,
        frame_v2a: V2AFactory | None = None,
        temporal_v2a: V2AFactory | None = None,
    ) -> None:
        super().__init__()
        if frame_v2a is None and temporal_v2a is None:
            raise ValueError("the MAD needs frame-level V2A, temporal-level V2A or both; else set mad.enabled=false")
        if num_layers < 1:
            raise ValueError(f"the MAD needs num_layers >= 1, got {num_layers}")
        self.num_levels = num_levels

        def blocks(factory: V2AFactory | None) -> nn.ModuleList | None:
            return None if factory is None else nn.ModuleList(factory() for _ in range(num_layers * num_levels))

        self.frame_v2a = blocks(frame_v2a)
        self.temporal_v2a = blocks(temporal_v2a)
        self.num_layers = num_layers

    def forward(self, feats: Sequence[Tensor], query: Tensor) -> list[Tensor]:
        """Decode.

        Args:
            feats: ``num_levels`` maps ``(B, T, H_s, W_s, C)``, fine to coarse (res3, res4, res5).
            query: ``(B, T, C)`` initial audio query.

        Returns:
            One ``(B, T, C)`` query per layer, first layer first (the last is the final output).
        """
        if len(feats) != self.num_levels:
            raise ValueError(f"the MAD expects {self.num_levels} feature levels, got {len(feats)}")
        outputs = []
        for layer in range(self.num_layers):
            for level, vis in enumerate(feats):
                i = layer * self.num_levels + level
                if self.frame_v2a is not None:
                    query = self.frame_v2a[i](vis, query)
                if self.temporal_v2a is not None:
                    query = self.temporal_v2a[i](vis, query)
            outputs.append(query)
        return outputs
