"""`kslm export`: a kslm checkpoint out to a Hugging Face directory — cli.py (the verb), writer.py (the directory:
weights, config, tokenizer files, remote code), card.py (README.md). What Hugging Face reads and writes (native
architectures, remote code, tokenizer files, reading an export back) is the adapter layer kslm.hf."""
