"""Question files: the questions a job asks of every tile or page."""

from __future__ import annotations

import json

from .storage import read_bytes


def load_questions(uri: str, storage_options=None) -> list[dict]:
    """A JSON or YAML list of {question, choices}; choices may be a list or 'a,b,c'."""
    import yaml

    text = read_bytes(uri, storage_options).decode()
    data = yaml.safe_load(text)  # YAML is a superset of JSON
    if not isinstance(data, list) or not data:
        raise ValueError(f"{uri}: expected a non-empty list of {{question, choices}}")
    out = []
    for i, q in enumerate(data):
        if not isinstance(q, dict) or not str(q.get("question", "")).strip():
            raise ValueError(f"{uri}: entry {i} has no question")
        choices = q.get("choices")
        if isinstance(choices, str):
            choices = [c.strip() for c in choices.split(",") if c.strip()]
        if choices:  # YAML 1.1 reads a bare yes/no as a boolean and digits as numbers
            choices = [("yes" if c else "no") if isinstance(c, bool) else str(c) for c in choices]
        out.append({"question": str(q["question"]).strip(), "choices": json.dumps(choices) if choices else ""})
    return out
