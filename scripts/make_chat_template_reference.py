"""Renders chat templates with transformers' own renderer (Jinja2, as `apply_chat_template`
does) and writes the conversations, templates and rendered texts to
fixtures/chat-templates/reference.json, which openledger-server's tests render again with
minijinja and compare byte for byte.

    python scripts/make_chat_template_reference.py   # needs transformers and jinja2

The templates are written here in the styles models ship (ChatML with a default system turn,
[INST] blocks with strict role alternation, <|role|> turns closed by the EOS token, a role
renamed and trimmed, and a tool-style layout using namespace(), loop controls and tojson).
"""
import json
import os

import jinja2
import transformers
from transformers.utils.chat_template_utils import render_jinja_template

TEMPLATES = {
    "chatml-default-system": (
        "{% for message in messages %}"
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}"
        "{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "inst-alternating": (
        "{% if messages[0]['role'] == 'system' %}\n"
        "    {% set loop_messages = messages[1:] %}\n"
        "    {% set system_message = messages[0]['content'].strip() %}\n"
        "{% else %}\n"
        "    {% set loop_messages = messages %}\n"
        "    {% set system_message = false %}\n"
        "{% endif %}\n"
        "{% for message in loop_messages %}\n"
        "    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
        "        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
        "    {% endif %}\n"
        "    {% if loop.index0 == 0 and system_message != false %}\n"
        "        {% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}\n"
        "    {% else %}\n"
        "        {% set content = message['content'] %}\n"
        "    {% endif %}\n"
        "    {% if message['role'] == 'user' %}\n"
        "        {{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}\n"
        "    {% elif message['role'] == 'assistant' %}\n"
        "        {{ ' '  + content.strip() + ' ' + eos_token }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
    ),
    "role-tags-eos": (
        "{% for message in messages %}\n"
        "{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n"
        "{{ '<|assistant|>' }}\n"
        "{% endif %}\n"
        "{% endfor %}"
    ),
    "renamed-role-trimmed": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for message in messages %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
        "{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
    ),
    "namespace-loop-controls-tojson": (
        "{%- set ns = namespace(system='', turns=0) -%}\n"
        "{%- for m in messages -%}\n"
        "    {%- if m.role == 'system' -%}{%- set ns.system = m.content -%}{%- continue -%}{%- endif -%}\n"
        "    {%- if ns.turns >= 4 -%}{%- break -%}{%- endif -%}\n"
        "    {%- set ns.turns = ns.turns + 1 -%}\n"
        "{%- endfor -%}\n"
        "[{{ ns.turns }} turns of {{ messages | length }}]"
        "{% if ns.system %} system={{ ns.system | tojson }}{% endif %}\n"
        "{% for m in messages if m.role != 'system' %}\n"
        "{{ loop.index }}/{{ loop.length }} {{ m | tojson }}\n"
        "{{ m | tojson(indent=2, sort_keys=true) }}\n"
        "{{ m.content.upper() if m.role == 'user' else m.content.lower() }}"
        "{{ ' <first>' if loop.first }}{{ ' <last>' if loop.last }}\n"
        "{% endfor %}\n"
        "{%- if add_generation_prompt %}>>> {% endif -%}"
    ),
}

TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "What is the usual dose of aspirin?"}],
    "system and turns": [
        {"role": "system", "content": "  Answer in one sentence.  "},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": " Hi! How can I help? "},
        {"role": "user", "content": "Dose of ibuprofen?\nFor an adult."},
    ],
    "unicode, quotes and backslashes": [
        {"role": "user", "content": "Ünïcödé \"quoted\" \\ back\tslash — 漢字 🙂"},
    ],
    "assistant first (no alternation)": [
        {"role": "assistant", "content": "I speak first."},
        {"role": "user", "content": "Then me."},
    ],
    "many turns": [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(7)
    ],
}


def main():
    out = {
        "provenance": (
            "Rendered by transformers "
            + transformers.__version__
            + " (render_jinja_template, as apply_chat_template renders) on Jinja2 "
            + jinja2.__version__
            + " by scripts/make_chat_template_reference.py."
        ),
        "special_tokens": TOKENS,
        "templates": [],
    }
    for name, source in TEMPLATES.items():
        cases = []
        for title, messages in CONVERSATIONS.items():
            for add in (False, True):
                case = {"conversation": title, "messages": messages, "add_generation_prompt": add}
                try:
                    text, _ = render_jinja_template(
                        conversations=[messages],
                        chat_template=source,
                        add_generation_prompt=add,
                        **TOKENS,
                    )
                    case["text"] = text[0]
                except jinja2.exceptions.TemplateError as e:
                    case["error"] = str(e)
                cases.append(case)
        out["templates"].append({"name": name, "source": source, "cases": cases})
    path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "chat-templates", "reference.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n = sum(len(t["cases"]) for t in out["templates"])
    errors = sum("error" in c for t in out["templates"] for c in t["cases"])
    print(f"{n} renderings ({errors} refused by their template) written to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
