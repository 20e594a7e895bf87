"""Photos in and out: suffixes, decoding and encoding with header checks, framing, the contact sheet."""
