"""Layer 1, shared by every other layer and importing none of them: results paths (layout),
typed settings (settings), the explainer-example schema (schema), every question and answer
template (formats)."""
