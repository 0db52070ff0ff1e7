"""Generate ``cascade_tasks.jsonl`` deterministically (fixed seed): extraction, arithmetic, classification.

    python -m models.evals.make_cascade_tasks            # rewrites models/evals/cascade_tasks.jsonl
    python -m models.evals.make_cascade_tasks --check    # exit 1 if the committed file differs

Difficulty is mixed on purpose so that a 135M-parameter model gets some right and many wrong: plain sentences
and one-step sums are ``easy``; reordered facts, two-digit products and one-step word problems ``medium``;
distractor people, numbers in words, multi-step word problems and sarcasm ``hard``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

SEED = 20261122
OUT = Path(__file__).with_name("cascade_tasks.jsonl")

FIRST = ["Maria", "James", "Aiko", "Lars", "Fatima", "Diego", "Priya", "Tomasz", "Chloe", "Kwame", "Elena",
         "Omar", "Sofia", "Hiroshi", "Nadia", "Pedro", "Ingrid", "Rahul", "Amara", "Lucas", "Yara", "Felix"]
LAST = ["Lopez", "Whitfield", "Tanaka", "Berg", "Haddad", "Ramirez", "Sharma", "Nowak", "Dubois", "Mensah",
        "Petrova", "Farouk", "Rossi", "Sato", "Karimi", "Alves", "Lund", "Mehta", "Okafor", "Weber", "Costa"]
CITIES = ["Lisbon", "Toronto", "Osaka", "Oslo", "Beirut", "Madrid", "Pune", "Krakow", "Lyon", "Accra", "Sofia",
          "Cairo", "Turin", "Sapporo", "Tehran", "Porto", "Bergen", "Mumbai", "Lagos", "Munich", "Recife",
          "Denver", "Melbourne", "Dublin", "Nairobi", "Seattle", "Valencia", "Hamburg"]
ITEMS = ["USB cable", "desk lamp", "notebook", "coffee mug", "phone case", "water bottle", "backpack",
         "keyboard", "yoga mat", "stapler", "umbrella", "desk fan", "sketchbook", "bike light"]
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
ORDER_SCHEMA = {
    "type": "object",
    "properties": {"item": {"type": "string"}, "quantity": {"type": "integer"}, "unit_price": {"type": "number"}},
    "required": ["item", "quantity", "unit_price"],
    "additionalProperties": False,
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "number"}},
    "required": ["answer"],
    "additionalProperties": False,
}
SENTIMENTS = ["positive", "negative", "neutral"]
TOPICS = ["sports", "politics", "technology", "business", "health"]


# Two worked examples (user, assistant) per task family, shown before the task (few-shot): without them
# SmolLM2-135M wraps its JSON in prose ("JSON: {...} This is a JSON object ...") almost every time.
DEMOS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "person": [("Text: Anna Smith is 29 years old and lives in Boston.",
                {"name": "Anna Smith", "age": 29, "city": "Boston"}),
               ("Text: Last year Ben Okoro, now 41, moved to Vienna.",
                {"name": "Ben Okoro", "age": 41, "city": "Vienna"})],
    "order": [("Order: 2 x pencil case at $5.50 each.", {"item": "pencil case", "quantity": 2, "unit_price": 5.5}),
              ("Please ship four table fans; they are $30 each.",
               {"item": "table fan", "quantity": 4, "unit_price": 30})],
    "arithmetic": [("What is 7 + 5?", {"answer": 12}),
                   ("Sam has 3 bags with 10 marbles each and loses 4 marbles. How many marbles does he have?",
                    {"answer": 26})],
    "sentiment": [("Review: The soup was delicious and the staff were lovely.", {"label": "positive"}),
                  ("Review: The train leaves at 9:15 from platform 2.", {"label": "neutral"})],
    "topic": [("Headline: Striker scores twice as United beat City 3-1", {"label": "sports"}),
              ("Headline: Chipmaker's profits jump on strong demand for servers", {"label": "business"})],
}


def chat(system: str, family: str, user: str) -> list[dict[str, str]]:
    """System prompt, the family's two worked examples, then the task's user message."""
    messages = [{"role": "system", "content": system}]
    for demo_user, demo_answer in DEMOS[family]:
        messages += [{"role": "user", "content": demo_user}, {"role": "assistant", "content": json.dumps(demo_answer)}]
    return [*messages, {"role": "user", "content": user}]


def label_schema(labels: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": {"label": {"type": "string", "enum": labels}},
            "required": ["label"], "additionalProperties": False}


def words(n: int) -> str:
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + ("-" + ONES[ones] if ones else "")


def money(x: float) -> str:
    return f"{x:.2f}" if x != int(x) else str(int(x))


# --------------------------------------------------------------------------------------------------- extraction

PERSON_SYSTEM = [
    'Extract the person\'s details. Reply with only a JSON object like {"name": "...", "age": 0, "city": "..."} '
    "and nothing else.",
    'You are an information extraction system. Return only JSON with the keys "name" (string), "age" (integer) '
    'and "city" (string). No explanations.',
    'Read the text and output a single JSON object {"name": string, "age": integer, "city": string}. '
    "Output JSON only.",
]
ORDER_SYSTEM = [
    'Extract the order. Reply with only a JSON object like {"item": "...", "quantity": 0, "unit_price": 0.0} '
    "and nothing else.",
    'You turn order notes into JSON. Return only {"item": string, "quantity": integer, "unit_price": number}, '
    "the price of one unit in dollars. No other text.",
]


def person_tasks(rng: random.Random) -> list[dict[str, Any]]:
    easy = [
        "{name} is {age} years old and lives in {city}.",
        "Name: {name}. Age: {age}. City: {city}.",
        "{name}, {age}, is from {city}.",
        "My name is {name}, I am {age} and I live in {city}.",
    ]
    medium = [
        "Living in {city} suits {name} well; at {age}, {first} has never been happier.",
        "The new librarian in {city} is {name}, who is {age} years old.",
        "At {age} years of age, {name} opened a bakery in {city}.",
        "Our records show that {name} (age {age}) resides in {city}.",
        "{city} resident {name} celebrated turning {age} with friends last weekend.",
    ]
    hard = [
        ("After twelve years in {city2}, {name} now calls {city} home. {first} is {age_words} years old.", "age_words"),
        ("{name} will turn {age_plus} next month; {first} moved from {city2} to {city} in the spring.", "age_plus"),
        ("{name2}, who is {age2} and lives in {city2}, visited {pron_obj_name}. {name} is {age} and lives in {city}. "
         "Extract the details of {name}.", "two_people"),
        ("{name} ({age_words}) grew up in {city2} but today lives and works in {city}.", "age_words"),
        ("Born and raised in {city2}, {name} relocated to {city} at 25 and is now {age}.", "distractor_age"),
    ]
    tasks = []
    levels = ["easy"] * 6 + ["medium"] * 7 + ["hard"] * 7
    for i, level in enumerate(levels):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        name = f"{first} {last}"
        age = rng.randint(19, 78)
        city, city2 = rng.sample(CITIES, 2)
        first2, last2 = rng.choice([f for f in FIRST if f != first]), rng.choice(LAST)
        fill = {"name": name, "age": age, "city": city, "city2": city2, "age_words": words(age),
                "age_plus": age + 1, "name2": f"{first2} {last2}", "age2": rng.randint(19, 78),
                "first": first, "pron_obj_name": first}
        if level == "easy":
            text = easy[i % len(easy)].format(**fill)
        elif level == "medium":
            text = medium[i % len(medium)].format(**fill)
        else:
            tpl, _ = hard[i % len(hard)]
            text = tpl.format(**fill)
        if level == "easy":
            user = f"Text: {text}"
        else:
            user = rng.choice([f"Text: {text}", f"{text}", f"Extract name, age and city from: \"{text}\""])
        tasks.append({
            "kind": "extraction", "difficulty": level,
            "messages": chat(PERSON_SYSTEM[i % len(PERSON_SYSTEM)], "person", user),
            "schema": PERSON_SCHEMA, "expected": {"name": name, "age": age, "city": city},
            "meta": {"schema": "person"},
        })
    return tasks


def order_tasks(rng: random.Random) -> list[dict[str, Any]]:
    tasks = []
    levels = ["easy"] * 3 + ["medium"] * 3 + ["hard"] * 3
    items = rng.sample(ITEMS, len(levels))
    for i, level in enumerate(levels):
        item = items[i]
        qty = rng.randint(3, 12)
        price = rng.choice([3, 4.5, 7.99, 12, 15.25, 2.5, 9.95, 24, 1.2, 18.75])
        if level == "easy":
            text = [f"Order: {qty} x {item} at ${money(price)} each.",
                    f"Please send {qty} units of {item}, ${money(price)} per unit.",
                    f"Item: {item}; quantity: {qty}; unit price: ${money(price)}."][i % 3]
        elif level == "medium":
            text = [f"We'd like {words(qty)} of the {item}s you listed at ${money(price)} apiece.",
                    f"Can you ship {qty} {item}s? Your catalogue says ${money(price)} a piece.",
                    f"Invoice line: {item} - unit price ${money(price)} - qty {qty}."][i % 3]
        else:
            total = round(qty * price, 2)
            text = [f"I paid ${money(total)} in total for {qty} {item}s, all the same price.",
                    f"Add {qty - 1} {item}s to my order, plus one more for my sister; they cost ${money(price)} each.",
                    f"Two weeks ago I bought 1 {item}; today I ordered {words(qty)} more at ${money(price)} each. "
                    "Extract today's order."][i % 3]
        tasks.append({
            "kind": "extraction", "difficulty": level,
            "messages": chat(ORDER_SYSTEM[i % len(ORDER_SYSTEM)], "order", text),
            "schema": ORDER_SCHEMA, "expected": {"item": item, "quantity": qty, "unit_price": price},
            "meta": {"schema": "order"},
        })
    return tasks


# --------------------------------------------------------------------------------------------------- arithmetic

ARITH_SYSTEM = [
    'Solve the problem. Reply with only a JSON object {"answer": <number>} and nothing else.',
    'You are a calculator. Output only JSON of the form {"answer": number}. No working, no words.',
    'Answer with a single JSON object containing the key "answer" whose value is the final number. JSON only.',
]


def arithmetic_tasks(rng: random.Random) -> list[dict[str, Any]]:
    out: list[tuple[str, str, float]] = []
    # easy: one small operation
    for _ in range(6):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        op = rng.choice(["+", "-", "*"])
        if op == "-" and b > a:
            a, b = b, a
        val = {"+": a + b, "-": a - b, "*": a * b}[op]
        q = rng.choice([f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.", f"{a} {op} {b} = ?"])
        out.append(("easy", q, val))
    # medium: two-digit operations, one-step word problems
    for _ in range(5):
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        op = rng.choice(["+", "-", "*"])
        val = {"+": a + b, "-": a - b, "*": a * b}[op]
        out.append(("medium", rng.choice([f"What is {a} {op} {b}?", f"Calculate {a} {op} {b}."]), val))
    name = rng.sample(FIRST, 8)
    a, b = rng.randint(10, 30), rng.randint(2, 9)
    out.append(("medium", f"{name[0]} has {a} apples and gives {b} to a friend. How many apples are left?", a - b))
    a, b = rng.randint(3, 9), rng.randint(4, 12)
    out.append(("medium", f"Pens cost {b} dollars each. How much do {a} pens cost in dollars?", a * b))
    a, b = rng.randint(3, 8), rng.randint(4, 9)
    out.append(("medium", f"A box holds {b} eggs. How many eggs are in {a} boxes?", a * b))
    a = rng.choice([24, 36, 48, 60])
    out.append(("medium", f"{a} cookies are shared equally among 4 children. How many cookies does each child get?",
                a // 4))
    # hard: multi-step
    a, b, c = rng.randint(2, 5), rng.choice([3, 4, 6]), rng.choice([1.5, 2.5, 0.5])
    out.append(("hard", f"{name[1]} buys {a} notebooks at {b} dollars each and 2 pens at {c} dollars each, and pays "
                f"with a 50 dollar note. How much change does {name[1]} get, in dollars?", 50 - a * b - 2 * c))
    s1, t1, s2, t2 = rng.choice([60, 80]), 2.5, rng.choice([40, 90]), 1.5
    out.append(("hard", f"A train travels at {s1} km/h for {t1} hours and then at {s2} km/h for {t2} hours. How "
                "many kilometres does it travel in total?", s1 * t1 + s2 * t2))
    a, b = rng.randint(13, 29), rng.randint(11, 19)
    out.append(("hard", f"What is ({a} + {b}) * 3 - {a}?", (a + b) * 3 - a))
    p = rng.choice([40, 80, 120, 250])
    out.append(("hard", f"A jacket costs {p} dollars. It is discounted by 25 percent. What is the new price in "
                "dollars?", p * 0.75))
    a = rng.randint(3, 7)
    out.append(("hard", f"{name[2]} is {a} years older than {name[3]}. {name[3]} is twice as old as {name[4]}, who is "
                f"{a + 4}. How old is {name[2]}?", 2 * (a + 4) + a))
    w, h = rng.randint(4, 12), rng.randint(3, 9)
    out.append(("hard", f"A rectangle is {w} m long and {h} m wide. What is its perimeter in metres?", 2 * (w + h)))
    n = rng.randint(3, 6)
    out.append(("hard", f"A bus has 40 passengers. At the first stop {n * 3} get off and {n} get on. At the second "
                f"stop half of the passengers get off. How many passengers are left?", (40 - 2 * n) / 2))
    a, b = rng.randint(112, 389), rng.randint(23, 67)
    out.append(("hard", f"Compute {a} * {b}.", a * b))
    a = rng.randint(3, 9)
    out.append(("hard", f"If 3x + {a} = {3 * 7 + a}, what is x?", 7))
    tasks = []
    for i, (level, q, raw) in enumerate(out):
        answer: float = int(raw) if float(raw).is_integer() else round(raw, 4)
        tasks.append({
            "kind": "arithmetic", "difficulty": level,
            "messages": chat(ARITH_SYSTEM[i % len(ARITH_SYSTEM)], "arithmetic", q),
            "schema": ANSWER_SCHEMA, "expected": {"answer": answer}, "meta": {},
        })
    return tasks


# ----------------------------------------------------------------------------------------------- classification

SENTIMENT_SYSTEM = [
    'Classify the sentiment of the review. Reply with only JSON: {"label": "positive"}, {"label": "negative"} or '
    '{"label": "neutral"}.',
    'You are a sentiment classifier. Output only a JSON object {"label": ...} where the label is one of '
    '"positive", "negative", "neutral".',
]
TOPIC_SYSTEM = [
    'Classify the headline by topic. Reply with only a JSON object {"label": "<topic>"} where the topic is one '
    "of: sports, politics, technology, business, health.",
    'What is the topic of this news headline? Answer with JSON only, {"label": ...}, using exactly one of '
    '"sports", "politics", "technology", "business", "health".',
]
SENTIMENT_TEXTS = [
    ("easy", "I absolutely love this blender. Best purchase I have made all year!", "positive"),
    ("easy", "Terrible service. The food was cold and the waiter was rude.", "negative"),
    ("easy", "The package arrived on Tuesday.", "neutral"),
    ("easy", "Fantastic movie, the acting was brilliant and I would watch it again.", "positive"),
    ("easy", "This phone is awful. It broke after two days.", "negative"),
    ("medium", "The hotel room was clean, but the wifi never worked and the staff ignored our complaints.",
     "negative"),
    ("medium", "The manual lists the dimensions as 40 by 60 centimetres.", "neutral"),
    ("medium", "I was sceptical at first, but these headphones turned out to be worth every penny.", "positive"),
    ("medium", "The meeting has been moved to 3 pm on Thursday.", "neutral"),
    ("medium", "Not bad at all - the battery easily lasts two days.", "positive"),
    ("hard", "Great, another update that deletes all my settings. Just what I needed.", "negative"),
    ("hard", "I wouldn't say it is the worst restaurant in town, but I won't be going back.", "negative"),
    ("hard", "The sequel isn't nearly as bad as the critics claim; I had a lovely evening.", "positive"),
    ("hard", "It is a chair. It has four legs and you can sit on it.", "neutral"),
]
TOPIC_TEXTS = [
    ("easy", "Local team wins the football championship after penalty shoot-out", "sports"),
    ("easy", "Parliament votes on new election law", "politics"),
    ("easy", "New smartphone chip doubles battery life, engineers say", "technology"),
    ("medium", "Shares of the retail giant fall 8% after weak quarterly earnings", "business"),
    ("medium", "Doctors recommend more sleep to lower the risk of heart disease", "health"),
    ("medium", "Senator announces bid for governor amid budget dispute", "politics"),
    ("medium", "Tennis star withdraws from the open with a wrist injury", "sports"),
    ("hard", "Start-up raises $40 million to build AI tools for hospitals", "business"),
    ("hard", "Marathon runners' hearts adapt in surprising ways, study finds", "health"),
    ("hard", "Open-source database project releases version 2.0 with faster queries", "technology"),
    ("hard", "Central bank holds interest rates steady as inflation cools", "business"),
]


def classification_tasks(rng: random.Random) -> list[dict[str, Any]]:
    tasks = []
    for i, (level, text, label) in enumerate(SENTIMENT_TEXTS):
        user = rng.choice([f"Review: {text}", f"\"{text}\"", text])
        tasks.append({
            "kind": "classification", "difficulty": level,
            "messages": chat(SENTIMENT_SYSTEM[i % 2], "sentiment", user),
            "schema": label_schema(SENTIMENTS), "expected": {"label": label}, "meta": {"task": "sentiment"},
        })
    for i, (level, text, label) in enumerate(TOPIC_TEXTS):
        user = rng.choice([f"Headline: {text}", text])
        tasks.append({
            "kind": "classification", "difficulty": level,
            "messages": chat(TOPIC_SYSTEM[i % 2], "topic", user),
            "schema": label_schema(TOPICS), "expected": {"label": label}, "meta": {"task": "topic"},
        })
    return tasks


def generate(seed: int = SEED) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    groups = {"ext": person_tasks(rng) + order_tasks(rng), "ari": arithmetic_tasks(rng),
              "cls": classification_tasks(rng)}
    tasks = []
    for prefix, group in groups.items():
        for n, task in enumerate(group, 1):
            tasks.append({"id": f"{prefix}-{n:03d}", **task})
    prompts = [t["messages"][-1]["content"] for t in tasks]
    assert len(set(prompts)) == len(prompts), "user prompts must be unique (the stand-in matches on them)"
    return tasks


def render(tasks: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(t, ensure_ascii=False, sort_keys=False) + "\n" for t in tasks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare with the committed file")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    text = render(generate())
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{args.out} differs from the generator's output")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {len(text.splitlines())} tasks to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
