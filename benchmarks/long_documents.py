"""The long-documents benchmark behind benchmarks/results/long_documents.{json,md,png} and
benchmarks/results/long_documents_planted.{json,md}.

    python benchmarks/long_documents.py              # the real reference model; 12 min on 2 shared vCPUs
    python benchmarks/long_documents.py --planted-only               # part 3 alone: a few minutes
    python benchmarks/long_documents.py --model-dir DIR --docs 2 --trials 1 --cases 2 --out /tmp/x   # smoke run

Model: the project's real MiniLM-L6 cross-encoder fine-tuned on STSb (exported once into --work), fp32, --threads.

1. Cost: one STSb query against --docs documents of 1x, 4x and 16x the window (the window: what fits beside the
   query in the max length), made of other STSb sentences. For truncate mode and for chunk mode (the default cap,
   10 windows' tokens, capped documents flagged; and uncapped): documents/s, windows scored per document, model
   calls, best of --reps.
2. Quality: a query (an STSb test sentence whose pair has gold similarity >= 4.5) and its partner sentence, the
   "answer", planted at the start, the middle or the end of --quality-multiple windows of unrelated STSb sentences;
   ranked against --distractors documents of the same length without it. How often each mode ranks the planted
   document first, over --trials queries per position: truncate, chunk with the default window, and chunk with
   sentence-sized windows (--small-window tokens; the STSb model compares whole texts, so a 500-token window with
   one matching sentence in it scores low).
3. Planted answers with small windows (written on its own, long_documents_planted.*): --cases held-back STSb test
   pairs of gold similarity >= 4.5; the partner sentence appended to about --words words of other held-back
   sentences, ranked against --distractors such documents without it. Chunk mode with --chunk-tokens windows and
   default options (the cap is in document tokens: the default reads 10 full-size windows' tokens whatever the
   window size) must rank the planted document first in at least 80% of cases; shown beside truncate and beside the
   cap of 0.x, 10 windows of --chunk-tokens tokens (about the first 190 tokens), flagged. The span covers the answer:
   the planted document's best window holds the whole answer sentence, whatever its rank.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx import CrossEncoder, LongDocuments
from crossonnx._pipeline import plan, token_counts
from crossonnx.bench.machine import describe_cpu, library_versions
from crossonnx.bench.report import pyplot
from crossonnx.long_documents import DEFAULT_CAP_WINDOWS, overlap_tokens, window_tokens
from crossonnx.stsb import load_stsb
from lab.machine import cpu_info

ROOT = Path(__file__).resolve().parents[1]
MULTIPLES = (1, 4, 16)
POSITIONS = ("start", "middle", "end")
PLANTED_TARGET = 0.8  # chunk mode with small windows and default options ranks the answer's document first this often
UNCAPPED = LongDocuments("chunk", max_document_tokens=10**9)
LIBRARIES = ("crossonnx", "numpy", "onnxruntime", "openvino", "tokenizers")
NOTES = [
    "- Chunk mode scores every window as its own (query, window) pair in the same length-sorted, token-budgeted "
    "batches as everything else: its cost is the number of windows, so documents/s falls with document length "
    "while windows/s stays near truncate's pairs/s.",
    "- A document that fits in one window is scored as the original pair: at 1x both modes make the same model "
    "calls on the same batches, so a difference in time there is measurement noise (planning adds the tokenizing "
    "with offsets shown).",
    "- Truncate mode slows down with document length too: the tokenizer reads the whole text before truncating.",
    "- The reference model is an STSb *similarity* model: it scores how alike two texts are, so a long window with "
    "one matching sentence in it scores low (the default window ranks the planted document first less often than "
    "truncate does). Sentence-sized windows (`chunk_tokens`) suit it; a passage-ranking model (ms-marco) is "
    "trained on passages of a few hundred tokens, where the default window (what fits beside the query) is the "
    "natural choice. With 5 candidates, chance is 20%; 12 trials per cell is a small sample.",
]


def reference_folder(work: Path) -> Path:
    """The reference model exported to ``work`` (once)."""
    from crossonnx.checkpoints.stsb_minilm import build_reference_model
    from crossonnx.exporter.pipeline import export_model

    out = work / "onnx" / "stsb-minilm-l6"
    if not (out / "crossonnx.json").is_file():
        export_model(str(build_reference_model()), out=out, precisions=["fp32"], log=None)
    return out


class Filler:
    """Documents of about a given token length made of whole STSb dev/test sentences (never the excluded ones)."""

    def __init__(self, model: CrossEncoder, seed: int):
        rows = load_stsb("dev") + load_stsb("test")
        self.sentences = list(dict.fromkeys([r.sentence1 for r in rows] + [r.sentence2 for r in rows]))
        self.rng = random.Random(seed)
        self.model = model
        self.specials = token_counts(model, [("", "")])[0]

    def document(self, tokens: int, exclude: set[str] | None = None) -> list[str]:
        """Sentences of at most ``tokens`` tokens together (the model's tokenizer), within a sentence of it."""
        out: list[str] = []
        count = 0
        while True:
            batch = [s for s in self.rng.sample(self.sentences, 32) if s not in (exclude or set())]
            for sentence, n in zip(batch, token_counts(self.model, [("", s) for s in batch]), strict=True):
                n -= self.specials - 1  # the joining space is not a token; sentences are joined by one space
                if count + n > tokens:
                    return out
                out.append(sentence)
                count += n


def window_of(model: CrossEncoder, query: str) -> int:
    """Document tokens per window beside ``query`` (the default chunk size)."""
    specials = token_counts(model, [("", "")])[0]
    query_tokens = token_counts(model, [(query, "")])[0] - specials
    return window_tokens(model.max_length - specials, query_tokens)


def timed(fn, reps: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(reps):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def cost(model: CrossEncoder, docs: int, reps: int, seed: int) -> list[dict[str, Any]]:
    rows = [r for r in load_stsb("test") if r.score >= 4.5]
    query = rows[0].sentence1
    window = window_of(model, query)
    filler = Filler(model, seed)
    modes = [
        ("truncate", {}),
        ("chunk", {"long_documents": LongDocuments("chunk", on_capped="flag")}),
        ("chunk, uncapped", {"long_documents": UNCAPPED}),
    ]
    out = []
    for multiple in MULTIPLES:
        documents = [" ".join(filler.document(window * multiple, {query})) for _ in range(docs)]
        pairs = [(query, doc) for doc in documents]
        for label, kwargs in modes:
            if label == "chunk, uncapped" and multiple < 16:
                continue  # below the default cap (10 windows' tokens): the same as capped
            model.predict(pairs[:1], **kwargs)  # warm-up (tokenizer copies, shapes)
            seconds, details = timed(lambda kw=kwargs, p=pairs: model.predict_details(p, **kw), reps)
            plan_seconds = 0.0
            if label != "truncate":
                plan_seconds, _ = timed(
                    lambda kw=kwargs, p=pairs: plan(model, p, LongDocuments.of(kw["long_documents"])), reps
                )
            windows = int(details.chunks.sum())
            out.append(
                {
                    "multiple": multiple,
                    "mode": label,
                    "documents": docs,
                    "window_tokens": window,
                    "documents_per_s": round(docs / seconds, 2),
                    "windows_per_s": round(windows / seconds, 2),
                    "windows_per_document": round(windows / docs, 2),
                    "model_calls": details.model_calls,
                    "capped_documents": int(details.capped.sum()),
                    "seconds": round(seconds, 3),
                    "planning_seconds": round(plan_seconds, 4),
                }
            )
            print(json.dumps(out[-1]))
    return out


def plant(sentences: list[str], answer: str, position: str) -> str:
    index = {"start": 0, "middle": len(sentences) // 2, "end": len(sentences)}[position]
    return " ".join([*sentences[:index], answer, *sentences[index:]])


def quality(
    model: CrossEncoder, trials: int, multiple: int, distractors: int, small_window: int, seed: int
) -> list[dict[str, Any]]:
    rows = [r for r in load_stsb("test") if r.score >= 4.5]
    rng = random.Random(seed)
    picked = rng.sample(rows, trials)
    filler = Filler(model, seed + 1)
    methods = {
        "truncate": {},
        "chunk (default window)": {"long_documents": "chunk"},
        f"chunk ({small_window}-token windows)": {"long_documents": LongDocuments("chunk", chunk_tokens=small_window)},
    }
    hits = {(position, method): 0 for position in POSITIONS for method in methods}
    spans_hit = {(position, method): 0 for position in POSITIONS for method in methods}
    for row in picked:
        window = window_of(model, row.sentence1)
        exclude = {row.sentence1, row.sentence2}
        background = [filler.document(window * multiple, exclude) for _ in range(distractors + 1)]
        for position in POSITIONS:
            needle = plant(background[0], row.sentence2, position)
            documents = [" ".join(sentences) for sentences in background[1:]]
            slot = rng.randrange(distractors + 1)  # where the planted document sits in the list
            documents.insert(slot, needle)
            for method, kwargs in methods.items():
                ranked = model.rank(row.sentence1, documents, return_spans=True, **kwargs)
                if ranked[0]["corpus_id"] == slot:
                    hits[(position, method)] += 1
                    start, end = ranked[0]["span"]
                    spans_hit[(position, method)] += row.sentence2 in needle[start:end]
    return [
        {
            "position": position,
            "method": method,
            "trials": trials,
            "ranked_first": hits[(position, method)],
            "ranked_first_pct": round(100 * hits[(position, method)] / trials, 1),
            "span_holds_answer": spans_hit[(position, method)],
        }
        for position in POSITIONS
        for method in methods
    ]


def held_back_sentences() -> list[str]:
    """STSb dev and test sentences, once each (the reference model was fine-tuned on train)."""
    rows = load_stsb("dev") + load_stsb("test")
    return list(dict.fromkeys([r.sentence1 for r in rows] + [r.sentence2 for r in rows]))


def words_document(rng: random.Random, sentences: list[str], words: int, avoid: set[str]) -> str:
    """Whole sentences, none of ``avoid``, until the text has at least ``words`` words."""
    out: list[str] = []
    count = 0
    while count < words:
        sentence = rng.choice(sentences)
        if sentence not in avoid:
            out.append(sentence)
            count += len(sentence.split())
    return " ".join(out)


def old_cap_tokens(chunk_tokens: int) -> int:
    """About the document tokens 0.x's default cap read with ``chunk_tokens`` windows: 10 windows, the default
    overlap (a quarter) between them."""
    return chunk_tokens + (DEFAULT_CAP_WINDOWS - 1) * (chunk_tokens - overlap_tokens(chunk_tokens))


def planted_cases(cases: int, words: int, distractors: int, seed: int) -> list[dict[str, Any]]:
    """``cases`` ranking problems: a held-back STSb test query, its partner (gold >= 4.5) appended to about
    ``words`` words of other held-back sentences, among ``distractors`` such documents without it."""
    rng = random.Random(seed)
    rows = [r for r in load_stsb("test") if r.score >= 4.5]
    sentences = held_back_sentences()
    out = []
    for row in rng.sample(rows, cases):
        avoid = {row.sentence1, row.sentence2}
        documents = [words_document(rng, sentences, words, avoid) for _ in range(distractors)]
        slot = rng.randrange(distractors + 1)
        needle = words_document(rng, sentences, words, avoid) + " " + row.sentence2
        documents.insert(slot, needle)
        out.append(
            {
                "query": row.sentence1,
                "answer": row.sentence2,
                "documents": documents,
                "slot": slot,
                "answer_span": (len(needle) - len(row.sentence2), len(needle)),
            }
        )
    return out


def planted(
    model: CrossEncoder, cases: int, words: int, distractors: int, chunk_tokens: int, seed: int
) -> dict[str, Any]:
    """Part 3: how often each method ranks the planted document first and its span covers the answer."""
    problems = planted_cases(cases, words, distractors, seed)
    old_cap = old_cap_tokens(chunk_tokens)
    methods = {
        "truncate": LongDocuments(),
        f"chunk, {chunk_tokens}-token windows, default options": LongDocuments("chunk", chunk_tokens=chunk_tokens),
        f"chunk, {chunk_tokens}-token windows, 0.x cap (10 windows = {old_cap} tokens), flagged": LongDocuments(
            "chunk", chunk_tokens=chunk_tokens, max_document_tokens=old_cap, on_capped="flag"
        ),
    }
    rows = []
    for method, options in methods.items():
        first = covered = overlaps = capped = windows = 0
        started = time.perf_counter()
        for case in problems:
            ranked = model.rank(case["query"], case["documents"], long_documents=options, return_spans=True)
            mine = next(r for r in ranked if r["corpus_id"] == case["slot"])
            first += ranked[0]["corpus_id"] == case["slot"]
            start, end = mine["span"]
            covered += start <= case["answer_span"][0] and case["answer_span"][1] <= end
            overlaps += start < case["answer_span"][1] and case["answer_span"][0] < end
            capped += sum(bool(r.get("capped")) for r in ranked)
            windows += sum(r.get("chunks", 1) for r in ranked)
        rows.append(
            {
                "method": method,
                "options": options.to_dict(),
                "cases": cases,
                "ranked_first": first,
                "ranked_first_pct": round(100 * first / cases, 1),
                "span_covers_answer": covered,
                "span_overlaps_answer": overlaps,
                "capped_documents": capped,
                "windows_per_document": round(windows / (cases * (distractors + 1)), 1),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(rows[-1]))
    target = rows[1]["ranked_first"] >= PLANTED_TARGET * cases
    return {
        "cases": cases,
        "words": words,
        "distractors": distractors,
        "chunk_tokens": chunk_tokens,
        "seed": seed,
        "document_tokens": round(float(np.mean(_document_tokens(model, problems))), 1),
        "target_ranked_first_pct": round(100 * PLANTED_TARGET),
        "meets_target": target,
        "methods": rows,
    }


def _document_tokens(model: CrossEncoder, problems: list[dict[str, Any]]) -> list[list[int]]:
    """Tokens of each problem's documents (the model's tokenizer, without specials)."""
    specials = token_counts(model, [("", "")])[0]
    return [[n - specials for n in token_counts(model, [("", d) for d in p["documents"]])] for p in problems]


def planted_markdown(result: dict[str, Any], command: str, env: dict[str, Any], threads: int) -> str:
    r = result
    lines = [
        "# Long documents: a planted answer, small windows",
        "",
        f"`{command}` — the real MiniLM-L6 STSb cross-encoder, fp32, {threads} threads, engine `{env['provider']}`.",
        f"CPU: {describe_cpu(env['cpu'])}.",
        "",
        f"{r['cases']} held-back STSb test queries (pairs of gold similarity >= 4.5; the model was fine-tuned on "
        f"train). The partner sentence, the answer, is appended to about {r['words']} words of other held-back "
        f"sentences (about {r['document_tokens']:.0f} tokens a document on average) and ranked against "
        f"{r['distractors']} documents like it without the answer (chance: {100 / (r['distractors'] + 1):.0f}%). "
        f"Windows of {r['chunk_tokens']} tokens (sentence-sized, what this similarity model compares well). "
        "*Span covers the answer*: the planted document's span (its best window) holds the whole answer sentence, "
        "whatever the document's rank; *overlaps*: it holds part of it at least (a window ends on a word boundary "
        "wherever the answer starts, so a 24-token window holds a whole 15-token sentence only where the two line "
        "up).",
        "",
        f"Target: chunk mode with default options ranks the planted document first in at least "
        f"{r['target_ranked_first_pct']}% of cases: **{'met' if r['meets_target'] else 'NOT met'}**.",
        "",
        "| method | ranked first | % | span covers the answer | span overlaps it | windows per document | "
        "capped documents |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in r["methods"]:
        lines.append(
            f"| {m['method']} | {m['ranked_first']}/{m['cases']} | {m['ranked_first_pct']:.0f} | "
            f"{m['span_covers_answer']}/{m['cases']} | {m['span_overlaps_answer']}/{m['cases']} | "
            f"{m['windows_per_document']:.1f} | {m['capped_documents']} |"
        )
    lines += [
        "",
        "## Notes",
        "",
        "- The default cap is in document tokens: 10 x the window that fits beside the query (about 5,000 tokens "
        "here), whatever `chunk_tokens` is, so these documents are read whole. The 0.x cap counted windows: 10 "
        "windows of this size read only a document's first ~190 tokens, and the answer at the end was never seen "
        '(its span cannot cover it); the row shows it with `on_capped="flag"`, since the default now raises '
        "for a document longer than the cap instead of scoring it in part.",
        "- Truncate mode reads what fits in the 512-token max length beside the query: the answer at the end is "
        "never seen.",
        "- Measured once on a shared machine; counts, not times, are the result here.",
        "",
    ]
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    env, config = doc["environment"], doc["config"]
    lines = [
        "# Long documents: chunk vs truncate",
        "",
        f"`{doc['command']}` — the real MiniLM-L6 STSb cross-encoder, fp32, {config['threads']} threads, "
        f"engine `{env['provider']}` ({env['provider_reason']}).",
        "",
        f"CPU: {describe_cpu(env['cpu'])}.",
        f"Libraries: {', '.join(f'{k} {v}' for k, v in env['libraries'].items())}.",
        "",
        "**Measured once on a shared machine** (2 vCPUs shared with other sessions): the times are indicative; "
        "ratios within one run are more reliable than absolute figures. Re-run the command on a quiet machine "
        "for publishable numbers.",
        "",
        "## Cost",
        "",
        f"One STSb query against {config['docs']} documents of 1x, 4x and 16x the window "
        f"({doc['cost'][0]['window_tokens']} document tokens beside the query; windows overlap by a quarter). "
        f'Best of {config["reps"]}. *chunk*: `LongDocuments("chunk", on_capped="flag")`, the default cap '
        f"({DEFAULT_CAP_WINDOWS} windows' tokens); *uncapped*: `max_document_tokens=10**9`. Planning = tokenizing "
        "with offsets and cutting windows, included in the time.",
        "",
        "| document | mode | documents/s | windows/s | windows per doc | model calls | capped | planning s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["cost"]:
        lines.append(
            f"| {r['multiple']}x | {r['mode']} | {r['documents_per_s']:.2f} | {r['windows_per_s']:.1f} | "
            f"{r['windows_per_document']:.2f} | {r['model_calls']} | {r['capped_documents']} | "
            f"{r['planning_seconds']:.3f} |"
        )
    q = doc["quality"]
    trials = q[0]["trials"] if q else 0
    lines += [
        "",
        "## Quality: a planted answer",
        "",
        f"{trials} STSb test queries (pairs of gold similarity >= 4.5); the partner sentence planted at the start, "
        f"middle or end of {config['quality_multiple']}x the window of other STSb sentences, ranked against "
        f"{config['distractors']} documents of the same length without it. Ranked first: how often the planted "
        "document comes first; span: how often the returned span holds the planted sentence.",
        "",
        "| position | method | ranked first | % | span holds the answer |",
        "|---|---|---:|---:|---:|",
    ]
    for r in q:
        lines.append(
            f"| {r['position']} | {r['method']} | {r['ranked_first']}/{r['trials']} | "
            f"{r['ranked_first_pct']:.0f} | {r['span_holds_answer']} |"
        )
    if doc.get("planted"):
        r = doc["planted"]
        lines += [
            "",
            "## Planted answers, small windows",
            "",
            f"See [long_documents_planted.md](long_documents_planted.md): {r['cases']} cases, windows of "
            f"{r['chunk_tokens']} tokens; chunk mode with default options ranks the answer's document first in "
            f"{r['methods'][1]['ranked_first']}/{r['cases']} (target {r['target_ranked_first_pct']}%: "
            f"{'met' if r['meets_target'] else 'NOT met'}).",
        ]
    lines += ["", "## Notes", "", *doc["notes"], ""]
    return "\n".join(lines)


def plot(doc: dict[str, Any], out: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    modes = list(dict.fromkeys(r["mode"] for r in doc["cost"]))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        rows = {r["multiple"]: r for r in doc["cost"] if r["mode"] == mode}
        values = [rows[m]["documents_per_s"] if m in rows else 0 for m in MULTIPLES]
        left.bar([j + i * width for j in range(len(MULTIPLES))], values, width, label=mode)
    left.set_yscale("log")
    left.set_xticks([j + 0.4 - width / 2 for j in range(len(MULTIPLES))], [f"{m}x window" for m in MULTIPLES])
    left.set_ylabel("documents / s (log)")
    left.set_title("cost")
    left.legend(fontsize=8)
    methods = list(dict.fromkeys(r["method"] for r in doc["quality"]))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [
            next(r["ranked_first_pct"] for r in doc["quality"] if r["method"] == method and r["position"] == p)
            for p in POSITIONS
        ]
        right.bar([j + i * width for j in range(len(POSITIONS))], values, width, label=method)
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(POSITIONS))], [f"answer at {p}" for p in POSITIONS])
    right.set_ylabel("planted document ranked first (%)")
    right.set_ylim(0, 105)
    right.set_title("quality")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="an export of the reference model (default: export it into --work)")
    parser.add_argument("--work", default=str(ROOT / ".cache/long_documents"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--provider", default="auto", help="the runtime's engine (default auto, as CrossEncoder)")
    parser.add_argument("--docs", type=int, default=8, help="documents per size in the cost part")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--trials", type=int, default=12, help="queries per position in the quality part")
    parser.add_argument("--quality-multiple", type=int, default=3, help="planted documents: this many windows")
    parser.add_argument("--distractors", type=int, default=4)
    parser.add_argument("--small-window", type=int, default=32)
    parser.add_argument("--planted-only", action="store_true", help="run part 3 alone")
    parser.add_argument("--cases", type=int, default=20, help="planted-answer cases (part 3)")
    parser.add_argument("--words", type=int, default=700, help="part 3: words of a document before the answer")
    parser.add_argument("--chunk-tokens", type=int, default=24, help="part 3: window size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    logging.getLogger("crossonnx").setLevel(logging.ERROR)  # the capped-document warnings are measured here
    folder = Path(args.model_dir) if args.model_dir else reference_folder(Path(args.work))
    model = CrossEncoder(folder, threads=args.threads, provider=args.provider)
    env = {
        "cpu": cpu_info(),
        "libraries": library_versions(LIBRARIES),
        "provider": model.provider,
        "provider_reason": model.provider_reason,
    }
    shown = ("docs", "reps", "trials", "threads", "cases", "words", "chunk_tokens")
    command = "python benchmarks/long_documents.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in shown and v != parser.get_default(k)
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    planted_result = planted(model, args.cases, args.words, args.distractors, args.chunk_tokens, args.seed)
    planted_doc = {
        "command": command + (" --planted-only" if args.planted_only else ""),
        "environment": env,
        "seconds": round(time.perf_counter() - started, 1),
        **planted_result,
    }
    (out / "long_documents_planted.json").write_text(json.dumps(planted_doc, indent=1) + "\n", encoding="utf-8")
    (out / "long_documents_planted.md").write_text(
        planted_markdown(planted_result, planted_doc["command"], env, args.threads), encoding="utf-8"
    )
    print(f"wrote {out}/long_documents_planted.{{json,md}}")
    if args.planted_only:
        return
    cost_rows = cost(model, args.docs, args.reps, args.seed)
    quality_rows = quality(model, args.trials, args.quality_multiple, args.distractors, args.small_window, args.seed)
    doc = {
        "command": command,
        "environment": env,
        "config": {k: v for k, v in vars(args).items() if k not in ("model_dir", "work", "out", "planted_only")},
        "cost": cost_rows,
        "quality": quality_rows,
        "planted": planted_result,
        "seconds": round(time.perf_counter() - started, 1),
        "notes": NOTES,
    }
    (out / "long_documents.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out / "long_documents.md").write_text(markdown(doc), encoding="utf-8")
    plot(doc, out / "long_documents.png")
    print(f"wrote {out}/long_documents.{{json,md,png}} in {doc['seconds']} s")


if __name__ == "__main__":
    main()
