"""`kslm export`: a kslm checkpoint out to a Hugging Face directory — writer.py (the directory: weights, config,
tokenizer files, remote code), card.py (README.md). The verb's command line is kslm.cli.verbs; what Hugging Face
reads and writes (native architectures, remote code, tokenizer files, reading an export back) is the adapter layer
kslm.hf."""
