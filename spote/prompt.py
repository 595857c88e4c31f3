"""The one place that turns a question (and its choices) into the user turn's text."""

from __future__ import annotations


def format_question(question: str, choices: tuple[str, ...] | list[str] | None = None) -> str:
    question = question.strip()
    if not choices:
        return question
    return f"{question} Choices: {', '.join(choices)}."
