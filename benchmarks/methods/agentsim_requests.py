"""Per-request figures of a finished simulation: requests per phase, prompt and reply tokens, and (given the
``simulate`` log with its per-tick ``generate`` seconds) the generation throughput that produced them.

    python benchmarks/methods/agentsim_requests.py --config recipes/agentsim/cpu15.yaml \
        --log recipes/agentsim/report/cpu15/simulate.log

Tokens are counted with the embedded model's tokenizer. Posts and comments store their exact prompt (system +
user) and reply. A narrative rewrite stores its reply and its input size in characters (old narrative + posts
shown); its user turn is estimated from that with the chars-per-token ratio measured on the posts' prompts, plus
the fixed instruction. A self-model's five prompts are rebuilt exactly (identity + the narrative of the time +
question); its answers are stored only cut to the budget, so their length comes from ``input_chars`` minus the
narrative (an estimate, marked so in the output).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from weakstrong.agentsim.archetypes import identity_prompt, system_prompt
from weakstrong.agentsim.memory import SELF_MODEL_QUESTIONS, episodic_prompt
from weakstrong.agentsim.recipe import load_recipe, open_recipe_store


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--log", default=None, help="the simulate step's output (lines with 'generate N s')")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from weakstrong.models import default_model_path

    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    store = open_recipe_store(load_recipe(args.config))
    n_tok = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731

    phases = {}
    for kind, table in (("post", "posts"), ("comment", "comments")):
        rows = store.rows(f"SELECT system_prompt, context, content FROM {table}")
        prompt_chars = sum(len(r["system_prompt"]) + len(r["context"]) for r in rows)
        phases[kind] = {"requests": len(rows), "prompt_tokens": sum(n_tok(r["system_prompt"]) + n_tok(r["context"])
                                                                    for r in rows),
                        "reply_tokens": sum(n_tok(r["content"]) for r in rows), "prompt_chars": prompt_chars}
    chars_per_token = ((phases["post"]["prompt_chars"] + phases["comment"]["prompt_chars"])
                       / max(1, phases["post"]["prompt_tokens"] + phases["comment"]["prompt_tokens"]))
    agents = {a["id"]: a for a in store.agents()}
    versions = store.rows("SELECT agent_id, kind, tick, content, input_chars FROM memory_versions ORDER BY id")
    instruction = episodic_prompt("", [], 0, "chars")[0]  # the fixed text of a rewrite request
    ep = [v for v in versions if v["kind"] == "episodic"]
    phases["episodic"] = {"requests": len(ep), "reply_tokens": sum(n_tok(v["content"]) for v in ep),
                          "prompt_tokens": sum(n_tok(identity_prompt(agents[v["agent_id"]])) for v in ep)
                          + int(sum(v["input_chars"] + len(instruction) for v in ep) / chars_per_token),
                          "estimated": "the user turn from input_chars (old narrative + posts) + the instruction"}
    k = len(SELF_MODEL_QUESTIONS)
    narrative, sem_prompt, sem_reply, n_sem = {}, 0, 0, 0
    for v in versions:  # each self-model sees the narrative current at its tick (rewritten just before, if any)
        if v["kind"] == "episodic":
            narrative[v["agent_id"]] = v["content"]
            continue
        text = narrative.get(v["agent_id"], "")
        system = system_prompt(agents[v["agent_id"]], text, "", "reflection")
        sem_prompt += sum(n_tok(system) + n_tok(q) for _, q in SELF_MODEL_QUESTIONS)
        sem_reply += int(max(0, v["input_chars"] - len(text)) / chars_per_token)
        n_sem += 1
    phases["semantic"] = {"requests": k * n_sem, "prompt_tokens": sem_prompt, "reply_tokens": sem_reply,
                          "estimated": "replies from input_chars minus the narrative (the answers are stored cut)"}
    total = {key: sum(p[key] for p in phases.values()) for key in ("requests", "prompt_tokens", "reply_tokens")}
    out = {"phases": phases, "total": total, "chars_per_prompt_token": round(chars_per_token, 2),
           "per_request": {"prompt_tokens": total["prompt_tokens"] / total["requests"],
                           "reply_tokens": total["reply_tokens"] / total["requests"]}}
    if args.log:
        secs = [float(x) for x in re.findall(r"generate ([0-9.]+)s", Path(args.log).read_text())]
        gen = sum(secs)
        out["generate_seconds"] = gen
        out["ticks_timed"] = len(secs)
        out["reply_tokens_per_s"] = total["reply_tokens"] / gen
        out["requests_per_s"] = total["requests"] / gen
        out["seconds_per_request"] = gen / total["requests"]
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
