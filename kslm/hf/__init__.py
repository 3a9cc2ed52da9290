"""kslm's Hugging Face adapter layer, below the tasks: Hugging Face in and out.

- encoder.py: a Hugging Face encoder (BERT, RoFormer, …) as an extraction backbone (HFEncoder), hub-name rules,
  offline loading with trust_remote_code=False;
- reader.py: an export directory (or a kslm.json) read back into a payload and weights;
- native.py: the exact Hugging Face architectures a kslm backbone maps to, weights both ways;
- modeling_kslm.py + configuration_kslm.py: the remote-code classes over kslm.nn (copied into exports);
- tokenizer_files.py: kslm's tokenizer as Hugging Face tokenizer files and back.

Importing this package imports nothing heavy: each module is imported where it is used.
"""
