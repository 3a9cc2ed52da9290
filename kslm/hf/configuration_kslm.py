"""KslmConfig: the Hugging Face config of an exported kslm model — kslm's BackboneConfig carried as a dict.

This file is copied into every remote-code export (`kslm export`), next to modeling_kslm.py, and is also kslm's own
copy (registered locally by kslm.hf.modeling_kslm.register, so kslm never runs an export's copy).
"""

from transformers import PretrainedConfig


class KslmConfig(PretrainedConfig):
    """backbone: kslm.nn.BackboneConfig.to_dict() (vocab_size resolved); kslm_version: the kslm that wrote it.
    The usual HF names (vocab_size, hidden_size, num_hidden_layers, max_position_embeddings, is_decoder) are derived
    from it for tools that read them; tying lives inside kslm's head (one matrix), so tie_word_embeddings is False."""

    model_type = "kslm"

    def __init__(self, backbone=None, kslm_version=None, kslm_task=None, kslm_labels=None, kslm_head=None,
                 kslm_windows=None, kslm_max_entities=None, **kwargs):
        backbone = dict(backbone or {})
        self.backbone = backbone
        self.kslm_version = kslm_version
        # an NER / RE export's head (KslmForExtraction): the task, its labels (entity types
        # or predicates), the head options, the windows kslm predicts over ({max_length, stride, batch_size}) and
        # RE's cap on subjects / objects per window
        self.kslm_task, self.kslm_labels, self.kslm_head = kslm_task, kslm_labels, kslm_head
        self.kslm_windows, self.kslm_max_entities = kslm_windows, kslm_max_entities
        kwargs["tie_word_embeddings"] = False
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings", "is_decoder"):
            kwargs.pop(key, None)
        super().__init__(**kwargs)
        self.vocab_size = backbone.get("vocab_size")
        self.hidden_size = backbone.get("d_model")
        self.num_hidden_layers = backbone.get("n_layers")
        self.max_position_embeddings = backbone.get("max_length")
        self.is_decoder = backbone.get("mask", "causal") != "bidirectional"
