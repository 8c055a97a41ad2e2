"""The project's small language-model pair (base and chat fine-tune), the model
server that streams both models' residuals to xcoderd, and its tools: see
models/README.md."""
