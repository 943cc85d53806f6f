"""Fine-tuning, downstream and raw-text corpora from the shared data folder, with the records' error discipline.

- Commonsense (LLM-Adapters format): ``instruction``, ``input``, ``output``, ``answer`` -> :class:`MCItem`
  (multiple choice: the question text, the option labels and texts, the gold label) and, for training,
  :class:`TrainExample` (prompt, response).
- Alpaca: ``instruction``, ``input``, ``output`` -> TrainExample with the Alpaca prompt template.
- HotpotQA (IRCoT format): question + supporting paragraphs -> TrainExample.
- Raw text (WikiText, Wikipedia articles, any .txt): a list of documents, for second-moment statistics,
  perplexity and plain-text fine-tuning (loss on every token).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from editdecay.data.records import _Rec, read_json_records, shared_data_dir
from editdecay.errors import DataError

COMMONSENSE_TASKS = ("boolq", "piqa", "social_i_qa", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa")
COMMONSENSE_TRAIN_TASKS = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")  # train files shipped here
TASK_ALIASES = {"siqa": "social_i_qa", "arc-e": "ARC-Easy", "arc_easy": "ARC-Easy", "arc-c": "ARC-Challenge",
                "arc_challenge": "ARC-Challenge", "obqa": "openbookqa"}


@dataclass(frozen=True)
class TrainExample:
    """One fine-tuning example. ``prompt`` gets no loss when ``response`` is non-empty (response-only loss)."""

    prompt: str
    response: str


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice downstream item in LLM-Adapters form."""

    task: str
    index: int
    instruction: str  # the full instruction text (question, options, answer format)
    labels: tuple[str, ...]  # e.g. ("answer1", "answer2", ...) or ("true", "false")
    options: tuple[str, ...]  # option texts where the instruction lists them, else the labels
    answer: str  # gold label


ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The LLM-Adapters / Alpaca prompt (the study fine-tunes and evaluates commonsense with it)."""
    if input_text:
        return ALPACA_INPUT_TEMPLATE.format(instruction=instruction, input=input_text)
    return ALPACA_TEMPLATE.format(instruction=instruction)


def canonical_task(task: str) -> str:
    task = TASK_ALIASES.get(task.lower(), task)
    for known in COMMONSENSE_TASKS:
        if known.lower() == task.lower():
            return known
    raise DataError(task, f"unknown commonsense task; known: {', '.join(COMMONSENSE_TASKS)}")


def _label_set(task: str, instruction: str) -> tuple[str, ...]:
    match = re.search(r"Answer format:\s*([^\n]+)", instruction)
    if match:
        return tuple(x.strip() for x in match.group(1).strip().split("/") if x.strip())
    if task == "boolq":
        return ("true", "false")
    raise ValueError("no 'Answer format:' line")


def _option_texts(labels: tuple[str, ...], instruction: str) -> tuple[str, ...]:
    """Pull 'Solution1: ...', 'Option2: ...', 'Answer3: ...' texts out of the instruction, in label order."""
    texts = []
    for i, label in enumerate(labels):
        nxt = labels[i + 1] if i + 1 < len(labels) else None
        pattern = re.escape(label) + r"\s*:\s*(.*?)" + (r"\s*" + re.escape(nxt) + r"\s*:" if nxt else r"\s*(?:\n|Answer format:|$)")
        match = re.search(pattern, instruction, flags=re.IGNORECASE | re.DOTALL)
        texts.append(match.group(1).strip() if match else label)
    return tuple(texts)


def load_commonsense(task: str, split: str = "test", path: str | os.PathLike | None = None) -> list[MCItem]:
    """All items of one LLM-Adapters commonsense task (``split`` test or train)."""
    task = canonical_task(task)
    path = Path(path) if path else shared_data_dir() / "commonsense" / task / f"{split}.json"
    if not path.exists():
        raise DataError(str(path), f"no {split} file for task {task}")
    items = []
    for index, raw in enumerate(read_json_records(path)):
        rec = _Rec(str(path), index, raw)
        instruction = rec.str("instruction")
        answer = rec.str("answer").strip()
        try:
            labels = _label_set(task, instruction)
        except ValueError:
            raise rec.err("instruction", "has no 'Answer format:' line listing the labels") from None
        if task == "ARC-Easy" and answer not in labels:  # one item has an answer5 beyond the stated format
            labels = labels + (answer,)
        if answer not in labels:
            raise rec.err("answer", f"{answer!r} is not one of the labels {labels}")
        options = labels if task == "boolq" else _option_texts(labels, instruction)
        items.append(MCItem(task, index, instruction, labels, options, answer))
    return items


def load_commonsense_train(tasks: tuple[str, ...] | list[str] = COMMONSENSE_TRAIN_TASKS) -> list[TrainExample]:
    """The study's fine-tuning data: LLM-Adapters train sets, prompt = Alpaca template, response = output."""
    out = []
    for task in tasks:
        task = canonical_task(task)
        path = shared_data_dir() / "commonsense" / task / "train.json"
        if not path.exists():
            raise DataError(str(path), f"no train file for {task}; shipped: {', '.join(COMMONSENSE_TRAIN_TASKS)}")
        for index, raw in enumerate(read_json_records(path)):
            rec = _Rec(str(path), index, raw)
            instruction = rec.str("instruction")
            output = rec.str("output")
            out.append(TrainExample(alpaca_prompt(instruction, rec.str("input", required=False, allow_empty=True) or ""),
                                    output))
    return out


