#!/usr/bin/env python3
"""Render chat templates with Hugging Face transformers into tests/fixtures/chat/expected.json.

Run offline by developers (never in CI):

    python3 tools/make_chat_fixtures.py

Needs: transformers, jinja2 (no torch). For each template in tests/fixtures/chat/*.jinja and each
fixture tokenizer, renders a set of conversations with `apply_chat_template` (text and token ids,
with and without the generation prompt) and records the conversations HF refuses. The Rust tests
render the same conversations and must produce the same text and ids.
"""

import json
import os

from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CHAT = os.path.join(ROOT, "tests", "fixtures", "chat")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "  You are terse.  "},
        {"role": "user", "content": "What is 2 + 2?"},
    ],
    [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": " 7 "},
        {"role": "user", "content": "Another one, in Fran\u00e7ais? \u00bfy en espa\u00f1ol? \U0001f642"},
    ],
    [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "def f(x):\n    return x"},
        {"role": "assistant", "content": "It returns its argument."},
        {"role": "user", "content": "And <|eot_id|> or </s> typed by a user?"},
    ],
]

# Conversations a template refuses (raise_exception).
REFUSED = [
    [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ],
]

# Extra template variables HF passes through (a fixed date, so the expected text does not age).
KWARGS = [{}, {"date_string": "30 Nov 2026"}]


def main():
    cases = []
    for template_file in sorted(f for f in os.listdir(CHAT) if f.endswith(".jinja")):
        with open(os.path.join(CHAT, template_file)) as f:
            template = f.read()
        for fixture in ["llama2_tiny", "llama32_tiny"]:
            tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "tests", "fixtures", fixture))
            tok.chat_template = template
            for messages in CONVERSATIONS:
                for add in [True, False]:
                    for kwargs in KWARGS:
                        if "date_string" in kwargs and "date_string" not in template:
                            continue
                        if "date_string" not in kwargs and "date_string" in template:
                            # strftime_now gives today's date: only the fixed date is comparable.
                            continue
                        text = tok.apply_chat_template(
                            messages, tokenize=False, add_generation_prompt=add, **kwargs
                        )
                        ids = tok.apply_chat_template(
                            messages, tokenize=True, add_generation_prompt=add, **kwargs
                        )
                        cases.append(
                            {
                                "template": template_file,
                                "tokenizer": fixture,
                                "messages": messages,
                                "add_generation_prompt": add,
                                "variables": kwargs,
                                "text": text,
                                "ids": ids,
                            }
                        )
            for messages in REFUSED:
                try:
                    tok.apply_chat_template(messages, tokenize=False)
                except Exception as e:  # jinja2's TemplateError
                    cases.append(
                        {
                            "template": template_file,
                            "tokenizer": fixture,
                            "messages": messages,
                            "add_generation_prompt": False,
                            "variables": {},
                            "error": str(e),
                        }
                    )
    with open(os.path.join(CHAT, "expected.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{len(cases)} cases")


if __name__ == "__main__":
    main()
