"""Synthetic multi-document QA for the MEPIC benchmark (seeded, reproducible).

Every document is about one made-up country and plants one fact, "The capital of <country> is
<city>.", among filler sentences, padded to a token length drawn from ``chunk_tokens``. A request
is a system prompt (optional), ``chunks`` documents drawn by Zipf popularity (no repeats within a
request) in shuffled order, and a question about one of them; the answer is a short span (the
city) that a 135M model can copy. Arrivals are Poisson at ``qps``.

The prompt is the model's chat template around one user turn: ``[head][doc 1]...[doc n][tail]``.
Stock modes send it as plain text; MEPIC modes send the same pieces as ``mepic_segments`` (each
document a chunk, head and tail as text).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

SENTINEL = "\u2063DOCS\u2063"
SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sa", "vor", "pel", "dri", "nak", "zu", "ber",
             "fen", "gol", "hi", "jas", "qua", "tor", "wen", "yl"]  # fmt: skip
FILLER = [
    "Its winters are long and its summers are short and bright.",
    "Most people there work in fishing, farming or the wool trade.",
    "A railway line crosses the country from the coast to the {adj} mountains.",
    "The national dish is a stew of barley, onions and smoked fish.",
    "Children learn two languages at school from the age of {n}.",
    "The oldest bridge was built of grey stone {n} centuries ago.",
    "Its flag shows a {adj} bird above three wavy lines.",
    "About {n} million people live in its valleys and along its rivers.",
    "The main export is {adj} timber, shipped from two northern ports.",
    "A festival of lanterns is held every spring in the market towns.",
    "The {adj} hills in the east are known for their slate quarries.",
    "Its parliament meets in a hall with {n} windows facing the square.",
]
ADJ = ["green", "quiet", "northern", "windy", "ancient", "red", "misty", "broad"]


@dataclass(frozen=True)
class Doc:
    country: str
    capital: str
    text: str


@dataclass(frozen=True)
class Request:
    rid: int
    arrival: float  # seconds after the start of the pass
    docs: tuple[int, ...]  # document indices, in prompt order
    target: int  # the document the question is about
    question: str
    answer: str


@dataclass(frozen=True)
class WorkloadConfig:
    n_docs: int = 32
    n_requests: int = 24
    chunks: tuple[int, int] = (2, 16)  # documents per request (inclusive range)
    chunk_tokens: tuple[int, int] = (256, 1024)
    zipf: float = 1.0
    system_prompt: str = "Answer the question using only the documents. Reply with a city name."
    qps: float = 1.0
    seed: int = 0


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def make_docs(cfg: WorkloadConfig, count_tokens: Any) -> list[Doc]:
    """``count_tokens(text) -> int`` (the served model's tokenizer) sizes each document."""
    rng = random.Random(cfg.seed)
    taken: set[str] = set()
    docs = []
    for _ in range(cfg.n_docs):
        country, capital = _name(rng, taken), _name(rng, taken)
        target = rng.randint(*cfg.chunk_tokens)
        fact = f"The capital of {country} is {capital}."
        sentences = [f"This document is about {country}."]
        while count_tokens(" ".join(sentences)) < target - 24:
            s = rng.choice(FILLER).format(adj=rng.choice(ADJ), n=rng.randint(2, 40))
            sentences.append(s)
        sentences.insert(rng.randint(1, len(sentences)), fact)
        docs.append(Doc(country, capital, " ".join(sentences)))
    return docs


def make_requests(cfg: WorkloadConfig, docs: list[Doc]) -> list[Request]:
    rng = random.Random(cfg.seed + 1)
    weights = [1.0 / (i + 1) ** cfg.zipf for i in range(len(docs))]
    t, out = 0.0, []
    for rid in range(cfg.n_requests):
        k = min(rng.randint(*cfg.chunks), len(docs))
        chosen: list[int] = []
        while len(chosen) < k:  # Zipf draws without repeats
            i = rng.choices(range(len(docs)), weights)[0]
            if i not in chosen:
                chosen.append(i)
        rng.shuffle(chosen)
        target = rng.choice(chosen)
        doc = docs[target]
        question = f"What is the capital of {doc.country}?"
        out.append(Request(rid, t, tuple(chosen), target, question, doc.capital))
        t += rng.expovariate(cfg.qps) if cfg.qps > 0 else 0.0
    return out


@dataclass
class Renderer:
    """The chat template split around the documents (computed once per tokenizer)."""

    tokenizer: Any
    system: str
    head: str = field(init=False)
    tail_template: str = field(init=False)

    def __post_init__(self) -> None:
        messages = [{"role": "user", "content": f"{SENTINEL}\n\nQuestion: {{question}}"}]
        if self.system:
            messages.insert(0, {"role": "system", "content": self.system})
        full = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        self.head, rest = full.split(SENTINEL)
        self.tail_template = rest

    def doc_piece(self, doc: Doc) -> str:
        return doc.text + "\n"

    def tail(self, req: Request) -> str:
        return self.tail_template.replace("{question}", req.question)

    def plain(self, req: Request, docs: list[Doc]) -> str:
        return self.head + "".join(self.doc_piece(docs[i]) for i in req.docs) + self.tail(req)

    def segments(self, req: Request, docs: list[Doc]) -> list[dict[str, str]]:
        pieces = [{"text": self.head}] if self.head else []
        pieces += [{"chunk": self.doc_piece(docs[i])} for i in req.docs]
        return [*pieces, {"text": self.tail(req)}]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def f1(prediction: str, gold: str) -> float:
    """Token F1 of the first line of the prediction against the gold answer (SQuAD-style)."""
    pred = _words(prediction.strip().split("\n")[0])
    ref = _words(gold)
    common = sum(min(pred.count(w), ref.count(w)) for w in set(ref))
    if not pred or not ref or common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def contains(prediction: str, gold: str) -> bool:
    """The gold answer appears in the first line (a lenient exact match for chatty models)."""
    return gold.lower() in prediction.strip().split("\n")[0].lower()