def load_alpaca(path: str | os.PathLike | None = None) -> list[TrainExample]:
    path = Path(path) if path else shared_data_dir() / "instruction" / "alpaca_data_1k.json"
    out = []
    for index, raw in enumerate(read_json_records(path)):
        rec = _Rec(str(path), index, raw)
        instruction = rec.str("instruction")
        input_text = rec.str("input", required=False, allow_empty=True) or ""
        out.append(TrainExample(alpaca_prompt(instruction, input_text), rec.str("output")))
    return out


def load_hotpotqa(path: str | os.PathLike | None = None) -> list[TrainExample]:
    """HotpotQA question + its supporting paragraphs as context -> first answer span as the response."""
    path = Path(path) if path else shared_data_dir() / "hotpotqa" / "dev_subsampled.jsonl"
    out = []
    for index, raw in enumerate(read_json_records(path)):
        rec = _Rec(str(path), index, raw)
        question = rec.str("question_text")
        answers = raw.get("answers_objects")
        if not isinstance(answers, list) or not answers or not isinstance(answers[0], dict):
            raise rec.err("answers_objects", "expected a non-empty list of answer objects")
        spans = answers[0].get("spans") or []
        if not spans or not isinstance(spans[0], str):
            raise rec.err("answers_objects[0].spans", "expected a non-empty list of strings")
        contexts = raw.get("contexts")
        if not isinstance(contexts, list):
            raise rec.err("contexts", "expected a list")
        support = [c for c in contexts if isinstance(c, dict) and c.get("is_supporting")] or contexts
        context = "\n".join(f"{c.get('title', '')}: {c.get('paragraph_text', '')}" for c in support)
        out.append(TrainExample(alpaca_prompt(f"Answer the question.\n\n{context}\n\nQuestion: {question}"), spans[0]))
    return out


RAW_TEXT = {
    "wikitext": "wikitext/wikitext-2-raw/wiki.test.raw",
    "wikitext-valid": "wikitext/wikitext-2-tokens/valid.txt",
    "wikipedia": "wikipedia_articles/wiki_demo.txt",
}


def load_text(name_or_path: str | os.PathLike) -> list[str]:
    """Documents of a raw-text corpus: one per non-empty line (WikiText lines, Wikipedia articles, .txt)."""
    text = str(name_or_path)
    path = shared_data_dir() / RAW_TEXT[text] if text in RAW_TEXT else Path(text)
    if not path.exists():
        raise DataError(str(path), f"text corpus not found (named corpora: {', '.join(RAW_TEXT)})")
    if path.suffix in (".json", ".jsonl"):
        docs = []
        for index, raw in enumerate(read_json_records(path)):
            docs.append(_Rec(str(path), index, raw).str("text"))
        return docs
    raw_text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    return [line.strip() for line in raw_text.split("\n") if line.strip() and not re.fullmatch(r"=+ .* =+", line.strip())]


def tokenizer_text(n: int = 400) -> list[str]:
    """The text a tiny tokenizer trains on (:func:`editdecay.models.tiny.tiny_tokenizer`): the first ``n``
    documents of the shared WikiText text."""
    return load_text("wikitext")[:n]


def load_finetune_corpus(name_or_path: str | os.PathLike) -> list[TrainExample]:
    """A named fine-tuning corpus ('commonsense', 'alpaca', 'hotpotqa', a raw-text name) or a file.

    Files: LLM-Adapters/Alpaca JSON (instruction/input/output), JSONL of {prompt, response}, or .txt.
    """
    text = str(name_or_path)
    if text == "commonsense":
        return load_commonsense_train()
    if text.startswith("commonsense:"):
        return load_commonsense_train(text.split(":", 1)[1].split(","))
    if text == "alpaca":
        return load_alpaca()
    if text == "hotpotqa":
        return load_hotpotqa()
    if text in RAW_TEXT or text.endswith(".txt"):
        return [TrainExample("", doc) for doc in load_text(text)]
    path = Path(text)
    if not path.exists():
        raise DataError(text, "fine-tuning data not found; named: commonsense, alpaca, hotpotqa, "
                        + ", ".join(RAW_TEXT) + ", or a .json/.jsonl/.txt file")
    raw = read_json_records(path)
    out = []
    for index, item in enumerate(raw):
        rec = _Rec(str(path), index, item)
        if "instruction" in item:
            out.append(TrainExample(alpaca_prompt(rec.str("instruction"),
                                                  rec.str("input", required=False, allow_empty=True) or ""),
                                    rec.str("output")))
        elif "prompt" in item:
            out.append(TrainExample(rec.str("prompt", allow_empty=True), rec.str("response")))
        elif "text" in item:
            out.append(TrainExample("", rec.str("text")))
        else:
            raise rec.err("instruction", "expected instruction/output, prompt/response or text fields")
    return out


def dumps_example(example: TrainExample) -> str:
    return json.dumps({"prompt": example.prompt, "response": example.response})
