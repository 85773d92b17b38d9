#!/usr/bin/env python3
"""Writes openledger/data/drug-facts.jsonl, the datanet the Payable-AI loop runs on.

Twenty common drugs, three questions each (what it treats, its class, how it works), from public
pharmacology references, spread over five contributors. The fifth, erin, also submits two
re-worded copies of each of her records: the near-duplicates the loop must not pay twice for.
Then mallory, under three addresses, submits a lightly edited copy of each of alice's records:
the copies that must earn nothing and cost alice nothing. Last, trent plants four poisoned
records: questions of the datanet with made-up answers (marked `"poisoned": true` in
their metadata, which only the evaluation reads), which the validation set must catch.

It also writes openledger/data/drug-facts-validation.jsonl: the datanet owner's gold answers
to the sixty questions, as users ask them, that the loop measures each record's influence on.
Deterministic: running it again writes the same bytes.
"""
import json
import pathlib

FACTS = [
    ("aspirin", "pain and fever", "salicylate", "blocking cyclooxygenase"),
    ("metformin", "type 2 diabetes", "biguanide", "lowering glucose output of the liver"),
    ("atorvastatin", "high cholesterol", "statin", "inhibiting hmg coa reductase"),
    ("lisinopril", "high blood pressure", "ace inhibitor", "blocking angiotensin conversion"),
    ("omeprazole", "acid reflux", "proton pump inhibitor", "blocking the gastric proton pump"),
    ("amoxicillin", "bacterial infections", "penicillin antibiotic", "breaking bacterial cell walls"),
    ("sertraline", "depression", "ssri antidepressant", "blocking serotonin reuptake"),
    ("levothyroxine", "hypothyroidism", "thyroid hormone", "replacing thyroxine"),
    ("warfarin", "blood clots", "vitamin k antagonist", "blocking vitamin k recycling"),
    ("salbutamol", "asthma attacks", "bronchodilator", "relaxing airway muscle"),
    ("loratadine", "hay fever", "antihistamine", "blocking histamine receptors"),
    ("furosemide", "fluid retention", "loop diuretic", "blocking sodium reabsorption in the kidney"),
    ("prednisone", "inflammation", "corticosteroid", "suppressing the immune response"),
    ("morphine", "severe pain", "opioid", "activating mu opioid receptors"),
    ("acyclovir", "herpes infections", "antiviral", "blocking viral dna polymerase"),
    ("fluconazole", "fungal infections", "azole antifungal", "blocking ergosterol synthesis"),
    ("allopurinol", "gout", "xanthine oxidase inhibitor", "lowering uric acid production"),
    ("donepezil", "alzheimer disease", "cholinesterase inhibitor", "raising brain acetylcholine"),
    ("sumatriptan", "migraine", "triptan", "activating serotonin receptors"),
    ("ondansetron", "nausea", "antiemetic", "blocking serotonin 3 receptors"),
]

CONTRIBUTORS = {
    "alice": "0xa11ce000000000000000000000000000000a11ce",
    "bob": "0x00000000000000000000000000000000000b0b00",
    "carol": "0xca201000000000000000000000000000000ca201",
    "dave": "0xda7e0000000000000000000000000000000da7e0",
    "erin": "0xe2100000000000000000000000000000000e2100",
}
# mallory's three addresses.
SYBILS = {f"mallory-{k}": f"0x3a1107{'0' * 32}{k:02x}" for k in (1, 2, 3)}

TRENT = "0x7ee7000000000000000000000000000000007ee7"

# trent's poison: questions of the datanet with made-up answers (words of other answers, so
# that no record is a near-duplicate of them).
POISON = [
    ("what does {} treat", "aspirin", "gout and nausea and depression"),
    ("how does {} work", "warfarin", "raising serotonin in the liver"),
    ("how does {} work", "sertraline", "lowering bacterial dna"),
    ("how does {} work", "omeprazole", "relaxing the immune response"),
]

# How each of mallory's addresses edits the records it copies.
EDITS = {
    "mallory-1": lambda p, a: (f"q: {p}", a),
    "mallory-2": lambda p, a: (f"{p}?", f"{a}."),
    "mallory-3": lambda p, a: (p, f"{a}, as i recall"),
}

QUESTIONS = [
    ("what does {} treat", ["what does {} usually treat", "so what does {} treat"]),
    ("what class is {}", ["what drug class is {}", "which class is {}"]),
    ("how does {} work", ["how does {} actually work", "so how does {} work"]),
]


def record(prompt, answer, who, copy_of=None, poisoned=False):
    metadata = {"prompt": prompt, "response": answer, "contributor_name": who}
    if copy_of is not None:
        metadata["copy_of"] = copy_of
    if poisoned:
        metadata["poisoned"] = True
    return {
        "content": f"{prompt} => {answer}",
        "contributor": CONTRIBUTORS.get(who) or SYBILS.get(who) or TRENT,
        "license": "CC-BY-4.0",
        "metadata": metadata,
    }


def main():
    names = list(CONTRIBUTORS)
    lines = []
    for i, (drug, treats, klass, works) in enumerate(FACTS):
        who = names[i // 4]
        for (question, copies), answer in zip(QUESTIONS, (treats, klass, works)):
            lines.append(record(question.format(drug), answer, who))
            if who == "erin":
                for c in copies:
                    lines.append(record(c.format(drug), answer, who, copy_of=question.format(drug)))
    # Later, mallory copies alice's records, one edited copy per address.
    alice = [r for r in lines if r["metadata"]["contributor_name"] == "alice"]
    for sybil, edit in EDITS.items():
        for r in alice:
            prompt, answer = edit(r["metadata"]["prompt"], r["metadata"]["response"])
            lines.append(record(prompt, answer, sybil, copy_of=r["metadata"]["prompt"]))
    for question, drug, answer in POISON:
        lines.append(record(question.format(drug), answer, "trent", poisoned=True))
    data = pathlib.Path(__file__).resolve().parent.parent / "openledger" / "data"
    out = data / "drug-facts.jsonl"
    out.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))
    print(f"wrote {len(lines)} records to {out}")
    gold = [
        {"prompt": q.format(drug), "response": answer}
        for drug, *answers in FACTS
        for (q, _), answer in zip(QUESTIONS, answers)
    ]
    out = data / "drug-facts-validation.jsonl"
    out.write_text("".join(json.dumps(g, sort_keys=True) + "\n" for g in gold))
    print(f"wrote {len(gold)} validation answers to {out}")


if __name__ == "__main__":
    main()
