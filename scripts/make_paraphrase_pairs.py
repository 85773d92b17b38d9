#!/usr/bin/env python3
"""Writes the labelled paraphrase pairs the copy detector's threshold is chosen on, and the
paraphrased copies that test it in the Payable-AI loop.

openledger/data/paraphrase-pairs.jsonl: pairs of sentences about the shipped datanet's facts
(`scripts/make_drug_facts.py`), each `{"a", "b", "label", "kind", "split"}`. Each fact (a drug
and one of its three questions) is written five ways: the datanet's record form
(`what does aspirin treat => pain and fever`) and four prose re-wordings. Positive pairs
(`kind: "paraphrase"`): two ways of writing the same fact. Negative pairs, all hard: the same
drug's other questions (`other_question`), the same question about another drug
(`other_drug`), and the same drug and question with another drug's answer (`other_answer`:
a contradicting record, which is not a copy). Drugs 0-9 make the `tune` half (the threshold is
chosen there), drugs 10-19 the `test` half (precision and recall are reported there); every
pair stays within its half.

openledger/data/drug-facts-paraphrased.jsonl: pat's records, a prose re-wording of each of
bob's twelve records (metadata `copy_of` names the question copied): copies that share too few
characters with their originals for MinHash, which an embedding model must catch.
Deterministic: running it again writes the same bytes.
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_drug_facts import CONTRIBUTORS, FACTS, QUESTIONS  # noqa: E402

PAT = "0x9a7000000000000000000000000000000000009a"

# Four prose re-wordings per question (`{d}` the drug, `{a}` the answer).
PROSE = [
    [
        "{d} is used to treat {a}",
        "{a} can be treated with {d}",
        "doctors prescribe {d} for {a}",
        "people take {d} when they have {a}",
    ],
    [
        "{d} belongs to the {a} class",
        "{d} is a {a}",
        "the drug class of {d} is {a}",
        "{d} is classified as a {a}",
    ],
    [
        "{d} works by {a}",
        "the mechanism of {d} is {a}",
        "{d} acts by {a}",
        "{d} has its effect through {a}",
    ],
]


def forms(q, drug, answer):
    """The five ways of writing one fact: the record form first."""
    return [f"{QUESTIONS[q][0].format(drug)} => {answer}"] + [
        p.format(d=drug, a=answer) for p in PROSE[q]
    ]


def pairs_for_half(drugs):
    out = []
    n = len(drugs)
    for k, i in enumerate(drugs):
        drug, *answers = FACTS[i]
        split = "tune" if i < 10 else "test"
        for q in range(3):
            mine = forms(q, drug, answers[q])
            for x in range(5):
                for y in range(x + 1, 5):
                    out.append((mine[x], mine[y], True, "paraphrase", split))
            record = mine[0]
            for other_q in range(3):
                if other_q != q:
                    for s in forms(other_q, drug, answers[other_q]):
                        out.append((record, s, False, "other_question", split))
            for step in (1, 3):
                j = drugs[(k + step) % n]
                other_drug, *other_answers = FACTS[j]
                for s in forms(q, other_drug, other_answers[q])[::2]:
                    out.append((record, s, False, "other_drug", split))
                for s in forms(q, drug, other_answers[q])[1::2]:
                    out.append((record, s, False, "other_answer", split))
    return out


def main():
    data = pathlib.Path(__file__).resolve().parent.parent / "openledger" / "data"
    pairs = pairs_for_half(list(range(10))) + pairs_for_half(list(range(10, 20)))
    out = data / "paraphrase-pairs.jsonl"
    out.write_text(
        "".join(
            json.dumps({"a": a, "b": b, "label": l, "kind": k, "split": s}, sort_keys=True) + "\n"
            for a, b, l, k, s in pairs
        )
    )
    pos = sum(p[2] for p in pairs)
    print(f"wrote {len(pairs)} pairs ({pos} paraphrases) to {out}")

    # bob holds drugs 4-7 (four drugs per contributor, in FACTS order).
    bob = list(CONTRIBUTORS).index("bob")
    lines = []
    for i in range(bob * 4, bob * 4 + 4):
        drug, *answers = FACTS[i]
        for q in range(3):
            text = PROSE[q][i % 4].format(d=drug, a=answers[q])
            lines.append(
                {
                    "content": text,
                    "contributor": PAT,
                    "license": "CC-BY-4.0",
                    "metadata": {
                        "contributor_name": "pat",
                        "copy_of": QUESTIONS[q][0].format(drug),
                        "prompt": QUESTIONS[q][0].format(drug),
                        "response": answers[q],
                    },
                }
            )
    out = data / "drug-facts-paraphrased.jsonl"
    out.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))
    print(f"wrote {len(lines)} records to {out}")


if __name__ == "__main__":
    main()
