"""The bundled customer-support task: seeded splits of requests whose answers can be checked
exactly, standing in for a real data set where no hub is reachable.

Each intent has several phrasings with names, order numbers, e-mails, weekdays, quantities and
prices drawn at random; the answer is an exact function of the prompt (a copy of the number or
e-mail, a fixed table, or arithmetic for ``order_total``). A prompt belongs to one split only,
chosen by a hash of its text, so no prompt ever appears in two splits, whatever the seed.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from controller.pipeline.jsonl import write_jsonl

BASE_INTENTS: tuple[str, ...] = ("order_status", "refund", "password_reset", "opening_hours", "order_total")
NEW_INTENTS: tuple[str, ...] = ("cancel_subscription",)
ALL_INTENTS: tuple[str, ...] = BASE_INTENTS + NEW_INTENTS
SPLITS: dict[str, tuple[int, int]] = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}  # hash % 100

NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kemal",
         "Lena", "Maya", "Nils", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
         "Wei", "Yara", "Zoe")
DOMAINS = ("example.com", "mail.com", "inbox.org", "post.net", "web.de")
GREETINGS = ("", "Hi. ", "Hello! ", "Hey there. ", "Good morning. ", "Hi, this is {name}. ",
             "Hello, {name} here. ")
ENDINGS = ("", " Thanks.", " Thank you!", " Thanks a lot.", " Please help.", " Cheers.")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HOURS = {"Monday": "9am to 6pm", "Tuesday": "9am to 6pm", "Wednesday": "9am to 6pm",
         "Thursday": "9am to 8pm", "Friday": "9am to 8pm", "Saturday": "10am to 4pm", "Sunday": None}
ITEMS = ("mugs", "shirts", "notebooks", "pens", "lamps", "caps", "socks", "plates", "candles", "towels")
REASONS = {  # category -> the customer's words
    "damaged": ("it arrived broken", "the box was damaged", "it came cracked", "it is broken"),
    "late": ("it arrived too late", "it came a week late", "the delivery was late"),
    "wrong": ("I got the wrong item", "it is the wrong size", "you sent the wrong color"),
}

REPLIES = {
    "order_status": "Order #{order} has shipped and will arrive in 2 days.",
    "refund_damaged": "Sorry order #{order} arrived damaged. We will send a free replacement.",
    "refund_late": "Sorry order #{order} was late. We refunded your shipping fee.",
    "refund_wrong": "Sorry order #{order} had the wrong item. Return it for a full refund.",
    "password_reset": "A reset link was sent to {email}. It expires in 1 hour.",
    "opening_open": "On {day} we are open {hours}.",
    "opening_closed": "On {day} we are closed.",
    "order_total": "{qty} x ${price} = ${total}. Your total is ${total}.",
    "cancel_subscription": "Subscription {account} is cancelled. You will not be charged again.",
}
_SLOTS = {"order": r"\d{5}", "email": r"[a-z]+\.?[a-z]*\d*@[a-z]+\.[a-z]+", "day": "|".join(DAYS),
          "hours": r"\d{1,2}(?:am|pm) to \d{1,2}(?:am|pm)", "qty": r"\d{1,2}", "price": r"\d{1,3}",
          "total": r"\d{1,4}", "account": r"AC-\d{6}"}
_REPLY_FORMS = [re.compile(re.escape(form).replace(r"\{", "{").replace(r"\}", "}")
                .replace(r"\$", "$").format_map({k: f"(?:{v})" for k, v in _SLOTS.items()})
                .replace("$", r"\$"))
                for form in REPLIES.values()]


def _order(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def _order_status(rng: random.Random) -> tuple[str, str]:
    order = _order(rng)
    form = rng.choice(("Where is my order #{o}?", "Can you check the status of order #{o}?",
                       "Has order #{o} shipped yet?", "My order #{o} has not arrived. Any news?",
                       "When will order #{o} be delivered?", "Status of order #{o} please."))
    return form.format(o=order), REPLIES["order_status"].format(order=order)


def _refund(rng: random.Random) -> tuple[str, str]:
    order = _order(rng)
    category = rng.choice(sorted(REASONS))
    reason = rng.choice(REASONS[category])
    form = rng.choice(("I want a refund for order #{o}, {r}.", "Refund please: order #{o}, {r}.",
                       "Order #{o}: {r}. Can I get my money back?",
                       "I need to return order #{o} because {r}."))
    return form.format(o=order, r=reason), REPLIES[f"refund_{category}"].format(order=order)


def _password_reset(rng: random.Random) -> tuple[str, str]:
    user = rng.choice(NAMES).lower() + rng.choice(("", ".", "")) + rng.choice(("", "x", "k", "m"))
    user = user.rstrip(".") + (str(rng.randint(1, 99)) if rng.random() < 0.5 else "")
    email = f"{user}@{rng.choice(DOMAINS)}"
    form = rng.choice(("I forgot my password. My email is {e}.", "Please reset the password for {e}.",
                       "I can't log in to {e}, help me reset it.", "Password reset for {e} please."))
    return form.format(e=email), REPLIES["password_reset"].format(email=email)


def _opening_hours(rng: random.Random) -> tuple[str, str]:
    day = rng.choice(DAYS)
    form = rng.choice(("What are your opening hours on {d}?", "Are you open on {d}?",
                       "When do you open on {d}?", "What time is the store open on {d}?",
                       "Is the shop open this {d}?", "Can I visit you on {d}?",
                       "Opening hours for {d}?", "Will you be open next {d}?",
                       "How late are you open on {d}?", "I want to come by on {d}. When are you open?"))
    hours = HOURS[day]
    answer = (REPLIES["opening_open"].format(day=day, hours=hours) if hours
              else REPLIES["opening_closed"].format(day=day))
    return form.format(d=day), answer


def _order_total(rng: random.Random) -> tuple[str, str]:
    qty, price, item = rng.randint(1, 9), rng.randint(1, 20), rng.choice(ITEMS)
    form = rng.choice(("How much for {q} {i} at ${p} each?", "I want {q} {i}. They cost ${p} each. "
                       "What is the total?", "What do {q} {i} at ${p} each cost?",
                       "Price for {q} {i} at ${p} each?", "I'd like to buy {q} {i} at ${p} each. Total?"))
    return (form.format(q=qty, i=item, p=price),
            REPLIES["order_total"].format(qty=qty, price=price, total=qty * price))


def _cancel_subscription(rng: random.Random) -> tuple[str, str]:
    account = f"AC-{rng.randint(100000, 999999)}"
    form = rng.choice(("Please cancel my subscription, account {a}.", "Cancel subscription {a} please.",
                       "I want to stop my subscription. Account {a}.",
                       "How do I cancel? My account is {a}.", "End the subscription on account {a}."))
    return form.format(a=account), REPLIES["cancel_subscription"].format(account=account)


GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "order_status": _order_status, "refund": _refund, "password_reset": _password_reset,
    "opening_hours": _opening_hours, "order_total": _order_total,
    "cancel_subscription": _cancel_subscription,
}


def split_of(prompt: str) -> str:
    """The split a prompt belongs to, by a hash of its text (the same in every process)."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") % 100
    return next(name for name, (low, high) in SPLITS.items() if low <= bucket < high)


