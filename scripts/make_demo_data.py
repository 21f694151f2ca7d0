#!/usr/bin/env python3
"""Write the demo dataset: support messages -> {"product", "severity", "sentiment"} as JSON.

Deterministic (seeded). Three files under demo/data/:
  train.jsonl    ~600 examples from the training phrase pools and frames;
  heldout.jsonl  ~60 examples: label combinations never seen in training, half of them with
                 phrases and frames reserved for held-out use;
  probes.jsonl   ~50 examples in other styles (e-mails, terse notes, questions, lower case)
                 for the bundle's probes and a harder generalisation score.
Every user message is unique across the three files.

    python scripts/make_demo_data.py [--out demo/data] [--seed 1234]
"""

from __future__ import annotations

import argparse
import json
import random
from itertools import product as cartesian
from pathlib import Path

SYSTEM = "Extract the support ticket as JSON with keys product, severity, sentiment."
PRODUCTS = ["laptop", "phone", "printer", "router", "headphones", "smartwatch", "monitor", "tablet"]
SEVERITIES = ["low", "medium", "high", "critical"]
SENTIMENTS = ["negative", "neutral", "positive"]

# Issue phrases per severity; the last one of each list is reserved for held-out.
ISSUES = {
    "low": ["there is a tiny cosmetic scratch on the {p}", "I have a small question about the {p} settings",
            "the {p} box arrived with a slightly dented corner", "the {p} manual has a typo on page 3",
            "the {p} status light is a little dimmer than I expected", "the {p} came with the wrong colour sticker"],
    "medium": ["the {p} disconnects a few times a day", "the {p} battery drains faster than advertised",
               "the {p} has been noticeably slow since the update", "the {p} sometimes freezes for a few seconds",
               "the {p} companion app crashes now and then", "the {p} loses its settings every couple of days"],
    "high": ["the {p} stopped working completely", "the {p} will not turn on anymore",
             "the {p} keeps rebooting and is unusable", "I cannot use the {p} at all since yesterday",
             "the {p} is completely dead after the firmware update", "the {p} fails every time I try to use it"],
    "critical": ["the {p} started smoking and smells burnt", "the {p} caught fire on my desk",
                 "the {p} gave me an electric shock", "the {p} failure took down our whole office",
                 "the {p} overheated and melted its case", "the {p} sparked and tripped the breaker"],
}
MOODS = {
    "negative": ["I am really angry about this.", "This is unacceptable.", "Very disappointed with your company.",
                 "Worst purchase I have ever made.", "I am fed up with this.", "Honestly, I regret buying it."],
    "neutral": ["Please advise.", "Let me know the next steps.", "The order number is {n}.",
                "I bought it last month.", "Ticket reference {n}.", "What should I do?"],
    "positive": ["Otherwise I love it!", "Thanks, your team is always great.", "Really happy with it apart from this.",
                 "Great product overall, thank you!", "You have been wonderful so far.", "Still my favourite gadget!"],
}
FRAMES = ["Hi, {issue}. {mood}", "{Issue}. {mood}", "Hello support, {issue}. {mood}", "{mood} {Issue}.",
          "Hey team, {issue}. {mood}", "Good morning. {Issue}. {mood}"]
HELDOUT_FRAMES = ["Dear support, {issue}. {mood}", "Quick note: {issue}. {mood}"]

# Other styles for probes: phrasings the training set never uses.
PROBE_ISSUES = {
    "low": ["the {p} has a faint scuff on the back", "the {p} wallpaper setting is hard to find",
            "the {p} packaging was a bit torn"],
    "medium": ["the {p} drops connection every few hours", "my {p} lags more than it used to",
               "the {p} battery only lasts half a day now"],
    "high": ["my {p} is totally broken and won't start", "the {p} is dead, nothing works",
             "the {p} no longer powers on at all"],
    "critical": ["the {p} burst into flames", "smoke is coming out of the {p}", "the {p} exploded while charging"],
}
PROBE_MOODS = {
    "negative": ["Furious right now.", "Terrible experience, really annoyed.", "I am so disappointed."],
    "neutral": ["Order {n}.", "Waiting for instructions.", "Please get back to me."],
    "positive": ["Love your products though!", "Thanks a lot for the great service!", "Still very happy overall."],
}
PROBE_STYLES = [
    "Subject: {P} problem\n\nDear team,\n{Issue}. {mood}\n\nRegards,\n{name}",
    "{p} - {issue} - {mood}",
    "Is it normal that {issue}? {mood}",
    "{issue_lower} {mood_lower}",
    "Hello?? {Issue}!!! {mood}",
    "From {name}: {Issue}. {mood}",
]
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas"]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def answer(p: str, sev: str, sent: str) -> str:
    return json.dumps({"product": p, "severity": sev, "sentiment": sent}, separators=(",", ":"))


def example(message: str, p: str, sev: str, sent: str) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": message},
                         {"role": "assistant", "content": answer(p, sev, sent)}]}


def render(rng, frame, issues, moods, p, sev, sent) -> str:
    issue = rng.choice(issues[sev]).format(p=p)
    mood = rng.choice(moods[sent]).format(n=rng.randint(10000, 99999))
    return frame.format(issue=issue, Issue=_cap(issue), mood=mood, p=p, P=_cap(p), name=rng.choice(NAMES),
                        issue_lower=issue.lower(), mood_lower=mood.lower().rstrip(".!"))


def build(seed: int, n_train: int = 600, n_heldout: int = 60, n_probes: int = 50) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    combos = list(cartesian(PRODUCTS, SEVERITIES, SENTIMENTS))
    rng.shuffle(combos)
    unseen, seen = combos[:12], combos[12:]  # 12 of 96 label combinations never trained on
    train_issues = {k: v[:-1] for k, v in ISSUES.items()}
    train_moods = {k: v[:-1] for k, v in MOODS.items()}
    used: set[str] = set()
    out: dict[str, list[dict]] = {"train": [], "heldout": [], "probes": []}

    def add(split, msg, combo) -> bool:
        if msg in used:
            return False
        used.add(msg)
        out[split].append(example(msg, *combo))
        return True

    while len(out["train"]) < n_train:
        combo = seen[len(out["train"]) % len(seen)] if len(out["train"]) < len(seen) else rng.choice(seen)
        add("train", render(rng, rng.choice(FRAMES), train_issues, train_moods, *combo), combo)
    while len(out["heldout"]) < n_heldout:
        combo = unseen[len(out["heldout"]) % len(unseen)]
        if len(out["heldout"]) % 2:  # reserved phrases and frames
            msg = render(rng, rng.choice(HELDOUT_FRAMES), ISSUES, MOODS, *combo)
        else:
            msg = render(rng, rng.choice(FRAMES), train_issues, train_moods, *combo)
        add("heldout", msg, combo)
    while len(out["probes"]) < n_probes:
        combo = rng.choice(combos)
        style = PROBE_STYLES[len(out["probes"]) % len(PROBE_STYLES)]
        add("probes", render(rng, style, PROBE_ISSUES, PROBE_MOODS, *combo), combo)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "demo" / "data"))
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in build(args.seed).items():
        write_jsonl(out / f"{split}.jsonl", rows)
        print(f"{out / (split + '.jsonl')}: {len(rows)} examples")


if __name__ == "__main__":
    main()
