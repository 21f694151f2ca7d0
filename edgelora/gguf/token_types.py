"""llama.cpp's token types (``tokenizer.ggml.token_type``) and the score of added tokens."""

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
PAD_SCORE = -1000.0  # score of padding and added tokens (SentencePiece), as llama.cpp's converter