def _candidate(intent: str, rng: random.Random) -> tuple[str, str]:
    prompt, answer = GENERATORS[intent](rng)
    greeting = rng.choice(GREETINGS).format(name=rng.choice(NAMES))
    return greeting + prompt + rng.choice(ENDINGS), answer


def generate(split: str, n: int, seed: int = 0, intents: Sequence[str] = BASE_INTENTS) -> list[dict]:
    """``n`` distinct rows {"id", "intent", "prompt", "answer"} of ``split``, intents taken in
    turn (balanced to within one). Deterministic for (split, n, seed, intents)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    intents = tuple(intents)
    unknown = [i for i in intents if i not in GENERATORS]
    if unknown or not intents:
        raise ValueError(f"unknown intent(s) {unknown or intents!r}; known: {', '.join(GENERATORS)}")
    rng = random.Random(f"slmops-support:{seed}:{split}:{','.join(intents)}")
    seen: set[str] = set()
    rows: list[dict] = []
    for index in range(n):
        intent = intents[index % len(intents)]
        for _attempt in range(10_000):
            prompt, answer = _candidate(intent, rng)
            if prompt not in seen and split_of(prompt) == split:
                break
        else:
            raise ValueError(f"could not draw {n} distinct {split} prompts for intent {intent!r}; "
                             "ask for fewer")
        seen.add(prompt)
        rows.append({"id": f"{split}-{seed}-{index:05d}", "intent": intent, "prompt": prompt,
                     "answer": answer})
    return rows


def validate_answer(prompt: str, answer: str) -> str | None:
    """None if ``answer`` has the shape of one of the task's replies, else a short reason.
    Only the form is checked, not whether the answer is right for ``prompt``."""
    text = answer.strip()
    if not text:
        return "empty answer"
    if any(form.fullmatch(text) for form in _REPLY_FORMS):
        return None
    return "not a known reply form"


def write_splits(out_dir: Path, sizes: Mapping[str, int], seed: int = 0,
                 intents: Sequence[str] = BASE_INTENTS) -> dict[str, Path]:
    """Write ``<split>.jsonl`` for every split in ``sizes`` into ``out_dir`` (atomically)."""
    paths: dict[str, Path] = {}
    for split, n in sizes.items():
        path = Path(out_dir) / f"{split}.jsonl"
        write_jsonl(path, generate(split, n, seed=seed, intents=intents))
        paths[split] = path
    return paths
