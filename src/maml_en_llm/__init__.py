"""maml-en-llm: meta-train causal language models to learn new tasks in context."""

__version__ = "0.1.0"
